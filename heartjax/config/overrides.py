"""Config values from text and trees: `dotted.key=value` overrides, nested dicts (presets, config.json), JSON.

An override may only set a key that exists (a typo is an error naming it and listing the known keys); the value
is parsed as a Python literal (numbers, booleans, None, lists, tuples, quoted or bare strings).
"""

from __future__ import annotations

import ast
import dataclasses
import json
from typing import Any, Iterable, Mapping

from heartjax.config.schema import Config, get  # noqa: F401 (get: part of this module's API)
from heartjax.config.validation import validate
from heartjax.errors import HeartjaxError


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
