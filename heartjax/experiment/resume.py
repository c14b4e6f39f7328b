"""Resuming a run with changed settings: how long it trains and how often it logs and evaluates may change
(`heartjax.config.describe.RESUMABLE`), and the change is recorded in the run folder's config.json; any other
changed setting is refused by name, as it would mix two experiments in one run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import jax

from heartjax.common import atomic
from heartjax import config as config_lib
from heartjax.config import Config, describe
from heartjax.experiment import specs
from heartjax.experiment.api import load_config
from heartjax.common.paths import RunFolder


def resume_config(workdir: str | Path, overrides: Sequence[str] = (), record: bool = True,
                  log: Callable = print) -> Config:
    """The saved config of run folder `workdir` with `key=value` overrides applied (validated). Raises
    HeartjaxError naming every changed key outside RESUMABLE; with `record`, writes the changed config.json.

    A model the run already finished (eval_KIND.json) trains on when train.steps grew."""
    saved = load_config(Path(workdir))
    cfg = specs.check_kinds(config_lib.validate(config_lib.apply_overrides(saved, overrides)))
    changed = describe.check_resumable(saved, cfg)
    if changed and record:
        if jax.process_index() == 0:
            atomic.write_json(RunFolder(workdir).config, config_lib.to_dict(cfg))
        log("resume: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
            + f" (recorded in {RunFolder(workdir).config})")
    return cfg
