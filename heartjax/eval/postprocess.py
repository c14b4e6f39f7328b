"""Post-processing: keep one connected component of a structure, decided per structure on validation patients.

The kept component is the heart's (`keep_main_component`), decided jointly for all structures so that a second,
false "heart" elsewhere in the field of view cannot win a structure from the true one. Components are 26-connected
(8 in 2D). A component is a *candidate* of its structure unless it is negligible: smaller than `MIN_FRACTION` (0.1)
of that structure's largest component (a structure's largest component is always a candidate).

1. **The heart region.** Take the connected components of the union of all foreground classes, the "regions". A
   region holds a structure when it holds a candidate of it; a structure with a single candidate in the whole map
   is an anchor (unambiguous: its place is certain). The heart region is the one with, in this order of
   precedence: the most structures; then the most anchors; then the most voxels weighted by a prior on where the
   heart sits, exp(-d^2 / (2 * 0.15^2)) with d the distance of the region's centroid from the centre of the field
   of view in fractions of its extent per axis (scans are planned and reconstructed around the heart, and a
   weakly trained network's false "heart" can hold every structure and be the larger one; 0.15 was chosen on two
   such cases, a smoke-sized ACDC model and a weak 3D ACDC model, where both a plain voxel count and the nearer
   centroid alone chose the false region); then the most voxels; then,
   as the final tie-break,
   the one whose first voxel comes first in row-major (C-order) scan order (the lowest label
   `scipy.ndimage.label` gives it). Every foreground class counts here, also those the rule is not applied to.
2. **One component per structure.** A structure with several components keeps its largest candidate inside the
   heart region; one with no candidate there keeps its largest component. Equal sizes: the component whose first
   voxel comes first in scan order.
3. **Touching.** A kept component that touches (26-neighbourhood) no kept voxel of another structure is replaced,
   when the structure has candidates that do touch one, by the largest of those, preferring those inside the
   heart region (ties as in 2). Structures are visited in ascending label order and the passes repeat until
   nothing changes; each replacement adds at least one touching pair of kept components and removes none, so the
   passes end.

Steps 1-3 run on every structure with several components, whichever classes are post-processed, and then only
the classes asked for lose their other components: the component a structure keeps does not depend on which other
structures are post-processed, so what `decide` measures per structure (all structures post-processed) is what
`apply` does with the structures it chose, and a kept component that touches a kept structure in steps 1-3 still
touches it in the output.

The negligible-component guard keeps a structure that lies apart from the heart region (a vessel the network
detached by a one-voxel gap) from being swapped for a few stray voxels of it on the heart's surface; with
`min_fraction=0` every component is a candidate. A structure the network found is never removed (it keeps one
component), classes outside `classes` are left as they are, and the result depends on the label map only (no
probabilities, no randomness). `decide` keeps the rule for a structure only where it raises that structure's mean
validation Dice (nnU-Net decides per class too), and `apply` replays the decision. `keep_largest_component` (every
class, plain largest) is the rule of run folders written before the per-structure decision, which `apply` still
honours.
"""

from __future__ import annotations

import itertools
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from heartjax.eval import scoring as evaluation

MIN_FRACTION = 0.1  # a component smaller than this fraction of its structure's largest is negligible
CENTRE_SIGMA = 0.15  # the heart-position prior's width, in fractions of the field of view per axis


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


def _components(labels: np.ndarray, present: Sequence[int], structure: np.ndarray):
    """Every class's components numbered 1..G, class by class in ascending order and in scan order within a class.
    Returns (component map int32, class of each id [G + 1], size of each id [G + 1])."""
    comp = np.zeros(labels.shape, np.int32)
    boxes = ndimage.find_objects(labels.astype(np.int64, copy=False))
    cls, total = [0], 0
    for c in present:
        box = boxes[c - 1]
        lab, n = ndimage.label(labels[box] == c, structure)
        sub = comp[box]
        sub[lab > 0] = lab[lab > 0] + total
        cls += [c] * n
        total += n
    return comp, np.asarray(cls), np.bincount(comp.ravel(), minlength=total + 1)


def _neighbours(comp: np.ndarray, count: int) -> list[set]:
    """For each component id, the ids it touches (26-neighbourhood, 8 in 2D). Components of one class never touch
    (they would be one), so these are always other classes."""
    pairs = []
    for off in itertools.product((-1, 0, 1), repeat=comp.ndim):
        if off <= (0,) * comp.ndim:  # half the neighbourhood: each pair of neighbours once
            continue
        a = comp[tuple(slice(max(-o, 0), s - max(o, 0)) for o, s in zip(off, comp.shape))]
        b = comp[tuple(slice(max(o, 0), s - max(-o, 0)) for o, s in zip(off, comp.shape))]
        m = (a != b) & (a > 0) & (b > 0)
        if m.any():
            pairs.append(np.unique(a[m].astype(np.int64) * (count + 1) + b[m]))
    out = [set() for _ in range(count + 1)]
    for code in (np.unique(np.concatenate(pairs)) if pairs else ()):
        i, j = divmod(int(code), count + 1)
        out[i].add(j)
        out[j].add(i)
    return out


def _centre_prior(region: np.ndarray, n_regions: int, crop, shape) -> np.ndarray:
    """Per region 1..n (index 0: 0) the prior exp(-d^2 / (2 CENTRE_SIGMA^2)), d the distance of its centroid from
    the centre of the whole field of view in fractions of the field's extent per axis (no spacing needed), rounded
    to 1e-6 so that mirror-image regions tie."""
    com = np.asarray(ndimage.center_of_mass(np.ones(region.shape), region, range(1, n_regions + 1)), float)
    com = com.reshape(n_regions, len(shape)) + [s.start for s in crop]
    d = np.round(np.sqrt((((com - (np.asarray(shape) - 1) / 2) / np.asarray(shape)) ** 2).sum(1)), 6)
    return np.concatenate([[0.0], np.exp(-0.5 * (d / CENTRE_SIGMA) ** 2)])


def keep_main_component(labels: np.ndarray, classes: Sequence[int] | None = None, *,
                        min_fraction: float = MIN_FRACTION) -> np.ndarray:
    """For each class in `classes` (default: all foreground) keep one 26-connected component (8 in 2D), the heart's,
    chosen jointly for all structures by the rule of the module docstring: the largest candidate inside the region
    of the foreground union holding the most structures (then anchors, voxels near the centre, scan order), and never one touching
    no other kept structure when a candidate that does exists. A class present before is present after; other
    classes are left alone. Removed voxels become background; returns a new array of the input's dtype."""
    out = labels.copy()
    present = [int(c) for c in np.unique(labels) if c]
    wanted = present if classes is None else sorted({int(c) for c in classes} & set(present))
    if not wanted:
        return out
    fg = labels != 0
    crop = ndimage.find_objects(fg.astype(np.uint8))[0]  # everything happens inside the foreground's box
    lab, fg = labels[crop], fg[crop]
    structure = np.ones((3,) * labels.ndim, bool)
    comp, cls, size = _components(lab, present, structure)
    ids = {c: np.flatnonzero(cls == c) for c in present}
    if all(len(ids[c]) == 1 for c in wanted):
        return out
    # choose for every structure with several components, whichever `classes` are: a structure's choice then does
    # not depend on which others are post-processed (what `decide` measures with all of them is what `apply` does)
    subject = [c for c in present if len(ids[c]) > 1]
    cand = {c: [int(g) for g in ids[c] if size[g] >= min_fraction * size[ids[c]].max()] for c in present}

    # 1. the heart region: most structures, then anchors, then voxels under the position prior, then scan order
    region, n_regions = ndimage.label(fg, structure)
    region_of = np.zeros(len(cls), np.int64)
    region_of[comp[fg]] = region[fg]
    n_struct, n_anchor = np.zeros(n_regions + 1, np.int64), np.zeros(n_regions + 1, np.int64)
    for c in present:
        n_struct[np.unique(region_of[cand[c]])] += 1
        if len(cand[c]) == 1:
            n_anchor[region_of[cand[c][0]]] += 1
    voxels = np.bincount(region.ravel(), minlength=n_regions + 1)
    weight = voxels * _centre_prior(region, n_regions, crop, labels.shape)  # voxels under a prior on the heart's place
    heart = max(range(1, n_regions + 1), key=lambda r: (n_struct[r], n_anchor[r], weight[r], voxels[r], -r))

    largest = lambda pool: max(pool, key=lambda g: (size[g], -g))  # noqa: E731  ties: first in scan order
    # 2. per structure, its largest candidate in the heart region (its largest anywhere when it has none there)
    choice = {c: largest([g for g in cand[c] if region_of[g] == heart] or cand[c]) for c in subject}

    # 3. never a component touching no other kept structure when a candidate that does exists
    neighbours = _neighbours(comp, len(cls) - 1)
    changed = True
    while changed:  # each change adds >= 1 touching pair of kept components and removes none: it terminates
        changed = False
        for c in subject:
            kept = {int(g) for d in present if d != c for g in ([choice[d]] if d in choice else ids[d])}
            touching = [g for g in cand[c] if neighbours[g] & kept]
            if touching and choice[c] not in touching:
                choice[c] = largest([g for g in touching if region_of[g] == heart] or touching)
                changed = True

    sub = out[crop]
    for c in wanted:
        if c in choice:
            sub[(cls[comp] == c) & (comp != choice[c])] = 0
    return out


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
