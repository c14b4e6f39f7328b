"""Every config key with its value, type and meaning (`--show-config`), and the flag/override and resume rules.

A key's meaning is the comment on its field's line in the schema (`heartjax.config.schema`, `options`, `augment`);
a kind's section (`model_2d`, ...) takes `model`'s meaning for the fields it shares. Comments are read from the
source, so a field documents itself where it is defined.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any, Iterable, Mapping

from heartjax.config.schema import Config, ModelConfig
from heartjax.common.errors import HeartjaxError

# The settings a resumed run may change: how long it trains and how often it logs and evaluates. Every other key
# is fixed by the run folder (changing it would mix two experiments in one run).
RESUMABLE = ("train.steps", "train.max_seconds", "train.log_every", "train.eval_every")

_FIELD = re.compile(r"^\s{4}(\w+)\s*:[^#]*#\s*(.+?)\s*$")


def _comments(cls) -> dict[str, str]:
    """{field: its line's comment} of a dataclass, from its source (empty for a generated class)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    return {m.group(1): m.group(2) for m in map(_FIELD.match, source.splitlines()) if m}


def _meaning(cls, name: str) -> str:
    for klass in cls.__mro__:
        if dataclasses.is_dataclass(klass) and name in _comments(klass):
            return _comments(klass)[name]
    shared = _comments(ModelConfig).get(name)  # a kind's section: the shared model field, None takes it
    return f"{shared} (None: model.{name})" if shared and name in {f.name for f in dataclasses.fields(cls)} else ""


def rows(cfg: Config, node: Any = None, prefix: str = "") -> list[tuple[str, Any, str, str]]:
    """(key, value, type, meaning) of every leaf key, in schema order."""
    node = cfg if node is None else node
    out = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            out += rows(cfg, value, f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, value, str(f.type), _meaning(type(node), f.name)))
    return out


def table(cfg: Config, title: str = "") -> str:
    """`--show-config`: one line per key, `key = value  (type)  meaning`, aligned."""
    items = [(k, repr(v), t, m) for k, v, t, m in rows(cfg)]
    wk, wv, wt = (max(len(r[i]) for r in items) for i in range(3))
    lines = [title] if title else []
    lines += [f"{'key':<{wk}}   {'value':<{wv}}  {'type':<{wt}}  meaning"]
    lines += [f"{k:<{wk}} = {v:<{wv}}  {t:<{wt}}  {m}".rstrip() for k, v, t, m in items]
    return "\n".join(lines)


def override_keys(overrides: Iterable[str]) -> dict[str, str]:
    """{dotted key: the override text} of `key=value` strings (the last one of a key wins)."""
    return {item.split("=", 1)[0].strip(): item for item in overrides if "=" in item}


def check_flag_conflicts(flags: Mapping[str, tuple[str, Any]], overrides: Iterable[str], parse) -> None:
    """Refuse a `key=value` override that contradicts a flag. flags: {config key: (the flag as typed, value)};
    parse: the override value parser. An override equal to the flag's value is allowed."""
    given = override_keys(overrides)
    for key, (flag, value) in flags.items():
        if key in given and parse(given[key].split("=", 1)[1]) != value:
            raise HeartjaxError(f"{flag} and {given[key]} contradict each other (both set {key}); give one of them")


def changed_keys(old: Config, new: Config) -> dict[str, tuple[Any, Any]]:
    """{key: (old, new)} of the leaf keys whose values differ."""
    before = {k: v for k, v, _, _ in rows(old)}
    return {k: (before[k], v) for k, v, _, _ in rows(new) if before.get(k) != v}


def check_resumable(old: Config, new: Config) -> dict[str, tuple[Any, Any]]:
    """The changes a resume applies ({key: (old, new)} within RESUMABLE); any other change is refused by name."""
    changed = changed_keys(old, new)
    fixed = {k: v for k, v in changed.items() if k not in RESUMABLE}
    if fixed:
        what = ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in fixed.items())
        raise HeartjaxError(f"--resume cannot change {what}: the run folder fixes it; only {', '.join(RESUMABLE)} "
                            f"may change on resume (start a new run with --out to change the others)")
    return changed
