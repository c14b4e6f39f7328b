"""Checkpoints of a train state: two slots per run ("latest" and "best"), each keeping only its newest save.

The only module that imports orbax. Layout of one checkpoint directory (e.g. ``RUN/checkpoints/2d``)::

    latest/step_00000120_000007/state/          orbax (tensorstore) arrays, one per pytree leaf
    latest/step_00000120_000007/metadata.json   step, caller metadata, leaf paths/shapes/dtypes
    best/step_00000100_000003/...

The last number counts saves in the slot, so re-saving the same step still produces a newer entry.

Atomicity: a save is written to a hidden ``.tmp_*`` directory beside the committed ones and renamed into place
only when complete; older entries are then renamed to a hidden ``.old_*`` name and deleted. A process killed at
any point (SIGKILL included) therefore leaves the previous checkpoint, or the new one, restorable; hidden
leftovers are ignored and removed by the next save. Durability against power loss additionally depends on the
filesystem (metadata.json and the rename are fsynced; orbax's array files are not). One writer per directory,
in one process; a multi-process run saves collectively (every process calls `save`; orbax writes the arrays,
process 0 the metadata and the commit) and restores on any device count (the target's shardings).

The pytree is flattened before it reaches orbax, so any pytree works (dicts, dataclasses, NNX states, optax
states). Typed PRNG keys (``jax.random.key``) are stored as ``jax.random.key_data`` plus the implementation
name and wrapped back on restore; Python and NumPy scalars are stored as 0-d arrays and returned as the type of
the abstract leaf.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from heartjax.errors import HeartjaxError
from heartjax.train.parallel import sync

SLOTS = ("latest", "best")
_FORMAT = "heartjax-checkpoint-1"
_ENTRY = re.compile(r"^step_(\d+)_(\d+)$")


def _is_key(x) -> bool:
    """True for typed PRNG key arrays (concrete or abstract)."""
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _leaf_kind(x) -> str:
    """How a leaf is stored and rebuilt: key, jax, numpy, numpy_scalar or python."""
    if _is_key(x):
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


def _describe(x) -> tuple[list[int], str]:
    """Shape and dtype name of a leaf as recorded in metadata.json."""
    if _leaf_kind(x) == "python":
        x = np.asarray(x)
    return [int(d) for d in x.shape], str(x.dtype)


def _json_default(obj):
    """Make NumPy values and paths in caller metadata JSON-serialisable."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"checkpoint metadata: {type(obj).__name__} is not JSON-serialisable")


def _exact_cast(value: np.ndarray, dtype) -> np.ndarray | None:
    """value cast to dtype, or None when the cast would change any value (NaNs compare equal)."""
    cast = value.astype(dtype)
    back = cast.astype(value.dtype)
    try:
        same = np.array_equal(back, value, equal_nan=True)
    except TypeError:  # equal_nan needs a float-like dtype
        same = np.array_equal(back, value)
    return cast if same else None


def _fsync_dir(path: Path) -> None:
    """Persist a directory entry (rename) on POSIX filesystems."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Checkpointer:
    """Saves and restores a train state in the "latest" and "best" slots of one directory.

    Args:
      directory: checkpoint folder of one model run, e.g. ``RUN/checkpoints/2d``. Created (with its slots) on
        the first save, so pointing a reader at a mistyped path creates nothing.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory).absolute()  # orbax refuses relative paths
        self._orbax = ocp.Checkpointer(ocp.StandardCheckpointHandler())  # synchronous: save returns when done
        self._closed = False

    def _slot_dir(self, slot: str) -> Path:
        if slot not in SLOTS:
            raise ValueError(f"checkpoint slot must be one of {SLOTS}, got {slot!r}")
        return self.directory / slot

    def _entries(self, slot: str) -> list[tuple[int, int, Path]]:
        """Committed entries of a slot as (save number, step, path), oldest first."""
        slot_dir = self._slot_dir(slot)
        if not slot_dir.is_dir():
            return []
        found = []
        for child in slot_dir.iterdir():
            match = _ENTRY.match(child.name)
            if match and child.is_dir():
                found.append((int(match.group(2)), int(match.group(1)), child))
        return sorted(found)

    def save(self, slot: str, step: int, state: Any, metadata: dict) -> None:
        """Write ``state`` (any pytree of arrays/scalars/typed keys) and JSON ``metadata`` as the newest save of
        ``slot`` ("latest" or "best"), then delete the slot's older saves. Blocks until the checkpoint is
        committed; a crash at any point leaves the previous or the new checkpoint restorable. ``metadata`` comes
        back from ``restore`` as JSON gives it (tuples become lists; NumPy scalars become Python numbers).
        """
        if self._closed:
            raise RuntimeError("Checkpointer.save called after close()")
        slot_dir = self._slot_dir(slot)
        primary, multi = jax.process_index() == 0, jax.process_count() > 1
        if primary:
            slot_dir.mkdir(parents=True, exist_ok=True)
            for child in slot_dir.iterdir():  # leftovers of a crashed save or an interrupted delete
                if child.name.startswith((".tmp_", ".old_")):
                    shutil.rmtree(child, ignore_errors=True)

        leaves, records = {}, []
        for i, (path, leaf) in enumerate(jax.tree_util.tree_flatten_with_path(state)[0]):
            kind = _leaf_kind(leaf)
            shape, dtype = _describe(leaf)
            record = {"path": jax.tree_util.keystr(path), "shape": shape, "dtype": dtype}
            if kind == "key":
                record["key_impl"] = str(jax.random.key_impl(leaf))
                leaf = jax.random.key_data(leaf)
            elif kind in ("numpy_scalar", "python"):
                leaf = np.asarray(leaf)
            leaves[f"leaf_{i:05d}"] = leaf
            records.append(record)

        info = {"format": _FORMAT, "step": int(step), "metadata": metadata, "leaves": records}
        text = json.dumps(info, indent=1, default=_json_default)  # fail before writing anything
        entries = self._entries(slot)
        seq = entries[-1][0] + 1 if entries else 0
        name = f"step_{int(step):08d}_{seq:06d}"
        # Several processes write one checkpoint together: the same temporary name, orbax's collective save of
        # the arrays, then process 0 alone writes the metadata and commits (barriers in between).
        tmp = slot_dir / (f".tmp_{name}" if multi else f".tmp_{name}_{os.getpid()}")
        try:
            if primary:
                tmp.mkdir()
            sync(f"ckpt-{slot}-{name}-open")
            if leaves:  # orbax refuses an empty tree
                self._orbax.save(tmp / "state", args=ocp.args.StandardSave(leaves))
            if primary:
                with open(tmp / "metadata.json", "w") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
                _fsync_dir(tmp)
                os.rename(tmp, slot_dir / name)  # the commit point
        except BaseException:
            if primary:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        sync(f"ckpt-{slot}-{name}-committed")
        if not primary:
            return
        _fsync_dir(slot_dir)
        for _, _, old in entries:  # rename first so a half-deleted entry is never taken for a checkpoint
            trash = slot_dir / f".old_{old.name}_{os.getpid()}"
            os.rename(old, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def latest_step(self, slot: str = "latest") -> int | None:
        """Step of the newest committed save in ``slot``, or None if the slot holds none."""
        entries = self._entries(slot)
        return entries[-1][1] if entries else None

    def restore(self, slot: str, abstract_state: Any) -> tuple[Any, dict]:
        """Restore the newest save of ``slot`` into the structure of ``abstract_state``.

        Args:
          slot: "latest" or "best".
          abstract_state: a pytree with the structure, shapes and dtypes of the saved state: the live state,
            or ``jax.eval_shape`` of its constructor. Leaves that are jax arrays or ShapeDtypeStructs come back
            as jax arrays (on the leaf's sharding when it has one), NumPy leaves as NumPy, Python scalars as
            Python scalars, typed-key leaves as typed keys.
        Returns:
          (state, metadata): the restored pytree, bitwise equal to what was saved, and the caller's metadata dict.
          Where an abstract dtype differs from the saved one (a Python int saved as int64 and an eval_shape
          target of int32), the values are cast only if the cast is exact.
        Raises:
          HeartjaxError naming the directory when there is no checkpoint, it is unreadable, or its leaves do not
          match ``abstract_state`` (paths, shapes, key types, or dtypes that would change values).
        """
        slot_dir = self._slot_dir(slot)
        entries = self._entries(slot)
        if not entries:
            raise HeartjaxError(
                f"no {slot!r} checkpoint in {slot_dir}: the folder is missing or holds no completed save. "
                f"Start without --resume, or point the run directory at a run that has checkpoints."
            )
        entry = entries[-1][2]
        try:
            info = json.loads((entry / "metadata.json").read_text())
            if info.get("format") != _FORMAT:
                raise ValueError(f"unknown format {info.get('format')!r}")
        except (OSError, ValueError) as err:
            raise HeartjaxError(
                f"checkpoint {entry} is unreadable ({err}). Delete it to fall back to no checkpoint, "
                f"or start without --resume."
            ) from err

        paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_state)
        records = info["leaves"]
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
            shape, dtype = _describe(leaf)
            want = f"{jax.tree_util.keystr(path)} {dtype}{shape}"
            got = f"{record['path']} {record['dtype']}{record['shape']}"
            keys_differ = ("key_impl" in record) != _is_key(leaf) or (_is_key(leaf) and dtype != record["dtype"])
            if record["path"] != jax.tree_util.keystr(path) or record["shape"] != shape or keys_differ:
                problems.append(f"saved {got}, expected {want}")
        if problems:
            shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} differences)" if len(problems) > 5 else "")
            raise HeartjaxError(
                f"checkpoint {entry} does not match the current train state: {shown}. The model or optimiser "
                f"config changed since it was saved: resume with the same config, or start without --resume."
            )

        targets = {}
        for i, (_, leaf) in enumerate(paths_leaves):
            kind = _leaf_kind(leaf)
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
                targets[f"leaf_{i:05d}"] = np.empty(_describe(leaf)[0], jax.numpy.dtype(records[i]["dtype"]))
        try:
            raw = self._orbax.restore(entry / "state", args=ocp.args.StandardRestore(targets)) if targets else {}
        except Exception as err:  # orbax/tensorstore raise many types for missing or corrupt files
            raise HeartjaxError(
                f"checkpoint {entry} could not be read ({type(err).__name__}: {err}). Delete it, or start "
                f"without --resume."
            ) from err

        restored, lossy = [], []
        for i, (record, (path, leaf)) in enumerate(zip(records, paths_leaves)):
            value, kind = raw[f"leaf_{i:05d}"], _leaf_kind(leaf)
            sharding = getattr(leaf, "sharding", None) if kind in ("key", "jax") else None
            dtype = _describe(leaf)[1]
            if kind != "key" and dtype != record["dtype"]:  # e.g. Python int saved as int64, abstract int32
                value = _exact_cast(np.asarray(value), jax.numpy.dtype(dtype))
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
        return jax.tree_util.tree_unflatten(treedef, restored), info["metadata"]

    def close(self) -> None:
        """Release orbax resources; the object cannot save afterwards."""
        if not self._closed:
            self._orbax.close()
            self._closed = True

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
