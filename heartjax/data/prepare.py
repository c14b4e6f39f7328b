"""Turn a dataset's official release into a folder heartjax reads.

    python -m heartjax.data.prepare acdc SRC DST [--phase ed|es|both] [--copy] [--overwrite]

ACDC: SRC is the unpacked release (SRC/training/patientNNN/ and SRC/testing/patientNNN/, or SRC/patientNNN/),
each patient folder with Info.cfg naming its end-diastole and end-systole frames (`ED: 1`, `ES: 12`),
patientNNN_frameNN.nii.gz and patientNNN_frameNN_gt.nii.gz files and a 4D cine file (ignored). DST becomes the
"plain" layout: images/patientNNN.nii.gz + masks/patientNNN_mask.nii.gz for the ED frame (the names of the
acdc-ed folder the documentation uses) and images/patientNNN_es.nii.gz + masks/patientNNN_es_mask.nii.gz for the
ES frame, plus dataset.json (labels RV 1, MYO 2, LV 3; modality MRI; where each file came from). `--phase both`
holds both, so one patient's two frames share a patient id and stay on one side of every split.

The header quirk of the ACDC files (an sform with unit scales while the voxel size is only in pixdim; see
heartjax.data.io.quirks and heartjax.data.io.nifti) is repaired here, once: such files get an sform and qform whose
scales are pixdim's (directions and origin unchanged, voxel bytes untouched), so every later load sees the true
voxel size without a warning. Other files are hard-linked (copied with --copy, or across file systems). DST is
built under a temporary name and appears whole or not at all.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import io
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Callable, Sequence

import nibabel
import numpy as np

from heartjax.common import atomic
from heartjax.data.io.filenames import natural_key
from heartjax.data.io.nifti import PIXDIM_RTOL
from heartjax.data.io.quirks import Quirks
from heartjax.common.errors import HeartjaxError

PHASES = {"ed": ("ED",), "es": ("ES",), "both": ("ED", "ES")}
CASE_SUFFIX = {"ED": "", "ES": "_es"}  # ED keeps the plain patientNNN name of acdc-ed, so its splits files carry over
RELEASE_FOLDERS = ("", "training", "testing", "database/training", "database/testing")
ACDC_LABELS = {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
_FRAME_RE = r"{patient}_frame(\d+)(_gt)?(\.nii(?:\.gz)?)"


@dataclasses.dataclass(frozen=True)
class Frame:
    """One labelled frame of the release: its patient, phase ('ED' / 'ES'), frame number and two files."""

    patient: str
    phase: str
    number: int
    image: Path
    label: Path

    @property
    def case_id(self) -> str:
        return self.patient + CASE_SUFFIX[self.phase]


def find_patients(src: Path) -> list[Path]:
    """The patientNNN/ folders of a release, from SRC itself and its training/ and testing/ folders."""
    if not src.is_dir():
        raise HeartjaxError(f"ACDC release folder {src} does not exist or is not a folder; give the unpacked release.")
    found: dict[str, Path] = {}
    for sub in RELEASE_FOLDERS:
        folder = src / sub
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.is_dir() and re.fullmatch(r"patient\d+", path.name):
                if path.name in found:
                    raise HeartjaxError(f"{path} and {found[path.name]}: the same patient twice; remove one of them.")
                found[path.name] = path
    if not found:
        looked = ", ".join(str(src / sub) for sub in RELEASE_FOLDERS if sub) + f" and {src}"
        raise HeartjaxError(f"ACDC release folder {src}: no patientNNN/ folders (looked in {looked}); give the "
                            f"folder of the unpacked release.")
    return [found[name] for name in sorted(found, key=natural_key)]


def read_info(folder: Path) -> dict[str, str]:
    """The `key: value` lines of a patient's Info.cfg; ED and ES must name whole frame numbers."""
    cfg = folder / "Info.cfg"
    if not cfg.is_file():
        raise HeartjaxError(f"{cfg} is missing; every ACDC patient folder has one naming the ED and ES frames "
                            f"('ED: 1', 'ES: 12'). Restore it from the release or move {folder} out.")
    info = {}
    for line in cfg.read_text(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    for phase in ("ED", "ES"):
        if not info.get(phase, "").isdigit():
            raise HeartjaxError(f"{cfg}: no '{phase}: N' line with a frame number (found {info.get(phase)!r}); "
                                f"restore the file from the release.")
    return info


def find_frame(folder: Path, phase: str, number: int) -> Frame:
    """The image and label files of frame `number` of the patient in `folder` (.nii.gz or .nii)."""
    pattern = re.compile(_FRAME_RE.format(patient=re.escape(folder.name)))
    files: dict[bool, Path] = {}
    for path in sorted(folder.iterdir()):
        match = pattern.fullmatch(path.name)
        if match and int(match.group(1)) == number and path.is_file():
            files.setdefault(bool(match.group(2)), path)
    cfg = folder / "Info.cfg"
    if False not in files:
        raise HeartjaxError(f"{folder / f'{folder.name}_frame{number:02d}.nii.gz'} is missing, but {cfg} names frame "
                            f"{number} as {phase}; restore it from the release.")
    if True not in files:
        raise HeartjaxError(
            f"{folder / f'{folder.name}_frame{number:02d}_gt.nii.gz'} is missing: the label of {files[False].name} "
            f"({phase}). Restore it from the release; if these are test patients released without labels, give "
            f"the release's training/ folder as SRC to leave them out.")
    return Frame(folder.name, phase, number, files[False], files[True])


def header_fix(raw: bytes, path: Path) -> tuple[bytes | None, str | None]:
    """(new file bytes, note) repairing a unit-scale sform, or (None, None) for a file that needs nothing.

    The new sform and qform keep the affine's directions and origin with pixdim as the voxel size; only the
    348-byte NIfTI-1 header changes.
    """
    try:
        header = nibabel.Nifti1Header.from_fileobj(io.BytesIO(raw))
    except Exception:  # not NIfTI-1 (or broken): left as it is, for the loader to judge
        return None, None
    affine = header.get_best_affine()
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    pixdim = np.array(header["pixdim"][1:4], dtype=np.float64)
    if not (np.all(np.isfinite(pixdim)) and np.all(pixdim > 0) and np.all(norms > 0)):
        return None, None
    if np.all(np.abs(norms - pixdim) <= PIXDIM_RTOL * pixdim):
        return None, None
    fixed = affine.copy()
    fixed[:3, :3] = affine[:3, :3] / norms * pixdim
    code = int(header["sform_code"]) or int(header["qform_code"]) or 2
    header.set_sform(fixed, code)
    header.set_qform(fixed, code)
    note = (f"{path}: sform scales {np.round(norms, 6).tolist()} mm disagreed with pixdim "
            f"{np.round(pixdim, 6).tolist()} mm (sform_code {code}); wrote an sform and qform with pixdim as the "
            f"voxel size, directions and origin kept.")
    return header.binaryblock + raw[header.sizeof_hdr:], note


def place(source: Path, target: Path, copy: bool, quirks: Quirks) -> bool:
    """Put `source` at `target`: header repaired if it has the quirk, else hard-linked or copied. True if repaired."""
    data = source.read_bytes()
    zipped = data[:2] == b"\x1f\x8b"
    fixed, note = header_fix(gzip.decompress(data) if zipped else data, source)
    if fixed is not None:
        atomic.write_bytes(target, gzip.compress(fixed, compresslevel=6, mtime=0) if zipped else fixed)
        quirks.add(source, note)
        return True
    if not copy:
        try:
            os.link(source, target)
            return False
        except OSError:  # another file system, or links not allowed: copy instead
            pass
    atomic.write_with(target, lambda tmp: shutil.copyfile(source, tmp))
    return False


def _extension(path: Path) -> str:
    return ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"


def collect_frames(src: Path, phase: str) -> tuple[list[Frame], dict[str, dict]]:
    """Every frame of the chosen phase(s), checked before anything is written, and each patient's Info.cfg."""
    if phase not in PHASES:
        raise HeartjaxError(f"phase {phase!r} is not one of {', '.join(PHASES)}; give --phase ed, es or both.")
    frames, infos = [], {}
    for folder in find_patients(src):
        info = infos[folder.name] = read_info(folder)
        frames += [find_frame(folder, p, int(info[p])) for p in PHASES[phase]]
    return frames, infos


def _dataset_json(src: Path, phase: str, frames: Sequence[Frame], infos: dict, repaired: set[str]) -> dict:
    """dataset.json: what heartjax (and nnU-Net) read, plus where each case came from."""
    cases = {}
    for f in frames:
        info = infos[f.patient]
        cases[f.case_id] = {"patient": f.patient, "phase": f.phase, "frame": f.number,
                            "image": str(f.image.relative_to(src)), "label": str(f.label.relative_to(src)),
                            "header_repaired": f.case_id in repaired,
                            **{k.lower(): info[k] for k in ("Group", "Height", "Weight", "NbFrame") if k in info}}
    return {"name": "ACDC", "description": f"ACDC cine MRI, {phase.upper()} frame(s), from {src}",
            "reference": "O. Bernard et al., IEEE TMI 37(11):2514-2525, 2018",
            "channel_names": {"0": "MRI"}, "labels": ACDC_LABELS, "numTraining": len(frames),
            "file_ending": _extension(frames[0].image), "prepared_by": "python -m heartjax.data.prepare acdc",
            "phase": phase, "cases": cases}


def prepare_acdc(src, dst, phase: str = "ed", overwrite: bool = False, copy: bool = False,
                 log: Callable[[str], None] = print) -> dict:
    """Build DST from the ACDC release in SRC (see the module docstring); returns what dataset.json records.

    Raises HeartjaxError naming the file for a missing Info.cfg, frame or label file, an unknown phase, an
    existing DST (unless overwrite) or a DST that would hold or replace SRC; nothing is written then.
    """
    src, dst = Path(src), Path(dst)
    frames, infos = collect_frames(src, phase)
    src_abs, dst_abs = src.resolve(), dst.resolve()
    if dst_abs == src_abs or dst_abs in src_abs.parents:
        raise HeartjaxError(f"DST {dst} is SRC {src} or holds it; give a new folder outside the release.")
    empty = dst.is_dir() and not any(dst.iterdir())
    if dst.exists() and not (overwrite or empty):
        raise HeartjaxError(f"DST {dst} already exists; pass --overwrite to replace it, or give another folder.")
    quirks, repaired = Quirks(), set()
    with atomic.atomic_dir(dst, overwrite=True) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        for f in frames:
            fixed_image = place(f.image, tmp / "images" / (f.case_id + _extension(f.image)), copy, quirks)
            fixed_label = place(f.label, tmp / "masks" / (f.case_id + "_mask" + _extension(f.label)), copy, quirks)
            if fixed_image or fixed_label:
                repaired.add(f.case_id)
        record = _dataset_json(src, phase, frames, infos, repaired)
        atomic.write_json(tmp / "dataset.json", record)
        quirks.report(log, 2 * len(frames))
    what = " and ".join(PHASES[phase])
    log(f"wrote {dst}: {len(frames)} cases ({what} frames of {len(infos)} patients), images/ + masks/ + dataset.json; "
        f"{len(repaired)} case(s) with the header repaired.")
    return record


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry; returns 0 when DST was written, 2 on a usage or input error (nothing written)."""
    parser = argparse.ArgumentParser(
        prog="python -m heartjax.data.prepare", description=__doc__.split("\n\n")[0],
        epilog="example: python -m heartjax.data.prepare acdc ~/Downloads/ACDC/database data/acdc-ed --phase ed",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    acdc = sub.add_parser("acdc", help="the ACDC release (patientNNN/ folders with Info.cfg)",
                          description=__doc__.split("\n\n")[2], formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                          epilog="example: python -m heartjax.data.prepare acdc ~/Downloads/ACDC/database "
                                 "data/acdc-both --phase both")
    acdc.add_argument("src", metavar="SRC", help="the unpacked ACDC release (with training/ and testing/)")
    acdc.add_argument("dst", metavar="DST", help="the folder to create (must not exist, or pass --overwrite)")
    acdc.add_argument("--phase", default="ed", help="which frames: ed (end-diastole), es (end-systole) or both")
    acdc.add_argument("--copy", action="store_true", help="copy the files instead of hard-linking them")
    acdc.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    args = parser.parse_args(argv)
    try:
        prepare_acdc(args.src, args.dst, args.phase, args.overwrite, args.copy)
    except HeartjaxError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {err.filename or args.src}: {err.strerror or err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
