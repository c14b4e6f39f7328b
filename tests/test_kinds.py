"""Kinds are data: a toy kind registered from this file alone (a 3D U-Net with its own patch and batch) trains,
is scored and is written like the built-in ones; results and reports iterate over kinds and never parse names."""

import json

import pytest

from heartjax import experiment
from heartjax.common.errors import HeartjaxError
from heartjax.eval import report
from heartjax.eval.results import comparison_key
from heartjax.experiment import specs


def build_toy(cfg, plan, num_classes):
    """A 3D network on the toy kind's own plan entry (its patch, batch and stage layout)."""
    return specs.build_volume(cfg, plan, num_classes, "toy3d")


TOY_PLAN = ["plan.kinds.toy3d.inherits_from=3d", "plan.kinds.toy3d.patch=[8, 8, 8]", "plan.kinds.toy3d.batch=1"]


def test_a_toy_kind_runs_through_experiment_run(tmp_path, monkeypatch):
    monkeypatch.setitem(specs.BUILDERS, "toy3d", build_toy)
    cfg = experiment.config("smoke", overrides=[f"data.phantom_dir={tmp_path / 'phantom'}",
                                                f"data.cache_dir={tmp_path / 'cache'}", *TOY_PLAN])
    res = experiment.run(cfg, tmp_path / "run", kinds=["toy3d"], log=lambda *a: None)
    assert list(res.models) == ["toy3d"] and res.models["toy3d"].steps == cfg.train.steps
    spec = json.loads((tmp_path / "run" / "models" / "toy3d.json").read_text())
    assert spec["patch"] == [8, 8, 8] and spec["batch"] == 1 and spec["unet"]["spatial_dims"] == 3
    assert spec["infer_batch"] == cfg.infer.kinds["3d"].batch and spec["batch_key"] == "plan.kinds.toy3d.batch"
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())["kinds"]
    assert plan["toy3d"]["patch"] == [8, 8, 8] and plan["toy3d"]["batch"] == 1
    assert plan["toy3d"]["inherits_from"] == "3d" and plan["toy3d"]["strides"] != plan["3d"]["strides"]
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


def test_a_registered_kind_needs_a_plan_entry(monkeypatch):
    monkeypatch.setitem(specs.BUILDERS, "toy3d", build_toy)
    with pytest.raises(HeartjaxError, match=r"'toy3d' has no plan entry; add one, e.g. plan.kinds.toy3d.inherits_from"):
        experiment.config("smoke", overrides=["train.models=['toy3d']"])
    with pytest.raises(HeartjaxError, match=r"plan.kinds.toy3d.patch=\(8, 8\) is invalid: .* or 3 positive"):
        experiment.config("smoke", overrides=[*TOY_PLAN, "plan.kinds.toy3d.patch=[8, 8]"])


def test_comparisons_are_found_by_kind_not_by_parsing_names():
    results = {"models": {"2d": {}, "2.5d": {}, "toy3d": {}},
               "comparisons": {comparison_key("2.5d"): {"LV": {"p_wilcoxon": 0.01}},
                               comparison_key("toy3d"): {"LV": {"p_wilcoxon": 0.5}}}}
    assert report.comparisons(results) == {"2.5d": {"LV": {"p_wilcoxon": 0.01}}, "toy3d": {"LV": {"p_wilcoxon": 0.5}}}
    older = {"models": {"2d": {}, "3d": {}}, f"comparison_{comparison_key('3d')}": {"LV": {}}}
    assert report.comparisons(older) == {"3d": {"LV": {}}}
