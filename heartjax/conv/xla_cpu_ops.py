"""Private to heartjax.conv: the building blocks of the XLA:CPU ("planes") formulation, without custom VJPs.

XLA:CPU runs 2D convolutions through library kernels but 3D ones through a generic loop, so a stride-1 3D
convolution becomes ONE 2D convolution over (Y, Z) whose batch is B * X, with the X shifts moved into channels
(`stacked`) and its kernel gradient ONE 2D weight-gradient convolution (`planes_dw`). Strided convolutions can
be rewritten as stride-1 ones (`space_to_depth`); convolutions with very few input channels are cheaper as a
sum of shifted copies (`taps_forward`). xla_cpu.py puts these together, with their custom gradients.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
from jax import lax

from heartjax.conv.common import acc_type, conv2d, shift_x, xla_conv

STACK_IN_MAX = 32  # `stacked` stacks inputs rather than kernel planes for C_in <= this and C_out >= 2 C_in
TAPS_MAX = 32  # stride-1 convs with k^d * C_in <= this run forward as a sum of shifted copies (`taps_forward`)


def dot_channels(x, m):
    """x [..., C] @ m [C, O], accumulated in float32 for low precision."""
    return lax.dot_general(x, m, (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=acc_type(x.dtype))


def taps_forward(x, w, pads):
    """Stride-1 conv as sum over kernel taps t and input channels c of x shifted by t, channel c, times w[t, c]:
    one fused element-wise pass, in float32. For few input channels (e.g. C_in = 1) XLA:CPU's GEMM-based
    convolutions waste most of their work (their inner dimension is only k^d * C_in)."""
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


def space_to_depth(x, w, strides, pads):
    """Rewrite a strided conv as a stride-1 VALID conv: each s-block of input voxels becomes s^d channels.

    Output o reads padded input s*o + t (t < k) = block o + t // s, phase t % s, so the kernel becomes
    ceil(k / s) blocks per axis with zero taps where s * u + p >= k. Costs (s * ceil(k / s) / k)^d more FLOPs
    (2.4x for k=3, s=2 in 3D) but keeps strided convs off XLA:CPU's slow strided gradient paths.
    Returns (x, w, pads) of the stride-1 conv.
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


def s2d_conv(x, w, strides, pads):
    """A strided conv as the stride-1 VALID conv of its space-to-depth rewrite (XLA's own conv)."""
    xs, ws, pads_s = space_to_depth(x, w, strides, pads)
    return xla_conv(xs, ws, (1,) * (x.ndim - 2), pads_s)


def stacked(x, w, pads):
    """Stride-1 3D conv as ONE 2D conv over (Y, Z), batch B * X, with the kx kernel planes stacked in C_out,
    then out[i] = sum_a q[i + a - lo, plane a]: the planes' X shifts become shifted slices of the output.

    When C_out >= 2 C_in (and C_in <= STACK_IN_MAX) the X-shifted inputs are stacked in C_in instead, the
    smaller of the two stacks (e.g. the input gradient of a U-Net decoder conv). With equal channels,
    stacking the kernel planes in the output stays the faster choice. Needs 0 <= lo, hi <= k - 1 along X.
    """
    kx, ky, kz, cin, cout = w.shape
    b, nx = x.shape[:2]
    (lo, hi), pads_yz = pads[0], pads[1:]
    xo = nx + lo + hi - kx + 1
    if cout >= 2 * cin and cin <= STACK_IN_MAX:
        p = jnp.concatenate([shift_x(x, lo - a, xo) for a in range(kx)], axis=-1)  # p[i, a] = x[i + a - lo]
        y = conv2d(p.reshape(b * xo, *x.shape[2:4], kx * cin),
                   w.transpose(1, 2, 0, 3, 4).reshape(ky, kz, kx * cin, cout), pads_yz)
        return y.reshape(b, xo, *y.shape[1:]).astype(x.dtype)
    q = conv2d(x.reshape(b * nx, *x.shape[2:]), w.transpose(1, 2, 3, 0, 4).reshape(ky, kz, cin, kx * cout), pads_yz)
    q = q.reshape(b, nx, *q.shape[1:3], kx, cout)
    return sum(shift_x(q[..., a, :], lo - a, xo) for a in range(kx)).astype(x.dtype)


def stacked_dx(dy, w, pads):
    """Input gradient of `stacked`: the stride-1 conv of dy with the flipped, transposed kernel, which stacks
    kernel planes too (no input copies)."""
    back = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(w.shape[:3], pads))
    return stacked(dy, jnp.flip(w, (0, 1, 2)).swapaxes(3, 4), back)


def weight_grad_2d(lhs, dy2, kshape, pads_yz):
    """Kernel gradient [kh, kw, C, O] of a stride-1 2D conv: the weight-gradient conv XLA derives itself."""
    _, vjp = jax.vjp(lambda k: conv2d(lhs, k, pads_yz).astype(lhs.dtype), jnp.zeros(kshape, lhs.dtype))
    return vjp(dy2)[0]


def planes_dw(x, dy, wshape, pads):
    """Kernel gradient of a stride-1 3D conv as ONE 2D weight-gradient conv over (Y, Z).

    dW[a] = sum_i x[i + a - lo] (x) dy[i] = sum_v x[v] (x) dy[v + lo - a], so either side can carry the kx
    shifts. Stacking dy puts the planes in the conv's output channels (the faster GEMM shape); stacking x
    (into the conv's batch) is used only when kx * C_in <= C_out, e.g. the first layer.
    """
    kx, ky, kz, cin, cout = wshape
    b, nx = x.shape[:2]
    xo, lo = dy.shape[1], pads[0][0]
    if kx * cin <= cout:
        p = jnp.stack([shift_x(x, lo - a, xo) for a in range(kx)], axis=-2)
        g = weight_grad_2d(p.reshape(b * xo, *x.shape[2:4], kx * cin), dy.reshape(b * xo, *dy.shape[2:]),
                           (ky, kz, kx * cin, cout), pads[1:])
        return g.reshape(ky, kz, kx, cin, cout).transpose(2, 0, 1, 3, 4)
    dys = jnp.stack([shift_x(dy, a - lo, nx) for a in range(kx)], axis=-2)
    g = weight_grad_2d(x.reshape(b * nx, *x.shape[2:]), dys.reshape(b * nx, *dy.shape[2:4], kx * cout),
                       (ky, kz, cin, kx * cout), pads[1:])
    return g.reshape(ky, kz, cin, kx, cout).transpose(3, 0, 1, 2, 4)
