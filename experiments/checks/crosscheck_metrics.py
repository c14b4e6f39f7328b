"""Cross-check heartjax's Dice, HD95 and ASSD against MONAI on real predictions:
`python experiments/checks/crosscheck_metrics.py PRED_DIR TRUTH_DIR --scheme acdc`.

Not part of the tests and not a heartjax dependency: it needs torch and MONAI, which heartjax never imports.
Run it from a throwaway environment with PYTHONPATH pointing at the repository, e.g.

    python3 -m venv /tmp/monai-venv
    /tmp/monai-venv/bin/pip install torch==2.13.0 monai==1.6.1 nibabel==5.4.2 numpy==2.4.6 scipy==1.17.1 \
        jax==0.10.2 jaxlib==0.10.2
    PYTHONPATH=. /tmp/monai-venv/bin/python experiments/checks/crosscheck_metrics.py PRED_DIR TRUTH_DIR --scheme acdc

Files are paired and loaded exactly as `python -m heartjax.evaluate` does (RAS order, truth spacing in mm).
Per case and structure it computes, on the same arrays:
  - heartjax: `heartjax.eval.scoring.score_case`;
  - MONAI: `DiceMetric(include_background=False, ignore_empty=True)`, `HausdorffDistanceMetric(percentile=95,
    include_background=False)` and `SurfaceDistanceMetric(symmetric=True, include_background=False)`, with
    `spacing` passed,
and prints the largest absolute differences. The two disagree on purpose where a structure is empty (heartjax:
NaN when absent from both, Dice 0 when only predicted, the image diagonal as HD95/ASSD when one side is empty;
MONAI: NaN or inf); those entries are not compared but counted, and heartjax's value there is checked against
its documented convention. Exit code 0 when every compared difference is within tolerance.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from heartjax.eval import evaluate
from heartjax.eval import scoring
from heartjax.data import labels
from heartjax.data.io import images
from heartjax.common.errors import HeartjaxError

TOLERANCE = {"dice": 1e-4, "hd95": 1e-3, "assd": 1e-3}  # Dice absolute; HD95 and ASSD in mm


def _monai_case(pred: np.ndarray, truth: np.ndarray, spacing, num_classes: int) -> dict[str, list[float]]:
    """MONAI's Dice, HD95 and ASSD per structure 1..K (NaN/inf as MONAI returns them)."""
    import torch
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDistanceMetric

    dice_m = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    hd_m = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
    sd_m = SurfaceDistanceMetric(include_background=False, symmetric=True, reduction="none")
    out = {"dice": [], "hd95": [], "assd": []}
    for c in range(1, num_classes):
        # one structure at a time, as [batch 1, channels (rest, c), X, Y, Z], keeps big CT volumes in memory
        p = torch.from_numpy(np.stack([pred != c, pred == c])[None].astype(np.float32))
        t = torch.from_numpy(np.stack([truth != c, truth == c])[None].astype(np.float32))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MONAI warns on empty masks; we count those cases ourselves
            out["dice"].append(float(dice_m(p, t)[0, 0]))
            out["hd95"].append(float(hd_m(p, t, spacing=list(spacing))[0, 0]))
            out["assd"].append(float(sd_m(p, t, spacing=list(spacing))[0, 0]))
    return out


def _expected_convention(metric: str, pred_has: bool, truth_has: bool, diagonal: float) -> float:
    """heartjax's value where a structure is empty on a side (DESIGN.md metrics policy)."""
    if not pred_has and not truth_has:
        return math.nan
    if metric == "dice":
        return 0.0  # only one side has it: no overlap
    return diagonal


def crosscheck(pred_dir, truth_dir, scheme, limit: int | None = None) -> dict:
    """Compare heartjax and MONAI on every pair; returns per-metric figures and per-entry records."""
    pairs = [p for p in evaluate.pair_files(pred_dir, truth_dir) if p.error is None][:limit]
    if not pairs:
        raise HeartjaxError(f"no prediction in {pred_dir} pairs with a truth file in {truth_dir}")
    scheme = labels.resolve_scheme(scheme) if scheme else evaluate.infer_scheme([p.truth for p in pairs])
    names, k1 = scheme.names, scheme.num_classes
    figures = {m: {"compared": 0, "skipped": 0, "max_abs_diff": 0.0, "where": None, "convention_ok": True}
               for m in TOLERANCE}
    records = []
    for pair in pairs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # header quirks (ACDC) are reported by heartjax.evaluate
            truth, grid = images.load_label_file(pair.truth, scheme)
            pred, _ = images.load_label_file(pair.pred, scheme, reference_grid=grid)
        spacing = grid.ras_spacing
        t0 = time.perf_counter()
        ours = scoring.score_case(pred, truth, spacing, names, pair.case)
        t1 = time.perf_counter()
        theirs = _monai_case(pred, truth, spacing, k1)
        t2 = time.perf_counter()
        diagonal = float(np.sqrt(sum((n * s) ** 2 for n, s in zip(truth.shape, spacing))))
        for i, name in enumerate(names):
            pred_has, truth_has = bool((pred == i + 1).any()), bool((truth == i + 1).any())
            for metric, fig in figures.items():
                a, b = ours[metric][name], theirs[metric][i]
                record = {"case": pair.case, "structure": name, "metric": metric, "heartjax": a, "monai": b}
                # compared only where both define the value: truth present (Dice), both present (distances)
                defined = truth_has if metric == "dice" else (pred_has and truth_has)
                if defined and math.isfinite(a) and math.isfinite(b):
                    diff = abs(a - b)
                    fig["compared"] += 1
                    if diff >= fig["max_abs_diff"]:
                        fig["max_abs_diff"], fig["where"] = diff, f"{pair.case} {name}"
                    record["abs_diff"] = diff
                else:
                    fig["skipped"] += 1
                    want = _expected_convention(metric, pred_has, truth_has, diagonal)
                    ok = (math.isnan(a) and math.isnan(want)) or a == want
                    if metric == "dice" and truth_has:
                        ok = False  # a defined Dice must never be skipped
                    fig["convention_ok"] &= ok
                    record["skipped"] = True
                records.append(record)
        print(f"{pair.case}: heartjax {t1 - t0:.2f} s, MONAI {t2 - t1:.2f} s", file=sys.stderr)
    for metric, fig in figures.items():
        fig["tolerance"] = TOLERANCE[metric]
        fig["within_tolerance"] = fig["max_abs_diff"] <= TOLERANCE[metric]
    return {"scheme": scheme.name, "cases": [p.case for p in pairs], "figures": figures, "records": records}


def _json_ready(x):
    """NaN and inf -> None, recursively."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_ready(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_ready(v) for v in x]
    return x


def main(argv=None) -> int:
    """Command line entry; exit code 0 when heartjax and MONAI agree within tolerance."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pred_dir")
    parser.add_argument("truth_dir")
    parser.add_argument("--scheme", help="mmwhs, acdc or genericK (default: inferred as heartjax.evaluate does)")
    parser.add_argument("--limit", type=int, help="check only the first N pairs")
    parser.add_argument("--out", help="write all figures and per-entry values to this JSON file")
    args = parser.parse_args(argv)
    try:
        import monai
        import torch
    except ImportError as err:
        print(f"error: {err}; run this script from a throwaway venv with torch and MONAI (see its docstring)",
              file=sys.stderr)
        return 2
    try:
        result = crosscheck(args.pred_dir, args.truth_dir, args.scheme, args.limit)
    except HeartjaxError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    result["versions"] = {"monai": monai.__version__, "torch": torch.__version__, "numpy": np.__version__}
    print(f"{len(result['cases'])} cases, scheme {result['scheme']}, MONAI {monai.__version__}, torch "
          f"{torch.__version__}")
    print("| metric | compared | skipped (empty structure) | max abs diff | at | tolerance | within | "
          "heartjax convention on skipped |")
    print("|---|---|---|---|---|---|---|---|")
    for metric, fig in result["figures"].items():
        unit = "" if metric == "dice" else " mm"
        print(f"| {metric} | {fig['compared']} | {fig['skipped']} | {fig['max_abs_diff']:.3g}{unit} | {fig['where']} "
              f"| {fig['tolerance']:g}{unit} | {'yes' if fig['within_tolerance'] else 'NO'} | "
              f"{'ok' if fig['convention_ok'] else 'VIOLATED'} |")
    if args.out:
        Path(args.out).write_text(json.dumps(_json_ready(result), indent=1, allow_nan=False) + "\n")
    good = all(f["within_tolerance"] and f["convention_ok"] for f in result["figures"].values())
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
