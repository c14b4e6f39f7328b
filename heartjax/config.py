"""Configs are nested dicts of plain data; command-line overrides are `dotted.key=value` strings.

An override may only set a key that exists (a typo is an error naming it), and the value is parsed as a Python
literal (numbers, booleans, None, lists, tuples, quoted or bare strings).
"""

from __future__ import annotations

import ast
import copy
import json
from typing import Any, Iterable, Mapping

from heartjax.errors import HeartjaxError


def parse_value(text: str) -> Any:
    """Parse an override value: a Python literal, or else the bare string (true/false/none are accepted too)."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: Mapping, overrides: Iterable[str]) -> dict:
    """Return a copy of `config` with each `a.b.c=value` override applied; unknown keys raise HeartjaxError."""
    cfg = copy.deepcopy(dict(config))
    for item in overrides:
        if "=" not in item:
            raise HeartjaxError(f"config override {item!r} must look like key.subkey=value")
        key, value = item.split("=", 1)
        node, parts = cfg, key.strip().split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                known = sorted(node) if isinstance(node, dict) else []
                raise HeartjaxError(f"unknown config setting {'.'.join(parts[: i + 1])!r} in override {item!r}; "
                                    f"known keys here: {known}")
            if i == len(parts) - 1:
                new = parse_value(value)
                old = node[part]
                if isinstance(old, dict):
                    raise HeartjaxError(f"config setting {key!r} is a group; set one of its keys: {sorted(old)}")
                if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
                    new = list(new)
                node[part] = new
            else:
                node = node[part]
    return cfg


def get(config: Mapping, key: str) -> Any:
    """Look up a dotted key."""
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def require(config: Mapping, key: str, ok: bool, what: str) -> None:
    """Raise HeartjaxError naming `key` and its value unless `ok`."""
    if not ok:
        raise HeartjaxError(f"config setting {key}={get(config, key)!r} is invalid: {what}")


def to_json(config: Mapping) -> str:
    """Pretty JSON of a config."""
    return json.dumps(config, indent=2, sort_keys=True)
