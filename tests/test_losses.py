"""Losses: hand-checked values, background handling, batch Dice, class weights, deep supervision."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from heartjax.model import losses


def onehot_logits(labels, k, scale=50.0):
    return jax.nn.one_hot(labels, k) * scale


def test_cross_entropy_matches_manual():
    logits = jnp.array([[[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]])  # [1, 2, 3]
    labels = jnp.array([[0, 2]])
    logp = jax.nn.log_softmax(logits, -1)
    expect = -(logp[0, 0, 0] + logp[0, 1, 2]) / 2
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels), expect, rtol=1e-6)
    w = jnp.array([1.0, 1.0, 3.0])
    expect_w = -(logp[0, 0, 0] + 3 * logp[0, 1, 2]) / 4
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels, w), expect_w, rtol=1e-6)


def test_perfect_prediction_has_zero_dice_loss():
    labels = jnp.array(np.random.default_rng(0).integers(0, 3, (2, 8, 8)))
    assert float(losses.soft_dice_loss(onehot_logits(labels, 3), labels)) < 1e-4


def test_soft_dice_hand_value():
    # one sample, 4 voxels, 2 classes; probabilities for class 1: [1, 1, 0, 0] (saturated), truth [1, 0, 0, 0]
    labels = jnp.array([[1, 0, 0, 0]])
    logits = onehot_logits(jnp.array([[1, 1, 0, 0]]), 2)
    # class-1 Dice = 2*1 / (2 + 1) = 2/3
    np.testing.assert_allclose(losses.soft_dice_loss(logits, labels), 1 - 2 / 3, atol=1e-4)
    # with background: class-0 Dice = 2*2 / (2 + 3) = 0.8 -> mean (0.8 + 2/3) / 2
    np.testing.assert_allclose(losses.soft_dice_loss(logits, labels, include_background=True),
                               1 - (0.8 + 2 / 3) / 2, atol=1e-4)


def test_batch_dice_differs_from_per_sample_dice():
    labels = jnp.array([[1, 1, 0, 0], [1, 0, 0, 0]])
    pred = jnp.array([[1, 1, 0, 0], [0, 0, 0, 0]])
    logits = onehot_logits(pred, 2)
    per_sample = float(losses.soft_dice_loss(logits, labels))  # (1 + ~0) / 2 -> 0.5
    batch = float(losses.soft_dice_loss(logits, labels, batch_dice=True))  # 2*2/(2+3) = 0.8 -> 0.2
    np.testing.assert_allclose(per_sample, 0.5, atol=1e-3)
    np.testing.assert_allclose(batch, 0.2, atol=1e-3)


def test_dice_ce_is_weighted_sum():
    rng = np.random.default_rng(1)
    logits = jnp.array(rng.standard_normal((2, 6, 6, 4)), jnp.float32)
    labels = jnp.array(rng.integers(0, 4, (2, 6, 6)))
    d, c = losses.soft_dice_loss(logits, labels), losses.softmax_cross_entropy(logits, labels)
    np.testing.assert_allclose(losses.dice_ce_loss(logits, labels, 0.3, 2.0), 0.3 * d + 2.0 * c, rtol=1e-6)


def test_deep_supervision_loss_uses_downsampled_labels_and_skips_lowest():
    labels = jnp.zeros((1, 8, 8), jnp.int32).at[:, :4].set(1)
    full = onehot_logits(labels, 2)
    half = onehot_logits(losses.downsample_labels(labels, (4, 4)), 2)
    garbage = jnp.zeros((1, 2, 2, 2))  # the lowest output has weight 0: its value must not matter
    fn = lambda o, l: losses.softmax_cross_entropy(o, l)
    total = losses.deep_supervision_loss([full, half, garbage], labels, fn)
    assert float(total) < 1e-6
    wrong_half = onehot_logits(1 - losses.downsample_labels(labels, (4, 4)), 2)
    assert float(losses.deep_supervision_loss([full, wrong_half, garbage], labels, fn)) > 1.0


def test_downsample_labels_shapes():
    labels = jnp.arange(64).reshape(1, 4, 4, 4)
    assert losses.downsample_labels(labels, (2, 2, 4)).shape == (1, 2, 2, 4)
