"""NIfTI load and save (the `FORMAT` of heartjax.data.io.images): RAS voxel order in memory, the original grid and
header on disk.

A scan is read into a `Volume` whose arrays are [X, Y, Z] in RAS voxel order, with `spacing` in mm in the same
order. Its `Grid` remembers the on-disk shape, affine and header, so `save_label` / `save_array` write results
that overlay the scan exactly in ITK-SNAP or 3D Slicer.
"""

from __future__ import annotations

import dataclasses
import struct
import warnings
import zlib
from pathlib import Path

import nibabel
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from heartjax.common import atomic
from heartjax.data import labels as labels_lib
from heartjax.data.io import nifti_probe
from heartjax.data.io.filenames import NIFTI_EXTENSIONS, case_id_from_path, is_nifti_path
from heartjax.data.io.formats import ImageFormat, Volume
from heartjax.data.labels import resolve_scheme
from heartjax.common.errors import HeartjaxError

AFFINE_TOL_MM = 1e-3  # image and label grids may differ by this much (float32 header rounding) and still pair
PIXDIM_RTOL = 1e-3  # relative disagreement between affine column norms and pixdim that counts as a header quirk
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, struct.error, ImageFileError, HeaderDataError)


@dataclasses.dataclass(frozen=True, eq=False)
class Grid:
    """The on-disk grid of a scan: everything needed to map an RAS array back and write it.

    Attributes:
      shape: on-disk array shape (3 ints).
      affine: on-disk 4x4 affine as nibabel reports it (`img.affine`).
      header: copy of the on-disk header, so a written file lines up exactly.
      ornt: nibabel orientation transform [3, 2] from on-disk voxel order to RAS.
      spacing: voxel size in mm in on-disk axis order (pixdim wins over unit-scale affines, see `load_volume`).
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    header: nibabel.Nifti1Header
    ornt: np.ndarray
    spacing: tuple[float, float, float]

    @property
    def disk_affine(self) -> np.ndarray:
        """4x4 on-disk voxel -> world (mm) affine with the affine's directions scaled by `spacing`."""
        out = np.array(self.affine, dtype=np.float64)
        out[:3, :3] = out[:3, :3] / np.linalg.norm(out[:3, :3], axis=0) * np.asarray(self.spacing)
        return out

    @property
    def ras_shape(self) -> tuple[int, int, int]:
        """Shape of the array once reordered to RAS."""
        return tuple(int(self.shape[i]) for i in np.argsort(self.ornt[:, 0]))

    @property
    def ras_spacing(self) -> tuple[float, float, float]:
        """Spacing in mm in RAS axis order."""
        return tuple(float(self.spacing[i]) for i in np.argsort(self.ornt[:, 0]))

    @property
    def ras_affine(self) -> np.ndarray:
        """4x4 voxel -> world (mm) affine of the RAS-ordered array (column norms equal `ras_spacing`)."""
        return self.disk_affine @ nibabel.orientations.inv_ornt_aff(self.ornt, self.shape)


def _load(path: Path, what: str) -> tuple[nibabel.Nifti1Image, np.ndarray]:
    """Open a NIfTI file and read its data (scaled), refusing missing, truncated and non-NIfTI files and headers
    whose voxel size or orientation is not a scan's (checked as written, see `nifti_probe`)."""
    if not path.is_file():
        raise HeartjaxError(f"{what} file {path} does not exist; check the path (and the dataset folder).")
    if not is_nifti_path(path):
        raise HeartjaxError(f"{what} file {path} is not a NIfTI file: expected a name ending in .nii or .nii.gz.")
    found = nifti_probe.probe(path, what)
    if found.header is None:
        raise HeartjaxError(f"{what} file {path} could not be read as NIfTI: it is {found.kind} (truncated, "
                            f"damaged or another format). Re-download or re-export it as NIfTI.")
    nifti_probe.check_header(found.header, path, what)
    try:
        img = nifti_probe.open_image(path, found)
        if not isinstance(img, nibabel.Nifti1Image):
            raise ImageFileError(f"nibabel read it as {type(img).__name__}")
        data = np.asanyarray(img.dataobj)  # reads the voxels here, so truncated .nii.gz files fail now
    except _READ_ERRORS as err:
        raise HeartjaxError(
            f"{what} file {path} could not be read as NIfTI ({type(err).__name__}: {err}); it may be truncated or "
            f"not a NIfTI file. Re-download or re-export it."
        ) from err
    return img, _squeeze_3d(np.asarray(data), path, what)


def _squeeze_3d(data: np.ndarray, path: Path, what: str) -> np.ndarray:
    """Accept [X, Y, Z] or [X, Y, Z, 1, ...]; refuse anything else."""
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise HeartjaxError(
            f"{what} file {path} holds a {data.ndim}D array of shape {data.shape}; heartjax needs one 3D volume. "
            f"Extract a single 3D frame (e.g. one cine time point) into its own file."
        )
    if data.dtype.kind not in "biuf":
        raise HeartjaxError(f"{what} file {path} has data type {data.dtype}; convert it to an integer or float type.")
    return data


def _make_grid(img: nibabel.Nifti1Image, shape: tuple[int, ...], path: Path) -> tuple[Grid, str | None]:
    """Build the Grid; returns a warning text when the affine's scales and pixdim disagree (header quirk)."""
    affine = np.array(img.affine, dtype=np.float64)
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    if not (np.all(np.isfinite(affine)) and abs(np.linalg.det(affine[:3, :3])) > 1e-12 * np.prod(norms)):
        raise HeartjaxError(f"file {path}: its voxel-to-world affine {np.round(affine, 6).tolist()} (sform_code "
                            f"{int(img.header['sform_code'])}, qform_code {int(img.header['qform_code'])}) is not "
                            f"finite or cannot be inverted; fix its sform/qform (e.g. in 3D Slicer) and save it again.")
    pixdim = np.array(img.header["pixdim"][1:4], dtype=np.float64)
    note = None
    spacing = norms
    if np.any(np.abs(norms - pixdim) > PIXDIM_RTOL * np.abs(pixdim)):
        if np.all(np.isfinite(pixdim)) and np.all(pixdim > 0):
            spacing = pixdim
            choice = "using pixdim as the voxel size and the affine only for directions"
        else:
            choice = "pixdim is invalid, so using the affine's scales"
        note = (
            f"{path}: affine column norms {np.round(norms, 6).tolist()} mm disagree with pixdim "
            f"{np.round(pixdim, 6).tolist()} mm (sform_code {int(img.header['sform_code'])}, qform_code "
            f"{int(img.header['qform_code'])}); {choice}: spacing {np.round(spacing, 6).tolist()} mm."
        )
    ornt = nibabel.io_orientation(affine)
    grid = Grid(
        shape=tuple(int(s) for s in shape),
        affine=affine,
        header=img.header.copy(),
        ornt=ornt,
        spacing=tuple(float(s) for s in spacing),
    )
    return grid, note


def to_ras(array: np.ndarray, grid: Grid) -> np.ndarray:
    """Reorder an on-disk array [X, Y, Z, ...] to RAS voxel order (flips and transposes only, exact)."""
    return np.ascontiguousarray(nibabel.orientations.apply_orientation(array, grid.ornt))


def from_ras(array_ras: np.ndarray, grid: Grid) -> np.ndarray:
    """Inverse of `to_ras`: an RAS array [X, Y, Z] or [X, Y, Z, C] back to on-disk voxel order."""
    if tuple(array_ras.shape[:3]) != grid.ras_shape:
        raise HeartjaxError(
            f"array of shape {tuple(array_ras.shape)} does not match the scan's RAS grid {grid.ras_shape}"
        )
    inverse = np.zeros_like(grid.ornt)
    for axis, (target, flip) in enumerate(grid.ornt):
        inverse[int(target)] = (axis, flip)
    return np.ascontiguousarray(nibabel.orientations.apply_orientation(array_ras, inverse))


def _corner_distance_mm(a: Grid, b: Grid) -> float:
    """Largest distance between the world positions of the RAS grids' corner voxels."""
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in a.ras_shape], indexing="ij")).reshape(3, -1)
    corners = np.vstack([corners, np.ones(corners.shape[1])])
    return float(np.abs((a.ras_affine - b.ras_affine) @ corners).max())


def _check_same_grid(grid: Grid, reference: Grid, path: Path, reference_name: str) -> None:
    """Refuse a label whose grid differs from its image's (shape, or affine by more than AFFINE_TOL_MM)."""
    if grid.ras_shape != reference.ras_shape:
        raise HeartjaxError(
            f"label file {path} has shape {grid.shape} but {reference_name} has shape {reference.shape}; a label "
            f"must be on the image's grid. Resample the label onto the image (nearest neighbour) first."
        )
    dist = _corner_distance_mm(grid, reference)
    if dist > AFFINE_TOL_MM:
        raise HeartjaxError(
            f"label file {path} is on a different grid from {reference_name} (affines differ by up to {dist:.4g} "
            f"mm at the volume corners; label affine {np.round(grid.affine, 4).tolist()}, image affine "
            f"{np.round(reference.affine, 4).tolist()}). Resample the label onto the image (nearest neighbour)."
        )


def read_label_codes(path) -> np.ndarray:
    """On-disk codes of a label file [X, Y, Z] in on-disk order (no scheme applied)."""
    return _load(Path(path), "label")[1]


def _read_label(path: Path, scheme) -> tuple[np.ndarray, Grid, str | None, labels_lib.LabelScheme]:
    """Read a label file into uint8 RAS indices."""
    img, codes = _load(path, "label")
    grid, note = _make_grid(img, codes.shape, path)
    scheme = resolve_scheme(scheme) or labels_lib.scheme_from_codes(codes)
    indices = scheme.encode(codes, source=f"label file {path}")
    return to_ras(indices, grid), grid, note, scheme


def load_label_file(path, scheme, reference_grid: Grid | None = None) -> tuple[np.ndarray, Grid]:
    """Load a label map (e.g. a prediction to evaluate) as uint8 class indices [X, Y, Z] in RAS order.

    `scheme` (LabelScheme or name) maps on-disk codes to indices; unknown codes raise HeartjaxError naming the
    file. With `reference_grid`, a label on a different grid than that scan is refused. Returns (indices, grid).
    """
    path = Path(path)
    indices, grid, note, _ = _read_label(path, scheme)
    if note:
        warnings.warn(note, stacklevel=2)
    if reference_grid is not None:
        _check_same_grid(grid, reference_grid, path, "the reference scan")
    return indices, grid


def load_volume(image_path, label_path=None, scheme=None, case: str | None = None) -> Volume:
    """Load a scan (and optionally its label map) into RAS voxel order.

    Returns a Volume with image float32 [X, Y, Z], label uint8 [X, Y, Z] (indices 0..K of `scheme`, which is a
    LabelScheme or a name; None infers MM-WHS or generic from the codes) or None, spacing in mm (RAS order),
    and the RAS affine. When the affine's scales disagree with pixdim (e.g. ACDC's unit-scale sform) it warns
    and takes pixdim as the spacing. A gzip-compressed file named .nii (or a plain one named .nii.gz) is read
    from its bytes, with a warning. Raises HeartjaxError for missing, truncated, non-NIfTI or non-3D files,
    headers whose voxel size is 0, negative, NaN/Inf or absurd or whose sform/qform cannot be inverted (as
    written, before nibabel's repairs), NaN/Inf voxels, unknown label codes, or a label on a different grid.
    """
    image_path = Path(image_path)
    img, data = _load(image_path, "image")
    grid, note = _make_grid(img, data.shape, image_path)
    image = data.astype(np.float32, copy=False)
    bad = ~np.isfinite(image)
    if bad.any():
        raise HeartjaxError(
            f"image file {image_path} has {int(bad.sum())} NaN or Inf voxels; fix or re-export the scan."
        )
    label = None
    if label_path is not None:
        label_path = Path(label_path)
        label, label_grid, label_note, _ = _read_label(label_path, scheme)
        _check_same_grid(label_grid, grid, label_path, f"image {image_path}")
        if note and label_note:
            note += " Its label file has the same header."
        else:
            note = note or label_note
    if note:
        warnings.warn(note, stacklevel=2)
    return Volume(
        image=to_ras(image, grid),
        label=label,
        spacing=grid.ras_spacing,
        affine=grid.ras_affine,
        grid=grid,
        source=str(image_path),
        label_source=None if label_path is None else str(label_path),
        case=case or case_id_from_path(image_path),
    )


def _output_header(grid: Grid, dtype) -> nibabel.Nifti1Header:
    """The scan's header with the new data type and no intensity scaling or display window."""
    header = grid.header.copy()
    header.set_data_dtype(dtype)
    header.set_slope_inter(np.nan, np.nan)
    header["cal_min"] = 0
    header["cal_max"] = 0
    return header


def _atomic_save(data: np.ndarray, header: nibabel.Nifti1Header, path, overwrite: bool) -> Path:
    """Write atomically with heartjax.common.atomic (nothing half-written is ever visible); refuses an existing file."""
    path = Path(path)
    if not is_nifti_path(path):
        raise HeartjaxError(f"output file {path}: name it .nii or .nii.gz.")
    if path.exists() and not overwrite:
        raise HeartjaxError(f"output file {path} already exists; pass --overwrite (overwrite=True) to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    # affine=None keeps the header's sform, qform, their codes and pixdim exactly as they were read
    image = nibabel.Nifti1Image(data, None, header)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"  # nibabel compresses by the name
    return atomic.write_with(path, lambda tmp: nibabel.save(image, str(tmp)), suffix=suffix)


def save_label(path, indices_ras: np.ndarray, grid: Grid, scheme, overwrite: bool = False) -> Path:
    """Write class indices [X, Y, Z] (RAS order, ints 0..K) as scheme codes on the scan's original grid.

    The file keeps the scan's header (sform/qform and their codes, pixdim) so it overlays the scan; the codes are
    uint8 when they fit, else uint16. Atomic; refuses an existing file unless overwrite=True. Returns the path.
    """
    scheme = resolve_scheme(scheme)
    indices_ras = np.asarray(indices_ras)
    if indices_ras.ndim != 3 or indices_ras.dtype.kind not in "biu":
        raise HeartjaxError(
            f"output file {path}: label must be an integer [X, Y, Z] array, got {indices_ras.dtype} "
            f"{indices_ras.shape}"
        )
    try:
        codes = from_ras(scheme.decode(indices_ras), grid)
    except HeartjaxError as err:
        raise HeartjaxError(f"output file {path}: {err}; nothing was written.") from err
    return _atomic_save(codes, _output_header(grid, codes.dtype), path, overwrite)


def save_array(path, array_ras: np.ndarray, grid: Grid, dtype=np.float32, overwrite: bool = False) -> Path:
    """Write an RAS array [X, Y, Z] or [X, Y, Z, C] (e.g. class probabilities) on the scan's original grid.

    Same header, atomicity and overwrite rules as `save_label`; the data is stored as `dtype`. Returns the path.
    """
    array_ras = np.asarray(array_ras)
    if array_ras.ndim not in (3, 4):
        raise HeartjaxError(f"output file {path}: expected an [X, Y, Z] or [X, Y, Z, C] array, got {array_ras.shape}")
    try:
        data = from_ras(array_ras, grid).astype(dtype)
    except HeartjaxError as err:
        raise HeartjaxError(f"output file {path}: {err}; nothing was written.") from err
    return _atomic_save(data, _output_header(grid, data.dtype), path, overwrite)


FORMAT = ImageFormat("nifti", NIFTI_EXTENSIONS, Grid, load_volume, load_label_file, read_label_codes, save_label,
                     save_array, to_ras, from_ras)
