"""Figures (matplotlib's Agg canvas, no pyplot state): Dice bars, case montages, label contour overlays.

Label overlays are drawn in plain NumPy so they are cheap enough to log to TensorBoard during training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.patheffects as pe
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image, ImageDraw, ImageFont

from heartjax.common import atomic
# Colour of label index i (row 0 = background, unused). Labels above 15 reuse rows 1..15 cyclically.
CLASS_COLORS = np.array(
    [
        (0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (245, 130, 48),
        (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
        (170, 110, 40), (128, 0, 0), (170, 255, 195), (128, 128, 0),
    ],
    np.uint8,
)


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


def _font(size: int):
    """PIL's bundled font at `size` px (a bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def readable_overlay(rgb: np.ndarray, names: Sequence[str], min_size: int = 256,
                     note: str = "solid: reference, dashed: prediction") -> np.ndarray:
    """An overlay (``overlay_contours``) for TensorBoard: up-sampled by a whole factor (nearest neighbour, every
    voxel a square block) until both sides are at least ``min_size`` px, with a legend underneath: one swatch of
    ``CLASS_COLORS`` per structure (names[i] is label i + 1) and ``note``. Returns uint8 [H', W', 3]."""
    rgb = np.asarray(rgb, np.uint8)
    factor = max(1, -(-min_size // max(1, min(rgb.shape[:2]))))
    big = np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)
    width, font = big.shape[1], _font(13)
    items = [(n, tuple(int(v) for v in _colour(i + 1))) for i, n in enumerate(names)]
    item_w = 14 + max([int(font.getlength(n)) for n in names] + [0]) + 12
    per_row = max(1, width // max(item_w, 1))
    rows = -(-len(items) // per_row) + (1 if note else 0)
    canvas = Image.new("RGB", (width, big.shape[0] + 6 + 18 * rows), (255, 255, 255))
    canvas.paste(Image.fromarray(big), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for j, (name, colour) in enumerate(items):
        x, y = 4 + (j % per_row) * item_w, big.shape[0] + 5 + 18 * (j // per_row)
        draw.rectangle((x, y + 2, x + 10, y + 12), fill=colour)
        draw.text((x + 14, y), name, fill=(0, 0, 0), font=font)
    if note:
        draw.text((4, big.shape[0] + 5 + 18 * (rows - 1)), note, fill=(60, 60, 60), font=font)
    return np.asarray(canvas, np.uint8)


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


def new_figure(width: float, height: float):
    """A pyplot-free figure rendered by the Agg canvas."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path) -> Path:
    """Write the figure as PNG atomically (heartjax.common.atomic), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


# Edge letters of each view as orthogonal_slices draws it: (left, right, top, bottom).
ORIENTATION = {"axial": ("R", "L", "A", "P"), "coronal": ("R", "L", "S", "I"), "sagittal": ("A", "P", "S", "I")}
# The disagreement column: only the second model right, only the first right, both wrong (and different).
DISAGREE_COLORS = np.array([(40, 200, 90), (255, 140, 0), (230, 30, 200)], np.uint8)


def _disagreement(grey_rgb: np.ndarray, first: np.ndarray, second: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Voxels where two label slices differ, coloured by who is right (DISAGREE_COLORS), over the grey slice."""
    out = grey_rgb.copy()
    differ = first != second
    for colour, mask in zip(DISAGREE_COLORS, (differ & (second == truth), differ & (first == truth),
                                              differ & (first != truth) & (second != truth))):
        out[mask] = colour
    return out


def _annotate(ax, view: str, shape: tuple[int, int], col_mm: float) -> None:
    """Orientation letters at the four edges and a 5 cm scale bar (1 cm when 5 cm does not fit) at bottom right."""
    rows, cols = shape
    outline = [pe.withStroke(linewidth=2, foreground="black")]
    left, right, top, bottom = ORIENTATION[view]
    for text, x, y, ha, va in ((left, 0.02, 0.5, "left", "center"), (right, 0.98, 0.5, "right", "center"),
                               (top, 0.5, 0.98, "center", "top"), (bottom, 0.5, 0.02, "center", "bottom")):
        ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, color="white", fontsize=9, fontweight="bold",
                path_effects=outline)
    cm = 5 if 50.0 / col_mm <= 0.6 * cols else 1
    length = 10.0 * cm / col_mm
    x1, y = cols - 0.5 - 0.05 * cols, rows - 0.5 - 0.07 * rows
    ax.plot([x1 - length, x1], [y, y], color="white", lw=3, solid_capstyle="butt", path_effects=outline)
    ax.text(x1 - length / 2, y - 0.03 * rows, f"{cm} cm", ha="center", va="bottom", color="white", fontsize=8,
            path_effects=outline)


def plot_case_montage(image, truth, preds: Mapping[str, np.ndarray], path, names: Sequence[str],
                      spacing=None, title: str = "") -> Path:
    """One patient as a 3 x (2 + len(preds) [+ 1]) montage, written atomically as PNG.

    Rows: axial, coronal and sagittal slices through the centre of the reference foreground (the volume centre
    when it is empty), radiological orientation (see ``orthogonal_slices``) with the edges lettered (R/L, A/P, S/I),
    aspect from ``spacing``. Columns: scan (with a 5 cm scale bar), truth, then each prediction, labels filled in
    ``CLASS_COLORS`` with solid contours; with two or more predictions, a last column shows where the first and
    the last disagree, coloured by which of them is right there (``DISAGREE_COLORS``).

    Args:
      image: float [X, Y, Z] scan in RAS order.
      truth: int [X, Y, Z] reference labels 0..K.
      preds: {column title: int [X, Y, Z] labels}, e.g. {"2D": ..., "3D": ...}.
      path: output .png path (parents created).
      names: structure names of labels 1..K (names[i] is label i + 1), used for the legend.
      spacing: voxel size in mm (sx, sy, sz); None means 1 mm isotropic.
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
    label_views = {key: orthogonal_slices(vol, centre, spacing) for key, vol in columns.items()}
    keys = list(preds)  # the disagreement column compares the first and the last prediction, e.g. 2D and 3D
    pair = [k.split(" ")[0].upper() for k in (keys[0], keys[-1])] if len(keys) > 1 else []
    ncols = 2 + len(preds) + bool(pair)
    fig = new_figure(2.4 * ncols, 2.4 * 3 + 0.9)
    axes = fig.subplots(3, ncols, squeeze=False)
    sx, sy, _ = spacing if spacing is not None else (1.0, 1.0, 1.0)
    for row, (view, cut, aspect) in enumerate(orthogonal_slices(image, centre, spacing)):
        grey = _grey(cut, window)
        panels = [("scan", grey)] + [(k, _filled(grey, v[row][1], num_classes)) for k, v in label_views.items()]
        if pair:
            first, last = label_views[keys[0]][row][1], label_views[keys[-1]][row][1]
            panels.append((f"where {pair[0]} and {pair[1]} differ",
                           _disagreement(grey, first, last, label_views["truth"][row][1])))
        for col, (heading, rgb) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(rgb, aspect=aspect, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(heading, fontsize=9)
            if col == 0:
                ax.set_ylabel(f"{view} (slice {centre[2 - row]})", fontsize=9)
                _annotate(ax, view, cut.shape, float(sy if view == "sagittal" else sx))
    _montage_legend(fig, names, pair)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_png(fig, path)


def _montage_legend(fig, names: Sequence[str], pair: Sequence[str]) -> None:
    """The structures' colours and, with a disagreement column, its three colours, under the montage."""

    handles = [Patch(color=_colour(i + 1) / 255.0, label=n) for i, n in enumerate(names)]
    if pair:
        a, b = pair
        handles += [Patch(color=c / 255.0, label=t) for c, t in zip(
            DISAGREE_COLORS, (f"only {b} right", f"only {a} right", "both wrong"))]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 8), fontsize=8)
