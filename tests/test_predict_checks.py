"""`python -m heartjax.predict`: usage errors end in one line and exit 2 with nothing written; degenerate scans are
flagged (log + predictions.json) and never stop the batch.

The batch tests stand a stub in for the trained network (`Ensemble.segment`), so they need no training: the scan
checks, the plan they compare with, loading, writing and predictions.json are the real ones."""

import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import nibabel
import numpy as np
import pytest

from heartjax.serve import predict
from heartjax.data.labels import MMWHS
from heartjax.data.plan import KindPlan, Plan

AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])
PLAN = Plan(target_spacing=(8.0, 8.0, 8.0), modality="ct", normalization="ct", ct_clip=(73.0, 407.0), ct_mean=240.0,
            ct_std=80.0, slice_axis=2, depth=3,
            kinds={"3d": KindPlan(3, (8.0,) * 3, (16, 16, 16), 2, ((2, 2, 2),) * 3, ((3, 3, 3),) * 4),
                   "2d": KindPlan(2, (8.0,) * 2, (16, 16), 8, ((2, 2),) * 3, ((3, 3),) * 4)})


class StubEnsemble(predict.Ensemble):
    """The real Ensemble's checks and bookkeeping around a network stub that labels the brightest voxels LV."""

    def __init__(self, run_dir, kind=None):
        self.models = [SimpleNamespace(plan=PLAN, spec=SimpleNamespace(patch=(16, 16, 16), slice_axis=None))]
        self.kind, self.scheme, self.postprocessing = "3d", MMWHS, {}

    def segment(self, volume, tta=False):
        if volume.case == "explodes":
            raise RuntimeError("the network stub failed")
        labels = (volume.image > 200).astype(np.uint8) * 3
        return labels, None


def chest(shape=(40, 40, 32)) -> np.ndarray:
    """Air around a soft-tissue body holding a bright heart (Hounsfield units)."""
    image = np.full(shape, -1000, np.int16)
    c = [s // 2 for s in shape]
    image[c[0] - 12:c[0] + 12, c[1] - 12:c[1] + 12, :] = 40
    image[c[0] - 5:c[0] + 5, c[1] - 5:c[1] + 5, c[2] - 5:c[2] + 5] = 300
    return image


def save(path: Path, data, affine=AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(np.asarray(data), affine), str(path))
    return path


@pytest.fixture
def scans(tmp_path) -> Path:
    folder = tmp_path / "scans"
    save(folder / "good.nii.gz", chest())
    save(folder / "blank.nii.gz", np.zeros((40, 40, 32), np.int16))
    tiny = np.where(np.indices((3, 3, 3)).sum(0) % 2, -1000, 300).astype(np.int16)
    save(folder / "tiny.nii.gz", tiny, np.eye(4))
    save(folder / "explodes.nii.gz", chest())
    zero = nibabel.Nifti1Image(chest(), AFFINE)
    zero.header["pixdim"][1] = 0.0  # as a broken converter writes it; nibabel would read 1 mm
    zero.header["vox_offset"] = 352
    raw = zero.header.binaryblock + b"\0" * 4 + chest().tobytes(order="F")
    (folder / "zero.nii.gz").write_bytes(gzip.compress(raw))
    (folder / "packed.nii").write_bytes((folder / "good.nii.gz").read_bytes())  # gzip bytes named .nii
    return folder


def run(args, capsys, stub=True, monkeypatch=None) -> tuple[int, str, str]:
    if stub:
        monkeypatch.setattr(predict, "Ensemble", StubEnsemble)
    code = predict.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_batch_flags_degenerate_scans_and_records_every_case(tmp_path, scans, capsys, monkeypatch):
    out = tmp_path / "out"
    code, stdout, err = run(["run", scans, "--out", out], capsys, monkeypatch=monkeypatch)
    assert code == 1
    lines = error_lines(err)
    assert lines == [f"error: 2 of 6 scan(s) failed (explodes, zero); the others were written; see "
                     f"{out / 'predictions.json'}"]
    record = json.loads((out / "predictions.json").read_text())
    cases = {c["case"]: c for c in record["cases"]}
    assert list(cases) == ["blank", "explodes", "good", "packed", "tiny", "zero"]
    assert record["model"] == "3d" and record["postprocessing"] == "none"
    for case in cases.values():
        assert {"case", "input", "output", "status", "shape", "spacing", "seconds", "warnings", "error"} <= set(case)
        assert case["input"] == str(scans / Path(case["output"]).name)
    good = cases["good"]
    assert good["status"] == "ok" and good["warnings"] == [] and good["error"] is None
    assert good["shape"] == [40, 40, 32] and good["spacing"] == [4.0, 4.0, 4.0] and good["seconds"] >= 0
    written = nibabel.load(str(out / "good.nii.gz"))
    assert written.shape == (40, 40, 32) and set(np.unique(np.asarray(written.dataobj))) == {0, 500}  # LV code
    # a constant scan: segmented, flagged in the log and the record
    assert cases["blank"]["status"] == "ok" and (out / "blank.nii.gz").exists()
    assert cases["blank"]["warnings"] == ["constant intensity 0 in every voxel: the scan is blank (an empty export "
                                          "or a failed conversion?); its segmentation is meaningless. Check the "
                                          "file in a viewer."]
    assert "warning: blank.nii.gz: constant intensity 0 in every voxel" in err
    # a scan smaller than the field of view
    tiny = cases["tiny"]
    assert tiny["status"] == "ok" and tiny["shape"] == [3, 3, 3] and tiny["spacing"] == [1.0, 1.0, 1.0]
    assert len(tiny["warnings"]) == 1 and "less than half the network's field of view ([16, 16, 16] voxels = " \
                                          "[128.0, 128.0, 128.0] mm" in tiny["warnings"][0]
    assert "warning: tiny.nii.gz: the scan covers [3.0, 3.0, 3.0] mm" in err
    # gzip bytes named .nii: read, segmented, written under its own name
    packed = cases["packed"]
    assert packed["status"] == "ok" and packed["shape"] == [40, 40, 32]
    assert "gzip-compressed although its name ends in .nii" in packed["warnings"][0]
    assert nibabel.load(str(out / "packed.nii")).shape == (40, 40, 32)
    # a zero voxel size: refused by name, nothing written for it, the batch went on
    zero = cases["zero"]
    assert zero["status"] == "error" and not (out / "zero.nii.gz").exists()
    assert "zero.nii.gz: its header gives voxel size (pixdim) [0.0, 4.0, 4.0] mm: 0 on axis 0" in zero["error"]
    assert f"FAILED {scans / 'zero.nii.gz'}: image file" in err
    # an unexpected failure of one scan is recorded with its type, and the others still ran
    explodes = cases["explodes"]
    assert explodes["status"] == "error" and "RuntimeError: the network stub failed" in explodes["error"]
    assert sorted(p.name for p in out.iterdir()) == ["blank.nii.gz", "good.nii.gz", "packed.nii", "predictions.json",
                                                     "tiny.nii.gz"]


def test_second_batch_into_the_same_folder_keeps_the_record(tmp_path, scans, capsys, monkeypatch):
    out = tmp_path / "out"
    code, stdout, _ = run(["run", scans / "good.nii.gz", "--out", out], capsys, monkeypatch=monkeypatch)
    assert code == 0 and f"wrote 1 label map(s) to {out}; record: {out / 'predictions.json'}" in stdout
    code, stdout, _ = run(["run", scans / "blank.nii.gz", "--out", out], capsys, monkeypatch=monkeypatch)
    assert code == 0 and "1 with warnings" in stdout
    record = json.loads((out / "predictions.json").read_text())
    assert [c["case"] for c in record["cases"]] == ["good", "blank"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # atomic writes leave no temporary files


@pytest.mark.parametrize("problem", ["out_is_file", "out_under_file", "missing_input", "not_nifti", "exists",
                                     "clash", "no_scans"])
def test_usage_errors_exit_2_with_one_line_and_write_nothing(tmp_path, scans, capsys, monkeypatch, problem):
    (tmp_path / "afile").write_text("not a folder")
    out = tmp_path / "out"
    args = {
        "out_is_file": (["run", scans / "good.nii.gz", "--out", tmp_path / "afile"],
                        f"--out {tmp_path / 'afile'} is a file, not a folder; give a folder"),
        "out_under_file": (["run", scans / "good.nii.gz", "--out", tmp_path / "afile" / "x"],
                           f"cannot be created: {tmp_path / 'afile'} is a file"),
        "missing_input": (["run", scans / "good.nii.gz", tmp_path / "nope.nii.gz", "--out", out],
                          f"input {tmp_path / 'nope.nii.gz'} does not exist; check the path"),
        "not_nifti": (["run", tmp_path / "afile", "--out", out], "is not a NIfTI file"),
        "exists": (["run", scans / "good.nii.gz", "--out", scans], f"output {scans / 'good.nii.gz'} exists; pass "
                                                                  f"--overwrite"),
        "clash": (["run", scans / "good.nii.gz", save(tmp_path / "other" / "good.nii.gz", chest()), "--out", out],
                  "would both be written to"),
        "no_scans": (["run", tmp_path / "other_empty", "--out", out], "no NIfTI files"),
    }
    (tmp_path / "other_empty").mkdir()
    argv, expected = args[problem]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, stdout, err = run(argv, capsys, monkeypatch=monkeypatch)
    assert code == 2
    assert err.strip().count("\n") == 0 and err.startswith("error: ") and expected in err, err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def fake_run(folder: Path) -> Path:
    """A run folder's files, without training: enough to test what predict says about missing pieces."""
    folder.mkdir(parents=True)
    (folder / "plan.json").write_text(json.dumps(PLAN.to_json()))
    (folder / "label_scheme.json").write_text(json.dumps(MMWHS.to_json()))
    (folder / "eval_3d.json").write_text(json.dumps({"best_val_dice": 0.5}))
    (folder / "checkpoints" / "3d").mkdir(parents=True)
    return folder


def test_run_folder_problems_exit_2(tmp_path, scans, capsys):
    out = tmp_path / "out"
    code, _, err = run([tmp_path / "no_run", scans / "good.nii.gz", "--out", out], capsys, stub=False)
    assert code == 2 and error_lines(err) == [f"error: run folder {tmp_path / 'no_run'} does not exist; point "
                                              f"RUN_DIR at a folder written by python -m experiments.volumetric"]
    run_dir = fake_run(tmp_path / "run")
    code, _, err = run([run_dir, scans / "good.nii.gz", "--out", out], capsys, stub=False)
    assert code == 2 and len(error_lines(err)) == 1
    assert f"{run_dir / 'models' / '3d.json'} is missing" in err and "choose --model from" in err
    (run_dir / "plan.json").write_text("{ truncated")
    code, _, err = run([run_dir, scans / "good.nii.gz", "--out", out], capsys, stub=False)
    assert code == 2 and f"error: run file {run_dir / 'plan.json'} could not be read (JSONDecodeError" in err
    assert not out.exists()
