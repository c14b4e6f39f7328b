"""Post-processing: keep the largest connected component of each structure, when validation says it helps.

nnU-Net's rule: apply it only if the mean validation Dice improves and no structure gets worse.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from heartjax.eval import scoring as evaluation


def keep_largest_component(labels: np.ndarray, classes: Sequence[int] | None = None) -> np.ndarray:
    """Keep only the largest 26-connected component of each class in `classes` (default: all foreground).

    labels: int [X, Y, Z] (or [X, Y]). Removed voxels become background. Returns a new array of the same dtype.
    """
    out = labels.copy()
    classes = [int(c) for c in np.unique(labels) if c] if classes is None else classes
    structure = np.ones((3,) * labels.ndim, bool)
    for c in classes:
        mask = labels == c
        if not mask.any():
            continue
        comp, n = ndimage.label(mask, structure)
        if n <= 1:
            continue
        sizes = np.bincount(comp.ravel())[1:]
        out[mask & (comp != 1 + int(np.argmax(sizes)))] = 0
    return out


def decide(cases: Sequence[tuple[np.ndarray, np.ndarray, Sequence[float], str]], names: Sequence[str]) -> dict:
    """Decide on validation cases (pred, truth, spacing, case id) whether to keep the largest components.

    Returns {"largest_component": bool, "dice_before": {name: mean}, "dice_after": {...}} (JSON-ready).
    """
    before, after = [], []
    for pred, truth, spacing, cid in cases:
        before.append(evaluation.score_case(pred, truth, spacing, names, cid))
        after.append(evaluation.score_case(keep_largest_component(pred), truth, spacing, names, cid))

    def means(scores):
        out = {}
        for n in names:
            vals = [s["dice"][n] for s in scores if np.isfinite(s["dice"][n])]
            out[n] = float(np.mean(vals)) if vals else None
        return out

    b, a = means(before), means(after)
    pairs = [(b[n], a[n]) for n in names if b[n] is not None and a[n] is not None]
    better = bool(pairs) and np.mean([y for _, y in pairs]) > np.mean([x for x, _ in pairs])
    no_worse = all(y >= x - 1e-9 for x, y in pairs)
    return {"largest_component": bool(better and no_worse), "dice_before": b, "dice_after": a}
