"""The wall-time budget of `heartjax.train.step.fit` (train.max_seconds): the plan follows the steps' real speed."""

import time

import jax.numpy as jnp
import numpy as np

from heartjax.train import step as train


class _Sampler:
    """Tiny constant batches; the fit loop only passes them through."""

    def batch(self, step):
        return np.zeros((1,), np.float32), np.zeros((1,), np.uint8)


def _step(fast_steps: int, fast: float, slow: float):
    """A train step that sleeps `fast` seconds for its first calls and `slow` after them."""
    calls = []

    def step(state, batch, key):
        calls.append(len(calls))
        time.sleep(fast if len(calls) <= fast_steps else slow)
        return {**state, "n": state["n"] + 1}, {"loss": jnp.float32(0.5)}
    return step


def _fit(step, max_seconds, num_steps=100_000):
    state = {"total": jnp.asarray(num_steps, jnp.int32), "n": 0}
    return train.fit(state, step, _Sampler(), None, start_step=0, num_steps=num_steps, log_every=5,
                     eval_every=10 ** 9, progress=False, max_seconds=max_seconds, calibrate_steps=10)


def test_budget_is_kept_when_steps_slow_down_after_calibration():
    # Calibrated on 5 ms steps, the first plan is about 200 steps; at 20 ms per step that would be about 4 s.
    res = _fit(_step(fast_steps=12, fast=0.005, slow=0.02), max_seconds=1.0)
    assert res.train_seconds < 1.5, res.train_seconds
    assert 12 < res.steps < 120, res.steps
    assert int(res.state["total"]) == res.steps == res.state["n"]  # the schedule ends where training ends


def test_budget_grows_the_plan_when_steps_speed_up():
    # Calibrated on 30 ms steps (about 33 planned); then 5 ms steps leave most of the second unused without re-planning.
    res = _fit(_step(fast_steps=12, fast=0.03, slow=0.005), max_seconds=1.0)
    assert res.steps > 60, res.steps
    assert res.train_seconds < 1.5, res.train_seconds
    assert int(res.state["total"]) == res.steps == res.state["n"]


def test_budget_never_exceeds_num_steps():
    res = _fit(_step(fast_steps=0, fast=0.0, slow=0.001), max_seconds=30.0, num_steps=40)
    assert res.steps == 40 == res.state["n"] and int(res.state["total"]) == 40
