"""Plausibility checks of a scan against a trained model's plan: can it hold a heart the model can segment?

A scan that passes the loader's checks (`heartjax.data.io.nifti`) may still be useless to a model: too small to hold a
heart at the plan's spacing, blank, or with intensities unlike those the model was trained on (a CT without its
Hounsfield rescaling, an MRI given to a CT model). These are warnings, not refusals: `predict` still segments the
scan, prints each warning and records it in predictions.json, so a researcher can look at those cases first.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from heartjax.data.plan import Plan
from heartjax.data.preprocess import target_shape

MIN_PATCH_FRACTION = 0.5  # a scan smaller than this fraction of the patch (at the plan's spacing) along an axis
MIN_IN_RANGE_FRACTION = 0.01  # a CT with fewer voxels than this inside the training foreground range
AIR_HU = -500.0  # CT air (and lung) lies below this; a chest CT always holds some


def constant_warning(image: np.ndarray) -> str | None:
    """A warning when every voxel has (nearly) the same intensity."""
    lo, hi = float(image.min()), float(image.max())
    if hi - lo <= 1e-6 * max(1.0, abs(lo), abs(hi)):
        return (f"constant intensity {lo:g} in every voxel: the scan is blank (an empty export or a failed "
                f"conversion?); its segmentation is meaningless. Check the file in a viewer.")
    return None


def size_warning(shape: Sequence[int], spacing: Sequence[float], plan: Plan, patch: Sequence[int],
                 axes: Sequence[int]) -> str | None:
    """A warning when the scan, resampled to the plan's spacing, is under MIN_PATCH_FRACTION of the network's
    patch (its field of view) along one of `axes` (RAS; the patch's axes, in order)."""
    resampled = target_shape(shape, spacing, plan.target_spacing)
    small = [a for a, p in zip(axes, patch) if resampled[a] < math.ceil(MIN_PATCH_FRACTION * p)]
    if not small:
        return None
    extent = [round(n * s, 1) for n, s in zip(shape, spacing)]
    view = [round(p * plan.target_spacing[a], 1) for a, p in zip(axes, patch)]
    return (f"the scan covers {extent} mm ({list(shape)} voxels); at the model's spacing "
            f"{list(plan.target_spacing)} mm that is {list(resampled)} voxels, less than half the network's field "
            f"of view ({list(patch)} voxels = {view} mm along RAS axes {list(axes)}) along axis "
            f"{small[0]}: too small to hold a heart. Check it is the whole scan, not a crop or a thumbnail.")


def intensity_warning(image: np.ndarray, plan: Plan) -> str | None:
    """A warning when the intensities are unlike the training data's: for a CT plan, no air or almost nothing in
    the training foreground range (plan.ct_clip); for an MRI plan, a CT-like share of air values."""
    lo, hi = float(image.min()), float(image.max())
    scan = f"intensities {lo:g}..{hi:g}"
    if plan.modality == "ct":
        lo_clip, hi_clip = plan.ct_clip
        inside = float(np.mean((image >= lo_clip) & (image <= hi_clip)))
        facts = []
        if lo >= AIR_HU:
            facts.append(f"no voxel below {AIR_HU:g} HU (no air or lung)")
        if inside < MIN_IN_RANGE_FRACTION:
            facts.append(f"only {100 * inside:.2g} % of voxels in the training data's foreground range "
                         f"{lo_clip:g}..{hi_clip:g} HU")
        if not facts:
            return None
        return (f"{scan}: {' and '.join(facts)}; the model was trained on CT in Hounsfield units. Is this a CT in "
                f"HU (not normalised, not an MRI, not stored without its rescale intercept of -1024)?")
    air = float(np.mean(image < AIR_HU))
    if air > 0.01:
        return (f"{scan}: {100 * air:.2g} % of voxels below {AIR_HU:g}, as in a CT in Hounsfield units, but the "
                f"model was trained on {plan.modality.upper()}. Use a model trained on CT.")
    return None


def scan_warnings(image: np.ndarray, spacing: Sequence[float], plan: Plan, patch: Sequence[int],
                  slice_axis: int | None) -> list[str]:
    """Every warning for one RAS scan [X, Y, Z] (spacing in mm, RAS order) and one model (its plan, its patch;
    `slice_axis` None for a 3D model, else the axis a 2D model slices along). A blank scan skips the intensity check."""
    blank = constant_warning(image)
    if blank:
        out = [blank]
    else:
        out = [intensity_warning(image, plan)]
    axes = (0, 1, 2) if slice_axis is None else tuple(a for a in range(3) if a != slice_axis)
    out.append(size_warning(image.shape, spacing, plan, patch, axes))
    return [w for w in out if w]
