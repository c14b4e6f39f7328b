"""How each kind of pytree leaf is checkpointed: flattened to arrays with a record (path, shape, dtype, key type)
on save, matched against the abstract state, read into the right targets and converted back on restore. Used by
`heartjax.train.checkpoint`, which owns the files.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from heartjax.common.errors import HeartjaxError


def is_key(x) -> bool:
    """True for typed PRNG key arrays (concrete or abstract)."""
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def leaf_kind(x) -> str:
    """How a leaf is stored and rebuilt: key, jax, numpy, numpy_scalar or python."""
    if is_key(x):
        return "key"
    if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
        return "jax"
    if isinstance(x, np.ndarray):
        return "numpy"
    if isinstance(x, np.generic):
        return "numpy_scalar"
    if isinstance(x, (bool, int, float)):
        return "python"
    raise TypeError(f"checkpoint: unsupported pytree leaf of type {type(x).__name__}; use arrays or scalars")


def describe(x) -> tuple[list[int], str]:
    """Shape and dtype name of a leaf as recorded in the checkpoint."""
    if leaf_kind(x) == "python":
        x = np.asarray(x)
    return [int(d) for d in x.shape], str(x.dtype)


def exact_cast(value: np.ndarray, dtype) -> np.ndarray | None:
    """value cast to dtype, or None when the cast would change any value (NaNs compare equal)."""
    cast = value.astype(dtype)
    back = cast.astype(value.dtype)
    try:
        same = np.array_equal(back, value, equal_nan=True)
    except TypeError:  # equal_nan needs a float-like dtype
        same = np.array_equal(back, value)
    return cast if same else None


def flatten(state) -> tuple[dict, list[dict]]:
    """The leaves of a state as orbax saves them ({leaf_i: array}) and their records (path, shape, dtype)."""
    leaves, records = {}, []
    for i, (path, leaf) in enumerate(jax.tree_util.tree_flatten_with_path(state)[0]):
        kind = leaf_kind(leaf)
        shape, dtype = describe(leaf)
        record = {"path": jax.tree_util.keystr(path), "shape": shape, "dtype": dtype}
        if kind == "key":
            record["key_impl"] = str(jax.random.key_impl(leaf))
            leaf = jax.random.key_data(leaf)
        elif kind in ("numpy_scalar", "python"):
            leaf = np.asarray(leaf)
        leaves[f"leaf_{i:05d}"] = leaf
        records.append(record)
    return leaves, records


def check_match(entry: Path, records: list[dict], paths_leaves: list) -> None:
    """HeartjaxError when the saved leaves (paths, shapes, key types) do not match the abstract state's."""
    problems = []
    saved_paths = [r["path"] for r in records]
    want_paths = [jax.tree_util.keystr(path) for path, _ in paths_leaves]
    if saved_paths != want_paths:
        missing = [p for p in want_paths if p not in saved_paths]
        extra = [p for p in saved_paths if p not in want_paths]
        problems.append(f"it holds {len(records)} arrays, the current state {len(paths_leaves)}; "
                        f"missing from the checkpoint: {', '.join(missing[:5]) or 'none'}; "
                        f"not in the current state: {', '.join(extra[:5]) or 'none'}")
    for record, (path, leaf) in zip(records, paths_leaves) if not problems else ():
        shape, dtype = describe(leaf)
        want = f"{jax.tree_util.keystr(path)} {dtype}{shape}"
        got = f"{record['path']} {record['dtype']}{record['shape']}"
        keys_differ = ("key_impl" in record) != is_key(leaf) or (is_key(leaf) and dtype != record["dtype"])
        if record["path"] != jax.tree_util.keystr(path) or record["shape"] != shape or keys_differ:
            problems.append(f"saved {got}, expected {want}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} differences)" if len(problems) > 5 else "")
        raise HeartjaxError(
            f"checkpoint {entry} does not match the current train state: {shown}. The model or optimiser "
            f"config changed since it was saved: resume with the same config, or start without --resume."
        )


def restore_targets(paths_leaves: list, records: list[dict]) -> dict:
    """What orbax restores each leaf into: typed keys as their data, jax arrays in the saved dtype."""
    targets = {}
    for i, (_, leaf) in enumerate(paths_leaves):
        kind = leaf_kind(leaf)
        if kind == "key":
            data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(leaf.shape, leaf.dtype))
            targets[f"leaf_{i:05d}"] = jax.ShapeDtypeStruct(data.shape, data.dtype)
        elif kind == "jax":  # read in the saved dtype; a differing abstract dtype is cast below if lossless
            # without a target sharding (e.g. predict on one device), the first device, never the saved
            # layout, which may name devices of another machine
            sharding = getattr(leaf, "sharding", None) or jax.sharding.SingleDeviceSharding(jax.devices()[0])
            saved = jax.numpy.dtype(records[i]["dtype"])
            targets[f"leaf_{i:05d}"] = jax.ShapeDtypeStruct(leaf.shape, saved, sharding=sharding)
        else:
            targets[f"leaf_{i:05d}"] = np.empty(describe(leaf)[0], jax.numpy.dtype(records[i]["dtype"]))
    return targets


def convert_restored(entry: Path, raw: dict, records: list[dict], paths_leaves: list) -> list:
    """The restored leaves in the abstract state's types, dtypes (exact casts only) and shardings."""
    restored, lossy = [], []
    for i, (record, (path, leaf)) in enumerate(zip(records, paths_leaves)):
        value, kind = raw[f"leaf_{i:05d}"], leaf_kind(leaf)
        sharding = getattr(leaf, "sharding", None) if kind in ("key", "jax") else None
        dtype = describe(leaf)[1]
        if kind != "key" and dtype != record["dtype"]:  # e.g. Python int saved as int64, abstract int32
            value = exact_cast(np.asarray(value), jax.numpy.dtype(dtype))
            if value is None:
                lossy.append(f"{jax.tree_util.keystr(path)} {record['dtype']} -> {dtype}")
                continue
        if kind == "key":
            value = jax.random.wrap_key_data(jax.numpy.asarray(value), impl=record["key_impl"])
        elif kind == "jax" and not isinstance(value, jax.Array):
            value = jax.numpy.asarray(value)
        elif kind == "numpy":
            value = np.asarray(value)
        elif kind == "numpy_scalar":
            value = np.asarray(value)[()]
        elif kind == "python":
            value = type(leaf)(np.asarray(value).item())
        if sharding is not None and value.sharding != sharding:
            value = jax.device_put(value, sharding)
        restored.append(value)
    if lossy:
        raise HeartjaxError(
            f"checkpoint {entry}: the current state asks for other dtypes and the saved values do not fit "
            f"them exactly: {'; '.join(lossy[:5])}. Resume with the same config (dtype settings), or start "
            f"without --resume."
        )
    return restored
