"""Configs of `python -m experiments.volumetric`: 2D slice-wise versus 3D volumetric U-Net on the same patients.

Presets:
  smoke    tiny phantom, tiny nets, a few steps: an end-to-end check in well under a minute (used by the tests).
  default  the README's `./run.sh`: 20 phantom CT patients, sized for a 2-core laptop CPU (about 15 minutes).
  acdc     real ACDC cine-MRI (`--data DIR`), one patient-level split, sized for the 2-core CPU.
  full     GPU scale: nnU-Net-like widths, patches and schedule, 5-fold cross-validation (`--cv 5`).
Every value can be overridden on the command line as `dotted.key=value`.
"""

from __future__ import annotations

import copy

BASE = {
    "seed": 0,
    "data": {
        "dir": None,              # None: the built-in phantom; else any layout heartjax.data.datasets knows
        "scheme": None,           # label scheme (mmwhs | acdc | genericK); None: from the layout
        "phantom_cases": 20,
        "phantom_modality": "ct",
        "phantom_spacing": [1.0, 1.0, 1.6],
        "phantom_dir": "data/phantom",  # where the phantom is written once and reused
        "cache_dir": "cache",     # preprocessed cases, keyed by plan and source files
        "folds": 5,               # the test patients are one fold of a patient-level K-fold split
        "fold": 0,
        "cross_validate": False,  # True (--cv K): train every fold into RUN/foldI and pool the test patients
        "val_cases": 2,           # taken from the training patients for checkpoint selection
        "max_cases": None,        # use only the first N cases (quick looks at big folders)
    },
    "plan": {
        "target_spacing": [3.0, 3.0, 3.0],  # None: nnU-Net's rule (median, anisotropy-aware); 3 mm keeps the CPU default fast
        "depth": 3,
        "patch_3d": [48, 48, 48],  # None: from the median case shape and max_patch_voxels_3d
        "patch_2d": None,
        "batch_3d": 2,
        "batch_2d": 16,
        "max_patch_voxels_3d": 64 ** 3,
        "max_patch_voxels_2d": 192 ** 2,
        "crop_margin_mm": 10.0,
    },
    "model": {                    # shared by both networks
        "features": 8,
        "max_features": 64,
        "growth": 2,
        "norm": "instance",
        "dropout": 0.0,
        "upsample": "resize",
        "activation": "leaky_relu",
        "deep_supervision": True,
        "dtype": "float32",
        "conv_impl": "auto",
    },
    "model_2d": {"features": 16, "max_features": 128},  # 2D nets are cheap per voxel; widen them
    "model_3d": {},
    "optim": {
        "name": "adamw",
        "lr": 3e-3,
        "momentum": 0.99,
        "nesterov": True,
        "weight_decay": 3e-5,
        "warmup_steps": 20,
        "poly_power": 0.9,
        "clip_norm": 12.0,
    },
    "loss": {"lambda_dice": 1.0, "lambda_ce": 1.0, "batch_dice": False, "include_background": False},
    "augment": {                  # heartjax.model.augment.AugmentConfig; nnU-Net's list, milder spatial ranges, no mirroring
        "rotation_p": 0.2, "rotation_deg": [-15.0, 15.0], "rotation_axes": None,
        "scale_p": 0.2, "scale_range": [0.85, 1.15],
        "elastic_p": 0.0, "elastic_magnitude": [1.0, 4.0], "elastic_sigma": 12.0, "border_mode": "min",
        "noise_p": 0.1, "noise_variance": [0.0, 0.1],
        "blur_p": 0.2, "blur_sigma": [0.5, 1.0], "blur_p_per_channel": 0.5,
        "brightness_p": 0.15, "brightness_range": [0.75, 1.25],
        "contrast_p": 0.15, "contrast_range": [0.75, 1.25],
        "lowres_p": 0.25, "lowres_scale": [0.5, 1.0], "lowres_p_per_channel": 0.5,
        "gamma_inverted_p": 0.1, "gamma_p": 0.3, "gamma_range": [0.7, 1.5],
        "mirror_p": 0.0, "mirror_axes": None,
    },
    "sampling": {"fg_fraction": 0.33},
    "train": {
        "models": ["2d", "3d"],
        "steps": 900,             # the same number of optimiser steps for both models
        "max_seconds": None,      # a wall-time budget per model instead (steps timed, re-planned at log points)
        "log_every": 25,
        "eval_every": 100,
        "val_patches": 8,
        "ema_decay": 0.6,
    },
    "infer": {"overlap": 0.5, "mirror": False, "batch_3d": 2, "batch_2d": 16, "save_predictions": True},
}

PRESETS = {
    "smoke": {
        "data": {"phantom_cases": 5, "phantom_spacing": [4.0, 4.0, 4.0], "phantom_dir": "data/phantom-smoke",
                 "folds": 5, "val_cases": 1},
        "plan": {"target_spacing": [8.0, 8.0, 8.0], "depth": 2, "patch_3d": [16, 16, 16], "patch_2d": [16, 16],
                 "batch_3d": 2, "batch_2d": 4},
        "model": {"features": 4, "max_features": 8, "deep_supervision": True},
        "model_2d": {"features": 4, "max_features": 8},
        "train": {"steps": 8, "log_every": 2, "eval_every": 4, "val_patches": 2},
        "infer": {"batch_3d": 2, "batch_2d": 4},
    },
    "default": {},
    "acdc": {                     # real ACDC cine-MRI on the 2-core CPU: one split, 15 minutes of training per model
        "data": {"dir": "../shared/data/acdc-ed", "folds": 5, "val_cases": 8},
        "plan": {"target_spacing": [1.5, 1.5, 10.0], "depth": 4, "patch_2d": [128, 128], "batch_2d": 16,
                 "patch_3d": [128, 128, 8], "batch_3d": 2},
        "model": {"features": 16, "max_features": 128},
        "model_2d": {"features": 16, "max_features": 256},
        "augment": {"rotation_axes": [2], "rotation_deg": [-20.0, 20.0]},  # in-plane only: 10 mm slices
        "train": {"steps": 100000, "max_seconds": 900, "eval_every": 200, "log_every": 50, "val_patches": 32},
    },
    "full": {
        "plan": {"target_spacing": None, "patch_3d": None, "max_patch_voxels_3d": 128 ** 3,
                 "max_patch_voxels_2d": 512 ** 2, "depth": 5,
                 "batch_3d": 2, "batch_2d": 12},
        "model": {"features": 32, "max_features": 320},
        "model_2d": {"features": 32, "max_features": 512},
        "optim": {"name": "sgd", "lr": 1e-2, "warmup_steps": 0},
        "augment": {"rotation_deg": [-30.0, 30.0], "scale_range": [0.7, 1.4]},
        "train": {"steps": 250000, "eval_every": 2500, "log_every": 250, "val_patches": 64},
        "infer": {"mirror": True},
    },
}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def get_config(preset: str = "default") -> dict:
    """The config of a preset (a fresh copy)."""
    from heartjax.errors import HeartjaxError

    if preset not in PRESETS:
        raise HeartjaxError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    return _merge(BASE, PRESETS[preset])
