"""Dataset fingerprint and an nnU-Net-like plan: target spacing, normalisation, patch and batch sizes, strides.

The plan is data (a frozen dataclass that round-trips through JSON), keyed by model kind as nnU-Net keys
`plans["configurations"]`: each kind's spacing, patch, batch and stage layout under its name. Config sets the
inputs (`plan.*`, `plan.kinds.KIND.*`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any, Mapping, Sequence

import numpy as np

from heartjax.config.presets import OLD_PLAN_SUFFIXES, PLAN_KINDS
from heartjax.config.schema import KindPlanConfig, KindTable, PlanConfig
from heartjax.common.errors import HeartjaxError

ANISO_THRESHOLD = 3.0  # nnU-Net: an axis > 3x coarser than the others is "anisotropic"


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """What the plan is derived from. Spacings/shapes are per case in RAS axis order (shapes after body crop)."""

    spacings: tuple[tuple[float, float, float], ...]
    shapes: tuple[tuple[int, int, int], ...]
    modality: str
    fg_mean: float
    fg_std: float
    fg_p005: float
    fg_p995: float
    fg_median: float

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def fingerprint(volumes: Sequence, modality: str, max_samples_per_case: int = 100_000, seed: int = 0) -> Fingerprint:
    """Fingerprint training volumes (heartjax.data.io.images.Volume with labels) : spacings, shapes, foreground intensities.

    Foreground intensities are sampled (at most `max_samples_per_case` voxels per case, deterministic by seed)
    from voxels with label > 0, as nnU-Net does for its CT normalisation statistics.
    """
    if not volumes:
        raise HeartjaxError("cannot plan an empty dataset: no training cases were given")
    rng = np.random.default_rng(seed)
    samples = []
    for v in volumes:
        fg = v.image[v.label > 0] if v.label is not None else v.image.ravel()
        if fg.size > max_samples_per_case:
            fg = rng.choice(fg, max_samples_per_case, replace=False)
        samples.append(fg.astype(np.float64))
    allfg = np.concatenate(samples) if samples else np.zeros(1)
    return Fingerprint(
        spacings=tuple(tuple(float(s) for s in v.spacing) for v in volumes),
        shapes=tuple(tuple(int(s) for s in v.image.shape) for v in volumes),
        modality=modality,
        fg_mean=float(allfg.mean()),
        fg_std=float(allfg.std()),
        fg_p005=float(np.percentile(allfg, 0.5)),
        fg_p995=float(np.percentile(allfg, 99.5)),
        fg_median=float(np.median(allfg)),
    )


@dataclasses.dataclass(frozen=True)
class KindPlan:
    """One kind's entry of the plan, as nnU-Net's plans["configurations"][name]: the spacing of its axes, its patch
    and batch, and its stage layout (`strides[i]` into stage i + 1, `kernels[i]` of stage i). A 3D kind's axes are
    the volume's; a 2D kind's the two in-plane axes (those other than the plan's slice axis, in order)."""

    spatial_dims: int
    spacing: tuple[float, ...]
    patch: tuple[int, ...]
    batch: int
    strides: tuple[tuple[int, ...], ...]
    kernels: tuple[tuple[int, ...], ...]
    inherits_from: str | None = None  # the kind whose settings it took where it set none (config plan.kinds)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything preprocessing, sampling and the networks need to agree on.

    Axes are RAS. `slice_axis` is the axis 2D slices are cut along (the coarsest one, the acquisition's). `kinds`
    holds each model kind's entry (`KindPlan`), by name.
    """

    target_spacing: tuple[float, float, float]
    modality: str
    normalization: str  # "ct" (clip to foreground percentiles, z-score with dataset stats) | "zscore" (per volume)
    ct_clip: tuple[float, float]
    ct_mean: float
    ct_std: float
    slice_axis: int
    depth: int
    kinds: dict[str, KindPlan]
    crop_margin_mm: float = 10.0

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Plan":
        def tup(x):
            return tuple(tup(i) for i in x) if isinstance(x, (list, tuple)) else x
        data = dict(data) if "kinds" in data else _from_old(data)
        kinds = KindTable({k: KindPlan(**{f: tup(v) for f, v in e.items()}) for k, e in data.pop("kinds").items()})
        return cls(**{k: tup(v) for k, v in data.items()}, kinds=kinds)

    def key(self) -> str:
        """A short hash identifying the preprocessing (cache key): only the fields that change preprocessed data."""
        fields = {k: self.to_json()[k] for k in ("target_spacing", "normalization", "ct_clip", "ct_mean", "ct_std", "crop_margin_mm")}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]

    def in_plane_axes(self) -> tuple[int, int]:
        """The two axes of a 2D slice."""
        return tuple(a for a in range(3) if a != self.slice_axis)

    def kind(self, name: str) -> KindPlan:
        """The entry of model kind `name`; HeartjaxError naming the kinds the plan has when it has none."""
        if name not in self.kinds:
            raise HeartjaxError(f"the plan has no entry for model kind {name!r} (it has {list(self.kinds)}); add one "
                                f"in the config, e.g. plan.kinds.{name}.inherits_from=KIND, and plan again")
        return self.kinds[name]


def _from_old(data: Mapping[str, Any]) -> dict:
    """A plan.json of heartjax <= 0.5 (fields patch_3d, batch_2d, ...) in today's layout, kinds as keys."""
    data, kinds = dict(data), {}
    if not all(f"{f}{s}" in data for f in ("patch", "batch", "strides", "kernels") for s in OLD_PLAN_SUFFIXES):
        raise HeartjaxError("plan.json has neither `kinds` (this heartjax) nor the fields patch_3d, batch_3d, "
                            "strides_3d, kernels_3d and their _2d twins (heartjax <= 0.5); plan the run again")
    for suffix, kind in OLD_PLAN_SUFFIXES.items():
        patch = data.pop(f"patch{suffix}")
        kinds[kind] = dict(spatial_dims=len(patch), patch=patch, batch=data.pop(f"batch{suffix}"),
                           spacing=kind_spacing(data["target_spacing"], data["slice_axis"], len(patch)),
                           strides=data.pop(f"strides{suffix}"), kernels=data.pop(f"kernels{suffix}"))
    for kind, entry in PLAN_KINDS.items():  # kinds that took an old entry whole (2.5d: 2d's)
        if kind not in kinds and entry.get("inherits_from") in kinds:
            kinds[kind] = {**kinds[entry["inherits_from"]], "inherits_from": entry["inherits_from"]}
    return {**data, "kinds": kinds}


def kind_spacing(target_spacing, slice_axis: int, spatial_dims: int) -> tuple[float, ...]:
    """The spacing of a kind's axes: all three in 3D, the in-plane two in 2D."""
    axes = range(3) if spatial_dims == 3 else [a for a in range(3) if a != slice_axis]
    return tuple(float(target_spacing[a]) for a in axes)


def target_spacing_from(spacings: np.ndarray) -> np.ndarray:
    """Median spacing; a strongly anisotropic axis takes its 10th percentile instead (nnU-Net's rule)."""
    med = np.median(spacings, axis=0)
    worst = int(np.argmax(med))
    others = np.delete(med, worst)
    if med[worst] > ANISO_THRESHOLD * others.max():
        med[worst] = max(np.percentile(spacings[:, worst], 10), others.max())
    return med


def stage_layout(spacing: Sequence[float], patch: Sequence[int], depth: int):
    """nnU-Net-like per-stage strides and kernels: only axes within 2x of the finest spacing are pooled and get
    3-wide kernels; an axis also stops pooling once its feature map would drop below 4 voxels."""
    sp, size = np.array(spacing, float), np.array(patch, int)
    strides, kernels = [], []
    for stage in range(depth + 1):
        fine = sp <= 2.0 * sp.min()
        kernels.append(tuple(3 if f else 1 for f in fine))
        if stage == depth:
            break
        s = tuple(2 if (f and size[a] // 2 >= 4) else 1 for a, f in enumerate(fine))
        strides.append(s)
        sp, size = sp * np.array(s), size // np.array(s)
    return tuple(strides), tuple(kernels)


def _fit_patch(median_shape, divisor, max_voxels, max_edge):
    """Round the median shape up to the divisor, then shrink the largest axis until it fits the voxel budget."""
    patch = [min(int(math.ceil(m / d) * d), max(d, (max_edge // d) * d)) for m, d in zip(median_shape, divisor)]
    while math.prod(patch) > max_voxels:
        a = int(np.argmax([p / d for p, d in zip(patch, divisor)]))
        if patch[a] <= divisor[a]:
            break
        patch[a] -= divisor[a]
    return tuple(patch)


def _kind_entry(name: str, k: KindPlanConfig, tspacing: np.ndarray, median_shape: np.ndarray, slice_axis: int,
                depth: int) -> KindPlan:
    """One kind's entry: its patch (given, or fitted to the median shape) and the stage layout for it."""
    if k.spatial_dims not in (2, 3) or k.batch is None or k.batch < 1:
        raise HeartjaxError(f"plan.kinds.{name} needs spatial_dims 2 or 3 and a batch >= 1, got {k}")
    axes = list(range(3)) if k.spatial_dims == 3 else [a for a in range(3) if a != slice_axis]
    patch = k.patch
    if patch is None and k.spatial_dims == 3:
        provisional = [max(8, int(m)) for m in median_shape]
        strides, _ = stage_layout(tspacing, provisional, depth)
        div = tuple(math.prod(s[a] for s in strides) for a in range(3))
        patch = _fit_patch(median_shape, div, k.max_patch_voxels, max_edge=256)
    elif patch is None:
        patch = _fit_patch(median_shape[axes], (2**depth, 2**depth), k.max_patch_voxels, max_edge=512)
    patch = tuple(int(p) for p in patch)
    strides, kernels = stage_layout(tspacing[axes], patch, depth)
    div = [math.prod(s[a] for s in strides) for a in range(len(patch))]
    if len(patch) != k.spatial_dims or any(p % d or p <= 0 for p, d in zip(patch, div)):
        raise HeartjaxError(f"plan.kinds.{name}.patch {patch} must be {k.spatial_dims} positive multiples of "
                            f"{tuple(div)} for depth {depth}")
    return KindPlan(k.spatial_dims, kind_spacing(tspacing, slice_axis, k.spatial_dims), patch, int(k.batch),
                    strides, kernels, k.inherits_from)


def make_plan(fp: Fingerprint, kinds: Mapping[str, KindPlanConfig], depth: int = 4, target_spacing=None,
              crop_margin_mm: float = 10.0) -> Plan:
    """Derive a plan from a fingerprint; `kinds`: each kind's settings (inherited values filled in, e.g.
    `PlanConfig.entry`); a patch or target spacing that is not None overrides the derived value."""
    spacings = np.array(fp.spacings, float)
    tspacing = np.array(target_spacing, float) if target_spacing is not None else target_spacing_from(spacings)
    if tspacing.shape != (3,) or np.any(tspacing <= 0):
        raise HeartjaxError(f"plan.target_spacing must be three positive numbers in mm, got {target_spacing}")
    shapes_mm = np.array(fp.shapes, float) * spacings
    median_shape = np.median(shapes_mm, axis=0) / tspacing
    slice_axis = int(np.argmax(np.median(spacings, axis=0)))
    if np.allclose(np.median(spacings, axis=0), np.median(spacings, axis=0).max(), rtol=0.05):
        slice_axis = 2  # isotropic: slice axially, as CT is read
    entries = KindTable({name: _kind_entry(name, k, tspacing, median_shape, slice_axis, depth)
                         for name, k in kinds.items()})
    clip = (fp.fg_p005, fp.fg_p995)
    return Plan(
        target_spacing=tuple(float(s) for s in tspacing), modality=fp.modality,
        normalization="ct" if fp.modality == "ct" else "zscore",
        ct_clip=(float(clip[0]), float(clip[1])), ct_mean=fp.fg_mean, ct_std=max(fp.fg_std, 1e-6),
        slice_axis=slice_axis, depth=int(depth), kinds=entries, crop_margin_mm=float(crop_margin_mm),
    )


def plan_kinds(p: PlanConfig) -> dict[str, KindPlanConfig]:
    """Every kind's settings of a PlanConfig, inherited values filled in (what `make_plan` takes)."""
    return {kind: p.entry(kind) for kind in p.kinds}
