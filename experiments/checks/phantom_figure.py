"""The phantom's montage (docs/phantom.png): one patient at each difficulty level and modality, three planes.

  python -m experiments.checks.phantom_figure [--out docs/phantom.png] [--seed 0]

Rows: CT at difficulty 0 (the first generator), CT, MRI and cine MRI at difficulty 1 (the default); columns: axial
slice through the LV, coronal slice and sagittal slice, with the labels' contours. Synthetic data only.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from heartjax.common import atomic
from heartjax.data import phantom
from heartjax.data.labels import MMWHS

ROWS = (("ct", 0, (1.0, 1.0, 1.6), "CT, difficulty 0"), ("ct", 1, (1.0, 1.0, 1.6), "CT, difficulty 1"),
        ("mri", 1, (1.0, 1.0, 1.6), "MRI, difficulty 1"), ("cine", 1, (1.5, 1.5, 10.0), "cine MRI (10 mm), difficulty 1"))


def _planes(image, label, affine):
    """Axial, coronal, sagittal slices (display orientation) through the LV centre, with their aspect ratios."""
    c = np.argwhere(label == MMWHS.codes[MMWHS.names.index("LV")]).mean(0).round().astype(int)
    sp = np.abs(np.diag(affine)[:3])
    return [(image[:, :, c[2]].T, label[:, :, c[2]].T, sp[1] / sp[0]),
            (image[:, c[1], :].T, label[:, c[1], :].T, sp[2] / sp[0]),
            (image[c[0], :, :].T, label[c[0], :, :].T, sp[2] / sp[1])]


def draw(path, seed: int = 0) -> None:
    """Write the montage PNG atomically."""
    fig = Figure(figsize=(12, 4 * len(ROWS)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(ROWS), 3)
    for row, (modality, level, spacing, title) in zip(axes, ROWS):
        image, label, affine = phantom.generate_case(phantom.case_seed(seed, 0), modality, spacing, difficulty=level)
        lo, hi = (-250, 750) if modality == "ct" else np.percentile(image, [1, 99.5])
        for ax, (img, lab, aspect) in zip(row, _planes(image, label, affine)):
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspect, interpolation="nearest")
            ax.contour(lab, levels=np.array(MMWHS.codes) - 0.5, linewidths=0.6, colors="tab:red")
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(title)
    for ax, name in zip(axes[0], ("axial", "coronal", "sagittal")):
        ax.set_title(name)
    fig.tight_layout()
    atomic.write_with(path, lambda p: fig.savefig(p, dpi=70, format="png"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.checks.phantom_figure", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/phantom.png", help="PNG to write (default docs/phantom.png)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed; the first case is drawn (default 0)")
    args = parser.parse_args(argv)
    draw(args.out, args.seed)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
