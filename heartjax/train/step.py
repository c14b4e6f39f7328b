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

from heartjax import conv as conv_lib
from heartjax.model import losses
from heartjax.model.augment import augment_batch
from heartjax.errors import HeartjaxError
from heartjax.model.unet import UNet, UNetConfig


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
    """Dice + CE weights and Dice options (see heartjax.model.losses)."""

    lambda_dice: float = 1.0
    lambda_ce: float = 1.0
    batch_dice: bool = False
    include_background: bool = False


def learning_rate(cfg: OptimConfig, step, total):
    """Learning rate at `step` of `total` steps (both may be traced): linear warm-up, then poly decay (sgd,
    nnU-Net's (1 - t/T)**0.9) or cosine decay to 0 (adamw). `total` lives in the train state, so a wall-time
    budget can set it after measuring the step time without recompiling."""
    step = jnp.asarray(step, jnp.float32)
    total = jnp.maximum(jnp.asarray(total, jnp.float32), 1.0)
    warm = float(cfg.warmup_steps)
    frac = jnp.clip((step - warm) / jnp.maximum(total - warm, 1.0), 0.0, 1.0)
    decay = (1.0 - frac) ** cfg.poly_power if cfg.name == "sgd" else 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    ramp = jnp.minimum(1.0, (step + 1.0) / warm) if cfg.warmup_steps else 1.0
    return cfg.lr * ramp * jnp.where(step < warm, 1.0, decay)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """The optax chain without the learning rate (applied in the train step from `learning_rate`):
    optional gradient-norm clipping, then Nesterov SGD with weight decay, or AdamW (decoupled weight decay)."""
    cfg.validate()
    if cfg.name == "sgd":
        opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay), optax.trace(cfg.momentum, cfg.nesterov))
    else:
        opt = optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(cfg.weight_decay))
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt) if cfg.clip_norm else opt


def create_train_state(model_cfg: UNetConfig, tx: optax.GradientTransformation, seed: int, total_steps: int):
    """Build the model, split it once, and make the train state pytree.

    Returns (graphdef, state) with state = {"params", "rest" (e.g. batch statistics), "opt", "step" (int32),
    "total" (int32: the schedule's length)}.
    """
    model = UNet(model_cfg, rngs=nnx.Rngs(params=jax.random.key(seed)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    state = {"params": params, "rest": rest, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32),
             "total": jnp.asarray(total_steps, jnp.int32)}
    return graphdef, state


def make_train_step(graphdef, tx, augment_fn: Callable | None, loss_cfg: LossConfig, optim_cfg: OptimConfig):
    """Return the jitted `train_step(state, batch, key) -> (state, metrics)`.

    batch = (images float32 [B, *spatial, C], labels uint8 [B, *spatial]); key: the run's PRNG key (the step is
    folded in here). metrics: {"loss", "grad_norm", "lr"} float32 scalars (left on the device).
    The learning rate is `learning_rate(optim_cfg, state["step"], state["total"])`.
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
        lr = learning_rate(optim_cfg, state["step"], state["total"])
        params = jax.tree.map(lambda p, u: p - lr * u, state["params"], updates)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": lr}
        return {**state, "params": params, "rest": rest, "opt": opt, "step": state["step"] + 1}, metrics

    # On the CPU: convolutions on XLA's own kernels, reductions on YNNPACK (heartjax.conv.cpu_compiler_options).
    return jax.jit(train_step, donate_argnums=0, compiler_options=conv_lib.cpu_compiler_options())


def make_predict_fn(graphdef):
    """Return jitted `predict(state, images) -> probabilities float32 [B, *spatial, K+1]` (eval mode, softmax)."""

    def predict(state, images):
        model = nnx.merge(graphdef, state["params"], state["rest"])
        return jax.nn.softmax(model(images, train=False), axis=-1)

    return jax.jit(predict, compiler_options=conv_lib.cpu_compiler_options())


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
        ema_decay: float = 0.9, desc: str = "train", prefetch: int = 2, sharding=None, progress=True,
        max_seconds: float | None = None, calibrate_steps: int = 10) -> FitResult:
    """Run optimiser steps [start_step, num_steps).

    Metrics are fetched from the device only at log points. Every `eval_every` steps, `eval_fn(state)` returns a
    dict with "dice" (mean validation Dice) and per-structure entries; its exponential moving average selects
    the "best" checkpoint, and the "latest" checkpoint is written. A NaN or Inf loss stops the run with a
    HeartjaxError; checkpoints are only written after a finite loss, so the last good one stays intact.
    `meta` (dict) carries resumable loop state: "train_seconds", "ema", "best_ema", "best_step", "history".
    With `max_seconds`, the step time is measured over `calibrate_steps` steps after the first (compiling) one and
    the run is shortened to fit the budget: state["total"] (the schedule's length) and the last step are set
    then, so the learning rate still decays to its end. At every later log point the plan is redone from the
    steps timed since (when it moves by more than 1 %): the first steps run on prefetched batches, so they
    come out faster than the steady state, whose host sampling shares the cores. `num_steps` stays the upper
    bound; evaluation and checkpointing are not training time.
    """
    from heartjax.data.sampling import Prefetcher  # local: keeps train importable without the data layer

    meta = dict(meta or {})
    seconds = float(meta.get("train_seconds", 0.0))
    ema = meta.get("ema")
    best_ema, best_step = float(meta.get("best_ema", -1.0)), int(meta.get("best_step", -1))
    history = list(meta.get("history", []))
    if meta.get("budget_steps"):
        num_steps = int(meta["budget_steps"])
    calibrating = max_seconds is not None and not meta.get("budget_steps")
    upper = num_steps
    t_first = None
    replan_from = None  # (step, training seconds) where the calibration ended
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=num_steps, initial=start_step, desc=desc, unit="step", dynamic_ncols=True, leave=True)

    def replan(state, steps):
        """Make `steps` the run's length: the schedule's total, the resumable plan and the progress bar."""
        meta["budget_steps"] = steps
        if bar is not None:
            bar.total = steps
            bar.refresh()
        return {**state, "total": jnp.asarray(steps, jnp.int32)}

    fetcher = Prefetcher(sampler, start_step, num_steps, depth=prefetch, sharding=sharding)
    t0 = time.perf_counter()
    try:
        for step, batch in fetcher:
            if step >= num_steps:
                break
            state, metrics = train_step(state, batch, key)
            done = step + 1
            if bar is not None:
                bar.update(1)
            if calibrating and done in (start_step + 1, start_step + 1 + calibrate_steps):
                jax.block_until_ready(metrics)
                now = time.perf_counter()
                if t_first is None:
                    t_first = now
                else:
                    per_step = (now - t_first) / calibrate_steps
                    left = max_seconds - (seconds + now - t0)
                    num_steps = max(int(min(num_steps, done + max(0, left) // per_step)), done)
                    state = replan(state, num_steps)
                    calibrating = False
                    replan_from = (done, seconds + now - t0)
            if done % log_every and done % eval_every and done != num_steps:
                continue
            m = {k: float(v) for k, v in jax.device_get(metrics).items()}
            seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            if replan_from is not None and done - replan_from[0] >= calibrate_steps and done < num_steps:
                per_step = max(seconds - replan_from[1], 1e-9) / (done - replan_from[0])
                target = max(int(min(upper, done + max(0.0, max_seconds - seconds) // per_step)), done)
                if abs(target - num_steps) > 0.01 * num_steps:
                    num_steps = target
                    state = replan(state, num_steps)
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
                            "history": history, "step": done, "budget_steps": meta.get("budget_steps")}
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
