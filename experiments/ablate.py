"""Ablation studies over training seeds: `python -m experiments.ablate STUDY` (`--list` shows the shipped ones).

Runs every variant of the study for every training seed 0..N-1 (`seed` only: the patients, split and
preprocessing stay fixed), one run folder per variant and seed (WORKDIR/STUDY/VARIANT/seedS), then writes
WORKDIR/STUDY/ablation.json, ablation.md, ablation.png and the TensorBoard folder WORKDIR/STUDY/hparams.
Each finished run's numbers are kept as a small JSON in RECORDS (default docs/studies/STUDY in the repository;
WORKDIR/STUDY/records for the smoke preset) with their provenance: a run recorded by the running code (the same
code fingerprint, docs/provenance.md) is never redone, one recorded by other code is trained again unless
--reuse-records any, a killed one continues from its checkpoint (--resume), and `--aggregate-only` rebuilds the
outputs from the records alone (whatever code made them; it lists the commits and machines they mix), so a long
study can be run in parts (--max-runs) on several machines. key=value overrides apply on top of the study's baseline and
under its variants, e.g. `data.cache_dir=/scratch/cache`. A library over `heartjax.ablation`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments import studies
from heartjax import ablation, atomic, provenance
from heartjax.config import presets
from heartjax.errors import HeartjaxError

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "docs" / "studies"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m experiments.ablate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", nargs="?", help="a shipped study (see --list) or the path of a .py file defining STUDY")
    p.add_argument("overrides", nargs="*", help="config overrides under the variants, e.g. data.cache_dir=/tmp/c")
    p.add_argument("--list", action="store_true", help="print the shipped studies, one line each, and exit")
    p.add_argument("--data", default=None, help="dataset folder (default: the study's preset, the phantom for most)")
    p.add_argument("--preset", default="default", help=f"{' | '.join(presets.PRESETS)} (default: default)")
    p.add_argument("--seeds", type=int, default=None, help="training seeds 0..N-1 (default: the study's, 3)")
    p.add_argument("--workdir", type=Path, default=Path("runs/ablation"), help="runs go to WORKDIR/STUDY/...")
    p.add_argument("--records", type=Path, default=None,
                   help="folder of the per-run JSONs (default: docs/studies/STUDY; smoke: WORKDIR/STUDY/records)")
    p.add_argument("--resume", action="store_true", help="continue a started study (recorded runs are kept)")
    p.add_argument("--max-runs", type=int, default=None, help="run at most N runs now, then aggregate what exists")
    p.add_argument("--aggregate-only", action="store_true",
                   help="train nothing: rebuild the outputs from the records, whatever code made them")
    p.add_argument("--reuse-records", choices=ablation.REUSE, default="match",
                   help="match (default): reuse a run record only when the code fingerprint it was made with is "
                        "the running code's, train the others again; any: reuse every record (docs/provenance.md)")
    p.add_argument("--figure", type=Path, default=None,
                   help="also write the study's figure (ablation.png) to this path, e.g. docs/studies/STUDY.png")
    p.add_argument("--verbose", action="store_true", help="print each run's own log lines too")
    return p.parse_intermixed_args(argv)


def list_lines() -> list[str]:
    """One line per shipped study: name, kinds, variants, x axis and description."""
    out = []
    for s in studies.shipped():
        x = f", x {s.x}" if s.x else ""
        out.append(f"{s.name:<13} {'/'.join(s.kinds):<8} {len(s.variants)} variants{x}: {s.description}")
    return out


def records_dir(args, study: ablation.Study) -> Path:
    """Where the run records go: --records, else the repository's docs/studies/STUDY (smoke runs stay local)."""
    if args.records is not None:
        return args.records
    return args.workdir / study.name / "records" if args.preset == "smoke" else RECORDS / study.name


def copy_figure(args, study: ablation.Study) -> None:
    """--figure: the study's ablation.png, copied (atomically) to where the user asked."""
    if args.figure is not None:
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(args.figure, (args.workdir / study.name / "ablation.png").read_bytes())
        print(f"figure: {args.figure}")


def cli(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.list:
            print("\n".join(list_lines()))
            return 0
        if not args.study:
            raise HeartjaxError("name a study (python -m experiments.ablate --list shows them)")
        study = studies.load(args.study)
        records = records_dir(args, study)
        if args.aggregate_only:
            result = ablation.aggregate_study(study, records, args.workdir, args.seeds)
            print(f"study {study.name}: {len(result['variants'])} variants from {result['runs']} run records in "
                  f"{records} -> {args.workdir / study.name / 'ablation.json'}")
            print(f"provenance: {ablation.origins_text(result['provenance'])}")
            copy_figure(args, study)
            return 0
        if args.max_runs is not None and args.max_runs < 1:
            raise HeartjaxError(f"--max-runs={args.max_runs} must be a positive integer")
        print(f"study {study.name}: {study.description}\nruns: {args.workdir / study.name}; records: {records}; "
              f"reuse records: {args.reuse_records} (code fingerprint {provenance.fingerprint()})", flush=True)
        ablation.run_study(study, preset=args.preset, data=args.data, seeds=args.seeds, workdir=args.workdir,
                           records=records, extra=args.overrides, resume=args.resume, max_runs=args.max_runs,
                           log=lambda *a: print(*a, flush=True), run_log=print if args.verbose else None,
                           reuse=args.reuse_records)
        copy_figure(args, study)
    except HeartjaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
