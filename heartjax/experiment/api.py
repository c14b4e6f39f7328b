"""The experiment as a library: 2D, 2.5D and 3D U-Nets trained and scored on the same patients.

    from heartjax import experiment
    cfg = experiment.config("acdc", data="../shared/data/acdc-ed", overrides=["model.norm=batch"])
    res = experiment.run(cfg, workdir="runs/bn", kinds=["2d"])
    res.models["2d"].per_structure["LV"].dice_mean

`run` writes one run folder (config.json, splits.json, plan.json, label_scheme.json, models/KIND.json,
tb/KIND, checkpoints/KIND, predictions/KIND, eval_KIND.json, results.json, results.md, figures/) and returns
`heartjax.eval.results.Results`; `run_model` trains and scores one kind on a prepared split. `python -m
experiments.volumetric` is a command line over these functions.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np

from heartjax.common import atomic, provenance
from heartjax import config as config_lib
from heartjax.config import Config, presets
from heartjax.data import cases as cases_lib
from heartjax.data.io import images
from heartjax.data.plan import Plan
from heartjax.common.errors import HeartjaxError
from heartjax.eval import calibration, report
from heartjax.eval.figures import plot_case_montage
from heartjax.eval.score_figures import plot_structure_scores
from heartjax.eval.results import ModelResult, Results, compare
from heartjax.eval.scoring import model_results
from heartjax.experiment import specs
from heartjax.experiment.runner import case_mean_dice, train_and_score
from heartjax.common.paths import RunFolder
from heartjax.train.parallel import sync


def config(preset: str = "default", data: str | None = None, overrides: Sequence[str] = ()) -> Config:
    """The validated config of a preset, with `data` as data.dir (None: the phantom) and `key=value` overrides."""
    if preset not in presets.PRESETS:
        raise HeartjaxError(f"unknown preset {preset!r}; choose one of {sorted(presets.PRESETS)}")
    cfg = config_lib.apply_tree(Config(), presets.PRESETS[preset])
    if data is not None:
        cfg = config_lib.override(cfg, "data.dir", str(data))
    return specs.check_kinds(config_lib.validate(config_lib.apply_overrides(cfg, overrides)))


def _primary() -> bool:
    """Whether this process writes the run folder (process 0 of a multi-process run; always with one process)."""
    return jax.process_index() == 0


def prepare_workdir(workdir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber an existing run unless resume or overwrite (every process checks; process 0 acts)."""
    clear = False
    if workdir.exists() and any(workdir.iterdir()):
        if resume:
            if not RunFolder(workdir).config.exists():
                raise HeartjaxError(f"--resume: {workdir} is not a heartjax run (no config.json); check --out")
            return
        if not overwrite:
            raise HeartjaxError(f"run folder {workdir} exists and is not empty; pass --resume to continue it, "
                                f"--overwrite to replace it, or choose another --out")
        clear = True
    elif resume:
        raise HeartjaxError(f"--resume: run folder {workdir} does not exist or is empty; start without --resume")
    sync("workdir-checked")
    if _primary():
        if clear:
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    sync("workdir-ready")


def load_config(workdir: Path) -> Config:
    """The validated config a run folder was started with."""
    try:
        data = json.loads(RunFolder(workdir).config.read_text())
    except (OSError, ValueError) as e:
        raise HeartjaxError(f"cannot read {RunFolder(workdir).config} ({e}); is this a heartjax run folder?") from None
    return specs.check_kinds(config_lib.from_dict(data))


@dataclasses.dataclass
class Prepared:
    """The data side of one split: dataset, scan store, split, plan and preprocessed cases."""

    ds: object
    store: cases_lib.CaseStore
    split: dict[str, list[str]]
    plan: Plan
    pre: dict
    test_store: cases_lib.CaseStore | None = None  # data.test_phantom_modality: the test scans' own store
    test_ids: list[str] | None = None              # and their case ids (else split["test"] in `store`)

    @property
    def scored(self) -> tuple[cases_lib.CaseStore, list[str]]:
        """The store and case ids of the scans the test scores are computed on."""
        return (self.test_store or self.store), (self.test_ids or self.split["test"])


def prepare(cfg: Config, workdir: Path, log: Callable = print) -> Prepared:
    """Dataset, split and plan (read back from the run folder when it has them), preprocessed cases."""
    ds = cases_lib.resolve_dataset(cfg.data, log) if _primary() else None  # process 0 writes the phantom once
    sync("dataset")
    if ds is None:
        ds = cases_lib.resolve_dataset(cfg.data, log)
    log(f"dataset: {ds.root} ({ds.layout}, {len(ds.cases)} cases, scheme {ds.scheme.name}, modality {ds.modality})")
    store = cases_lib.CaseStore(ds)
    run = RunFolder(workdir)
    if run.splits.exists() and run.plan.exists():
        split = json.loads(run.splits.read_text())
        plan = Plan.from_json(json.loads(run.plan.read_text()))
    else:
        split = cases_lib.make_split(ds, cfg.data)  # every process derives the same split and plan
        plan = cases_lib.make_plan(store, split["train"], cfg.plan, cfg.data.seed)
        if _primary():
            atomic.write_json(run.splits, split)
            atomic.write_json(run.plan, plan.to_json())
            atomic.write_json(run.label_scheme, ds.scheme.to_json())
    log(f"split: {len(split['train'])} train / {len(split['val'])} val / {len(split['test'])} test patients; "
        f"plan: spacing {plan.target_spacing} mm, " + ", ".join(
            f"{k} patch {plan.kinds[k].patch}" for k in cfg.train.models if k in plan.kinds))
    pre = cases_lib.preprocess_ids(store, split["train"] + split["val"] + split["test"], plan, cfg.data.cache_dir)
    store.release(split["train"], keep_labels=split["val"] + split["test"], keep_image=tuple(split["test"][:1]))
    store.report_quirks(log)
    test_store = test_ids = None
    if cfg.data.test_phantom_modality not in (None, cfg.data.phantom_modality):
        if _primary():  # process 0 writes the other modality's phantom once; the others then find it
            cases_lib.resolve_dataset(dataclasses.replace(cfg.data, phantom_modality=cfg.data.test_phantom_modality),
                                      log)
        sync("test dataset")
        other, test_ids, test_plan = cases_lib.cross_modality(ds, cfg.data, split, plan, log)
        test_store = cases_lib.CaseStore(other)
        pre.update(cases_lib.preprocess_ids(test_store, test_ids, test_plan, cfg.data.cache_dir))
        log(f"test scans: the same {len(test_ids)} test patients in {cfg.data.test_phantom_modality.upper()} "
            f"({other.root}), normalised as {test_plan.normalization}")
    return Prepared(ds, store, split, plan, pre, test_store, test_ids)


def trains_on(cfg: Config, resume: bool, results) -> bool:
    """Whether finished models train on: a resume raised train.steps beyond the steps one of them trained."""
    return resume and not cfg.train.max_seconds and any(r.steps < cfg.train.steps for r in results)


def run_model(kind: str, cfg: Config, prep: Prepared, workdir: Path, resume: bool = False,
              log: Callable = print) -> ModelResult:
    """Train one kind on the prepared split (resuming from its latest checkpoint), score its best on the test
    patients; a kind already evaluated in this folder (eval_KIND.json) is read back, not retrained, unless a
    resume raised train.steps beyond the steps it trained (it then trains on from its latest checkpoint)."""
    run = RunFolder(workdir)
    done = run.eval_record(kind)
    if done.exists():
        result = ModelResult.from_json(kind, json.loads(done.read_text()))
        if not trains_on(cfg, resume, [result]):
            log(f"[{kind}] already trained and evaluated; reusing {done.name}")
            return result
        log(f"[{kind}] trained {result.steps} steps; continuing to train.steps={cfg.train.steps}")
    spec = specs.build_spec(cfg, prep.plan, kind, prep.ds.scheme.num_classes)
    if _primary():
        run.models.mkdir(exist_ok=True)
        atomic.write_json(run.model_spec(kind), spec.to_json())
    result = train_and_score(spec, cfg, prep, workdir, resume, log)
    if _primary():
        atomic.write_json(done, result.to_json())
    sync(f"done-{kind}")
    return result


def _write_figures(workdir: Path, results: Results, prep: Prepared) -> None:

    names, figs = results.label_names, RunFolder(workdir).figures
    figs.mkdir(exist_ok=True)
    plot_structure_scores(results.to_json(), figs / "dice_per_structure.png",
                          title=f"Test Dice and HD95 per structure ({results.dataset})")
    store, ids = prep.scored
    case = ids[0]
    vol = store.volume(case)
    preds = {}
    for kind in results.models:
        p = RunFolder(workdir).predictions(kind) / f"{case}.nii.gz"
        if p.exists():
            with warnings.catch_warnings():  # the scan's header quirks were reported when the dataset was read
                warnings.simplefilter("ignore")
                preds[kind], _ = images.load_label_file(p, prep.ds.scheme, reference_grid=vol.grid)
    if preds and vol.image is not None:
        plot_case_montage(vol.image, vol.label, preds, figs / f"montage_{case}.png", names, spacing=vol.spacing)


def _dataset_name(cfg: Config) -> str:
    if cfg.data.dir is not None:
        return str(cfg.data.dir)
    test = cfg.data.test_phantom_modality
    return "phantom-" + cfg.data.phantom_modality + (f"-tested-on-{test}" if test not in (None, cfg.data.phantom_modality)
                                                     else "")


def run_split(cfg: Config, workdir: Path, kinds: Sequence[str], resume: bool = False,
              log: Callable = print) -> Results:
    """Train and score `kinds` on one patient-level split into workdir; write the report."""
    prep = prepare(cfg, workdir, log)
    models = {kind: run_model(kind, cfg, prep, workdir, resume, log) for kind in kinds}
    names = list(prep.ds.scheme.names)
    results = Results(_dataset_name(cfg), prep.ds.layout, names, models, prep.scored[1], cfg.seed,
                      cfg.data.seed, {k: len(v) for k, v in prep.split.items()}, comparisons=compare(models, names),
                      provenance=provenance.collect())
    data = results.to_json()
    if _primary():
        report.write(workdir, data, report.markdown(data, prep.plan, prep.ds.scheme.name))
        _write_figures(workdir, results, prep)
        report.summarize(data, workdir, log)
    sync("report")
    return results


def _pooled_calibration(ms: list[ModelResult], names: list[str]) -> dict:
    """{"calibration": block} over every fold's test patients, when every fold has calibration rows; else {}."""
    blocks = [m.info.get("calibration") for m in ms]
    if not all(blocks):
        return {}
    rows = [r for b in blocks for r in b["per_case"]]
    dice = [case_mean_dice(c) for m in ms for c in m.per_case]
    return {"calibration": calibration.summarize(rows, dice, names)}


def pool_folds(folds: list[Results], workdir: Path, log: Callable = print) -> Results:
    """Cross-validation results: every patient is a test patient of exactly one fold."""
    names, first = folds[0].label_names, folds[0]
    models = {}
    for kind in first.models:
        ms = [f.models[kind] for f in folds]
        per_case = [c for m in ms for c in m.per_case]
        models[kind] = ModelResult.from_json(kind, model_results(per_case, names, {
            "steps": ms[0].steps, "train_seconds": float(sum(m.train_seconds for m in ms)),
            "infer_seconds_per_case": float(np.mean([m.infer_seconds_per_case for m in ms])),
            "params": ms[0].params, "folds": len(folds),
            "best_val_dice": float(np.mean([m.best_val_dice for m in ms])), **_pooled_calibration(ms, names)}))
    results = Results(first.dataset, first.layout, names, models, [c for f in folds for c in f.test_cases],
                      first.seed, first.data_seed, cross_validation=len(folds), comparisons=compare(models, names),
                      provenance=provenance.collect())
    data = results.to_json()
    if _primary():
        report.write(workdir, data, report.pooled_markdown(data))
        report.summarize(data, workdir, log)
    return results


def run(cfg: Config, workdir: str | Path, kinds: Sequence[str] | None = None, resume: bool = False,
        overwrite: bool = False, log: Callable = print) -> Results:
    """Run the experiment of `cfg` into `workdir` (refused if it holds a run, unless `resume` or `overwrite`).

    kinds: the model kinds to train (default `train.models`). With `resume`, the folder's own config.json is
    used (validated) and finished models are read back. With data.cross_validate, every fold trains into
    workdir/foldI and the pooled results of all test patients are returned.
    """
    workdir = Path(workdir)
    prepare_workdir(workdir, resume, overwrite)
    if resume:
        cfg = load_config(workdir)
        log(f"resuming {workdir} with its saved config")
    else:
        if kinds is not None:
            cfg = config_lib.override(cfg, "train.models", tuple(kinds))
        specs.check_kinds(config_lib.validate(cfg))
        if _primary():
            atomic.write_json(RunFolder(workdir).config, config_lib.to_dict(cfg))
    kinds = cfg.train.models
    if not cfg.data.cross_validate:
        return run_split(cfg, workdir, kinds, resume, log)
    folds = []
    for fold in range(cfg.data.folds):
        sub = RunFolder(workdir).fold(fold).root
        log(f"=== fold {fold} of {cfg.data.folds} ===")
        fold_cfg = config_lib.apply_tree(cfg, {"data": {"fold": fold, "cross_validate": False}})
        if _primary():
            sub.mkdir(exist_ok=True)
            atomic.write_json(RunFolder(sub).config, config_lib.to_dict(fold_cfg))  # a resume's changes too
        sync(f"fold{fold}")
        done = RunFolder(sub).results
        finished = Results.from_json(json.loads(done.read_text())) if done.exists() else None
        folds.append(finished if finished and not trains_on(cfg, resume, finished.models.values())
                     else run_split(fold_cfg, sub, kinds, resume, log))
    return pool_folds(folds, workdir, log)
