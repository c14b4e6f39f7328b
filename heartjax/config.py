"""The one config tree of an experiment: frozen dataclasses, `dotted.key=value` overrides, validation, JSON.

Sections hold the pieces' own dataclasses where a piece has one (`optim`: OptimConfig, `loss`: LossConfig,
`augment`: AugmentConfig), so nothing converts them. The U-Net of each model kind is the shared `model`
section with the kind's own section on top (`model_2d`, `model_25d`, `model_3d`: a field left at None takes the
shared value); `heartjax.specs` turns them into a `UNetConfig`. Presets live in `heartjax.presets`.

An override may only set a key that exists (a typo is an error naming it and listing the known keys); the value
is parsed as a Python literal (numbers, booleans, None, lists, tuples, quoted or bare strings). Every value is
checked by `validate`, whose errors name the key, its value and what is allowed.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
from typing import Any, Iterable, Mapping

from heartjax.errors import HeartjaxError
from heartjax.model.augment import AugmentConfig
from heartjax.model.unet import UNetConfig
from heartjax.train.step import LossConfig, OptimConfig

KINDS = ("2d", "2.5d", "3d")  # every model kind heartjax.specs can build


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dir: str | None = None           # None: the built-in phantom; else any layout heartjax.data.datasets knows
    scheme: str | None = None        # label scheme (mmwhs | acdc | genericK); None: from the layout
    seed: int = 0                    # phantom, split, fingerprint sample, validation patches (not training)
    phantom_cases: int = 40          # 5 folds of 8: a paired test over 8 test patients can reach p < 0.05
    phantom_modality: str = "ct"     # ct | mri | cine (MRI in thick slices, shifted as between breath-holds)
    phantom_difficulty: int = 1      # 0 easy (the first generator), 1 realistic, 2 harder (phantom_levels.py)
    phantom_spacing: tuple[float, float, float] = (1.0, 1.0, 1.6)
    phantom_dir: str = "data/phantom"  # where the phantom is written once and reused
    cache_dir: str = "cache"         # preprocessed cases, keyed by plan and source files
    folds: int = 5                   # the test patients are one fold of a patient-level K-fold split
    fold: int = 0
    cross_validate: bool = False     # train every fold into RUN/foldI and pool the test patients
    val_cases: int = 4               # taken from the training patients for checkpoint selection
    max_cases: int | None = None     # use only the first N cases (quick looks at big folders)
    train_cases: int | None = None   # train on N of the training patients (nested subsets); val and test unchanged
    test_phantom_modality: str | None = None  # score the test patients' scans in this phantom modality instead


@dataclasses.dataclass(frozen=True)
class PlanConfig:
    target_spacing: tuple[float, float, float] | None = (3.0, 3.0, 3.0)  # None: nnU-Net's rule
    depth: int = 3
    patch_3d: tuple[int, int, int] | None = (48, 48, 48)  # None: from the median shape and max_patch_voxels_3d
    patch_2d: tuple[int, int] | None = None
    batch_3d: int = 2
    batch_2d: int = 16
    max_patch_voxels_3d: int = 64 ** 3
    max_patch_voxels_2d: int = 192 ** 2
    crop_margin_mm: float = 10.0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """U-Net settings shared by every kind (heartjax.model.unet.UNetConfig's fields of the same names)."""

    features: int = 8
    max_features: int = 64
    growth: int = 2
    norm: str = "instance"
    dropout: float = 0.0
    upsample: str = "resize"
    activation: str = "leaky_relu"
    deep_supervision: bool = True
    dtype: str = "float32"
    conv_impl: str = "auto"


@dataclasses.dataclass(frozen=True)
class KindModelConfig:
    """One kind's U-Net settings on top of `model`; None takes the shared value."""

    features: int | None = None
    max_features: int | None = None
    growth: int | None = None
    norm: str | None = None
    dropout: float | None = None
    upsample: str | None = None
    activation: str | None = None
    deep_supervision: bool | None = None
    dtype: str | None = None
    conv_impl: str | None = None


@dataclasses.dataclass(frozen=True)
class Model25dConfig(KindModelConfig):
    slices: int = 5  # K neighbouring slices (odd) fed as channels; the centre one is predicted


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    fg_fraction: float = 0.33  # share of each batch centred on a structure (nnU-Net's oversampling)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    models: tuple[str, ...] = ("2d", "3d")
    steps: int = 900                 # the same number of optimiser steps for every model
    max_seconds: float | None = None  # a wall-time budget per model instead (re-planned at log points)
    log_every: int = 25
    eval_every: int = 100
    val_patches: int = 8
    ema_decay: float = 0.6


@dataclasses.dataclass(frozen=True)
class InferConfig:
    overlap: float = 0.5
    mirror: bool = False
    batch_3d: int = 2
    batch_2d: int = 16               # 2D and 2.5D
    save_predictions: bool = True


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0                    # training: initialisation, sampling, augmentation, dropout
    data: DataConfig = DataConfig()
    plan: PlanConfig = PlanConfig()
    model: ModelConfig = ModelConfig()
    model_2d: KindModelConfig = KindModelConfig(features=16, max_features=128)  # 2D nets are cheap per voxel
    model_25d: Model25dConfig = Model25dConfig(features=16, max_features=128)
    model_3d: KindModelConfig = KindModelConfig()
    optim: OptimConfig = OptimConfig(name="adamw", lr=3e-3, warmup_steps=20)
    loss: LossConfig = LossConfig()
    augment: AugmentConfig = AugmentConfig(rotation_deg=(-15.0, 15.0), scale_range=(0.85, 1.15))
    sampling: SamplingConfig = SamplingConfig()
    train: TrainConfig = TrainConfig()
    infer: InferConfig = InferConfig()


def section_of(kind: str) -> str:
    """The config section of a model kind: "2.5d" -> "model_25d"."""
    return "model_" + kind.replace(".", "")


def unet_settings(cfg: Config, kind: str) -> dict:
    """The U-Net fields of a kind: `model`, overlaid with the kind's section where it sets a value."""
    own = getattr(cfg, section_of(kind))
    shared = dataclasses.asdict(cfg.model)
    return {k: (shared[k] if getattr(own, k) is None else getattr(own, k)) for k in shared}


def parse_value(text: str) -> Any:
    """An override value: a Python literal, or else the bare string (true/false/none are accepted too)."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def tupled(v):
    """Lists (nested too) as tuples, so config values stay hashable."""
    return tuple(tupled(x) for x in v) if isinstance(v, (list, tuple)) else v


def json_ready(x):
    """Tuples as lists, through a JSON round trip."""
    return json.loads(json.dumps(x))


def _set(node, parts: list[str], value, key: str):
    """A copy of dataclass `node` with the field at `parts` set to `value`."""
    names = [f.name for f in dataclasses.fields(node)]
    if parts[0] not in names:
        raise HeartjaxError(f"unknown config setting {key!r}; known keys here: {names}")
    old = getattr(node, parts[0])
    if len(parts) > 1:
        if not dataclasses.is_dataclass(old):
            raise HeartjaxError(f"unknown config setting {key!r}: {parts[0]!r} is a value, not a group")
        return dataclasses.replace(node, **{parts[0]: _set(old, parts[1:], value, key)})
    if dataclasses.is_dataclass(old):
        raise HeartjaxError(f"config setting {key!r} is a group; set one of its keys: "
                            f"{[f.name for f in dataclasses.fields(old)]}")
    try:
        return dataclasses.replace(node, **{parts[0]: tupled(value)})
    except HeartjaxError as e:  # a piece's own dataclass validates on construction
        raise HeartjaxError(f"config setting {key}={value!r} is invalid: {e}") from None


def override(cfg: Config, key: str, value: Any) -> Config:
    """A copy of `cfg` with the dotted `key` set to `value` (not validated: see `validate`)."""
    return _set(cfg, key.strip().split("."), value, key.strip())


def apply_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """Apply `a.b=value` strings in order; unknown keys raise HeartjaxError."""
    for item in overrides:
        if "=" not in item:
            raise HeartjaxError(f"config override {item!r} must look like key.subkey=value")
        key, value = item.split("=", 1)
        cfg = override(cfg, key, parse_value(value))
    return cfg


def apply_tree(cfg: Config, tree: Mapping, prefix: str = "") -> Config:
    """Apply a nested dict of values (a preset, or a config.json) key by key."""
    for k, v in tree.items():
        key = f"{prefix}{k}"
        node = cfg
        for part in key.split("."):
            node = getattr(node, part, None)
        if isinstance(v, Mapping) and dataclasses.is_dataclass(node):
            cfg = apply_tree(cfg, v, key + ".")
        else:
            cfg = override(cfg, key, v)
    return cfg


def to_dict(cfg: Config) -> dict:
    """The config as nested JSON-ready dicts (tuples as lists)."""
    return json_ready(dataclasses.asdict(cfg))


def from_dict(data: Mapping) -> Config:
    """A config from `to_dict` output (e.g. a run's config.json), validated; keys it lacks keep their defaults."""
    cfg = apply_tree(Config(), data)
    validate(cfg)
    return cfg


def to_json(cfg: Config) -> str:
    """Pretty JSON of a config."""
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def _int(v, lo: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _ints(v, n: int, lo: int = 1) -> bool:
    return isinstance(v, tuple) and len(v) == n and all(_int(x, lo) for x in v)


def _nums(v, n: int) -> bool:
    return isinstance(v, tuple) and len(v) == n and all(_num(x) and x > 0 for x in v)


def _rules(cfg: Config):
    """(key, ok, what) for every checkable setting."""
    d, p, t, i = cfg.data, cfg.plan, cfg.train, cfg.infer
    yield "seed", _int(cfg.seed, 0), "must be a non-negative integer"
    yield "data.seed", _int(d.seed, 0), "must be a non-negative integer"
    yield "data.dir", d.dir is None or isinstance(d.dir, str), "must be None (the phantom) or a folder path"
    yield "data.scheme", d.scheme is None or isinstance(d.scheme, str), "must be None or a scheme name"
    yield "data.phantom_cases", _int(d.phantom_cases, 3), "must be an integer >= 3"
    yield "data.phantom_modality", d.phantom_modality in ("ct", "mri", "cine"), "must be 'ct', 'mri' or 'cine'"
    yield "data.phantom_difficulty", _int(d.phantom_difficulty, 0) and d.phantom_difficulty <= 2, \
        "must be 0 (easy), 1 (realistic) or 2 (harder)"
    yield "data.phantom_spacing", _nums(d.phantom_spacing, 3), "must be three positive numbers (mm)"
    yield "data.folds", _int(d.folds, 2), "must be an integer >= 2"
    yield "data.fold", _int(d.fold, 0) and d.fold < d.folds, f"must be in 0..data.folds-1 ({d.folds - 1})"
    yield "data.cross_validate", isinstance(d.cross_validate, bool), "must be true or false"
    yield "data.val_cases", _int(d.val_cases, 1), "must be a positive integer"
    yield "data.max_cases", d.max_cases is None or _int(d.max_cases, 3), "must be None or an integer >= 3"
    yield "data.train_cases", d.train_cases is None or _int(d.train_cases, 1), "must be None or an integer >= 1"
    yield "data.test_phantom_modality", d.test_phantom_modality is None or (
        d.test_phantom_modality in ("ct", "mri", "cine") and d.dir is None), \
        "must be None, or 'ct', 'mri' or 'cine' with the built-in phantom (data.dir None)"
    yield "plan.target_spacing", p.target_spacing is None or _nums(p.target_spacing, 3), \
        "must be None (nnU-Net's rule) or three positive numbers (mm)"
    yield "plan.depth", _int(p.depth, 1), "must be a positive integer"
    yield "plan.patch_3d", p.patch_3d is None or _ints(p.patch_3d, 3), "must be None or three positive integers"
    yield "plan.patch_2d", p.patch_2d is None or _ints(p.patch_2d, 2), "must be None or two positive integers"
    for k in ("batch_3d", "batch_2d", "max_patch_voxels_3d", "max_patch_voxels_2d"):
        yield f"plan.{k}", _int(getattr(p, k), 1), "must be a positive integer"
    yield "plan.crop_margin_mm", _num(p.crop_margin_mm) and p.crop_margin_mm >= 0, "must be a number >= 0"
    yield "model_25d.slices", _int(cfg.model_25d.slices, 1) and cfg.model_25d.slices % 2 == 1, \
        "must be an odd positive integer (the centre slice and as many on each side)"
    yield "sampling.fg_fraction", _num(cfg.sampling.fg_fraction) and 0 <= cfg.sampling.fg_fraction <= 1, \
        "must be in [0, 1]"
    yield "train.models", isinstance(t.models, tuple) and len(t.models) > 0 and set(t.models) <= set(KINDS) \
        and len(set(t.models)) == len(t.models), f"must be a non-empty list of distinct kinds from {list(KINDS)}"
    for k in ("steps", "log_every", "eval_every", "val_patches"):
        yield f"train.{k}", _int(getattr(t, k), 1), "must be a positive integer"
    yield "train.max_seconds", t.max_seconds is None or (_num(t.max_seconds) and t.max_seconds > 0), \
        "must be None or a positive number of seconds"
    yield "train.ema_decay", _num(t.ema_decay) and 0 <= t.ema_decay < 1, "must be in [0, 1)"
    yield "infer.overlap", _num(i.overlap) and 0 <= i.overlap < 1, "must be in [0, 1)"
    yield "infer.mirror", isinstance(i.mirror, bool), "must be true or false"
    for k in ("batch_3d", "batch_2d"):
        yield f"infer.{k}", _int(getattr(i, k), 1), "must be a positive integer"


def get(cfg: Config, key: str) -> Any:
    """The value at a dotted key."""
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def validate(cfg: Config) -> Config:
    """Check every setting that can be checked before any work starts; HeartjaxError names the key. Returns cfg."""
    if not isinstance(cfg, Config):
        raise HeartjaxError(f"expected a heartjax.config.Config, got {type(cfg).__name__}")
    for key, ok, what in _rules(cfg):
        if not ok:
            raise HeartjaxError(f"config setting {key}={get(cfg, key)!r} is invalid: {what}")
    try:
        cfg.optim.validate()
        cfg.augment.validate()
    except HeartjaxError as e:
        raise HeartjaxError(f"config section {'optim' if 'optim' in str(e) else 'augment'}: {e}") from None
    for kind in KINDS:  # every kind's network, so a bad value fails before the first model trains
        try:
            UNetConfig(spatial_dims=3 if kind == "3d" else 2, depth=cfg.plan.depth, **unet_settings(cfg, kind)).validate()
        except (HeartjaxError, TypeError) as e:
            raise HeartjaxError(f"config section model / {section_of(kind)}: {e}") from None
    return cfg
