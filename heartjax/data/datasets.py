"""Find the cases of a dataset folder in one of the known layouts, and split them into patient-level folds.

Layouts (detected automatically): "nnunet" (imagesTr/ + labelsTr/ + dataset.json), "plain" (images/ + labels/ or
masks/), "acdc" (patientNNN/ folders with Info.cfg) and "mmwhs" (ct_train_1001_image.nii.gz + _label files).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from heartjax.common import atomic
from heartjax.data.io import filenames
from heartjax.data import labels as labels_lib
from heartjax.data.io import images
from heartjax.data.io.dataset_meta import read_dataset_json, read_info_cfg
from heartjax.data.io.filenames import natural_key
from heartjax.common.errors import HeartjaxError

LAYOUT_EXAMPLES = {
    "mmwhs": "ct_train/ct_train_1001_image.nii.gz + ct_train/ct_train_1001_label.nii.gz (or mr_train/mr_train_...)",
    "nnunet": "imagesTr/heart_001_0000.nii.gz + labelsTr/heart_001.nii.gz + dataset.json",
    "acdc": "patient001/patient001_frame01.nii.gz + patient001/patient001_frame01_gt.nii.gz + patient001/Info.cfg",
    "plain": "images/case01.nii.gz (or images/case01/, a DICOM series) + labels/case01.nii.gz (or "
             "masks/case01_mask.nii.gz; _label, _seg, _gt too)",
}
_MMWHS_RE = re.compile(r"^((ct|mr)_(?:train|test|val)_(\d+))_(image|label)$")


@dataclasses.dataclass(frozen=True)
class Case:
    """One scan: `case_id` unique in its dataset, `patient` shared by all scans of one person."""

    case_id: str
    patient: str
    image: Path
    label: Path | None
    meta: dict = dataclasses.field(default_factory=dict, compare=False, hash=False)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The cases of a folder, its layout, label scheme and modality ("ct", "mri" or None for unknown)."""

    root: Path
    layout: str
    scheme: labels_lib.LabelScheme
    modality: str | None
    cases: tuple[Case, ...]

    def case(self, case_id: str) -> Case:
        """The case with this id (KeyError when absent)."""
        for case in self.cases:
            if case.case_id == case_id:
                return case
        raise KeyError(case_id)


def _patient_of(case_id: str) -> str:
    """Patient id from a case id: 'patient001_frame01' -> 'patient001', 'p3_slice07' -> 'p3', else the id."""
    match = re.match(r"^(patient\d+)", case_id, re.IGNORECASE)
    if match:
        return match.group(1)
    match = re.match(r"^(.+?)[_-](?:frame|slice|phase|time|ed|es)\d*$", case_id, re.IGNORECASE)
    return match.group(1) if match else case_id


def _nifti_files(folder: Path, series: bool = False) -> dict[str, Path]:
    """Visible .nii / .nii.gz files of a folder by case id (name without extension); with `series`, also the
    subfolders holding a DICOM series (by folder name), each an image."""
    out: dict[str, Path] = {}
    found = filenames.nifti_files(folder)
    if series:
        found += [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")
                  and images.is_image_path(p)]
    for path in found:
        stem = images.case_name(path) if path.is_dir() else filenames.case_id_from_path(path)
        if stem in out:
            raise HeartjaxError(f"{folder}: both {out[stem].name} and {path.name} exist; keep one of them.")
        out[stem] = path
    return out


def _layout_error(root: Path, problem: str) -> HeartjaxError:
    """The error for an unusable folder, listing the layouts heartjax knows."""
    known = "\n".join(f"  {name}: {example}" for name, example in LAYOUT_EXAMPLES.items())
    return HeartjaxError(f"dataset folder {root}: {problem}. Known layouts (paths relative to the folder):\n{known}")


def _pair_plain(root: Path, image_dir: Path, label_dir: Path, image_suffix: str = "") -> list[Case]:
    """Pair images with labels named NAME, NAME_label, NAME_mask, NAME_seg or NAME_gt."""
    images, labels = _nifti_files(image_dir, series=True), _nifti_files(label_dir)
    used: set[str] = set()
    cases, unlabelled = [], []
    for stem, image in images.items():
        case_id = stem[: -len(image_suffix)] if image_suffix and stem.endswith(image_suffix) else stem
        found = [name for name in filenames.label_names(case_id) if name in labels]
        if len(found) > 1:
            raise HeartjaxError(f"{label_dir}: several labels for image {image.name}: {found}; keep one of them.")
        if not found:
            unlabelled.append(image.name)
            continue
        used.add(found[0])
        cases.append(Case(case_id, _patient_of(case_id), image, labels[found[0]], {}))
    if unlabelled:
        tried = ", ".join(f"{name}.nii(.gz)" for name in filenames.label_names("NAME"))
        raise HeartjaxError(
            f"dataset folder {root}: no label in {label_dir} for images {unlabelled[:10]}"
            f"{' ...' if len(unlabelled) > 10 else ''} (tried {tried}); add the labels or move those images out."
        )
    orphans = sorted(set(labels) - used, key=natural_key)
    if orphans:
        raise HeartjaxError(
            f"dataset folder {root}: labels without an image in {image_dir}: {orphans[:10]}"
            f"{' ...' if len(orphans) > 10 else ''}; add the images or remove those labels."
        )
    return cases


def _discover_nnunet(root: Path) -> tuple[list[Case], labels_lib.LabelScheme | None, str | None]:
    """imagesTr/NAME_0000.nii.gz (or MSD's NAME.nii.gz) + labelsTr/NAME.nii.gz + dataset.json."""
    if not (root / "labelsTr").is_dir():
        raise _layout_error(root, "has imagesTr/ but no labelsTr/")
    images = _nifti_files(root / "imagesTr")
    extra = sorted(s for s in images if re.search(r"_000[1-9]$", s))
    if extra:
        raise HeartjaxError(
            f"dataset folder {root}: multi-channel images ({extra[:3]}) are not supported; keep only channel _0000."
        )
    cases = _pair_plain(root, root / "imagesTr", root / "labelsTr", image_suffix="_0000")
    return cases, *read_dataset_json(root / "dataset.json")


def _discover_plain(root: Path) -> tuple[list[Case], labels_lib.LabelScheme | None, str | None]:
    """images/ + labels/ or masks/."""
    label_dirs = [root / n for n in ("labels", "masks") if (root / n).is_dir() and _nifti_files(root / n)]
    if len(label_dirs) != 1:
        problem = "both labels/ and masks/ hold files" if label_dirs else "no labels/ or masks/ with NIfTI files"
        raise _layout_error(root, f"has images/ but {problem}; keep exactly one label folder")
    cases = _pair_plain(root, root / "images", label_dirs[0])
    return cases, *read_dataset_json(root / "dataset.json")


def _discover_acdc(root: Path, folders: list[Path]) -> list[Case]:
    """patientNNN/patientNNN_frameXX.nii.gz + _gt, ED/ES from Info.cfg."""
    cases = []
    for folder in folders:
        files = _nifti_files(folder)
        frames = read_info_cfg(folder / "Info.cfg")
        for stem, image in files.items():
            match = re.fullmatch(rf"{folder.name}_frame(\d+)", stem)
            if not match:
                continue
            if stem + "_gt" not in files:
                raise HeartjaxError(
                    f"{folder}: no label {stem}_gt.nii(.gz) for image {image.name}; add it or move the image out."
                )
            number = int(match.group(1))
            meta = {"frame": frames.get(number), "frame_index": number}
            cases.append(Case(stem, folder.name, image, files[stem + "_gt"], meta))
        orphans = [s for s in files if s.endswith("_gt") and s[:-3] not in files]
        if orphans:
            raise HeartjaxError(f"{folder}: labels without an image: {orphans}; add the images or remove the labels.")
    return cases


def _discover_mmwhs(root: Path) -> tuple[list[Case], str | None]:
    """ct_train/ct_train_1001_image.nii.gz + _label (mr_train/ too, or files directly in root)."""
    folders = [root] + [root / n for n in ("ct_train", "mr_train", "ct_test", "mr_test") if (root / n).is_dir()]
    found: dict[str, dict[str, Path]] = {}
    for folder in folders:
        for stem, path in _nifti_files(folder).items():
            match = _MMWHS_RE.match(stem)
            if match:
                found.setdefault(match.group(1), {})[match.group(4)] = path
    cases, missing = [], []
    for case_id, files in found.items():
        if "image" not in files:
            raise HeartjaxError(
                f"dataset folder {root}: label {files['label']} has no {case_id}_image.nii(.gz) beside it; add the "
                f"image or remove the label."
            )
        if "label" not in files:
            missing.append(files["image"].name)
            continue
        modality = "ct" if case_id.startswith("ct") else "mri"
        cases.append(Case(case_id, case_id, files["image"], files["label"], {"modality": modality}))
    if missing:
        raise HeartjaxError(
            f"dataset folder {root}: no NAME_label.nii(.gz) beside images {missing[:10]}; add the labels or move "
            f"those images out."
        )
    modalities = {c.meta["modality"] for c in cases}
    return cases, modalities.pop() if len(modalities) == 1 else None


def _scheme_from_labels(cases: Sequence[Case]) -> labels_lib.LabelScheme:
    """ACDC for patientNNN names, else MM-WHS or generic from the codes of the first non-empty label file."""
    if all(re.fullmatch(r"patient\d+", c.case_id) for c in cases):
        return labels_lib.ACDC
    for case in cases:
        codes = images.read_label_codes(case.label)
        if np.any(codes):
            return labels_lib.scheme_from_codes(codes)
    raise HeartjaxError(f"all label files ({cases[0].label} ...) are empty; pass the label scheme (--scheme).")


def discover(root, scheme: str | labels_lib.LabelScheme | None = None) -> Dataset:
    """Find the cases under `root` in one of the known layouts (see module docstring).

    `scheme` (a LabelScheme or name) overrides the layout's default. Cases are sorted naturally by id.
    Raises HeartjaxError for a missing, empty or unrecognised folder (listing the layouts), images without
    labels and labels without images.
    """
    root = Path(root)
    if not root.is_dir():
        raise _layout_error(root, "does not exist or is not a folder")
    scheme = labels_lib.resolve_scheme(scheme)
    acdc_folders = [p for p in sorted(root.iterdir()) if p.is_dir() and re.fullmatch(r"patient\d+", p.name)]
    modality = None
    if (root / "imagesTr").is_dir():
        layout = "nnunet"
        cases, found_scheme, modality = _discover_nnunet(root)
    elif (root / "images").is_dir():
        layout = "plain"
        cases, found_scheme, modality = _discover_plain(root)
    elif acdc_folders:
        layout, found_scheme, modality = "acdc", labels_lib.ACDC, "mri"
        cases = _discover_acdc(root, acdc_folders)
    else:
        layout, found_scheme = "mmwhs", labels_lib.MMWHS
        cases, modality = _discover_mmwhs(root)
    if not cases:
        problem = "no known layout found" if layout == "mmwhs" else f"no cases found in the {layout!r} layout"
        raise _layout_error(root, problem)
    cases.sort(key=lambda c: natural_key(c.case_id))
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise HeartjaxError(f"dataset folder {root}: case ids {dupes} occur twice; rename one of each pair.")
    scheme = scheme or found_scheme or _scheme_from_labels(cases)
    return Dataset(root=root, layout=layout, scheme=scheme, modality=modality, cases=tuple(cases))


def make_folds(dataset_or_cases: Dataset | Sequence[Case], k: int, seed: int) -> list[dict[str, list[str]]]:
    """k patient-level folds: [{"train": [case ids], "val": [case ids]}, ...] (nnU-Net's splits_final format).

    Patients are shuffled with `seed` and dealt round-robin, so every case is in exactly one val fold and no
    patient has cases on both sides. Deterministic for a given seed. Raises HeartjaxError unless 2 <= k <= patients.
    """
    cases = dataset_or_cases.cases if isinstance(dataset_or_cases, Dataset) else tuple(dataset_or_cases)
    patients = sorted({c.patient for c in cases}, key=natural_key)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 2 <= k <= len(patients):
        raise HeartjaxError(
            f"setting k = {k!r}: the number of folds must be an integer from 2 to the number of patients "
            f"({len(patients)}); change k."
        )
    order = np.random.default_rng(seed).permutation(len(patients))
    fold_of = {patients[p]: i % k for i, p in enumerate(order)}
    folds = []
    for fold in range(k):
        val = [c.case_id for c in cases if fold_of[c.patient] == fold]
        train = [c.case_id for c in cases if fold_of[c.patient] != fold]
        folds.append({"train": sorted(train, key=natural_key), "val": sorted(val, key=natural_key)})
    return folds


def write_splits(path, folds: list[dict[str, list[str]]]) -> None:
    """Write folds as JSON atomically (heartjax.common.atomic), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, folds)


def read_splits(path, dataset: Dataset) -> list[dict[str, list[str]]]:
    """Read folds written by `write_splits` (or nnU-Net's splits_final.json) and check them against `dataset`.

    Raises HeartjaxError naming the file for malformed JSON, unknown case ids, or a patient in both train and val.
    """
    path = Path(path)
    try:
        folds = json.loads(path.read_text())
        folds = [{"train": [str(i) for i in f["train"]], "val": [str(i) for i in f["val"]]} for f in folds]
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise HeartjaxError(
            f"splits file {path} is not a list of {{'train': [...], 'val': [...]}} ({type(err).__name__}: {err}); "
            f"rewrite it."
        ) from err
    patient = {c.case_id: c.patient for c in dataset.cases}
    for i, fold in enumerate(folds):
        unknown = [c for c in fold["train"] + fold["val"] if c not in patient]
        if unknown:
            raise HeartjaxError(
                f"splits file {path}, fold {i}: case ids {unknown[:10]} are not in {dataset.root}; regenerate the "
                f"splits."
            )
        leak = sorted({patient[c] for c in fold["train"]} & {patient[c] for c in fold["val"]}, key=natural_key)
        if leak:
            raise HeartjaxError(
                f"splits file {path}, fold {i}: patients {leak[:10]} are in both train and val; regenerate the "
                f"splits."
            )
    return folds
