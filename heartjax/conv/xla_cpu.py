"""Private to heartjax.conv: the XLA:CPU ("planes") formulation of `heartjax.conv.conv`, with custom gradients.

`planes_conv` chooses per convolution (building blocks in xla_cpu_ops.py):

- stride-1 3D: ONE 2D convolution over (Y, Z) with the X shifts stacked in channels, forward and input
  gradient; the kernel gradient ONE 2D weight-gradient convolution (`_planes`);
- strided 3D: the input's X planes split by phase (X stride), one strided 2D convolution per phase, with no
  zero taps (`_phases3d`);
- strided 2D: XLA's forward and kernel gradient, the input gradient through space-to-depth (`_strided2d`),
  because XLA:CPU's strided input gradient (an lhs-dilated convolution) is slow;
- 1x1(x1): matrix products in training, whose kernel gradient needs no layout transposes (`_pointwise`);
- few input channels (k^d * C_in <= TAPS_MAX, e.g. a grey-scale first layer): forward as a sum of shifted
  copies (`_taps`);
- other stride-1 2D convolutions: XLA's own (`_plain2d`).

With `materialise` (the production setting) every gradient reads x and dy from their own buffers
(`materialised`); False gives the plain graph, for A/B timings only (`heartjax.conv.BENCH_IMPLS`).
Measured effects: docs/performance.md.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from heartjax.conv.common import acc_type, fit_pads, xla_conv
from heartjax.conv.xla_cpu_ops import (TAPS_MAX, dot_channels, planes_dw, s2d_conv, stacked, stacked_dx,
                                       taps_forward)

# XLA:CPU's library fusions are chosen per jitted function. This option gives YNNPACK the reductions only:
# its reductions beat XLA's own (e.g. the norm statistics), while its convolution kernels, which XLA:CPU
# otherwise uses for 2D convolutions with more than 16 channels, are far slower in the weight gradients here.
COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


def planes_conv(x, w, strides, pads, materialise: bool = True):
    """The convolution of x [B, *spatial, C_in] with w [*k, C_in, C_out] (strides and explicit pads per axis)."""
    nd = x.ndim - 2
    if any(s > 1 for s in strides):
        return _strided2d(x, w, strides, pads, materialise) if nd == 2 else _phases3d(x, w, strides, pads, materialise)
    x, pads = fit_pads(x, w.shape[:nd], pads)
    if all(k == 1 for k in w.shape[:nd]):  # 1x1(x1); fit_pads moved every pad into x
        return _pointwise(x, w)
    if math.prod(w.shape[:nd + 1]) <= TAPS_MAX:  # few input channels, e.g. the first layer on a grey image
        return _taps(x, w, pads, materialise)
    return _planes(x, w, pads, materialise) if nd == 3 else _plain2d(x, w, pads, materialise)


def identity_product(x):
    """I @ x (I the identity over x's second-to-last axis, or its only one), in full float32 precision.

    XLA:CPU fuses reductions with their element-wise consumers into one YNNPACK fusion, which runs far slower
    than the two apart; a matrix product between them is not fused, and the identity keeps the values.
    """
    n = x.shape[-2] if x.ndim >= 2 else x.shape[0]
    return jnp.matmul(jnp.eye(n, dtype=x.dtype), x, precision=lax.Precision.HIGHEST)


def materialised(x, dy, w):
    """x and dy, read from their own buffers by whatever consumes the results (the gradient convs).

    XLA:CPU duplicates cheap element-wise producers (a norm and ReLU, a norm's backward) into every consumer,
    including the layout transposes in front of its weight-gradient convolutions, and a transpose with
    arithmetic inside runs much slower than one that copies a buffer. `lax.optimization_barrier` is removed
    before fusion on the CPU; a conditional on a value known only at run time is kept. Both branches return
    their operands exactly (the second through two flips), so the predicate (whether the kernel's first
    element is finite) never changes the result.
    """
    key = w[(0,) * w.ndim]
    return lax.cond(jnp.isfinite(key), lambda a: a,
                    lambda a: tuple(jnp.flip(jnp.flip(v, 1), 1) for v in a), (x, dy))


def _inputs(x, dy, w, materialise: bool):
    """x and dy for a backward rule: `materialised` unless switched off (A/B timings)."""
    return materialised(x, dy, w) if materialise else (x, dy)


@jax.custom_vjp
def _pointwise(x, w):
    """A 1x1(x1) stride-1 convolution as matrix products: the kernel gradient x^T dy then needs none of the
    transposes XLA:CPU puts around its weight-gradient convs. Undifferentiated 2D (inference) keeps XLA's
    own conv, the faster one there."""
    if x.ndim == 4:
        return xla_conv(x, w, (1, 1), ((0, 0), (0, 0)))
    return _pointwise_fwd(x, w)[0]


def _pointwise_fwd(x, w):
    """Forward pass inside a differentiated function (a matrix product); keeps the inputs."""
    return dot_channels(x, w.reshape(w.shape[-2:])).astype(x.dtype), (x, w)


def _pointwise_bwd(res, dy):
    """dx = dy w^T and dw = x^T dy, both matrix products over every voxel."""
    x, w = res
    dx = dot_channels(dy, w.reshape(w.shape[-2:]).T).astype(x.dtype)
    axes = tuple(range(x.ndim - 1))
    dw = lax.dot_general(x, dy, ((axes, axes), ((), ())), preferred_element_type=acc_type(x.dtype))
    return dx, dw.reshape(w.shape).astype(w.dtype)


_pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _taps(x, w, pads, materialise):
    """Stride-1 conv with few input channels: taps_forward forward; the gradients of the usual formulation
    (3D: _planes', 2D: XLA's own), which stay faster than differentiating the taps."""
    return taps_forward(x, w, pads)


def _taps_fwd(x, w, pads, materialise):
    """Forward pass inside a differentiated function; keeps the inputs."""
    return taps_forward(x, w, pads), (x, w)


def _taps_bwd(pads, materialise, res, dy):
    """dx and dw as for the planes (3D) or XLA (2D) formulation."""
    if res[0].ndim == 5:
        return _planes_bwd(pads, materialise, res, dy)
    return _plain2d_bwd(pads, materialise, res, dy)


_taps.defvjp(_taps_fwd, _taps_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _strided2d(x, w, strides, pads, materialise):
    """Strided 2D conv: XLA's own forward and kernel gradient, the input gradient through space-to-depth
    (a stride-1 conv of dy and a depth-to-space) instead of XLA:CPU's slow lhs-dilated conv. Space-to-depth
    for the forward too would cost more than it saves."""
    return xla_conv(x, w, strides, pads)


def _strided2d_fwd(x, w, strides, pads, materialise):
    """Forward pass inside a differentiated function; keeps the inputs."""
    return xla_conv(x, w, strides, pads), (x, w)


def _strided2d_bwd(strides, pads, materialise, res, dy):
    """dx from the space-to-depth form, dw from XLA's strided weight-gradient conv."""
    x, w = res
    x, dy = _inputs(x, dy, w, materialise)
    dx = jax.vjp(lambda v: s2d_conv(v, w, strides, pads), x)[1](dy)[0]
    dw = jax.vjp(lambda k: xla_conv(x, k, strides, pads), w)[1](dy)[0]
    return dx, dw


_strided2d.defvjp(_strided2d_fwd, _strided2d_bwd)


def _phases3d(x, w, strides, pads, materialise):
    """Strided 3D conv as 2D convs over (Y, Z) (XLA's own strides there) on the X phases of the input.

    Output plane i reads padded input plane s * i + a for kernel plane a, i.e. phase a % s, block i + a // s.
    Each phase's planes go through ONE 2D conv with that phase's kernel planes stacked in C_out, and the
    output adds block-shifted slices: no zero taps (space-to-depth would do 2.4x the FLOPs for k=3, s=2).
    Automatic differentiation; strided (Y, Z) convs take _strided2d's input gradient.
    """
    kx, sx, (lo, hi) = w.shape[0], strides[0], pads[0]
    b, nx = x.shape[:2]
    xo = (nx + lo + hi - kx) // sx + 1
    blocks = xo + (kx - 1) // sx
    # Pad (or crop) X to exactly sx * blocks planes, then split them into (block, phase).
    x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (lo, sx * blocks - nx - lo, 0), *[(0, 0, 0)] * 3])
    x = x.reshape(b, blocks, sx, *x.shape[2:])
    st_yz, pads_yz = strides[1:], pads[1:]
    out = None
    for phase in range(sx):
        taps = list(range(phase, kx, sx))
        if not taps:
            continue
        planes = x[:, :, phase].reshape(b * blocks, *x.shape[3:])
        wk = jnp.concatenate([w[a] for a in taps], axis=-1)  # [ky, kz, C_in, len(taps) * C_out]
        if any(s > 1 for s in st_yz):
            q = _strided2d(planes, wk, st_yz, pads_yz, materialise)
        else:
            q = xla_conv(planes, wk, (1, 1), pads_yz)
        q = q.reshape(b, blocks, *q.shape[1:3], len(taps), w.shape[-1])
        for j, a in enumerate(taps):
            term = q[:, a // sx:a // sx + xo, :, :, j]
            out = term if out is None else out + term
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _plain2d(x, w, pads, materialise):
    """Stride-1 2D conv: XLA's own, forward and gradients, with x and dy materialised for the gradients."""
    return xla_conv(x, w, (1, 1), pads)


def _plain2d_fwd(x, w, pads, materialise):
    """Forward pass inside a differentiated function; keeps the inputs."""
    return xla_conv(x, w, (1, 1), pads), (x, w)


def _plain2d_bwd(pads, materialise, res, dy):
    """XLA's own dx and dw, reading x and dy from buffers (materialised)."""
    x, w = res
    x, dy = _inputs(x, dy, w, materialise)
    return tuple(jax.vjp(lambda a, b: xla_conv(a, b, (1, 1), pads), x, w)[1](dy))


_plain2d.defvjp(_plain2d_fwd, _plain2d_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _planes(x, w, pads, materialise):
    """Stride-1 3D convolution as 2D convolutions over (Y, Z); needs 0 <= lo, hi <= k - 1 (see fit_pads).

    Kernel planes stacked in C_out for every layer, in inference and training alike (`stacked`)."""
    return stacked(x, w, pads)


def _planes_fwd(x, w, pads, materialise):
    """Forward pass inside a differentiated function; keeps the inputs for the backward pass."""
    return stacked(x, w, pads), (x, w)


def _planes_bwd(pads, materialise, res, dy):
    """dx = stacked_dx (the flipped, transposed kernel); dw = planes_dw."""
    x, w = res
    x, dy = _inputs(x, dy, w, materialise)
    return stacked_dx(dy, w, pads), planes_dw(x, dy, w.shape, pads).astype(w.dtype)


_planes.defvjp(_planes_fwd, _planes_bwd)
