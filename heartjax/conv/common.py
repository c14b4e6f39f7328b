"""Private to heartjax.conv: argument normalisation, layouts, and XLA's own convolution.

Layouts follow Flax: x is channels-last [B, *spatial, C_in], the kernel [*kernel, C_in, C_out].
"""

from __future__ import annotations

import operator
from typing import Sequence

import jax.numpy as jnp
from jax import lax

from heartjax.common.errors import HeartjaxError

DN2 = ("NHWC", "HWIO", "NHWC")
DN3 = ("NDHWC", "DHWIO", "NDHWC")


def as_tuple(v, nd: int, what: str) -> tuple[int, ...]:
    """An int or a sequence of nd ints as a tuple of nd positive ints."""
    try:
        t = (operator.index(v),) * nd
    except TypeError:
        try:
            t = tuple(operator.index(i) for i in v)
        except TypeError:
            t = ()
    if len(t) != nd or any(i < 1 for i in t):
        raise HeartjaxError(f"{what} must be a positive int or {nd} positive ints, got {v!r}")
    return t


def explicit_pads(padding, spatial: Sequence[int], kernel: Sequence[int], strides) -> tuple[tuple[int, int], ...]:
    """Explicit (lo, hi) padding per spatial axis from "SAME" / "VALID" / explicit pairs."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise HeartjaxError(f"conv padding must be 'SAME', 'VALID' or (lo, hi) pairs, got {padding!r}")
        return tuple(tuple(p) for p in lax.padtype_to_pads(spatial, kernel, strides, padding.upper()))
    try:
        pads = tuple(tuple(operator.index(i) for i in p) for p in padding)
    except TypeError:
        pads = ()
    if len(pads) != len(spatial) or any(len(p) != 2 for p in pads):
        raise HeartjaxError(f"conv padding needs one (lo, hi) pair per spatial axis ({len(spatial)}), got {padding!r}")
    return pads


def acc_type(dtype):
    """float32 accumulation for low-precision inputs, else None (the input type)."""
    return jnp.float32 if jnp.dtype(dtype).itemsize < 4 else None


def xla_conv(x, w, strides, pads):
    """One lax.conv_general_dilated, accumulated in float32 for low precision, returned in x's dtype."""
    dn = DN3 if x.ndim == 5 else DN2
    y = lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=dn, preferred_element_type=acc_type(x.dtype))
    return y.astype(x.dtype)


def native_conv(x, w, strides, pads):
    """One lax.conv_general_dilated returning x's dtype directly, for GPUs and TPUs.

    Their convolution kernels accumulate bfloat16 products in float32 internally and round once at the end, so
    asking for a float32 result (`preferred_element_type`) adds no accuracy but makes the result float32, and
    with it every cotangent: the whole backward pass would run in float32. Returned in x's dtype, the input
    and kernel gradients are bfloat16 convolutions too. For float32 x this is `xla_conv` exactly.
    """
    dn = DN3 if x.ndim == 5 else DN2
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=dn)


def conv2d(x, w, pads):
    """Stride-1 2D convolution [N, H, W, C] x [kh, kw, C, O], accumulated (and returned) in float32 for low
    precision."""
    return lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=DN2, preferred_element_type=acc_type(x.dtype))


def fit_pads(x, kernel, pads):
    """Pre-pad x where a pad exceeds kernel - 1, so the rest satisfies 0 <= lo, hi <= k - 1 (needed by dx)."""
    extra = [(max(lo - (k - 1), 0), max(hi - (k - 1), 0)) for k, (lo, hi) in zip(kernel, pads)]
    if any(e != (0, 0) for e in extra):
        x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in extra), (0, 0, 0)])
    return x, tuple((lo - e0, hi - e1) for (lo, hi), (e0, e1) in zip(pads, extra))


def shift_x(v, d: int, n: int):
    """out[i] = v[i - d] along axis 1 for i < n, zero outside (lax.pad; negative pads crop)."""
    cfg = [(0, 0, 0)] * v.ndim
    cfg[1] = (d, n - v.shape[1] - d, 0)
    return lax.pad(v, jnp.zeros((), v.dtype), cfg)
