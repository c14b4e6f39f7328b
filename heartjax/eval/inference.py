"""Whole-volume inference: 3D sliding window and 2D slice-by-slice, both tiled with fixed shapes (no recompiles).

Tiles overlap by `overlap` (nnU-Net: 0.5) and are blended with a Gaussian importance map (sigma = 1/8 of the
tile, zeros replaced by the smallest positive weight). Optional mirroring test-time augmentation averages the
predictions over every combination of flips of `mirror_axes`.
"""

from __future__ import annotations

import itertools
from typing import Callable, Sequence

import numpy as np


def gaussian_importance(patch: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """Gaussian weights [*patch] float32, peak 1 at the centre, sigma = sigma_scale * patch per axis."""
    grids = np.meshgrid(*[np.arange(p, dtype=np.float64) - (p - 1) / 2 for p in patch], indexing="ij")
    sq = sum((g / max(p * sigma_scale, 1e-6)) ** 2 for g, p in zip(grids, patch))
    w = np.exp(-0.5 * sq)
    w /= w.max()
    w[w == 0] = w[w > 0].min()
    return w.astype(np.float32)


def tile_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start offsets of tiles of length `patch` covering [0, size) with at least `overlap` overlap."""
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1.0 - overlap)))
    n = int(np.ceil((size - patch) / step)) + 1
    return [int(round(x)) for x in np.linspace(0, size - patch, n)]


def _pad_to(image: np.ndarray, shape: Sequence[int], value: float):
    """Pad trailing sides of the leading axes up to `shape`; returns the padded array and the crop to undo it."""
    pad = [(0, max(0, s - n)) for n, s in zip(image.shape, shape)] + [(0, 0)] * (image.ndim - len(shape))
    crop = tuple(slice(0, n) for n in image.shape[: len(shape)])
    return np.pad(image, pad, constant_values=value), crop


def _tiled(predict: Callable, image: np.ndarray, patch: Sequence[int], num_classes: int, overlap: float,
           batch_size: int, lead: int) -> np.ndarray:
    """Tile the spatial axes of image [*lead_axes, *spatial, C] with `patch`; lead axes are batched too."""
    spatial = image.shape[lead:-1]
    weights = gaussian_importance(patch)
    out = np.zeros((*image.shape[:-1], num_classes), np.float32)
    norm = np.zeros(spatial, np.float32)
    corners = list(itertools.product(*[tile_starts(s, p, overlap) for s, p in zip(spatial, patch)]))
    lead_idx = list(np.ndindex(*image.shape[:lead])) or [()]
    jobs = [(li, c) for c in corners for li in lead_idx]
    for c in corners:
        norm[tuple(slice(o, o + p) for o, p in zip(c, patch))] += weights
    for i in range(0, len(jobs), batch_size):
        chunk = jobs[i: i + batch_size]
        tiles = [image[li + tuple(slice(o, o + p) for o, p in zip(c, patch))] for li, c in chunk]
        tiles += [tiles[-1]] * (batch_size - len(tiles))  # fixed batch shape: one compilation
        probs = np.asarray(predict(np.stack(tiles)))
        for (li, c), p in zip(chunk, probs):
            out[li + tuple(slice(o, o + q) for o, q in zip(c, patch))] += p * weights[..., None]
    return out / norm[..., None]


def _mirrored(fn: Callable, image: np.ndarray, mirror_axes: Sequence[int]) -> np.ndarray:
    """Average fn over all flip combinations of mirror_axes (axes of image; output has a trailing class axis)."""
    combos = [c for r in range(len(mirror_axes) + 1) for c in itertools.combinations(mirror_axes, r)]
    total = None
    for axes in combos:
        x = np.flip(image, axes) if axes else image
        p = fn(np.ascontiguousarray(x))
        p = np.flip(p, axes) if axes else p
        total = p if total is None else total + p
    return total / len(combos)


def sliding_window_predict(predict: Callable, image: np.ndarray, patch: Sequence[int], num_classes: int,
                           overlap: float = 0.5, batch_size: int = 2, mirror_axes: Sequence[int] = ()) -> np.ndarray:
    """3D sliding-window prediction of a whole preprocessed volume.

    predict: images float32 [B, *patch, 1] -> probabilities [B, *patch, K+1]. image: float32 [x, y, z].
    Returns probabilities float32 [x, y, z, K+1].
    """
    padded, crop = _pad_to(image[..., None], patch, float(image.min()))
    run = lambda x: _tiled(predict, x, patch, num_classes, overlap, batch_size, lead=0)
    return _mirrored(run, padded, mirror_axes)[crop]


def slicewise_predict(predict: Callable, image: np.ndarray, slice_axis: int, patch: Sequence[int], num_classes: int,
                      overlap: float = 0.5, batch_size: int = 16, mirror_axes: Sequence[int] = (),
                      context: int = 1) -> np.ndarray:
    """2D prediction slice by slice along `slice_axis`, each slice tiled in-plane with `patch`.

    predict: images float32 [B, *patch, context] -> probabilities [B, *patch, K+1]. image: float32 [x, y, z];
    with `context` > 1 (odd) each slice is predicted from the `context` slices centred on it, as channels
    (edge slices replicated). mirror_axes are in-plane axes of the slice (0 or 1).
    Returns probabilities float32 [x, y, z, K+1].
    """
    slices = np.moveaxis(image, slice_axis, 0)
    n, half = slices.shape[0], context // 2
    neighbours = np.clip(np.arange(n)[:, None] + np.arange(-half, half + 1)[None, :], 0, n - 1)
    slices = np.moveaxis(slices[neighbours], 1, -1)  # [S, u, v, context]
    padded, crop = _pad_to(slices, (n, *patch), float(image.min()))
    run = lambda x: _tiled(predict, x, patch, num_classes, overlap, batch_size, lead=1)
    probs = _mirrored(run, padded, [a + 1 for a in mirror_axes])[crop]
    return np.moveaxis(probs, 0, slice_axis)
