"""Presets of the 2D / 2.5D / 3D experiment, as data: each is a nested dict of values over `heartjax.config.Config`.

  smoke    tiny phantom, tiny nets, a few steps: an end-to-end check in well under a minute (used by the tests).
  default  the README's `./run.sh`: 40 phantom CT patients (difficulty 1), sized for a 2-core laptop CPU (the defaults).
  acdc     real ACDC cine-MRI (`--data DIR`), one patient-level split, sized for the 2-core CPU.
  full     GPU scale: nnU-Net-like widths, patches and schedule, bfloat16 compute, mirroring TTA (`--cv 5`).
"""

from __future__ import annotations

# The model kinds, named here and in heartjax.experiment.specs only (which builds each one); library code iterates
# over these names and never parses them.
KINDS = ("2d", "2.5d", "3d")
DEFAULT_KINDS = ("2d", "3d")  # what train.models and a study train unless told otherwise
BASELINE = "2d"  # every other kind is compared with it, patient by patient
COMPARED_FIRST = "3d"  # results.json also keeps its comparison as comparison_3d_minus_2d, as the first results did

PRESETS: dict[str, dict] = {
    "smoke": {
        "data": {"phantom_cases": 5, "phantom_spacing": [4.0, 4.0, 4.0], "phantom_dir": "data/phantom-smoke",
                 "folds": 5, "val_cases": 1},
        "plan": {"target_spacing": [8.0, 8.0, 8.0], "depth": 2, "patch_3d": [16, 16, 16], "patch_2d": [16, 16],
                 "batch_3d": 2, "batch_2d": 4},
        "model": {"features": 4, "max_features": 8, "deep_supervision": True},
        "model_2d": {"features": 4, "max_features": 8},
        "model_25d": {"features": 4, "max_features": 8, "slices": 3},
        "train": {"steps": 8, "log_every": 2, "eval_every": 4, "val_patches": 2},
        "infer": {"batch_3d": 2, "batch_2d": 4},
    },
    "default": {},
    "acdc": {  # real ACDC cine-MRI on the 2-core CPU: one split, 15 minutes of training per model
        "data": {"dir": "../shared/data/acdc-ed", "folds": 5, "val_cases": 8},
        "plan": {"target_spacing": [1.5, 1.5, 10.0], "depth": 4, "patch_2d": [128, 128], "batch_2d": 16,
                 "patch_3d": [128, 128, 8], "batch_3d": 2},
        "model": {"features": 16, "max_features": 128},
        "model_2d": {"features": 16, "max_features": 256},
        "model_25d": {"features": 16, "max_features": 256},
        "augment": {"rotation_axes": [2], "rotation_deg": [-20.0, 20.0]},  # in-plane only: 10 mm slices
        "train": {"steps": 100000, "max_seconds": 900, "eval_every": 200, "log_every": 50, "val_patches": 32},
    },
    "full": {
        "plan": {"target_spacing": None, "patch_3d": None, "max_patch_voxels_3d": 128 ** 3,
                 "max_patch_voxels_2d": 512 ** 2, "depth": 5, "batch_3d": 2, "batch_2d": 12},
        "model": {"features": 32, "max_features": 320, "dtype": "bfloat16"},  # float32 parameters and loss
        "model_2d": {"features": 32, "max_features": 512},
        "model_25d": {"features": 32, "max_features": 512},
        "optim": {"name": "sgd", "lr": 1e-2, "warmup_steps": 0},
        "augment": {"rotation_deg": [-30.0, 30.0], "scale_range": [0.7, 1.4]},
        "train": {"steps": 250000, "eval_every": 2500, "log_every": 250, "val_patches": 64},
        "infer": {"mirror": True},
    },
}
