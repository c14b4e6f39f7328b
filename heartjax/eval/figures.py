"""Figures (matplotlib's Agg canvas, no pyplot state): Dice bars, case montages, label contour overlays.

Label overlays are drawn in plain NumPy so they are cheap enough to log to TensorBoard during training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from heartjax import atomic

# Colour of label index i (row 0 = background, unused). Labels above 15 reuse rows 1..15 cyclically.
CLASS_COLORS = np.array(
    [
        (0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (245, 130, 48),
        (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
        (170, 110, 40), (128, 0, 0), (170, 255, 195), (128, 128, 0),
    ],
    np.uint8,
)
_MODEL_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")


def _colour(label: int) -> np.ndarray:
    """Colour of label index >= 1 (uint8 [3])."""
    return CLASS_COLORS[1 + (int(label) - 1) % (len(CLASS_COLORS) - 1)]


def _grey(image: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """Grey-scale uint8 [H, W, 3] of a float slice, windowed to its 0.5-99.5 percentiles unless given."""
    image = np.nan_to_num(np.asarray(image, np.float64))
    lo, hi = window if window is not None else np.percentile(image, (0.5, 99.5))
    scaled = np.clip((image - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(image)
    return np.repeat(np.round(scaled * 255).astype(np.uint8)[..., None], 3, axis=-1)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of a boolean mask with a 4-neighbour outside the mask (the image edge does not count)."""
    p = np.pad(mask, 1, mode="edge")
    interior = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~interior


def _labels_2d(labels, shape, name: str) -> np.ndarray:
    """Validated integer label slice."""
    labels = np.asarray(labels)
    if labels.shape != shape:
        raise ValueError(f"overlay: {name} has shape {labels.shape}, the image {shape}")
    return labels.astype(np.int64)


def overlay_contours(image_2d, truth_2d, pred_2d, num_classes: int, window=None) -> np.ndarray:
    """Grey-scale slice with label contours in class colours.

    Args:
      image_2d: float [H, W] slice (any intensity range; windowed to its 0.5-99.5 percentiles unless
        ``window=(lo, hi)``).
      truth_2d: int [H, W] reference labels 0..num_classes-1: contours drawn solid in ``CLASS_COLORS[c]``.
      pred_2d: int [H, W] predicted labels, or None: contours drawn on top, dashed (2x2 checkerboard) in the
        class colour lightened half-way to white, so the reference shows through the gaps where they agree.
      num_classes: number of classes including background.
    Returns:
      uint8 [H, W, 3] RGB image with the axes of the input (no flipping; see ``orthogonal_slices``).
    """
    image_2d = np.asarray(image_2d)
    if image_2d.ndim != 2:
        raise ValueError(f"overlay: expected a 2D slice, got shape {image_2d.shape}")
    rgb = _grey(image_2d, window)
    truth = _labels_2d(truth_2d, image_2d.shape, "truth")
    for c in range(1, num_classes):
        rgb[_boundary(truth == c)] = _colour(c)
    if pred_2d is not None:
        pred = _labels_2d(pred_2d, image_2d.shape, "pred")
        ii, jj = np.indices(image_2d.shape)
        dash = (ii // 2 + jj // 2) % 2 == 0
        for c in range(1, num_classes):
            colour = _colour(c).astype(np.int64)
            rgb[_boundary(pred == c) & dash] = (colour + (255 - colour) // 2).astype(np.uint8)
    return rgb


def _filled(grey_rgb: np.ndarray, labels: np.ndarray, num_classes: int, alpha: float = 0.4) -> np.ndarray:
    """Labels blended over a grey RGB slice, with solid contours."""
    out = grey_rgb.astype(np.float64)
    for c in range(1, num_classes):
        mask = labels == c
        out[mask] = (1 - alpha) * out[mask] + alpha * _colour(c)
        out[_boundary(mask)] = _colour(c)
    return np.round(out).astype(np.uint8)


def orthogonal_slices(volume, centre, spacing=None) -> list[tuple[str, np.ndarray, float]]:
    """Axial, coronal and sagittal slices of an [X, Y, Z] RAS volume through voxel ``centre``, in radiological
    display orientation (patient's right on the viewer's left, anterior/superior at the top).

    Returns:
      [(view name, 2D array [rows, cols], aspect = row spacing / column spacing for imshow)] for
      axial [Y, X], coronal [Z, X] and sagittal [Z, Y].
    """
    volume = np.asarray(volume)
    sx, sy, sz = spacing if spacing is not None else (1.0, 1.0, 1.0)
    views = []
    for name, axis, (s_col, s_row) in (("axial", 2, (sx, sy)), ("coronal", 1, (sx, sz)), ("sagittal", 0, (sy, sz))):
        cut = np.take(volume, int(centre[axis]), axis=axis)  # [first kept axis, second kept axis]
        views.append((name, cut[::-1, ::-1].T, float(s_row) / float(s_col)))
    return views


def _new_figure(width: float, height: float):
    """A pyplot-free figure rendered by the Agg canvas."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path) -> Path:
    """Write the figure as PNG atomically (heartjax.atomic), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def plot_dice_bars(per_structure: Mapping[str, Mapping[str, float]], path, title: str = "",
                   sd: Mapping[str, Mapping[str, float]] | None = None) -> Path:
    """Grouped bar chart of Dice per structure, one bar colour per model, written atomically as PNG.

    Args:
      per_structure: {model: {structure: mean Dice}}, e.g. {"2d": {"LV": 0.9, ...}, "3d": {...}}. Missing or
        NaN values leave a gap.
      path: output .png path (parents created).
      title: figure title.
      sd: optional {model: {structure: standard deviation}} drawn as error bars.
    Returns:
      the written path.
    """
    if not per_structure:
        raise ValueError("plot_dice_bars: per_structure is empty")
    models = list(per_structure)
    structures = list(dict.fromkeys(s for m in models for s in per_structure[m]))
    fig = _new_figure(max(4.0, 0.55 * len(structures) * max(1, len(models)) + 1.5), 3.6)
    ax = fig.add_subplot()
    x = np.arange(len(structures))
    width = 0.8 / len(models)
    for k, model in enumerate(models):
        values = np.array([per_structure[model].get(s, np.nan) for s in structures], np.float64)
        errors = np.array([(sd or {}).get(model, {}).get(s, np.nan) for s in structures], np.float64)
        offset = x - 0.4 + width * (k + 0.5)
        ax.bar(offset, np.nan_to_num(values), width, label=model, color=_MODEL_COLORS[k % len(_MODEL_COLORS)])
        ok = np.isfinite(values) & np.isfinite(errors)
        if ok.any():
            ax.errorbar(offset[ok], values[ok], yerr=errors[ok], fmt="none", ecolor="black", capsize=2, lw=0.8)
        for xi, v, e in zip(offset, values, np.nan_to_num(errors)):
            ax.text(xi, (v + e if np.isfinite(v) else 0) + 0.01, f"{v:.2f}" if np.isfinite(v) else "n/a",
                    ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(x, structures)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("Dice")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    if title:
        ax.set_title(title)
    return _save_png(fig, path)


def plot_case_montage(image, truth, preds: Mapping[str, np.ndarray], path, names: Sequence[str],
                      spacing=None, title: str = "") -> Path:
    """One patient as a 3 x (2 + len(preds)) montage, written atomically as PNG.

    Rows: axial, coronal and sagittal slices through the centre of the reference foreground (the volume centre
    when it is empty), radiological orientation (see ``orthogonal_slices``), aspect from ``spacing``. Columns:
    scan, truth, then each prediction, labels filled in ``CLASS_COLORS`` with solid contours.

    Args:
      image: float [X, Y, Z] scan in RAS order.
      truth: int [X, Y, Z] reference labels 0..K.
      preds: {column title: int [X, Y, Z] labels}, e.g. {"2D": ..., "3D": ...}.
      path: output .png path (parents created).
      names: structure names of labels 1..K (names[i] is label i + 1), used for the legend.
      spacing: voxel size in mm (sx, sy, sz); None means isotropic.
      title: optional figure title.
    Returns:
      the written path.
    """
    image, truth = np.asarray(image), np.asarray(truth)
    columns = {"truth": truth, **{k: np.asarray(v) for k, v in preds.items()}}
    for key, vol in columns.items():
        if image.ndim != 3 or vol.shape != image.shape:
            raise ValueError(f"plot_case_montage: {key} has shape {vol.shape}, the image {image.shape} (need 3D)")
    num_classes = max(len(names), *(int(v.max(initial=0)) for v in columns.values())) + 1
    fg = np.argwhere(truth > 0)
    centre = np.round(fg.mean(axis=0)).astype(int) if len(fg) else np.array(image.shape) // 2
    window = tuple(np.percentile(np.nan_to_num(image.astype(np.float64)), (0.5, 99.5)))
    scan_views = orthogonal_slices(image, centre, spacing)
    label_views = {key: orthogonal_slices(vol, centre, spacing) for key, vol in columns.items()}

    ncols = 1 + len(columns)
    fig = _new_figure(2.4 * ncols, 2.4 * 3 + 0.6)
    axes = fig.subplots(3, ncols, squeeze=False)
    for row, (view, cut, aspect) in enumerate(scan_views):
        grey = _grey(cut, window)
        panels = [("scan", grey)] + [(k, _filled(grey, v[row][1], num_classes)) for k, v in label_views.items()]
        for col, (heading, rgb) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(rgb, aspect=aspect, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(heading, fontsize=9)
            if col == 0:
                ax.set_ylabel(f"{view} ({centre[2 - row]})", fontsize=9)
    handles = [Patch(color=_colour(i + 1) / 255.0, label=n) for i, n in enumerate(names)]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 8), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save_png(fig, path)
