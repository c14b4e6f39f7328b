"""Composition of the library pieces that experiments share: data -> split -> plan -> preprocess -> train -> predict.

Every function here takes the experiment config (a nested dict, see experiments/configs) and plain values;
experiments stay thin scripts that call these in order and write what they return.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import jax
import numpy as np

from heartjax import conv as conv_lib
from heartjax.data import datasets
from heartjax.data import nifti
from heartjax.data import plan as plan_lib
from heartjax.data import preprocess
from heartjax.model.augment import AugmentConfig, make_augment
from heartjax.errors import HeartjaxError
from heartjax.eval.inference import sliding_window_predict, slicewise_predict
from heartjax.eval.metrics import add_counts, case_metrics, confusion_counts
from heartjax.data.sampling import PatchSampler
from heartjax.train.step import LossConfig, OptimConfig, create_train_state, make_optimizer, make_predict_fn, make_train_step
from heartjax.model.unet import UNetConfig

KINDS = ("2d", "3d")


def write_json(path, data) -> None:
    """Write JSON atomically (temporary name, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def phantom_folder(cfg: dict) -> Path:
    """Where the phantom of this config lives (one folder per modality, case count, seed and spacing)."""
    d = cfg["data"]
    sp = "x".join(f"{s:g}" for s in d["phantom_spacing"])
    return Path(d["phantom_dir"]) / f"{d['phantom_modality']}-n{d['phantom_cases']}-seed{cfg['seed']}-{sp}mm"


def resolve_dataset(cfg: dict, log=print) -> datasets.Dataset:
    """The dataset of a config: `data.dir`, or the built-in phantom (written once, atomically, then reused)."""
    d = cfg["data"]
    if d["dir"] is not None:
        return datasets.discover(Path(d["dir"]), d["scheme"])
    from heartjax.data.phantom import write_phantom

    folder = phantom_folder(cfg)
    if not (folder / ".complete").exists():
        log(f"writing the synthetic phantom ({d['phantom_cases']} {d['phantom_modality'].upper()} cases) to {folder}")
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            write_phantom(tmp, cases=d["phantom_cases"], modality=d["phantom_modality"], seed=cfg["seed"],
                          spacing=tuple(d["phantom_spacing"]))
            (tmp / ".complete").write_text("ok\n")
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return datasets.discover(folder, d["scheme"])


def make_split(ds: datasets.Dataset, cfg: dict) -> dict[str, list[str]]:
    """Patient-level train / val / test split: test = one fold of K; val = `val_cases` patients of the rest."""
    d = cfg["data"]
    cases = list(ds.cases)[: d["max_cases"]] if d["max_cases"] else list(ds.cases)
    if not 0 <= d["fold"] < d["folds"]:
        raise HeartjaxError(f"config setting data.fold={d['fold']} must be in 0..data.folds-1 ({d['folds'] - 1})")
    fold = datasets.make_folds(cases, d["folds"], cfg["seed"])[d["fold"]]
    patient_of = {c.case_id: c.patient for c in cases}
    train_patients = sorted({patient_of[c] for c in fold["train"]}, key=datasets.natural_key)
    rng = np.random.default_rng(cfg["seed"] + 1)
    n_val = int(d["val_cases"])
    if not 0 < n_val < len(train_patients):
        raise HeartjaxError(f"config setting data.val_cases={n_val} must be between 1 and {len(train_patients) - 1} "
                            f"(the number of training patients minus one)")
    val_patients = set(rng.permutation(train_patients)[:n_val].tolist())
    return {
        "train": [c for c in fold["train"] if patient_of[c] not in val_patients],
        "val": [c for c in fold["train"] if patient_of[c] in val_patients],
        "test": list(fold["val"]),
    }


def load_case(ds: datasets.Dataset, case_id: str) -> nifti.Volume:
    """Load one case of the dataset with its label."""
    c = ds.case(case_id)
    return nifti.load_volume(c.image, c.label, ds.scheme, case=c.case_id)


def make_plan(ds: datasets.Dataset, train_ids, cfg: dict) -> plan_lib.Plan:
    """Fingerprint the training cases (body-cropped) and derive the plan, with config overrides."""
    vols = []
    for cid in train_ids:
        v = load_case(ds, cid)
        modality = ds.modality or preprocess.guess_modality(v.image)
        box = preprocess.body_box(v.image, modality, v.spacing, cfg["plan"]["crop_margin_mm"])
        sl = tuple(slice(lo, hi) for lo, hi in box)
        vols.append(dataclasses.replace(v, image=v.image[sl], label=v.label[sl]))
    fp = plan_lib.fingerprint(vols, modality, seed=cfg["seed"])
    p = cfg["plan"]
    return plan_lib.make_plan(fp, depth=p["depth"], target_spacing=p["target_spacing"], patch_3d=p["patch_3d"],
                              patch_2d=p["patch_2d"], batch_3d=p["batch_3d"], batch_2d=p["batch_2d"],
                              max_patch_voxels_3d=p["max_patch_voxels_3d"], max_patch_voxels_2d=p["max_patch_voxels_2d"],
                              crop_margin_mm=p["crop_margin_mm"])


def preprocess_ids(ds, ids, plan, cfg) -> dict:
    """Preprocess (or load from the cache) the given cases."""
    cases = [ds.case(i) for i in ids]
    return preprocess.preprocess_cases(cases, plan, ds.scheme, cfg["data"]["cache_dir"], lambda c: load_case(ds, c.case_id))


def model_config(cfg: dict, plan: plan_lib.Plan, kind: str, num_classes: int) -> UNetConfig:
    """The U-Net config of the 2D or 3D model: shared `model` settings, then `model_2d` / `model_3d`."""
    m = {**cfg["model"], **cfg[f"model_{kind}"]}
    m.pop("conv_impl")
    three = kind == "3d"
    return UNetConfig(spatial_dims=3 if three else 2, in_channels=1, num_classes=num_classes, depth=plan.depth,
                      strides=plan.strides_3d if three else plan.strides_2d,
                      kernel_sizes=plan.kernels_3d if three else plan.kernels_2d, **m)


def patch_of(plan: plan_lib.Plan, kind: str) -> tuple[int, ...]:
    return plan.patch_3d if kind == "3d" else plan.patch_2d


def batch_of(plan: plan_lib.Plan, kind: str) -> int:
    return plan.batch_3d if kind == "3d" else plan.batch_2d


def make_sampler(pre: dict, ids, plan, kind, cfg, seed, batch=None, fg_fraction=None) -> PatchSampler:
    return PatchSampler([pre[i] for i in ids], patch_of(plan, kind), batch or batch_of(plan, kind), seed,
                        spatial_dims=3 if kind == "3d" else 2, slice_axis=plan.slice_axis,
                        fg_fraction=cfg["sampling"]["fg_fraction"] if fg_fraction is None else fg_fraction)


@dataclasses.dataclass
class Trainer:
    """Everything needed to train and apply one model: its config, graph, jitted functions and initial state."""

    kind: str
    model_cfg: UNetConfig
    graphdef: object
    state: dict
    train_step: object
    predict: object


def build_trainer(cfg: dict, plan, kind: str, num_classes: int) -> Trainer:
    """Model, optimiser, augmentation and jitted steps for one model kind."""
    conv_lib.set_default_impl(cfg["model"]["conv_impl"])
    mcfg = model_config(cfg, plan, kind, num_classes)
    mcfg.check_input(patch_of(plan, kind))
    ocfg = OptimConfig(**cfg["optim"])
    tx = make_optimizer(ocfg)
    seed = cfg["seed"] + (0 if kind == "2d" else 1000)
    graphdef, state = create_train_state(mcfg, tx, seed, cfg["train"]["steps"])
    aug_kw = dict(cfg["augment"])
    if mcfg.spatial_dims == 2:
        aug_kw["rotation_axes"] = None  # a 2D rotation is always in-plane; the setting is for the 3D model
    aug = AugmentConfig(**aug_kw)
    augment_fn = make_augment(aug, mcfg.spatial_dims)
    step = make_train_step(graphdef, tx, augment_fn, LossConfig(**cfg["loss"]), ocfg)
    return Trainer(kind, mcfg, graphdef, state, step, make_predict_fn(graphdef))


def make_val_fn(trainer: Trainer, pre: dict, val_ids, plan, cfg, names):
    """Validation on fixed patches of the validation patients (nnU-Net's pseudo-Dice): returns state -> metrics.

    Uses the same jitted predict function (and batch shape) as whole-volume inference, so it adds no compilation.
    """
    kind = trainer.kind
    batch = cfg["infer"]["batch_3d" if kind == "3d" else "batch_2d"]
    sampler = make_sampler(pre, val_ids, plan, kind, cfg, seed=cfg["seed"] + 7, batch=batch, fg_fraction=0.5)
    batches = [sampler.batch(i) for i in range(max(1, cfg["train"]["val_patches"] // batch))]
    k = len(names) + 1

    def val_fn(state):
        total = None
        for img, lbl in batches:
            pred = np.asarray(trainer.predict(state, img)).argmax(-1)
            c = jax.device_get(confusion_counts(pred, lbl.astype(np.int32), k))
            total = c if total is None else add_counts(total, c)
        m = case_metrics(total, names)
        dice = [v for v in m["dice"].values() if np.isfinite(v)]
        return {"dice": float(np.mean(dice)) if dice else 0.0, **{f"dice/{n}": v for n, v in m["dice"].items()}}

    return val_fn


def predict_probs(trainer_or_predict, state, pre: preprocess.Preprocessed, plan, kind: str, cfg: dict, num_classes: int):
    """Whole-volume class probabilities [x, y, z, K+1] at the plan's spacing, by sliding window (3D) or slices (2D)."""
    predict = getattr(trainer_or_predict, "predict", trainer_or_predict)
    fn = lambda x: predict(state, x)
    inf = cfg["infer"]
    if kind == "3d":
        mirror = (0, 1, 2) if inf["mirror"] else ()
        return sliding_window_predict(fn, pre.image, plan.patch_3d, num_classes, inf["overlap"], inf["batch_3d"], mirror)
    mirror = (0, 1) if inf["mirror"] else ()
    return slicewise_predict(fn, pre.image, plan.slice_axis, plan.patch_2d, num_classes, inf["overlap"],
                             inf["batch_2d"], mirror)


def validate_config(cfg: dict) -> None:
    """Check every config value that can be checked before any work starts; HeartjaxError names the setting."""
    def need(key, ok, what):
        if not ok:
            node = cfg
            for part in key.split("."):
                node = node[part]
            raise HeartjaxError(f"config setting {key}={node!r} is invalid: {what}")

    def is_int(v, lo):
        return isinstance(v, int) and not isinstance(v, bool) and v >= lo

    need("seed", is_int(cfg["seed"], 0), "must be a non-negative integer")
    t, d, p = cfg["train"], cfg["data"], cfg["plan"]
    need("train.steps", is_int(t["steps"], 1), "must be a positive integer")
    need("train.log_every", is_int(t["log_every"], 1), "must be a positive integer")
    need("train.eval_every", is_int(t["eval_every"], 1), "must be a positive integer")
    need("train.val_patches", is_int(t["val_patches"], 1), "must be a positive integer")
    need("train.max_seconds", t["max_seconds"] is None or (isinstance(t["max_seconds"], (int, float))
                                                         and t["max_seconds"] > 0), "must be None or a positive number")
    need("train.ema_decay", isinstance(t["ema_decay"], (int, float)) and 0 <= t["ema_decay"] < 1, "must be in [0, 1)")
    need("train.models", isinstance(t["models"], list) and t["models"] and set(t["models"]) <= set(KINDS),
         f"must be a non-empty list of {KINDS}")
    need("data.folds", is_int(d["folds"], 2), "must be an integer >= 2")
    need("data.phantom_cases", is_int(d["phantom_cases"], 3), "must be an integer >= 3")
    need("data.phantom_modality", d["phantom_modality"] in ("ct", "mri"), "must be 'ct' or 'mri'")
    need("plan.depth", is_int(p["depth"], 1), "must be a positive integer")
    for k in ("batch_3d", "batch_2d"):
        need(f"plan.{k}", is_int(p[k], 1), "must be a positive integer")
    for k in ("overlap",):
        need(f"infer.{k}", isinstance(cfg["infer"][k], (int, float)) and 0 <= cfg["infer"][k] < 1, "must be in [0, 1)")
    need("sampling.fg_fraction", 0 <= cfg["sampling"]["fg_fraction"] <= 1, "must be in [0, 1]")
    OptimConfig(**cfg["optim"]).validate()
    AugmentConfig(**cfg["augment"])
    LossConfig(**cfg["loss"])
    conv_lib.set_default_impl(cfg["model"]["conv_impl"])
    for kind in KINDS:
        m = {**cfg["model"], **cfg[f"model_{kind}"]}
        m.pop("conv_impl")
        UNetConfig(spatial_dims=3 if kind == "3d" else 2, depth=p["depth"], **m).validate()
