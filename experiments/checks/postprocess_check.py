"""Post-processing on a finished run's test patients: raw, as decided per structure, and two rules on every structure.

  python -m experiments.checks.postprocess_check RUN_DIR [--models 2d,3d]

Reads each model's raw test predictions (RUN_DIR/predictions/KIND/*.nii.gz) and decision (eval_KIND.json), and
the reference labels through the run's own dataset settings; prints per structure the mean Dice raw, with the
decided post-processing (what `heartjax.predict` writes, replayed with the current code), with the heart's
component (`keep_main_component`) of every structure, and with the largest component of every structure (the rule
before the per-structure decision); lists the (patient, structure) pairs a rule turned from Dice > 0 into Dice 0
(the post-processing must never lose a structure the network found), and gives each rule's worst (patient,
structure) change of Dice from raw, with the connected components of that structure in that patient's raw prediction
under the decided rule (voxels, voxels the reference labels as that structure, kept or removed, the structures each
touches, how far it lies from the heart kept), which shows why the Dice fell. A cross-modality run
(`data.test_phantom_modality`) is scored against its test modality's labels. Run it from the folder the experiment
ran in (the run's config holds its data paths as given).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from heartjax import config as config_lib
from heartjax.data import cases
from heartjax.data.io import images
from heartjax.data.io.quirks import Quirks
from heartjax.common.errors import HeartjaxError
from heartjax.eval import postprocess
from heartjax.eval.scoring import score_case
from heartjax.common.paths import RunFolder


def worst_change(raw: list[dict], post: list[dict], names) -> dict | None:
    """The (patient, structure) pair whose Dice fell most from `raw` to `post` (per-case `score_case` records in the
    same case order), or rose least where none fell; ties: the first in case order, then in `names` order. Pairs
    without a finite Dice both ways are skipped; None when none is left. {"case", "structure", "raw", "post",
    "change"}."""
    def finite(x):
        return x is not None and bool(np.isfinite(x))

    pairs = [(float(p["dice"][n]) - float(r["dice"][n]), i, j, p["case"], n, float(r["dice"][n]), float(p["dice"][n]))
             for i, (r, p) in enumerate(zip(raw, post)) for j, n in enumerate(names)
             if finite(r["dice"][n]) and finite(p["dice"][n])]
    if not pairs:
        return None
    change, _, _, case, name, before, after = min(pairs)  # (change, case order, structure order): ties explicit
    return {"case": case, "structure": name, "raw": before, "post": after, "change": change}


def components(pred: np.ndarray, post: np.ndarray, reference: np.ndarray, label: int, names,
               spacing=None) -> list[dict]:
    """The 26-connected (8 in 2D) components of class `label` in the label map `pred`, largest first (ties: first in
    scan order): {"voxels", "true" (voxels `reference` labels `label`), "kept" (still `label` in `post`),
    "touches" (the names of the other classes of `pred` in its neighbourhood, in label order), "gap_mm" (the
    distance from its nearest voxel to the nearest voxel of the heart, the region of `pred`'s foreground union that
    holds the most voxels `post` kept, ties: the first in scan order; 0.0 for a piece inside it; `spacing` in mm per
    axis, default 1)}."""
    structure = np.ones((3,) * pred.ndim, bool)
    comp, n = ndimage.label(pred == label, structure)
    region, _ = ndimage.label(pred != 0, structure)
    kept = np.bincount(region[post != 0], minlength=2)[1:]
    heart = region == 1 + int(np.argmax(kept)) if kept.any() else np.zeros(pred.shape, bool)
    apart = ndimage.distance_transform_edt(~heart, sampling=spacing) if heart.any() else np.full(pred.shape, np.inf)
    out = []
    for i in range(1, n + 1):
        m = comp == i
        ring = ndimage.binary_dilation(m, structure) & ~m
        touched = sorted(int(c) for c in np.unique(pred[ring]) if c and c != label)
        out.append({"voxels": int(m.sum()), "true": int((m & (reference == label)).sum()),
                    "kept": bool((post[m] == label).all()), "touches": [names[c - 1] for c in touched],
                    "gap_mm": float(apart[m].min())})
    return sorted(out, key=lambda c: -c["voxels"])  # stable: equal sizes stay in scan order


def check(run_dir: Path, kind: str) -> dict:
    """{"structures": names, "decision": ..., "cases": n, "rules": {rule: {"dice": {name: mean}, "mean": float,
    "lost": [(case, name)], "worst": {"case", "structure", "raw", "post", "change"} or None}}}: "worst" is the
    (patient, structure) pair whose Dice fell most from raw (rose least where none fell; first in case order, then
    structure order, on ties), over pairs with a finite Dice both ways."""
    cfg = config_lib.from_dict(json.loads(RunFolder(run_dir).config.read_text()))
    decision = json.loads(RunFolder(run_dir).eval_record(kind).read_text())["postprocessing"]
    data = cfg.data  # a cross-modality run scored the same patients' scans of its test modality
    if data.test_phantom_modality not in (None, data.phantom_modality):
        data = dataclasses.replace(data, phantom_modality=data.test_phantom_modality)
    ds = cases.resolve_dataset(data, log=lambda *a: None)
    store, names = cases.CaseStore(ds), list(ds.scheme.names)
    rules = {"raw": lambda x: x, "decided": lambda x: postprocess.apply(x, decision),
             "main_all": postprocess.keep_main_component, "largest_all": postprocess.keep_largest_component}
    scores, pred_quirks, paths, known = {r: [] for r in rules}, Quirks(), {}, {c.case_id for c in ds.cases}

    def load(path: Path):
        cid = path.name.removesuffix(".nii.gz")
        if cid not in known:
            raise HeartjaxError(f"{path} names no patient of the run's test data ({ds.root}); was the run folder "
                                "moved away from its data, or its predictions copied from another run?")
        vol = store.volume(cid)
        with pred_quirks.capture(path):  # predictions keep their scan's header, quirks included
            return images.load_label_file(path, ds.scheme, reference_grid=vol.grid)[0], vol

    for path in sorted(RunFolder(run_dir).predictions(kind).glob("*.nii.gz")):
        cid = path.name.removesuffix(".nii.gz")
        paths[cid] = path
        pred, vol = load(path)
        for r, fn in rules.items():
            scores[r].append(score_case(fn(pred), vol.label, vol.spacing, names, cid))
    store.report_quirks()
    pred_quirks.report(print)
    if not scores["raw"]:
        raise HeartjaxError(f"{run_dir / 'predictions' / kind} holds no predictions (infer.save_predictions off?)")
    out = {"structures": names, "decision": decision, "cases": len(scores["raw"]), "rules": {}}
    for r in rules:
        dice = {n: float(np.nanmean([s["dice"][n] for s in scores[r]])) for n in names}
        lost = [(s["case"], n) for raw, s in zip(scores["raw"], scores[r]) for n in names
                if (raw["dice"][n] or 0) > 0 and s["dice"][n] == 0]
        out["rules"][r] = {"dice": dice, "mean": float(np.mean(list(dice.values()))), "lost": lost,
                           "worst": worst_change(scores["raw"], scores[r], names)}
    worst = out["rules"]["decided"]["worst"]
    if worst is not None:  # why the decided rule's worst pair fell: its structure's pieces
        pred, vol = load(paths[worst["case"]])
        worst["components"] = components(pred, rules["decided"](pred), vol.label,
                                         names.index(worst["structure"]) + 1, names, vol.spacing)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.checks.postprocess_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--models", default="2d,3d", help="comma-separated kinds (default 2d,3d)")
    args = parser.parse_args(argv)
    try:
        for kind in args.models.split(","):
            res = check(args.run_dir, kind)
            names = res["structures"]
            print(f"{kind}: {res['cases']} test patients; decided: {postprocess.describe(res['decision'], names)}")
            print("  rule          " + "  ".join(f"{n:>6}" for n in names) + "    mean  structures lost")
            for r, v in res["rules"].items():
                lost = ", ".join(f"{c} {n}" for c, n in v["lost"]) or "none"
                print(f"  {r:<12}  " + "  ".join(f"{v['dice'][n]:6.3f}" for n in names) + f"  {v['mean']:6.3f}  {lost}")
            print("  worst (patient, structure) Dice change from raw:")
            for r, v in res["rules"].items():
                w = v["worst"]
                if r != "raw":
                    print(f"  {r:<12}  " + ("none scored" if w is None else
                                            f"{w['change']:+.3f}  {w['case']} {w['structure']} "
                                            f"({w['raw']:.3f} -> {w['post']:.3f})"))
            for c in (res["rules"]["decided"]["worst"] or {}).get("components", []):
                print(f"    decided: {c['voxels']} voxels, {c['true']} labelled so in the reference, "
                      f"{'kept' if c['kept'] else 'removed'}, touches {', '.join(c['touches']) or 'nothing'}, "
                      + ("in the heart" if c["gap_mm"] == 0 else f"{c['gap_mm']:.1f} mm from the heart"))
    except (HeartjaxError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
