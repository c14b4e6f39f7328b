"""Scoring whole volumes and reporting: one implementation used by the experiments and `heartjax.evaluate`.

A case is scored on its original grid (RAS order): Dice, IoU, accuracy and foreground accuracy from integer
counts, whole-heart Dice, HD95 and ASSD in mm (see heartjax.eval.metrics and heartjax.eval.surface for the definitions).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np

from heartjax.eval import metrics
from heartjax.eval.surface import surface_metrics

_counts = jax.jit(metrics.confusion_counts, static_argnums=2)


def score_case(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float], names: Sequence[str], case: str) -> dict:
    """Per-case metrics of a predicted label map against the truth (same grid, uint8 indices 0..K)."""
    k = len(names) + 1
    counts = jax.device_get(_counts(np.asarray(pred), np.asarray(truth), k))
    out = metrics.case_metrics(counts, names)
    surf = surface_metrics(np.asarray(pred), np.asarray(truth), tuple(float(s) for s in spacing), k)
    out["hd95"] = {n: float(v) for n, v in zip(names, surf["hd95"])}
    out["assd"] = {n: float(v) for n, v in zip(names, surf["assd"])}
    return {"case": case, **out}


def json_safe(x):
    """NaN -> None so results.json is valid JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def model_results(per_case: list[dict], names: Sequence[str], extra: Mapping | None = None) -> dict:
    """The results block of one model: summary per structure plus per-case scores (JSON-ready, NaN -> null)."""
    summ = metrics.summarize([{k: v for k, v in c.items() if k != "case"} for c in per_case], names)
    per_structure = {}
    for n in names:
        per_structure[n] = {
            "dice_mean": summ["dice"][n]["mean"], "dice_sd": summ["dice"][n]["sd"], "dice_median": summ["dice"][n]["median"],
            "iou_mean": summ["iou"][n]["mean"], "iou_sd": summ["iou"][n]["sd"],
            "hd95_mean": summ["hd95"][n]["mean"], "hd95_sd": summ["hd95"][n]["sd"],
            "assd_mean": summ["assd"][n]["mean"], "assd_sd": summ["assd"][n]["sd"],
        }
    dice_means = [per_structure[n]["dice_mean"] for n in names]
    finite = [d for d in dice_means if math.isfinite(d)]
    out = {
        **(extra or {}),
        "mean_dice": float(np.mean(finite)) if finite else math.nan,
        "whole_heart_dice": summ["whole_heart_dice"]["mean"] if len(names) > 1 else None,
        "whole_heart_dice_sd": summ["whole_heart_dice"]["sd"] if len(names) > 1 else None,
        "accuracy": summ["accuracy"]["mean"],
        "fg_accuracy": summ["fg_accuracy"]["mean"],
        "per_structure": per_structure,
        "per_case": per_case,
    }
    return json_safe(out)


def fmt(x, digits=3) -> str:
    """A number for a table (NaN/None as a dash)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}"


def structure_table(models: Mapping[str, dict], names: Sequence[str]) -> list[str]:
    """Markdown rows: per structure, Dice / IoU / HD95 / ASSD (mean ± sd) for each model."""
    head = "| structure | " + " | ".join(f"{m} Dice | {m} IoU | {m} HD95 mm | {m} ASSD mm" for m in models) + " |"
    lines = [head, "|" + "---|" * (1 + 4 * len(models))]
    for n in names:
        cells = []
        for m in models.values():
            s = m["per_structure"][n]
            cells += [f"{fmt(s['dice_mean'])} ± {fmt(s['dice_sd'])}", f"{fmt(s['iou_mean'])}",
                      f"{fmt(s['hd95_mean'], 1)}", f"{fmt(s['assd_mean'], 2)}"]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    cells = []
    for m in models.values():
        cells += [f"**{fmt(m['mean_dice'])}**", "", "", ""]
    lines.append("| mean | " + " | ".join(cells) + " |")
    if all(m.get("whole_heart_dice") is not None for m in models.values()):
        cells = []
        for m in models.values():
            cells += [f"{fmt(m['whole_heart_dice'])} ± {fmt(m.get('whole_heart_dice_sd'))}", "", "", ""]
        lines.append("| whole heart | " + " | ".join(cells) + " |")
    return lines
