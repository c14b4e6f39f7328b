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
from heartjax.train.leaves import check_match, convert_restored, flatten, restore_targets
from heartjax.train.parallel import sync

SLOTS = ("latest", "best")
_FORMAT = "heartjax-checkpoint-1"
_ENTRY = re.compile(r"^step_(\d+)_(\d+)$")


def _json_default(obj):
    """Make NumPy values and paths in caller metadata JSON-serialisable."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"checkpoint metadata: {type(obj).__name__} is not JSON-serialisable")


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


def _read_info(entry: Path) -> dict:
    """A checkpoint's metadata.json, checked for its format."""
    try:
        info = json.loads((entry / "metadata.json").read_text())
        if info.get("format") != _FORMAT:
            raise ValueError(f"unknown format {info.get('format')!r}")
    except (OSError, ValueError) as err:
        raise HeartjaxError(
            f"checkpoint {entry} is unreadable ({err}). Delete it to fall back to no checkpoint, "
            f"or start without --resume."
        ) from err
    return info


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

        leaves, records = flatten(state)

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
        info = _read_info(entry)

        paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_state)
        records = info["leaves"]
        check_match(entry, records, paths_leaves)

        targets = restore_targets(paths_leaves, records)
        try:
            raw = self._orbax.restore(entry / "state", args=ocp.args.StandardRestore(targets)) if targets else {}
        except Exception as err:  # orbax/tensorstore raise many types for missing or corrupt files
            raise HeartjaxError(
                f"checkpoint {entry} could not be read ({type(err).__name__}: {err}). Delete it, or start "
                f"without --resume."
            ) from err

        restored = convert_restored(entry, raw, records, paths_leaves)
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
