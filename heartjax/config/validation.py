"""One validation path for the config tree: every error names the key, its value and what is allowed."""

from __future__ import annotations

import math

from heartjax.config.options import ACTIVATIONS, CONV_IMPLS, DTYPES, NORMS, UPSAMPLES
from heartjax.config.schema import KINDS, Config, get, infer_settings, infer_source, model_section, unet_settings
from heartjax.common.errors import HeartjaxError


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
    yield from _kind_rules(cfg)
    yield "plan.crop_margin_mm", _num(p.crop_margin_mm) and p.crop_margin_mm >= 0, "must be a number >= 0"
    yield "model_25d.slices", _int(cfg.model_25d.slices, 1) and cfg.model_25d.slices % 2 == 1, \
        "must be an odd positive integer (the centre slice and as many on each side)"
    yield "sampling.fg_fraction", _num(cfg.sampling.fg_fraction) and 0 <= cfg.sampling.fg_fraction <= 1, \
        "must be in [0, 1]"
    yield "train.models", isinstance(t.models, tuple) and len(t.models) > 0 \
        and all(isinstance(k, str) for k in t.models) and len(set(t.models)) == len(t.models), \
        f"must be a non-empty list of distinct model kinds (built in: {list(KINDS)}; registered ones too)"
    for k in ("steps", "log_every", "eval_every", "val_patches"):
        yield f"train.{k}", _int(getattr(t, k), 1), "must be a positive integer"
    yield "train.max_seconds", t.max_seconds is None or (_num(t.max_seconds) and t.max_seconds > 0), \
        "must be None or a positive number of seconds"
    yield "train.ema_decay", _num(t.ema_decay) and 0 <= t.ema_decay < 1, "must be in [0, 1)"
    yield "infer.overlap", _num(i.overlap) and 0 <= i.overlap < 1, "must be in [0, 1)"
    yield "infer.mirror", isinstance(i.mirror, bool), "must be true or false"
    for kind in i.kinds:
        yield f"infer.kinds.{kind}", kind in p.kinds, f"names no kind of plan.kinds ({list(p.kinds)})"
    for kind in p.kinds:
        yield infer_source(cfg, kind, "batch"), _int(infer_settings(cfg, kind).batch, 1), "must be a positive integer"


def _kind_rules(cfg: Config):
    """(key, ok, what) for each kind's plan entry, the values it inherits checked under the key they come from."""
    p = cfg.plan
    for kind, own in p.kinds.items():
        chain = p.lineage(kind)
        yield f"plan.kinds.{kind}.inherits_from", own.inherits_from is None or (
            own.inherits_from in p.kinds and chain[-1] in p.kinds and p.kinds[chain[-1]].inherits_from is None), \
            f"must be None or another kind of plan.kinds ({list(p.kinds)}), without a cycle"
        e = p.entry(kind)
        yield p.source(kind, "spatial_dims"), e.spatial_dims in (2, 3), \
            "must be 2 (slices) or 3 (volume patches); a new kind sets it or inherits_from a kind"
        yield p.source(kind, "patch"), e.patch is None or _ints(e.patch, e.spatial_dims), \
            f"must be None (from the data) or {e.spatial_dims} positive integers"
        yield p.source(kind, "batch"), _int(e.batch, 1), "must be a positive integer"
        yield p.source(kind, "max_patch_voxels"), e.patch is not None or _int(e.max_patch_voxels, 1), \
            "must be a positive integer (the budget of a patch derived from the data)"


def _stage_widths(m: dict, depth: int) -> list[int]:
    return [min(m["features"] * m["growth"] ** i, m["max_features"]) for i in range(depth + 1)]


def model_rules(m: dict, depth: int, group_size: int = 8):
    """(field, ok, what) for a U-Net's options `m` (the ModelConfig fields): one kind's settings here (the shared
    `model` section with the kind's on top), and `heartjax.model.unet.UNetConfig.validate` for a network built
    directly; one rule per option for both."""
    yield "features", _int(m["features"], 1), "must be a positive integer"
    yield "max_features", _int(m["max_features"], 1) and m["max_features"] >= m["features"], \
        "must be an integer >= features"
    yield "growth", _int(m["growth"], 1), "must be a positive integer"
    yield "norm", m["norm"] in NORMS, f"must be one of {list(NORMS)}"
    yield "norm", m["norm"] != "group" or not any(f % min(group_size, f) for f in _stage_widths(m, depth)), \
        f"'group' needs every stage width {_stage_widths(m, depth)} divisible by the group size {group_size}"
    yield "dropout", _num(m["dropout"]) and 0 <= m["dropout"] < 1, "must be in [0, 1)"
    yield "upsample", m["upsample"] in UPSAMPLES, f"must be one of {list(UPSAMPLES)}"
    yield "activation", m["activation"] in ACTIVATIONS, f"must be one of {list(ACTIVATIONS)}"
    yield "deep_supervision", isinstance(m["deep_supervision"], bool), "must be true or false"
    yield "dtype", m["dtype"] in DTYPES, f"must be one of {list(DTYPES)}"
    yield "conv_impl", m["conv_impl"] in CONV_IMPLS, f"must be one of {list(CONV_IMPLS)}"


def _model_key(cfg: Config, kind: str, field: str) -> str:
    """The key a kind's U-Net field comes from: the kind's own section where it sets it, else `model`."""
    section = model_section(cfg, kind)
    return f"{section}.{field}" if section and getattr(get(cfg, section), field) is not None else f"model.{field}"


def validate(cfg: Config) -> Config:
    """Check every setting that can be checked before any work starts; HeartjaxError names the key, its value and
    what is allowed. Returns cfg."""
    if not isinstance(cfg, Config):
        raise HeartjaxError(f"expected a heartjax.config.Config, got {type(cfg).__name__}")
    for key, ok, what in _rules(cfg):
        if not ok:
            raise HeartjaxError(f"config setting {key}={get(cfg, key)!r} is invalid: {what}")
    for section in ("optim", "augment"):  # the pieces' dataclasses check themselves (their errors name the key)
        try:
            getattr(cfg, section).validate()
        except HeartjaxError as e:
            raise HeartjaxError(f"config section {section}: {e}") from None
    for kind in cfg.plan.kinds:  # every kind's network, so a bad value fails before the first model trains
        settings = unet_settings(cfg, kind)
        for field, ok, what in model_rules(settings, cfg.plan.depth):
            if not ok:
                key = _model_key(cfg, kind, field)
                raise HeartjaxError(f"config setting {key}={get(cfg, key)!r} is invalid: {what}")
    return cfg
