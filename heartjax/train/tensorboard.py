"""TensorBoard events for one model run, written with tensorboardX (no TensorFlow).

One ``SummaryWriter`` per model run (e.g. ``RUN/tb/2d`` and ``RUN/tb/3d``) so TensorBoard overlays the curves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np
import tensorboardX
from tensorboardX import summary as tbx_summary

from heartjax import config as config_lib
from heartjax.config import presets


class SummaryWriter:
    """TensorBoard event writer for one model run.

    Args:
      logdir: event folder, created if missing, e.g. ``RUN/tb/2d``.
      flush_secs: how often pending events are written to disk.
    """

    def __init__(self, logdir: str | Path, flush_secs: int = 30):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._writer = tensorboardX.SummaryWriter(logdir=str(self.logdir), flush_secs=flush_secs)
        self._last_step = 0

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Log scalars (Python/NumPy/JAX numbers) under tags such as "train/loss" or "val/dice/LV"."""
        self._last_step = max(self._last_step, int(step))
        for tag, value in values.items():
            self._writer.add_scalar(tag, float(value), int(step))

    def image(self, step: int, tag: str, image_hwc_uint8: np.ndarray) -> None:
        """Log one image: uint8 [H, W, 3] (RGB), [H, W, 1] or [H, W] (grey)."""
        image = np.asarray(image_hwc_uint8)
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ValueError(f"image {tag!r}: expected uint8 [H, W] or [H, W, 1|3|4], got {image.dtype} {image.shape}")
        self._last_step = max(self._last_step, int(step))
        self._writer.add_image(tag, image, int(step), dataformats="HWC" if image.ndim == 3 else "HW")

    def text(self, tag: str, text: str) -> None:
        """Log markdown text (e.g. the config in a ``` block) under exactly ``tag``, at step 0."""
        event = tbx_summary.text(tag, text)
        event.value[0].tag = tag  # tensorboardX appends "/text_summary"; keep the caller's tag
        self._writer.file_writer.add_summary(event, 0)

    def hparams(self, hparams: Mapping[str, object], metrics: Mapping[str, float], prefix: str = "hparams/") -> None:
        """Record this run's hyperparameters and final metrics for TensorBoard's HParams tab.

        Call once, at the end of the run. Values that are not bool/int/float/str are shown as JSON strings.
        Metrics are written as scalars (at the last step logged) under ``prefix + name`` (unless the name already
        starts with ``prefix``), and the HParams tab lists them under those tags. ``prefix=""`` keeps the names
        as given, e.g. "test/mean_dice": one clean tag per metric.
        """
        clean = {}
        for name, value in hparams.items():
            if isinstance(value, np.generic):
                value = value.item()
            if not isinstance(value, (bool, int, float, str)):
                value = json.dumps(value, default=str)
            clean[name] = value
        tags = {name if name.startswith(prefix) else f"{prefix}{name}": float(v) for name, v in metrics.items()}
        for event in tbx_summary.hparams(clean, tags):  # experiment, session start, session end
            self._writer.file_writer.add_summary(event, self._last_step)
        for tag, value in tags.items():
            self._writer.add_scalar(tag, value, self._last_step)

    def flush(self) -> None:
        """Write pending events to disk."""
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()

    def __enter__(self) -> "SummaryWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NullWriter:
    """A SummaryWriter that writes nothing (processes other than 0 of a multi-process run)."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _flat(tree: Mapping, prefix: str = "") -> dict:
    """Nested dicts as {"a.b": value}."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def closest_preset(cfg) -> str:
    """The preset (heartjax.config.presets) whose config differs from `cfg` in the fewest keys (the first on a tie)."""
    flat = _flat(config_lib.to_dict(cfg))

    def distance(name):
        ref = _flat(config_lib.to_dict(config_lib.apply_tree(config_lib.Config(), presets.PRESETS[name])))
        return sum(ref.get(k) != v for k, v in flat.items())

    return min(presets.PRESETS, key=distance)


def run_hparams(cfg, kind: str) -> dict:
    """A run's HParams: kind, preset (the closest), seed, data seed, and every config key that differs from the
    defaults (heartjax.config.Config()), by its dotted name."""
    flat, default = _flat(config_lib.to_dict(cfg)), _flat(config_lib.to_dict(config_lib.Config()))
    changed = {k: v for k, v in sorted(flat.items()) if default.get(k) != v and k not in ("seed", "data.seed")}
    return {"kind": kind, "preset": closest_preset(cfg), "seed": cfg.seed, "data.seed": cfg.data.seed, **changed}


def log_test(writer, result: Mapping, hparams: Mapping, best_val_dice: float) -> None:
    """A model's test scores as scalars `test/dice/<name>`, `test/hd95/<name>`, `test/mean_dice`,
    `test/mean_hd95`, `test/whole_heart_dice` (and `val/best_dice_ema`), at the last step logged; they are also
    the HParams metrics. `result`: heartjax.eval.scoring.model_results's dict (None where undefined)."""
    metrics = {"test/mean_dice": result.get("mean_dice"), "test/whole_heart_dice": result.get("whole_heart_dice"),
               "val/best_dice_ema": best_val_dice}
    hd95 = [s.get("hd95_mean") for s in result["per_structure"].values()]
    hd95 = [v for v in hd95 if v is not None and np.isfinite(v)]
    metrics["test/mean_hd95"] = float(np.mean(hd95)) if hd95 else None
    for name, s in result["per_structure"].items():
        metrics[f"test/dice/{name}"], metrics[f"test/hd95/{name}"] = s.get("dice_mean"), s.get("hd95_mean")
    writer.hparams(hparams, {k: v for k, v in metrics.items() if v is not None and np.isfinite(v)}, prefix="")
