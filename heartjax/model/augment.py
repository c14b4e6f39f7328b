"""Data augmentation on the device: pure per-sample functions, batched with jax.vmap inside the jitted step.

Transforms, order and defaults follow nnU-Net v2 (batchgeneratorsv2, see shared/ANCHORS.md section 1):
mirroring -> spatial (rotation + scaling + optional elastic, ONE resampling) -> Gaussian noise -> Gaussian blur
-> multiplicative brightness -> contrast -> simulated low resolution -> inverted gamma -> gamma.
Deliberate differences: mirroring is off by default (left and right heart differ) and comes first, not last
(the same distribution for symmetric angle ranges, and flipping a computed array would recompute it, which cost
3 to 9x under XLA:CPU); 2D rotation defaults to +-30 deg (nnU-Net: +-180), since cardiac orientation is fairly
canonical; low resolution downsamples by nearest and upsamples linearly (nnU-Net: cubic), as one matrix per
axis, since jax.image.resize needs a static size; blur is likewise one banded matrix per axis.

Exactness and cost: each transform has its own coin and the untouched path goes through jnp.where, so a sample
whose coins all say no comes back bitwise equal. A transform whose probability is 0 is not traced at all and
costs nothing. Under vmap both sides of every where run, so each enabled transform costs its full price on every
sample. All random numbers of a sample come from ONE jax.random.uniform call (slots at fixed positions; normals
by the inverse error function), because each random call adds about 0.3 s of XLA compile time on the CPU.

Spatial conventions: coordinates are voxel indices, rotation and scaling act about the patch centre
((n - 1) / 2 per axis) in voxel space (so the patch should be near isotropic, as after resampling to the plan's
spacing). A positive angle in plane (i, j) turns axis i towards axis j; in 3D the rotation is Rz @ Ry @ Rx, with
Rx in plane (1, 2), Ry in plane (2, 0), Rz in plane (0, 1). A scale factor s > 1 magnifies (a structure becomes
s times larger). Image: linear interpolation; label: nearest, so no new label value appears. Outside the patch
(`border_mode`): "min" fills the image with each channel's minimum (no signal, like air) and the label with 0;
"zero" fills the image with 0 and the label with 0; "edge" repeats the edge voxel for both.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from heartjax.common.errors import HeartjaxError
from heartjax.config.augment import AugmentConfig, identity_config  # noqa: F401 (re-exported)
from heartjax.conv import unfused

AugmentFn = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]

_EPS = 1e-7


def _layout(config, shape, channels):
    """(name, shape) of every uniform slot of one sample; the two noise fields come last, only when enabled.
    With joint_channels the per-channel draws are one value shared by all channels (the noise field stays
    per channel: the same variance, independent noise)."""
    d, c = len(shape), 1 if config.joint_channels else channels
    slots = [("rotation_on", ()), ("rotation", (1 if d == 2 else 3,)), ("scale_on", ()), ("scale", ()),
             ("elastic_on", ()), ("elastic_magnitude", ()), ("noise_on", ()), ("noise_variance", ()),
             ("blur_on", ()), ("blur_channel", (c,)), ("blur", (d, c)), ("lowres_on", ()), ("lowres_channel", (c,)),
             ("lowres", ()), ("mirror", (d,))]
    for name in ("brightness", "contrast", "gamma_inverted", "gamma"):
        slots += [(name + "_on", ()), (name + "_side", (c,)), (name, (c,))]
    if config.elastic_p > 0:
        slots.append(("elastic_field", _control_shape(config, shape) + (d,)))
    if config.noise_p > 0:
        slots.append(("noise_field", tuple(shape) + (channels,)))
    return slots


def _draw(key, slots):
    """Name -> uniform [0, 1) float32 array, all from one random call."""
    sizes = [math.prod(shape) for _, shape in slots]
    u = jax.random.uniform(key, (sum(sizes),))
    starts = np.cumsum([0] + sizes)
    return {name: u[start:start + size].reshape(shape) for (name, shape), start, size in zip(slots, starts, sizes)}


def _scaled(u, value_range):
    """Uniform [0, 1) -> uniform [low, high)."""
    return value_range[0] + (value_range[1] - value_range[0]) * u


def _factor(side, u, value_range):
    """Multiplicative factor: below or above 1 with equal chance when the range straddles 1 (batchgenerators)."""
    low, high = value_range
    if high <= 1.0 or low >= 1.0:
        return _scaled(u, value_range)
    return jnp.where(side < 0.5, _scaled(u, (low, 1.0)), _scaled(u, (1.0, high)))


def _normal(u):
    """Uniform [0, 1) -> standard normal (clipped at about -5.3 sigma where u = 0)."""
    return np.sqrt(2.0).astype(np.float32) * jax.lax.erf_inv(jnp.maximum(2.0 * u - 1.0, -1.0 + 2.0 ** -23))


def _plane_rotation(dims, i, j, angle):
    """Rotation by angle in plane (i, j), turning axis i towards axis j."""
    c, s = jnp.cos(angle), jnp.sin(angle)
    m = jnp.eye(dims, dtype=jnp.float32)
    return m.at[i, i].set(c).at[j, j].set(c).at[j, i].set(s).at[i, j].set(-s)


def _inverse_affine(config, r, dims):
    """Output-to-input matrix (R^T / s) and whether rotation or scaling applies."""
    inverse = jnp.eye(dims, dtype=jnp.float32)
    applied = jnp.zeros((), bool)
    if config.rotation_p > 0:
        on = r["rotation_on"] < config.rotation_p
        angles = jnp.deg2rad(_scaled(r["rotation"], config.rotation_deg))
        if dims == 2:
            rotation = _plane_rotation(2, 0, 1, angles[0])
        else:
            axes = (0, 1, 2) if config.rotation_axes is None else config.rotation_axes
            angles = angles * jnp.array([a in axes for a in range(3)], jnp.float32)
            rotation = (_plane_rotation(3, 0, 1, angles[2]) @ _plane_rotation(3, 2, 0, angles[1])
                        @ _plane_rotation(3, 1, 2, angles[0]))
        inverse = jnp.where(on, rotation.T, inverse)
        applied = applied | on
    if config.scale_p > 0:
        on = r["scale_on"] < config.scale_p
        inverse = inverse / jnp.where(on, _scaled(r["scale"], config.scale_range), 1.0)
        applied = applied | on
    return inverse, applied


def _control_shape(config, shape):
    """Elastic control grid: one point every elastic_sigma voxels or closer, at least 2 per axis."""
    return tuple(max(2, math.ceil((n - 1) / config.elastic_sigma) + 1) for n in shape)


def _cubic_matrix(n, m):
    """[n, m] cubic-convolution weights (Keys, a = -0.5) from m control points spanning n voxels, end to end."""
    position = np.arange(n) * (m - 1) / max(n - 1, 1)
    base = np.floor(position).astype(int)
    matrix = np.zeros((n, m), np.float32)
    for k in range(-1, 3):
        d = np.abs(position - (base + k))
        weight = np.where(d <= 1, (1.5 * d - 2.5) * d * d + 1, np.where(d < 2, ((-0.5 * d + 2.5) * d - 4) * d + 2, 0))
        np.add.at(matrix, (np.arange(n), np.clip(base + k, 0, m - 1)), weight)  # Edge control points repeat.
    return matrix


def _sample_coords(config, r, shape):
    """Input coordinate of every output voxel (list of dims arrays of shape), and whether any transform applies."""
    dims = len(shape)
    inverse, applied = _inverse_affine(config, r, dims)
    centre = [(n - 1) / 2.0 for n in shape]
    # Broadcast 1D offsets instead of building an index grid: the affine is separable per input axis.
    offsets = [(jnp.arange(n, dtype=jnp.float32) - c).reshape([-1 if a == b else 1 for b in range(dims)])
               for a, (n, c) in enumerate(zip(shape, centre))]
    coords = [jnp.broadcast_to(sum(inverse[i, j] * offsets[j] for j in range(dims)) + centre[i], shape)
              for i in range(dims)]
    if config.elastic_p > 0:
        # Gaussian displacements at control points, interpolated cubically: smooth at the scale elastic_sigma.
        on = r["elastic_on"] < config.elastic_p
        field = _normal(r["elastic_field"]) * _scaled(r["elastic_magnitude"], config.elastic_magnitude)
        for axis, n in enumerate(shape):  # [*control, dims] -> [*shape, dims], one constant matrix per axis.
            matrix = _cubic_matrix(n, field.shape[axis])
            field = _along(field, np.broadcast_to(matrix, (dims,) + matrix.shape), axis)
        coords = [c + jnp.where(on, field[..., i], 0.0) for i, c in enumerate(coords)]
        applied = applied | on
    return coords, applied


def _flat_index(indices, shape):
    """Row-major flat index of integer indices, each clipped into its axis."""
    flat = 0
    for i, n in zip(indices, shape):
        flat = flat * n + jnp.clip(i, 0, n - 1)
    return flat


def _pad_border(image, label, border_mode):
    """Pad one voxel on every spatial side with what lies outside the patch (see module docstring)."""
    pad = [(1, 1)] * label.ndim
    if border_mode == "edge":
        return jnp.pad(image, pad + [(0, 0)], mode="edge"), jnp.pad(label, pad, mode="edge")
    padded = jnp.pad(image, pad + [(0, 0)])
    if border_mode == "min":
        rim = np.pad(np.zeros(label.shape, bool), 1, constant_values=True)[..., None]
        padded = jnp.where(rim, _stats(image, "min")[0], padded)
    return padded, jnp.pad(label, pad)


def _resample(image, label, coords, border_mode):
    """Image by linear interpolation and label by nearest neighbour at coords; outside per border_mode."""
    # Indices are clipped into the padded arrays, so every read outside the patch lands on the border rim.
    image, label = _pad_border(image, label, border_mode)
    shape, channels = label.shape, image.shape[-1]
    coords = [c + 1.0 for c in coords]
    flat_image = image.reshape(-1, channels)
    low = [jnp.floor(c) for c in coords]
    frac = [c - f for c, f in zip(coords, low)]
    low = [f.astype(jnp.int32) for f in low]
    out = 0.0
    for corner in itertools.product((0, 1), repeat=len(shape)):
        weight = math.prod(f if bit else 1.0 - f for f, bit in zip(frac, corner))
        out = out + weight[..., None] * flat_image[_flat_index([f + bit for f, bit in zip(low, corner)], shape)]
    nearest = [jnp.round(c).astype(jnp.int32) for c in coords]  # Half to even: no drift at exact ties.
    return out, label.reshape(-1)[_flat_index(nearest, shape)]


def _stats(x, *kinds, joint: bool = False):
    """Per-channel "mean", "std", "min" or "max" of x [*spatial, C] over space: [len(kinds), C]; with `joint`,
    over space and channels: [len(kinds), 1]."""
    flat = x.reshape(-1, 1) if joint else x.reshape(-1, x.shape[-1])
    stats = jnp.stack([getattr(jnp, kind)(flat, axis=0) for kind in kinds])
    # Keeps XLA:CPU from fusing these reductions with their element-wise consumer (see heartjax.conv.unfused).
    return unfused(stats)


def _noise(config, r, x, name):
    """Additive Gaussian noise with a variance drawn from noise_variance."""
    return x + jnp.sqrt(_scaled(r["noise_variance"], config.noise_variance)) * _normal(r["noise_field"])


def _along(x, matrices, axis):
    """Apply one [n, n] matrix per channel (matrices [C, n, n]) along a spatial axis of x [*spatial, C]."""
    letters = "ijkl"[:x.ndim - 1]
    out = letters[:axis] + "z" + letters[axis + 1:]
    return jnp.einsum(f"cz{letters[axis]},{letters}c->{out}c", matrices, x, precision=jax.lax.Precision.HIGHEST)


def _blur(config, r, x, name):
    """Separable Gaussian blur (symmetric padding, like scipy's reflect), sigma drawn per axis and channel."""
    # A banded matrix per axis rather than shifted slices: XLA:CPU fuses a stencil with its producer and then
    # recomputes the producer (e.g. the resampling) once per tap; a matrix product reads it once.
    radius = max(1, math.ceil(3 * config.blur_sigma[1]))
    taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)[:, None]
    sigmas = _scaled(r["blur"], config.blur_sigma)  # [dims, C]
    for axis in range(x.ndim - 1):
        n = x.shape[axis]
        source = np.pad(np.arange(n), radius, mode="symmetric")  # Index read by (output i, tap k): [i + k].
        one_hot = np.stack([np.eye(n, dtype=np.float32)[source[k:k + n]] for k in range(2 * radius + 1)])
        weights = jnp.exp(-0.5 * (taps / sigmas[axis]) ** 2)
        weights = weights / weights.sum(axis=0)  # [taps, C]
        x = _along(x, jnp.broadcast_to(jnp.einsum("kc,kij->cij", weights, one_hot), (x.shape[-1], n, n)), axis)
    return x


def _brightness(config, r, x, name):
    """Multiply each channel by a factor from brightness_range."""
    return x * _factor(r["brightness_side"], r["brightness"], config.brightness_range)


def _contrast(config, r, x, name):
    """Scale each channel about its mean, then clip to the channel's original range."""
    factor = _factor(r["contrast_side"], r["contrast"], config.contrast_range)
    mean, low, high = _stats(x, "mean", "min", "max", joint=config.joint_channels)
    return jnp.clip((x - mean) * factor + mean, low, high)


def _lowres(config, r, x, name):
    """Nearest downsampling by a random fraction (same on all axes), then linear upsampling to the same shape."""
    zoom = _scaled(r["lowres"], config.lowres_scale)
    for axis, n in enumerate(x.shape[:-1]):
        m = jnp.clip(jnp.round(n * zoom), 1, n)  # Low-resolution size along this axis.
        u = jnp.clip((jnp.arange(n, dtype=jnp.float32) + 0.5) * m / n - 0.5, 0, m - 1)
        j0 = jnp.floor(u)
        j1 = jnp.minimum(j0 + 1, m - 1)
        t = (u - j0)[:, None]
        source = lambda j: jnp.clip(jnp.floor((j + 0.5) * n / m), 0, n - 1).astype(jnp.int32)
        matrix = (1 - t) * jax.nn.one_hot(source(j0), n) + t * jax.nn.one_hot(source(j1), n)
        x = _along(x, jnp.broadcast_to(matrix, (x.shape[-1], n, n)), axis)
    return x


def _gamma(config, r, x, name):
    """x -> x ** gamma on each channel's [min, max], mean and std retained; "gamma_inverted" negates around it."""
    invert = name == "gamma_inverted"
    gamma = _factor(r[name + "_side"], r[name], config.gamma_range)
    x = -x if invert else x
    mean, std, low, high = _stats(x, "mean", "std", "min", "max", joint=config.joint_channels)
    y = ((x - low) / (high - low + _EPS)) ** gamma * (high - low) + low
    new_mean, new_std = _stats(y, "mean", "std", joint=config.joint_channels)
    y = (y - new_mean) / (new_std + _EPS) * std + mean
    return -y if invert else y


# Image-only transforms, each (config, draws, x, name) -> x, in nnU-Net's order.
_INTENSITY = (("noise", _noise), ("blur", _blur), ("brightness", _brightness), ("contrast", _contrast),
              ("lowres", _lowres), ("gamma_inverted", _gamma), ("gamma", _gamma))


def make_augment(config: AugmentConfig, spatial_dims: int) -> AugmentFn:
    """Build the per-sample augmentation `(key, image, label) -> (image, label)`.

    Args:
      config: probabilities and ranges (validated here).
      spatial_dims: 2 (slices) or 3 (volumes).

    Returns:
      A pure function of (key, image float [*spatial, C], label int [*spatial]) returning an image and a label of
      the same shapes and dtypes. Spatial transforms and mirroring move both together; intensity transforms touch
      only the image. Traceable under jax.jit and jax.vmap; the same key gives the same result.
    """
    if not isinstance(config, AugmentConfig):
        raise HeartjaxError(f"augment: config must be an AugmentConfig, got {type(config).__name__}")
    config.validate()
    if spatial_dims not in (2, 3):
        raise HeartjaxError(f"augment: spatial_dims={spatial_dims!r} must be 2 or 3")
    if spatial_dims == 2 and config.rotation_axes is not None:
        raise HeartjaxError("augment config: rotation_axes applies to 3D only; set it to None for 2D "
                            "(2D rotation is always in-plane)")
    mirror_axes = tuple(range(spatial_dims)) if config.mirror_axes is None else config.mirror_axes
    if any(a >= spatial_dims for a in mirror_axes):
        raise HeartjaxError(f"augment config: mirror_axes={mirror_axes} has an axis >= spatial_dims={spatial_dims}")
    spatial = config.rotation_p > 0 or config.scale_p > 0 or config.elastic_p > 0

    def augment(key, image, label):
        if image.ndim != spatial_dims + 1 or label.shape != image.shape[:-1]:
            raise HeartjaxError(f"augment: expected image [*spatial, C] and label [*spatial] with {spatial_dims} "
                                f"spatial axes, got image {image.shape} and label {label.shape}")
        r = _draw(key, _layout(config, label.shape, image.shape[-1]))
        x, y = image, label
        if config.mirror_p > 0:  # First, where x is still the input: a flip of a computed array recomputes it.
            for axis in mirror_axes:
                flip = r["mirror"][axis] < config.mirror_p
                x = jnp.where(flip, jnp.flip(x, axis), x)
                y = jnp.where(flip, jnp.flip(y, axis), y)
        if spatial:
            coords, applied = _sample_coords(config, r, label.shape)
            new_x, new_y = _resample(x, y, coords, config.border_mode)
            x, y = jnp.where(applied, new_x, x), jnp.where(applied, new_y, y)
        for name, transform in _INTENSITY:
            p, p_per_channel = getattr(config, name + "_p"), getattr(config, name + "_p_per_channel", 1.0)
            if p > 0:
                on = r[name + "_on"] < p
                if p_per_channel < 1:
                    on = on & (r[name + "_channel"] < p_per_channel)
                x = jnp.where(on, transform(config, r, x, name), x)
        return x.astype(image.dtype), y.astype(label.dtype)

    return augment


def augment_batch(augment_fn: AugmentFn, key: jax.Array, images: jax.Array, labels: jax.Array):
    """Augment a batch: one key per sample from jax.random.split(key, B), then jax.vmap(augment_fn).

    Args:
      augment_fn: from make_augment.
      key: PRNG key.
      images: float [B, *spatial, C].
      labels: int [B, *spatial].

    Returns:
      (images, labels) of the same shapes and dtypes.
    """
    if images.shape[0] != labels.shape[0]:
        raise HeartjaxError(f"augment: images and labels disagree on batch size: {images.shape} vs {labels.shape}")
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(augment_fn)(keys, images, labels)
