"""The typed config tree: presets, override parsing, validation naming the key, JSON round trip, the split."""

import dataclasses

import pytest

from heartjax import config as config_lib
from heartjax import experiment
from heartjax.common import rng
from heartjax.experiment import specs
from heartjax.config import presets
from heartjax.config import Config, DataConfig
from heartjax.data import cases as cases_lib
from heartjax.data.datasets import Case
from heartjax.data.plan import KindPlan, Plan
from heartjax.common.errors import HeartjaxError


@pytest.mark.parametrize("preset", sorted(presets.PRESETS))
def test_every_preset_validates_and_round_trips(preset):
    cfg = experiment.config(preset)
    assert isinstance(cfg, Config)
    assert config_lib.from_dict(config_lib.to_dict(cfg)) == cfg


def test_default_preset_is_the_config_defaults():
    assert experiment.config("default") == Config()
    assert Config().train.models == ("2d", "3d")  # 2.5d only on request: ./run.sh costs what it did


@pytest.mark.parametrize("text, value", [
    ("3", 3), ("3.5", 3.5), ("1e-3", 1e-3), ("true", True), ("False", False), ("none", None), ("null", None),
    ("[1, 2]", [1, 2]), ("(1, 2)", (1, 2)), ("'x'", "x"), ("batch", "batch"), ("../a/b", "../a/b"),
])
def test_parse_value(text, value):
    assert config_lib.parse_value(text) == value


def test_overrides_set_typed_values():
    cfg = config_lib.apply_overrides(Config(), ["model.norm=batch", "plan.kinds.3d.patch=[32, 32, 32]",
                                               "train.max_seconds=60", "data.dir=../x", "model_25d.slices=7",
                                               "optim.lr=1e-3", "seed=3"])
    assert cfg.model.norm == "batch" and cfg.plan.kinds["3d"].patch == (32, 32, 32) and cfg.train.max_seconds == 60
    assert cfg.data.dir == "../x" and cfg.model_25d.slices == 7 and cfg.optim.lr == 1e-3 and cfg.seed == 3
    assert Config().model.norm == "instance"  # frozen: the original is untouched
    hash(cfg)  # lists became tuples


def test_kinds_are_keys_with_inheritance():
    """plan.kinds.KIND and infer.kinds.KIND: a kind's name is one key even with a dot in it; 2.5d takes 2d's values
    unless it sets its own; a new kind inherits from one; the keys of heartjax <= 0.5 still read."""
    cfg = config_lib.apply_overrides(Config(), ["plan.kinds.2d.batch=8", "plan.kinds.2.5d.patch=[64, 64]",
                                               "plan.kinds.toy.inherits_from=3d", "plan.kinds.toy.patch=[8,8,8]"])
    config_lib.validate(cfg)
    assert cfg.plan.entry("2.5d") == config_lib.KindPlanConfig("2d", 2, (64, 64), 8, 192 ** 2)
    assert cfg.plan.entry("toy") == config_lib.KindPlanConfig("3d", 3, (8, 8, 8), 2, 64 ** 3)
    assert cfg.plan.source("2.5d", "batch") == "plan.kinds.2d.batch" and cfg.plan.source("2.5d", "patch") == \
        "plan.kinds.2.5d.patch"
    assert config_lib.get(cfg, "plan.kinds.2.5d.patch") == (64, 64)
    assert config_lib.get(cfg, "plan.kinds.2.5d.batch") is None  # its own entry's: it inherits 2d's
    assert config_lib.infer_settings(cfg, "2.5d").batch == 16 and config_lib.infer_settings(cfg, "toy").batch == 2
    assert config_lib.from_dict(config_lib.to_dict(cfg)) == cfg and hash(cfg) == hash(config_lib.from_dict(
        config_lib.to_dict(cfg)))
    old = config_lib.apply_overrides(Config(), ["plan.patch_3d=[32,32,32]", "plan.batch_2d=4", "infer.batch_3d=1"])
    assert (old.plan.kinds["3d"].patch, old.plan.kinds["2d"].batch, old.infer.kinds["3d"].batch) == ((32,) * 3, 4, 1)
    older = config_lib.from_dict({"plan": {"patch_2d": [32, 32], "max_patch_voxels_3d": 8}, "infer": {"batch_2d": 2}})
    assert (older.plan.kinds["2d"].patch, older.plan.kinds["3d"].max_patch_voxels) == ((32, 32), 8)


@pytest.mark.parametrize("item, words", [
    ("train.stepz=3", ["'train.stepz'", "steps"]),
    ("plan.kinds=3", ["'plan.kinds' is a table of kinds", "plan.kinds.KIND.KEY", "2.5d"]),
    ("plan.kinds.3d=3", ["'plan.kinds.3d' is a group", "patch"]),
    ("plan.kinds.3d.pach=3", ["'plan.kinds.3d.pach'", "patch"]),
    ("model=3", ["'model' is a group", "features"]),
    ("train.steps.x=3", ["'train.steps.x'"]),
    ("nodots", ["key.subkey=value"]),
])
def test_bad_override_names_the_key(item, words):
    with pytest.raises(HeartjaxError) as e:
        config_lib.apply_overrides(Config(), [item])
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("item, words", [
    ("train.steps=0", ["train.steps=0", "positive integer"]),
    ("seed=-1", ["seed=-1"]),
    ("data.seed=x", ["data.seed='x'"]),
    ("data.fold=5", ["data.fold=5", "0..data.folds-1"]),
    ("train.models=['2d', '4d']", ["train.models", "2.5d"]),
    ("model_25d.slices=4", ["model_25d.slices=4", "odd"]),
    ("infer.overlap=1.0", ["infer.overlap"]),
    ("plan.kinds.2d.patch=[16]", ["plan.kinds.2d.patch=(16,)", "2 positive integers"]),
    ("plan.kinds.2.5d.batch=0", ["plan.kinds.2.5d.batch=0", "positive integer"]),
    ("plan.kinds.3D.patch=[8,8,8]", ["plan.kinds.3D.spatial_dims=None", "inherits_from"]),
    ("plan.kinds.2d.inherits_from=2.5d", ["plan.kinds.2d.inherits_from='2.5d'", "without a cycle"]),
    ("infer.kinds.3d.batch=0", ["infer.kinds.3d.batch=0", "positive integer"]),
    ("infer.kinds.4d.batch=1", ["infer.kinds.4d", "names no kind of plan.kinds"]),
    ("train.models=['2d', 'toy']", ["'toy' is not a model kind"]),
    ("model.norm=foo", ["model.norm", "instance"]),
    ("model_3d.features=0", ["model_3d", "features"]),
    ("model.conv_impl=fast", ["model.conv_impl", "planes"]),
    ("optim.name=adam", ["optim", "sgd"]),
    ("augment.rotation_p=2", ["rotation_p"]),
    ("train.ema_decay=1", ["train.ema_decay"]),
])
def test_validation_names_the_key_and_what_is_allowed(item, words):
    with pytest.raises(HeartjaxError) as e:
        experiment.config("smoke", overrides=[item])
    for w in words:
        assert w in str(e.value), str(e.value)


def test_unknown_preset():
    with pytest.raises(HeartjaxError, match="unknown preset 'nope'.*smoke"):
        experiment.config("nope")


def test_a_saved_config_is_validated_on_resume(tmp_path):
    """--resume reads config.json through the same validation (a hand-edited bad value is named)."""
    run = tmp_path / "run"
    run.mkdir()
    data = config_lib.to_dict(experiment.config("smoke"))
    data["train"]["steps"] = -5
    (run / "config.json").write_text(__import__("json").dumps(data))
    with pytest.raises(HeartjaxError, match="train.steps=-5"):
        experiment.run(experiment.config("smoke"), run, resume=True)
    assert config_lib.from_dict({"seed": 4}) == dataclasses.replace(Config(), seed=4)  # older files: defaults


def test_kind_sections_overlay_the_shared_model():
    cfg = experiment.config("default", overrides=["model.norm=batch", "model_3d.norm=group"])
    assert config_lib.unet_settings(cfg, "2d")["norm"] == "batch"
    assert config_lib.unet_settings(cfg, "3d")["norm"] == "group"
    assert config_lib.unet_settings(cfg, "2d")["features"] == 16 and config_lib.unet_settings(cfg, "3d")["features"] == 8


def _plan():
    kinds = {"2d": KindPlan(2, (2.0, 2.0), (16, 16), 4, ((2, 2), (2, 2)), ((3, 3),) * 3),
             "3d": KindPlan(3, (2.0, 2.0, 4.0), (16, 16, 8), 2, ((2, 2, 1), (2, 2, 2)), ((3, 3, 1), (3, 3, 3), (3, 3, 3)))}
    kinds["2.5d"] = dataclasses.replace(kinds["2d"], inherits_from="2d")
    return Plan(target_spacing=(2.0, 2.0, 4.0), modality="ct", normalization="ct", ct_clip=(-100.0, 300.0),
                ct_mean=50.0, ct_std=80.0, slice_axis=2, depth=2, kinds=kinds)


def test_specs_hold_what_differs_between_kinds():
    cfg = experiment.config("smoke", overrides=["model_25d.slices=5"])
    s2, s25, s3 = (specs.build_spec(cfg, _plan(), k, 8) for k in ("2d", "2.5d", "3d"))
    assert (s2.unet.spatial_dims, s2.unet.in_channels, s2.context, s2.slice_axis) == (2, 1, 1, 2)
    assert (s25.unet.spatial_dims, s25.unet.in_channels, s25.context, s25.patch, s25.batch) == (2, 5, 5, (16, 16), 4)
    assert s25.augment.joint_channels and not s2.augment.joint_channels and s2.augment.rotation_axes is None
    assert (s3.unet.spatial_dims, s3.slice_axis, s3.patch, s3.unet.strides) == (3, None, (16, 16, 8), ((2, 2, 1), (2, 2, 2)))
    for s in (s2, s25, s3):
        assert specs.ModelSpec.from_json(s.to_json()) == s
    with pytest.raises(HeartjaxError, match="unknown model kind '4d'"):
        specs.build_spec(cfg, _plan(), "4d", 8)


class _DS:
    def __init__(self, n):
        self.cases = tuple(Case(f"p{i:02d}", f"p{i:02d}", None, None) for i in range(n))


def test_split_is_patient_level_and_depends_on_the_data_seed_only():
    ds = _DS(20)
    d = DataConfig(folds=5, fold=1, val_cases=2)
    a, b = cases_lib.make_split(ds, d), cases_lib.make_split(ds, d)
    assert a == b
    assert len(a["test"]) == 4 and len(a["val"]) == 2 and len(a["train"]) == 14
    assert sorted(a["train"] + a["val"] + a["test"]) == [c.case_id for c in ds.cases]
    tests = [set(cases_lib.make_split(ds, dataclasses.replace(d, fold=f))["test"]) for f in range(5)]
    assert set().union(*tests) == {c.case_id for c in ds.cases} and sum(map(len, tests)) == 20  # folds partition
    other = cases_lib.make_split(ds, dataclasses.replace(d, seed=1))
    assert other["test"] != a["test"] or other["val"] != a["val"]
    with pytest.raises(HeartjaxError, match="data.val_cases=16"):
        cases_lib.make_split(ds, dataclasses.replace(d, val_cases=16))


def test_train_cases_are_nested_subsets_with_val_and_test_fixed():
    ds = _DS(40)
    d = DataConfig(folds=5, fold=0, val_cases=4)
    full = cases_lib.make_split(ds, d)
    subsets = {n: cases_lib.make_split(ds, dataclasses.replace(d, train_cases=n)) for n in (4, 8, 16, 28)}
    for n, split in subsets.items():
        assert len(split["train"]) == n and split["val"] == full["val"] and split["test"] == full["test"]
        assert set(split["train"]) <= set(full["train"])
    assert set(subsets[4]["train"]) < set(subsets[8]["train"]) < set(subsets[16]["train"])
    assert set(subsets[28]["train"]) == set(full["train"])
    assert subsets[4]["train"] != full["train"][:4]  # a random subset, not the first names
    with pytest.raises(HeartjaxError, match="data.train_cases=29 .* 28 training patients"):
        cases_lib.make_split(ds, dataclasses.replace(d, train_cases=29))


def test_named_streams_are_stable_and_distinct():
    assert rng.stream_id("init/2d") == __import__("zlib").crc32(b"init/2d")
    assert rng.seed_for(0, "split") == rng.seed_for(0, "split") != rng.seed_for(0, "split/val")
    assert rng.seed_for(0, "split") != rng.seed_for(1, "split")
    k = lambda s, n: tuple(__import__("jax").random.key_data(rng.key(s, n)).tolist())
    assert k(0, "init/2d") != k(0, "init/3d") and k(0, "init/2d") != k(1, "init/2d") and k(0, "a") == k(0, "a")


def test_model_fields_are_written_once():
    """Each kind's section has exactly the shared model section's fields (derived from it), and each of them is a
    field of the network's UNetConfig, which the spec builds from them."""
    from heartjax.model.unet import UNetConfig

    shared = [f.name for f in dataclasses.fields(config_lib.ModelConfig)]
    assert [f.name for f in dataclasses.fields(config_lib.KindModelConfig)] == shared
    assert [f.name for f in dataclasses.fields(config_lib.Model25dConfig)] == shared + ["slices"]
    assert issubclass(UNetConfig, config_lib.ModelConfig)  # the network's options are the config's
    assert [f.name for f in dataclasses.fields(UNetConfig)][:len(shared)] == shared
    assert all(getattr(config_lib.KindModelConfig(), n) is None for n in shared)


@pytest.mark.parametrize("override, message", [
    ("model_2d.norm=bogus", "config setting model_2d.norm='bogus' is invalid: must be one of ['batch', 'instance', "
                            "'group', 'none']"),
    ("model.dropout=1.5", "config setting model.dropout=1.5 is invalid: must be in [0, 1)"),
    ("model_3d.conv_impl=cuda", "config setting model_3d.conv_impl='cuda' is invalid: must be one of ['auto', 'xla', "
                                "'planes']"),
    ("model.max_features=2", "config setting model.max_features=2 is invalid: must be an integer >= features"),
])
def test_model_errors_name_key_value_and_what_is_allowed(override, message):
    cfg = config_lib.apply_overrides(config_lib.Config(), [override])
    with pytest.raises(HeartjaxError) as err:
        config_lib.validate(cfg)
    assert str(err.value) == message
