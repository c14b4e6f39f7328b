"""Tests for heartjax.model.augment: exact identity, label safety, geometry, determinism, vmap, jit, validation."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from heartjax.model.augment import AugmentConfig, augment_batch, identity_config, make_augment
from heartjax.common.errors import HeartjaxError

INTENSITY = ("noise_p", "blur_p", "brightness_p", "contrast_p", "lowres_p", "gamma_inverted_p", "gamma_p")


def only(**overrides):
    """identity_config() with some fields overridden."""
    return dataclasses.replace(identity_config(), **overrides)


def sample(shape, channels=1, num_labels=4, seed=0):
    """A random float32 image [*shape, C] and an int32 label [*shape] made of 4-voxel blocks (0..num_labels-1)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=shape + (channels,)).astype(np.float32)
    coarse = rng.integers(0, num_labels, size=tuple((n + 3) // 4 for n in shape))
    label = coarse[np.ix_(*[np.arange(n) // 4 for n in shape])]
    return jnp.asarray(image), jnp.asarray(label.astype(np.int32))


@functools.lru_cache(maxsize=None)
def jitted(config, spatial_dims):
    """jax.jit(make_augment(config, spatial_dims)), compiled once per config across tests."""
    return jax.jit(make_augment(config, spatial_dims))


def run_all(configs, spatial_dims, key, image, label):
    """Augment one sample under several configs in a single jitted call (one compile for the lot)."""
    augments = [make_augment(config, spatial_dims) for config in configs]
    return jax.jit(lambda k, x, y: [augment(k, x, y) for augment in augments])(key, image, label)


def blob(shape, centre, radius):
    """Ball indicator as float32 image [*shape, 1] and int32 label [*shape] (value 2 inside)."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    inside = np.sum((grid - np.asarray(centre)) ** 2, -1) <= radius ** 2
    return jnp.asarray(inside[..., None].astype(np.float32)), jnp.asarray(2 * inside.astype(np.int32))


def centroid(weights):
    """Weighted centroid of a [*spatial] array."""
    weights = np.asarray(weights, np.float64)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in weights.shape], indexing="ij"), -1)
    return (grid * weights[..., None]).reshape(-1, weights.ndim).sum(0) / weights.sum()


def test_no_transform_returns_input_bitwise():
    # Every probability 0 (nothing traced), in 2D and 3D; then every probability 1e-9: every transform is traced
    # and runs, but no coin comes up, so the jnp.where paths must hand the input back bit for bit.
    tiny = dataclasses.replace(AugmentConfig(), **{f.name: 1e-9 for f in dataclasses.fields(AugmentConfig)
                                                   if f.name.endswith("_p")})
    for shape, configs in (((12, 10), [identity_config()]), ((6, 5, 4), [identity_config(), tiny])):
        image, label = sample(shape, channels=2)
        for out_image, out_label in run_all(configs, len(shape), jax.random.key(3), image, label):
            assert out_image.dtype == image.dtype and out_label.dtype == label.dtype
            np.testing.assert_array_equal(np.asarray(out_image).view(np.uint32), np.asarray(image).view(np.uint32))
            np.testing.assert_array_equal(out_label, label)


@pytest.mark.parametrize("shape", [(16, 12), (10, 12, 8)])
def test_spatial_transforms_create_no_new_label_values(shape):
    config = only(rotation_p=1.0, scale_p=1.0, elastic_p=1.0, mirror_p=0.5, elastic_sigma=3.0,
                  elastic_magnitude=(2.0, 3.0))
    image, label = sample(shape)
    label = jnp.where(label == 2, 7, label)  # Values {0, 1, 3, 7}: no interpolation can land between them.
    images, labels = jnp.stack([image] * 3), jnp.stack([label] * 3)
    augment = make_augment(config, len(shape))
    out_image, out_label = jax.jit(lambda k, x, y: augment_batch(augment, k, x, y))(jax.random.key(0), images, labels)
    assert set(np.unique(out_label)) <= set(np.unique(label))
    assert out_label.dtype == label.dtype and out_image.shape == images.shape
    assert all(not np.array_equal(out_label[i], label) for i in range(3))


def test_flip_twice_is_identity_and_flip_matches_jnp_flip():
    image, label = sample((8, 6, 4), channels=2)
    all_axes, some_axes = make_augment(only(mirror_p=1.0), 3), make_augment(only(mirror_p=0.5, mirror_axes=(0, 2)), 3)
    twice = lambda f, k, x, y: f(k, *f(k, x, y))  # Same key twice: the same flips, undone.
    once_all, twice_all, twice_some = jax.jit(lambda k, x, y: (all_axes(k, x, y), twice(all_axes, k, x, y),
                                                                twice(some_axes, k, x, y)))(jax.random.key(1), image, label)
    np.testing.assert_array_equal(once_all[0], jnp.flip(image, (0, 1, 2)))
    np.testing.assert_array_equal(once_all[1], jnp.flip(label, (0, 1, 2)))
    for out_image, out_label in (twice_all, twice_some):
        np.testing.assert_array_equal(out_image, image)
        np.testing.assert_array_equal(out_label, label)


MIXED = AugmentConfig(rotation_p=0.5, scale_p=0.5, noise_p=0.5, blur_p=0.0, contrast_p=0.0, lowres_p=0.0,
                      gamma_p=0.0, gamma_inverted_p=0.0, brightness_p=0.5, mirror_p=0.5)


def test_vmap_equals_per_sample_loop_and_jit_compiles_once():
    augment, traces = make_augment(MIXED, 2), []

    def step(key, images, labels):
        traces.append(1)  # Runs only while tracing.
        return augment_batch(augment, key, images, labels)

    jitted_step, single = jax.jit(step), jitted(MIXED, 2)
    images, labels = (jnp.stack(x) for x in zip(*[sample((12, 12), channels=2, seed=s) for s in range(4)]))
    key = jax.random.key(9)
    jitted_step(jax.random.key(0), images + 1.0, labels)
    batch_images, batch_labels = jitted_step(key, images, labels)
    assert len(traces) == 1
    for i, sample_key in enumerate(jax.random.split(key, 4)):
        loop_image, loop_label = single(sample_key, images[i], labels[i])
        np.testing.assert_allclose(batch_images[i], loop_image, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(batch_labels[i], loop_label)


def test_same_key_same_result_different_key_different():
    single = jitted(MIXED, 2)
    image, label = sample((12, 12), channels=2)
    first, again, other = (single(jax.random.key(k), image, label) for k in (5, 5, 6))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_intensity_transforms_leave_label_unchanged_and_keep_dtypes():
    config = only(**{name: 1.0 for name in INTENSITY})
    image, label = sample((8, 8, 6), channels=2)
    label = label.astype(jnp.uint8)
    (out_image, out_label), = run_all([config], 3, jax.random.key(2), image, label)
    np.testing.assert_array_equal(out_label, label)
    assert out_label.dtype == jnp.uint8 and out_image.dtype == jnp.float32 and out_image.shape == image.shape
    assert not np.allclose(out_image, image) and np.all(np.isfinite(out_image))


def test_rotation_by_90_degrees_matches_rot90_in_2d_and_3d():
    image, label = sample((8, 8, 8))
    quarter = dict(rotation_p=1.0, rotation_deg=(90.0, 90.0))
    # Axis i turns towards axis j in plane (i, j), which is np.rot90's direction: (c + d, c) moves to (c, c + d).
    (out_image, out_label), = run_all([only(**quarter)], 2, jax.random.key(0), image[:, :, 0], label[:, :, 0])
    np.testing.assert_array_equal(out_label, np.rot90(label[:, :, 0]))
    np.testing.assert_allclose(out_image, np.rot90(image[:, :, 0]), atol=1e-4)
    planes = ((1, 2), (2, 0), (0, 1))  # Rotation about axis 0, 1, 2.
    outputs = run_all([only(rotation_axes=(axis,), **quarter) for axis in range(3)], 3, jax.random.key(0), image, label)
    for plane, (out_image, out_label) in zip(planes, outputs):
        np.testing.assert_array_equal(out_label, np.rot90(label, axes=plane))
        np.testing.assert_allclose(out_image, np.rot90(image, axes=plane), atol=1e-4)


def test_rotation_moves_image_and_label_centroids_together():
    image, label = blob((24, 24), centre=(16, 11), radius=4)
    (out_image, out_label), = run_all([only(rotation_p=1.0, rotation_deg=(30.0, 30.0))], 2, jax.random.key(0),
                                      image, label)
    angle, centre = np.deg2rad(30.0), np.array([11.5, 11.5])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    expected = rotation @ (np.array([16.0, 11.0]) - centre) + centre
    # Nearest-neighbour labels are exact to half a voxel; linearly interpolated images far better.
    np.testing.assert_allclose(centroid(out_label == 2), expected, atol=0.3)
    np.testing.assert_allclose(centroid(out_image[..., 0]), expected, atol=0.05)


def test_scaling_moves_image_and_label_centroids_together():
    centre_in = np.array([12.0, 8.0, 10.0])
    image, label = blob((20, 20, 20), centre_in, radius=4)
    factors = (0.75, 1.5)
    outputs = run_all([only(scale_p=1.0, scale_range=(f, f)) for f in factors], 3, jax.random.key(0), image, label)
    for factor, (out_image, out_label) in zip(factors, outputs):
        expected = factor * (centre_in - 9.5) + 9.5  # About the patch centre; > 1 magnifies.
        np.testing.assert_allclose(centroid(out_label == 2), expected, atol=0.3)
        np.testing.assert_allclose(centroid(out_image[..., 0]), expected, atol=0.05)
        np.testing.assert_allclose(float(np.sum(out_image)) / float(np.sum(image)), factor ** 3, rtol=0.03)


def test_border_modes_fill_outside_as_documented():
    image = jnp.full((10, 10, 1), 5.0).at[4, 4, 0].set(-1.0)
    label = jnp.full((10, 10), 3, jnp.int32).at[4, 4].set(1)
    modes = (("min", -1.0, 0), ("zero", 0.0, 0), ("edge", 5.0, 3))
    configs = [only(border_mode=mode, rotation_p=1.0, rotation_deg=(45.0, 45.0)) for mode, _, _ in modes]
    for (mode, image_fill, label_fill), (out_image, out_label) in zip(
            modes, run_all(configs, 2, jax.random.key(0), image, label)):
        assert float(out_image[0, 0, 0]) == pytest.approx(image_fill, abs=1e-5), mode
        assert int(out_label[0, 0]) == label_fill, mode
        assert set(np.unique(out_label)) <= {0, 1, 3}, mode


def test_blur_matches_scipy_gaussian_filter():
    image, label = sample((9, 8, 7))
    config = only(blur_p=1.0, blur_p_per_channel=1.0, blur_sigma=(1.0, 1.0))
    (out_image, _), = run_all([config], 3, jax.random.key(0), image, label)
    expected = ndimage.gaussian_filter(np.asarray(image[..., 0]), sigma=1.0, mode="reflect", truncate=3.0)
    np.testing.assert_allclose(out_image[..., 0], expected, atol=1e-5)


def test_intensity_statistics():
    image, label = sample((16, 16), channels=2)
    spatial = (0, 1)
    configs = [only(contrast_p=1.0, contrast_range=(1.5, 1.5)), only(gamma_p=1.0, gamma_range=(1.5, 1.5)),
               only(gamma_inverted_p=1.0, gamma_range=(1.5, 1.5)),
               only(brightness_p=1.0, brightness_range=(1.25, 1.25)), only(noise_p=1.0, noise_variance=(0.09, 0.09))]
    contrast, gamma, inverted, brightness, noise = (x for x, _ in run_all(configs, 2, jax.random.key(4), image, label))
    np.testing.assert_allclose(contrast.min(spatial), image.min(spatial), atol=1e-6)  # Range preserved.
    np.testing.assert_allclose(contrast.max(spatial), image.max(spatial), atol=1e-6)
    assert np.all(contrast.std(spatial) > image.std(spatial))
    for out in (gamma, inverted):
        np.testing.assert_allclose(out.mean(spatial), image.mean(spatial), atol=1e-4)  # Stats retained.
        np.testing.assert_allclose(out.std(spatial), image.std(spatial), rtol=1e-4)
        assert not np.allclose(out, image, atol=1e-2)
    assert not np.allclose(gamma, inverted, atol=1e-2)
    np.testing.assert_allclose(brightness, image * 1.25, rtol=1e-6)
    assert float(jnp.std(noise - image)) == pytest.approx(0.3, rel=0.15)


def test_lowres_keeps_constant_and_smooths_high_frequency():
    checker = (np.indices((16, 16)).sum(0) % 2).astype(np.float32)[..., None]
    image = jnp.asarray(np.concatenate([checker, np.full_like(checker, 2.0)], -1))
    label = jnp.zeros((16, 16), jnp.int32)
    config = only(lowres_p=1.0, lowres_p_per_channel=1.0, lowres_scale=(0.5, 0.5))
    (half, _), (full, _) = run_all([config, dataclasses.replace(config, lowres_scale=(1.0, 1.0))], 2,
                                   jax.random.key(0), image, label)
    np.testing.assert_allclose(half[..., 1], 2.0, rtol=1e-6)
    assert float(half[..., 0].std()) < 0.1 * float(image[..., 0].std())  # The Nyquist pattern aliases to flat.
    np.testing.assert_allclose(full, image, atol=1e-6)


def test_defaults_follow_nnunet_with_mirroring_off():
    config = AugmentConfig()
    assert (config.rotation_p, config.rotation_deg, config.scale_p, config.scale_range) == (
        0.2, (-30.0, 30.0), 0.2, (0.7, 1.4))
    assert config.mirror_p == 0.0 and config.elastic_p == 0.0
    assert all(getattr(identity_config(), f.name) == 0.0
               for f in dataclasses.fields(AugmentConfig) if f.name.endswith("_p"))


@pytest.mark.parametrize("field, value", [
    ("rotation_p", 1.5), ("noise_p", -0.1), ("blur_p_per_channel", 2.0), ("gamma_p", "0.3"),
    ("scale_range", (1.4, 0.7)), ("scale_range", (0.0, 1.0)), ("rotation_deg", (30.0,)),
    ("lowres_scale", (0.5, 1.5)), ("noise_variance", (-1.0, 0.1)), ("gamma_range", (0.0, 1.5)),
    ("elastic_sigma", 0.0), ("mirror_axes", (0, 3)), ("rotation_axes", (1, 1)), ("border_mode", "wrap"),
])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(HeartjaxError, match=field):
        AugmentConfig(**{field: value})


def test_config_accepts_lists_and_make_augment_checks_dims_and_shapes():
    assert AugmentConfig(scale_range=[0.8, 1.2]).scale_range == (0.8, 1.2)
    with pytest.raises(HeartjaxError, match="spatial_dims"):
        make_augment(AugmentConfig(), 4)
    with pytest.raises(HeartjaxError, match="rotation_axes"):
        make_augment(AugmentConfig(rotation_axes=(2,)), 2)
    with pytest.raises(HeartjaxError, match="mirror_axes"):
        make_augment(AugmentConfig(mirror_axes=(2,)), 2)
    image, label = sample((8, 8))
    with pytest.raises(HeartjaxError, match="label"):
        make_augment(AugmentConfig(), 2)(jax.random.key(0), image, label[:4])


@pytest.mark.parametrize("name", ["brightness", "contrast", "gamma", "gamma_inverted", "blur", "lowres"])
def test_joint_channels_apply_one_draw_to_every_channel(name):
    """2.5D neighbour slices as channels: with joint_channels, identical channels stay identical; without, they
    are augmented each with its own draw (for at least one of several keys)."""
    base = {f.name: 0.0 for f in dataclasses.fields(AugmentConfig) if f.name.endswith("_p")}
    on = {f"{name}_p": 1.0, **({f"{name}_p_per_channel": 1.0} if name in ("blur", "lowres") else {})}
    x = np.random.default_rng(0).normal(size=(12, 12, 1)).astype(np.float32) + 2.0
    image = jnp.asarray(np.repeat(x, 3, axis=-1))
    label = jnp.zeros((12, 12), jnp.int32)
    joint = make_augment(AugmentConfig(**{**base, **on}, joint_channels=True), 2)
    apart = make_augment(AugmentConfig(**{**base, **on}), 2)
    differs = acted = False
    for k in range(4):
        out, _ = joint(jax.random.key(k), image, label)
        np.testing.assert_allclose(out[..., 1], out[..., 0], rtol=0, atol=1e-6)
        np.testing.assert_allclose(out[..., 2], out[..., 0], rtol=0, atol=1e-6)
        acted |= not np.allclose(out[..., 0], x[..., 0])
        sep, _ = apart(jax.random.key(k), image, label)
        differs |= not np.allclose(sep[..., 0], sep[..., 1], atol=1e-6)
    assert acted  # the transform did act
    assert differs or name == "lowres"  # without joint_channels the channels part ways (lowres: one zoom anyway)
