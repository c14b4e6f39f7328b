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

    def hparams(self, hparams: Mapping[str, object], metrics: Mapping[str, float]) -> None:
        """Record this run's hyperparameters and final metrics for TensorBoard's HParams tab.

        Call once, at the end of the run. Values that are not bool/int/float/str are shown as JSON strings.
        Metrics are written as scalars under ``hparams/<name>`` (at the last step logged) so they never collide
        with training curves, and the HParams tab lists them under those tags.
        """
        clean = {}
        for name, value in hparams.items():
            if isinstance(value, np.generic):
                value = value.item()
            if not isinstance(value, (bool, int, float, str)):
                value = json.dumps(value, default=str)
            clean[name] = value
        tags = {name if name.startswith("hparams/") else f"hparams/{name}": float(v) for name, v in metrics.items()}
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
