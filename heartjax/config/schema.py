"""The one config tree of an experiment: its frozen dataclasses (overrides, JSON and validation live beside).

Sections hold the pieces' own dataclasses where a piece has one (`optim`: OptimConfig, `loss`: LossConfig,
`augment`: AugmentConfig), so nothing converts them. The U-Net of each model kind is the shared `model`
section with the kind's own section on top (`model_2d`, `model_25d`, `model_3d`: a field left at None takes the
shared value); `heartjax.experiment.specs` turns them into a `UNetConfig`. Presets live in `heartjax.config.presets`.

`heartjax.config.overrides` sets values by dotted key; `heartjax.config.validation` checks every value.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from heartjax.config.augment import AugmentConfig
from heartjax.config.options import LossConfig, OptimConfig
from heartjax.config.presets import DEFAULT_KINDS, KINDS  # noqa: F401 (KINDS: part of the schema's API)



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
class PlanConfig:
    target_spacing: tuple[float, float, float] | None = (3.0, 3.0, 3.0)  # None: nnU-Net's rule
    depth: int = 3                   # U-Net resolution stages (downsamplings + 1)
    patch_3d: tuple[int, int, int] | None = (48, 48, 48)  # None: from the median shape and max_patch_voxels_3d
    patch_2d: tuple[int, int] | None = None  # None: from the median shape and max_patch_voxels_2d
    batch_3d: int = 2                # 3D training batch (patches per step)
    batch_2d: int = 16               # 2D and 2.5D training batch (slices per step)
    max_patch_voxels_3d: int = 64 ** 3  # cap on the 3D patch the plan derives
    max_patch_voxels_2d: int = 192 ** 2  # cap on the 2D patch the plan derives
    crop_margin_mm: float = 10.0     # margin kept around the body when cropping, mm


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """U-Net settings shared by every kind (heartjax.model.unet.UNetConfig's fields of the same names)."""

    features: int = 8                # channels of the first stage
    max_features: int = 64           # cap on the channels of deeper stages
    growth: int = 2                  # channel factor from one stage to the next
    norm: str = "instance"           # batch | instance | group | none
    dropout: float = 0.0             # dropout rate in the convolution blocks
    upsample: str = "resize"         # resize (1x1 conv + repeat) | transpose (transposed conv)
    activation: str = "leaky_relu"  # relu | leaky_relu
    deep_supervision: bool = True    # also train on the decoder's lower-resolution outputs
    dtype: str = "float32"           # compute dtype: float32 | bfloat16 (parameters stay float32)
    conv_impl: str = "auto"          # convolution implementation: auto | xla | planes


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
    batch_3d: int = 2                # 3D patches per inference call
    batch_2d: int = 16               # 2D and 2.5D slices per inference call
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


def section_of(kind: str) -> str:
    """The config section of a model kind: "2.5d" -> "model_25d"."""
    return "model_" + kind.replace(".", "")


def unet_settings(cfg: Config, kind: str) -> dict:
    """The U-Net fields of a kind: `model`, overlaid with the kind's section where it sets a value."""
    own = getattr(cfg, section_of(kind))
    shared = dataclasses.asdict(cfg.model)
    return {k: (shared[k] if getattr(own, k) is None else getattr(own, k)) for k in shared}


def get(cfg: Config, key: str) -> Any:
    """The value at a dotted key."""
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node
