"""A wall-time budget as a pure plan of steps: no clock here, the fit loop passes the times it measured.

With `max_seconds`, the loop times `calibrate_steps` steps after the first (compiling) one and makes the run
`plan(...)` steps long: the steps done plus the seconds left divided by the time per step measured so far. It
re-plans at every log point from the steps timed since the calibration ended (the first steps run on
prefetched batches and come out faster than the steady state), when the plan moves by more than `tolerance`.
`upper` (train.steps) stays the bound. After a resume the loop calibrates again, so the budget keeps
re-planning. The schedule's length lives in the train state, so a new plan never recompiles.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class StepBudget:
    """max_seconds: training seconds allowed in all (resumed runs included); upper: the most steps ever run."""

    max_seconds: float
    upper: int
    calibrate_steps: int = 10
    tolerance: float = 0.01

    def plan(self, done: int, seconds: float, since: tuple[int, float]) -> int:
        """Total steps that fit: `done` steps after `seconds` of training, timed per step since (step, seconds)."""
        per_step = max(seconds - since[1], 1e-9) / max(done - since[0], 1)
        left = max(0.0, self.max_seconds - seconds)
        return max(int(min(self.upper, done + left // per_step)), done)

    def replan(self, planned: int, done: int, seconds: float, since: tuple[int, float]) -> int:
        """The new plan at a log point, or `planned` when too few steps were timed or it moved too little."""
        if done - since[0] < self.calibrate_steps or done >= planned:
            return planned
        target = self.plan(done, seconds, since)
        return target if abs(target - planned) > self.tolerance * planned else planned
