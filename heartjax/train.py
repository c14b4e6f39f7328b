"""Training: the train state pytree, optax optimisers from config, the jitted pure train step, and the fit loop.

`make_train_step(...)` returns `train_step(state, batch, key) -> (state, metrics)`, jitted with the state donated.
Augmentation runs inside the step (vmapped on the device). The run key is folded with the step number, so a run
resumed from step N replays the same random stream as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from heartjax import losses
from heartjax.augment import augment_batch
from heartjax.errors import HeartjaxError
from heartjax.unet import UNet, UNetConfig


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule. sgd: nnU-Net's SGD (Nesterov 0.99, poly decay 0.9); adamw: warm-up + cosine."""

    name: str = "adamw"
    lr: float = 1e-3
    momentum: float = 0.99
    nesterov: bool = True
    weight_decay: float = 3e-5
    warmup_steps: int = 0
    poly_power: float = 0.9
    clip_norm: float = 12.0

    def validate(self) -> None:
        if self.name not in ("sgd", "adamw"):
            raise HeartjaxError(f"optim.name must be 'sgd' or 'adamw', got {self.name!r}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise HeartjaxError(f"optim.lr must be a positive number, got {self.lr}")
        if self.warmup_steps < 0:
            raise HeartjaxError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.clip_norm < 0:
            raise HeartjaxError(f"optim.clip_norm must be >= 0 (0 disables clipping), got {self.clip_norm}")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Dice + CE weights and Dice options (see heartjax.losses)."""

    lambda_dice: float = 1.0
    lambda_ce: float = 1.0
    batch_dice: bool = False
    include_background: bool = False


def make_schedule(cfg: OptimConfig, total_steps: int):
    """Learning rate as a function of the step."""
    total = max(total_steps, 1)
    if cfg.name == "sgd":
        poly = lambda s: cfg.lr * (1.0 - jnp.minimum(s, total) / total) ** cfg.poly_power
        if cfg.warmup_steps:
            return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps), poly], [cfg.warmup_steps])
        return poly
    return optax.warmup_cosine_decay_schedule(0.0 if cfg.warmup_steps else cfg.lr, cfg.lr,
                                              max(cfg.warmup_steps, 1), max(total, cfg.warmup_steps + 1), 0.0)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """The optax chain: optional gradient-norm clipping, then SGD-Nesterov or AdamW with the schedule."""
    cfg.validate()
    sched = make_schedule(cfg, total_steps)
    if cfg.name == "sgd":
        opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                          optax.sgd(sched, momentum=cfg.momentum, nesterov=cfg.nesterov))
    else:
        opt = optax.adamw(sched, weight_decay=cfg.weight_decay)
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt) if cfg.clip_norm else opt


def create_train_state(model_cfg: UNetConfig, tx: optax.GradientTransformation, seed: int):
    """Build the model, split it once, and make the train state pytree.

    Returns (graphdef, state) with state = {"params", "rest" (e.g. batch statistics), "opt", "step" (int32)}.
    """
    model = UNet(model_cfg, rngs=nnx.Rngs(params=jax.random.key(seed)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    state = {"params": params, "rest": rest, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    return graphdef, state


def make_train_step(graphdef, tx, augment_fn: Callable | None, loss_cfg: LossConfig, schedule=None):
    """Return the jitted `train_step(state, batch, key) -> (state, metrics)`.

    batch = (images float32 [B, *spatial, C], labels uint8 [B, *spatial]); key: the run's PRNG key (the step is
    folded in here). metrics: {"loss", "grad_norm", "lr"} float32 scalars (left on the device).
    """
    loss_fn = functools.partial(losses.dice_ce_loss, lambda_dice=loss_cfg.lambda_dice, lambda_ce=loss_cfg.lambda_ce,
                                batch_dice=loss_cfg.batch_dice, include_background=loss_cfg.include_background)

    def train_step(state, batch, key):
        images, labels = batch
        key = jax.random.fold_in(key, state["step"])
        k_aug, k_drop = jax.random.split(key)
        labels = labels.astype(jnp.int32)
        if augment_fn is not None:
            images, labels = augment_batch(augment_fn, k_aug, images, labels)

        def objective(params):
            model = nnx.merge(graphdef, params, state["rest"])
            out = model(images, train=True, key=k_drop)
            loss = losses.deep_supervision_loss(out, labels, loss_fn)
            return loss, nnx.state(model, nnx.Not(nnx.Param))

        (loss, rest), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads)}
        if schedule is not None:
            metrics["lr"] = jnp.asarray(schedule(state["step"]), jnp.float32)
        return {"params": params, "rest": rest, "opt": opt, "step": state["step"] + 1}, metrics

    return jax.jit(train_step, donate_argnums=0)


def make_predict_fn(graphdef):
    """Return jitted `predict(state, images) -> probabilities float32 [B, *spatial, K+1]` (eval mode, softmax)."""

    def predict(state, images):
        model = nnx.merge(graphdef, state["params"], state["rest"])
        return jax.nn.softmax(model(images, train=False), axis=-1)

    return jax.jit(predict)


@dataclasses.dataclass
class FitResult:
    """What the fit loop reports: final state, last metrics, best EMA validation Dice and its step, wall time."""

    state: Any
    steps: int
    train_seconds: float
    best_ema: float
    best_step: int
    history: list


def fit(state, train_step, sampler, key, *, start_step: int, num_steps: int, log_every: int, eval_every: int,
        eval_fn: Callable | None = None, checkpointer=None, writer=None, meta: dict | None = None,
        ema_decay: float = 0.9, desc: str = "train", prefetch: int = 2, sharding=None, progress=True) -> FitResult:
    """Run optimiser steps [start_step, num_steps).

    Metrics are fetched from the device only at log points. Every `eval_every` steps, `eval_fn(state)` returns a
    dict with "dice" (mean validation Dice) and per-structure entries; its exponential moving average selects
    the "best" checkpoint, and the "latest" checkpoint is written. A NaN or Inf loss stops the run with a
    HeartjaxError; checkpoints are only written after a finite loss, so the last good one stays intact.
    `meta` (dict) carries resumable loop state: "train_seconds", "ema", "best_ema", "best_step", "history".
    """
    from heartjax.sampling import Prefetcher  # local: keeps train importable without the data layer

    meta = dict(meta or {})
    seconds = float(meta.get("train_seconds", 0.0))
    ema = meta.get("ema")
    best_ema, best_step = float(meta.get("best_ema", -1.0)), int(meta.get("best_step", -1))
    history = list(meta.get("history", []))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=num_steps, initial=start_step, desc=desc, unit="step", dynamic_ncols=True, leave=True)
    fetcher = Prefetcher(sampler, start_step, num_steps, depth=prefetch, sharding=sharding)
    t0 = time.perf_counter()
    try:
        for step, batch in fetcher:
            state, metrics = train_step(state, batch, key)
            done = step + 1
            if bar is not None:
                bar.update(1)
            if done % log_every and done % eval_every and done != num_steps:
                continue
            m = {k: float(v) for k, v in jax.device_get(metrics).items()}
            seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            if not math.isfinite(m["loss"]):
                last = checkpointer.latest_step() if checkpointer is not None else None
                raise HeartjaxError(
                    f"{desc}: the loss became {m['loss']} at step {done}; training stopped. The last good checkpoint "
                    f"(step {last}) is intact. Lower optim.lr or check the data for corrupt scans.")
            if writer is not None:
                writer.scalars(done, {f"train/{k}": v for k, v in m.items()})
            if bar is not None:
                bar.set_postfix(loss=f"{m['loss']:.4f}")
            if eval_fn is not None and (done % eval_every == 0 or done == num_steps):
                val = eval_fn(state)
                ema = val["dice"] if ema is None else ema_decay * ema + (1 - ema_decay) * val["dice"]
                history.append({"step": done, "loss": m["loss"], **{f"val_{k}": v for k, v in val.items()}, "val_ema": ema})
                if writer is not None:
                    writer.scalars(done, {**{f"val/{k}": v for k, v in val.items()}, "val/dice_ema": ema})
                improved = ema > best_ema
                if improved:
                    best_ema, best_step = ema, done
                meta_out = {"train_seconds": seconds, "ema": ema, "best_ema": best_ema, "best_step": best_step,
                            "history": history, "step": done}
                if checkpointer is not None:
                    if improved:
                        checkpointer.save("best", done, state, meta_out)
                    checkpointer.save("latest", done, state, meta_out)
                t0 = time.perf_counter()  # evaluation and saving are not training time
    finally:
        fetcher.close()
        if bar is not None:
            bar.close()
    return FitResult(state, num_steps, seconds, best_ema, best_step, history)
