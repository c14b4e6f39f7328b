"""DICOM series in (the `FORMAT` of a folder holding one CT or MR series), read with pydicom onto a NIfTI grid, so
the label map of a series is written as NIfTI on the series' own grid.

What is read: the visible files of the folder that are DICOM images (files that are not DICOM, and DICOM files
without pixels such as a DICOMDIR, are ignored with a warning naming them), grouped by SeriesInstanceUID. The
slices are sorted by their position along the slice normal (the cross product of ImageOrientationPatient's row
and column directions, dotted with ImagePositionPatient), each slice's RescaleSlope and RescaleIntercept are
applied, and the affine is built from ImageOrientationPatient, ImagePositionPatient and PixelSpacing, then taken
from DICOM's LPS world to NIfTI's RAS (x and y negated). The on-disk array is [column, row, slice].

What is refused, by name (HeartjaxError): a folder holding several series (each listed with its
SeriesInstanceUID and SeriesDescription; point at a folder holding one, or at one file of the series to read),
missing or duplicate slices, slice spacing that varies by more than SPACING_RTOL of the median, slices that
disagree on orientation, pixel spacing or size, multi-frame (enhanced) files, colour images, and compressed
transfer syntaxes pydicom cannot decode here (naming what to install).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import nibabel
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder

from heartjax.data.io import nifti
from heartjax.data.io.formats import ImageFormat, Volume
from heartjax.common.errors import HeartjaxError

SPACING_RTOL = 0.01  # a slice gap may differ from the median slice spacing by 1 % of it
DUPLICATE_MM = 1e-3  # two slices closer than this along the normal are the same slice
ORIENTATION_TOL = 1e-4  # the slices' ImageOrientationPatient cosines agree within this
PIXEL_SPACING_RTOL = 1e-4  # ... and their PixelSpacing within this fraction
INSTALL_HINT = ("pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or pip install python-gdcm), or "
                "decompress the series first (e.g. gdcmconv --raw, or dcmdjpeg)")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def is_dicom_file(path) -> bool:
    """A visible file holding the DICOM preamble ('DICM' at byte 128)."""
    path = Path(path)
    if path.name.startswith(".") or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _visible_files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]


def claims(path) -> bool:
    """True for a folder holding at least one DICOM file, or for a DICOM file (which picks its series)."""
    path = Path(path)
    if path.is_dir():
        try:
            return any(is_dicom_file(p) for p in _visible_files(path))
        except OSError:
            return False
    return is_dicom_file(path)


def _headers(folder: Path) -> list[tuple[Path, pydicom.Dataset]]:
    """(file, header without pixels) of every DICOM image of a folder; warns naming the files it ignores."""
    found, ignored = [], []
    for path in _visible_files(folder):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as err:
            ignored.append(f"{path.name} (not DICOM: {type(err).__name__})")
            continue
        if "Rows" not in ds or "Columns" not in ds or "SeriesInstanceUID" not in ds:
            ignored.append(f"{path.name} (DICOM without an image: {getattr(ds, 'SOPClassUID', 'no SOP class')!s})")
            continue
        found.append((path, ds))
    if ignored:
        warnings.warn(f"{folder}: ignored {len(ignored)} file(s) that are not DICOM images: "
                      f"{', '.join(ignored[:5])}{' ...' if len(ignored) > 5 else ''}", stacklevel=3)
    if not found:
        raise HeartjaxError(f"DICOM folder {folder} holds no DICOM image files; point at the folder of one series.")
    return found


def _describe(series: list[tuple[Path, pydicom.Dataset]]) -> str:
    ds = series[0][1]
    return (f"SeriesInstanceUID {ds.SeriesInstanceUID} ({getattr(ds, 'Modality', '?')}, series number "
            f"{getattr(ds, 'SeriesNumber', '?')}, \"{getattr(ds, 'SeriesDescription', '')}\", {len(series)} file(s), "
            f"e.g. {series[0][0].name})")


def select_series(path) -> tuple[Path, list[tuple[Path, pydicom.Dataset]]]:
    """(folder, the files of its one series): a folder must hold one series; a file picks its own series."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    groups: dict[str, list] = {}
    for item in _headers(folder):
        groups.setdefault(str(item[1].SeriesInstanceUID), []).append(item)
    if not path.is_dir():
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
        return folder, groups[uid]
    if len(groups) > 1:
        listed = "; ".join(_describe(groups[uid]) for uid in sorted(groups))
        raise HeartjaxError(f"DICOM folder {folder} holds {len(groups)} series: {listed}. Which one? Point at a "
                            f"folder holding one series, or at one file of the series you want (e.g. "
                            f"{groups[min(groups)][0][0]}) to read that series only.")
    return folder, next(iter(groups.values()))


def _syntax(ds: pydicom.Dataset):
    """The file's TransferSyntaxUID (a pydicom UID), or None when its meta header has none."""
    return getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)


def _check_decodable(series: list[tuple[Path, pydicom.Dataset]]) -> None:
    """Refuse a transfer syntax that no installed pydicom handler decodes, naming what to install."""
    for path, ds in series:
        uid = _syntax(ds)
        if uid is None:
            continue
        try:
            available = get_decoder(uid).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise HeartjaxError(f"DICOM file {path} is stored with the transfer syntax {uid.name} ({uid}), which "
                                f"pydicom cannot decode with the packages installed here: {INSTALL_HINT}.")


def _same(values: list, what: str, folder: Path, tol: float) -> np.ndarray:
    """The value every slice has (within `tol`); HeartjaxError naming the tag otherwise."""
    first = np.asarray(values[0], dtype=np.float64)
    worst = max(float(np.abs(np.asarray(v, dtype=np.float64) - first).max()) for v in values)
    if worst > tol:
        raise HeartjaxError(f"DICOM series in {folder}: the slices disagree on {what} (by up to {worst:.4g}); a "
                            f"series heartjax reads is one 3D block (is a localizer or a second stack mixed in?).")
    return first


def _tags(series, folder: Path) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(ImageOrientationPatient [6], PixelSpacing [2] (row, column), (rows, columns)) shared by every slice."""
    for name in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        lacking = [p.name for p, ds in series if name not in ds]
        if lacking:
            raise HeartjaxError(f"DICOM series in {folder}: {len(lacking)} file(s) ({', '.join(lacking[:3])}) have "
                                f"no {name}, so the series has no geometry heartjax can use.")
    frames = [p.name for p, ds in series if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1]
    if frames:
        raise HeartjaxError(f"DICOM file {folder / frames[0]} is a multi-frame (enhanced) image; convert the series "
                            f"to NIfTI (e.g. dcm2niix) or export it as single-frame files.")
    colour = [p.name for p, ds in series if int(getattr(ds, "SamplesPerPixel", 1)) != 1]
    if colour:
        raise HeartjaxError(f"DICOM file {folder / colour[0]} is a colour image; heartjax reads CT and MR greyscale.")
    iop = _same([ds.ImageOrientationPatient for _, ds in series], "ImageOrientationPatient", folder, ORIENTATION_TOL)
    spacing = [np.asarray(ds.PixelSpacing, np.float64) for _, ds in series]
    pixel = _same(spacing, "PixelSpacing", folder, PIXEL_SPACING_RTOL * float(np.max(spacing[0])))
    size = _same([(int(ds.Rows), int(ds.Columns)) for _, ds in series], "Rows and Columns", folder, 0.5)
    return iop, pixel, (int(size[0]), int(size[1]))


def _gap_problem(gaps: np.ndarray, positions: np.ndarray, names: list[str], folder: Path) -> str | None:
    """A missing slice (a gap near a multiple of the median spacing) or uneven spacing, described; else None."""
    median = float(np.median(gaps))
    off = np.abs(gaps - median) > SPACING_RTOL * median
    if not off.any():
        return None
    i = int(np.argmax(np.abs(gaps - median)))
    where = f"between {names[i]} ({positions[i]:.4g} mm) and {names[i + 1]} ({positions[i + 1]:.4g} mm)"
    ratio = gaps[i] / median
    if ratio > 1.5 and abs(ratio - round(ratio)) <= SPACING_RTOL * round(ratio):
        return (f"{int(round(ratio)) - 1} slice(s) missing {where}: a gap of {gaps[i]:.4g} mm where the slices are "
                f"{median:.4g} mm apart; export the whole series again")
    return (f"non-uniform slice spacing: gaps from {gaps.min():.4g} to {gaps.max():.4g} mm ({int(off.sum())} of "
            f"{len(gaps)} differ from the median {median:.4g} mm by more than {100 * SPACING_RTOL:g} %, the largest "
            f"{where}); heartjax reads evenly spaced slices: resample the series (or export it again)")


def _order(series, iop: np.ndarray, folder: Path) -> list:
    """The slices sorted along the slice normal; refuses duplicates, missing slices and uneven spacing."""
    if len(series) < 2:
        raise HeartjaxError(f"DICOM series in {folder} has {len(series)} slice; heartjax needs a 3D volume.")
    normal = np.cross(iop[:3], iop[3:])
    positions = np.array([float(np.dot(normal, np.asarray(ds.ImagePositionPatient, np.float64)))
                          for _, ds in series])
    order = np.argsort(positions, kind="stable")
    series, positions = [series[i] for i in order], positions[order]
    names = [p.name for p, _ in series]
    gaps = np.diff(positions)
    dupes = np.flatnonzero(gaps < DUPLICATE_MM)
    if dupes.size:
        i = int(dupes[0])
        raise HeartjaxError(f"DICOM series in {folder}: duplicate slices: {names[i]} and {names[i + 1]} lie at the "
                            f"same position ({positions[i]:.4g} mm along the slice normal; {dupes.size} such "
                            f"pair(s)); keep one file of each pair (several acquisitions or echoes in one series "
                            f"are not one 3D volume).")
    problem = _gap_problem(gaps, positions, names, folder)
    if problem:
        raise HeartjaxError(f"DICOM series in {folder}: {problem}.")
    return series


def _pixels(path: Path) -> np.ndarray:
    """One slice's pixels [rows, columns] with its RescaleSlope and RescaleIntercept applied (float64)."""
    ds = pydicom.dcmread(path)
    logger, level = logging.getLogger("pydicom"), logging.getLogger("pydicom").level
    logger.setLevel(logging.CRITICAL)  # a failed decode is logged with its traceback; the error below says it all
    try:
        pixels = np.asarray(ds.pixel_array, dtype=np.float64)
    except Exception as err:  # noqa: BLE001 - pydicom's handlers raise many kinds; each is this file's problem
        uid, text = _syntax(ds), " ".join(str(err).split())
        raise HeartjaxError(f"DICOM file {path}: its pixels (transfer syntax {getattr(uid, 'name', uid)}) could "
                            f"not be decoded ({type(err).__name__}: {text}); if the file is intact, "
                            f"{INSTALL_HINT}.") from err
    finally:
        logger.setLevel(level)
    if pixels.ndim != 2:
        raise HeartjaxError(f"DICOM file {path}: pixel data of shape {pixels.shape}; expected one 2D slice.")
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    return pixels * slope + float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)


def _affine(series, iop: np.ndarray, pixel: np.ndarray) -> np.ndarray:
    """Voxel [column, row, slice] -> RAS world (mm): DICOM's LPS affine with x and y negated."""
    first = np.asarray(series[0][1].ImagePositionPatient, np.float64)
    last = np.asarray(series[-1][1].ImagePositionPatient, np.float64)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * pixel[1]  # along a row: the column index grows, PixelSpacing[1] apart
    lps[:3, 1] = iop[3:] * pixel[0]  # along a column: the row index grows, PixelSpacing[0] apart
    lps[:3, 2] = (last - first) / (len(series) - 1)
    lps[:3, 3] = first
    return LPS_TO_RAS @ lps


def _grid(shape: tuple[int, int, int], affine: np.ndarray) -> nifti.Grid:
    """The NIfTI grid (header with sform and qform of code 1, scanner) that a label map of the series is written on."""
    header = nibabel.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header.set_xyzt_units("mm")
    header.set_sform(affine, code=1)
    header.set_qform(affine, code=1)  # sets pixdim from the affine (a gantry tilt's shear is kept by the sform)
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    header.set_zooms(spacing)
    return nifti.Grid(shape=shape, affine=affine, header=header, ornt=nibabel.io_orientation(affine), spacing=spacing)


def read_series(path) -> tuple[np.ndarray, nifti.Grid, Path]:
    """A series folder (or one file of a series) as (float32 [column, row, slice] array, its grid, the folder)."""
    folder, series = select_series(path)
    _check_decodable(series)
    iop, pixel, (rows, cols) = _tags(series, folder)
    series = _order(series, iop, folder)
    data = np.empty((cols, rows, len(series)), np.float32)
    for k, (file, _) in enumerate(series):
        data[:, :, k] = _pixels(file).T
    affine = _affine(series, iop, pixel)
    return data, _grid(data.shape, affine), folder


def case_name(path) -> str:
    """A series folder's name; for a file picking one series of a folder, FOLDER_sNUMBER (its SeriesNumber)."""
    path = Path(os.path.abspath(path))
    if path.is_dir():
        return path.name
    try:
        number = getattr(pydicom.dcmread(path, stop_before_pixels=True), "SeriesNumber", None)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError):
        number = None
    return f"{path.parent.name}_s{number}" if number not in (None, "") else f"{path.parent.name}_{path.name}"


def load_volume(image_path, label_path=None, scheme=None, case: str | None = None) -> Volume:
    """A DICOM series (a folder holding one, or one file of it) and optionally its NIfTI label map, in RAS voxel
    order (see the module docstring for what is read and what is refused)."""
    data, grid, _ = read_series(image_path)
    label = None
    if label_path is not None:
        label, _ = nifti.load_label_file(label_path, scheme, reference_grid=grid)
    return Volume(image=nifti.to_ras(data, grid), label=label, spacing=grid.ras_spacing, affine=grid.ras_affine,
                  grid=grid, source=str(image_path), label_source=None if label_path is None else str(label_path),
                  case=case or case_name(image_path))


def _not_a_label(path, *args, **kwargs):
    raise HeartjaxError(f"{path} is a DICOM series: heartjax reads DICOM scans, not label maps; give the label as "
                        f"NIfTI (.nii.gz) on the series' grid.")


def _not_written(path, *args, **kwargs):
    raise HeartjaxError(f"output {path}: heartjax writes label maps as NIfTI (on the DICOM series' grid), not as "
                        f"DICOM; name it .nii.gz.")


FORMAT = ImageFormat("dicom", (), nifti.Grid, load_volume, _not_a_label, _not_a_label, _not_written, _not_written,
                     nifti.to_ras, nifti.from_ras, claims=claims, case_name=case_name)
