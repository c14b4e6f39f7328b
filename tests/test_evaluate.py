"""`python -m heartjax.evaluate`: pairing, scoring through evaluation.score_case, failures, outputs."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel
import numpy as np
import pytest
from scipy import ndimage

from heartjax.eval import evaluate
from heartjax.common.errors import HeartjaxError
from heartjax.eval import scoring as evaluation
from heartjax.eval.metric_table import METRICS
from heartjax.data import datasets, labels
from heartjax.data.io import filenames
from heartjax.data.io import nifti

SPACING_RAS = (0.7, 1.3, 2.5)  # distinct per axis, so a spacing in the wrong axis order changes HD95 and ASSD
SPACING_STORED = tuple(float(np.float32(s)) for s in SPACING_RAS)  # what the float32 header holds
REPO = Path(__file__).resolve().parents[1]


def _affine(offset=(10.0, -5.0, 3.0)) -> np.ndarray:
    """Disk axis 0 runs posterior (RAS y flipped), disk axis 1 runs right (RAS x), disk axis 2 superior."""
    sx, sy, sz = SPACING_RAS
    out = np.eye(4)
    out[:3, :3] = [[0.0, sx, 0.0], [-sy, 0.0, 0.0], [0.0, 0.0, sz]]
    out[:3, 3] = offset
    return out


def _disk_from_ras(ras: np.ndarray) -> np.ndarray:
    """The on-disk array whose RAS view under `_affine` is `ras`: disk[i, j, k] = ras[j, ny - 1 - i, k]."""
    return np.ascontiguousarray(np.flip(ras, axis=1).transpose(1, 0, 2))


def _write(path: Path, ras_codes: np.ndarray, offset=(10.0, -5.0, 3.0)) -> Path:
    """Save RAS-ordered codes as a NIfTI with the non-identity affine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    codes = np.asarray(ras_codes)
    codes = codes.astype(np.uint8 if codes.max() < 256 else np.uint16)
    nibabel.save(nibabel.Nifti1Image(_disk_from_ras(codes), _affine(offset)), str(path))
    return path


def _phantom() -> np.ndarray:
    """ACDC-coded RAS volume [14, 12, 8]: RV (1), MYO (2) around LV (3)."""
    r = np.zeros((14, 12, 8), np.uint8)
    r[3:10, 3:9, 2:6] = 2
    r[5:8, 5:7, 3:5] = 3
    r[10:13, 4:9, 2:7] = 1
    return r


def _perturbed(r: np.ndarray) -> np.ndarray:
    """Everything shifted one voxel along RAS x (zero fill), and RV eroded."""
    out = np.zeros_like(r)
    out[1:] = r[:-1]
    rv = out == 1
    out[rv & ~ndimage.binary_erosion(rv)] = 0
    return out


def _run(args, capsys) -> tuple[int, str]:
    """Run the command line in-process; returns (exit code, stderr)."""
    code = evaluate.main([str(a) for a in args])
    return code, capsys.readouterr().err


def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_perfect_prediction_scores_dice_1_and_hd95_0(tmp_path, capsys):
    truth = _phantom()
    _write(tmp_path / "truth" / "p1_gt.nii.gz", truth)
    _write(tmp_path / "pred" / "p1.nii.gz", truth)
    code, err = _run([tmp_path / "pred", tmp_path / "truth", "--scheme", "acdc"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "pred" / "evaluation.json").read_text())
    case = result["summary"]["per_case"][0]
    assert result["scheme"] == "acdc" and result["names"] == ["RV", "MYO", "LV"]
    assert case["case"] == "p1"
    for name in ("RV", "MYO", "LV"):
        assert case["dice"][name] == 1.0 and case["iou"][name] == 1.0
        assert case["hd95"][name] == 0.0 and case["assd"][name] == 0.0
    assert result["summary"]["mean_dice"] == 1.0 and result["summary"]["accuracy"] == 1.0
    # outputs written by temp file + rename leave nothing else behind
    assert _listing(tmp_path / "pred") == {"p1.nii.gz", "evaluation.json", "evaluation.csv"}


def test_perturbed_prediction_equals_score_case_in_ras_with_mm_spacing(tmp_path, capsys):
    truth = _phantom()
    pred = _perturbed(truth)
    _write(tmp_path / "truth" / "p1.nii.gz", truth)
    _write(tmp_path / "pred" / "p1.nii.gz", pred)
    out = tmp_path / "res" / "scores"  # --out is a folder, created if missing
    code, err = _run([tmp_path / "pred", tmp_path / "truth", "--scheme", "acdc", "--out", out], capsys)
    assert code == 0, err
    expected = evaluation.score_case(pred, truth, SPACING_STORED, labels.ACDC.names, "p1")
    got = json.loads((out / "evaluation.json").read_text())["summary"]["per_case"][0]
    for metric in [m.name for m in METRICS]:
        for name in labels.ACDC.names:
            assert got[metric][name] == pytest.approx(expected[metric][name], rel=1e-12), (metric, name)
    for key in ("whole_heart_dice", "accuracy", "fg_accuracy", "mean_dice"):
        assert got[key] == pytest.approx(expected[key], rel=1e-12), key
    assert 0 < got["dice"]["RV"] < 1 and got["hd95"]["RV"] > 0
    # the spacing mattered: the same maps with the spacing in the wrong axis order score differently
    swapped = evaluation.score_case(pred, truth, SPACING_STORED[::-1], labels.ACDC.names, "p1")
    assert any(abs(swapped["assd"][n] - got["assd"][n]) > 1e-3 for n in labels.ACDC.names)
    # CSV: one row per case, same numbers as the JSON
    rows = list(csv.reader((out / "evaluation.csv").open()))
    header = ["case"] + [f"{n}_{m.name}" for n in ("RV", "MYO", "LV") for m in METRICS]
    assert rows[0] == header + ["whole_heart_dice", "accuracy", "fg_accuracy", "mean_dice"]
    assert len(rows) == 2 and rows[1][0] == "p1"
    row = dict(zip(rows[0], rows[1]))
    assert float(row["LV_hd95"]) == got["hd95"]["LV"] and float(row["accuracy"]) == got["accuracy"]
    summary = json.loads((out / "evaluation.json").read_text())["summary"]["per_structure"]["RV"]
    assert summary["dice_mean"] == pytest.approx(expected["dice"]["RV"]) and summary["dice_sd"] is None
    assert _listing(out) == {"evaluation.json", "evaluation.csv"}


def test_pair_files_accepts_suffixes_on_either_side(tmp_path):
    t, p = tmp_path / "truth", tmp_path / "pred"
    r = _phantom()
    for name in ("a_gt.nii.gz", "b_label.nii", "c.nii.gz", "case10_mask.nii.gz", "case2_seg.nii.gz"):
        _write(t / name, r)
    for name in ("a.nii.gz", "b_seg.nii.gz", "c_mask.nii", "case10.nii.gz", "case2.nii.gz"):
        _write(p / name, r)
    (p / ".hidden.nii.gz").write_bytes(b"")  # hidden and non-NIfTI files are not cases
    (p / "notes.txt").write_text("x")
    pairs = evaluate.pair_files(p, t)
    assert [q.case for q in pairs] == ["a", "b", "c", "case2", "case10"]
    assert all(q.error is None for q in pairs)
    assert {q.case: (q.pred.name, q.truth.name) for q in pairs}["b"] == ("b_seg.nii.gz", "b_label.nii")


def test_failed_cases_are_reported_and_the_rest_scored(tmp_path, capsys):
    t, p = tmp_path / "truth", tmp_path / "pred"
    r = _phantom()
    _write(t / "ok1.nii.gz", r), _write(p / "ok1.nii.gz", r)
    _write(t / "ok2_gt.nii.gz", r), _write(p / "ok2_seg.nii.gz", _perturbed(r))
    _write(p / "lonely.nii.gz", r)  # prediction without truth
    _write(t / "unpredicted_gt.nii.gz", r)  # truth without prediction
    _write(t / "moved.nii.gz", r), _write(p / "moved.nii.gz", r, offset=(15.0, -5.0, 3.0))  # grid 5 mm away
    _write(t / "small.nii.gz", r), _write(p / "small.nii.gz", r[:-1])  # different shape
    bad = r.copy()
    bad[0, 0, 0] = 7
    _write(t / "code.nii.gz", r), _write(p / "code.nii.gz", bad)  # code 7 is not ACDC
    _write(t / "broken.nii.gz", r)
    (p / "broken.nii.gz").write_bytes(b"\x1f\x8b not really a gzip file")
    _write(t / "twice.nii.gz", r), _write(t / "twice_gt.nii.gz", r), _write(p / "twice.nii.gz", r)
    code, err = _run([p, t, "--scheme", "acdc", "--workers", "2"], capsys)
    assert code == 1
    result = json.loads((p / "evaluation.json").read_text())
    status = {c["case"]: c["status"] for c in result["cases"]}
    assert status == {"broken": "error", "code": "error", "lonely": "error", "moved": "error", "ok1": "ok",
                      "ok2": "ok", "small": "error", "twice": "error", "unpredicted": "error"}
    assert [c["case"] for c in result["summary"]["per_case"]] == ["ok1", "ok2"]
    assert result["summary"]["n_cases"] == 2 and result["summary"]["n_failed"] == 7
    errors = {c["case"]: c["error"] for c in result["cases"]}
    assert "lonely.nii.gz has no truth file" in errors["lonely"]
    assert "unpredicted_gt.nii.gz has no prediction" in errors["unpredicted"] and "--allow-missing" in errors["unpredicted"]
    assert "different grid" in errors["moved"] and "moved.nii.gz" in errors["moved"]
    assert "shape" in errors["small"] and "Resample" in errors["small"]
    assert "unknown label codes [7]" in errors["code"] and "--scheme" in errors["code"]
    assert "could not be read" in errors["broken"] and str(p / "broken.nii.gz") in errors["broken"]
    assert "twice.nii.gz" in errors["twice"] and "twice_gt.nii.gz" in errors["twice"]
    for case in ("lonely", "unpredicted", "moved", "small", "code", "broken", "twice"):
        assert f"FAILED case {case}" in err
    assert "7 cases failed" in err
    rows = list(csv.reader((p / "evaluation.csv").open()))
    assert [row[0] for row in rows[1:]] == ["ok1", "ok2"]
    assert not [n for n in _listing(p) if n.endswith(".tmp")]


def test_allow_missing_scores_a_subset(tmp_path, capsys):
    t, p = tmp_path / "truth", tmp_path / "pred"
    _write(t / "a.nii.gz", _phantom()), _write(t / "b.nii.gz", _phantom()), _write(p / "a.nii.gz", _phantom())
    assert _run([p, t, "--scheme", "acdc"], capsys)[0] == 1
    code, err = _run([p, t, "--scheme", "acdc", "--allow-missing"], capsys)
    assert code == 0, err
    cases = json.loads((p / "evaluation.json").read_text())["cases"]
    assert [(c["case"], c["status"]) for c in cases] == [("a", "ok"), ("b", "missing_prediction")]


def test_no_pairs_names_what_was_tried_and_writes_nothing(tmp_path, capsys):
    _write(tmp_path / "truth" / "heart_gt.nii.gz", _phantom())
    _write(tmp_path / "pred" / "other.nii.gz", _phantom())
    code, err = _run([tmp_path / "pred", tmp_path / "truth"], capsys)
    assert code == 2
    assert "['other']" in err and "['heart']" in err and "X_gt" in err
    assert _listing(tmp_path / "pred") == {"other.nii.gz"}
    code, err = _run([tmp_path / "nowhere", tmp_path / "truth"], capsys)
    assert code == 2 and "nowhere" in err and "does not exist" in err


def test_scheme_inferred_from_mmwhs_codes_else_asked_for(tmp_path, capsys):
    r = np.zeros((10, 8, 6), np.uint16)
    r[2:6, 2:6, 1:4] = 500
    r[6:9, 2:6, 1:4] = 205
    _write(tmp_path / "truth" / "ct1_label.nii.gz", r)
    _write(tmp_path / "pred" / "ct1.nii.gz", r)
    code, err = _run([tmp_path / "pred", tmp_path / "truth"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "pred" / "evaluation.json").read_text())
    assert result["scheme"] == "mmwhs" and len(result["names"]) == 7
    case = result["summary"]["per_case"][0]
    present = {labels.MMWHS.names[labels.MMWHS.codes.index(c)] for c in (500, 205)}
    assert all(case["dice"][n] == 1.0 for n in present)
    assert all(case["dice"][n] is None and case["hd95"][n] is None for n in set(result["names"]) - present)
    row = dict(zip(*csv.reader((tmp_path / "pred" / "evaluation.csv").open())))
    absent = sorted(set(result["names"]) - present)[0]
    assert row[f"{absent}_dice"] == "nan" and math.isnan(float(row[f"{absent}_hd95"]))
    # ACDC-like codes 1..3 are ambiguous without --scheme
    _write(tmp_path / "t2" / "x.nii.gz", _phantom())
    _write(tmp_path / "p2" / "x.nii.gz", _phantom())
    code, err = _run([tmp_path / "p2", tmp_path / "t2"], capsys)
    assert code == 2 and "--scheme" in err and "acdc" in err and "generic3" in err and "x.nii.gz" in err
    assert not (tmp_path / "p2" / "evaluation.json").exists()


def test_names_and_mmwhs_check_are_the_ones_dataset_discovery_uses(tmp_path):
    assert evaluate.pair_key is filenames.pair_key and evaluate.natural_key is datasets.natural_key
    assert filenames.label_names("x") == ["x", "x_label", "x_mask", "x_seg", "x_gt"]
    assert [filenames.pair_key(f"heart{s}.nii.gz") for s in filenames.LABEL_SUFFIXES] == ["heart"] * 5
    assert filenames.pair_key("heart_gt_mask.nii") == "heart_gt"  # one suffix only
    assert filenames.pair_key("_gt.nii") == "_gt"  # a bare suffix is a whole name
    r = np.zeros((6, 6, 4), np.uint16)
    r[1:3, 1:3, 1:3], r[3:5, 3:5, 1:3] = 421, 205  # 421: MM-WHS's stray left-atrium code
    truth = _write(tmp_path / "a_gt.nii.gz", r)
    assert evaluate.infer_scheme([truth]) is labels.MMWHS
    assert labels.scheme_from_codes(nifti.read_label_codes(truth)) is labels.MMWHS
    r[0, 0, 0] = 7
    _write(truth, r)
    with pytest.raises(HeartjaxError, match=r"codes \[7, 205, 421\].*--scheme"):
        evaluate.infer_scheme([truth])
    assert labels.scheme_from_codes(r) == labels.generic(421)


def test_output_paths():
    assert evaluate.output_paths(None, "/p") == (Path("/p/evaluation.json"), Path("/p/evaluation.csv"))
    assert evaluate.output_paths("/o/run.v2", "/p") == (Path("/o/run.v2/evaluation.json"),
                                                         Path("/o/run.v2/evaluation.csv"))
    with pytest.raises(HeartjaxError, match="--out is the output folder"):
        evaluate.output_paths("/o/r.json", "/p")  # the older file-stem meaning, refused with the folder to give


def test_module_entry_point(tmp_path):
    _write(tmp_path / "truth" / "p1.nii.gz", _phantom())
    _write(tmp_path / "pred" / "p1.nii.gz", _perturbed(_phantom()))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "heartjax.evaluate", str(tmp_path / "pred"), str(tmp_path / "truth"),
                           "--scheme", "acdc", "--out", str(tmp_path / "o")], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| RV |" in proc.stdout and "±" in proc.stdout
    assert (tmp_path / "o" / "evaluation.json").is_file() and (tmp_path / "o" / "evaluation.csv").is_file()


def _shift_disk(data: np.ndarray) -> np.ndarray:
    """One voxel along the first on-disk axis, zero fill."""
    out = np.zeros_like(data)
    out[1:] = data[:-1]
    return out


def test_real_acdc_masks_against_themselves_and_shifted(acdc_dir, tmp_path, capsys):
    masks = sorted((acdc_dir / "masks").glob("*.nii.gz"))[:3]
    same, shifted = tmp_path / "same", tmp_path / "shifted"
    same.mkdir(), shifted.mkdir()
    for path in masks:
        shutil.copy(path, same / path.name)
        img = nibabel.load(str(path))
        # affine=None keeps ACDC's header exactly (unit-scale sform, true voxel size only in pixdim)
        data = _shift_disk(np.asarray(img.dataobj))
        nibabel.save(nibabel.Nifti1Image(data, None, img.header), str(shifted / path.name))
    code, err = _run([same, acdc_dir / "masks", "--scheme", "acdc", "--allow-missing"], capsys)
    assert code == 0, err
    per_case = json.loads((same / "evaluation.json").read_text())["summary"]["per_case"]
    assert len(per_case) == 3
    assert all(c["dice"][n] == 1.0 and c["hd95"][n] == 0.0 for c in per_case for n in ("RV", "MYO", "LV"))
    code, err = _run([shifted, acdc_dir / "masks", "--scheme", "acdc", "--allow-missing", "--workers", "2"], capsys)
    assert code == 0, err
    got = {c["case"]: c for c in json.loads((shifted / "evaluation.json").read_text())["summary"]["per_case"]}
    assert len(got) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ACDC's header quirk warning
        for path in masks:
            truth, grid = nifti.load_label_file(path, "acdc")
            pred, _ = nifti.load_label_file(shifted / path.name, "acdc", reference_grid=grid)
            case = evaluate.pair_key(path)
            expected = evaluation.score_case(pred, truth, grid.ras_spacing, labels.ACDC.names, case)
            for metric in ("dice", "hd95", "assd"):
                for name in labels.ACDC.names:
                    assert got[case][metric][name] == pytest.approx(expected[metric][name], rel=1e-12)
            assert all(0.5 < got[case]["dice"][n] < 1.0 for n in labels.ACDC.names)
            # distances are in mm from pixdim (>1 mm in-plane), not in the unit-scale sform's 1 mm voxels
            assert all(got[case]["hd95"][n] >= min(grid.ras_spacing[:2]) - 1e-9 for n in labels.ACDC.names)
