"""Results as values: what `heartjax.experiment.run` returns; writing them out is `heartjax.eval.report`'s job.

`Results.models[kind]` is a `ModelResult`; `ModelResult.per_structure[name]` a `StructureScores` (test patients,
mean / sd over patients). `to_json` gives the layout of results.json (NaN as null), `from_json` reads it back.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from heartjax.config.presets import BASELINE, COMPARED_FIRST
from heartjax.eval.metric_table import summary_keys
from heartjax.eval.metrics import paired_test
from heartjax.eval.scoring import json_safe



# One structure's summary over the test patients: a field per metric of the table and aggregation ("dice_mean",
# "dice_sd", "dice_median", "iou_mean", ..., "nsd_sd"); a field a results.json lacks reads as None.
StructureScores = dataclasses.make_dataclass(
    "StructureScores", [(k, float | None, dataclasses.field(default=None)) for k in summary_keys()], frozen=True,
    namespace={"__module__": __name__})


_SUMMARY = ("mean_dice", "whole_heart_dice", "whole_heart_dice_sd", "accuracy", "fg_accuracy")


@dataclasses.dataclass
class ModelResult:
    """One model's test results; `info` holds the run facts (steps, train_seconds, params, mesh, ...)."""

    kind: str
    per_structure: dict[str, StructureScores]
    per_case: list[dict]
    mean_dice: float | None = None
    whole_heart_dice: float | None = None
    whole_heart_dice_sd: float | None = None
    accuracy: float | None = None
    fg_accuracy: float | None = None
    info: dict = dataclasses.field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:  # run facts read as attributes: res.steps, res.train_seconds
        info = self.__dict__.get("info", {})
        if name in info:
            return info[name]
        raise AttributeError(name)

    def to_json(self) -> dict:
        out = {**self.info, **{k: getattr(self, k) for k in _SUMMARY},
               "per_structure": {n: dataclasses.asdict(s) for n, s in self.per_structure.items()},
               "per_case": self.per_case}
        return json_safe(out)

    @classmethod
    def from_json(cls, kind: str, data: Mapping) -> "ModelResult":
        known = {"per_structure", "per_case", *_SUMMARY}
        return cls(kind, {n: StructureScores(**s) for n, s in data["per_structure"].items()}, list(data["per_case"]),
                   **{k: data.get(k) for k in _SUMMARY}, info={k: v for k, v in data.items() if k not in known})


@dataclasses.dataclass
class Results:
    """A run's results: dataset facts, split sizes, the models, and each kind against the 2D baseline."""

    dataset: str
    layout: str
    label_names: list[str]
    models: dict[str, ModelResult]
    test_cases: list[str]
    seed: int
    data_seed: int
    split: dict[str, int] | None = None
    cross_validation: int | None = None
    comparisons: dict[str, dict] = dataclasses.field(default_factory=dict)
    provenance: dict | None = None  # heartjax.common.provenance.collect() of the process that wrote results.json

    def to_json(self) -> dict:
        out = {"dataset": self.dataset, "layout": self.layout, "label_names": self.label_names,
               "split": self.split, "test_cases": self.test_cases, "seed": self.seed, "data_seed": self.data_seed,
               "models": {k: m.to_json() for k, m in self.models.items()}, "comparisons": self.comparisons,
               f"comparison_{comparison_key(COMPARED_FIRST)}": self.comparisons.get(comparison_key(COMPARED_FIRST), {})}
        if self.cross_validation:
            out["cross_validation"] = self.cross_validation
        if self.provenance is not None:
            out["provenance"] = self.provenance
        return out

    @classmethod
    def from_json(cls, data: Mapping) -> "Results":
        models = {k: ModelResult.from_json(k, m) for k, m in data["models"].items()}
        return cls(data["dataset"], data["layout"], data["label_names"], models, data["test_cases"], data["seed"],
                   data.get("data_seed", 0), data.get("split"), data.get("cross_validation"),
                   data.get("comparisons", {}), data.get("provenance"))


def _per_case(model: ModelResult, name: str) -> list[float]:
    """One value per test patient: Dice of a structure, or whole-heart Dice (NaN where undefined)."""
    get = (lambda c: c.get("whole_heart_dice")) if name == "whole_heart" else (lambda c: c["dice"][name])
    return [np.nan if get(c) is None else get(c) for c in model.per_case]


def compare(models: Mapping[str, ModelResult], names: Sequence[str]) -> dict[str, dict]:
    """Per structure and whole heart, each kind minus the 2D baseline over the same patients (paired tests)."""
    if BASELINE not in models:
        return {}
    base = models[BASELINE]
    return {comparison_key(k): {n: json_safe(paired_test(_per_case(base, n), _per_case(m, n)))
                                for n in [*names, "whole_heart"]}
            for k, m in models.items() if k != BASELINE}


def comparison_key(kind: str) -> str:
    """The key of a kind's comparison with the baseline in results.json ("3d" -> "3d_minus_2d")."""
    return f"{kind.replace('.', '')}_minus_{BASELINE}"
