"""The fit loop's periodic parts (heartjax.train.loop.Hook): progress bar, TensorBoard, validation, checkpoints."""

from __future__ import annotations

import time
from typing import Callable

from tqdm import tqdm

from heartjax.train.loop import Hook, Point
from heartjax.train.step import weights


class ProgressHook(Hook):
    """A tqdm bar over the planned steps, with the loss at log points."""

    def __init__(self, desc: str, start: int, every: int, enabled: bool = True):
        self.every = every
        self.bar = tqdm(initial=start, desc=desc, unit="step", dynamic_ncols=True, leave=True, disable=not enabled)

    def on_step(self, step: int) -> None:
        self.bar.update(1)

    def on_plan(self, steps: int) -> None:
        self.bar.total = steps
        self.bar.refresh()

    def __call__(self, point: Point) -> None:
        self.bar.set_postfix(loss=f"{point.metrics['loss']:.4f}")

    def close(self) -> None:
        self.bar.close()


class LogHook(Hook):
    """Training metrics as TensorBoard scalars `train/<name>` (loss, grad_norm, lr), with `train/steps_per_second`
    (wall clock since the previous log point, evaluation and saving included), `train/eta_minutes` (to the planned
    last step at that rate) and, given the global `batch`, `train/patches_per_second` (training time only: the
    train step and the input pipeline, without evaluation and saving)."""

    def __init__(self, writer, every: int, clock: Callable[[], float] = time.perf_counter, batch: int | None = None):
        self.writer, self.every, self.clock, self.batch = writer, every, clock, batch
        self.total, self.last = None, None

    def on_plan(self, steps: int) -> None:
        self.total = steps

    def __call__(self, point: Point) -> None:
        values = {f"train/{k}": v for k, v in point.metrics.items()}
        now, trained = self.clock(), point.loop.train_seconds
        if self.last is not None and now > self.last[0] and point.step > self.last[1]:
            rate = (point.step - self.last[1]) / (now - self.last[0])
            values["train/steps_per_second"] = rate
            if self.total is not None:
                values["train/eta_minutes"] = max(self.total - point.step, 0) / rate / 60.0
            if self.batch and trained > self.last[2]:
                values["train/patches_per_second"] = (point.step - self.last[1]) * self.batch / (trained - self.last[2])
        self.last = (now, point.step, trained)
        self.writer.scalars(point.step, values)


class EvalHook(Hook):
    """Validation: `eval_fn(state) -> {"dice": mean, "dice/<name>": ..., "hd95/<name>": ..., "loss": ...,
    "overlay": optional uint8 image}` (heartjax.eval.validation); the EMA of "dice" picks the best step.

    Updates the loop state's ema, best_ema, best_step and history, and logs `val/...` scalars (and the overlay as
    the image `val/overlay`, so the segmentation can be watched forming) when a writer is given.
    """

    def __init__(self, eval_fn: Callable, every: int, ema_decay: float, writer=None):
        self.eval_fn, self.every, self.decay, self.writer = eval_fn, every, ema_decay, writer

    def __call__(self, point: Point) -> None:
        loop, val = point.loop, dict(self.eval_fn(point.state))
        overlay = val.pop("overlay", None)
        loop.ema = val["dice"] if loop.ema is None else self.decay * loop.ema + (1 - self.decay) * val["dice"]
        loop.history.append({"step": point.step, "loss": point.metrics["loss"],
                             **{f"val_{k}": v for k, v in val.items()}, "val_ema": loop.ema})
        if self.writer is not None:
            self.writer.scalars(point.step, {**{f"val/{k}": v for k, v in val.items()}, "val/dice_ema": loop.ema})
            if overlay is not None:
                self.writer.image(point.step, "val/overlay", overlay)
        if loop.ema > loop.best_ema:
            loop.best_ema, loop.best_step = loop.ema, point.step


class CheckpointHook(Hook):
    """The "latest" train state with the loop state; the "best" weights when the last evaluation improved."""

    def __init__(self, checkpointer, every: int):
        self.checkpointer, self.every = checkpointer, every

    def __call__(self, point: Point) -> None:
        meta = point.loop.to_json()
        if point.loop.best_step == point.step:
            self.checkpointer.save("best", point.step, weights(point.state), meta)
        self.checkpointer.save("latest", point.step, point.state, meta)
