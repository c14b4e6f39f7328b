"""Post-processing: keep one connected component of a structure, decided per structure on validation patients.

The kept component is the heart's (`keep_main_component`): the largest of the components that touch another
structure, or the largest when none does; a structure the network found is never removed. `decide` keeps it for
a structure only where it raises that structure's mean validation Dice (nnU-Net decides per class too), and
`apply` replays the decision. `keep_largest_component` (every class, plain largest) is the rule of run folders
written before the per-structure decision, which `apply` still honours.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from heartjax.eval import scoring as evaluation


def _keep_one_component(labels: np.ndarray, classes, choose) -> np.ndarray:
    """For each class keep one 26-connected component (8 in 2D): `choose(comp, n, sizes, mask)` returns its number
    (1..n). Removed voxels become background; returns a new array of the input's dtype."""
    out = labels.copy()
    classes = [int(c) for c in np.unique(labels) if c] if classes is None else classes
    structure = np.ones((3,) * labels.ndim, bool)
    for c in classes:
        mask = labels == c
        if not mask.any():
            continue
        comp, n = ndimage.label(mask, structure)
        if n > 1:
            out[mask & (comp != choose(comp, n, np.bincount(comp.ravel())[1:], mask))] = 0
    return out


def keep_largest_component(labels: np.ndarray, classes: Sequence[int] | None = None) -> np.ndarray:
    """Keep only the largest 26-connected component of each class in `classes` (default: all foreground).

    labels: int [X, Y, Z] (or [X, Y]). Removed voxels become background. Returns a new array of the same dtype.
    """
    return _keep_one_component(labels, classes, lambda comp, n, sizes, mask: 1 + int(np.argmax(sizes)))


def keep_main_component(labels: np.ndarray, classes: Sequence[int] | None = None) -> np.ndarray:
    """For each class in `classes` (default: all foreground) keep one 26-connected component (8 in 2D): the largest
    of those touching a voxel of another foreground class (the rest of the heart), or the largest of all when none
    does. A class present before is present after. Removed voxels become background; returns a new array."""
    structure = np.ones((3,) * labels.ndim, bool)

    def choose(comp, n, sizes, mask):
        box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in ndimage.find_objects(mask.astype(np.uint8))[0])
        others = (labels[box] != 0) & ~mask[box]  # only the class's bounding box (one voxel wider) can touch it
        touching = np.unique(comp[box][ndimage.binary_dilation(others, structure) & mask[box]])
        pool = touching[touching > 0] if (touching > 0).any() else np.arange(1, n + 1)
        return int(pool[np.argmax(sizes[pool - 1])])

    return _keep_one_component(labels, classes, choose)


def apply(labels: np.ndarray, decision: Mapping | None) -> np.ndarray:
    """Replay a `decide` result (as stored in eval_KIND.json["postprocessing"]) on a label map."""
    decision = decision or {}
    if "classes" in decision:
        keep = [int(i) for i in decision["classes"]]
        return keep_main_component(labels, keep) if keep else labels
    return keep_largest_component(labels) if decision.get("largest_component") else labels


def describe(decision: Mapping | None, names: Sequence[str]) -> str:
    """A decision in words: "main component of LV, RV", "largest component of every structure" or "none"."""
    decision = decision or {}
    if "classes" in decision:
        kept = [names[i - 1] for i in decision["classes"]]
        return "main component of " + ", ".join(kept) if kept else "none"
    return "largest component of every structure" if decision.get("largest_component") else "none"


def decide(cases: Sequence[tuple[np.ndarray, np.ndarray, Sequence[float], str]], names: Sequence[str]) -> dict:
    """Decide per structure on validation cases (pred, truth, spacing, case id) whether to keep its main component.

    A structure gets it where its mean validation Dice rises (removing voxels of one structure changes no other
    structure's Dice). Returns {"rule": "main_component", "classes": [label indices kept], "per_structure":
    {name: bool}, "largest_component": any kept, "dice_before": {name: mean}, "dice_after": {name: mean with its
    own decision}} (JSON-ready).
    """
    before, after = [], []
    for pred, truth, spacing, cid in cases:
        before.append(evaluation.score_case(pred, truth, spacing, names, cid))
        after.append(evaluation.score_case(keep_main_component(pred), truth, spacing, names, cid))

    def means(scores):
        out = {}
        for n in names:
            vals = [s["dice"][n] for s in scores if np.isfinite(s["dice"][n])]
            out[n] = float(np.mean(vals)) if vals else None
        return out

    b, a = means(before), means(after)
    per = {n: bool(b[n] is not None and a[n] is not None and a[n] > b[n] + 1e-9) for n in names}
    return {"rule": "main_component", "classes": [i + 1 for i, n in enumerate(names) if per[n]],
            "per_structure": per, "largest_component": any(per.values()), "dice_before": b,
            "dice_after": {n: (a[n] if per[n] else b[n]) for n in names}}
