"""Across modalities: train on the phantom CT, score the same test patients' MRI scans (data.test_phantom_modality)."""

import json

import numpy as np
import pytest

from heartjax import experiment
from heartjax.common.errors import HeartjaxError


def test_train_on_ct_score_on_the_same_patients_mri(tmp_path):
    cfg = experiment.config("smoke", overrides=[
        f"data.phantom_dir={tmp_path / 'phantom'}", f"data.cache_dir={tmp_path / 'cache'}", "train.models=['2d']",
        "train.steps=4", "data.test_phantom_modality=mri"])
    lines = []
    res = experiment.run(cfg, tmp_path / "run", log=lines.append)
    split = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert all(c.startswith("ct_train_") for c in split["train"] + split["test"])  # trained on CT
    expected = [c.replace("ct_train_", "mr_train_") for c in split["test"]]  # the same patients, scanned by MRI
    assert list(res.test_cases) == expected
    assert [c["case"] for c in res.models["2d"].per_case] == expected
    assert res.dataset == "phantom-ct-tested-on-mri"
    assert any("normalised as zscore" in line for line in lines)  # MRI keeps its own normalisation
    assert sorted(p.name.split("-")[2] for p in (tmp_path / "phantom").iterdir()) == ["ct", "mri"]
    assert (tmp_path / "run" / "predictions" / "2d" / f"{expected[0]}.nii.gz").exists()

    from experiments.checks.postprocess_check import check  # rescores the MRI predictions against the MRI labels
    rescored = check(tmp_path / "run", "2d")
    assert rescored["cases"] == len(expected)
    ref = json.loads((tmp_path / "run" / "eval_2d.json").read_text())
    for n in rescored["structures"]:
        want, got = ref["per_structure"][n]["dice_mean"], rescored["rules"]["raw"]["dice"][n]
        assert (want is None and np.isnan(got)) or abs(got - want) < 1e-9
    moved = tmp_path / "run" / "predictions" / "2d" / f"{expected[0]}.nii.gz"
    moved.rename(moved.with_name("not_a_patient.nii.gz"))
    with pytest.raises(HeartjaxError, match="not_a_patient.nii.gz names no patient"):
        check(tmp_path / "run", "2d")


def test_test_modality_needs_the_phantom():
    with pytest.raises(HeartjaxError, match="data.test_phantom_modality"):
        experiment.config("smoke", data="/some/folder", overrides=["data.test_phantom_modality=mri"])
    with pytest.raises(HeartjaxError, match="data.test_phantom_modality"):
        experiment.config("smoke", overrides=["data.test_phantom_modality=pet"])
