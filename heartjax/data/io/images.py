"""The image reader/writer registry: every scan and label file is read and written through it, never through a
format module directly. A format is one module that defines `FORMAT` (an `ImageFormat`: its file name endings
and its readers and writers; NIfTI's is `heartjax.data.io.nifti`), listed in `FORMATS` or added with `register`.
A format may also claim inputs that no ending names: `heartjax.data.io.dicom` claims a folder holding a DICOM
series (or one file of it) and reads it onto a NIfTI grid, so its label map is written as NIfTI.

Readers give a `Volume` in RAS voxel order with the format's on-disk `grid`, which the writers take back to lay
results over the scan exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from heartjax.data.io import dicom, nifti
from heartjax.data.io.filenames import case_id_from_path
from heartjax.data.io.formats import ImageFormat, Volume
from heartjax.common.errors import HeartjaxError

FORMATS: list[ImageFormat] = [nifti.FORMAT, dicom.FORMAT]  # NIfTI first: its Grid is also the DICOM reader's

__all__ = ["FORMATS", "ImageFormat", "Volume", "register", "format_of", "is_image_path", "case_name", "load_volume",
           "load_label_file", "read_label_codes", "save_label", "save_array", "to_ras", "from_ras"]


def register(fmt: ImageFormat) -> ImageFormat:
    """Add a format (its endings must not clash with a registered one's); returns it."""
    taken = {e for f in FORMATS for e in f.extensions}
    if fmt.name in {f.name for f in FORMATS} or taken & set(fmt.extensions):
        raise HeartjaxError(f"image format {fmt.name!r} ({', '.join(fmt.extensions)}) clashes with a registered one "
                            f"({', '.join(sorted(taken))})")
    FORMATS.append(fmt)
    return fmt


def _endings() -> str:
    return ", ".join(e for f in FORMATS for e in f.extensions)


def _claimed_by(path) -> ImageFormat | None:
    """The format that claims an input no ending names (a DICOM series folder), if any."""
    return next((f for f in FORMATS if f.claims is not None and f.claims(path)), None)


def format_of(path: str | os.PathLike) -> ImageFormat:
    """The format of a file, by the ending of its name (else by a format's `claims`, e.g. a folder holding a DICOM
    series); HeartjaxError naming the known endings otherwise."""
    name = Path(path).name
    for fmt in FORMATS:
        if name.endswith(fmt.extensions):
            return fmt
    fmt = _claimed_by(path)
    if fmt is not None:
        return fmt
    raise HeartjaxError(f"file {path} is not an image heartjax reads or writes: expected a name ending in "
                        f"{_endings()}, or a folder holding one DICOM series.")


def _format_of_grid(grid) -> ImageFormat:
    for fmt in FORMATS:
        if isinstance(grid, fmt.grid_type):
            return fmt
    raise HeartjaxError(f"{type(grid).__name__} is the grid of no registered image format ({_endings()})")


def is_image_path(path: str | os.PathLike) -> bool:
    """True for a name ending in a registered format's extension, or an input a format claims (a DICOM series)."""
    return Path(path).name.endswith(tuple(e for f in FORMATS for e in f.extensions)) or _claimed_by(path) is not None


def case_name(path: str | os.PathLike) -> str:
    """The case id of an input, which also names its outputs: a file's name without its ending, a DICOM series
    folder's name."""
    fmt = format_of(path)
    return fmt.case_name(path) if fmt.case_name is not None else case_id_from_path(path)


def load_volume(image_path, label_path=None, scheme=None, case: str | None = None) -> Volume:
    """A scan (and optionally its label map) in RAS voxel order; see the format's reader (e.g. `nifti.load_volume`)."""
    return format_of(image_path).load_volume(image_path, label_path, scheme, case)


def load_label_file(path, scheme, reference_grid=None):
    """A label map as uint8 class indices [X, Y, Z] in RAS order, and its grid: (indices, grid)."""
    return format_of(path).load_label_file(path, scheme, reference_grid)


def read_label_codes(path) -> np.ndarray:
    """On-disk codes of a label file in on-disk voxel order (no scheme applied)."""
    return format_of(path).read_label_codes(path)


def save_label(path, indices_ras: np.ndarray, grid, scheme, overwrite: bool = False) -> Path:
    """Write class indices [X, Y, Z] (RAS) as the scheme's codes on the scan's grid, in the format `path` names."""
    return format_of(path).save_label(path, indices_ras, grid, scheme, overwrite)


def save_array(path, array_ras: np.ndarray, grid, dtype=np.float32, overwrite: bool = False) -> Path:
    """Write an RAS array [X, Y, Z] or [X, Y, Z, C] on the scan's grid, in the format `path` names."""
    return format_of(path).save_array(path, array_ras, grid, dtype, overwrite)


def to_ras(array: np.ndarray, grid) -> np.ndarray:
    """An on-disk array in RAS voxel order."""
    return _format_of_grid(grid).to_ras(array, grid)


def from_ras(array_ras: np.ndarray, grid) -> np.ndarray:
    """An RAS array back in the on-disk voxel order of `grid`."""
    return _format_of_grid(grid).from_ras(array_ras, grid)
