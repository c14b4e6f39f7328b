"""Scoring whole volumes and reporting: one implementation used by the experiments and `heartjax.evaluate`.

A case is scored on its original grid (RAS order): Dice, IoU, accuracy and foreground accuracy from integer
counts, whole-heart Dice, and the surface metrics of `heartjax.eval.metric_table` (HD95, ASSD in mm, NSD at 1 mm).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np

from heartjax.eval import metrics
from heartjax.eval.metric_table import METRICS, by_source
from heartjax.eval.surface import surface_metrics

_counts = jax.jit(metrics.confusion_counts, static_argnums=2)


def score_case(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float], names: Sequence[str], case: str) -> dict:
    """Per-case metrics of a predicted label map against the truth (same grid, uint8 indices 0..K)."""
    k = len(names) + 1
    counts = jax.device_get(_counts(np.asarray(pred), np.asarray(truth), k))
    out = metrics.case_metrics(counts, names)
    surf = surface_metrics(np.asarray(pred), np.asarray(truth), tuple(float(s) for s in spacing), k)
    for m in by_source("surface"):
        out[m.name] = {n: float(v) for n, v in zip(names, surf[m.name])}
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
    per_structure = {n: {f"{m.name}_{a}": summ[m.name][n][a] for m in METRICS for a in m.aggregation} for n in names}
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


def table_cell(scores: Mapping, metric) -> str:
    """A metric's markdown cell: mean ± sd or the mean, at the metric's digits (NaN/None as a dash)."""
    mean = fmt(scores.get(f"{metric.name}_mean"), metric.digits)
    return f"{mean} ± {fmt(scores.get(f'{metric.name}_sd'), metric.digits)}" if metric.sd_in_table else mean


def structure_table(models: Mapping[str, dict], names: Sequence[str]) -> list[str]:
    """Markdown rows: per structure, every metric of the table for each model (Dice as mean ± sd)."""
    pad = [""] * (len(METRICS) - 1)
    head = "| structure | " + " | ".join(f"{k} {m.column()}" for k in models for m in METRICS) + " |"
    lines = [head, "|" + "---|" * (1 + len(METRICS) * len(models))]
    for n in names:
        cells = [table_cell(m["per_structure"][n], metric) for m in models.values() for metric in METRICS]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    cells = []
    for m in models.values():
        cells += [f"**{fmt(m['mean_dice'])}**", *pad]
    lines.append("| mean | " + " | ".join(cells) + " |")
    if all(m.get("whole_heart_dice") is not None for m in models.values()):
        cells = []
        for m in models.values():
            cells += [f"{fmt(m['whole_heart_dice'])} ± {fmt(m.get('whole_heart_dice_sd'))}", *pad]
        lines.append("| whole heart | " + " | ".join(cells) + " |")
    return lines
