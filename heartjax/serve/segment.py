"""Segment numpy arrays with a trained run folder: the Python API beside `python -m heartjax.predict`.

    from heartjax.segment import Segmenter
    seg = Segmenter("runs/volumetric-20261130-101546", model="3d")
    labels = seg(image, affine=img.affine)        # any voxel order the affine describes, as nibabel gives it
    labels = seg(image_ras, spacing=(1.0, 1.0, 1.6))  # an array already in RAS voxel order
    labels = seg("scans/series_0042")              # a scan file, or a folder holding one DICOM series

The array goes through exactly what a file goes through in the CLI: the header checks (voxel sizes, an invertible
affine, finite voxels), reorientation to RAS, the scan checks (blank, too small, intensities unlike the training
data: Python warnings here), the model's post-processing, and back to the input's own voxel order. Labels are
class indices 0..K (`codes=True`: the label scheme's on-disk codes, e.g. MM-WHS 205..850). Given a path instead of
an array (a NIfTI file, or a DICOM series folder read by `heartjax.data.io.dicom`), the labels come in the voxel
order of the label map `heartjax.predict` writes for it (for a series: [column, row, slice]).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import nibabel
import numpy as np

from heartjax.data.io import images
from heartjax.common.errors import HeartjaxError
from heartjax.serve.predict import Ensemble


def _affine_of(image: np.ndarray, affine, spacing) -> np.ndarray:
    """The voxel -> world affine of an array given an affine or a spacing (RAS voxel order); checked."""
    if image.ndim != 3 or not np.issubdtype(image.dtype, np.number):
        raise HeartjaxError(f"image must be a 3D numeric array, got {image.dtype} of shape {image.shape}")
    if (affine is None) == (spacing is None):
        raise HeartjaxError("give exactly one of affine= (a 4x4 voxel-to-world matrix, e.g. nibabel's img.affine) "
                            "or spacing= (three voxel sizes in mm, for an array in RAS voxel order)")
    if spacing is not None:
        sp = np.asarray(spacing, np.float64)
        if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp < 1e-3) or np.any(sp > 100):
            raise HeartjaxError(f"spacing={spacing!r} must be three voxel sizes between 0.001 and 100 mm")
        return np.diag([*sp, 1.0])
    a = np.asarray(affine, np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise HeartjaxError(f"affine must be a finite 4x4 matrix, got shape {a.shape}")
    sizes = np.linalg.norm(a[:3, :3], axis=0)
    if np.any(sizes < 1e-3) or np.any(sizes > 100) or abs(np.linalg.det(a[:3, :3])) < 1e-9:
        raise HeartjaxError(f"affine gives voxel sizes {np.round(sizes, 6).tolist()} mm or cannot be inverted; "
                            "pass the scan's own voxel-to-world matrix (nibabel: img.affine)")
    return a


class Segmenter:
    """A run folder's model (`model`: 2d | 2.5d | 3d; default as `heartjax.predict`), ready for arrays."""

    def __init__(self, run_dir, model: str | None = None):
        self.ensemble = Ensemble(Path(run_dir), model)
        self.scheme = self.ensemble.scheme

    def __call__(self, image, affine=None, spacing: Sequence[float] | None = None, tta: bool = False,
                 codes: bool = False) -> np.ndarray:
        """Labels [same shape and voxel order as `image`]; the scan checks' findings are Python warnings. `image` may
        be a path (a NIfTI file or a DICOM series folder), read as `heartjax.predict` reads it."""
        if isinstance(image, (str, os.PathLike)):
            if affine is not None or spacing is not None:
                raise HeartjaxError("a scan given by its path carries its own geometry; pass no affine= or spacing=")
            volume = images.load_volume(image)
        else:
            volume = _volume_of_array(np.asarray(image), affine, spacing)
        for text in self.ensemble.scan_warnings(volume):
            warnings.warn(text, stacklevel=2)
        labels_ras, _ = self.ensemble.segment(volume, tta)
        labels = images.from_ras(labels_ras, volume.grid)
        return self.scheme.decode(labels) if codes else labels.astype(np.uint8)


def _volume_of_array(image: np.ndarray, affine, spacing) -> images.Volume:
    """An array read through the NIfTI loader's checks (a temporary file), as the CLI reads a file."""
    aff = _affine_of(image, affine, spacing)
    with tempfile.TemporaryDirectory(prefix="heartjax-segment-") as tmp:
        path = Path(tmp) / "array.nii"
        img = nibabel.Nifti1Image(image.astype(np.float32), aff)
        img.set_sform(aff, code=1)
        img.set_qform(aff, code=1)
        nibabel.save(img, str(path))
        try:
            return images.load_volume(path)
        except HeartjaxError as err:
            raise HeartjaxError(str(err).replace(str(path), "the array")) from None


def segment(run_dir, image, affine=None, spacing: Sequence[float] | None = None, model: str | None = None,
            tta: bool = False, codes: bool = False) -> np.ndarray:
    """One array (or scan path) with the model of `run_dir` (loads the model each call; keep a `Segmenter` for many)."""
    return Segmenter(run_dir, model)(image, affine, spacing, tta, codes)
