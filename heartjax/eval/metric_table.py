"""The metric table: every per-structure metric once, with its function, direction, unit and aggregation.

Scoring (`heartjax.eval.scoring`, `heartjax.eval.surface`), the per-structure summaries of results.json
(`StructureScores`), the markdown tables, `python -m heartjax.evaluate`'s CSV and JSON, and the ablation run records
all read this table, so a new metric is one entry here.

Two sources: "counts" metrics come from the integer confusion counts of one bincount (`heartjax.eval.metrics`);
"surface" metrics from the two directed surface distance arrays of a structure (`heartjax.eval.surface`), with a
`worst` value for a structure present in exactly one of prediction and truth (the image diagonal for distances, 0
for NSD: a model must not look better by missing a structure).

NSD (normalised surface Dice, Nikolov et al. 2021, "Clinically applicable segmentation of head and neck anatomy
for radiotherapy"): the share of both surfaces' voxels within `tolerance` mm of the other surface,
(|d(P->G) <= tau| + |d(G->P) <= tau|) / (|edge P| + |edge G|), counted over surface voxels as MONAI's
`SurfaceDiceMetric` does (not over surface-element areas).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Metric:
    """One per-structure metric.

    name: its key in per-case records and results ("dice" -> per_structure "dice_mean"); title: its column
    title; direction: "higher" or "lower" is better; unit: "" or "mm"; aggregation: the statistics over cases kept
    per structure (of mean, sd, median); digits: decimals in tables; source: "counts" or "surface"; fn: for a
    surface metric, (d_pred_to_truth, d_truth_to_pred) -> value; worst: (image diagonal in mm) -> the value of a
    structure present in exactly one map; record: kept per case in ablation run records; sd_in_table: the
    markdown tables show mean ± sd (else the mean).
    """

    name: str
    title: str
    direction: str
    unit: str
    aggregation: tuple[str, ...]
    digits: int
    source: str
    fn: Callable[[np.ndarray, np.ndarray], float] | None = None
    worst: Callable[[float], float] | None = None
    record: bool = False
    sd_in_table: bool = False

    def keys(self) -> list[str]:
        """Its per-structure summary keys, e.g. ["dice_mean", "dice_sd", "dice_median"]."""
        return [f"{self.name}_{a}" for a in self.aggregation]

    def column(self) -> str:
        return f"{self.title} {self.unit}".strip()


def hd95(d_pt: np.ndarray, d_tp: np.ndarray) -> float:
    """max of the two directed 95th percentiles (MONAI's HausdorffDistanceMetric(percentile=95))."""
    return max(np.percentile(d_pt, 95), np.percentile(d_tp, 95))


def assd(d_pt: np.ndarray, d_tp: np.ndarray) -> float:
    """Mean of both directed distance arrays together (MONAI's SurfaceDistanceMetric(symmetric=True))."""
    return (d_pt.sum() + d_tp.sum()) / (d_pt.size + d_tp.size)


def surface_dice(tolerance_mm: float) -> Callable[[np.ndarray, np.ndarray], float]:
    """NSD at `tolerance_mm`: the share of both surfaces within the tolerance of the other."""
    def nsd(d_pt: np.ndarray, d_tp: np.ndarray) -> float:
        return float((np.sum(d_pt <= tolerance_mm) + np.sum(d_tp <= tolerance_mm)) / (d_pt.size + d_tp.size))
    return nsd


def _diagonal(diagonal: float) -> float:
    return diagonal


def _zero(diagonal: float) -> float:
    return 0.0


METRICS: tuple[Metric, ...] = (
    Metric("dice", "Dice", "higher", "", ("mean", "sd", "median"), 3, "counts", record=True, sd_in_table=True),
    Metric("iou", "IoU", "higher", "", ("mean", "sd"), 3, "counts"),
    Metric("hd95", "HD95", "lower", "mm", ("mean", "sd"), 1, "surface", hd95, _diagonal, record=True),
    Metric("assd", "ASSD", "lower", "mm", ("mean", "sd"), 2, "surface", assd, _diagonal),
    Metric("nsd", "NSD 1 mm", "higher", "", ("mean", "sd"), 3, "surface", surface_dice(1.0), _zero),
)


def by_source(source: str) -> tuple[Metric, ...]:
    return tuple(m for m in METRICS if m.source == source)


def summary_keys() -> list[str]:
    """Every per-structure summary key, in table order (the fields of results' StructureScores)."""
    return [k for m in METRICS for k in m.keys()]
