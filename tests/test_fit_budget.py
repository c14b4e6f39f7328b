"""The fit loop and its wall-time budget (train.max_seconds), on a scripted clock: no sleeping, no wall-clock asserts.

A fake train step advances a fake clock by a scripted time per step, so the figures below are exact.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from heartjax.common.errors import HeartjaxError
from heartjax.train.budget import StepBudget
from heartjax.train.hooks import CheckpointHook, EvalHook
from heartjax.train.loop import Hook, LoopState, fit


class _Sampler:
    """Tiny constant batches; the fit loop only passes them through."""

    def batch(self, step):
        return np.zeros((1,), np.float32), np.zeros((1,), np.uint8)


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _step(clock, per_step, losses=None):
    """A train step taking per_step(i) seconds of the fake clock at its i-th call (0-based, counted over resumes)."""
    calls = []

    def step(state, batch, key):
        clock.now += per_step(state["n"])
        calls.append(state["n"])
        loss = 0.5 if losses is None else losses(state["n"])
        return {**state, "n": state["n"] + 1}, {"loss": jnp.float32(loss)}
    return step


class _Every(Hook):
    """A hook that only makes steps due (log points), recording when it ran."""

    def __init__(self, every):
        self.every, self.points = every, []

    def __call__(self, point):
        self.points.append(point.step)


def _fit(per_step, max_seconds, num_steps=100_000, loop=None, state=None, clock=None, hooks=None):
    clock = clock or _Clock()
    loop = loop or LoopState()
    state = state or {"total": jnp.asarray(num_steps, jnp.int32), "n": 0}
    budget = StepBudget(max_seconds, num_steps, calibrate_steps=10) if max_seconds else None
    state, loop = fit(state, _step(clock, per_step), _Sampler(), None, loop, num_steps=num_steps,
                      hooks=hooks if hooks is not None else [_Every(5)], budget=budget, clock=clock)
    return state, loop, clock


def test_plan_is_pure_arithmetic():
    b = StepBudget(max_seconds=100.0, upper=1000, calibrate_steps=10)
    assert b.plan(done=11, seconds=10.0, since=(1, 0.0)) == 11 + 90  # 1 s per step, 90 s left
    assert b.plan(done=11, seconds=10.0, since=(1, 5.0)) == 11 + 180  # 0.5 s per step since step 1
    assert StepBudget(100.0, upper=50).plan(11, 10.0, (1, 0.0)) == 50  # never above the upper bound
    assert b.plan(done=30, seconds=120.0, since=(1, 0.0)) == 30  # over budget: stop where we are
    assert b.replan(planned=100, done=15, seconds=14.0, since=(11, 10.0)) == 100  # too few steps timed
    assert b.replan(planned=100, done=21, seconds=20.0, since=(11, 10.0)) == 100  # moved <= 1 %
    assert b.replan(planned=100, done=21, seconds=30.0, since=(11, 10.0)) == 21 + 35  # 2 s per step now


def test_budget_is_kept_when_steps_slow_down_after_calibration():
    # Calibrated on 5 ms steps (a plan of about 200 steps), then 20 ms per step: without re-planning, about 4 s.
    state, loop, _ = _fit(lambda i: 0.005 if i < 12 else 0.02, max_seconds=1.0)
    assert loop.train_seconds <= 1.0 + 5 * 0.02 + 1e-9, loop.train_seconds  # at most one log interval over
    assert 40 < loop.step < 70, loop.step
    assert int(state["total"]) == loop.step == state["n"] == loop.planned_steps  # the schedule ends with training


def test_budget_grows_the_plan_when_steps_speed_up():
    # Calibrated on 30 ms steps (about 33 planned), then 5 ms steps: re-planning uses the rest of the second.
    state, loop, _ = _fit(lambda i: 0.03 if i < 12 else 0.005, max_seconds=1.0)
    assert loop.step > 120, loop.step
    assert loop.train_seconds <= 1.0 + 5 * 0.03 + 1e-9
    assert int(state["total"]) == loop.step == state["n"]


def test_budget_never_exceeds_num_steps():
    state, loop, _ = _fit(lambda i: 0.001, max_seconds=30.0, num_steps=40)
    assert loop.step == 40 == state["n"] and int(state["total"]) == 40


def test_without_budget_runs_num_steps_and_hook_points():
    hook = _Every(7)
    state, loop, clock = _fit(lambda i: 0.01, max_seconds=None, num_steps=30, hooks=[hook])
    assert loop.step == 30 == state["n"] and hook.points == [7, 14, 21, 28, 30]
    assert loop.train_seconds == pytest.approx(0.30)


def test_budget_keeps_replanning_after_resume():
    """Resumed at step 50 of a plan made on fast steps, the loop calibrates again: slower steps shrink the plan."""
    clock = _Clock()
    loop = LoopState(step=50, train_seconds=0.25, planned_steps=200)
    state = {"total": jnp.asarray(200, jnp.int32), "n": 50}
    state, loop, _ = _fit(lambda i: 0.02, max_seconds=1.0, loop=loop, state=state, clock=clock)
    # 0.75 s left at 20 ms per step: about 37 more steps, not the 150 of the old plan.
    assert 80 < loop.step < 95, loop.step
    assert int(state["total"]) == loop.step == state["n"]
    assert loop.train_seconds <= 1.0 + 5 * 0.02 + 1e-9


def test_hook_time_is_not_training_time():
    clock = _Clock()

    class Slow(Hook):
        every = 5

        def __call__(self, point):
            clock.now += 100.0  # e.g. evaluation

    _, loop, _ = _fit(lambda i: 0.01, max_seconds=None, num_steps=20, clock=clock, hooks=[Slow()])
    assert loop.train_seconds == pytest.approx(0.20)


class _Checkpointer:
    def __init__(self):
        self.saves = []

    def save(self, slot, step, state, meta):
        self.saves.append((slot, step, sorted(state), meta["best_step"]))


def test_eval_ema_picks_best_and_checkpoints_follow_it():
    vals = iter([0.2, 0.8, 0.1, 0.1])
    ckpt = _Checkpointer()
    hooks = [EvalHook(lambda s: {"dice": next(vals)}, every=10, ema_decay=0.5), CheckpointHook(ckpt, every=10)]
    state = {"total": jnp.asarray(40, jnp.int32), "n": 0, "params": 1, "rest": 2, "opt": 3, "step": 0}
    _, loop, _ = _fit(lambda i: 0.01, max_seconds=None, num_steps=40, state=state, hooks=hooks)
    emas = [h["val_ema"] for h in loop.history]
    assert emas == pytest.approx([0.2, 0.5, 0.3, 0.2])
    assert loop.best_step == 20 and loop.best_ema == pytest.approx(0.5)
    best = [s for s in ckpt.saves if s[0] == "best"]
    assert [(s[1], s[2]) for s in best] == [(10, ["params", "rest"]), (20, ["params", "rest"])]  # weights only
    assert [s[1] for s in ckpt.saves if s[0] == "latest"] == [10, 20, 30, 40]


def test_non_finite_loss_stops_before_the_next_checkpoint():
    ckpt = _Checkpointer()
    clock = _Clock()
    loop = LoopState()
    state = {"total": jnp.asarray(30, jnp.int32), "n": 0, "params": 1, "rest": 2}
    hooks = [EvalHook(lambda s: {"dice": 0.5}, every=10, ema_decay=0.5), CheckpointHook(ckpt, every=10)]
    step = _step(clock, lambda i: 0.01, losses=lambda i: np.nan if i >= 12 else 0.5)
    with pytest.raises(HeartjaxError, match="loss became nan at step 20.*last evaluation: step 10"):
        fit(state, step, _Sampler(), None, loop, num_steps=30, hooks=hooks, clock=clock)
    assert [s[1] for s in ckpt.saves] == [10, 10]  # best and latest at step 10, nothing after the NaN


def test_loop_state_round_trips_through_json():
    loop = LoopState(step=7, train_seconds=1.5, ema=0.3, best_ema=0.4, best_step=5, planned_steps=9,
                     history=[{"step": 5, "val_dice": 0.4}])
    assert LoopState.from_json({**loop.to_json(), "unknown_old_key": 1}) == loop
