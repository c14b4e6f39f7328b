"""Sampling (deterministic per step, foreground share, slice axis) and tiled inference (exact on identity models)."""

import numpy as np
import pytest

from heartjax.eval.inference import gaussian_importance, slicewise_predict, sliding_window_predict, tile_starts
from heartjax.data.preprocess import Preprocessed
from heartjax.data.sampling import PatchSampler, Prefetcher


def case(shape=(20, 18, 6), seed=0):
    rng = np.random.default_rng(seed)
    lbl = np.zeros(shape, np.uint8)
    lbl[8:11, 7:10, 2:4] = 1
    lbl[2:4, 2:4, 0:2] = 2
    return Preprocessed("c", rng.standard_normal(shape).astype(np.float32), lbl, ((0, 1),) * 3, shape, (1, 1, 1))


def test_batches_depend_only_on_seed_and_step():
    s = PatchSampler([case(), case(seed=1)], (8, 8, 4), 3, seed=5)
    a, b = s.batch(7), s.batch(7)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].shape == (3, 8, 8, 4, 1) and a[1].shape == (3, 8, 8, 4)
    assert not np.array_equal(s.batch(8)[0], a[0])


def test_foreground_share():
    s = PatchSampler([case()], (4, 4, 2), 3, seed=0, fg_fraction=0.34)
    for step in range(20):
        _, lbl = s.batch(step)
        assert lbl[-1].any()  # the last sample is forced onto a structure


def test_slices_cut_along_slice_axis_and_padding():
    c = case(shape=(6, 20, 18))
    s = PatchSampler([c], (24, 16), 2, seed=0, spatial_dims=2, slice_axis=0)
    img, lbl = s.batch(0)
    assert img.shape == (2, 24, 16, 1)  # 20 padded to 24, 18 cropped to 16
    with pytest.raises(Exception, match="patch"):
        PatchSampler([c], (8, 8, 8), 2, seed=0, spatial_dims=2)


def test_prefetcher_yields_all_steps_in_order():
    s = PatchSampler([case()], (8, 8, 4), 2, seed=0)
    f = Prefetcher(s, 3, 9)
    steps = [step for step, _ in f]
    f.close()
    assert steps == list(range(3, 9))


def test_tiles_cover_and_weights():
    assert tile_starts(10, 10, 0.5) == [0]
    t = tile_starts(37, 16, 0.5)
    assert t[0] == 0 and t[-1] == 21 and all(b - a <= 8 for a, b in zip(t, t[1:]))
    w = gaussian_importance((9, 9))
    assert w.max() == 1.0 and w[4, 4] == 1.0 and w.min() > 0


def onehot_model(k):
    """A 'model' whose probabilities are the one-hot of round(image): tiling must reproduce it exactly."""
    def predict(x):
        idx = np.clip(np.rint(x[..., 0]), 0, k - 1).astype(int)
        return np.eye(k, dtype=np.float32)[idx]
    return predict


@pytest.mark.parametrize("mirror", [(), (0, 2)])
def test_sliding_window_reproduces_pointwise_model(mirror):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 3, (19, 13, 9)).astype(np.float32)
    probs = sliding_window_predict(onehot_model(3), img, (8, 8, 8), 3, overlap=0.5, batch_size=3, mirror_axes=mirror)
    assert probs.shape == (19, 13, 9, 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probs.argmax(-1), img.astype(int))


def test_slicewise_reproduces_pointwise_model():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 4, (11, 5, 17)).astype(np.float32)
    probs = slicewise_predict(onehot_model(4), img, 1, (8, 8), 4, batch_size=4, mirror_axes=(1,))
    assert probs.shape == (11, 5, 17, 4)
    np.testing.assert_array_equal(probs.argmax(-1), img.astype(int))


def test_fixed_batch_shape():
    shapes = []

    def predict(x):
        shapes.append(x.shape)
        return np.ones((*x.shape[:-1], 2), np.float32) / 2

    sliding_window_predict(predict, np.zeros((20, 20, 20), np.float32), (8, 8, 8), 2, batch_size=4)
    assert len(set(shapes)) == 1


def test_context_slices_are_neighbours_with_edges_replicated():
    """2.5D: channel j of a sample is slice s - K//2 + j (clipped into the volume); the label is slice s's."""
    shape = (12, 10, 5)
    img = np.broadcast_to(np.arange(5, dtype=np.float32), shape).copy()  # voxel value = its slice index (axis 2)
    lbl = np.zeros(shape, np.uint8)
    lbl[..., 0] = 1  # a structure only on the first slice: foreground samples sit on slice 0
    c = Preprocessed("c", img, lbl, ((0, 1),) * 3, shape, (1, 1, 1))
    s = PatchSampler([c], (12, 10), 4, seed=3, spatial_dims=2, slice_axis=2, context=3, fg_fraction=1.0)
    images, labels = s.batch(0)
    assert images.shape == (4, 12, 10, 3) and labels.shape == (4, 12, 10)
    for x, y in zip(images, labels):
        assert y.all()  # the centre slice (0) is the labelled one
        np.testing.assert_array_equal(x[0, 0], [0.0, 0.0, 1.0])  # slice -1 replicated from slice 0
    plain = PatchSampler([c], (12, 10), 4, seed=3, spatial_dims=2, slice_axis=2, fg_fraction=1.0)
    np.testing.assert_array_equal(plain.batch(0)[0][..., 0], images[..., 1])  # K=1 is the centre channel
    with pytest.raises(Exception, match="odd"):
        PatchSampler([c], (12, 10), 4, seed=3, spatial_dims=2, context=2)


def test_slicewise_predict_with_context_sees_the_neighbours():
    """A model that returns its K input channels as class scores: the probabilities show which slices it saw."""
    image = np.broadcast_to(np.arange(4, dtype=np.float32), (6, 5, 4)).copy()  # value = slice index (axis 2)
    seen = []

    def predict(x):
        seen.append(x.shape)
        return x  # [B, u, v, 3] read as 3 "classes"

    probs = slicewise_predict(predict, image, 2, (6, 5), 3, overlap=0.0, batch_size=2, context=3)
    assert all(s[-1] == 3 for s in seen) and probs.shape == (6, 5, 4, 3)
    for z in range(4):
        np.testing.assert_allclose(probs[0, 0, z], [max(z - 1, 0), z, min(z + 1, 3)])


@pytest.mark.parametrize("dims, patch, context", [(3, (8, 8, 4), 1), (2, (8, 8), 1), (2, (8, 8), 3)])
def test_a_share_of_the_batch_is_the_same_samples(dims, patch, context):
    """Processes cutting their share (part=(lo, hi)) get exactly the samples of the whole batch."""
    s = PatchSampler([case(), case(seed=1)], patch, 6, seed=2, spatial_dims=dims, context=context)
    full_img, full_lbl = s.batch(3)
    parts = [s.batch(3, part=(lo, lo + 2)) for lo in (0, 2, 4)]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), full_img)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), full_lbl)
