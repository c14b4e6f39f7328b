"""File names of cases: which files are NIfTI, a file's case id, the label-file suffixes, and natural order.

One definition shared by dataset discovery (`heartjax.data.datasets`) and folder scoring (`heartjax.evaluate`):
a label (or prediction) of case NAME is named NAME, NAME_label, NAME_mask, NAME_seg or NAME_gt, with .nii or
.nii.gz.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

NIFTI_EXTENSIONS = (".nii.gz", ".nii")
LABEL_SUFFIXES = ("", "_label", "_mask", "_seg", "_gt")  # in the order they are tried


def is_nifti_path(path: Path) -> bool:
    """True for names ending in .nii or .nii.gz."""
    return path.name.endswith(NIFTI_EXTENSIONS)


def case_id_from_path(path: str | os.PathLike) -> str:
    """File name without its .nii / .nii.gz extension."""
    name = Path(path).name
    for ext in NIFTI_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def nifti_files(folder: Path) -> list[Path]:
    """The visible (not dot-named) .nii / .nii.gz files of a folder, sorted by name."""
    return [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".") and is_nifti_path(p)]


def label_names(case_id: str) -> list[str]:
    """The names (without extension) a label file of `case_id` may have, in LABEL_SUFFIXES order."""
    return [case_id + suffix for suffix in LABEL_SUFFIXES]


def pair_key(path: str | os.PathLike) -> str:
    """The case name a file pairs by: its name without .nii/.nii.gz and without one label suffix."""
    stem = case_id_from_path(path)
    for suffix in LABEL_SUFFIXES:
        if suffix and stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def natural_key(text: str) -> tuple:
    """Sort key that orders case2 before case10."""
    return tuple((0, int(tok), "") if tok.isdigit() else (1, 0, tok) for tok in re.split(r"(\d+)", text) if tok)
