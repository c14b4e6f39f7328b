"""Checkpoints of a train state in two slots per run, "latest" and "best", each an orbax ``CheckpointManager``.

The only module that imports orbax. Layout (docs/checkpoints.md): ``SLOT/step_00000120/{state,info}``, orbax's
arrays and our JSON (step, caller metadata, leaf paths/shapes/dtypes); "best" entries add ``metrics``. orbax
commits atomically (a save is written to ``step_N.orbax-checkpoint-tmp-*`` and renamed when complete, so a
process killed at any point leaves the previous or the new checkpoint; leftovers go when the slot is next
opened), keeps the newest "latest" and the "best" with the highest validation Dice (``best_fn``), saves
collectively in a multi-process run (every process calls `save`), and restores on any device count (the
target's shardings). Saves are asynchronous on accelerators (the commit finishes in the background; `restore`,
`latest_step`, `wait`, `close` and interpreter exit wait for it), synchronous on the CPU.

A save at or below a slot's saved steps (a resumed run retracing a killed one) first deletes those saves (an
abandoned timeline). The layout before orbax's manager (``SLOT/step_00000120_000007/{state,metadata.json}``)
still restores; the first save into such a slot removes it. The pytree is flattened before it reaches orbax, so
any pytree works: typed PRNG keys are stored as key data plus the implementation name, Python and NumPy scalars
as 0-d arrays (returned as the abstract leaf's type).
"""

from __future__ import annotations

import atexit
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from heartjax.common.errors import HeartjaxError
from heartjax.train.leaves import check_match, convert_restored, flatten, restore_targets

SLOTS = ("latest", "best")
_FORMAT = "heartjax-checkpoint-1"
_OLD_ENTRY = re.compile(r"^step_(\d+)_(\d+)$")  # the hand-written layout before CheckpointManager: step, save number
_METRIC = "val_dice"


def _json_default(obj):
    """Make NumPy values and paths in caller metadata JSON-serialisable."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"checkpoint metadata: {type(obj).__name__} is not JSON-serialisable")


class Checkpointer:
    """Saves and restores a train state in the "latest" and "best" slots of one directory.

    Args:
      directory: checkpoint folder of one model run, e.g. ``RUN/checkpoints/2d``. Created (with its slots) on
        the first save, so pointing a reader at a mistyped path creates nothing.
      asynchronous: save in the background; default: on accelerators only (the CPU saves synchronously).
    """

    def __init__(self, directory: str | Path, asynchronous: bool | None = None):
        self.directory = Path(directory).absolute()  # orbax refuses relative paths
        self.asynchronous = jax.default_backend() != "cpu" if asynchronous is None else asynchronous
        self._managers: dict[str, ocp.CheckpointManager] = {}
        self._closed = False
        if self.asynchronous:
            atexit.register(self.close)  # a pending save commits before the interpreter exits

    def _slot_dir(self, slot: str) -> Path:
        if slot not in SLOTS:
            raise ValueError(f"checkpoint slot must be one of {SLOTS}, got {slot!r}")
        return self.directory / slot

    def _manager(self, slot: str, create: bool = False) -> ocp.CheckpointManager | None:
        """The slot's manager; None when the slot folder does not exist and `create` is False."""
        slot_dir = self._slot_dir(slot)
        if slot not in self._managers:
            if not create and not slot_dir.is_dir():
                return None
            best = {"best_fn": lambda m: m[_METRIC], "best_mode": "max",
                    "keep_checkpoints_without_metrics": False} if slot == "best" else {}
            options = ocp.CheckpointManagerOptions(
                max_to_keep=1, step_prefix="step", step_format_fixed_length=8, create=True,
                cleanup_tmp_directories=True, enable_async_checkpointing=self.asynchronous, **best)
            self._managers[slot] = ocp.CheckpointManager(slot_dir, options=options)
        return self._managers[slot]

    def _old_entries(self, slot: str) -> list[tuple[int, int, Path]]:
        """Entries of the layout before CheckpointManager as (save number, step, path), oldest first."""
        slot_dir = self._slot_dir(slot)
        found = [(int(m.group(2)), int(m.group(1)), p) for p in (slot_dir.iterdir() if slot_dir.is_dir() else ())
                 if (m := _OLD_ENTRY.match(p.name)) and (p / "metadata.json").is_file()]
        return sorted(found)

    def save(self, slot: str, step: int, state: Any, metadata: dict, metric: float | None = None) -> None:
        """Write ``state`` (any pytree of arrays/scalars/typed keys) and JSON ``metadata`` as a save of ``slot``.

        "latest" keeps its newest save; "best" the save with the highest ``metric`` (default:
        ``metadata["best_ema"]``, the loop state's validation Dice EMA). The save commits atomically (a crash
        leaves the previous or the new checkpoint restorable); synchronous saves return when committed.
        ``metadata`` comes back from ``restore`` as JSON gives it (tuples become lists, NumPy scalars numbers).
        """
        if self._closed:
            raise RuntimeError("Checkpointer.save called after close()")
        if self._slot_dir(slot).name == "best":
            metric = metadata.get("best_ema") if metric is None else metric
            if metric is None:
                raise ValueError('a "best" save needs its validation Dice: metric=... or metadata["best_ema"]')
            metric = float(metric) if math.isfinite(float(metric)) else -math.inf
        leaves, records = flatten(state)
        info = {"format": _FORMAT, "step": int(step), "metadata": metadata, "leaves": records}
        info = json.loads(json.dumps(info, default=_json_default))  # fail before writing anything
        manager = self._manager(slot, create=True)
        manager.wait_until_finished()
        for stale in [s for s in manager.all_steps() if s >= step]:  # an abandoned timeline's saves
            manager.delete(stale)
        items = {"info": ocp.args.JsonSave(info)}
        if leaves:  # orbax refuses an empty tree
            items["state"] = ocp.args.StandardSave(leaves)
        old = [p for *_, p in self._old_entries(slot)]  # listed by every process before anyone removes them
        manager.save(int(step), args=ocp.args.Composite(**items), force=True,
                     metrics={_METRIC: metric} if slot == "best" else None)
        if old:  # the new save replaces the old layout once it has committed
            manager.wait_until_finished()
        if old and jax.process_index() == 0:
            for path in old:
                path.rename(path.with_name(f".old_{path.name}"))  # never taken for a checkpoint half-deleted
            for path in self._slot_dir(slot).iterdir():  # and the old layout's leftovers
                if path.name.startswith((".old_step_", ".tmp_step_")):
                    shutil.rmtree(path, ignore_errors=True)

    def _newest(self, slot: str) -> tuple[int, Path] | tuple[None, Path | None]:
        """(step, folder) of the save `restore` reads: the manager's, else the old layout's newest, else None."""
        manager = self._manager(slot)
        if manager is not None:
            manager.wait_until_finished()
            manager.reload()  # another process (or a resumed run) may have written since
            steps = manager.all_steps()
            if steps:
                best = manager.best_step() if slot == "best" else None
                step = max(steps) if best is None else best
                return step, self._slot_dir(slot) / f"step_{step:08d}"
        old = self._old_entries(slot)
        return (old[-1][1], old[-1][2]) if old else (None, None)

    def latest_step(self, slot: str = "latest") -> int | None:
        """Step of the save ``restore`` would read from ``slot``, or None if the slot holds none."""
        return self._newest(slot)[0]

    def wait(self) -> None:
        """Block until pending asynchronous saves have committed."""
        for manager in self._managers.values():
            manager.wait_until_finished()

    def _read(self, slot: str, step: int, entry: Path, targets: dict | None) -> dict:
        """The saved info (targets None) or the leaves read into `targets`, from either layout."""
        if entry.name != f"step_{step:08d}":  # the layout before CheckpointManager
            if targets is None:
                return json.loads((entry / "metadata.json").read_text())
            reader = ocp.Checkpointer(ocp.StandardCheckpointHandler())
            try:
                return reader.restore(entry / "state", args=ocp.args.StandardRestore(targets))
            finally:
                reader.close()
        item = {"info": ocp.args.JsonRestore()} if targets is None else {"state": ocp.args.StandardRestore(targets)}
        return self._manager(slot).restore(step, args=ocp.args.Composite(**item))["info" if targets is None
                                                                                  else "state"]

    def restore(self, slot: str, abstract_state: Any) -> tuple[Any, dict]:
        """Restore the save of ``slot`` ("latest": the newest; "best": the best) into ``abstract_state``.

        Args:
          slot: "latest" or "best".
          abstract_state: a pytree with the structure, shapes and dtypes of the saved state (the live state or
            ``jax.eval_shape`` of its constructor). Each leaf comes back as its abstract leaf's type: jax arrays
            (on the leaf's sharding when it has one), NumPy arrays and scalars, Python scalars, typed keys.
        Returns:
          (state, metadata): the restored pytree, bitwise equal to what was saved, and the caller's metadata dict.
          Where an abstract dtype differs from the saved one (a Python int saved as int64 and an eval_shape
          target of int32), the values are cast only if the cast is exact.
        Raises:
          HeartjaxError naming the folder when there is no checkpoint, it is unreadable, or its leaves do not
          match ``abstract_state`` (paths, shapes, key types, or dtypes that would change values).
        """
        step, entry = self._newest(slot)
        if step is None:
            raise HeartjaxError(
                f"no {slot!r} checkpoint in {self._slot_dir(slot)}: the folder is missing or holds no completed "
                f"save. Start without --resume, or point the run directory at a run that has checkpoints.")
        try:
            info = self._read(slot, step, entry, None)
            if info.get("format") != _FORMAT:
                raise ValueError(f"unknown format {info.get('format')!r}")
        except Exception as err:  # orbax raises many types for a missing or corrupt item
            raise HeartjaxError(f"checkpoint {entry} is unreadable ({type(err).__name__}: {err}). Delete it to "
                                f"fall back to no checkpoint, or start without --resume.") from err
        paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_state)
        check_match(entry, info["leaves"], paths_leaves)
        targets = restore_targets(paths_leaves, info["leaves"])
        try:
            raw = self._read(slot, step, entry, targets) if targets else {}
        except Exception as err:  # orbax/tensorstore raise many types for missing or corrupt files
            raise HeartjaxError(f"checkpoint {entry} could not be read ({type(err).__name__}: {err}). Delete it, "
                                f"or start without --resume.") from err
        restored = convert_restored(entry, raw, info["leaves"], paths_leaves)
        return jax.tree_util.tree_unflatten(treedef, restored), info["metadata"]

    def close(self) -> None:
        """Wait for pending saves and release orbax resources; the object cannot save afterwards."""
        if not self._closed:
            self._closed = True
            for manager in self._managers.values():
                manager.close()
            atexit.unregister(self.close)  # a no-op when synchronous

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
