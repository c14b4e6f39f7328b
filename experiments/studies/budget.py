"""Dice against optimiser steps, one curve per kind (and against training time, from each kind's measured step
time at the study's own sizes): where do the 2D and 3D curves cross, if they do?

Budgets are steps, not seconds (wall-clock budgets move with the machine's load); 2.5D trains at 1200 steps. On
ACDC (`--preset acdc`) a seed costs about 0.25, 0.5, 1.0 (2.5D included), 1.0 and 2.0 CPU-hours on 2 cores at 150
... 4800 steps; `--seeds` and `--max-runs` run the long budgets in parts.
"""

from heartjax.ablation import Study

STUDY = Study(
    name="budget",
    description="mean Dice against optimiser steps and training time, one curve per kind: where 2D and 3D cross",
    baseline=("train.max_seconds=None",),  # fixed step budgets, also under presets that set a time budget
    kinds=("2d", "3d"),
    variants={
        "steps150": ("train.steps=150",),
        "steps300": ("train.steps=300",),
        "steps600": ("train.steps=600",),
        "steps1200": ("train.steps=1200", "train.models=['2d', '2.5d', '3d']"),
        "steps2400": ("train.steps=2400",),
        "steps4800": ("train.steps=4800",),
    },
    reference="steps1200",
    x="train.steps",
    presets=("smoke", "default", "acdc"),
)
