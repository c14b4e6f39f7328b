"""heartjax.data.prepare acdc: a small synthetic ACDC release (written here) becomes a folder heartjax reads."""

import json
import os
import warnings
from pathlib import Path

import nibabel
import numpy as np
import pytest

from heartjax.data import datasets
from heartjax.data.io import nifti
from heartjax.data import prepare
from heartjax.common.errors import HeartjaxError

SHAPE = (6, 5, 3)
PIXDIM = (1.5625, 1.5625, 10.0)
FRAMES = {"patient001": (1, 12), "patient002": (1, 9), "patient101": (3, 11)}  # ED, ES
QUIRKY = {"patient001", "patient101"}  # written with ACDC's unit-scale sform; patient002 with a clean header


def _write(path: Path, data: np.ndarray, quirky: bool) -> None:
    """Write NIfTI with ACDC's header (unit-scale sform, qform_code 0, true voxel size in pixdim) or a clean one."""
    header = nibabel.Nifti1Header()
    header.set_data_dtype(data.dtype)
    if quirky:
        img = nibabel.Nifti1Image(data, np.diag([-1.0, -1.0, 1.0, 1.0]), header)
        img.header["pixdim"][1:4] = PIXDIM
        img.header.set_qform(None, code=0)
        img.header.set_sform(np.diag([-1.0, -1.0, 1.0, 1.0]), code=2)
    else:
        img = nibabel.Nifti1Image(data, np.diag([-PIXDIM[0], -PIXDIM[1], PIXDIM[2], 1.0]), header)
    nibabel.save(img, str(path))


def _label(patient: str, frame: int) -> np.ndarray:
    """A label map unique to patient and frame, with every ACDC code present."""
    seed = int(patient[-3:]) * 100 + frame
    label = np.random.default_rng(seed).integers(0, 4, SHAPE).astype(np.uint8)
    label[0, 0, 0], label[0, 0, 1], label[0, 0, 2] = 1, 2, 3
    return label


def _image(patient: str, frame: int) -> np.ndarray:
    return (np.arange(np.prod(SHAPE)).reshape(SHAPE) + int(patient[-3:]) * 100 + frame).astype(np.int16)


def _release(root: Path, split: bool = True) -> Path:
    """The ACDC release layout: training/ and testing/ (or flat) patientNNN/ folders with Info.cfg, frames, gt, 4D."""
    for patient, (ed, es) in FRAMES.items():
        sub = ("testing" if int(patient[-3:]) > 100 else "training") if split else ""
        folder = root / sub / patient
        folder.mkdir(parents=True)
        (folder / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: DCM\nHeight: 184.0\nNbFrame: 30\nWeight: 95.0\n")
        for frame in (ed, es):
            _write(folder / f"{patient}_frame{frame:02d}.nii.gz", _image(patient, frame), patient in QUIRKY)
            _write(folder / f"{patient}_frame{frame:02d}_gt.nii.gz", _label(patient, frame), patient in QUIRKY)
        cine = np.zeros(SHAPE + (4,), np.int16)
        _write(folder / f"{patient}_4d.nii.gz", cine, patient in QUIRKY)
    return root


def _expected_ids(phase: str) -> list[str]:
    ids = []
    for patient in FRAMES:
        ids += [patient + {"ED": "", "ES": "_es"}[p] for p in prepare.PHASES[phase]]
    return ids


@pytest.mark.parametrize("phase", ["ed", "es", "both"])
def test_prepared_folder_loads_with_the_right_frames_labels_and_spacing(tmp_path, phase, capsys):
    src = _release(tmp_path / "ACDC")
    dst = tmp_path / f"acdc-{phase}"
    assert prepare.main(["acdc", str(src), str(dst), "--phase", phase]) == 0
    out = capsys.readouterr().out
    assert f"{2 * len(prepare.PHASES[phase])} case(s) with the header repaired" in out
    assert out.count("note:") == 1  # the quirk is reported once, with its count, not once per file
    ds = datasets.discover(dst)
    assert ds.layout == "plain" and ds.scheme.name == "acdc" and ds.modality == "mri"
    assert [c.case_id for c in ds.cases] == _expected_ids(phase)
    assert sorted(p.name for p in (dst / "images").iterdir()) == sorted(f"{i}.nii.gz" for i in _expected_ids(phase))
    record = json.loads((dst / "dataset.json").read_text())
    for case in ds.cases:
        assert case.patient == case.case_id.split("_")[0]
        info = record["cases"][case.case_id]
        ed, es = FRAMES[case.patient]
        assert info["frame"] == (es if case.case_id.endswith("_es") else ed)
        assert info["group"] == "DCM" and info["header_repaired"] == (case.patient in QUIRKY)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # repaired headers: the loader has nothing to warn about
            volume = nifti.load_volume(case.image, case.label, ds.scheme)
        assert np.allclose(sorted(volume.spacing), sorted(PIXDIM))
        raw_label = np.asanyarray(nibabel.load(case.label).dataobj)
        assert np.array_equal(raw_label, _label(case.patient, info["frame"]))
        assert np.array_equal(np.asanyarray(nibabel.load(case.image).dataobj), _image(case.patient, info["frame"]))
        assert sorted(np.unique(volume.label).tolist()) == [0, 1, 2, 3]
    folds = datasets.make_folds(ds, 3, seed=0)
    for fold in folds:  # both frames of a patient stay on one side
        assert not {c.split("_")[0] for c in fold["train"]} & {c.split("_")[0] for c in fold["val"]}


def test_clean_files_are_hard_linked_and_copied_with_copy(tmp_path):
    src = _release(tmp_path / "ACDC", split=False)
    prepare.prepare_acdc(src, tmp_path / "linked", "ed", log=lambda _: None)
    prepare.prepare_acdc(src, tmp_path / "copied", "ed", copy=True, log=lambda _: None)
    source = src / "patient002" / "patient002_frame01.nii.gz"
    assert os.path.samefile(source, tmp_path / "linked" / "images" / "patient002.nii.gz")
    copied = tmp_path / "copied" / "images" / "patient002.nii.gz"
    assert not os.path.samefile(source, copied) and copied.read_bytes() == source.read_bytes()
    repaired = nibabel.load(tmp_path / "linked" / "images" / "patient001.nii.gz")
    assert np.allclose(np.abs(np.diag(repaired.affine)[:3]), PIXDIM)
    assert int(repaired.header["qform_code"]) == int(repaired.header["sform_code"]) == 2


def test_existing_dst_is_refused_unless_overwrite(tmp_path, capsys):
    src = _release(tmp_path / "ACDC")
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    assert prepare.main(["acdc", str(src), str(dst)]) == 2
    assert "already exists" in capsys.readouterr().err and (dst / "keep.txt").exists()
    assert prepare.main(["acdc", str(src), str(dst), "--overwrite", "--phase", "es"]) == 0
    assert not (dst / "keep.txt").exists() and len(datasets.discover(dst).cases) == len(FRAMES)
    with pytest.raises(HeartjaxError, match="holds it"):
        prepare.prepare_acdc(src / "training", src, overwrite=True)


def _remove(path: Path) -> Path:
    path.unlink()
    return path


@pytest.mark.parametrize("breakage, message", [
    (lambda src: _remove(src / "training" / "patient002" / "Info.cfg"), "is missing"),
    (lambda src: (src / "training" / "patient002" / "Info.cfg").write_text("ED: 1\nGroup: NOR\n")
     and src / "training" / "patient002" / "Info.cfg", "no 'ES: N' line"),
    (lambda src: _remove(src / "testing" / "patient101" / "patient101_frame11.nii.gz"), "names frame 11 as ES"),
    (lambda src: _remove(src / "training" / "patient001" / "patient001_frame01_gt.nii.gz"), "the label of"),
])
def test_each_broken_release_is_refused_naming_the_file(tmp_path, capsys, breakage, message):
    src = _release(tmp_path / "ACDC")
    path = breakage(src)
    dst = tmp_path / "out"
    assert prepare.main(["acdc", str(src), str(dst), "--phase", "both"]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err
    assert not dst.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_unknown_phase_and_empty_release_are_refused(tmp_path, capsys):
    src = _release(tmp_path / "ACDC")
    with pytest.raises(HeartjaxError, match="phase 'mid' is not one of ed, es, both"):
        prepare.prepare_acdc(src, tmp_path / "out", "mid")
    assert prepare.main(["acdc", str(src), str(tmp_path / "out"), "--phase", "mid"]) == 2
    assert "--phase ed, es or both" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(HeartjaxError, match="no patientNNN/ folders"):
        prepare.prepare_acdc(tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()
