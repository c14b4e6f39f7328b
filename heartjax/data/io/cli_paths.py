"""Checks of the paths a command line is given, done before any work so a mistake costs nothing.

Each check raises HeartjaxError with one line naming the path and what to do; `predict` and `evaluate` turn it into
`error: ...` and exit status 2, with nothing written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from heartjax.data.io import filenames, images
from heartjax.common.errors import HeartjaxError


def _nearest_existing(path: Path) -> Path:
    """`path` itself or its closest ancestor that exists."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_folder(folder: Path, flag: str = "--out") -> None:
    """A folder that exists and is writable, or that can be created (its nearest existing ancestor is a writable
    folder). Creates nothing."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise HeartjaxError(f"{flag} {folder} is a file, not a folder; give a folder for the outputs (it is "
                            f"created if missing), or move the file away.")
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise HeartjaxError(f"{flag} {folder} cannot be created: {base} is a file, not a folder; choose another "
                            f"{flag}.")
    if not os.access(base, os.W_OK | os.X_OK):
        what = "write to" if base == Path(os.path.abspath(folder)) else f"create {folder} in"
        raise HeartjaxError(f"{flag} {folder}: cannot {what} {base} (permission denied); choose a folder you can "
                            f"write to.")


def check_output_file(path: Path, flag: str = "--out") -> None:
    """A file that can be written (replacing a file, never a folder) in a folder that exists or can be created."""
    path = Path(path)
    if path.is_dir():
        raise HeartjaxError(f"{flag}: {path} is a folder, so the file {path.name} cannot be written there; "
                            f"choose another {flag} name or move the folder away.")
    if path.exists() and not os.access(path, os.W_OK):
        raise HeartjaxError(f"{flag}: {path} exists and cannot be replaced (permission denied); choose another "
                            f"{flag}.")
    check_output_folder(path.parent, flag=f"{flag} folder")


def check_input_folder(folder: Path, what: str) -> None:
    """An existing, readable folder."""
    folder = Path(folder)
    if not folder.is_dir():
        state = "is a file, not a folder" if folder.exists() else "does not exist"
        raise HeartjaxError(f"{what} folder {folder} {state}; check the path.")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise HeartjaxError(f"{what} folder {folder} cannot be read (permission denied); make it readable "
                            f"(chmod u+rx) or copy it.")


def _folder_inputs(folder: Path) -> list[Path]:
    """The scans of a folder: its NIfTI files, the folder itself when it holds a DICOM series, and each subfolder
    holding one."""
    check_input_folder(folder, "input")
    series = [folder] if images.is_image_path(folder) else []
    subfolders = [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    return filenames.nifti_files(folder) + series + [p for p in subfolders if images.is_image_path(p)]


def collect_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Scans named directly or found in folders: NIfTI files (visible .nii/.nii.gz files, sorted by name) and
    DICOM series (a folder holding one, each subfolder holding one, or one file of a series to pick it).

    Raises HeartjaxError for a path that does not exist or cannot be read, a file that is neither NIfTI nor DICOM,
    or when no scan is found at all.
    """
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            out += _folder_inputs(path)
            continue
        if not path.exists():
            raise HeartjaxError(f"input {path} does not exist; check the path (a folder of scans works too).")
        if not images.is_image_path(path):
            raise HeartjaxError(f"input {path} is not a NIfTI file (expected a name ending in .nii or .nii.gz) nor "
                                f"a DICOM file; convert it to NIfTI first, or give the folder of its DICOM series.")
        if not os.access(path, os.R_OK):
            raise HeartjaxError(f"input {path} cannot be read (permission denied); make it readable (chmod u+r).")
        out.append(path)
    out = list({Path(os.path.abspath(p)): p for p in out}.values())  # a file named twice is segmented once
    if not out:
        raise HeartjaxError(f"no NIfTI files (.nii, .nii.gz) or DICOM series found in {[str(i) for i in inputs]}; "
                            f"give scan files or folders that hold them.")
    return out


def check_unique_outputs(sources: Sequence[Path], targets: Sequence[Path]) -> None:
    """Refuse two inputs that would be written to the same output file."""
    seen: dict[Path, Path] = {}
    for source, target in zip(sources, targets):
        if target in seen and Path(os.path.abspath(seen[target])) != Path(os.path.abspath(source)):
            raise HeartjaxError(f"inputs {seen[target]} and {source} would both be written to {target}; give them "
                                f"different names or predict them into different --out folders.")
        seen[target] = source


def check_not_overwriting(targets: Sequence[Path], overwrite: bool) -> None:
    """Refuse outputs that exist already (unless `overwrite`), and any output that is a folder."""
    folders = [t for t in targets if t.is_dir()]
    if folders:
        raise HeartjaxError(f"output {folders[0]} is a folder; move it away or choose another --out.")
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise HeartjaxError(f"output {existing[0]} exists{more}; pass --overwrite to replace, or choose another "
                            f"--out.")
