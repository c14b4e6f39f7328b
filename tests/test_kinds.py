"""Kinds are data: a toy kind registered from this file alone (a 3D U-Net with its own patch and batch) trains,
is scored and is written like the built-in ones; results and reports iterate over kinds and never parse names."""

import dataclasses
import json

import pytest

from heartjax import experiment
from heartjax.errors import HeartjaxError
from heartjax.eval import report
from heartjax.eval.results import comparison_key
from heartjax.experiment import specs


def build_toy(cfg, plan, num_classes):
    """The 3D network of the plan, on 8^3 patches, one per batch, predicting with tiles of the same size."""
    return dataclasses.replace(specs.build_3d(cfg, plan, num_classes), name="toy3d", patch=(8, 8, 8), batch=1)


def test_a_toy_kind_runs_through_experiment_run(tmp_path, monkeypatch):
    monkeypatch.setitem(specs.BUILDERS, "toy3d", build_toy)
    cfg = experiment.config("smoke", overrides=[f"data.phantom_dir={tmp_path / 'phantom'}",
                                                f"data.cache_dir={tmp_path / 'cache'}"])
    res = experiment.run(cfg, tmp_path / "run", kinds=["toy3d"], log=lambda *a: None)
    assert list(res.models) == ["toy3d"] and res.models["toy3d"].steps == cfg.train.steps
    spec = json.loads((tmp_path / "run" / "models" / "toy3d.json").read_text())
    assert spec["patch"] == [8, 8, 8] and spec["batch"] == 1 and spec["unet"]["spatial_dims"] == 3
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert list(on_disk["models"]) == ["toy3d"] and on_disk["comparisons"] == {}
    per_case = on_disk["models"]["toy3d"]["per_case"]
    assert [c["case"] for c in per_case] == res.test_cases
    assert (tmp_path / "run" / "checkpoints" / "toy3d" / "best").is_dir()
    assert sorted(p.name for p in (tmp_path / "run" / "predictions" / "toy3d").iterdir()) == \
        sorted(f"{c}.nii.gz" for c in res.test_cases)
    assert "toy3d Dice" in (tmp_path / "run" / "results.md").read_text()


def test_an_unknown_kind_is_refused_by_name():
    with pytest.raises(HeartjaxError) as err:
        experiment.config("smoke", overrides=["train.models=['2d', 'toy3d']"])
    assert str(err.value) == ("config setting train.models=['2d', 'toy3d'] is invalid: 'toy3d' is not a model kind; "
                              f"the kinds are {list(specs.BUILDERS)}")


def test_comparisons_are_found_by_kind_not_by_parsing_names():
    results = {"models": {"2d": {}, "2.5d": {}, "toy3d": {}},
               "comparisons": {comparison_key("2.5d"): {"LV": {"p_wilcoxon": 0.01}},
                               comparison_key("toy3d"): {"LV": {"p_wilcoxon": 0.5}}}}
    assert report.comparisons(results) == {"2.5d": {"LV": {"p_wilcoxon": 0.01}}, "toy3d": {"LV": {"p_wilcoxon": 0.5}}}
    older = {"models": {"2d": {}, "3d": {}}, f"comparison_{comparison_key('3d')}": {"LV": {}}}
    assert report.comparisons(older) == {"3d": {"LV": {}}}
