"""The file names `python -m heartjax.predict` writes for a scan NAME.nii.gz (or a DICOM series folder NAME), and
its uncertainty maps.

    OUT/NAME.nii.gz            the label map (the input's name)
    OUT/NAME_probs.nii.gz      --probabilities: class probabilities [X, Y, Z, C]
    OUT/NAME_entropy.nii.gz    --uncertainty: voxel entropy of the (fold-averaged) probabilities, nats, float32
    OUT/NAME_foldvar.nii.gz    --uncertainty with a cross-validated run: mean over classes of the variance across
                               folds of the probabilities, float32

All on the scan's own grid and header, written through `heartjax.data.io.images`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from heartjax.data.io import cli_paths, images
from heartjax.data.io.filenames import case_id_from_path
from heartjax.common.errors import HeartjaxError
from heartjax.eval import calibration

UNCERTAINTY = ("entropy", "foldvar")


def output_name(path: Path) -> str:
    """The label map's file name: a NIfTI input's name; NAME.nii.gz for a DICOM series folder NAME."""
    name = path.name
    if name.endswith((".nii.gz", ".nii")):
        return name
    try:
        return images.case_name(path) + ".nii.gz"
    except HeartjaxError:
        return name + ".nii.gz"


def extra_name(path: Path, what: str) -> str:
    """The file name of another output of a scan, NAME_WHAT.nii.gz (WHAT: "probs", "entropy", "foldvar")."""
    return f"{case_id_from_path(output_name(path))}_{what}.nii.gz"


def probabilities_name(path: Path) -> str:
    """The probabilities' file name: NAME_probs.nii.gz."""
    return extra_name(path, "probs")


def planned_outputs(files: list[Path], out: Path, probabilities: bool, overwrite: bool,
                    uncertainty: bool = False) -> list[Path]:
    """The label map of each input; refuses name clashes and (without `overwrite`) existing outputs."""
    targets = [out / output_name(f) for f in files]
    cli_paths.check_unique_outputs(files, targets)
    extra = [out / probabilities_name(f) for f in files] if probabilities else []
    extra += [out / extra_name(f, w) for f in files for w in UNCERTAINTY] if uncertainty else []
    cli_paths.check_not_overwriting(targets + extra, overwrite)
    return targets


def write_uncertainty(args, path: Path, vol: images.Volume, probs: np.ndarray, foldvar) -> dict:
    """NAME_entropy.nii.gz (voxel entropy of the averaged probabilities, nats) and, with several folds,
    NAME_foldvar.nii.gz: float32 on the scan's grid. Returns their paths for predictions.json."""
    maps = {"entropy": calibration.entropy(probs), "foldvar": foldvar}
    return {w: str(images.save_array(args.out / extra_name(path, w), a, vol.grid, overwrite=args.overwrite))
            for w, a in maps.items() if a is not None}
