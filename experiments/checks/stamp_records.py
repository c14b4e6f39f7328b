"""Stamp study records made before provenance was recorded, after a rerun reproduced one of them bit for bit.

  python -m experiments.checks.stamp_records --rerun NEW_RECORDS/all-seed0.json \
      --old docs/studies/patients/all-seed0.json [--records docs/studies/patients docs/studies/loss]

The rerun is a record the running code made (same code fingerprint) of the same run as --old: the same preset and
settings apart from the kinds trained (see heartjax.ablation.stamp). Every per-case Dice, HD95 and whole-heart Dice,
raw and post-processed, of every kind both records have is compared exactly. When all agree, each record without
provenance in the --records folders (default: the folder of --old) gets the rerun's provenance and a `stamped`
entry naming the rerun; otherwise nothing is written and the first differences are printed (exit code 1).
Rerun one run of a study with `experiments.ablate STUDY --seeds S --reuse-records any --records DIR` where DIR
holds the study's other records (docs/provenance.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from heartjax.ablation import stamp
from heartjax.common.errors import HeartjaxError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--rerun", type=Path, required=True, help="record of the rerun, made by the running code")
    p.add_argument("--old", type=Path, required=True, help="the record (without provenance) it repeats")
    p.add_argument("--records", type=Path, nargs="*", help="folders whose records without provenance to stamp "
                   "(default: the folder of --old)")
    args = p.parse_args(argv)
    try:
        done = stamp.stamp(args.rerun, args.old, args.records or [args.old.parent])
    except HeartjaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
