"""What a NIfTI file really holds, read from its bytes: compression, the header as written, and its sanity.

nibabel decides compression from the file name and quietly repairs some headers when it loads them (a voxel size of
0 becomes 1 mm, a negative one its absolute value). heartjax instead looks at the bytes: `probe` reads the first
bytes (through gzip when the gzip magic 1f 8b is there, whatever the name says) and parses the header exactly as
written; `check_header` refuses voxel sizes and orientation matrices that do not describe a real scan; `open_image`
loads a file whose compression does not match its name. `nifti.load_volume` and every loader go through these.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import struct
import warnings
import zlib
from pathlib import Path

import nibabel
import numpy as np

from heartjax.common.errors import HeartjaxError

GZIP_MAGIC = b"\x1f\x8b"
MIN_SPACING_MM = 1e-3  # a voxel size outside [MIN, MAX] mm is not a scan's (a unit mix-up or a broken header)
MAX_SPACING_MM = 100.0
_HEAD_BYTES = 544  # enough for a NIfTI-2 header (540) and the 4 extension bytes
_UNITS = {0: "unknown", 1: "meter", 2: "mm", 3: "micron"}
_FIX = ("Fix the header (e.g. set the spacing and orientation in 3D Slicer or ITK-SNAP, or with nibabel "
        "header.set_zooms / set_sform) and save the scan again.")


@dataclasses.dataclass(frozen=True)
class Probe:
    """The first bytes of a file.

    gzip: the bytes are gzip-compressed (magic 1f 8b). header: the NIfTI-1/2 header exactly as written (nibabel's
    repairs not applied), or None when the bytes are not a NIfTI header. kind: what the file is, in words.
    """

    gzip: bool
    header: nibabel.Nifti1Header | None
    kind: str


def _head(path: Path, what: str) -> tuple[bool, bytes]:
    """(is gzip, up to _HEAD_BYTES of the decompressed content); an unreadable file raises HeartjaxError."""
    try:
        with open(path, "rb") as f:
            raw = f.read(_HEAD_BYTES)
    except PermissionError as err:
        raise HeartjaxError(f"{what} file {path} cannot be read (permission denied); make it readable "
                            f"(chmod u+r) or copy it somewhere you can read.") from err
    except OSError as err:
        raise HeartjaxError(f"{what} file {path} cannot be read ({type(err).__name__}: {err}); check the file "
                            f"and the disk.") from err
    if not raw.startswith(GZIP_MAGIC):
        return False, raw
    try:
        with gzip.open(path, "rb") as f:
            return True, f.read(_HEAD_BYTES)
    except (OSError, EOFError, zlib.error):
        return True, b""  # a gzip stream broken in its first bytes: refused by the caller as unreadable


def _sizeof_hdr(head: bytes) -> int | None:
    """The NIfTI sizeof_hdr field in either byte order (348 NIfTI-1, 540 NIfTI-2), else None."""
    if len(head) < 4:
        return None
    for order in "<>":
        size = struct.unpack(order + "i", head[:4])[0]
        if size in (348, 540):
            return size
    return None


def _describe(head: bytes, compressed: bool) -> str:
    """What a non-NIfTI file is, in words (for the refusal message)."""
    prefix = "gzip-compressed " if compressed else ""
    if not head:
        return "an empty file" if not compressed else "a gzip file whose content could not be decompressed"
    if len(head) > 132 and head[128:132] == b"DICM":
        return f"a {prefix}DICOM file; convert the series to NIfTI first (e.g. dcm2niix)"
    signatures = {b"\x89HDF": "an HDF5 file", b"PK\x03\x04": "a zip archive", b"NRRD": "an NRRD image",
                  b"BZh": "a bzip2-compressed file", b"\x28\xb5\x2f\xfd": "a zstd-compressed file",
                  b"ObjectType": "a MetaImage (.mha/.mhd) header", b"\x93NUMPY": "a NumPy .npy array"}
    for magic, name in signatures.items():
        if head.startswith(magic):
            return f"{prefix}{name}; convert it to NIfTI first"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head[:256]):
        return f"{prefix}text ({head[:40].decode('ascii', 'replace')!r}...), not an image"
    if _sizeof_hdr(head) == 348 and head[344:348] == b"ni1\x00":
        return f"the {prefix}header of a NIfTI .hdr/.img pair; load the pair's .hdr, or convert it to a single .nii"
    if _sizeof_hdr(head) == 348:
        return f"a {prefix}Analyze 7.5 header (no NIfTI magic); convert it to NIfTI first"
    return f"{prefix}binary data starting with bytes {head[:8].hex(' ')}, not a NIfTI header"


def probe(path: Path, what: str = "image") -> Probe:
    """Read a file's first bytes: its compression, its NIfTI header as written, or what it is instead."""
    compressed, head = _head(Path(path), what)
    size = _sizeof_hdr(head)
    magic = head[344:348] if size == 348 else head[4:8]
    if size is not None and len(head) >= size and magic in (b"n+1\x00", b"n+2\x00"):
        klass = nibabel.Nifti1Header if size == 348 else nibabel.Nifti2Header
        try:
            header = klass.from_fileobj(io.BytesIO(head), check=False)
            return Probe(compressed, header, f"a {'gzip-compressed ' if compressed else ''}NIfTI file")
        except Exception:  # noqa: BLE001 - any parse failure means "not a header we understand"
            pass
    return Probe(compressed, None, _describe(head, compressed))


def _axes(header: nibabel.Nifti1Header) -> int:
    """Number of spatial axes the header declares (at most 3)."""
    return int(min(max(int(header["dim"][0]), 0), 3))


def _spacing_problem(pixdim: np.ndarray) -> str | None:
    """Why these voxel sizes (mm) are not a scan's, or None."""
    for axis, size in enumerate(pixdim):
        if not np.isfinite(size):
            return f"{size:g} on axis {axis} is not a number"
        if size == 0:
            return f"0 on axis {axis}"
        if size < 0:
            return f"{size:g} on axis {axis} is negative"
        if not MIN_SPACING_MM <= size <= MAX_SPACING_MM:
            return f"{size:g} on axis {axis} is outside {MIN_SPACING_MM:g}..{MAX_SPACING_MM:g} mm"
    return None


def _matrix_problem(matrix: np.ndarray) -> str | None:
    """Why a 3x4 voxel -> world matrix cannot be inverted (non-finite or singular), or None."""
    if not np.all(np.isfinite(matrix)):
        return "holds NaN or Inf"
    rot = matrix[:3, :3]
    norms = np.linalg.norm(rot, axis=0)
    if np.any(norms == 0) or abs(np.linalg.det(rot)) <= 1e-9 * np.prod(norms):
        return "is singular (its voxel axes are zero or parallel), so it cannot be inverted"
    return None


def _qform_problem(header: nibabel.Nifti1Header) -> str | None:
    """Why the quaternion of a qform cannot describe a rotation, or None."""
    quat = np.array([header["quatern_b"], header["quatern_c"], header["quatern_d"]], dtype=np.float64)
    offset = np.array([header["qoffset_x"], header["qoffset_y"], header["qoffset_z"]], dtype=np.float64)
    if not (np.all(np.isfinite(quat)) and np.all(np.isfinite(offset))):
        return "holds NaN or Inf"
    if float(quat @ quat) > 1.0 + 1e-4:
        return f"has quaternion (b, c, d) = {np.round(quat, 6).tolist()} of norm > 1, which is no rotation"
    return None


def check_header(header: nibabel.Nifti1Header, path: Path, what: str = "image") -> None:
    """Refuse a header, as written, whose voxel size or orientation cannot describe a scan.

    Voxel sizes (pixdim[1..3] of the spatial axes) must be finite and within MIN_SPACING_MM..MAX_SPACING_MM;
    the sform (when sform_code > 0) must be finite and invertible, the qform (when qform_code > 0) a finite
    rotation. Raises HeartjaxError naming the file, the field and what to do.
    """
    n = _axes(header)
    pixdim = np.array(header["pixdim"][1:1 + n], dtype=np.float64)
    problem = _spacing_problem(pixdim)
    if problem:
        units = _UNITS.get(int(header["xyzt_units"]) & 7, "unknown")
        note = "" if units in ("mm", "unknown") else f" (the header's spatial unit is {units}; heartjax reads mm)"
        raise HeartjaxError(f"{what} file {path}: its header gives voxel size (pixdim) "
                            f"{[round(float(p), 6) for p in pixdim]} mm: {problem}{note}; a voxel size must be a "
                            f"positive number of mm. {_FIX}")
    sform_code, qform_code = int(header["sform_code"]), int(header["qform_code"])
    if sform_code > 0:
        sform = np.array([header["srow_x"], header["srow_y"], header["srow_z"]], dtype=np.float64)
        problem = _matrix_problem(sform)
        if problem:
            raise HeartjaxError(f"{what} file {path}: its sform (sform_code {sform_code}) "
                                f"{np.round(sform, 6).tolist()} {problem}; the scan has no usable voxel-to-world "
                                f"mapping. {_FIX} (If only the sform is broken, setting sform_code to 0 makes "
                                f"readers use the qform.)")
    if qform_code > 0:
        problem = _qform_problem(header)
        if problem:
            raise HeartjaxError(f"{what} file {path}: its qform (qform_code {qform_code}) {problem}; the scan has "
                                f"no usable voxel-to-world mapping. {_FIX}")


def open_image(path: Path, found: Probe) -> nibabel.Nifti1Image:
    """nibabel image of `path`; a file whose compression does not match its name is read from its bytes
    (a warning says so). Read errors propagate to the caller, which names the file."""
    named_gz = path.name.lower().endswith(".gz")
    if found.gzip == named_gz:
        return nibabel.load(str(path), mmap=False)
    data = path.read_bytes()
    if found.gzip:
        data = gzip.decompress(data)
    klass = nibabel.Nifti2Image if isinstance(found.header, nibabel.Nifti2Header) else nibabel.Nifti1Image
    image = klass.from_bytes(data)
    if found.gzip:
        hint = f"it is gzip-compressed although its name ends in .nii: read it as .nii.gz (rename it {path.name}.gz)"
    else:
        hint = f"it is not gzip-compressed although its name ends in .gz: read it as .nii (rename it " \
               f"{path.name[:-3]})"
    warnings.warn(f"{path}: {hint}.", stacklevel=3)
    return image
