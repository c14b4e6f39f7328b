"""Every convolution of heartjax goes through `conv`, so the fastest formulation per backend lives here.

Layouts follow Flax: x is channels-last [B, *spatial, C_in] with 2 or 3 spatial axes, the kernel is
[*kernel, C_in, C_out]. Implementations (`IMPLS`):

- "xla": one `jax.lax.conv_general_dilated`. Best on GPU/TPU.
- "planes" (the CPU): XLA:CPU runs 2D convolutions through library kernels (Eigen / YNNPACK) but 3D
  ones through a generic loop, and its strided 3D input gradient is pathological (>10 s for one U-Net layer).
  "planes" writes a stride-1 3D conv as ONE 2D conv over (Y, Z) with batch B * X and the kx kernel planes
  stacked in output channels, then adds shifted slices of its output (forward and input gradient); the
  kernel gradient is ONE 2D weight-gradient conv with the X shifts stacked (custom VJP). A strided 3D conv
  splits the input's X planes by phase (X stride) and runs one strided 2D conv per phase (_phases3d: no zero
  taps). Strided 2D convs keep XLA's forward and kernel gradient but take the input gradient through
  space-to-depth (_strided2d: 2.8x faster there). 1x1(x1) convs are matrix products in training (their
  kernel gradient then needs no layout transposes). Convs with few input channels (k^d * C_in <= TAPS_MAX,
  e.g. a grey-scale first layer) run forward as a sum of shifted copies (_taps: 4x faster). Other 2D convs are
  XLA's own. Measured per 3D layer (forward + backward) 2.5-7x faster than "xla", 20x for stride 2, and 7x
  on the reference U-Net's conv chain (python -m experiments.bench_conv).
  Every gradient of "planes" reads x and dy from their own buffers (_materialised): XLA:CPU would otherwise
  recompute their element-wise producers (norm, ReLU, the norm's backward) inside the slow layout transposes
  of its weight-gradient convs (train3d_ref and train2d_ref 15 % faster).
- "auto" (the default): "planes" on the CPU, "xla" otherwise.

XLA:CPU's library fusions are chosen per jitted function: heartjax compiles with YNNPACK for reductions
only. By default XLA:CPU also hands 2D convolutions with > 16 channels to YNNPACK, whose weight-gradient
kernels are far slower than XLA's Eigen ones here (the 3D chain trains 1.9x faster without), while
YNNPACK's reductions beat XLA's own (the instance-norm statistics: train3d_ref 2.3-2.6 -> 2.0 s). Apply it
per jitted function with `jax.jit(..., compiler_options=cpu_compiler_options())`, or process-wide with
`use_cpu_flags()` (adds `XLA_CPU_FLAGS` to XLA_FLAGS; effective only before JAX's first computation).
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
import os
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from heartjax.errors import HeartjaxError

IMPLS = ("auto", "xla", "planes")
XLA_CPU_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=reduce"
_YNN_OPTION = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
STACK_IN_MAX = 32  # _stacked stacks inputs rather than kernel planes for C_in <= this and C_out >= 2 C_in
TAPS_MAX = 32  # stride-1 convs with k^d * C_in <= this run forward as a sum of shifted copies (_taps)
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
        name = "planes" if jax.default_backend() == "cpu" else "xla"
    return name


def cpu_compiler_options() -> dict:
    """`compiler_options` for `jax.jit` that give XLA:CPU's reductions, and nothing else, to YNNPACK; {} off the CPU."""
    return dict(_YNN_OPTION) if jax.default_backend() == "cpu" else {}


def use_cpu_flags() -> bool:
    """Append `XLA_CPU_FLAGS` to the XLA_FLAGS environment variable (once) for every later jit of the process.

    XLA reads XLA_FLAGS when JAX starts its backend (the first computation), so call this first thing in a
    program. Returns False when the backend was already running (the flag then waits for a new process).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if XLA_CPU_FLAGS.split("=")[0] not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {XLA_CPU_FLAGS}".strip()
    try:
        from jax._src import xla_bridge  # private; only to tell whether the flag came in time
        return not xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):
        return True


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
    strided = any(s > 1 for s in st)
    if resolve_impl(impl, nd) == "xla":
        return _xla(x, w, st, pads)
    if nd == 2 and strided:
        return _strided2d(x, w, st, pads)
    if strided:
        return _phases3d(x, w, st, pads)
    x, pads = _fit_pads(x, w.shape[:nd], pads)
    if all(k == 1 for k in w.shape[:nd]):  # 1x1(x1); _fit_pads moved every pad into x
        return _pointwise(x, w)
    if math.prod(w.shape[:nd + 1]) <= TAPS_MAX:  # few input channels, e.g. the first layer on a grey image
        return _taps(x, w, pads)
    return _planes(x, w, pads) if nd == 3 else _plain2d(x, w, pads)


_MATERIALISE = True  # _materialised's switch, read at trace time (False: the plain graph, for A/B timings)


def _materialised(x, dy, w):
    """x and dy, read from their own buffers by whatever consumes the results (the gradient convs).

    XLA:CPU duplicates cheap element-wise producers (a norm and ReLU, a norm's backward) into every consumer,
    including the layout transposes in front of its weight-gradient convolutions; a transpose with arithmetic
    inside runs 2.5-3x slower than one that copies a buffer (2 x 64^3 x 16 channels: 56-67 vs 22 ms).
    `lax.optimization_barrier` is removed before fusion on the CPU; a conditional on a value known only at
    run time is kept. Both branches return their operands exactly (the second through two flips), so the
    predicate (whether the kernel's first element is finite) never changes the result.
    """
    if not _MATERIALISE:
        return x, dy
    key = w[(0,) * w.ndim]
    return lax.cond(jnp.isfinite(key), lambda a: a,
                    lambda a: tuple(jnp.flip(jnp.flip(v, 1), 1) for v in a), (x, dy))


def _dot_channels(x, m):
    """x [..., C] @ m [C, O], accumulated in float32 for low precision."""
    return lax.dot_general(x, m, (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=_acc_type(x.dtype))


@jax.custom_vjp
def _pointwise(x, w):
    """A 1x1(x1) stride-1 convolution as matrix products: the kernel gradient x^T dy then needs none of the
    transposes XLA:CPU puts around its weight-gradient convs. Undifferentiated 2D (inference) keeps XLA's
    own conv, measured 7 % faster there (forward2d_ref)."""
    if x.ndim == 4:
        return _xla(x, w, (1, 1), ((0, 0), (0, 0)))
    return _pointwise_fwd(x, w)[0]


def _pointwise_fwd(x, w):
    """Forward pass inside a differentiated function (a matrix product); keeps the inputs."""
    return _dot_channels(x, w.reshape(w.shape[-2:])).astype(x.dtype), (x, w)


def _pointwise_bwd(res, dy):
    """dx = dy w^T and dw = x^T dy, both matrix products over every voxel."""
    x, w = res
    dx = _dot_channels(dy, w.reshape(w.shape[-2:]).T).astype(x.dtype)
    axes = tuple(range(x.ndim - 1))
    dw = lax.dot_general(x, dy, ((axes, axes), ((), ())), preferred_element_type=_acc_type(x.dtype))
    return dx, dw.reshape(w.shape).astype(w.dtype)


_pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


def _taps_forward(x, w, pads):
    """Stride-1 conv as sum over kernel taps t and input channels c of x shifted by t, channel c, times w[t, c]:
    one fused element-wise pass, in float32. For C_in = 1 XLA:CPU's GEMM-based convs waste most of their
    work (K = k^d); the first layer of the reference 3D U-Net (1 -> 16, 2 x 64^3) runs 15 ms instead of 63."""
    nd = x.ndim - 2
    out_shape = [n + lo + hi - k + 1 for n, k, (lo, hi) in zip(x.shape[1:-1], w.shape[:nd], pads)]
    xp = jnp.pad(x.astype(jnp.float32), [(0, 0), *pads, (0, 0)])
    wf = w.astype(jnp.float32)
    y = None
    for tap in itertools.product(*(range(k) for k in w.shape[:nd])):
        shifted = xp[(slice(None), *(slice(t, t + n) for t, n in zip(tap, out_shape)))]
        for c in range(x.shape[-1]):
            term = shifted[..., c:c + 1] * wf[tap + (c,)]
            y = term if y is None else y + term
    return y.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _taps(x, w, pads):
    """Stride-1 conv with few input channels (k^d * C_in <= TAPS_MAX): _taps_forward forward; the gradients
    of the usual formulation (3D: _planes', 2D: XLA's own), which stay faster than differentiating the taps."""
    return _taps_forward(x, w, pads)


def _taps_fwd(x, w, pads):
    """Forward pass inside a differentiated function; keeps the inputs."""
    return _taps_forward(x, w, pads), (x, w)


def _taps_bwd(pads, res, dy):
    """dx and dw as for the planes (3D) or XLA (2D) formulation."""
    x, w = res
    if x.ndim == 5:
        return _planes_bwd(pads, res, dy)
    return _plain2d_bwd(pads, res, dy)


_taps.defvjp(_taps_fwd, _taps_bwd)


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


def _pads(padding, spatial: Sequence[int], kernel: Sequence[int], strides) -> tuple[tuple[int, int], ...]:
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


def _s2d_conv(x, w, strides, pads):
    """A strided conv as the stride-1 VALID conv of its space-to-depth rewrite (2D: XLA's own conv)."""
    xs, ws, pads_s = _space_to_depth(x, w, strides, pads)
    return _xla(xs, ws, (1,) * (x.ndim - 2), pads_s)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _strided2d(x, w, strides, pads):
    """Strided 2D conv: XLA's own forward and kernel gradient, the input gradient through space-to-depth.

    XLA:CPU's strided forward is fast, but its input gradient (an lhs-dilated conv) is not: for 32 x 128^2,
    16 -> 32 channels, 101 ms against 36 ms for the input gradient of the space-to-depth form (a stride-1
    conv of dy and a depth-to-space). Whole space-to-depth, forward too, measured slower (train2d_ref +6 %).
    """
    return _xla(x, w, strides, pads)


def _strided2d_fwd(x, w, strides, pads):
    """Forward pass inside a differentiated function; keeps the inputs."""
    return _xla(x, w, strides, pads), (x, w)


def _strided2d_bwd(strides, pads, res, dy):
    """dx from the space-to-depth form, dw from XLA's strided weight-gradient conv."""
    x, w = res
    x, dy = _materialised(x, dy, w)
    dx = jax.vjp(lambda v: _s2d_conv(v, w, strides, pads), x)[1](dy)[0]
    dw = jax.vjp(lambda k: _xla(x, k, strides, pads), w)[1](dy)[0]
    return dx, dw


_strided2d.defvjp(_strided2d_fwd, _strided2d_bwd)


def _phases3d(x, w, strides, pads):
    """Strided 3D conv as 2D convs over (Y, Z) (XLA's own strides there) on the X phases of the input.

    Output plane i reads padded input plane s * i + a for kernel plane a, i.e. phase a % s, block i + a // s.
    Each phase's planes go through ONE 2D conv with that phase's kernel planes stacked in C_out, and the
    output adds block-shifted slices: no zero taps (space-to-depth does 2.4x the FLOPs for k=3, s=2). Measured
    for the reference U-Net's 16 -> 32 layer (2 x 64^3): forward 56 -> 39 ms, forward + backward 195 -> 161.
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
            q = _strided2d(planes, wk, st_yz, pads_yz)
        else:
            q = _xla(planes, wk, (1, 1), pads_yz)
        q = q.reshape(b, blocks, *q.shape[1:3], len(taps), w.shape[-1])
        for j, a in enumerate(taps):
            term = q[:, a // sx:a // sx + xo, :, :, j]
            out = term if out is None else out + term
    return out


def _shift_x(v, d: int, n: int):
    """out[i] = v[i - d] along axis 1 for i < n, zero outside (lax.pad; negative pads crop)."""
    cfg = [(0, 0, 0)] * v.ndim
    cfg[1] = (d, n - v.shape[1] - d, 0)
    return lax.pad(v, jnp.zeros((), v.dtype), cfg)


def _stacked(x, w, pads):
    """Stride-1 3D conv as ONE 2D conv over (Y, Z), batch B * X, with the kx kernel planes stacked in C_out,
    then out[i] = sum_a q[i + a - lo, plane a]: the planes' X shifts become shifted slices of the output.

    When C_out >= 2 C_in (and C_in <= 32) the X-shifted inputs are stacked in C_in instead (the smaller
    stack): the input gradient of the reference U-Net's decoder convs, e.g. 16 -> 32 channels at 2 x 64^3,
    165 -> 146 ms. With equal channels stacking outputs stays faster (91 vs 116 ms at 16 -> 16)."""
    kx, ky, kz, cin, cout = w.shape
    b, nx = x.shape[:2]
    (lo, hi), pads_yz = pads[0], pads[1:]
    if cout >= 2 * cin and cin <= STACK_IN_MAX:
        xo = nx + lo + hi - kx + 1
        p = jnp.concatenate([_shift_x(x, lo - a, xo) for a in range(kx)], axis=-1)  # p[i, a] = x[i + a - lo]
        y = _conv2d(p.reshape(b * xo, *x.shape[2:4], kx * cin),
                    w.transpose(1, 2, 0, 3, 4).reshape(ky, kz, kx * cin, cout), pads_yz)
        return y.reshape(b, xo, *y.shape[1:]).astype(x.dtype)
    q = _conv2d(x.reshape(b * nx, *x.shape[2:]), w.transpose(1, 2, 3, 0, 4).reshape(ky, kz, cin, kx * cout), pads_yz)
    q = q.reshape(b, nx, *q.shape[1:3], kx, cout)
    xo = nx + lo + hi - kx + 1
    return sum(_shift_x(q[..., a, :], lo - a, xo) for a in range(kx)).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _plain2d(x, w, pads):
    """Stride-1 2D conv: XLA's own, forward and gradients, with x and dy materialised for the gradients."""
    return _xla(x, w, (1, 1), pads)


def _plain2d_fwd(x, w, pads):
    """Forward pass inside a differentiated function; keeps the inputs."""
    return _xla(x, w, (1, 1), pads), (x, w)


def _plain2d_bwd(pads, res, dy):
    """XLA's own dx and dw, reading x and dy from buffers (_materialised)."""
    x, w = res
    x, dy = _materialised(x, dy, w)
    return tuple(jax.vjp(lambda a, b: _xla(a, b, (1, 1), pads), x, w)[1](dy))


_plain2d.defvjp(_plain2d_fwd, _plain2d_bwd)


def _weight_grad_2d(lhs, dy2, kshape, pads_yz):
    """Kernel gradient [kh, kw, C, O] of a stride-1 2D conv: the weight-gradient conv XLA derives itself."""
    _, vjp = jax.vjp(lambda k: _conv2d(lhs, k, pads_yz).astype(lhs.dtype), jnp.zeros(kshape, lhs.dtype))
    return vjp(dy2)[0]


def _planes_dw(x, dy, wshape, pads):
    """Kernel gradient of a stride-1 3D conv as ONE 2D weight-gradient conv over (Y, Z).

    dW[a] = sum_i x[i + a - lo] (x) dy[i] = sum_v x[v] (x) dy[v + lo - a], so either side can carry the kx
    shifts. Stacking dy puts the planes in the conv's output channels (measured the faster GEMM shape);
    stacking x (into the conv's batch) wins only when kx * C_in <= C_out, e.g. the first layer.
    """
    kx, ky, kz, cin, cout = wshape
    b, nx = x.shape[:2]
    xo, lo = dy.shape[1], pads[0][0]
    if kx * cin <= cout:
        p = jnp.stack([_shift_x(x, lo - a, xo) for a in range(kx)], axis=-2)
        g = _weight_grad_2d(p.reshape(b * xo, *x.shape[2:4], kx * cin), dy.reshape(b * xo, *dy.shape[2:]),
                            (ky, kz, kx * cin, cout), pads[1:])
        return g.reshape(ky, kz, kx, cin, cout).transpose(2, 0, 1, 3, 4)
    dys = jnp.stack([_shift_x(dy, a - lo, nx) for a in range(kx)], axis=-2)
    g = _weight_grad_2d(x.reshape(b * nx, *x.shape[2:]), dys.reshape(b * nx, *dy.shape[2:4], kx * cout),
                        (ky, kz, cin, kx * cout), pads[1:])
    return g.reshape(ky, kz, cin, kx, cout).transpose(3, 0, 1, 2, 4)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _planes(x, w, pads):
    """Stride-1 3D convolution as 2D convolutions over (Y, Z); needs 0 <= lo, hi <= k - 1 (see _fit_pads).

    Kernel planes stacked in C_out for every layer, in inference and training alike: measured faster than
    stacking the X-shifted inputs in channels for every layer of the reference U-Net at inference, and in
    the train step once XLA:CPU's reductions run on YNNPACK (train3d_ref 2.04 -> 1.94 s, alternating A/B)."""
    return _stacked(x, w, pads)


def _planes_fwd(x, w, pads):
    """Forward pass inside a differentiated function; keeps the inputs for the backward pass."""
    return _stacked(x, w, pads), (x, w)


def _planes_bwd(pads, res, dy):
    """dx = stride-1 conv of dy with the flipped, transposed kernel; dw = _planes_dw.

    dx stacks kernel planes too (no input copies).
    """
    x, w = res
    x, dy = _materialised(x, dy, w)
    back = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(w.shape[:3], pads))
    dx = _stacked(dy, jnp.flip(w, (0, 1, 2)).swapaxes(3, 4), back)
    return dx, _planes_dw(x, dy, w.shape, pads).astype(w.dtype)


_planes.defvjp(_planes_fwd, _planes_bwd)
