"""Train one model kind on a prepared split and score its best checkpoint on the test patients.

Randomness: `seed` streams "init/KIND", "sample/KIND" and "train/KIND" (the train step folds in the step, then
"augment" and "dropout"); the fixed validation patches come from `data.seed`'s "val/KIND" stream.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from heartjax import config as config_lib
from heartjax.common import rng
from heartjax.config import Config
from heartjax.data.io import images
from heartjax.data import preprocess
from heartjax.eval import calibration, postprocess, scoring
from heartjax.eval.results import ModelResult
from heartjax.eval.figures import overlay_contours, readable_overlay
from heartjax.train.parallel import DataParallel, Feed
from heartjax.train.tensorboard import NullWriter, SummaryWriter, log_test, run_hparams
from heartjax.model.augment import make_augment
from heartjax.experiment.specs import ModelSpec
from heartjax.common.paths import RunFolder
from heartjax.train.budget import StepBudget
from heartjax.train.checkpoint import Checkpointer
from heartjax.train.hooks import CheckpointHook, EvalHook, LogHook, ProgressHook
from heartjax.train.loop import LoopState, fit
from heartjax.train.step import create_train_state, make_optimizer, make_predict_fn, make_train_step, weights
from heartjax.eval.validation import make_loss_fn, make_val_fn, patch_spacing


def _abstract(tree, sharding):
    """Shapes and dtypes of a pytree of arrays, on `sharding`: a restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _train(spec: ModelSpec, cfg: Config, prep, workdir: Path, resume: bool, writer, parallel: DataParallel,
           log: Callable):
    """Fit the model on the mesh; returns (predict, final state, loop state, checkpointer)."""
    parallel.check_batch(spec.batch, spec.batch_key)
    tx = make_optimizer(cfg.optim)
    graphdef, state = create_train_state(spec.unet, tx, rng.key(cfg.seed, f"init/{spec.name}"), cfg.train.steps)
    state = parallel.replicate(state)
    step_fn = make_train_step(graphdef, tx, make_augment(spec.augment, spec.spatial_dims), cfg.loss, cfg.optim,
                              parallel)
    predict = make_predict_fn(graphdef, parallel)
    ckpt = Checkpointer(RunFolder(workdir).checkpoints(spec.name))
    loop = LoopState()
    if resume and ckpt.latest_step() is not None:
        state, meta = ckpt.restore("latest", _abstract(state, parallel.replicated))
        loop = LoopState.from_json(meta)
        log(f"[{spec.name}] resuming from step {loop.step}")
        if not cfg.train.max_seconds:
            loop.planned_steps = None  # the step count is the plan (a budget's plan ended with the budget)
        if not cfg.train.max_seconds and int(jax.device_get(state["total"])) != cfg.train.steps:
            log(f"[{spec.name}] train.steps changed on resume: the schedule now runs to step {cfg.train.steps}")
            state = {**state, "total": parallel.replicate(np.asarray(cfg.train.steps, np.int32))}
    if loop.step == 0:
        writer.text("config", "```\n" + config_lib.to_json(cfg) + "\n```")
        writer.text("plan", "```\n" + json.dumps(prep.plan.to_json(), indent=2) + "\n```")
    t = cfg.train
    feed = Feed(spec.sampler([prep.pre[i] for i in prep.split["train"]], rng.seed_for(cfg.seed, f"sample/{spec.name}"),
                             cfg.sampling.fg_fraction), parallel)
    names = list(prep.ds.scheme.names)
    val_fn = make_val_fn(spec, predict, [prep.pre[i] for i in prep.split["val"]], cfg, names,
                         patch_spacing(prep.plan, spec.slice_axis), make_loss_fn(graphdef, cfg.loss, parallel))
    hooks = [ProgressHook(f"train {spec.name}", loop.step, t.log_every, enabled=parallel.primary),
             LogHook(writer, t.log_every, batch=spec.batch),
             EvalHook(val_fn, t.eval_every, t.ema_decay, writer), CheckpointHook(ckpt, t.eval_every)]
    budget = StepBudget(t.max_seconds, t.steps) if t.max_seconds else None
    key = parallel.replicate(rng.key(cfg.seed, f"train/{spec.name}"))
    state, loop = fit(state, step_fn, feed, key, loop, num_steps=t.steps, hooks=hooks, budget=budget, place=feed.place)
    return predict, state, loop, ckpt


def _decide_postprocessing(spec, predict, best, prep, names) -> dict:
    """On the validation patients, per structure: keep its main component only where that helps."""
    cases = []
    for cid in prep.split["val"]:
        vol = prep.store.volume(cid)
        probs = spec.predict_volume(lambda x: predict(best, x), prep.pre[cid].image)
        cases.append((preprocess.restore(probs, prep.pre[cid]), vol.label, vol.spacing, cid))
    return postprocess.decide(cases, names)


def calibration_row(probs: np.ndarray, pre, vol, names, cid: str) -> dict:
    """Calibration of one test patient (`heartjax.eval.calibration`): its probabilities resampled to the original
    grid (where Dice is scored) inside the reference heart's bounding box plus the margin."""
    box = calibration.heart_box(vol.label, vol.spacing)
    if box is None:
        return {"case": cid, "ece": None}
    probs_box = preprocess.restore_probabilities_in(probs, pre, box)
    return {"case": cid, **calibration.case_calibration(probs_box, vol.label[box], names)}


def case_mean_dice(case: dict) -> tuple[str, float]:
    """(case, mean Dice over the structures with a Dice) of a per-case score."""
    dice = [v for v in case["dice"].values() if v is not None and np.isfinite(v)]
    return case["case"], float(np.mean(dice)) if dice else float("nan")


def train_and_score(spec: ModelSpec, cfg: Config, prep, workdir: Path, resume: bool = False,
                    log: Callable = print) -> ModelResult:
    """Train `spec` (resuming from its latest checkpoint), restore its best weights, score the test patients."""
    kind, scheme = spec.name, prep.ds.scheme
    names = list(scheme.names)
    parallel = DataParallel.create()
    primary = parallel.primary  # writes TensorBoard and predictions; every process computes
    writer = SummaryWriter(RunFolder(workdir).tensorboard(kind)) if primary else NullWriter()
    predict, state, loop, ckpt = _train(spec, cfg, prep, workdir, resume, writer, parallel, log)
    best, _ = ckpt.restore("best", _abstract(weights(state), parallel.replicated))
    ckpt.close()
    log(f"[{kind}] trained {loop.step} steps in {loop.train_seconds:.0f} s; best EMA val Dice {loop.best_ema:.3f} "
        f"at step {loop.best_step}; evaluating {len(prep.scored[1])} test patients")
    decision = _decide_postprocessing(spec, predict, best, prep, names)
    kept = [n for n, k in decision["per_structure"].items() if k]
    log(f"[{kind}] main-component post-processing, decided per structure on validation: "
        f"{', '.join(kept) if kept else 'none'}")
    per_case, per_case_pp, infer_seconds, calib = [], [], [], []
    pred_dir = RunFolder(workdir).predictions(kind)
    pred_dir.mkdir(parents=True, exist_ok=True)
    store, test_ids = prep.scored
    for i, cid in enumerate(test_ids):
        vol, pre = store.volume(cid), prep.pre[cid]
        t0 = time.perf_counter()
        probs = spec.predict_volume(lambda x: predict(best, x), pre.image)
        labels = preprocess.restore(probs, pre)
        infer_seconds.append(time.perf_counter() - t0)
        calib.append(calibration_row(probs, pre, vol, names, cid))
        per_case.append(scoring.score_case(labels, vol.label, vol.spacing, names, cid))
        per_case_pp.append(scoring.score_case(postprocess.apply(labels, decision), vol.label, vol.spacing, names,
                                              cid))
        if cfg.infer.save_predictions and primary:
            images.save_label(pred_dir / f"{cid}.nii.gz", labels, vol.grid, scheme, overwrite=True)
        if i == 0:
            axis = prep.plan.slice_axis
            mid = int(np.argmax((pre.label > 0).sum(axis=tuple(a for a in range(3) if a != axis))))
            take = lambda a: np.take(a, mid, axis=axis)[::-1, ::-1].T  # radiological, as the montage
            writer.image(loop.step, "test/overlay", readable_overlay(overlay_contours(
                take(pre.image), take(pre.label), take(np.argmax(probs, -1)), scheme.num_classes), names))
    result = scoring.model_results(per_case, names, {
        "steps": loop.step, "train_seconds": loop.train_seconds,
        "infer_seconds_per_case": float(np.mean(infer_seconds)), "best_step": int(loop.best_step),
        "params": int(sum(x.size for x in jax.tree.leaves(best["params"]))),
        "best_val_dice": float(loop.best_ema), "postprocessing": decision, **parallel.info(spec.batch),
        "calibration": calibration.summarize(calib, [case_mean_dice(c) for c in per_case], names),
    })
    pp = scoring.model_results(per_case_pp, names)
    result["largest_component_test"] = {"mean_dice": pp["mean_dice"], "per_structure": pp["per_structure"],
                                        "per_case": pp["per_case"]}
    log_test(writer, result, run_hparams(cfg, kind), loop.best_ema)
    writer.close()
    return ModelResult.from_json(kind, result)
