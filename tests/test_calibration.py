"""Calibration and uncertainty: ECE, Brier, entropy-error AUROC and Spearman against values worked out by hand;
a smoke run's results.json carries them for both models; `predict --uncertainty` writes the entropy map (and, for
a fold ensemble, the fold variance) as float32 on the scan's grid."""

import json
import math
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from heartjax import experiment
from heartjax.ablation import calibration as study_calibration
from heartjax.eval import calibration as cal
from heartjax.ablation import Study
from heartjax.ablation.report import markdown as study_markdown
from heartjax.ablation.stats import aggregate
from heartjax.eval import report
from heartjax.eval.results import Results
from heartjax.serve import predict

# Eight voxels, two classes (background, LV): p(LV) and the reference class of each.
#   voxel   p(bg)  p(LV)  truth  prediction  confidence  correct  bin of 15 (ceil(15 c) - 1)
#   0       0.10   0.90   1      1           0.90        yes      13
#   1       0.10   0.90   0      1           0.90        no       13
#   2       0.25   0.75   1      1           0.75        yes      11
#   3       0.70   0.30   0      0           0.70        yes      10
#   4       0.38   0.62   0      1           0.62        no        9
#   5       0.95   0.05   0      0           0.95        yes      14
#   6       0.55   0.45   0      0           0.55        yes       8
#   7       0.35   0.65   0      1           0.65        no        9
P_LV = np.array([0.90, 0.90, 0.75, 0.30, 0.62, 0.05, 0.45, 0.65])
TRUTH = np.array([1, 0, 1, 0, 0, 0, 0, 0])
PROBS = np.stack([1 - P_LV, P_LV], -1)

# ECE = sum over bins |B|/8 |accuracy - confidence|:
#   bin 13: 2/8 |0.5 - 0.9| = 0.1        bin 11: 1/8 |1 - 0.75| = 0.03125   bin 10: 1/8 |1 - 0.7| = 0.0375
#   bin  9: 2/8 |0 - 0.635| = 0.15875    bin 14: 1/8 |1 - 0.95| = 0.00625   bin  8: 1/8 |1 - 0.55| = 0.05625
ECE = 0.1 + 0.03125 + 0.0375 + 0.15875 + 0.00625 + 0.05625  # 0.39
# Brier of LV: mean of (p - 1[y = LV])^2 = (0.01 + 0.81 + 0.0625 + 0.09 + 0.3844 + 0.0025 + 0.2025 + 0.4225) / 8
BRIER_LV = (0.01 + 0.81 + 0.0625 + 0.09 + 0.3844 + 0.0025 + 0.2025 + 0.4225) / 8  # 0.24805
# Entropy falls as the confidence rises (two classes). Errors: voxels 1 (c 0.9), 4 (0.62), 7 (0.65); correct: 0 (0.9,
# the same probabilities as voxel 1: a tie), 2 (0.75), 3 (0.7), 5 (0.95), 6 (0.55). An error "wins" a pair when its
# entropy is higher (its confidence lower), a tie counts 1/2:
#   voxel 1: tie with 0 (0.5), beats 5 (1)           -> 1.5
#   voxel 4: beats 0, 2, 3, 5; loses to 6            -> 4
#   voxel 7: beats 0, 2, 3, 5; loses to 6            -> 4
AUROC = (1.5 + 4 + 4) / (3 * 5)  # 19/30


def test_ece_by_hand():
    assert cal.ece(PROBS.max(-1), PROBS.argmax(-1) == TRUTH) == pytest.approx(ECE, abs=1e-12)
    # streamed in two chunks: the same histogram
    h = cal.EceHistogram().add(PROBS[:3].max(-1), PROBS[:3].argmax(-1) == TRUTH[:3])
    assert h.add(PROBS[3:].max(-1), PROBS[3:].argmax(-1) == TRUTH[3:]).value() == pytest.approx(ECE, abs=1e-12)
    assert cal.ece(np.array([1.0, 1.0]), np.array([True, True])) == 0.0  # sure and right: calibrated


def test_brier_by_hand():
    assert cal.brier(P_LV, TRUTH == 1) == pytest.approx(BRIER_LV, abs=1e-12)
    assert cal.brier(np.array([1.0, 0.0]), np.array([True, False])) == 0.0


def test_entropy_auroc_by_hand_with_ties():
    h = cal.entropy(PROBS.astype(np.float32))
    assert h[0] == h[1]  # the tie is a real tie
    assert cal.auroc(h, PROBS.argmax(-1) != TRUTH) == pytest.approx(AUROC, abs=1e-12)
    # every score equal: chance; perfect ranking: 1; no error: undefined
    assert cal.auroc(np.zeros(4), np.array([1, 0, 1, 0])) == 0.5
    assert cal.auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert math.isnan(cal.auroc(np.arange(3.0), np.zeros(3, bool)))


def test_case_calibration_gathers_them():
    row = cal.case_calibration(PROBS.reshape(2, 2, 2, 2).astype(np.float32), TRUTH.reshape(2, 2, 2), ["LV"])
    assert row["ece"] == pytest.approx(ECE, abs=1e-6)
    assert row["brier"]["LV"] == pytest.approx(BRIER_LV, abs=1e-6)
    assert row["brier_all"] == pytest.approx(2 * BRIER_LV, abs=1e-6)  # two classes: both terms equal
    assert row["entropy_auroc"] == pytest.approx(AUROC, abs=1e-12)
    assert row["error_rate"] == 3 / 8 and row["voxels"] == 8
    assert row["ece_class"]["LV"] == pytest.approx(ECE, abs=1e-6)  # here the LV bins are the top-label bins mirrored


def test_entropy_range():
    k = 8
    assert cal.entropy(np.full((2, k), 1 / k, np.float32)) == pytest.approx(math.log(k), abs=1e-6)
    assert (cal.entropy(np.eye(k, dtype=np.float32)) == 0).all()


def test_spearman_by_hand():
    # y's ranks with the tie averaged: [1, 2, 3.5, 5, 3.5]; x's: [1, 2, 3, 4, 5]; centred dot 8, norms 10 and 9.5
    assert cal.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95), abs=1e-12)
    assert cal.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(cal.spearman([1, 2], [1, 2]))  # below three patients
    assert math.isnan(cal.spearman([1, 2, 3, None], [1, 1, 1, 2]))  # constant once the missing pair is dropped


def test_heart_box_adds_the_margin_in_mm():
    truth = np.zeros((20, 20, 10), np.uint8)
    truth[8:12, 9:11, 4:6] = 2
    box = cal.heart_box(truth, (2.0, 2.0, 5.0), margin_mm=4.0)
    assert box == (slice(6, 14), slice(7, 13), slice(3, 7))
    assert cal.heart_box(np.zeros((3, 3, 3)), (1, 1, 1)) is None


def test_fold_variance_by_hand():
    """Two folds: p = (0.2, 0.8) and (0.6, 0.4) everywhere -> mean (0.4, 0.6), per-class variance 0.04 each."""
    pre = SimpleNamespace(crop=((0, 2), (0, 2), (0, 2)), ras_shape=(2, 2, 2))
    fold = lambda p: SimpleNamespace(probabilities=lambda vol, tta: (np.broadcast_to(np.float32(p), (2, 2, 2, 2)), pre))
    ens = object.__new__(predict.Ensemble)
    ens.models, ens.postprocessing = [fold([0.2, 0.8]), fold([0.6, 0.4])], {}
    labels, probs, var = ens.segment_with_variance(None)
    np.testing.assert_allclose(probs, np.broadcast_to([0.4, 0.6], (2, 2, 2, 2)), atol=1e-7)
    np.testing.assert_allclose(var, 0.04, atol=1e-6)
    assert var.dtype == np.float32 and (labels == 1).all()
    ens.models = ens.models[:1]
    assert ens.segment_with_variance(None)[2] is None


def study_record(seed, ece, entropy, dice, with_calibration=True):
    """A run record of 3 patients, kinds 2d and 3d (3D: ECE halved); `entropy` and `dice` per patient."""
    cases = ["p0", "p1", "p2"]
    rec = {"study": "toy", "variant": "base", "seed": seed, "preset": "smoke", "data": None, "overrides": [],
           "variant_overrides": [], "kinds": ["2d", "3d"], "x": None, "dataset": "phantom-ct", "labels": ["LV"],
           "split": {}, "test_cases": cases, "seconds": 1.0, "steps": {"2d": 8, "3d": 8},
           "train_seconds": {"2d": 1.0, "3d": 1.0},
           "per_case": {k: [{"case": c, "dice": {"LV": d}, "hd95": {"LV": 1.0}} for c, d in zip(cases, dice)]
                        for k in ("2d", "3d")}}
    if with_calibration:
        rec["calibration"] = {k: [{"case": c, "ece": ece * f, "brier_all": 0.1, "entropy_auroc": 0.8,
                                   "mean_entropy": h, "brier": {"LV": 0.05}, "ece_class": {"LV": 0.02}}
                                  for c, h in zip(cases, entropy)] for k, f in (("2d", 1.0), ("3d", 0.5))}
    return rec


def test_study_aggregate_puts_2d_beside_3d_and_keeps_old_records_working():
    study = Study("toy", "toy", variants={"base": ()}, kinds=("2d", "3d"))
    recs = {("base", 0): study_record(0, 0.10, [0.1, 0.2, 0.3], [0.9, 0.8, 0.7]),
            ("base", 1): study_record(1, 0.20, [0.1, 0.2, 0.3], [0.9, 0.8, 0.7])}
    a = aggregate(study, recs)
    b2, b3 = a["calibration"]["variants"]["base"]["2d"], a["calibration"]["variants"]["base"]["3d"]
    assert b2["ece"]["mean"] == pytest.approx(0.15) and b3["ece"]["mean"] == pytest.approx(0.075)
    assert b2["ece"]["sd"] == pytest.approx(np.std([0.1, 0.2], ddof=1))  # over the seeds' own means
    assert b2["dice_entropy_spearman"] == pytest.approx(-1.0) and b2["patients"] == 3 and b2["seeds"] == 2
    assert b2["per_structure"]["LV"]["brier"]["mean"] == pytest.approx(0.05)
    md = study_markdown(a)
    assert "## Calibration and uncertainty" in md and "| base | 2d | 2 |" in md and "| base | 3d | 2 |" in md
    # a record from before calibration: left out of the calibration part; none at all: no section
    recs[("base", 1)] = study_record(1, 0.2, [0.1, 0.2, 0.3], [0.9, 0.8, 0.7], with_calibration=False)
    a = aggregate(study, recs)
    assert a["calibration"]["runs"] == 1 and a["calibration"]["variants"]["base"]["2d"]["ece"]["mean"] == pytest.approx(0.1)
    del recs[("base", 0)]
    a = aggregate(study, recs)
    assert a["calibration"] is None and "Calibration" not in study_markdown(a)
    json.dumps(a, allow_nan=False)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """A smoke run of both models (in-process), in a scratch working directory."""
    work = tmp_path_factory.mktemp("calib")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        experiment.run(experiment.config("smoke"), workdir="run", log=lambda *a: None)
    finally:
        os.chdir(cwd)
    return work


def test_smoke_results_carry_calibration_for_both_models(smoke):
    res = json.loads((smoke / "run" / "results.json").read_text())
    assert set(res["models"]) == {"2d", "3d"}
    names = res["label_names"]
    for kind, m in res["models"].items():
        c = m["calibration"]
        assert c["bins"] == 15 and "bounding box" in c["region"]
        assert 0 <= c["ece_mean"] <= 1 and 0 <= c["brier_all_mean"] <= 2, kind
        assert 0 <= c["mean_entropy_mean"] <= math.log(len(names) + 1)
        assert c["entropy_auroc_mean"] is None or 0 <= c["entropy_auroc_mean"] <= 1
        assert set(c["per_structure"]) == set(names)
        assert all(0 <= s["brier_mean"] <= 1 for s in c["per_structure"].values())
        assert [r["case"] for r in c["per_case"]] == res["test_cases"]
        assert c["dice_entropy_patients"] == len(res["test_cases"])
    md = (smoke / "run" / "results.md").read_text()
    assert "## Calibration and uncertainty" in md and "2d ECE" in md and "3d ECE" in md
    # a results.json from before calibration still renders, without the section
    old = {k: {kk: vv for kk, vv in m.items() if kk != "calibration"} for k, m in res["models"].items()}
    assert report.calibration_section(old, names) == []
    # a study record keeps the per-case rows of both kinds
    rows = study_calibration.record_rows(Results.from_json(res).models)["calibration"]
    assert set(rows) == {"2d", "3d"} and rows["3d"][0]["ece"] == res["models"]["3d"]["calibration"]["per_case"][0]["ece"]


def test_predict_uncertainty_writes_entropy_and_fold_variance(smoke, capsys):
    run = smoke / "run"
    cfg = json.loads((run / "config.json").read_text())
    case = json.loads((run / "splits.json").read_text())["test"][0]
    scan = next((smoke / cfg["data"]["phantom_dir"]).iterdir()) / "ct_train" / f"{case}_image.nii.gz"
    out = smoke / "pred"
    assert predict.main([str(run), str(scan), "--out", str(out), "--uncertainty"]) == 0
    img, ent = nib.load(scan), nib.load(out / f"{case}_image_entropy.nii.gz")
    h = np.asarray(ent.dataobj)
    assert ent.shape == img.shape and h.dtype == np.float32 and ent.get_data_dtype() == np.float32
    np.testing.assert_allclose(ent.affine, img.affine)
    k = len(json.loads((run / "label_scheme.json").read_text())["names"]) + 1
    assert h.min() >= 0 and h.max() <= math.log(k) + 1e-6 and h.max() > 0
    assert not (out / f"{case}_image_foldvar.nii.gz").exists()  # one model: no fold variance
    rec = json.loads((out / "predictions.json").read_text())["cases"][0]
    assert rec["entropy"].endswith("_entropy.nii.gz") and "foldvar" not in rec
    # a fold ensemble (two copies of the run as fold0 and fold1) adds the fold variance: here 0 everywhere
    cv = smoke / "cv"
    for i in range(2):
        shutil.copytree(run, cv / f"fold{i}", ignore=shutil.ignore_patterns("tb", "predictions", "figures"))
    assert predict.main([str(cv), str(scan), "--out", str(smoke / "pred_cv"), "--uncertainty"]) == 0
    var = nib.load(smoke / "pred_cv" / f"{case}_image_foldvar.nii.gz")
    assert var.shape == img.shape and np.asarray(var.dataobj).dtype == np.float32
    assert np.allclose(np.asarray(var.dataobj), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(nib.load(smoke / "pred_cv" / f"{case}_image_entropy.nii.gz").dataobj), h,
                               atol=1e-6)
    capsys.readouterr()
