"""One U-Net for `spatial_dims` 2 and 3, as a Flax NNX module used functionally.

Layout is channels-last: input [B, *spatial, C_in], logits [B, *spatial, num_classes]. Every convolution goes
through `heartjax.conv.conv`, so a faster formulation for a backend is swapped in there, not here.

Encoder stage i has two conv-norm-activation blocks with min(features * growth**i, max_features) channels; the
first conv of every stage after the first downsamples by a stride (per axis, so anisotropic data can keep its
coarse axis, as nnU-Net does). The decoder upsamples, concatenates the skip and applies two blocks.
Upsampling "resize" applies a 1x1 conv at the coarse resolution and then repeats voxels (nearest). That equals
nearest-resize followed by a 1x1 conv but costs 2**d times less, and avoids XLA's slow 3D transposed-conv
gradient on GPUs. "transpose" is a transposed convolution with kernel = stride.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from heartjax import conv as conv_lib
from heartjax.config.options import ModelConfig
from heartjax.config.validation import model_rules
from heartjax.common.errors import HeartjaxError


@dataclasses.dataclass(frozen=True)
class UNetConfig(ModelConfig):
    """U-Net hyper-parameters: the config's model options (`ModelConfig`: features, norm, dtype, ..., written once
    there) and the geometry a spec derives from the plan. `strides[i]` is the per-axis downsampling into stage i + 1.
    """

    spatial_dims: int = 3
    in_channels: int = 1
    num_classes: int = 8
    depth: int = 4
    strides: tuple[tuple[int, ...], ...] | None = None
    kernel_sizes: tuple[tuple[int, ...], ...] | None = None
    group_size: int = 8

    def stage_features(self) -> list[int]:
        """Channels of each of the depth + 1 stages."""
        return [min(self.features * self.growth**i, self.max_features) for i in range(self.depth + 1)]

    def stage_strides(self) -> list[tuple[int, ...]]:
        """Per-axis stride into each stage 1..depth."""
        if self.strides is None:
            return [(2,) * self.spatial_dims] * self.depth
        return [tuple(s) for s in self.strides]

    def stage_kernels(self) -> list[tuple[int, ...]]:
        """Per-axis kernel size of each stage 0..depth."""
        if self.kernel_sizes is None:
            return [(3,) * self.spatial_dims] * (self.depth + 1)
        return [tuple(k) for k in self.kernel_sizes]

    def divisor(self) -> tuple[int, ...]:
        """Input sizes must be multiples of this, per axis."""
        return tuple(math.prod(s[a] for s in self.stage_strides()) for a in range(self.spatial_dims))

    def validate(self) -> None:
        """Raise HeartjaxError naming the setting, its value and what is allowed: the geometry here, the options
        by the config's own rules (`heartjax.config.validation.model_rules`, one rule per option for both)."""
        def bad(setting, why):
            raise HeartjaxError(f"model.{setting}={getattr(self, setting)!r} is invalid: {why}")

        if self.spatial_dims not in (2, 3):
            bad("spatial_dims", "must be 2 or 3")
        if self.depth < 1:
            bad("depth", "must be at least 1")
        options = {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelConfig)}
        for field, ok, what in model_rules(options, self.depth, self.group_size):
            if not ok:
                bad(field, what)
        if self.num_classes < 2:
            bad("num_classes", "needs background plus at least one structure")
        if len(self.stage_strides()) != self.depth or any(len(s) != self.spatial_dims for s in self.stage_strides()):
            bad("strides", f"need {self.depth} tuples of {self.spatial_dims} ints")
        if len(self.stage_kernels()) != self.depth + 1 or any(len(k) != self.spatial_dims for k in self.stage_kernels()):
            bad("kernel_sizes", f"need {self.depth + 1} tuples of {self.spatial_dims} ints")

    def check_input(self, spatial_shape: Sequence[int]) -> None:
        """Raise HeartjaxError when a patch cannot pass through the network."""
        div = self.divisor()
        if len(spatial_shape) != self.spatial_dims or any(s % d for s, d in zip(spatial_shape, div)):
            raise HeartjaxError(
                f"patch size {tuple(spatial_shape)} does not fit the U-Net: each axis must be a multiple of {div} "
                f"(the product of the strides over depth={self.depth}); change patch_size or model.depth"
            )


class Conv(nnx.Module):
    """A convolution whose kernel is [*kernel, C_in, C_out], run through heartjax.conv with implementation `impl`."""

    def __init__(self, cin: int, cout: int, kernel: Sequence[int], strides: Sequence[int] = 1, *, use_bias=True,
                 impl: str = "auto", rngs: nnx.Rngs):
        init = jax.nn.initializers.variance_scaling(2.0, "fan_in", "normal")  # He init, right for (leaky) ReLU
        self.kernel = nnx.Param(init(rngs.params(), (*kernel, cin, cout), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32)) if use_bias else None
        self.strides = tuple(strides) if not isinstance(strides, int) else strides
        self.impl = impl

    def __call__(self, x):
        y = conv_lib.conv(x, self.kernel[...].astype(x.dtype), strides=self.strides, padding="SAME", impl=self.impl)
        return y if self.bias is None else y + self.bias[...].astype(y.dtype)


class Norm(nnx.Module):
    """Batch, instance or group normalisation over channels-last input, computed in float32, returned in the
    input's dtype."""

    def __init__(self, kind: str, features: int, group_size: int = 8, momentum: float = 0.9):
        self.kind, self.momentum = kind, momentum
        self.groups = features // min(group_size, features) if kind == "group" else features
        self.scale = nnx.Param(jnp.ones((features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((features,), jnp.float32))
        if kind == "batch":
            self.mean = nnx.BatchStat(jnp.zeros((features,), jnp.float32))
            self.var = nnx.BatchStat(jnp.ones((features,), jnp.float32))

    def __call__(self, x, train: bool):
        if self.kind != "batch":  # instance (groups == channels) or group: float32 inside, x's dtype out
            return group_norm(x, self.scale[...], self.bias[...], self.groups)
        dtype, x = x.dtype, x.astype(jnp.float32)
        spatial = tuple(range(1, x.ndim - 1))
        if train:
            mean, var = x.mean((0, *spatial)), x.var((0, *spatial))
            m = self.momentum
            self.mean[...] = m * self.mean[...] + (1 - m) * jax.lax.stop_gradient(mean)
            self.var[...] = m * self.var[...] + (1 - m) * jax.lax.stop_gradient(var)
        else:
            mean, var = self.mean[...], self.var[...]
        y = (x - mean) * jax.lax.rsqrt(var + 1e-5)
        return (y * self.scale[...] + self.bias[...]).astype(dtype)


def _group_stats(x, groups: int):
    """Per-(sample, group) mean and 1/std of x [B, *spatial, C] (two passes: mean, then squared deviations),
    each shaped [B, 1.., groups, 1] to broadcast against x split as [B, *spatial, groups, C / groups]."""
    g = x.reshape(*x.shape[:-1], groups, x.shape[-1] // groups)
    axes = (*range(1, x.ndim - 1), g.ndim - 1)
    mean = g.mean(axes, keepdims=True)
    return g, mean, jax.lax.rsqrt(jnp.square(g - mean).mean(axes, keepdims=True) + 1e-5)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def group_norm(x, scale, bias, groups: int):
    """Group normalisation (instance norm when groups == channels) of x [B, *spatial, C] (float32 or
    bfloat16), eps 1e-5, then the per-channel affine `scale`, `bias` [C] (float32). Returns x's dtype.

    Statistics and arithmetic run in float32 whatever x's dtype; x is kept for the backward pass in its own
    dtype (half the memory for bfloat16), and dx is returned in it, so bfloat16 cotangents stay bfloat16.
    The backward pass is written out: one reduction over the spatial axes of dy and dy * x_hat per (sample,
    channel), from which dx, dscale and dbias all follow, instead of the several reductions automatic
    differentiation of the two-pass statistics produces.
    """
    return _group_norm_fwd(x, scale, bias, groups)[0]


def _group_norm_fwd(x, scale, bias, groups):
    """Forward pass; keeps x (in its dtype) and the statistics."""
    xf = x.astype(jnp.float32)
    g, mean, rstd = _group_stats(xf, groups)
    y = ((g - mean) * rstd).reshape(x.shape) * scale + bias
    return y.astype(x.dtype), (x, scale, mean, rstd)


def _group_norm_bwd(groups, res, dy):
    """dx = rstd (dxh - mean(dxh) - x_hat mean(dxh x_hat)) per group, dxh = dy * scale."""
    x_in, scale, mean, rstd = res
    x, dy = x_in.astype(jnp.float32), dy.astype(jnp.float32)
    spatial = tuple(range(1, x.ndim - 1))
    shape_g = (*x.shape[:-1], groups, x.shape[-1] // groups)
    xhat = ((x.reshape(shape_g) - mean) * rstd).reshape(x.shape)
    sum_dy = dy.sum(spatial)  # [B, C]
    sum_dy_xhat = (dy * xhat).sum(spatial)
    n = math.prod(x.shape[1:-1]) * (x.shape[-1] // groups)
    b = x.shape[0]
    s1 = (sum_dy * scale).reshape(b, groups, -1).sum(-1) / n  # mean of dxh per (sample, group)
    s2 = (sum_dy_xhat * scale).reshape(b, groups, -1).sum(-1) / n
    bshape = (b, *(1,) * len(spatial), groups, 1)
    dxh = (dy * scale).reshape(shape_g)
    dx = rstd * (dxh - s1.reshape(bshape) - xhat.reshape(shape_g) * s2.reshape(bshape))
    return dx.reshape(x.shape).astype(x_in.dtype), sum_dy_xhat.sum(0), sum_dy.sum(0)


group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)


class ConvBlock(nnx.Module):
    """conv -> norm -> activation (-> dropout while training)."""

    def __init__(self, cfg: UNetConfig, cin: int, cout: int, kernel, strides=1, *, rngs: nnx.Rngs):
        self.conv = Conv(cin, cout, kernel, strides, use_bias=cfg.norm == "none", impl=cfg.conv_impl, rngs=rngs)
        self.norm = Norm(cfg.norm, cout, cfg.group_size) if cfg.norm != "none" else None
        self.activation, self.dropout = cfg.activation, cfg.dropout

    def __call__(self, x, train: bool, key):
        y = self.conv(x)
        if self.norm is not None:
            y = self.norm(y, train)
        y = jax.nn.leaky_relu(y, 0.01) if self.activation == "leaky_relu" else jax.nn.relu(y)
        if train and self.dropout > 0.0:
            keep = jax.random.bernoulli(key, 1.0 - self.dropout, y.shape)
            y = jnp.where(keep, y / (1.0 - self.dropout), 0).astype(y.dtype)
        return y


class Up(nnx.Module):
    """Upsample by a per-axis factor to `cout` channels (resize: 1x1 conv then repeat; or transposed conv)."""

    def __init__(self, cfg: UNetConfig, cin: int, cout: int, factor, *, rngs: nnx.Rngs):
        self.factor, self.mode = tuple(factor), cfg.upsample
        kernel = (1,) * cfg.spatial_dims if self.mode == "resize" else self.factor
        self.conv = Conv(cin, cout, kernel, impl=cfg.conv_impl, rngs=rngs)

    def __call__(self, x):
        if self.mode == "resize":
            return conv_lib.upsample(self.conv(x), self.factor)
        # Transposed conv with kernel == stride: each input voxel writes an independent block.
        b, *spatial, _ = x.shape
        w = self.conv.kernel[...].astype(x.dtype)  # [*f, cin, cout]
        d = len(spatial)
        wr = w.reshape(-1, *w.shape[-2:]).transpose(1, 0, 2)  # [cin, prod(factor), cout]
        blocks = jnp.tensordot(x, wr, axes=[[x.ndim - 1], [0]])  # [b, *spatial, prod(factor), cout]
        blocks = blocks.reshape(b, *spatial, *self.factor, -1)
        perm = [0] + [i for a in range(d) for i in (1 + a, 1 + d + a)] + [1 + 2 * d]
        y = blocks.transpose(perm).reshape(b, *(s * f for s, f in zip(spatial, self.factor)), -1)
        return y + self.conv.bias[...].astype(y.dtype)


class UNet(nnx.Module):
    """U-Net for 2D or 3D segmentation.

    Call: `model(x, train=False, key=None)` with x float [B, *spatial, in_channels]. Returns float32 logits
    [B, *spatial, num_classes], or with deep supervision while training a list of logits from full resolution
    down to the second-lowest decoder resolution (also in eval mode with `all_outputs`, for a validation loss weighted
    as in training). `key` feeds dropout and is needed only when training with dropout.
    """

    def __init__(self, cfg: UNetConfig, *, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        feats, strides, kernels = cfg.stage_features(), cfg.stage_strides(), cfg.stage_kernels()
        enc, cin = [], cfg.in_channels
        for i, f in enumerate(feats):
            stride = strides[i - 1] if i else 1
            enc.append([ConvBlock(cfg, cin, f, kernels[i], stride, rngs=rngs), ConvBlock(cfg, f, f, kernels[i], rngs=rngs)])
            cin = f
        self.encoder = nnx.List([nnx.List(b) for b in enc])
        ups, dec, heads = [], [], []
        for i in reversed(range(cfg.depth)):
            ups.append(Up(cfg, feats[i + 1], feats[i], strides[i], rngs=rngs))
            dec.append(nnx.List([ConvBlock(cfg, 2 * feats[i], feats[i], kernels[i], rngs=rngs),
                                 ConvBlock(cfg, feats[i], feats[i], kernels[i], rngs=rngs)]))
            heads.append(Conv(feats[i], cfg.num_classes, (1,) * cfg.spatial_dims, impl=cfg.conv_impl, rngs=rngs))
        self.ups, self.decoder = nnx.List(ups), nnx.List(dec)
        # Only the full-resolution head is used without deep supervision; the others stay tiny and unused.
        self.heads = nnx.List(heads if cfg.deep_supervision else heads[-1:])

    def __call__(self, x, train: bool = False, key=None, all_outputs: bool = False):
        cfg = self.cfg
        if x.ndim != cfg.spatial_dims + 2 or x.shape[-1] != cfg.in_channels:
            raise HeartjaxError(
                f"U-Net input must be [B, *spatial({cfg.spatial_dims}), {cfg.in_channels}], got shape {x.shape}")
        cfg.check_input(x.shape[1:-1])
        n_blocks = 2 * (2 * cfg.depth + 1)
        keys = list(jax.random.split(key, n_blocks)) if (train and cfg.dropout > 0 and key is not None) else [None] * n_blocks
        if train and cfg.dropout > 0 and key is None:
            raise HeartjaxError("model.dropout > 0 needs a PRNG key while training")
        h = x.astype(jnp.dtype(cfg.dtype))
        skips = []
        for stage in self.encoder:
            for block in stage:
                h = block(h, train, keys.pop())
            skips.append(h)
        skips.pop()
        outs = []
        for j, (up, stage) in enumerate(zip(self.ups, self.decoder)):
            h = jnp.concatenate([skips.pop(), up(h)], axis=-1)
            for block in stage:
                h = block(h, train, keys.pop())
            if cfg.deep_supervision:
                outs.append(self.heads[j](h).astype(jnp.float32))
        if cfg.deep_supervision and (train or all_outputs):
            return outs[::-1]
        return self.heads[-1](h).astype(jnp.float32)


def init_model(cfg: UNetConfig, seed_or_key) -> tuple[nnx.GraphDef, nnx.State]:
    """Build the model and split it once into (graphdef, state); only the state pytree crosses jax.jit."""
    key = seed_or_key if isinstance(seed_or_key, jax.Array) else jax.random.key(int(seed_or_key))
    model = UNet(cfg, rngs=nnx.Rngs(params=key))
    return nnx.split(model)


def count_params(state) -> int:
    """Number of trainable parameters in a model state."""
    params = state.filter(nnx.Param) if hasattr(state, "filter") else state
    return int(sum(x.size for x in jax.tree.leaves(params)))
