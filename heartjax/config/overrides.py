"""Config values from text and trees: `dotted.key=value` overrides, nested dicts (presets, config.json), JSON.

An override may only set a key that exists (a typo is an error naming it and listing the known keys); the value
is parsed as a Python literal (numbers, booleans, None, lists, tuples, quoted or bare strings).
"""

from __future__ import annotations

import ast
import dataclasses
import json
from typing import Any, Iterable, Mapping

from heartjax.config.presets import RENAMED_KEYS
from heartjax.config.schema import Config, get, walk
from heartjax.config.validation import validate
from heartjax.common.errors import HeartjaxError


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


def _fields(node) -> list[str]:
    return list(node) if isinstance(node, dict) else [f.name for f in dataclasses.fields(node)]


def _set_entry(table: dict, entry: type, parts: list[str], value, key: str) -> dict:
    """A copy of a kinds table with the value at `parts` (a kind, then a field) set; an unknown kind is added."""
    try:
        old, n = walk(table, parts, key)
    except KeyError:  # a new kind: validation refuses it unless it inherits from a kind or names its spatial_dims
        old, n = entry(), 1
    name = ".".join(parts[:n])
    if len(parts) == n:
        raise HeartjaxError(f"config setting {key!r} is a group; set one of its keys: {_fields(old)}")
    return type(table)({**table, name: _set(old, parts[n:], value, key)})


def _set(node, parts: list[str], value, key: str):
    """A copy of dataclass `node` with the field at `parts` set to `value`."""
    names = _fields(node)
    if parts[0] not in names:
        raise HeartjaxError(f"unknown config setting {key!r}; known keys here: {names}")
    old, field = getattr(node, parts[0]), {f.name: f for f in dataclasses.fields(node)}[parts[0]]
    if isinstance(old, dict):
        if len(parts) == 1:
            raise HeartjaxError(f"config setting {key!r} is a table of kinds; set one of its kinds' keys "
                                f"({key}.KIND.KEY), kinds: {list(old)}")
        return dataclasses.replace(node, **{parts[0]: _set_entry(old, field.metadata["entry"], parts[1:], value, key)})
    if len(parts) > 1:
        if not dataclasses.is_dataclass(old):
            raise HeartjaxError(f"unknown config setting {key!r}: {parts[0]!r} is a value, not a group")
        return dataclasses.replace(node, **{parts[0]: _set(old, parts[1:], value, key)})
    if dataclasses.is_dataclass(old):
        raise HeartjaxError(f"config setting {key!r} is a group; set one of its keys: {_fields(old)}")
    try:
        return dataclasses.replace(node, **{parts[0]: tupled(value)})
    except HeartjaxError as e:  # a piece's own dataclass validates on construction
        raise HeartjaxError(f"config setting {key}={value!r} is invalid: {e}") from None


def _override_parts(cfg: Config, parts: list[str], value: Any) -> Config:
    key = ".".join(parts)
    if key in RENAMED_KEYS:  # a key of heartjax <= 0.5 (old run folders, study records, habits)
        key = RENAMED_KEYS[key]
        parts = key.split(".")
    return _set(cfg, parts, value, key)


def override(cfg: Config, key: str, value: Any) -> Config:
    """A copy of `cfg` with the dotted `key` set to `value` (not validated: see `validate`)."""
    return _override_parts(cfg, key.strip().split("."), value)


def apply_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """Apply `a.b=value` strings in order; unknown keys raise HeartjaxError."""
    for item in overrides:
        if "=" not in item:
            raise HeartjaxError(f"config override {item!r} must look like key.subkey=value")
        key, value = item.split("=", 1)
        cfg = override(cfg, key, parse_value(value))
    return cfg


def _is_group(cfg: Config, parts: list[str]) -> bool:
    """Whether `parts` names a group of keys: a section, a kinds table, or a kind's entry (new or not)."""
    try:
        if len(parts) > 1 and isinstance(get(cfg, ".".join(parts[:-1])), dict):
            return True
        node = get(cfg, ".".join(parts))
    except HeartjaxError:
        return False
    return dataclasses.is_dataclass(node) or isinstance(node, dict)


def apply_tree(cfg: Config, tree: Mapping, path: tuple[str, ...] = ()) -> Config:
    """Apply a nested dict of values (a preset, or a config.json) key by key; a kind's name is one key."""
    for k, v in tree.items():
        parts = [*path, k]
        if isinstance(v, Mapping) and _is_group(cfg, parts):
            cfg = apply_tree(cfg, v, tuple(parts))
        else:
            cfg = _override_parts(cfg, parts, v)
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
