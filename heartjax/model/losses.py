"""Segmentation losses: pure functions of logits [B, *spatial, K+1] (float) and labels [B, *spatial] (int)."""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def softmax_cross_entropy(logits, labels, class_weights=None):
    """Mean voxel-wise cross-entropy.

    logits: float [B, *spatial, C]; labels: int [B, *spatial] in 0..C-1; class_weights: optional float [C]
    (the mean is then weighted, normalised by the summed weights of the voxels). Returns a float32 scalar.
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    if class_weights is None:
        return nll.mean()
    w = jnp.asarray(class_weights, jnp.float32)[labels]
    return (nll * w).sum() / jnp.maximum(w.sum(), 1e-8)


def soft_dice_loss(logits, labels, include_background=False, smooth=1e-5, batch_dice=False, class_weights=None):
    """1 - mean soft Dice over classes (softmax probabilities against one-hot labels).

    Per-sample Dice (averaged over the batch) unless `batch_dice`, which pools the batch as one region
    (nnU-Net's choice for 2D and anisotropic data). Background is excluded unless `include_background`.
    Shapes as in `softmax_cross_entropy`. Returns a float32 scalar.
    """
    num_classes = logits.shape[-1]
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    axes = tuple(range(0 if batch_dice else 1, logits.ndim - 1))
    intersect = (probs * onehot).sum(axes)
    denom = probs.sum(axes) + onehot.sum(axes)
    dice = (2.0 * intersect + smooth) / (denom + smooth)  # [B, C] or [C]
    if not include_background:
        dice = dice[..., 1:]
    if class_weights is not None:
        w = jnp.asarray(class_weights, jnp.float32)
        w = w if include_background else w[1:]
        return 1.0 - (dice * w).sum(-1).mean() / jnp.maximum(w.sum(), 1e-8)
    return 1.0 - dice.mean()


def dice_ce_loss(logits, labels, lambda_dice=1.0, lambda_ce=1.0, include_background=False, smooth=1e-5,
                 batch_dice=False, class_weights=None):
    """lambda_dice * soft Dice loss + lambda_ce * cross-entropy (nnU-Net and MONAI default: 1 and 1)."""
    dice = soft_dice_loss(logits, labels, include_background, smooth, batch_dice, class_weights)
    ce = softmax_cross_entropy(logits, labels, class_weights)
    return lambda_dice * dice + lambda_ce * ce


def deep_supervision_weights(n: int) -> np.ndarray:
    """Weights 1/2**i for outputs i = 0 (full resolution) .. n-1, the lowest set to 0, normalised to sum 1."""
    w = np.array([1.0 / 2**i for i in range(n)], np.float32)
    if n > 1:
        w[-1] = 0.0
    return w / w.sum()


def downsample_labels(labels, spatial_shape: Sequence[int]):
    """Nearest downsampling of int labels [B, *spatial] to `spatial_shape` by strided selection."""
    factors = [s // t for s, t in zip(labels.shape[1:], spatial_shape)]
    idx = (slice(None),) + tuple(slice(f // 2, None, f) for f in factors)
    return labels[idx]


def deep_supervision_loss(outputs, labels, loss_fn: Callable, weights=None):
    """Weighted sum of `loss_fn(logits_i, labels_i)` over deep-supervision outputs (full resolution first)."""
    if not isinstance(outputs, (list, tuple)):
        return loss_fn(outputs, labels)
    weights = deep_supervision_weights(len(outputs)) if weights is None else weights
    total = 0.0
    for w, out in zip(weights, outputs):
        if float(w) == 0.0:
            continue
        total = total + float(w) * loss_fn(out, downsample_labels(labels, out.shape[1:-1]))
    return total
