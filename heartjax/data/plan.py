"""Dataset fingerprint and an nnU-Net-like plan: target spacing, normalisation, patch and batch sizes, strides.

The plan is data (a frozen dataclass that round-trips through JSON); every field can be overridden by config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any, Mapping, Sequence

import numpy as np

from heartjax.errors import HeartjaxError

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
class Plan:
    """Everything preprocessing, sampling and the two networks need to agree on.

    Axes are RAS. `slice_axis` is the axis 2D slices are cut along (the coarsest one, the acquisition's).
    `patch_3d` is [X, Y, Z]; `patch_2d` is the in-plane patch (the two axes other than slice_axis, in order).
    """

    target_spacing: tuple[float, float, float]
    modality: str
    normalization: str  # "ct" (clip to foreground percentiles, z-score with dataset stats) | "zscore" (per volume)
    ct_clip: tuple[float, float]
    ct_mean: float
    ct_std: float
    slice_axis: int
    patch_3d: tuple[int, int, int]
    batch_3d: int
    strides_3d: tuple[tuple[int, ...], ...]
    kernels_3d: tuple[tuple[int, ...], ...]
    patch_2d: tuple[int, int]
    batch_2d: int
    strides_2d: tuple[tuple[int, ...], ...]
    kernels_2d: tuple[tuple[int, ...], ...]
    depth: int
    crop_margin_mm: float = 10.0

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Plan":
        def tup(x):
            return tuple(tup(i) for i in x) if isinstance(x, (list, tuple)) else x
        return cls(**{k: tup(v) for k, v in data.items()})

    def key(self) -> str:
        """A short hash identifying the preprocessing (cache key): only the fields that change preprocessed data."""
        fields = {k: self.to_json()[k] for k in ("target_spacing", "normalization", "ct_clip", "ct_mean", "ct_std", "crop_margin_mm")}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]

    def in_plane_axes(self) -> tuple[int, int]:
        """The two axes of a 2D slice."""
        return tuple(a for a in range(3) if a != self.slice_axis)


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


def make_plan(fp: Fingerprint, depth: int = 4, target_spacing=None, patch_3d=None, patch_2d=None,
              batch_3d: int = 2, batch_2d: int = 16, max_patch_voxels_3d: int = 96**3,
              max_patch_voxels_2d: int = 256**2, crop_margin_mm: float = 10.0) -> Plan:
    """Derive a plan from a fingerprint; any argument that is not None overrides the derived value."""
    spacings = np.array(fp.spacings, float)
    tspacing = np.array(target_spacing, float) if target_spacing is not None else target_spacing_from(spacings)
    if tspacing.shape != (3,) or np.any(tspacing <= 0):
        raise HeartjaxError(f"plan.target_spacing must be three positive numbers in mm, got {target_spacing}")
    if batch_3d < 1 or batch_2d < 1:
        raise HeartjaxError(f"plan.batch_3d and plan.batch_2d must be >= 1, got {batch_3d}, {batch_2d}")
    shapes_mm = np.array(fp.shapes, float) * spacings
    median_shape = np.median(shapes_mm, axis=0) / tspacing
    slice_axis = int(np.argmax(np.median(spacings, axis=0)))
    if np.allclose(np.median(spacings, axis=0), np.median(spacings, axis=0).max(), rtol=0.05):
        slice_axis = 2  # isotropic: slice axially, as CT is read

    if patch_3d is None:
        provisional = [max(8, int(m)) for m in median_shape]
        strides3, _ = stage_layout(tspacing, provisional, depth)
        div3 = tuple(math.prod(s[a] for s in strides3) for a in range(3))
        patch_3d = _fit_patch(median_shape, div3, max_patch_voxels_3d, max_edge=256)
    patch_3d = tuple(int(p) for p in patch_3d)
    strides3, kernels3 = stage_layout(tspacing, patch_3d, depth)

    inplane = [a for a in range(3) if a != slice_axis]
    if patch_2d is None:
        div2 = (2**depth, 2**depth)
        patch_2d = _fit_patch(median_shape[inplane], div2, max_patch_voxels_2d, max_edge=512)
    patch_2d = tuple(int(p) for p in patch_2d)
    strides2, kernels2 = stage_layout(tspacing[inplane], patch_2d, depth)

    for name, patch, strides in (("patch_3d", patch_3d, strides3), ("patch_2d", patch_2d, strides2)):
        div = [math.prod(s[a] for s in strides) for a in range(len(patch))]
        if any(p % d or p <= 0 for p, d in zip(patch, div)):
            raise HeartjaxError(f"plan.{name} {patch} must be positive multiples of {tuple(div)} for depth {depth}")

    clip = (fp.fg_p005, fp.fg_p995)
    return Plan(
        target_spacing=tuple(float(s) for s in tspacing), modality=fp.modality,
        normalization="ct" if fp.modality == "ct" else "zscore",
        ct_clip=(float(clip[0]), float(clip[1])), ct_mean=fp.fg_mean, ct_std=max(fp.fg_std, 1e-6),
        slice_axis=slice_axis, patch_3d=patch_3d, batch_3d=int(batch_3d), strides_3d=strides3, kernels_3d=kernels3,
        patch_2d=patch_2d, batch_2d=int(batch_2d), strides_2d=strides2, kernels_2d=kernels2, depth=int(depth),
        crop_margin_mm=float(crop_margin_mm),
    )
