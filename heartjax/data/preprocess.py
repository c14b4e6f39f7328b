"""Preprocessing: crop to the body, resample to the plan's spacing, normalise; cached on disk; and the way back.

All arrays are RAS [X, Y, Z]. A `Preprocessed` case keeps the crop box and shapes needed to put a prediction
back on the case's original grid (`restore`), where it is scored and written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from heartjax.common import atomic
from heartjax.data.plan import Plan


@dataclasses.dataclass
class Preprocessed:
    """A case ready for sampling and inference.

    image: float32 [x, y, z] at plan.target_spacing; label: uint8 [x, y, z] or None.
    crop: ((lo, hi),) * 3 box in the original RAS voxel grid; ras_shape: original RAS shape.
    """

    case: str
    image: np.ndarray
    label: np.ndarray | None
    crop: tuple[tuple[int, int], ...]
    ras_shape: tuple[int, int, int]
    spacing: tuple[float, float, float]


def guess_modality(image: np.ndarray) -> str:
    """CT when the scan holds air-like Hounsfield values (< -500), else MRI."""
    return "ct" if float(np.percentile(image, 1)) < -500 else "mri"


def body_box(image: np.ndarray, modality: str, spacing: Sequence[float], margin_mm: float) -> tuple[tuple[int, int], ...]:
    """Bounding box of the body (CT: > -500 HU; MRI: above 1 % of the 99th percentile), grown by a margin."""
    if modality == "ct":
        mask = image > -500
    else:
        mask = image > 0.01 * np.percentile(image, 99)
    if not mask.any():
        return tuple((0, s) for s in image.shape)
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        m = int(np.ceil(margin_mm / spacing[axis]))
        box.append((max(0, int(idx[0]) - m), min(image.shape[axis], int(idx[-1]) + 1 + m)))
    return tuple(box)


def resample_image(image: np.ndarray, shape: Sequence[int], order: int = 1) -> np.ndarray:
    """Resample a float array [x, y, z] (or [x, y, z, C], per channel) to `shape`, aligning voxel extents."""
    if tuple(image.shape[:3]) == tuple(shape):
        return image.astype(np.float32, copy=False)
    if image.ndim == 4:
        return np.stack([resample_image(image[..., c], shape, order) for c in range(image.shape[-1])], axis=-1)
    zoom = [t / s for t, s in zip(shape, image.shape)]
    out = ndimage.zoom(image.astype(np.float32, copy=False), zoom, order=order, mode="nearest", grid_mode=True)
    if out.shape != tuple(shape):  # zoom rounds; make the shape exact
        out = out[tuple(slice(0, s) for s in shape)]
        out = np.pad(out, [(0, t - o) for t, o in zip(shape, out.shape)], mode="edge")
    return out


def resample_label(label: np.ndarray, shape: Sequence[int], num_classes: int) -> np.ndarray:
    """Resample labels by linear interpolation of each class's one-hot mask and argmax: no new label values."""
    if tuple(label.shape) == tuple(shape):
        return label.astype(np.uint8, copy=False)
    best = np.full(tuple(shape), -1.0, np.float32)
    out = np.zeros(tuple(shape), np.uint8)
    for c in range(num_classes):
        if c and not (label == c).any():
            continue
        prob = resample_image((label == c).astype(np.float32), shape)
        better = prob > best
        out[better], best[better] = c, prob[better]
    return out


def normalize(image: np.ndarray, plan: Plan) -> np.ndarray:
    """CT: clip to the dataset's foreground 0.5/99.5 percentiles, z-score with its mean/std. MRI: per-volume z-score."""
    x = image.astype(np.float32, copy=False)
    if plan.normalization == "ct":
        x = np.clip(x, *plan.ct_clip)
        return ((x - plan.ct_mean) / plan.ct_std).astype(np.float32)
    mean, std = float(x.mean()), float(x.std())
    return ((x - mean) / max(std, 1e-6)).astype(np.float32)


def target_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, int, int]:
    """Voxel shape covering the same extent at the target spacing."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def preprocess_volume(volume, plan: Plan, num_classes: int) -> Preprocessed:
    """Crop, resample and normalise one heartjax.data.io.images.Volume (label optional)."""
    box = body_box(volume.image, plan.modality, volume.spacing, plan.crop_margin_mm)
    sl = tuple(slice(lo, hi) for lo, hi in box)
    image = volume.image[sl]
    shape = target_shape(image.shape, volume.spacing, plan.target_spacing)
    out_image = normalize(resample_image(image, shape), plan)
    out_label = None if volume.label is None else resample_label(volume.label[sl], shape, num_classes)
    return Preprocessed(volume.case, out_image, out_label, box, tuple(volume.image.shape), tuple(volume.spacing))


def restore(probs: np.ndarray, pre: Preprocessed) -> np.ndarray:
    """Map class probabilities [x, y, z, C] at target spacing back to the original RAS grid; returns uint8 labels.

    Probabilities are resampled linearly to the crop box and arg-maxed; outside the box is background.
    """
    crop_shape = tuple(hi - lo for lo, hi in pre.crop)
    best = np.full(crop_shape, -np.inf, np.float32)
    labels = np.zeros(crop_shape, np.uint8)
    for c in range(probs.shape[-1]):
        p = resample_image(probs[..., c], crop_shape)
        better = p > best
        labels[better], best[better] = c, p[better]
    full = np.zeros(pre.ras_shape, np.uint8)
    full[tuple(slice(lo, hi) for lo, hi in pre.crop)] = labels
    return full


def restore_probabilities(probs: np.ndarray, pre: Preprocessed) -> np.ndarray:
    """Class probabilities [x, y, z, C] at target spacing -> [X, Y, Z, C] on the original RAS grid
    (background probability 1 outside the crop box). Used to average models whose plans differ."""
    crop_shape = tuple(hi - lo for lo, hi in pre.crop)
    full = np.zeros((*pre.ras_shape, probs.shape[-1]), np.float32)
    full[..., 0] = 1.0
    full[tuple(slice(lo, hi) for lo, hi in pre.crop)] = resample_image(probs, crop_shape)
    return full


def restore_probabilities_in(probs: np.ndarray, pre: Preprocessed, box: Sequence[slice]) -> np.ndarray:
    """Class probabilities [x, y, z, C] at target spacing -> their values in `box` of the original RAS grid
    [*box, C], resampled per class exactly as `restore` does (its argmax is `restore`'s labels there; background
    probability 1 outside the crop box); only the box is kept, so memory is the box's, not the volume's."""
    crop_shape = tuple(hi - lo for lo, hi in pre.crop)
    out = np.zeros((*(b.stop - b.start for b in box), probs.shape[-1]), np.float32)
    out[..., 0] = 1.0
    inter = [(max(b.start, lo), min(b.stop, hi)) for b, (lo, hi) in zip(box, pre.crop)]
    if any(a >= z for a, z in inter):
        return out
    src = tuple(slice(a - lo, z - lo) for (a, z), (lo, _) in zip(inter, pre.crop))
    dst = tuple(slice(a - b.start, z - b.start) for (a, z), b in zip(inter, box))
    for c in range(probs.shape[-1]):
        out[dst + (c,)] = resample_image(probs[..., c], crop_shape)[src]
    return out


def _source_stamp(paths: Sequence[Path | None]) -> str:
    """Identifies source files by path, size and modification time (a DICOM series folder: each of its files)."""
    parts = []
    for p in paths:
        if p is not None:
            for f in sorted(Path(p).iterdir()) if Path(p).is_dir() else [Path(p)]:
                st = os.stat(f)
                parts.append(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _save_npz_atomic(path: Path, **arrays) -> None:
    """np.savez atomically (heartjax.common.atomic); the temporary name ends in .npz, so savez does not append one."""
    atomic.write_with(path, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")


def preprocess_cases(cases: Sequence, plan: Plan, scheme, cache_dir: str | Path | None, load_fn, with_labels=True) -> dict:
    """Preprocess dataset cases (heartjax.data.datasets.Case), reusing the on-disk cache keyed by plan and sources.

    `load_fn(case) -> Volume` loads a case. Returns {case_id: Preprocessed}.
    """
    out = {}
    folder = Path(cache_dir) / plan.key() if cache_dir is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        stamp = _source_stamp([case.image, case.label if with_labels else None])
        path = folder / f"{case.case_id}-{stamp}.npz" if folder is not None else None
        if path is not None and path.exists():
            try:
                with np.load(path) as z:
                    meta = json.loads(str(z["meta"]))
                    label = z["label"] if meta["has_label"] else None
                    out[case.case_id] = Preprocessed(case.case_id, z["image"], label, tuple(map(tuple, meta["crop"])),
                                                     tuple(meta["ras_shape"]), tuple(meta["spacing"]))
                continue
            except Exception:  # a damaged cache entry is recomputed, never trusted
                path.unlink(missing_ok=True)
        vol = load_fn(case)
        pre = preprocess_volume(vol, plan, scheme.num_classes)
        out[case.case_id] = pre
        if path is not None:
            meta = {"crop": pre.crop, "ras_shape": pre.ras_shape, "spacing": pre.spacing, "has_label": pre.label is not None}
            _save_npz_atomic(path, image=pre.image, label=pre.label if pre.label is not None else np.zeros(0, np.uint8),
                             meta=np.array(json.dumps(meta)))
    return out

