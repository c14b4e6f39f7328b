"""Every file name of a run folder, in one place: each reader and writer asks `RunFolder` for its paths.

    RUN/config.json  splits.json  plan.json  label_scheme.json      the run's settings, split and plan
    RUN/models/KIND.json                                            each kind's ModelSpec
    RUN/tb/KIND  checkpoints/KIND  predictions/KIND/CASE.nii.gz     per kind: TensorBoard, checkpoints, test masks
    RUN/eval_KIND.json                                              a kind's finished result (resume skips it)
    RUN/results.json  results.md  figures/                          the run's results and figures
    RUN/foldI/...                                                   with cross-validation: one run folder per fold

An ablation study keeps its runs as STUDY_DIR/VARIANT/seedS (each a run folder).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

CONFIG = "config.json"
SPLITS = "splits.json"
PLAN = "plan.json"
LABEL_SCHEME = "label_scheme.json"
RESULTS = "results.json"
RESULTS_MD = "results.md"
FOLD_PREFIX = "fold"


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder (`root`); creates nothing."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def splits(self) -> Path:
        return self.root / SPLITS

    @property
    def plan(self) -> Path:
        return self.root / PLAN

    @property
    def label_scheme(self) -> Path:
        return self.root / LABEL_SCHEME

    @property
    def results(self) -> Path:
        return self.root / RESULTS

    @property
    def results_md(self) -> Path:
        return self.root / RESULTS_MD

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def model_spec(self, kind: str) -> Path:
        return self.models / f"{kind}.json"

    def eval_record(self, kind: str) -> Path:
        return self.root / f"eval_{kind}.json"

    def checkpoints(self, kind: str) -> Path:
        return self.root / "checkpoints" / kind

    def tensorboard(self, kind: str) -> Path:
        return self.root / "tb" / kind

    def predictions(self, kind: str) -> Path:
        return self.root / "predictions" / kind

    def fold(self, index: int) -> "RunFolder":
        return RunFolder(self.root / f"{FOLD_PREFIX}{index}")

    def folds(self) -> list["RunFolder"]:
        """The fold run folders that hold a plan, in name order (empty for a single-split run)."""
        found = (p for p in self.root.glob(f"{FOLD_PREFIX}*") if (p / PLAN).exists())
        return [RunFolder(p) for p in sorted(found, key=lambda p: p.name)]


def study_run(study_dir: str | Path, variant: str, seed: int) -> RunFolder:
    """The run folder of one variant and training seed of an ablation study."""
    return RunFolder(Path(study_dir) / variant / f"seed{seed}")
