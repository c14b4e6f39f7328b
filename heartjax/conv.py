"""Every convolution of heartjax goes through `conv`, so the fastest formulation per backend lives here.

Layouts follow Flax: x is channels-last [B, *spatial, C_in] with 2 or 3 spatial axes, the kernel is
[*kernel, C_in, C_out]. Implementations (`IMPLS`):

- "xla": `jax.lax.conv_general_dilated`, one N-d convolution. Best on GPU/TPU and for 2D on the CPU.
- "planes": a 3D convolution written as a sum over the first kernel axis of 2D convolutions over the other two
  (batch B * X). XLA:CPU runs 2D convolutions through fast library kernels but 3D ones through a slow generic
  loop (measured 3-6x slower, see experiments/bench_conv.py). Its custom gradient computes the kernel gradient
  of all kernel planes with ONE 2D weight-gradient convolution whose output channels stack the planes, which
  is 1.5-4x faster than differentiating the sum plane by plane. 2D input is lifted to 3D with a unit axis.
- "auto" (the default): "planes" for 3D on the CPU, "xla" otherwise.

On the CPU, XLA hands 2D convolutions with more than 16 channels to YNNPACK; its weight-gradient kernels are
much slower than XLA's own (Eigen) ones for the U-Net's shapes. `cpu_compiler_options()` returns the
`jax.jit(..., compiler_options=...)` that turns YNNPACK off for one jitted function; `XLA_CPU_FLAGS` does the
same process-wide when put in the XLA_FLAGS environment variable before JAX first runs a computation.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from heartjax.errors import HeartjaxError

IMPLS = ("auto", "xla", "planes")
XLA_CPU_FLAGS = "--xla_cpu_experimental_ynn_fusion_type="
_DN2 = ("NHWC", "HWIO", "NHWC")
_DN3 = ("NDHWC", "DHWIO", "NDHWC")
_default_impl = "auto"


def set_default_impl(name: str) -> None:
    """Choose the implementation that `conv(..., impl="auto")` uses (config setting `model.conv_impl`)."""
    global _default_impl
    _default_impl = _check_impl(name)


def get_default_impl() -> str:
    """The implementation name set by `set_default_impl` ("auto" unless changed)."""
    return _default_impl


def _check_impl(name) -> str:
    """Validate an implementation name."""
    if name not in IMPLS:
        raise HeartjaxError(f"model.conv_impl must be one of {', '.join(IMPLS)}, got {name!r}; fix the config value")
    return name


def resolve_impl(impl: str, spatial_dims: int) -> str:
    """The concrete implementation ("xla" or "planes") that `impl` means here for `spatial_dims` 2 or 3."""
    name = _check_impl(impl)
    if name == "auto":
        name = _default_impl
    if name == "auto":
        name = "planes" if (jax.default_backend() == "cpu" and spatial_dims == 3) else "xla"
    return name


def cpu_compiler_options() -> dict:
    """`compiler_options` for `jax.jit` that keep XLA:CPU convolutions off YNNPACK; {} off the CPU."""
    return {"xla_cpu_experimental_ynn_fusion_type": ""} if jax.default_backend() == "cpu" else {}


def conv(x: jax.Array, w: jax.Array, *, strides=1, padding="SAME", impl: str = "auto") -> jax.Array:
    """N-d convolution (cross-correlation, as in Flax and PyTorch), channels-last.

    x: [B, *spatial, C_in], 2 or 3 spatial axes, float32 or bfloat16. w: [*kernel, C_in, C_out], same dtype.
    strides: int or one int per spatial axis. padding: "SAME", "VALID" or [(lo, hi)] per spatial axis.
    impl: see `IMPLS`; "auto" uses `get_default_impl()`, which itself defaults to the backend's fastest.
    Returns [B, *out_spatial, C_out] in x's dtype (accumulated in float32).
    """
    nd = x.ndim - 2
    if nd not in (2, 3) or w.ndim != x.ndim or w.shape[-2] != x.shape[-1] or x.dtype != w.dtype:
        raise HeartjaxError(
            f"conv needs x [B, *spatial(2 or 3), C_in] and kernel [*k, C_in, C_out] of the same dtype; got x "
            f"{x.shape} {x.dtype}, kernel {w.shape} {w.dtype}; check the model's channels and kernel_sizes")
    st = _tuple(strides, nd, "strides")
    pads = _pads(padding, x.shape[1:-1], w.shape[:nd], st)
    if any(p < 0 for pair in pads for p in pair):
        raise HeartjaxError(f"conv padding must not be negative, got {padding!r}")
    if resolve_impl(impl, nd) == "xla":
        return _xla(x, w, st, pads)
    if any(s > 1 for s in st):
        x, w, pads = _space_to_depth(x, w, st, pads)
    x, pads = _fit_pads(x, w.shape[:nd], pads)
    if nd == 2:  # XLA:CPU's own 2D convolution is fast once stride 1
        return _conv2d(x, w, pads).astype(x.dtype)
    return _planes(x, w, pads)


def upsample(x: jax.Array, factor=2, method: str = "nearest") -> jax.Array:
    """Repeat each voxel `factor` times along every spatial axis (nearest-neighbour upsampling).

    x: [B, *spatial, C]; factor: int or one int per spatial axis. Returns [B, *(s * f), C], same dtype.
    Broadcast + reshape: one fused copy forward and one reduction backward (cheaper than jax.image.resize).
    """
    if method != "nearest":
        raise HeartjaxError(f"upsample method must be 'nearest', got {method!r}")
    nd = x.ndim - 2
    f = _tuple(factor, nd, "upsample factor")
    b, *spatial, c = x.shape
    expanded = x.reshape(b, *[d for s in spatial for d in (s, 1)], c)
    target = (b, *[d for s, k in zip(spatial, f) for d in (s, k)], c)
    return jnp.broadcast_to(expanded, target).reshape(b, *(s * k for s, k in zip(spatial, f)), c)


def _tuple(v, nd: int, what: str) -> tuple[int, ...]:
    """An int or a sequence of nd ints as a tuple of nd positive ints."""
    t = (v,) * nd if isinstance(v, int) else tuple(v)
    if len(t) != nd or any(not isinstance(i, int) or i < 1 for i in t):
        raise HeartjaxError(f"{what} must be a positive int or {nd} positive ints, got {v!r}")
    return t


def _pads(padding, spatial: Sequence[int], kernel: Sequence[int], strides) -> tuple[tuple[int, int], ...]:
    """Explicit (lo, hi) padding per spatial axis from "SAME" / "VALID" / explicit pairs."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise HeartjaxError(f"conv padding must be 'SAME', 'VALID' or (lo, hi) pairs, got {padding!r}")
        return tuple(tuple(p) for p in lax.padtype_to_pads(spatial, kernel, strides, padding.upper()))
    pads = tuple(tuple(int(i) for i in p) for p in padding)
    if len(pads) != len(spatial) or any(len(p) != 2 for p in pads):
        raise HeartjaxError(f"conv padding needs one (lo, hi) pair per spatial axis ({len(spatial)}), got {padding!r}")
    return pads


def _acc_type(dtype):
    """float32 accumulation for low-precision inputs, else None (the input type)."""
    return jnp.float32 if jnp.dtype(dtype).itemsize < 4 else None


def _xla(x, w, strides, pads):
    """One lax.conv_general_dilated."""
    dn = _DN3 if x.ndim == 5 else _DN2
    y = lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=dn, preferred_element_type=_acc_type(x.dtype))
    return y.astype(x.dtype)


def _conv2d(x, w, pads):
    """Stride-1 2D convolution [N, H, W, C] x [kh, kw, C, O], accumulated in float32 for low precision."""
    return lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=_DN2,
                                    preferred_element_type=_acc_type(x.dtype))


def _fit_pads(x, kernel, pads):
    """Pre-pad x where a pad exceeds kernel - 1, so the rest satisfies 0 <= lo, hi <= k - 1 (needed by dx)."""
    extra = [(max(lo - (k - 1), 0), max(hi - (k - 1), 0)) for k, (lo, hi) in zip(kernel, pads)]
    if any(e != (0, 0) for e in extra):
        x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in extra), (0, 0, 0)])
    return x, tuple((lo - e0, hi - e1) for (lo, hi), (e0, e1) in zip(pads, extra))


def _space_to_depth(x, w, strides, pads):
    """Rewrite a strided conv as a stride-1 VALID conv: each s-block of input voxels becomes s^d channels.

    Output o reads padded input s*o + t (t < k) = block o + t // s, phase t % s, so the kernel becomes
    ceil(k / s) blocks per axis with zero taps where s * u + p >= k. Costs (s * ceil(k / s) / k)^d more FLOPs
    (2.4x for k=3, s=2 in 3D) but keeps strided convs off XLA:CPU's slow strided gradient paths.
    """
    nd = x.ndim - 2
    kernel = w.shape[:nd]
    kb = [(k - 1) // s + 1 for k, s in zip(kernel, strides)]
    out = [(n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(x.shape[1:-1], kernel, strides, pads)]
    # Pad (or crop) each axis to exactly s * (out + kb - 1): every block the VALID conv reads.
    cfg = [(lo, s * (o + b - 1) - n - lo, 0) for n, s, o, b, (lo, _) in zip(x.shape[1:-1], strides, out, kb, pads)]
    x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *cfg, (0, 0, 0)])
    bsz, c = x.shape[0], x.shape[-1]
    split = [d for n, s in zip(x.shape[1:-1], strides) for d in (n // s, s)]
    x = x.reshape(bsz, *split, c).transpose(0, *range(1, 2 * nd, 2), *range(2, 2 * nd + 1, 2), 2 * nd + 1)
    x = x.reshape(bsz, *x.shape[1:nd + 1], -1)
    w = jnp.pad(w, [(0, s * b - k) for k, s, b in zip(kernel, strides, kb)] + [(0, 0), (0, 0)])
    w = w.reshape(*[d for s, b in zip(strides, kb) for d in (b, s)], *w.shape[-2:])
    w = w.transpose(*range(0, 2 * nd, 2), *range(1, 2 * nd, 2), 2 * nd, 2 * nd + 1)
    return x, w.reshape(*kb, -1, w.shape[-1]), ((0, 0),) * nd


def _stacked(x, w, pads):
    """Stride-1 3D conv as ONE 2D conv over (Y, Z) (batch B * X) with the kx kernel planes stacked in C_out,
    then out[i] = sum_a q[i + a - lo, plane a] (zero outside): the planes' X shifts are cheap output slices.
    Needs 0 <= lo, hi <= kx - 1 (see _fit_pads)."""
    kx, ky, kz, cin, cout = w.shape
    b, nx = x.shape[:2]
    (lo, hi), pads_yz = pads[0], pads[1:]
    ws = w.transpose(1, 2, 3, 0, 4).reshape(ky, kz, cin, kx * cout)
    q = _conv2d(x.reshape(b * nx, *x.shape[2:]), ws, pads_yz)
    q = q.reshape(b, nx, *q.shape[1:3], kx, cout)
    xo = nx + lo + hi - kx + 1
    zero = jnp.zeros((), q.dtype)
    out = None
    for a in range(kx):
        qa = lax.pad(q[..., a, :], zero, [(0, 0, 0), (lo - a, xo - nx - lo + a, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0)])
        out = qa if out is None else out + qa
    return out.astype(x.dtype)


def _im3(x, w, pads):
    """Stride-1 3D conv as ONE 2D conv over (Y, Z) whose input stacks the kx X-shifted copies of x in channels."""
    kx, ky, kz, cin, cout = w.shape
    b, nx = x.shape[:2]
    (lo, hi), pads_yz = pads[0], pads[1:]
    xo = nx + lo + hi - kx + 1
    zero = jnp.zeros((), x.dtype)
    cols = [lax.pad(x, zero, [(0, 0, 0), (lo - a, xo - nx - lo + a, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0)])
            for a in range(kx)]
    p = jnp.stack(cols, axis=-2).reshape(b * xo, *x.shape[2:4], kx * cin)
    ws = w.transpose(1, 2, 0, 3, 4).reshape(ky, kz, kx * cin, cout)
    y = _conv2d(p, ws, pads_yz)
    return y.reshape(b, xo, *y.shape[1:]).astype(x.dtype)


FWD = [None]


def _stacked_dw(x, dy, wshape, pads):
    """Kernel gradient of _stacked as one 2D weight-gradient conv with the planes stacked in C_out.

    dW[a] = sum_v x[v] (x) dy[v + lo - a] over X positions v: shifting dy per plane a and stacking the shifts
    along channels turns kx weight-gradient convolutions into one with kx times more outputs (faster).
    """
    kx, ky, kz, cin, cout = wshape
    b, nx = x.shape[:2]
    xo, lo = dy.shape[1], pads[0][0]
    zero = jnp.zeros((), dy.dtype)
    shifted = [lax.pad(dy, zero, [(0, 0, 0), (a - lo, nx - xo - (a - lo), 0), (0, 0, 0), (0, 0, 0), (0, 0, 0)])
               for a in range(kx)]
    dys = jnp.stack(shifted, axis=-2).reshape(b * nx, *dy.shape[2:4], kx * cout)
    x2 = x.reshape(b * nx, *x.shape[2:])
    w2 = jnp.zeros((ky, kz, cin, kx * cout), x.dtype)
    # The weight-gradient conv that XLA derives for a 2D conv; its forward output is dead code.
    _, vjp = jax.vjp(lambda k: _conv2d(x2, k, pads[1:]).astype(x.dtype), w2)
    dw2 = vjp(dys)[0]  # [ky, kz, cin, kx * cout]
    return dw2.reshape(ky, kz, cin, kx, cout).transpose(3, 0, 1, 2, 4)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _planes(x, w, pads):
    """Stride-1 3D convolution by stacked 2D planes, with hand-written gradients in the same form."""
    return (FWD[0] or _stacked)(x, w, pads)


def _planes_fwd(x, w, pads):
    """Forward pass; keeps the inputs for the backward pass."""
    return (FWD[0] or _stacked)(x, w, pads), (x, w)


def _planes_bwd(pads, res, dy):
    """dx = stride-1 conv of dy with the flipped, transposed kernel; dw by _stacked_dw."""
    # The barrier makes XLA read x and dy from memory: otherwise it fuses their producers (the previous
    # layer's shifted sum, ReLU, ...) into the transposes of the weight-gradient conv, which then recompute
    # them in a cache-hostile order (measured 3x slower encoders).
    x, w, dy = lax.optimization_barrier(res + (dy,))
    kernel = w.shape[:3]
    back = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel, pads))
    dx = (FWD[0] or _stacked)(dy, jnp.flip(w, (0, 1, 2)).swapaxes(3, 4), back)
    return dx, _stacked_dw(x, dy, w.shape, pads).astype(w.dtype)


_planes.defvjp(_planes_fwd, _planes_bwd)
