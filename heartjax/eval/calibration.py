"""Uncertainty and calibration of a model's softmax on one test patient (pure numpy, vectorised).

Definitions (docs/calibration.md has them with how to read them). On a region R of voxels (in the experiment: the
reference heart's bounding box on the original grid, widened by `MARGIN_MM` on every side), with C classes
(background included), probabilities p[v, k] and reference labels y[v]:

- top-label ECE (Guo et al. 2017): the confidence c = max_k p[v, k] and the prediction argmax_k p[v, k] are put in
  `N_BINS` equal-width bins of c, ((m-1)/M, m/M] (c = 0 in the first); ECE = sum_m |B_m| / |R| * |acc(B_m) -
  conf(B_m)| with acc the share of correct predictions and conf the mean confidence of the bin.
- class-wise ECE of structure k: the same with c = p[v, k] and "correct" = 1[y = k] (one-vs-rest).
- Brier score of structure k (one-vs-rest): mean over R of (p[v, k] - 1[y = k])^2; `brier_all` sums this over
  all C classes (the multi-class Brier score, 0 best, 2 worst).
- voxel entropy H = -sum_k p log p (natural log, in [0, log C]; 0 log 0 = 0).
- entropy-error AUROC: the probability that a misclassified voxel of R has a higher entropy than a correctly
  classified one, ties counting one half (Mann-Whitney U / (n_err n_ok), from average ranks); undefined (NaN) when
  R holds no error or only errors.
- Dice-entropy Spearman: the rank correlation (average ranks for ties) over test patients of each patient's mean
  Dice with its mean entropy over R; undefined below three patients.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

N_BINS = 15
MARGIN_MM = 10.0
REGION = f"reference heart bounding box + {MARGIN_MM:g} mm margin, original grid"


def heart_box(truth: np.ndarray, spacing: Sequence[float], margin_mm: float = MARGIN_MM) -> tuple[slice, ...] | None:
    """The bounding box of truth > 0 widened by `margin_mm` per side (whole voxels, clipped); None without heart."""
    fg = truth > 0
    if not fg.any():
        return None
    box = []
    for axis, (n, s) in enumerate(zip(truth.shape, spacing)):
        other = tuple(a for a in range(truth.ndim) if a != axis)
        idx = np.flatnonzero(fg.any(axis=other))
        pad = int(math.ceil(margin_mm / float(s)))
        box.append(slice(max(0, int(idx[0]) - pad), min(n, int(idx[-1]) + 1 + pad)))
    return tuple(box)


class EceHistogram:
    """A streaming ECE: add (confidence, correct) arrays in chunks, read `value()`; equal-width bins on [0, 1]."""

    def __init__(self, n_bins: int = N_BINS):
        self.n_bins = n_bins
        self.count = np.zeros(n_bins, np.int64)
        self.conf = np.zeros(n_bins, np.float64)
        self.hits = np.zeros(n_bins, np.float64)

    def add(self, confidence: np.ndarray, correct: np.ndarray) -> "EceHistogram":
        c = np.asarray(confidence, np.float64).ravel()
        idx = np.clip(np.ceil(c * self.n_bins).astype(np.int64) - 1, 0, self.n_bins - 1)
        self.count += np.bincount(idx, minlength=self.n_bins)
        self.conf += np.bincount(idx, weights=c, minlength=self.n_bins)
        self.hits += np.bincount(idx, weights=np.asarray(correct, np.float64).ravel(), minlength=self.n_bins)
        return self

    def value(self) -> float:
        n = self.count.sum()
        if n == 0:
            return math.nan
        return float(np.abs(self.hits - self.conf).sum() / n)  # sum_m |B_m|/n |acc_m - conf_m|


def ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> float:
    """Expected calibration error of confidences against 0/1 outcomes (equal-width bins)."""
    return EceHistogram(n_bins).add(confidence, correct).value()


def brier(prob: np.ndarray, target: np.ndarray) -> float:
    """Mean of (p - 1[target])^2 over the voxels (one class, one-vs-rest)."""
    d = np.asarray(prob, np.float64).ravel() - np.asarray(target, np.float64).ravel()
    return float(np.mean(d * d)) if d.size else math.nan


def entropy(probs: np.ndarray) -> np.ndarray:
    """Voxel entropy -sum_k p log p over the last axis, float32, clipped to [0, log C] (accumulated per class)."""
    out = np.zeros(probs.shape[:-1], np.float32)
    for k in range(probs.shape[-1]):
        p = probs[..., k].astype(np.float32, copy=False)
        out -= p * np.log(np.maximum(p, np.float32(1e-30)))
    return np.clip(out, 0.0, np.float32(math.log(probs.shape[-1])), out=out)


def _tie_groups(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort order of x, each sorted value's tie group, and each group's average rank (1-based)."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    new = np.empty(xs.size, bool)
    new[:1] = True
    np.not_equal(xs[1:], xs[:-1], out=new[1:])
    group = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], xs.size)
    return order, group, (starts + 1 + ends) / 2.0


def average_ranks(x) -> np.ndarray:
    """Ranks 1..n of x with ties given their average rank."""
    x = np.asarray(x, np.float64).ravel()
    order, group, avg = _tie_groups(x)
    ranks = np.empty(x.size, np.float64)
    ranks[order] = avg[group]
    return ranks


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Rank-based AUROC of `scores` for `positive` (ties averaged); NaN without both classes."""
    s, pos = np.asarray(scores).ravel(), np.asarray(positive, bool).ravel()
    n_pos = int(pos.sum())
    n_neg = s.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order, group, avg = _tie_groups(s)
    pos_per_group = np.bincount(group, weights=pos[order].astype(np.float64), minlength=avg.size)
    u = float(np.dot(pos_per_group, avg)) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation over the pairs with both values finite (average ranks); NaN below 3 pairs or for
    a constant side."""
    a = np.asarray([np.nan if v is None else v for v in x], np.float64)
    b = np.asarray([np.nan if v is None else v for v in y], np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return math.nan
    ra, rb = average_ranks(a[ok]), average_ranks(b[ok])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float(np.dot(ra, ra) * np.dot(rb, rb)))
    return float(np.dot(ra, rb) / den) if den > 0 else math.nan


def case_calibration(probs: np.ndarray, truth: np.ndarray, names: Sequence[str], n_bins: int = N_BINS) -> dict:
    """Calibration of one patient on a region: probs [..., C] (C = len(names) + 1), truth [...] class indices.

    Returns {ece, brier_all, entropy_auroc, mean_entropy, error_rate, voxels, brier: {name}, ece_class: {name}}.
    """
    c = probs.shape[-1]
    flat, y = probs.reshape(-1, c), np.asarray(truth).reshape(-1)
    pred = flat.argmax(-1)
    correct = pred == y
    conf = np.take_along_axis(flat, pred[:, None], axis=1)[:, 0]
    del pred
    briers = [brier(flat[:, k], y == k) for k in range(c)]
    h = entropy(flat)
    return {"ece": ece(conf, correct, n_bins), "brier_all": float(np.sum(briers)),
            "entropy_auroc": auroc(h, ~correct), "mean_entropy": float(h.mean(dtype=np.float64)),
            "error_rate": float(1.0 - correct.mean()), "voxels": int(y.size),
            "brier": {n: briers[k + 1] for k, n in enumerate(names)},
            "ece_class": {n: ece(flat[:, k + 1], y == k + 1, n_bins) for k, n in enumerate(names)}}


def _mean_sd(values) -> dict:
    a = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    return {"mean": float(a.mean()) if a.size else math.nan, "sd": float(a.std(ddof=1)) if a.size > 1 else math.nan}


def summarize(rows: Sequence[Mapping], dice: Sequence[tuple[str, float]], names: Sequence[str]) -> dict:
    """A model's calibration block of results.json from its per-case rows (`case_calibration` plus "case") and
    (case, mean Dice) pairs: means and sds over patients, per structure, and the Dice-entropy Spearman."""
    rows = [r for r in rows if r.get("ece") is not None]
    out = {"region": REGION, "bins": N_BINS}
    for key in ("ece", "brier_all", "entropy_auroc", "mean_entropy"):
        stats = _mean_sd(r[key] for r in rows)
        out[f"{key}_mean"], out[f"{key}_sd"] = stats["mean"], stats["sd"]
    out["per_structure"] = {}
    for n in names:
        b, e = _mean_sd(r["brier"][n] for r in rows), _mean_sd(r["ece_class"][n] for r in rows)
        out["per_structure"][n] = {"brier_mean": b["mean"], "brier_sd": b["sd"], "ece_mean": e["mean"],
                                   "ece_sd": e["sd"]}
    by_case = {r["case"]: r["mean_entropy"] for r in rows}
    pairs = [(d, by_case[c]) for c, d in dice if c in by_case]
    out["dice_entropy_spearman"] = spearman([p[0] for p in pairs], [p[1] for p in pairs])
    out["dice_entropy_patients"] = len(pairs)
    out["per_case"] = list(rows)
    return out
