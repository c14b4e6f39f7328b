"""The data side of an experiment: dataset or phantom, patient-level split, plan, preprocessing, each scan read once.

Everything here depends on the data settings and `data.seed` only (named streams "split", "split/val",
"fingerprint"), never on the training seed, so a training-seed study keeps patients, split and preprocessed
data fixed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np

from heartjax.common import rng
from heartjax.common.atomic import atomic_dir
from heartjax.config import DataConfig, KindPlanConfig, KindTable, PlanConfig
from heartjax.data import datasets, plan as plan_lib, preprocess
from heartjax.data.io import images
from heartjax.data.io.quirks import Quirks
from heartjax.data.phantom import write_phantom
from heartjax.data.phantom.levels import VERSION
from heartjax.common.errors import HeartjaxError


def phantom_folder(d: DataConfig) -> Path:
    """Where the phantom of these settings lives: one folder per generator version, difficulty, modality, case
    count, data seed and spacing, so a phantom written by another generator is never reused."""
    sp = "x".join(f"{s:g}" for s in d.phantom_spacing)
    name = f"v{VERSION}-d{d.phantom_difficulty}-{d.phantom_modality}-n{d.phantom_cases}-seed{d.seed}-{sp}mm"
    return Path(d.phantom_dir) / name


def resolve_dataset(d: DataConfig, log: Callable = print) -> datasets.Dataset:
    """The dataset of `data.dir`, or the built-in phantom (written once, atomically, then reused)."""
    if d.dir is not None:
        return datasets.discover(Path(d.dir), d.scheme)
    folder = phantom_folder(d)
    if not (folder / ".complete").exists():
        log(f"writing the synthetic phantom ({d.phantom_cases} {d.phantom_modality.upper()} cases, difficulty "
            f"{d.phantom_difficulty}) to {folder}")
        # a concurrent run may finish the same (deterministic) phantom first: keep its folder, never replace it
        with atomic_dir(folder, overwrite=True, keep=lambda f: (f / ".complete").exists()) as tmp:
            write_phantom(tmp, cases=d.phantom_cases, modality=d.phantom_modality, seed=d.seed,
                          spacing=tuple(d.phantom_spacing), difficulty=d.phantom_difficulty)
            (tmp / ".complete").write_text("ok\n")
    return datasets.discover(folder, d.scheme)


def make_split(ds: datasets.Dataset, d: DataConfig) -> dict[str, list[str]]:
    """Patient-level train / val / test split: test = fold `data.fold` of K; val = `val_cases` of the rest; train
    the others, or a nested random subset of `train_cases` of them (validation and test patients unchanged)."""
    cases = list(ds.cases)[: d.max_cases] if d.max_cases else list(ds.cases)
    if not 0 <= d.fold < d.folds:
        raise HeartjaxError(f"config setting data.fold={d.fold} must be in 0..data.folds-1 ({d.folds - 1})")
    fold = datasets.make_folds(cases, d.folds, rng.seed_for(d.seed, "split"))[d.fold]
    patient_of = {c.case_id: c.patient for c in cases}
    train_patients = sorted({patient_of[c] for c in fold["train"]}, key=datasets.natural_key)
    if not 0 < d.val_cases < len(train_patients):
        raise HeartjaxError(f"config setting data.val_cases={d.val_cases} must be between 1 and "
                            f"{len(train_patients) - 1} (the number of training patients minus one)")
    chooser = np.random.default_rng(rng.seed_for(d.seed, "split/val"))
    val_patients = set(chooser.permutation(train_patients)[: d.val_cases].tolist())
    keep = [p for p in train_patients if p not in val_patients]
    if d.train_cases is not None:  # a nested random subset: N's patients are among N+1's (stream "split/subset")
        if d.train_cases > len(keep):
            raise HeartjaxError(f"config setting data.train_cases={d.train_cases} is more than the {len(keep)} "
                                "training patients this split has; choose at most that, or None for all")
        order = np.random.default_rng(rng.seed_for(d.seed, "split/subset")).permutation(keep).tolist()
        keep = order[: d.train_cases]
    keep = set(keep)
    return {
        "train": [c for c in fold["train"] if patient_of[c] in keep],
        "val": [c for c in fold["train"] if patient_of[c] in val_patients],
        "test": list(fold["val"]),
    }


class CaseStore:
    """Reads each scan of a dataset from disk at most once per run.

    `volume(cid)` loads and memoises a case. `release(ids, keep_image=())` drops the image (kept for `keep_image`)
    and keeps the label and grid of cases scored later, so memory holds labels, not every image.
    """

    def __init__(self, ds: datasets.Dataset):
        self.ds = ds
        self._volumes: dict[str, images.Volume] = {}
        self.reads = 0
        self.quirks = Quirks()  # header quirks of the files read, reported once per kind (`report_quirks`)

    def volume(self, cid: str) -> images.Volume:
        if cid not in self._volumes:
            c = self.ds.case(cid)
            with self.quirks.capture(c.image):
                self._volumes[cid] = images.load_volume(c.image, c.label, self.ds.scheme, case=c.case_id)
            self.reads += 1
        return self._volumes[cid]

    def report_quirks(self, log: Callable = print) -> None:
        """One line per kind of loader warning met since the last report, with the number of files it affects."""
        self.quirks.report(log, len(self.ds.cases))

    def release(self, drop: list[str], keep_labels: list[str], keep_image: tuple[str, ...] = ()) -> None:
        """Forget the cases in `drop`; keep only label and grid of `keep_labels` (and the images of `keep_image`)."""
        for cid in drop:
            self._volumes.pop(cid, None)
        for cid in keep_labels:
            v = self._volumes.get(cid)
            if v is not None and cid not in keep_image and v.image is not None:
                self._volumes[cid] = dataclasses.replace(v, image=None)


def make_plan(store: CaseStore, train_ids, p: PlanConfig, data_seed: int) -> plan_lib.Plan:
    """Fingerprint the training cases (body-cropped) and derive the plan, with the config's overrides."""
    vols, ds = [], store.ds
    for cid in train_ids:
        v = store.volume(cid)
        modality = ds.modality or preprocess.guess_modality(v.image)
        box = preprocess.body_box(v.image, modality, v.spacing, p.crop_margin_mm)
        sl = tuple(slice(lo, hi) for lo, hi in box)
        vols.append(dataclasses.replace(v, image=v.image[sl], label=v.label[sl]))
    fp = plan_lib.fingerprint(vols, modality, seed=rng.seed_for(data_seed, "fingerprint"))
    return plan_lib.make_plan(fp, plan_lib.plan_kinds(p), depth=p.depth, target_spacing=p.target_spacing,
                              crop_margin_mm=p.crop_margin_mm)


def preprocess_ids(store: CaseStore, ids, plan: plan_lib.Plan, cache_dir) -> dict:
    """Preprocess (or load from the cache) the given cases."""
    cases = [store.ds.case(i) for i in ids]
    return preprocess.preprocess_cases(cases, plan, store.ds.scheme, cache_dir, lambda c: store.volume(c.case_id))


def cross_modality(ds: datasets.Dataset, d: DataConfig, split: dict, plan: plan_lib.Plan, log: Callable = print):
    """The test patients' scans in the phantom modality `data.test_phantom_modality` (the same patients: same data
    seed, cases, spacing and difficulty), with the plan of the training modality for geometry and the test
    modality's own normalisation (from its fingerprint of the same training patients).

    Returns (test dataset, its case ids in the order of split["test"], the plan for the test scans).
    """
    test_data = dataclasses.replace(d, phantom_modality=d.test_phantom_modality)
    other = resolve_dataset(test_data, log)
    if len(other.cases) != len(ds.cases):
        raise HeartjaxError(f"phantom {phantom_folder(test_data)} has {len(other.cases)} cases, not {len(ds.cases)}; "
                            "delete it to have it rewritten")
    index = {c.case_id: i for i, c in enumerate(ds.cases)}
    mapped = {cid: other.cases[index[cid]].case_id for ids in split.values() for cid in ids}
    own = make_plan(CaseStore(other), [mapped[c] for c in split["train"]], _plan_config(plan), d.seed)
    norm = {k: getattr(own, k) for k in ("modality", "normalization", "ct_clip", "ct_mean", "ct_std")}
    return other, [mapped[c] for c in split["test"]], dataclasses.replace(plan, **norm)


def _plan_config(plan: plan_lib.Plan) -> PlanConfig:
    """A PlanConfig that reproduces a plan's geometry (for a second fingerprint whose normalisation is wanted)."""
    kinds = KindTable({k: KindPlanConfig(e.inherits_from, e.spatial_dims, e.patch, e.batch)
                       for k, e in plan.kinds.items()})
    return PlanConfig(target_spacing=plan.target_spacing, depth=plan.depth, kinds=kinds,
                      crop_margin_mm=plan.crop_margin_mm)
