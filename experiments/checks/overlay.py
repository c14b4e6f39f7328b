"""Montage of one test patient of a run: scan (orientation letters, 5 cm scale bar), truth, each model's prediction
on the scan's own grid, and where the first and the last model disagree (coloured by which one is right).

    python -m experiments.checks.overlay RUN_DIR [--case CASE] [--out FILE.png]

`experiments.volumetric` already writes one for the first test patient into RUN_DIR/figures; this draws any
other test patient (default: the one closest to the 3D model's median Dice).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from heartjax import experiment
from heartjax.data import cases
from heartjax.data.io import images
from heartjax.common.errors import HeartjaxError
from heartjax.eval.figures import plot_case_montage
from heartjax.common.paths import RunFolder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.checks.overlay", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--case", default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        cfg = experiment.load_config(args.run_dir)
        results = json.loads(RunFolder(args.run_dir).results.read_text())
    except (OSError, HeartjaxError) as e:
        print(f"error: {args.run_dir} is not a finished run ({e})", file=sys.stderr)
        return 2
    kinds = list(results["models"])
    case = args.case
    if case is None:
        per_case = results["models"][kinds[-1]]["per_case"]
        scores = np.array([c["mean_dice"] if c["mean_dice"] is not None else np.nan for c in per_case])
        case = per_case[int(np.nanargmin(np.abs(scores - np.nanmedian(scores))))]["case"]
    try:
        ds = cases.resolve_dataset(cfg.data)
        vol = cases.CaseStore(ds).volume(case)
        preds = {}
        for kind in kinds:
            mean = next(c["mean_dice"] for c in results["models"][kind]["per_case"] if c["case"] == case)
            label = f"{kind} (Dice {mean:.3f})"
            path = RunFolder(args.run_dir).predictions(kind) / f"{case}.nii.gz"
            preds[label], _ = images.load_label_file(path, ds.scheme, reference_grid=vol.grid)
    except (HeartjaxError, StopIteration, OSError) as e:
        print(f"error: cannot draw case {case!r} of {args.run_dir}: {e}", file=sys.stderr)
        return 2
    out = args.out or RunFolder(args.run_dir).figures / f"montage_{case}.png"
    plot_case_montage(vol.image, vol.label, preds, out, list(ds.scheme.names), spacing=vol.spacing,
                      title=f"{results['dataset']}: {case}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
