"""The one config tree of an experiment: its frozen dataclasses (overrides, JSON and validation live beside).

Sections hold the pieces' own dataclasses where a piece has one (`optim`: OptimConfig, `loss`: LossConfig,
`augment`: AugmentConfig), so nothing converts them. The U-Net of each model kind is the shared `model`
section with the kind's own section on top (`model_2d`, `model_25d`, `model_3d`: a field left at None takes the
shared value); `heartjax.experiment.specs` turns them into a `UNetConfig`. Presets live in `heartjax.config.presets`.

Kinds are keys, as nnU-Net keys `plans["configurations"][name]`: `plan.kinds.KIND` holds a kind's patch, batch,
stage budget and spatial dims, `infer.kinds.KIND` its inference batch; a kind's entry inherits every value it
leaves at None from the kind named by `inherits_from` (2.5d from 2d), so `plan.kinds.3d.patch=[32,32,32]` and
`plan.kinds.2.5d.batch=8` are overrides, and `plan.kinds.toy.inherits_from=3d` adds a kind.

`heartjax.config.overrides` sets values by dotted key; `heartjax.config.validation` checks every value.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from heartjax.config.augment import AugmentConfig
from heartjax.config.options import LossConfig, ModelConfig, OptimConfig
from heartjax.config.presets import DEFAULT_KINDS, INFER_KINDS, KINDS, PLAN_KINDS  # noqa: F401 (KINDS: API)
from heartjax.common.errors import HeartjaxError



@dataclasses.dataclass(frozen=True)
class DataConfig:
    dir: str | None = None           # None: the built-in phantom; else any layout heartjax.data.datasets knows
    scheme: str | None = None        # label scheme (mmwhs | acdc | genericK); None: from the layout
    seed: int = 0                    # phantom, split, fingerprint sample, validation patches (not training)
    phantom_cases: int = 40          # phantom patients (5 folds of 8: a paired test of 8 can reach p < 0.05)
    phantom_modality: str = "ct"     # ct | mri | cine (MRI in thick slices, shifted as between breath-holds)
    phantom_difficulty: int = 1      # 0 easy (the first generator), 1 realistic, 2 harder (phantom_levels.py)
    phantom_spacing: tuple[float, float, float] = (1.0, 1.0, 1.6)  # voxel spacing of the phantom scans in mm
    phantom_dir: str = "data/phantom"  # where the phantom is written once and reused
    cache_dir: str = "cache"         # preprocessed cases, keyed by plan and source files
    folds: int = 5                   # the test patients are one fold of a patient-level K-fold split
    fold: int = 0                    # which fold is the test fold (0 .. folds-1)
    cross_validate: bool = False     # train every fold into RUN/foldI and pool the test patients
    val_cases: int = 4               # taken from the training patients for checkpoint selection
    max_cases: int | None = None     # use only the first N cases (quick looks at big folders)
    train_cases: int | None = None   # train on N of the training patients (nested subsets); val and test unchanged
    test_phantom_modality: str | None = None  # score the test patients' scans in this phantom modality instead


@dataclasses.dataclass(frozen=True)
class KindPlanConfig:
    """One kind's entry of the plan (`plan.kinds.KIND`); a field left at None takes the `inherits_from` kind's."""

    inherits_from: str | None = None  # another kind of plan.kinds
    spatial_dims: int | None = None   # 3: patches of the volume; 2: in-plane patches of slices along the slice axis
    patch: tuple[int, ...] | None = None  # None on a kind that inherits none: from the median shape
    batch: int | None = None          # training batch (patches or slices per step)
    max_patch_voxels: int | None = None  # the budget a derived patch fits in


@dataclasses.dataclass(frozen=True)
class KindInferConfig:
    """One kind's inference settings (`infer.kinds.KIND`); None takes those of the kind its plan entry inherits."""

    batch: int | None = None  # patches or slices per inference call


class KindTable(dict):
    """One entry per kind, by name: a dict that hashes like the frozen dataclasses around it. Never mutated:
    overrides build a new table."""

    def __hash__(self):
        return hash(frozenset(self.items()))


def _kinds(entry: type, defaults: dict):
    """A field holding one `entry` per kind (the entry type rides in the metadata, for overrides of new kinds)."""
    return dataclasses.field(default_factory=lambda: KindTable({k: entry(**v) for k, v in defaults.items()}),
                             metadata={"entry": entry})


@dataclasses.dataclass(frozen=True)
class PlanConfig:
    target_spacing: tuple[float, float, float] | None = (3.0, 3.0, 3.0)  # None: nnU-Net's rule
    depth: int = 3                   # U-Net resolution stages (downsamplings + 1)
    kinds: dict[str, KindPlanConfig] = _kinds(KindPlanConfig, PLAN_KINDS)  # each kind's entry: plan.kinds.KIND.*
    crop_margin_mm: float = 10.0     # margin kept around the body when cropping, mm

    def lineage(self, kind: str) -> list[str]:
        """`kind`, the kind it inherits from, that kind's, and so on (a cycle stops at the first repeat)."""
        chain = []
        while kind is not None and kind not in chain:
            chain.append(kind)
            kind = self.kinds[kind].inherits_from if kind in self.kinds else None
        return chain

    def entry(self, kind: str) -> KindPlanConfig:
        """The kind's entry with the inherited values filled in (its own `inherits_from` kept)."""
        own = self.kinds.get(kind, KindPlanConfig())
        return dataclasses.replace(inherited(self.kinds, self.lineage(kind), KindPlanConfig),
                                   inherits_from=own.inherits_from)

    def source(self, kind: str, field: str) -> str:
        """The key a kind's plan value comes from (its own entry, or the one it inherits it from)."""
        return source_key("plan.kinds", self.kinds, self.lineage(kind), field)

# One kind's U-Net settings on top of `model`: ModelConfig's fields again, each None by default (take the shared
# value), derived from ModelConfig so the model fields are written once.
KindModelConfig = dataclasses.make_dataclass(
    "KindModelConfig", [(f.name, f"{f.type} | None", dataclasses.field(default=None))
                        for f in dataclasses.fields(ModelConfig)],
    frozen=True, namespace={"__module__": __name__,
                            "__doc__": "One kind's U-Net settings on top of `model`; None takes the shared value."})


@dataclasses.dataclass(frozen=True)
class Model25dConfig(KindModelConfig):
    slices: int = 5  # K neighbouring slices (odd) fed as channels; the centre one is predicted


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    fg_fraction: float = 0.33  # share of each batch centred on a structure (nnU-Net's oversampling)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    models: tuple[str, ...] = DEFAULT_KINDS  # model kinds to train, from 2d, 2.5d, 3d
    steps: int = 900                 # the same number of optimiser steps for every model
    max_seconds: float | None = None  # a wall-time budget per model instead (re-planned at log points)
    log_every: int = 25              # steps between logged training losses
    eval_every: int = 100            # steps between validations and checkpoints
    val_patches: int = 8             # fixed validation patches scored at each evaluation
    ema_decay: float = 0.6           # smoothing of the validation Dice that picks the best checkpoint


@dataclasses.dataclass(frozen=True)
class InferConfig:
    overlap: float = 0.5             # sliding-window overlap, fraction of a patch
    mirror: bool = False             # mirroring test-time augmentation
    kinds: dict[str, KindInferConfig] = _kinds(KindInferConfig, INFER_KINDS)  # each kind's batch: infer.kinds.KIND.batch
    save_predictions: bool = True    # write the test patients' label maps to predictions/KIND


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0                    # training: initialisation, sampling, augmentation, dropout
    data: DataConfig = DataConfig()  # the patients: dataset, phantom, split
    plan: PlanConfig = PlanConfig()  # preprocessing and patch plan
    model: ModelConfig = ModelConfig()  # U-Net settings shared by every kind
    model_2d: KindModelConfig = KindModelConfig(features=16, max_features=128)  # 2D nets are cheap per voxel
    model_25d: Model25dConfig = Model25dConfig(features=16, max_features=128)
    model_3d: KindModelConfig = KindModelConfig()  # the 3D U-Net's own settings
    optim: OptimConfig = OptimConfig(name="adamw", lr=3e-3, warmup_steps=20)  # optimiser and schedule
    loss: LossConfig = LossConfig()  # Dice + cross-entropy loss
    augment: AugmentConfig = AugmentConfig(rotation_deg=(-15.0, 15.0), scale_range=(0.85, 1.15))  # data augmentation
    sampling: SamplingConfig = SamplingConfig()  # patch sampling
    train: TrainConfig = TrainConfig()  # training
    infer: InferConfig = InferConfig()  # whole-volume inference


def inherited(entries: dict, chain: list[str], entry: type):
    """An `entry` with, field by field, the first value that is not None along `chain` (a kind, then its parents)."""
    values = {}
    for kind in reversed(chain):
        if kind in entries:
            values.update({k: v for k, v in dataclasses.asdict(entries[kind]).items() if v is not None})
    return entry(**values)


def source_key(prefix: str, entries: dict, chain: list[str], field: str) -> str:
    """The key of the entry along `chain` whose `field` is set (the kind's own key when none is)."""
    owner = next((k for k in chain if k in entries and getattr(entries[k], field) is not None), chain[0])
    return f"{prefix}.{owner}.{field}"


def infer_settings(cfg: Config, kind: str) -> KindInferConfig:
    """A kind's inference settings: its own entry, else those of the kinds its plan entry inherits from."""
    return inherited(cfg.infer.kinds, cfg.plan.lineage(kind), KindInferConfig)


def infer_source(cfg: Config, kind: str, field: str) -> str:
    """The key a kind's inference value comes from."""
    return source_key("infer.kinds", cfg.infer.kinds, cfg.plan.lineage(kind), field)


def section_of(kind: str) -> str:
    """The config section of a model kind: "2.5d" -> "model_25d"."""
    return "model_" + kind.replace(".", "")


def model_section(cfg: Config, kind: str) -> str | None:
    """The section of a kind's own U-Net settings: its own, else the first of the kinds it inherits from (plan)."""
    return next((section_of(k) for k in cfg.plan.lineage(kind) if hasattr(cfg, section_of(k))), None)


def unet_settings(cfg: Config, kind: str) -> dict:
    """The U-Net fields of a kind: `model`, overlaid with the kind's section where it sets a value."""
    shared = dataclasses.asdict(cfg.model)
    section = model_section(cfg, kind)
    if section is None:
        return shared
    own = getattr(cfg, section)
    return {k: (shared[k] if getattr(own, k) is None else getattr(own, k)) for k in shared}


def walk(node, parts: list[str], key: str):
    """(value at the first name of `parts`, how many parts that name took): a field of a dataclass, or an entry of
    a kinds table, whose names may hold dots ("2.5d"); KeyError naming `key` when there is none."""
    if isinstance(node, dict):
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in node:
                return node[".".join(parts[:n])], n
        raise KeyError(key)
    if not dataclasses.is_dataclass(node) or parts[0] not in {f.name for f in dataclasses.fields(node)}:
        raise KeyError(key)
    return getattr(node, parts[0]), 1


def get(cfg: Config, key: str) -> Any:
    """The value at a dotted key (`plan.kinds.2.5d.patch` is the 2.5d entry's own patch)."""
    node, parts = cfg, key.split(".")
    try:
        while parts:
            node, n = walk(node, parts, key)
            parts = parts[n:]
    except KeyError:
        raise HeartjaxError(f"unknown config setting {key!r}") from None
    return node
