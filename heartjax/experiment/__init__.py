"""The experiment layer: `specs` (one spec per model kind, the only place kinds differ), `runner` (train and
score one spec) and `api` (the library API below, over which `python -m experiments.volumetric` is a command
line). This module only gathers the API's public names:

    from heartjax import experiment
    cfg = experiment.config("acdc", data="../shared/data/acdc-ed", overrides=["model.norm=batch"])
    res = experiment.run(cfg, workdir="runs/bn", kinds=["2d"])
"""

from heartjax.experiment.api import (Prepared, config, load_config, pool_folds, prepare, prepare_workdir, run,
                                     run_model, run_split)
from heartjax.experiment.resume import resume_config

__all__ = ["Prepared", "config", "load_config", "pool_folds", "prepare", "prepare_workdir", "run", "run_model",
           "run_split", "resume_config"]
