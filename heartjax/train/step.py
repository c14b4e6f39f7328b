"""Training pieces: the train state pytree, optax optimisers from config, the jitted pure train step, predict.

`make_train_step(...)` returns `train_step(state, batch, key) -> (state, metrics)`, jitted with the state donated.
Augmentation runs inside the step (vmapped on the device). The run key is folded with the step number, so a run
resumed from step N replays the same random stream as an uninterrupted one.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from heartjax import conv as conv_lib
from heartjax.model import losses
from heartjax.model.augment import augment_batch
from heartjax.common import rng
from heartjax.model.unet import UNet, UNetConfig
from heartjax.config.options import LossConfig, OptimConfig


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


def create_train_state(model_cfg: UNetConfig, tx: optax.GradientTransformation, seed, total_steps: int):
    """Build the model from `seed` (a PRNG key, or an int), split it once, and make the train state pytree.

    Returns (graphdef, state) with state = {"params", "rest" (e.g. batch statistics), "opt", "step" (int32),
    "total" (int32: the schedule's length)}.
    """
    key = seed if isinstance(seed, jax.Array) else jax.random.key(int(seed))
    model = UNet(model_cfg, rngs=nnx.Rngs(params=key))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    state = {"params": params, "rest": rest, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32),
             "total": jnp.asarray(total_steps, jnp.int32)}
    return graphdef, state


def weights(state) -> dict:
    """The part of a train state that inference needs: {"params", "rest"}."""
    return {"params": state["params"], "rest": state["rest"]}


def make_train_step(graphdef, tx, augment_fn: Callable | None, loss_cfg: LossConfig, optim_cfg: OptimConfig,
                    parallel=None):
    """Return the jitted `train_step(state, batch, key) -> (state, metrics)`.

    parallel (heartjax.train.parallel.DataParallel): the batch comes sharded along the mesh's "data" axis, the
    state and key replicated, and the step is compiled with those in/out shardings (GSPMD inserts the gradient
    all-reduce). The per-sample augmentation keys come from the global batch's index, so they do not depend
    on the device count.

    batch = (images float32 [B, *spatial, C], labels uint8 [B, *spatial]); key: the run's PRNG key (the step is
    folded in here, then the named streams "augment" and "dropout"). metrics: {"loss", "grad_norm", "lr"} float32 scalars (left on the device).
    The learning rate is `learning_rate(optim_cfg, state["step"], state["total"])`.
    """
    loss_fn = functools.partial(losses.dice_ce_loss, lambda_dice=loss_cfg.lambda_dice, lambda_ce=loss_cfg.lambda_ce,
                                batch_dice=loss_cfg.batch_dice, include_background=loss_cfg.include_background)

    def train_step(state, batch, key):
        images, labels = batch
        key = jax.random.fold_in(key, state["step"])
        k_aug, k_drop = rng.fold(key, "augment"), rng.fold(key, "dropout")
        labels = labels.astype(jnp.int32)
        if augment_fn is not None:
            images, labels = augment_batch(augment_fn, k_aug, images, labels)

        def objective(params):
            # Fresh variables for the non-trainable state (batch statistics) inside this trace: NNX refuses to
            # update a variable created at the outer (jit) trace level from inside the gradient's trace.
            model = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, state["rest"]))
            out = model(images, train=True, key=k_drop)
            loss = losses.deep_supervision_loss(out, labels, loss_fn)
            return loss, nnx.state(model, nnx.Not(nnx.Param))

        (loss, rest), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        lr = learning_rate(optim_cfg, state["step"], state["total"])
        params = jax.tree.map(lambda p, u: p - lr * u, state["params"], updates)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": lr}
        return {**state, "params": params, "rest": rest, "opt": opt, "step": state["step"] + 1}, metrics

    # On the CPU: convolutions on XLA's own kernels, reductions on YNNPACK (heartjax.conv.compiler_options).
    shardings = {} if parallel is None else dict(
        in_shardings=(parallel.replicated, parallel.batch, parallel.replicated),
        out_shardings=(parallel.replicated, parallel.replicated))
    return jax.jit(train_step, donate_argnums=0, compiler_options=conv_lib.compiler_options(), **shardings)


def make_predict_fn(graphdef, parallel=None):
    """Return `predict(state, images) -> probabilities float32 [B, *spatial, K+1]` (eval mode, softmax), jitted.

    With `parallel`, the images (a host array, the same on every process) are split over the mesh's devices,
    padded to a multiple of their number, and the probabilities come back replicated.
    """

    def predict(state, images):  # state: a train state or its `weights`
        model = nnx.merge(graphdef, state["params"], state["rest"])
        return jax.nn.softmax(model(images, train=False), axis=-1)

    if parallel is None:
        return jax.jit(predict, compiler_options=conv_lib.compiler_options())
    jitted = jax.jit(predict, compiler_options=conv_lib.compiler_options(),
                     in_shardings=(parallel.replicated, parallel.batch), out_shardings=parallel.replicated)

    def spread(state, images):
        n = images.shape[0]
        pad = -n % parallel.size
        if pad:
            images = np.concatenate([images, np.repeat(np.asarray(images[-1:]), pad, axis=0)])
        return jitted(state, parallel.spread(np.asarray(images)))[:n]

    return spread


def abstract_weights(model_cfg: UNetConfig):
    """(graphdef, weights) of a network with abstract leaves (shapes and dtypes, no values): a restore target."""
    model = nnx.eval_shape(lambda: UNet(model_cfg, rngs=nnx.Rngs(params=jax.random.key(0))))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, {"params": params, "rest": rest}
