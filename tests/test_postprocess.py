"""Connected-component post-processing on hand-built label maps, and the per-structure rule that decides on it."""

import itertools
import json

import numpy as np
from scipy import ndimage
import pytest

from heartjax.eval.postprocess import apply, decide, keep_largest_component, keep_main_component

SPACING = (1.0, 1.0, 2.0)


def cube(volume, lo, size, value):
    """Set a size^3 cube with its low corner at lo to value (in place) and return the volume."""
    volume[tuple(slice(a, a + size) for a in lo)] = value
    return volume


def test_keeps_the_larger_of_two_blobs():
    labels = np.zeros((12, 12, 12), np.uint8)
    cube(labels, (1, 1, 1), 3, 1)  # 27 voxels
    cube(labels, (8, 8, 8), 2, 1)  # 8 voxels, far away
    out = keep_largest_component(labels)
    expected = cube(np.zeros_like(labels), (1, 1, 1), 3, 1)
    np.testing.assert_array_equal(out, expected)


def test_smaller_blob_first_in_scan_order_is_the_one_removed():
    labels = np.zeros((12, 12, 12), np.uint8)
    cube(labels, (0, 0, 0), 2, 3)  # 8 voxels, labelled first by the scan
    cube(labels, (6, 6, 6), 4, 3)  # 64 voxels
    out = keep_largest_component(labels)
    assert int((out == 3).sum()) == 64 and not out[:2, :2, :2].any()


def test_other_classes_untouched():
    labels = np.zeros((14, 14, 14), np.uint8)
    cube(labels, (1, 1, 1), 3, 1)
    cube(labels, (10, 10, 10), 2, 1)  # stray class-1 blob
    cube(labels, (1, 9, 1), 3, 2)
    cube(labels, (9, 1, 9), 2, 2)  # a second class-2 blob
    cube(labels, (6, 6, 6), 1, 2)  # and a third, one voxel
    only_one = keep_largest_component(labels, classes=[1])
    assert int((only_one == 1).sum()) == 27
    np.testing.assert_array_equal(only_one == 2, labels == 2)  # class 2 keeps all three blobs
    every = keep_largest_component(labels)  # default: every foreground class
    assert int((every == 1).sum()) == 27 and int((every == 2).sum()) == 27
    np.testing.assert_array_equal(every == 2, cube(np.zeros_like(labels), (1, 9, 1), 3, 1) == 1)
    # an absent class in `classes` is skipped
    np.testing.assert_array_equal(keep_largest_component(labels, classes=[5]), labels)


def test_touching_blobs_of_different_classes_do_not_merge():
    labels = np.zeros((10, 10, 10), np.uint8)
    cube(labels, (0, 0, 0), 3, 1)
    cube(labels, (3, 0, 0), 3, 2)  # touches class 1 face to face
    np.testing.assert_array_equal(keep_largest_component(labels), labels)


def test_26_connectivity_diagonal_neighbours_are_one_component():
    labels = np.zeros((10, 10, 10), np.uint8)
    for i in range(3):  # a chain touching only at corners: one component of 3 under 26-connectivity
        labels[i, i, i] = 1
    labels[7, 7, 7] = labels[7, 7, 8] = 1  # a face-connected pair: 2 voxels
    out = keep_largest_component(labels)
    assert all(out[i, i, i] == 1 for i in range(3))
    assert out[7, 7, 7] == 0 and out[7, 7, 8] == 0  # under 6-connectivity the pair would have won


def test_2d_input_uses_8_connectivity():
    labels = np.zeros((8, 8), np.int32)
    labels[0, 0] = labels[1, 1] = labels[2, 2] = 4  # diagonal chain of 3
    labels[6, 5] = labels[6, 6] = 4  # a pair
    labels[4, 0] = 2  # a single voxel of another class
    out = keep_largest_component(labels)
    assert out.shape == (8, 8)
    expected = np.zeros_like(labels)
    expected[0, 0] = expected[1, 1] = expected[2, 2] = 4
    expected[4, 0] = 2
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
def test_dtype_preserved_and_input_not_modified(dtype):
    labels = np.zeros((9, 9, 9), dtype)
    cube(labels, (0, 0, 0), 3, 1)
    cube(labels, (6, 6, 6), 2, 1)
    cube(labels, (0, 6, 0), 2, 7)
    before = labels.copy()
    out = keep_largest_component(labels)
    assert out.dtype == dtype and out is not labels
    np.testing.assert_array_equal(labels, before)  # the input is left alone
    assert int((out == 1).sum()) == 27 and int((out == 7).sum()) == 8


def test_single_component_and_empty_maps_are_unchanged():
    labels = cube(np.zeros((6, 6, 6), np.uint8), (1, 1, 1), 3, 2)
    np.testing.assert_array_equal(keep_largest_component(labels), labels)
    empty = np.zeros((4, 4, 4), np.uint8)
    np.testing.assert_array_equal(keep_largest_component(empty), empty)


# ---- keep_main_component: the heart's component, never a structure removed ----

def test_main_component_prefers_the_one_touching_the_heart_over_a_larger_stray():
    labels = np.zeros((20, 20, 20), np.uint8)
    cube(labels, (2, 2, 2), 4, 1)        # structure 1 (say the LV)
    cube(labels, (6, 2, 2), 3, 2)        # structure 2 touching it: 27 voxels, the true one
    cube(labels, (12, 12, 12), 5, 2)     # a larger stray blob of 2 far from the heart: 125 voxels
    out = keep_main_component(labels)
    assert (out == 2).sum() == 27 and out[7, 3, 3] == 2 and out[14, 14, 14] == 0
    assert (keep_largest_component(labels) == 2).sum() == 125  # the plain rule keeps the wrong one
    np.testing.assert_array_equal(out == 1, labels == 1)


def test_main_component_never_removes_a_structure():
    labels = np.zeros((20, 20, 20), np.uint8)
    cube(labels, (1, 1, 1), 2, 3)        # two pieces of 3, neither touching anything: the largest stays
    cube(labels, (10, 10, 10), 3, 3)
    out = keep_main_component(labels)
    assert (out == 3).sum() == 27
    for seed in range(5):  # random maps: every class present before is present after
        rnd = np.random.default_rng(seed).integers(0, 4, (8, 8, 8)) * (np.random.default_rng(seed + 9).random(
            (8, 8, 8)) < 0.2)
        assert set(np.unique(keep_main_component(rnd))) == set(np.unique(rnd))


def test_apply_replays_new_and_old_decisions():
    labels = np.zeros((16, 16, 16), np.uint8)
    cube(labels, (2, 2, 2), 4, 1)
    cube(labels, (12, 12, 12), 2, 1)
    cube(labels, (6, 2, 2), 2, 2)
    cube(labels, (12, 2, 12), 3, 2)
    only_2 = apply(labels, {"classes": [2], "per_structure": {"A": False, "B": True}})
    assert (only_2 == 1).sum() == 72 and (only_2 == 2).sum() == 8  # A untouched; B's heart piece kept
    np.testing.assert_array_equal(apply(labels, {"classes": []}), labels)
    np.testing.assert_array_equal(apply(labels, {"largest_component": True}), keep_largest_component(labels))
    np.testing.assert_array_equal(apply(labels, {"largest_component": False}), labels)
    np.testing.assert_array_equal(apply(labels, None), labels)


# ---- decide: per structure, on validation ----

def truth_volume():
    """Structure A (index 1): a 4^3 cube; structure B (index 2): a 3^3 cube, far apart."""
    truth = np.zeros((16, 16, 16), np.uint8)
    cube(truth, (2, 2, 2), 4, 1)
    cube(truth, (10, 10, 10), 3, 2)
    return truth


def test_decide_keeps_when_removing_a_stray_blob_helps():
    truth = truth_volume()
    stray = cube(truth.copy(), (12, 2, 2), 2, 1)  # 8 false-positive A voxels far from the real A
    cases = [(stray, truth, SPACING, "c1"), (truth.copy(), truth, SPACING, "c2")]
    result = decide(cases, ["A", "B"])
    # c1 before: A has tp 64, fp 8, fn 0 -> 2*64 / (2*64 + 8) = 16/17; c2 is perfect. After: both perfect.
    assert result["per_structure"] == {"A": True, "B": False} and result["classes"] == [1]
    assert result["largest_component"] is True
    assert result["dice_before"]["A"] == pytest.approx((16 / 17 + 1) / 2, abs=1e-12)
    assert result["dice_before"]["B"] == pytest.approx(1.0)
    assert result["dice_after"] == pytest.approx({"A": 1.0, "B": 1.0})
    json.dumps(result, allow_nan=False)  # JSON-ready


def test_decide_refuses_when_a_true_second_component_is_removed():
    truth = cube(truth_volume(), (12, 2, 2), 2, 1)  # A really has two parts: 64 + 8 voxels
    result = decide([(truth.copy(), truth, SPACING, "c1")], ["A", "B"])
    assert result["per_structure"] == {"A": False, "B": False} and result["largest_component"] is False
    assert result["dice_after"] == pytest.approx({"A": 1.0, "B": 1.0})  # as applied: nothing changes


def test_decide_per_structure_keeps_where_it_helps_only():
    truth = cube(truth_volume(), (12, 2, 2), 2, 1)  # A: 64 + 8 true voxels
    pred = cube(truth.copy(), (2, 12, 12), 2, 2)  # B: 27 true voxels plus an 8-voxel stray blob
    result = decide([(pred, truth, SPACING, "c1")], ["A", "B"])
    # B before: 2*27 / (2*27 + 8) = 27/31, after 1 -> kept; A would lose its true small part -> not kept
    assert result["per_structure"] == {"A": False, "B": True} and result["classes"] == [2]
    assert result["dice_before"] == pytest.approx({"A": 1.0, "B": 27 / 31}, abs=1e-12)
    assert result["dice_after"] == pytest.approx({"A": 1.0, "B": 1.0}, abs=1e-12)


def test_decide_skips_a_structure_absent_everywhere():
    truth = truth_volume()
    stray = cube(truth.copy(), (12, 2, 2), 2, 1)
    result = decide([(stray, truth, SPACING, "c1")], ["A", "B", "C"])  # C is in neither map
    assert result["dice_before"]["C"] is None and result["dice_after"]["C"] is None
    assert result["dice_before"]["A"] == pytest.approx(16 / 17, abs=1e-12)
    assert result["per_structure"]["A"] is True and result["per_structure"]["C"] is False


# ---- keep_main_component decides jointly: a false second "heart" cannot take a structure ----

RV, MYO, LV = 1, 2, 3  # the ACDC labels


def two_hearts(false_myo_size):
    """A true heart (RV, MYO, LV: 4^3 cubes, each touching the LV) far from a partial false one in the corner the
    scan reaches first (MYO false_myo_size^3, LV 6^3, no RV) whose LV is larger than the true LV and whose voxels
    outnumber the true heart's. Returns (labels, the true heart alone)."""
    true = np.zeros((40, 40, 40), np.uint8)
    cube(true, (20, 24, 24), 4, RV)
    cube(true, (24, 24, 24), 4, LV)
    cube(true, (28, 24, 24), 4, MYO)
    labels = cube(true.copy(), (1, 1, 1), false_myo_size, MYO)
    cube(labels, (1 + false_myo_size, 1, 1), 6, LV)
    assert (labels != 0).sum() - (true != 0).sum() > (true != 0).sum()  # the false heart is the bigger one
    return labels, true


@pytest.mark.parametrize("false_myo_size", [4, 5], ids=["myo_same_size", "myo_larger"])
def test_two_hearts_the_true_one_is_kept_for_every_structure(false_myo_size):
    labels, true = two_hearts(false_myo_size)
    np.testing.assert_array_equal(keep_main_component(labels), true)
    np.testing.assert_array_equal(apply(labels, {"classes": [RV, MYO, LV]}), true)
    np.testing.assert_array_equal(keep_main_component(labels, [MYO]), np.where(labels == MYO, true, labels))
    assert (keep_largest_component(labels) == LV)[1 + false_myo_size, 1, 1]  # the plain rule keeps the false LV
    plane = labels[:, :, 26]  # the same in 2D (8-connectivity)
    np.testing.assert_array_equal(keep_main_component(plane), true[:, :, 26])


def test_heart_region_tie_breaks_structures_anchors_centre_voxels_then_scan_order():
    def partial(labels, corner, myo=3, lv=3, lv_label=LV):
        cube(labels, corner, myo, MYO)
        return cube(labels, (corner[0] + myo, corner[1], corner[2]), lv, lv_label)

    def heart(labels, centre, myo=3):  # a MYO cube with a 3-voxel LV cube on either side, centred on `centre`
        x, y, z = centre
        cube(labels, (x - myo // 2,) * 1 + (y - myo // 2, z - myo // 2), myo, MYO)
        cube(labels, (x - myo // 2 - 3, y - 1, z - 1), 3, LV)
        return cube(labels, (x + myo // 2 + 1, y - 1, z - 1), 3, LV)

    # mirror images about the field's centre (equally far from it), equal voxels: the region first in scan order
    labels = heart(heart(np.zeros((40, 40, 40), np.uint8), (5, 5, 5)), (34, 34, 34))
    out = keep_main_component(labels)  # (the LV, found on both sides of its MYO, keeps one side)
    assert out[5, 5, 5] == MYO and (out[2, 5, 5] == LV) != (out[8, 5, 5] == LV) and not out[30:].any()
    out = keep_main_component(labels[::-1, ::-1, ::-1])[::-1, ::-1, ::-1]  # the other region comes first: kept
    assert out[34, 34, 34] == MYO and not out[:10].any()
    # equally far from the centre, more voxels (a 5-voxel MYO cube) win over scan order
    labels = heart(heart(np.zeros((40, 40, 40), np.uint8), (5, 5, 5)), (34, 34, 34), myo=5)
    out = keep_main_component(labels)
    assert (out == MYO).sum() == 125 and not out[:10].any()
    # nearer the centre wins over voxels: a weakly trained network's larger false "heart" off to the side
    labels = heart(heart(np.zeros((40, 40, 40), np.uint8), (20, 18, 19)), (34, 34, 34), myo=5)
    out = keep_main_component(labels)
    assert (out == MYO).sum() == 27 and out[20, 18, 19] == MYO and not out[30:].any()
    # an anchor (a structure with one component in the map: RV here) wins over voxels; the LV is found twice
    labels = partial(np.zeros((24, 24, 24), np.uint8), (1, 1, 1), myo=4, lv=4)  # 128 voxels: MYO, LV
    partial(labels, (14, 14, 14), lv_label=RV)  # 54 voxels: MYO, RV
    cube(labels, (20, 1, 20), 3, LV)  # a stray LV, not negligible: the LV is ambiguous
    out = keep_main_component(labels)
    assert (out == MYO).sum() == 27 and out[14, 14, 14] == MYO
    assert (out == LV).sum() == 64  # absent from the heart region and touching nothing kept: its largest
    # more structures win over anchors and voxels: a small full heart beats a big region with an anchored class 4
    labels = partial(np.zeros((24, 24, 24), np.uint8), (1, 1, 1), myo=5, lv=5, lv_label=4)  # MYO, 4 (anchor)
    partial(labels, (14, 14, 14))  # MYO, LV
    cube(labels, (14, 17, 14), 2, RV)  # and RV touching that MYO: three structures, none an anchor
    cube(labels, (20, 1, 20), 2, RV)
    cube(labels, (1, 20, 20), 2, LV)
    out = keep_main_component(labels)
    assert (out == MYO).sum() == 27 and out[14, 14, 14] == MYO
    assert (out == RV).sum() == 8 and out[14, 17, 14] == RV and (out == LV).sum() == 27
    assert (out == 4).sum() == 125  # a class with one component is left alone


def test_equal_components_inside_the_heart_keep_the_first_in_scan_order():
    labels = np.zeros((16, 16, 16), np.uint8)
    cube(labels, (6, 6, 6), 3, LV)
    cube(labels, (3, 6, 6), 3, MYO)  # two MYO pieces of 27 voxels, one on each side of the LV
    cube(labels, (9, 6, 6), 3, MYO)
    out = keep_main_component(labels)
    assert (out == MYO).sum() == 27 and out[3, 6, 6] == MYO and out[9, 6, 6] == 0
    out = keep_main_component(labels[::-1].copy())
    assert (out == MYO).sum() == 27 and out[15 - 11, 6, 6] == MYO and out[15 - 3, 6, 6] == 0


def test_a_kept_component_touches_another_kept_structure_when_one_can():
    # along x, one region: MYO 4^3 | LV slab 1x4x4 | RV 4^3 | LV 5^3 | MYO 3^3
    labels = np.zeros((20, 8, 8), np.uint8)
    cube(labels, (0, 0, 0), 4, MYO)
    labels[4, :4, :4] = LV
    cube(labels, (5, 0, 0), 4, RV)
    cube(labels, (9, 0, 0), 5, LV)
    cube(labels, (14, 0, 0), 3, MYO)
    out = keep_main_component(labels)
    assert (out == LV).sum() == 125 and not out[4].any()  # the LV slab goes, and with it the big MYO's only contact
    assert (out == MYO).sum() == 27 and out[14, 0, 0] == MYO  # so the MYO piece touching the kept LV is kept
    # a structure's choice does not depend on which others are post-processed: the LV slab stays, the MYO is the same
    only_myo = keep_main_component(labels, [MYO])
    np.testing.assert_array_equal(only_myo == MYO, out == MYO)
    np.testing.assert_array_equal(only_myo == LV, labels == LV)


def test_a_structure_apart_from_the_heart_is_not_swapped_for_stray_voxels_on_it():
    labels = two_hearts(4)[1]  # the true heart alone
    cube(labels, (4, 4, 4), 5, 4)  # a structure 4 (a vessel) apart from the heart: 125 voxels
    labels[23, 25, 25] = 4  # and one stray voxel of it on the heart, inside the RV
    out = keep_main_component(labels)
    assert (out == 4).sum() == 125 and out[23, 25, 25] == 0  # the stray voxel is negligible (< 0.1 x 125)
    out = keep_main_component(labels, min_fraction=0)  # every component a candidate: the one touching the heart
    assert (out == 4).sum() == 1 and out[23, 25, 25] == 4


def test_main_component_random_maps_keep_one_touching_component_per_structure():
    structure = np.ones((3, 3, 3), bool)
    for seed, fraction in itertools.product(range(8), (0.1, 0.0)):
        rng = np.random.default_rng(seed)
        labels = (rng.integers(1, 4, (12, 12, 12)) * (rng.random((12, 12, 12)) < 0.15)).astype(np.uint8)
        out = keep_main_component(labels, min_fraction=fraction)
        np.testing.assert_array_equal(out, keep_main_component(labels, min_fraction=fraction))  # deterministic
        assert set(np.unique(out)) == set(np.unique(labels))
        assert np.all((out == labels) | (out == 0))  # voxels are only ever removed
        for c in (int(c) for c in np.unique(labels) if c):
            alone = keep_main_component(labels, [c], min_fraction=fraction)  # the same choice, the others untouched
            np.testing.assert_array_equal(alone, np.where(labels == c, out, labels))
            comp, n = ndimage.label(labels == c, structure)
            kept = np.unique(comp[out == c])
            assert len(kept) == 1  # exactly one component of each structure
            sizes = np.bincount(comp.ravel())
            candidates = np.flatnonzero(sizes[1:] >= fraction * sizes[1:].max()) + 1
            assert kept[0] in candidates
            near = ndimage.binary_dilation((out != 0) & (out != c), structure)
            if np.intersect1d(np.unique(comp[near & (comp > 0)]), candidates).size:
                assert (near & (out == c)).any()  # it touches another kept structure when a candidate can


def test_postprocess_check_reports_the_worst_raw_to_post_change():
    from experiments.checks.postprocess_check import worst_change

    def rec(case, **dice):
        return {"case": case, "dice": dice}

    raw = [rec("p1", A=0.9, B=0.5, C=float("nan")), rec("p2", A=0.8, B=0.6, C=0.7), rec("p3", A=0.7, B=None, C=0.2)]
    post = [rec("p1", A=0.95, B=0.4, C=0.1), rec("p2", A=0.7, B=0.6, C=0.0), rec("p3", A=0.7, B=0.3, C=0.2)]
    w = worst_change(raw, post, ["A", "B", "C"])  # p2 C falls 0.7; pairs with a NaN or None are skipped
    assert (w["case"], w["structure"]) == ("p2", "C") and w["change"] == pytest.approx(-0.7)
    assert (w["raw"], w["post"]) == (0.7, 0.0)
    tie = worst_change([rec("p1", A=0.5, B=0.5), rec("p2", A=0.5, B=0.5)],
                       [rec("p1", A=0.5, B=0.4), rec("p2", A=0.4, B=0.5)], ["A", "B"])
    assert (tie["case"], tie["structure"]) == ("p1", "B")  # equal falls: the first case, then the first structure
    assert worst_change(raw, raw, ["A", "B", "C"])["change"] == 0.0
    assert worst_change([rec("p", A=None)], [rec("p", A=0.3)], ["A"]) is None


def test_postprocess_check_lists_a_structures_pieces_with_their_true_voxels():
    from experiments.checks.postprocess_check import components

    pred = np.zeros((10, 10, 10), np.int8)
    pred[1:4, 1:4, 1:4] = 1   # 27 voxels of class 1, touching class 2
    pred[4, 1:4, 1:4] = 2
    pred[7:9, 7:9, 7:9] = 1   # 8 voxels of class 1, alone
    reference = np.zeros_like(pred)
    reference[1:3, 1:4, 1:4] = 1  # 18 of the large piece's voxels are truly class 1
    reference[7:9, 7:9, 7:9] = 1  # the small piece is all class 1
    post = pred.copy()
    post[7:9, 7:9, 7:9] = 0
    got = components(pred, post, reference, 1, ["A", "B"])
    assert got == [{"voxels": 27, "true": 18, "kept": True, "touches": ["B"], "gap_mm": 0.0},
                   {"voxels": 8, "true": 8, "kept": False, "touches": [], "gap_mm": pytest.approx(np.sqrt(41))}]
    # its nearest voxel (7, 7, 7) and the heart's (4, 3, 3): 3, 4 and 4 voxels apart, the last axis 2 mm a voxel
    assert components(pred, post, reference, 1, ["A", "B"], (1.0, 1.0, 2.0))[1]["gap_mm"] == pytest.approx(np.sqrt(89))
    assert components(pred, post, reference, 2, ["A", "B"]) == [
        {"voxels": 9, "true": 0, "kept": True, "touches": ["A"], "gap_mm": 0.0}]
    island = pred.copy()  # a kept voxel of another class on the removed piece: the heart still holds the most kept
    island[9, 9, 9] = 2
    post_island = post.copy()
    post_island[9, 9, 9] = 2
    assert components(island, post_island, reference, 1, ["A", "B"])[1]["gap_mm"] == pytest.approx(np.sqrt(41))
