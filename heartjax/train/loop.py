"""The fit loop: steps, the step budget, the non-finite-loss stop; everything periodic is a hook.

`fit` runs optimiser steps until the plan's end. At a step where any hook is due (its `every` divides the step,
or the run ends there) the step's metrics are fetched from the device (the only host syncs), the wall-time
budget re-plans, a non-finite loss stops the run, and the due hooks run in order: `LogHook` (TensorBoard
scalars), `EvalHook` (validation Dice and its EMA, which picks the best step), `CheckpointHook` ("latest" train
state and, when the EMA improved, "best" weights). Hook time is not training time. `LoopState` is what a
resumed run needs to continue exactly: it is saved with every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from heartjax.data.sampling import Prefetcher
from heartjax.common.errors import HeartjaxError
from heartjax.train.budget import StepBudget
from heartjax.train.parallel import agree


@dataclasses.dataclass
class LoopState:
    """Resumable loop state: steps done, training seconds, the validation EMA and its best, the budget's plan."""

    step: int = 0
    train_seconds: float = 0.0
    ema: float | None = None
    best_ema: float = -1.0
    best_step: int = -1
    planned_steps: int | None = None  # the budget's plan; None: the configured number of steps
    history: list = dataclasses.field(default_factory=list)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "LoopState":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclasses.dataclass
class Point:
    """What a hook sees at a due step: the step count after it, the state, host metrics, the loop state."""

    step: int
    state: Any
    metrics: dict
    loop: LoopState
    last: bool


class Hook:
    """Runs at steps that are multiples of `every` and at the last step; `on_step` runs after every step."""

    every: int = 0

    def due(self, step: int, last: bool) -> bool:
        return last or (self.every > 0 and step % self.every == 0)

    def on_step(self, step: int) -> None:
        pass

    def on_plan(self, steps: int) -> None:
        pass

    def __call__(self, point: Point) -> None:
        pass

    def close(self) -> None:
        pass


def fit(state, train_step: Callable, sampler, key, loop: LoopState, *, num_steps: int, hooks: Sequence[Hook] = (),
        budget: StepBudget | None = None, clock: Callable[[], float] = time.perf_counter, prefetch: int = 2,
        place: Callable | None = None):
    """Run optimiser steps from `loop.step` to the plan's end; returns (state, loop).

    `train_step(state, batch, key) -> (state, metrics)` with metrics {"loss", ...} on the device; `sampler.batch(step)`
    draws a batch and `place(array)` puts it on the devices (default: the default device, see heartjax.train.parallel.Feed);
    `num_steps` is the configured length (with a budget, its upper bound). `clock` is injectable (budget tests need
    no sleep). A NaN or Inf loss raises HeartjaxError at the first due step after it (`check_finite`)."""
    start = loop.step
    end = loop.planned_steps or num_steps
    calibrate_at = (start + 1, start + 1 + budget.calibrate_steps) if budget else ()
    since = first = None  # since: (step, training seconds) the budget times from; first: the first calibration

    def seconds_now():
        return loop.train_seconds + clock() - t0

    def set_plan(state, steps):
        nonlocal end
        end, loop.planned_steps = steps, steps
        for h in hooks:
            h.on_plan(steps)
        return {**state, "total": jnp.asarray(steps, jnp.int32)}

    for h in hooks:
        h.on_plan(end)
    fetcher = Prefetcher(sampler, start, budget.upper if budget else num_steps, depth=prefetch, place=place)
    t0 = clock()
    try:
        for step, batch in fetcher:
            if step >= end:
                break
            state, metrics = train_step(state, batch, key)
            done = loop.step = step + 1
            for h in hooks:
                h.on_step(done)
            if done in calibrate_at:
                jax.block_until_ready(metrics)
                if first is None:
                    first = (done, seconds_now())
                else:
                    since = (done, seconds_now())
                    state = set_plan(state, agree(budget.plan(done, since[1], first)))
            last = done >= end
            if not last and not any(h.due(done, False) for h in hooks):
                continue
            m = {k: float(v) for k, v in jax.device_get(metrics).items()}
            loop.train_seconds = seconds_now()
            if since is not None and not last:
                planned = agree(budget.replan(end, done, loop.train_seconds, since))  # one plan for all processes
                if planned != end:
                    state = set_plan(state, planned)
                    last = done >= end
            check_finite(m["loss"], done, loop)
            run_due(hooks, Point(done, state, m, loop, last))
            t0 = clock()  # hooks (evaluation, saving) are not training time
    finally:
        fetcher.close()
        run_due(hooks, None)
    return state, loop


def check_finite(loss: float, step: int, loop: LoopState) -> None:
    """Stop the run on a NaN or Inf loss; checkpoints are written only after a finite one, so they are intact."""
    if not math.isfinite(loss):
        evals = [h["step"] for h in loop.history]
        raise HeartjaxError(
            f"the loss became {loss} at step {step}; training stopped. Checkpoints written before it "
            f"(last evaluation: step {evals[-1] if evals else 'none'}) are intact. Lower optim.lr or check "
            f"the data for corrupt scans.")


def run_due(hooks: Sequence[Hook], point: Point | None) -> None:
    """Run the hooks due at `point`, in order; with None (the loop's end, however it ends), close them all."""
    for h in hooks:
        if point is None:
            h.close()
        elif h.due(point.step, point.last):
            h(point)
