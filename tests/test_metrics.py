"""Tests for heartjax.eval.metrics and heartjax.eval.surface: golden hand-computed tables and brute-force references."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage, stats

from heartjax.common.errors import HeartjaxError
from heartjax.eval.metrics import add_counts, case_metrics, confusion_counts, paired_test, summarize
from heartjax.eval.surface import directed_distances, mask_edges, surface_metrics

# ---------------------------------------------------------------------------------------------------------------
# Golden table. Row-major voxels of the 3 x 4 map below (t = target, p = pred):
#   (0,0) t0 p0  (0,1) t0 p1  (0,2) t1 p1  (0,3) t1 p1
#   (1,0) t0 p0  (1,1) t1 p1  (1,2) t1 p2  (1,3) t2 p2
#   (2,0) t0 p0  (2,1) t0 p0  (2,2) t2 p2  (2,3) t2 p3
# class 0: tp 4, fp 0, fn 1 (1 voxel (0,1) of background predicted as 1)
# class 1: tp 3 ((0,2),(0,3),(1,1)), fp 1 ((0,1)), fn 1 ((1,2))  -> Dice 6/8 = 0.75, IoU 3/5
# class 2: tp 2 ((1,3),(2,2)), fp 1 ((1,2)), fn 1 ((2,3))      -> Dice 4/6, IoU 2/4
# class 3: absent from truth, predicted at (2,3): tp 0 fp 1 fn 0 -> Dice 0, IoU 0
# class 4: absent from both                                    -> NaN
# correct = 4 + 3 + 2 = 9 of 12; foreground voxels 7, of which 5 correct.
# whole heart: pred fg 8 voxels, truth fg 7, all truth fg predicted fg -> tp 7, fp 1, fn 0 -> Dice 14/15.
TARGET = np.array([[0, 0, 1, 1], [0, 1, 1, 2], [0, 0, 2, 2]], np.int32)
PRED = np.array([[0, 1, 1, 1], [0, 1, 2, 2], [0, 0, 2, 3]], np.int32)
NAMES = ("a", "b", "c", "d")


def _np(counts):
    return {k: np.asarray(v) for k, v in counts.items()}


def test_golden_counts_table():
    c = _np(confusion_counts(jnp.asarray(PRED), jnp.asarray(TARGET), 5))
    np.testing.assert_array_equal(c["tp"], [4, 3, 2, 0, 0])
    np.testing.assert_array_equal(c["fp"], [0, 1, 1, 1, 0])
    np.testing.assert_array_equal(c["fn"], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(c["wh"], [7, 1, 0])
    assert (int(c["correct"]), int(c["n"]), int(c["fg_correct"]), int(c["fg_n"])) == (9, 12, 5, 7)
    for key in ("tp", "fp", "fn", "wh", "correct", "n", "fg_correct", "fg_n"):
        assert c[key].dtype == np.int32, key
    assert c["tp"].shape == (5,) and c["wh"].shape == (3,) and c["n"].shape == ()


def test_golden_case_metrics_table():
    m = case_metrics(_np(confusion_counts(jnp.asarray(PRED), jnp.asarray(TARGET), 5)), NAMES)
    assert m["dice"]["a"] == pytest.approx(0.75)
    assert m["dice"]["b"] == pytest.approx(2 / 3)
    assert m["dice"]["c"] == 0.0  # predicted but absent in truth
    assert math.isnan(m["dice"]["d"])  # absent from both
    assert m["iou"]["a"] == pytest.approx(0.6)
    assert m["iou"]["b"] == pytest.approx(0.5)
    assert m["iou"]["c"] == 0.0 and math.isnan(m["iou"]["d"])
    assert m["accuracy"] == pytest.approx(9 / 12)
    assert m["fg_accuracy"] == pytest.approx(5 / 7)
    assert m["whole_heart_dice"] == pytest.approx(14 / 15)
    assert m["mean_dice"] == pytest.approx((0.75 + 2 / 3 + 0.0) / 3)  # NaN skipped, background excluded
    assert m["mean_iou"] == pytest.approx((0.6 + 0.5 + 0.0) / 3)


def test_whole_heart_dice_ignores_confusion_between_structures():
    # Structures 1 and 2 swapped: each Dice 0, but the union of the heart is exact.
    target = np.array([0, 1, 1, 2, 2, 0], np.uint8)  # uint8, as LabelScheme.encode returns
    pred = np.array([0, 2, 2, 1, 1, 0], np.uint8)
    m = case_metrics(confusion_counts(pred, target, 3), ["x", "y"])
    assert m["dice"] == {"x": 0.0, "y": 0.0}
    assert m["whole_heart_dice"] == 1.0
    assert m["accuracy"] == pytest.approx(2 / 6)
    assert m["fg_accuracy"] == 0.0
    assert m["mean_dice"] == 0.0


def test_empty_case_is_nan_everywhere_but_accuracy():
    zeros = np.zeros((4, 4), np.int32)
    m = case_metrics(confusion_counts(zeros, zeros, 3), ["x", "y"])
    assert all(math.isnan(v) for v in m["dice"].values())
    assert math.isnan(m["mean_dice"]) and math.isnan(m["whole_heart_dice"]) and math.isnan(m["fg_accuracy"])
    assert m["accuracy"] == 1.0


def _reference_counts(pred, target, k1):
    """Naive numpy counts, one class at a time."""
    tp = [np.sum((pred == c) & (target == c)) for c in range(k1)]
    fp = [np.sum((pred == c) & (target != c)) for c in range(k1)]
    fn = [np.sum((pred != c) & (target == c)) for c in range(k1)]
    wh = [np.sum((pred > 0) & (target > 0)), np.sum((pred > 0) & (target == 0)), np.sum((pred == 0) & (target > 0))]
    return {"tp": tp, "fp": fp, "fn": fn, "wh": wh, "correct": np.sum(pred == target), "n": pred.size,
            "fg_correct": np.sum((pred == target) & (target > 0)), "fg_n": np.sum(target > 0)}


def test_counts_match_naive_reference_and_volume_equals_sum_of_slices():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 6, (6, 6, 6)).astype(np.int32)  # a cube: every slice has one shape, one compile
    pred = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, 6, target.shape)).astype(np.int32)
    volume = _np(confusion_counts(pred, target, 6))
    for key, ref in _reference_counts(pred, target, 6).items():
        np.testing.assert_array_equal(volume[key], ref, err_msg=key)
    for axis in range(3):
        slices = [_np(confusion_counts(np.take(pred, i, axis), np.take(target, i, axis), 6))
                  for i in range(pred.shape[axis])]
        summed = _np(functools.reduce(add_counts, slices))
        for key in volume:
            np.testing.assert_array_equal(summed[key], volume[key], err_msg=f"{key} axis {axis}")
    # A batch of 2D slices [B, X, Y] (Z moved first) counts like the volume it came from.
    batch = _np(confusion_counts(np.moveaxis(pred, 2, 0), np.moveaxis(target, 2, 0), 6))
    for key in volume:
        np.testing.assert_array_equal(batch[key], volume[key])


def test_add_counts_works_on_numpy_and_rejects_mismatched_keys():
    a = _np(confusion_counts(PRED, TARGET, 5))
    doubled = add_counts(a, a)
    np.testing.assert_array_equal(doubled["tp"], 2 * a["tp"])
    assert int(doubled["n"]) == 24
    with pytest.raises(HeartjaxError):
        add_counts(a, {"tp": a["tp"]})


def test_jit_equals_eager_and_compiles_once():
    rng = np.random.default_rng(1)
    traces = []

    def counts(p, t):
        traces.append(None)  # runs only while tracing
        return confusion_counts(p, t, 4)

    jitted = jax.jit(counts)  # confusion_counts is jitted itself; it must also nest inside a caller's jit
    t = jnp.asarray(rng.integers(0, 4, (3, 5, 6)), jnp.int32)
    p = jnp.asarray(rng.integers(0, 4, (3, 5, 6)), jnp.int32)
    with jax.disable_jit():
        eager = _np(confusion_counts(p, t, 4))
    fast = _np(jitted(p, t))
    for key in eager:
        np.testing.assert_array_equal(fast[key], eager[key], err_msg=key)
        assert fast[key].dtype == eager[key].dtype
    jitted(jnp.roll(p, 1), t)  # new values, same shapes: no second trace
    assert len(traces) == 1


def test_out_of_range_values_count_in_no_class():
    target = np.array([0, 1, 2, 2], np.int32)
    pred = np.array([0, 1, 7, 2], np.int32)  # 7 is not a class of num_classes=3
    c = _np(confusion_counts(pred, target, 3))
    np.testing.assert_array_equal(c["tp"], [1, 1, 1])
    np.testing.assert_array_equal(c["fn"], [0, 0, 0])  # the stray voxel is dropped, not charged to class 2
    assert int(c["n"]) == 4 and int(c["correct"]) == 3


def test_case_metrics_rejects_wrong_number_of_names():
    with pytest.raises(HeartjaxError, match="names"):
        case_metrics(confusion_counts(PRED, TARGET, 5), ["background", *NAMES])


# ---------------------------------------------------------------------------------------------------------------
# Surface metrics against a brute-force reference.


def _reference_edges(mask):
    """Surface by definition: a foreground voxel with a face neighbour that is background or outside the image."""
    edges = np.zeros_like(mask)
    for index in zip(*np.nonzero(mask)):
        for axis in range(mask.ndim):
            for step in (-1, 1):
                n = list(index)
                n[axis] += step
                if not 0 <= n[axis] < mask.shape[axis] or not mask[tuple(n)]:
                    edges[index] = True
    return edges


def _reference_surface(pred, target, spacing, k1):
    """HD95 and ASSD with explicit surface points and all pairwise distances in mm."""
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape, spacing)))
    hd95, assd = [], []
    for c in range(1, k1):
        p, t = pred == c, target == c
        if not p.any() and not t.any():
            hd95.append(math.nan), assd.append(math.nan)
            continue
        if not p.any() or not t.any():
            hd95.append(diagonal), assd.append(diagonal)
            continue
        pts_p = np.argwhere(_reference_edges(p)) * np.asarray(spacing)
        pts_t = np.argwhere(_reference_edges(t)) * np.asarray(spacing)
        pair = np.sqrt(((pts_p[:, None, :] - pts_t[None, :, :]) ** 2).sum(-1))
        d_pt, d_tp = pair.min(axis=1), pair.min(axis=0)
        hd95.append(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))
        assd.append(np.concatenate([d_pt, d_tp]).mean())
    return np.array(hd95), np.array(assd)


def _random_labels(rng, shape, k1):
    """Blobby random label map: smoothed noise per class, argmax, with background where all are weak."""
    fields = np.stack([ndimage.gaussian_filter(rng.random(shape), 1.0) for _ in range(k1)])
    labels = np.argmax(fields, axis=0).astype(np.int32)
    return labels


@pytest.mark.parametrize("shape,spacing,seed", [
    ((12, 10), (0.7, 1.9), 0),
    ((13, 9), (2.5, 0.4), 1),
    ((9, 8, 7), (0.8, 1.1, 2.5), 2),
    ((8, 10, 6), (1.5, 0.6, 3.0), 3),
])
def test_surface_metrics_match_brute_force(shape, spacing, seed):
    rng = np.random.default_rng(seed)
    target = _random_labels(rng, shape, 4)
    pred = np.where(rng.random(shape) < 0.8, target, _random_labels(rng, shape, 4)).astype(np.int32)
    got = surface_metrics(pred, target, spacing, 4)
    ref_hd95, ref_assd = _reference_surface(pred, target, spacing, 4)
    assert np.all(np.isfinite(ref_hd95)), "the random maps should hold every class"
    np.testing.assert_allclose(got["hd95"], ref_hd95, rtol=1e-6)
    np.testing.assert_allclose(got["assd"], ref_assd, rtol=1e-6)
    assert got["hd95"].shape == (3,) and got["assd"].dtype == np.float64


@pytest.mark.parametrize("shape", [(11, 9), (7, 6, 5)])
def test_edges_match_definition_and_monai_formula(shape):
    rng = np.random.default_rng(4)
    mask = rng.random(shape) < 0.6  # touches the border everywhere
    ref = _reference_edges(mask)
    np.testing.assert_array_equal(mask_edges(mask), ref)
    # MONAI: mask XOR scipy binary_erosion with the default cross and border_value 0.
    np.testing.assert_array_equal(mask ^ ndimage.binary_erosion(mask), ref)


def test_directed_distances_equal_the_distance_transform_route():
    rng = np.random.default_rng(5)
    a, b = _reference_edges(rng.random((9, 8, 7)) < 0.5), _reference_edges(rng.random((9, 8, 7)) < 0.3)
    spacing = (0.8, 1.3, 2.7)
    via_edt = ndimage.distance_transform_edt(~b, sampling=spacing)[a]  # what MONAI does
    np.testing.assert_allclose(directed_distances(a, b, spacing), via_edt, rtol=1e-12)


def test_surface_hand_computed_and_assd_is_pooled_mean():
    # Truth: a 3x3 block (8 surface voxels around a centre); prediction: the centre voxel alone. Spacing 1.
    target = np.zeros((5, 5), np.int32)
    target[1:4, 1:4] = 1
    pred = np.zeros((5, 5), np.int32)
    pred[2, 2] = 1
    got = surface_metrics(pred, target, (1.0, 1.0), 2)
    # pred -> truth: [1]; truth -> pred: four 1s and four sqrt(2)s. 95th percentile of the latter is sqrt(2).
    assert got["hd95"][0] == pytest.approx(math.sqrt(2))
    pooled = (1 + 4 * 1 + 4 * math.sqrt(2)) / 9  # MONAI concatenates both directions
    assert got["assd"][0] == pytest.approx(pooled)
    assert abs(pooled - (1 + (4 + 4 * math.sqrt(2)) / 8) / 2) > 0.01  # differs from the mean of means


def test_surface_single_voxels_with_anisotropic_spacing():
    target, pred = np.zeros((4, 7), np.int32), np.zeros((4, 7), np.int32)
    target[2, 2], pred[2, 5] = 1, 1
    got = surface_metrics(pred, target, (1.0, 0.5), 2)
    assert got["hd95"][0] == pytest.approx(1.5) and got["assd"][0] == pytest.approx(1.5)


def test_missed_and_spurious_structures_get_the_diagonal_and_empty_gets_nan():
    shape, spacing = (6, 5, 4), (1.0, 2.0, 3.0)
    target = np.zeros(shape, np.int32)
    target[1:3, 1:3, 1:3] = 1
    target[3:5, 2:4, 0:2] = 2  # class 2 missed by the prediction
    pred = target.copy()
    pred[pred == 2] = 0
    pred[0, 0, 3] = 3  # class 3 predicted, absent in truth
    got = surface_metrics(pred, target, spacing, 5)  # class 4 absent from both
    diagonal = math.sqrt(6**2 + 10**2 + 12**2)
    np.testing.assert_allclose(got["hd95"][:3], [0.0, diagonal, diagonal])
    np.testing.assert_allclose(got["assd"][:3], [0.0, diagonal, diagonal])
    assert math.isnan(got["hd95"][3]) and math.isnan(got["assd"][3])


def test_surface_metrics_errors_name_the_problem():
    a = np.zeros((4, 4, 4), np.int32)
    with pytest.raises(HeartjaxError, match="shape"):
        surface_metrics(a, a[:3], (1, 1, 1), 2)
    with pytest.raises(HeartjaxError, match="spacing"):
        surface_metrics(a, a, (1, 1), 2)
    with pytest.raises(HeartjaxError, match="spacing"):
        surface_metrics(a, a, (1, 0, 1), 2)
    b = a.copy()
    b[0, 0, 0] = 5
    with pytest.raises(HeartjaxError, match="num_classes"):
        surface_metrics(b, a, (1, 1, 1), 3)
    with pytest.raises(HeartjaxError, match="integer"):
        surface_metrics(a.astype(np.float32), a, (1, 1, 1), 2)


# ---------------------------------------------------------------------------------------------------------------
# Summaries and paired tests.


def test_summarize_hand_checked():
    nan = math.nan
    per_case = [
        {"case": "p1", "dice": {"LV": 0.8, "RV": nan}, "accuracy": 0.9, "hd95": np.array([1.0, 2.0])},
        {"case": "p2", "dice": {"LV": 0.6, "RV": 0.5}, "accuracy": 0.7, "hd95": np.array([3.0, 4.0])},
        {"case": "p3", "dice": {"LV": 1.0, "RV": 0.7}, "accuracy": 0.8, "hd95": np.array([5.0, nan])},
    ]
    s = summarize(per_case, ["LV", "RV"])
    assert "case" not in s
    lv = s["dice"]["LV"]
    assert lv["mean"] == pytest.approx(0.8) and lv["sd"] == pytest.approx(0.2)  # sqrt((0 + .04 + .04) / 2)
    assert lv["median"] == pytest.approx(0.8) and lv["n"] == 3
    rv = s["dice"]["RV"]
    assert rv["mean"] == pytest.approx(0.6) and rv["sd"] == pytest.approx(math.sqrt(0.02)) and rv["n"] == 2
    acc = s["accuracy"]
    assert acc["mean"] == pytest.approx(0.8) and acc["sd"] == pytest.approx(0.1) and acc["median"] == pytest.approx(0.8)
    assert s["hd95"]["LV"]["mean"] == pytest.approx(3.0) and s["hd95"]["LV"]["sd"] == pytest.approx(2.0)
    assert s["hd95"]["RV"] == {"mean": pytest.approx(3.0), "sd": pytest.approx(math.sqrt(2)), "median": 3.0, "n": 2}


def test_summarize_single_case_and_bad_names():
    s = summarize([{"mean_dice": 0.5, "assd": [1.0, 2.0]}], ["x", "y"])
    assert s["mean_dice"]["mean"] == 0.5 and math.isnan(s["mean_dice"]["sd"]) and s["mean_dice"]["n"] == 1
    all_nan = summarize([{"d": math.nan}, {"d": math.nan}], [])
    assert all_nan["d"]["n"] == 0 and math.isnan(all_nan["d"]["mean"])
    with pytest.raises(HeartjaxError, match="structures"):
        summarize([{"assd": [1.0, 2.0, 3.0]}], ["x", "y"])
    with pytest.raises(HeartjaxError):
        summarize([], ["x"])


def test_paired_test_hand_checked():
    a = [1.0, 2.0, 3.0, 4.0, 5.0, math.nan]
    b = [1.5, 2.3, 3.1, 4.9, 5.2, 7.0]  # last pair dropped; diffs 0.5, 0.3, 0.1, 0.9, 0.2
    r = paired_test(a, b)
    assert r["n"] == 5
    assert r["mean_diff"] == pytest.approx(0.4)
    assert r["sd_diff"] == pytest.approx(math.sqrt((0.01 + 0.01 + 0.09 + 0.25 + 0.04) / 4))
    # Exact signed-rank test, all 5 differences positive: two-sided p = 2 / 2^5.
    assert r["p_wilcoxon"] == pytest.approx(0.0625)
    diffs = np.array([0.5, 0.3, 0.1, 0.9, 0.2])
    t = diffs.mean() / (diffs.std(ddof=1) / math.sqrt(5))
    assert r["p_ttest"] == pytest.approx(2 * stats.t.sf(t, df=4))
    assert r["p_ttest"] == pytest.approx(stats.ttest_rel(b[:5], a[:5]).pvalue)


def test_paired_test_degenerate_inputs():
    same = paired_test([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same["n"] == 3 and same["mean_diff"] == 0.0
    assert math.isnan(same["p_wilcoxon"]) and math.isnan(same["p_ttest"])
    one = paired_test([0.5, math.nan], [0.7, 0.1])
    assert one["n"] == 1 and one["mean_diff"] == pytest.approx(0.2)
    assert math.isnan(one["sd_diff"]) and math.isnan(one["p_wilcoxon"]) and math.isnan(one["p_ttest"])
    with pytest.raises(HeartjaxError):
        paired_test([1.0, 2.0], [1.0])
