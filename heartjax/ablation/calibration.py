"""Calibration in a study: the per-case rows a run record keeps, their aggregate per variant and kind, its table.

A record made since calibration was measured holds `calibration: {kind: [row per test patient]}` (the per-case
fields of `heartjax.eval.calibration.case_calibration`); older records have none and are left out of this part of
the aggregate (the Dice statistics are unchanged). Means are over all (patient, seed) values, sd over the seeds'
own means, as for Dice; the Dice-entropy Spearman is over patients, each patient's mean Dice and mean entropy
averaged over the seeds first (the patients are the independent units).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from heartjax.eval.calibration import REGION, spearman
from heartjax.eval.scoring import fmt

KEYS = ("ece", "brier_all", "entropy_auroc", "mean_entropy")


def record_rows(models: Mapping) -> dict:
    """{"calibration": {kind: rows}} for a run record when every kind has calibration rows; else {}."""
    cal = {k: (m.info.get("calibration") or {}).get("per_case") for k, m in models.items()}
    if not cal or not all(cal.values()):
        return {}
    return {"calibration": {k: [{"case": r["case"], **{key: r.get(key) for key in KEYS}, "brier": r.get("brier") or {},
                                 "ece_class": r.get("ece_class") or {}} for r in rows] for k, rows in cal.items()}}


def nanmean(values) -> float:
    """Mean of the finite values (None and NaN skipped); NaN when there is none."""
    a = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    return float(a.mean()) if a.size else math.nan


def case_mean_dice(case: Mapping) -> float:
    """A record row's mean Dice over its structures (as `heartjax.ablation.stats.case_mean_dice`)."""
    return nanmean(case["dice"].values())


def _sd(values) -> float:
    a = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    return float(a.std(ddof=1)) if a.size > 1 else math.nan


def _stat(recs: Sequence[Mapping], kind: str, get) -> dict:
    """mean over (patient, seed) values of get(row), sd over the seeds' own means."""
    rows = [[get(r) for r in rec["calibration"][kind]] for rec in recs]
    return {"mean": nanmean([v for seed in rows for v in seed]), "sd": _sd([nanmean(seed) for seed in rows])}


def _spearman(recs: Sequence[Mapping], kind: str) -> tuple[float, int]:
    """Spearman over patients of seed-averaged mean Dice against seed-averaged mean entropy."""
    dice: dict[str, list] = {}
    ent: dict[str, list] = {}
    for rec in recs:
        for c in rec["per_case"][kind]:
            dice.setdefault(c["case"], []).append(case_mean_dice(c))
        for r in rec["calibration"][kind]:
            ent.setdefault(r["case"], []).append(r.get("mean_entropy"))
    cases = [c for c in dice if c in ent]
    return spearman([nanmean(dice[c]) for c in cases], [nanmean(ent[c]) for c in cases]), len(cases)


def kind_block(recs: Sequence[Mapping], kind: str, labels: Sequence[str]) -> dict:
    """One kind's calibration over a variant's records."""
    block = {key: _stat(recs, kind, lambda r, key=key: r.get(key)) for key in KEYS}
    block["per_structure"] = {s: {"brier": _stat(recs, kind, lambda r, s=s: r["brier"].get(s)),
                                  "ece": _stat(recs, kind, lambda r, s=s: r["ece_class"].get(s))} for s in labels}
    rho, n = _spearman(recs, kind)
    block.update(dice_entropy_spearman=rho, patients=n, seeds=len(recs))
    return block


def aggregate(records: Mapping[tuple[str, int], Mapping], labels: Sequence[str]) -> dict | None:
    """{"region", "variants": {variant: {kind: block}}} over the records with calibration; None when none has it."""
    with_cal = {key: r for key, r in records.items() if r.get("calibration")}
    if not with_cal:
        return None
    variants: dict[str, dict] = {}
    for variant in dict.fromkeys(v for v, _ in sorted(with_cal)):
        recs = [r for (v, _), r in sorted(with_cal.items()) if v == variant]
        kinds = [k for k in recs[0]["kinds"] if all(k in r["calibration"] for r in recs)]
        variants[variant] = {k: kind_block(recs, k, labels) for k in kinds}
    return {"region": REGION, "runs": len(with_cal), "variants": variants}


def _pm(block: Mapping | None, digits: int = 4) -> str:
    return "–" if not block else f"{fmt(block.get('mean'), digits)} ± {fmt(block.get('sd'), digits)}"


def markdown(cal: Mapping | None, labels: Sequence[str]) -> list[str]:
    """ablation.md lines: ECE, Brier, entropy-error AUROC and Dice-entropy Spearman per variant and kind, then the
    Brier score per structure; none when no record has calibration."""
    if not cal:
        return []
    lines = ["", f"## Calibration and uncertainty (raw softmax; {cal['region']}; {cal['runs']} runs with it)", "",
             "Mean ± sd over seeds; see docs/calibration.md. ECE: top-label, 15 bins; Brier: multi-class; AUROC: "
             "voxel entropy ranking the model's own errors; Spearman: patients' mean Dice against mean entropy "
             "(seed-averaged; – below 3 patients).", "",
             "| variant | kind | seeds | ECE | Brier | entropy-error AUROC | mean entropy | Dice-entropy Spearman |",
             "|---|---|---|---|---|---|---|---|"]
    for name, kinds in cal["variants"].items():
        for kind, b in kinds.items():
            lines.append(f"| {name} | {kind} | {b['seeds']} | {_pm(b['ece'])} | {_pm(b['brier_all'])} | "
                         f"{_pm(b['entropy_auroc'], 3)} | {_pm(b['mean_entropy'])} | "
                         f"{fmt(b['dice_entropy_spearman'])} ({b['patients']}) |")
    lines += ["", "Brier score per structure (one-vs-rest, mean ± sd over seeds):", "",
              "| variant | kind | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for name, kinds in cal["variants"].items():
        for kind, b in kinds.items():
            lines.append(f"| {name} | {kind} | " + " | ".join(_pm(b["per_structure"][s]["brier"]) for s in labels)
                         + " |")
    return lines
