"""What every image format provides (`ImageFormat`) and what its readers return (`Volume`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np


@dataclasses.dataclass(eq=False)
class Volume:
    """A loaded scan in RAS voxel order.

    Attributes:
      image: float32 [X, Y, Z].
      label: uint8 [X, Y, Z] class indices 0..K on the same grid, or None.
      spacing: voxel size in mm, RAS axis order.
      affine: 4x4 voxel -> world (mm) of the RAS array, column norms equal to `spacing`.
      grid: the format's on-disk grid, for writing results back.
      source, label_source: file paths; case: case id.
    """

    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float]
    affine: np.ndarray
    grid: Any
    source: str
    label_source: str | None
    case: str


@dataclasses.dataclass(frozen=True)
class ImageFormat:
    """One file format's readers and writers (see `heartjax.data.io.images`).

    extensions: file name endings it owns (".nii.gz", ".nii"); grid_type: the class of its on-disk grids;
    load_volume(image_path, label_path, scheme, case) -> Volume; load_label_file(path, scheme, reference_grid)
    -> (indices, grid); read_label_codes(path) -> codes; save_label(path, indices_ras, grid, scheme, overwrite)
    -> path; save_array(path, array_ras, grid, dtype, overwrite) -> path; to_ras / from_ras(array, grid).
    A format whose inputs are not named by an ending (a folder holding a DICOM series) gives `claims(path) -> bool`
    (cheap; False for a path that does not exist) and `case_name(path) -> str` (the case id, and so the output name).
    """

    name: str
    extensions: tuple[str, ...]
    grid_type: type
    load_volume: Callable
    load_label_file: Callable
    read_label_codes: Callable
    save_label: Callable
    save_array: Callable
    to_ras: Callable
    from_ras: Callable
    claims: Callable | None = None
    case_name: Callable | None = None
