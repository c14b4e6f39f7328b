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

# Each kind's entry of the plan (`plan.kinds.KIND`, as nnU-Net's plans["configurations"][name]) and of inference
# (`infer.kinds.KIND`) by default. A field left out (None) takes the value of the kind named by `inherits_from`:
# 2.5D takes 2D's patch, batch and stage layout unless it sets its own. `patch` None on a kind that inherits
# nothing: derived from the data (the median shape, within `max_patch_voxels`).
PLAN_KINDS = {
    "2d": {"spatial_dims": 2, "patch": None, "batch": 16, "max_patch_voxels": 192 ** 2},
    "2.5d": {"inherits_from": "2d"},
    "3d": {"spatial_dims": 3, "patch": (48, 48, 48), "batch": 2, "max_patch_voxels": 64 ** 3},
}
INFER_KINDS = {"2d": {"batch": 16}, "3d": {"batch": 2}}  # 2.5d: 2D's, through plan.kinds.2.5d.inherits_from

# Keys of heartjax <= 0.5 (before kinds were keys), still read on the command line, in old run folders' config.json
# and in study records; those plan.json files are read through OLD_PLAN_SUFFIXES (old field suffix -> kind).
RENAMED_KEYS = {
    "plan.patch_2d": "plan.kinds.2d.patch", "plan.batch_2d": "plan.kinds.2d.batch",
    "plan.max_patch_voxels_2d": "plan.kinds.2d.max_patch_voxels",
    "plan.patch_3d": "plan.kinds.3d.patch", "plan.batch_3d": "plan.kinds.3d.batch",
    "plan.max_patch_voxels_3d": "plan.kinds.3d.max_patch_voxels",
    "infer.batch_2d": "infer.kinds.2d.batch", "infer.batch_3d": "infer.kinds.3d.batch",
}
OLD_PLAN_SUFFIXES = {"_2d": "2d", "_3d": "3d"}

PRESETS: dict[str, dict] = {
    "smoke": {
        "data": {"phantom_cases": 5, "phantom_spacing": [4.0, 4.0, 4.0], "phantom_dir": "data/phantom-smoke",
                 "folds": 5, "val_cases": 1},
        "plan": {"target_spacing": [8.0, 8.0, 8.0], "depth": 2,
                 "kinds": {"2d": {"patch": [16, 16], "batch": 4}, "3d": {"patch": [16, 16, 16], "batch": 2}}},
        "model": {"features": 4, "max_features": 8, "deep_supervision": True},
        "model_2d": {"features": 4, "max_features": 8},
        "model_25d": {"features": 4, "max_features": 8, "slices": 3},
        "train": {"steps": 8, "log_every": 2, "eval_every": 4, "val_patches": 2},
        "infer": {"kinds": {"2d": {"batch": 4}, "3d": {"batch": 2}}},
    },
    "default": {},
    "acdc": {  # real ACDC cine-MRI on the 2-core CPU: one split, 15 minutes of training per model
        "data": {"dir": "../shared/data/acdc-ed", "folds": 5, "val_cases": 8},
        "plan": {"target_spacing": [1.5, 1.5, 10.0], "depth": 4,
                 "kinds": {"2d": {"patch": [128, 128], "batch": 16}, "3d": {"patch": [128, 128, 8], "batch": 2}}},
        "model": {"features": 16, "max_features": 128},
        "model_2d": {"features": 16, "max_features": 256},
        "model_25d": {"features": 16, "max_features": 256},
        "augment": {"rotation_axes": [2], "rotation_deg": [-20.0, 20.0]},  # in-plane only: 10 mm slices
        "train": {"steps": 100000, "max_seconds": 900, "eval_every": 200, "log_every": 50, "val_patches": 32},
    },
    "full": {
        "plan": {"target_spacing": None, "depth": 5,
                 "kinds": {"2d": {"max_patch_voxels": 512 ** 2, "batch": 12},
                           "3d": {"patch": None, "max_patch_voxels": 128 ** 3, "batch": 2}}},
        "model": {"features": 32, "max_features": 320, "dtype": "bfloat16"},  # float32 parameters and loss
        "model_2d": {"features": 32, "max_features": 512},
        "model_25d": {"features": 32, "max_features": 512},
        "optim": {"name": "sgd", "lr": 1e-2, "warmup_steps": 0},
        "augment": {"rotation_deg": [-30.0, 30.0], "scale_range": [0.7, 1.4]},
        "train": {"steps": 250000, "eval_every": 2500, "log_every": 250, "val_patches": 64},
        "infer": {"mirror": True},
    },
}
