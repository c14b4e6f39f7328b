"""Every convolution of heartjax goes through `conv`, so the fastest formulation per backend lives here.

Layouts follow Flax: x is channels-last [B, *spatial, C_in] with 2 or 3 spatial axes, the kernel is
[*kernel, C_in, C_out]. The implementation is an explicit argument (`impl`, one of `IMPLS`; a model carries
it as `UNetConfig.conv_impl`), so it is part of the traced graph and of jit's cache key:

- "xla": one `jax.lax.conv_general_dilated` in the input's dtype, for GPUs and TPUs (bfloat16 in, bfloat16
  out, accumulated in float32 inside the accelerator's kernel; so the gradients' convolutions are bfloat16 too).
- "planes": a formulation for XLA:CPU, which runs 2D convolutions through library kernels but 3D ones
  through a generic loop. 3D convolutions become 2D ones over (Y, Z) with the X axis moved into batch and
  channels, with custom gradients that avoid XLA:CPU's slow paths (see heartjax/conv/xla_cpu.py).
- "auto": "planes" on the CPU, "xla" on other backends (`resolve_impl`).

`BENCH_IMPLS` are A/B variants for the benchmarks only ("planes-plain": "planes" without the materialised
gradient inputs). Jit CPU programs with `jax.jit(..., compiler_options=compiler_options())`. Every
implementation equals `lax.conv_general_dilated` up to float32 rounding. Measurements: docs/performance.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from heartjax.conv.common import as_tuple, explicit_pads, native_conv
from heartjax.conv.xla_cpu import COMPILER_OPTIONS, identity_product, planes_conv
from heartjax.config.options import CONV_IMPLS
from heartjax.common.errors import HeartjaxError

__all__ = ["IMPLS", "BENCH_IMPLS", "conv", "resolve_impl", "compiler_options", "unfused", "upsample"]

IMPLS = CONV_IMPLS  # the values of model.conv_impl
BENCH_IMPLS = ("planes-plain",)  # A/B variants for the benchmarks, accepted by `conv` but not by model.conv_impl


def _check_impl(name) -> str:
    """Validate an implementation name (IMPLS or BENCH_IMPLS)."""
    if name not in IMPLS + BENCH_IMPLS:
        raise HeartjaxError(f"model.conv_impl must be one of {', '.join(IMPLS)}, got {name!r}; fix the config "
                            f"value (benchmarks also take {', '.join(BENCH_IMPLS)})")
    return name


def resolve_impl(impl: str, spatial_dims: int) -> str:
    """The concrete implementation ("xla", "planes" or "planes-plain") that `impl` means on this backend for
    `spatial_dims` 2 or 3: "auto" is "planes" on the CPU, "xla" elsewhere."""
    name = _check_impl(impl)
    if name == "auto":
        name = "planes" if jax.default_backend() == "cpu" else "xla"
    return name


def compiler_options() -> dict:
    """`compiler_options` for `jax.jit` that suit heartjax's programs on this backend; {} off the CPU.

    On the CPU they give XLA:CPU's reductions, and nothing else, to its YNNPACK library (its convolution
    kernels would otherwise take many 2D convolutions and are slower there). Results are unchanged.
    """
    return dict(COMPILER_OPTIONS) if jax.default_backend() == "cpu" else {}


def unfused(x: jax.Array) -> jax.Array:
    """x, computed so that XLA:CPU does not fuse x's producers with its consumers.

    XLA:CPU fuses reductions (e.g. per-channel statistics) with their element-wise consumers into one YNNPACK
    fusion, which runs far slower than the two apart. On the CPU this returns I @ x (the identity over x's
    second-to-last axis, or its only axis for 1-D x) in full float32 precision, a product XLA does not fuse
    across: equal to x for finite values (a non-finite entry turns its whole column NaN). On other backends
    it returns x itself. x: float, at least 1-D.
    """
    if jnp.ndim(x) < 1:
        raise HeartjaxError(f"unfused needs an array of at least one dimension, got shape {jnp.shape(x)}")
    return identity_product(x) if jax.default_backend() == "cpu" else x


def conv(x: jax.Array, w: jax.Array, *, strides=1, padding="SAME", impl: str = "auto") -> jax.Array:
    """N-d convolution (cross-correlation, as in Flax and PyTorch), channels-last.

    x: [B, *spatial, C_in], 2 or 3 spatial axes, float32 or bfloat16. w: [*kernel, C_in, C_out], same dtype.
    strides: int or one int per spatial axis. padding: "SAME", "VALID" or [(lo, hi)] per spatial axis.
    impl: one of `IMPLS` (or `BENCH_IMPLS`), resolved by `resolve_impl` at trace time.
    Returns [B, *out_spatial, C_out] in x's dtype (low-precision products accumulated in float32: by the
    accelerator's kernel for "xla", explicitly in "planes").
    """
    nd = x.ndim - 2
    if nd not in (2, 3) or w.ndim != x.ndim or w.shape[-2] != x.shape[-1] or x.dtype != w.dtype:
        raise HeartjaxError(
            f"conv needs x [B, *spatial(2 or 3), C_in] and kernel [*k, C_in, C_out] of the same dtype; got x "
            f"{x.shape} {x.dtype}, kernel {w.shape} {w.dtype}; check the model's channels and kernel_sizes")
    st = as_tuple(strides, nd, "strides")
    pads = explicit_pads(padding, x.shape[1:-1], w.shape[:nd], st)
    if any(p < 0 for pair in pads for p in pair):
        raise HeartjaxError(f"conv padding must not be negative, got {padding!r}")
    name = resolve_impl(impl, nd)
    if name == "xla":
        return native_conv(x, w, st, pads)
    return planes_conv(x, w, st, pads, materialise=name != "planes-plain")


def upsample(x: jax.Array, factor=2, method: str = "nearest") -> jax.Array:
    """Repeat each voxel `factor` times along every spatial axis (nearest-neighbour upsampling).

    x: [B, *spatial, C]; factor: int or one int per spatial axis. Returns [B, *(s * f), C], same dtype.
    Broadcast + reshape: one fused copy forward and one reduction backward (cheaper than jax.image.resize).
    """
    if method != "nearest":
        raise HeartjaxError(f"upsample method must be 'nearest', got {method!r}")
    nd = x.ndim - 2
    f = as_tuple(factor, nd, "upsample factor")
    b, *spatial, c = x.shape
    expanded = x.reshape(b, *[d for s in spatial for d in (s, 1)], c)
    target = (b, *[d for s, k in zip(spatial, f) for d in (s, k)], c)
    return jnp.broadcast_to(expanded, target).reshape(b, *(s * k for s, k in zip(spatial, f)), c)
