"""The phantom's difficulty levels: level 0 is the first generator bit for bit; level 1 (the default) carries the
hard parts of real anatomy and acquisition; the cine mode writes thick, shifted slices; folders name the version."""

import hashlib

import numpy as np
import pytest
from scipy import ndimage

from heartjax.config import DataConfig
from heartjax.data import phantom
from heartjax.data.phantom import render as phantom_render
from heartjax.data.phantom import shapes
from heartjax.data.cases import phantom_folder
from heartjax.data.labels import MMWHS
from heartjax.data.phantom.levels import LEVELS, VERSION

COARSE = (3.0, 3.0, 3.0)
SEEDS = range(8)
# adult-plausible volumes (ml) at level 1 over diastole to near end-systole, per MM-WHS structure
VOLUME_ML = {"MYO": (70, 280), "LA": (25, 160), "LV": (35, 220), "RA": (25, 170), "RV": (40, 260),
             "AO": (15, 80), "PA": (5, 40)}


def code(name):
    return MMWHS.codes[MMWHS.names.index(name)]


def tissue_index(name):
    return phantom.TISSUES.index(name)


def md5(*arrays):
    return hashlib.md5(b"".join(a.tobytes() for a in arrays)).hexdigest()


@pytest.fixture(scope="module")
def level1():
    return {s: (phantom.generate_case(s, "ct", COARSE), phantom.generate_tissues(s, COARSE)[0]) for s in SEEDS}


def test_level0_is_the_first_generator_bit_for_bit():
    # digests of the generator before difficulty levels existed (same seeds, 4 mm grid, pinned numpy and scipy)
    assert md5(*phantom.generate_case(3, "ct", (4.0, 4.0, 4.0), difficulty=0)) == "676481bd179c0c8ced36cc01b114551a"
    assert md5(*phantom.generate_case(4, "mri", (4.0, 4.0, 4.0), difficulty=0)) == "9b8e40484d718d08076e208002ef940e"


def test_default_level_is_realistic_and_differs_from_level0():
    image, label, _ = phantom.generate_case(3, "ct", COARSE)
    ref = phantom.generate_case(3, "ct", COARSE, difficulty=1)
    np.testing.assert_array_equal(image, ref[0])
    assert not np.array_equal(label, phantom.generate_case(3, "ct", COARSE, difficulty=0)[1])


def test_level1_keeps_all_structures_with_adult_volumes(level1):
    for seed, ((_, label, affine), _) in level1.items():
        voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
        for name, (lo, hi) in VOLUME_ML.items():
            mask = label == code(name)
            assert lo <= mask.sum() * voxel_ml <= hi, (seed, name, mask.sum() * voxel_ml)
            pieces = ndimage.label(mask)[0]
            biggest = np.bincount(pieces.ravel())[1:].max()
            assert biggest >= 0.95 * mask.sum(), (seed, name)  # one structure, not fragments


def test_level1_varies_pose_size_and_field_of_view(level1):
    axes, shapes = [], set()
    for (_, label, affine), _ in level1.values():
        shapes.add(label.shape)
        lv = np.argwhere(label == code("LV")) @ affine[:3, :3].T
        la = np.argwhere(label == code("LA")) @ affine[:3, :3].T
        axis = lv.mean(0) - la.mean(0)
        axes.append(axis / np.linalg.norm(axis))
    angles = [np.degrees(np.arccos(np.clip(a @ b, -1, 1))) for i, a in enumerate(axes) for b in axes[i + 1:]]
    assert max(angles) > 25  # tens of degrees between patients' heart axes
    assert len(shapes) > 1  # the field of view changes between patients


def test_level1_cavities_hold_muscle_and_meet_their_atria_without_a_wall(level1):
    for seed, ((image, label, _), tissue) in level1.items():
        lv = label == code("LV")
        muscle = (tissue == tissue_index("myocardium")) & lv
        assert muscle.sum() > 0.02 * lv.sum(), seed  # papillary muscles and trabeculae keep the cavity label
        la_next_to_lv = lv & ndimage.binary_dilation(label == code("LA"))
        blood = np.isin(tissue, [tissue_index("blood_left"), tissue_index("blood_right")])
        # the mitral valve plane: LV blood touching LA blood, no myocardium between
        assert (la_next_to_lv & blood).sum() >= 5, seed
        assert np.median(image[la_next_to_lv & blood]) > 250, seed


def test_level1_great_vessel_labels_end_where_the_annotator_cuts(monkeypatch):
    """The same patients with the annotator's cuts set to 0: the anatomy (tissue) is identical, and every voxel
    the cut takes from the PA and AO labels is contrast-filled lumen (or its wall) left unlabelled."""
    drawn = shapes.detail_params

    def uncut(rng, level):
        return {**drawn(rng, level), "pa_cut": 0.0, "ao_cut": 0.0}

    for seed in range(3):
        (_, label, _), tissue = phantom.generate_case(seed, "ct", COARSE), phantom.generate_tissues(seed, COARSE)[0]
        with monkeypatch.context() as m:
            m.setattr(shapes, "detail_params", uncut)
            (_, whole, _), tissue0 = phantom.generate_case(seed, "ct", COARSE), phantom.generate_tissues(seed, COARSE)[0]
        assert np.array_equal(tissue, tissue0), seed
        for name, blood in (("PA", "blood_right"), ("AO", "blood_left")):
            cut = (whole == code(name)) & (label != code(name))
            assert cut.sum() > 0, (seed, name)  # the cut shortens the label
            assert np.all(label[cut] == 0), (seed, name)
            assert np.isin(tissue[cut], [tissue_index(blood), tissue_index("vessel_wall")]).all(), (seed, name)


def test_level1_ct_intensities_vary_between_arterial_and_venous_phase(level1):
    gaps = []
    for (image, label, _), _ in level1.values():
        left, right = np.median(image[label == code("LV")]), np.median(image[label == code("RV")])
        assert 250 < left < 720 and 100 < right < 720
        gaps.append(left - right)
    assert max(gaps) > 100 and min(gaps) < 60  # some patients with a dim right heart, some without


def test_ct_streaks_follow_dense_contrast():
    grid = phantom.shp.Grid((40, 40, 3), (2.0, 2.0, 2.0), (-40.0, -40.0, 0.0))
    tissue = np.zeros(grid.shape, np.uint8)
    tissue[18:22, 18:22, 1] = phantom.shp.SVC
    img = np.zeros(grid.shape, np.float32)
    phantom_render._streaks(img, tissue, grid, np.random.default_rng(0), (100.0, 100.0))
    assert np.abs(img[:, :, 1]).max() > 20 and not img[:, :, 0].any() and not img[:, :, 2].any()


def test_thick_slices_average_and_shift():
    img = np.zeros((20, 20, 6), np.float32)
    label = np.zeros((20, 20, 6), np.uint8)
    img[5:10, 5:10, :3] = 3.0
    img[5:10, 5:10, 3] = 6.0  # one of the second thick slice's three thin slices
    label[5:10, 5:10, 1] = 1
    label[5:10, 5:10, 4] = 2
    label[0:2, 0:2, 3] = 5  # off-centre thin slices never give the thick slice's label
    out_img, out_lab = phantom_render.thick_slices(img, label, 3, np.array([[0.0, 0.0], [2.0, 0.0]]))
    assert out_img.shape == out_lab.shape == (20, 20, 2)
    np.testing.assert_allclose(out_img[5:10, 5:10, 0], 3.0)  # three thin slices of 3 -> 3, not shifted
    assert out_lab[:, :, 0].sum() == 25 and np.array_equal(out_lab[5:10, 5:10, 0], np.ones((5, 5)))
    # the second thick slice: the mean of 6, 0, 0 is 2, moved 2 voxels along x (the label by nearest neighbour)
    np.testing.assert_allclose(out_img[7:12, 5:10, 1], 2.0, atol=1e-6)
    assert not out_img[:7, :, 1].any() and not out_img[12:, :, 1].any()
    assert np.array_equal(np.argwhere(out_lab[:, :, 1] == 2), np.argwhere(label[:, :, 4] == 2) + [2, 0])
    assert not (out_lab == 5).any()


def lv_centroids(label):
    return {k: np.argwhere(label[:, :, k] == code("LV")).mean(0) for k in range(label.shape[2])
            if (label[:, :, k] == code("LV")).sum() > 20}


def test_cine_mode_writes_thick_shifted_slices(monkeypatch):
    image, label, affine = phantom.generate_case(2, "cine", (3.0, 3.0, 10.0))
    assert affine[2, 2] == pytest.approx(10.0)
    assert image.shape == label.shape and image.shape[2] == pytest.approx(160 / 10, abs=3)
    assert {0, *MMWHS.codes} == set(np.unique(label).tolist())
    # the same patient with the breath-hold shifts switched off (the random stream is unchanged)
    unshifted = phantom_render.thick_slices
    monkeypatch.setattr(phantom_render, "thick_slices", lambda img, lab, sub, shifts: unshifted(img, lab, sub, shifts * 0))
    still = phantom.generate_case(2, "cine", (3.0, 3.0, 10.0))[1]
    moved, fixed = lv_centroids(label), lv_centroids(still)
    common = sorted(set(moved) & set(fixed))
    offsets_mm = np.array([np.linalg.norm(moved[k] - fixed[k]) * 3.0 for k in common])
    assert len(common) >= 4
    assert offsets_mm.max() > 1.5  # the shifts move the slices in-plane ...
    assert offsets_mm.max() < 5.0 * np.sqrt(2) + 3.0  # ... by at most 5 mm per axis (plus a voxel of rounding)
    assert len({tuple(np.round(moved[k] - fixed[k], 1)) for k in common}) > 1  # each slice by its own offset


def test_levels_are_ordered_in_difficulty():
    easy, real, hard = LEVELS[0], LEVELS[1], LEVELS[2]
    for field in ("yaw", "tilt", "roll", "fov_shift", "cut_jitter"):
        assert getattr(easy, field) <= getattr(real, field) <= getattr(hard, field), field
    assert easy.noise[1] <= real.noise[1] <= hard.noise[1]


def test_phantom_folder_names_generator_version_and_difficulty():
    a = phantom_folder(DataConfig(phantom_difficulty=0))
    b = phantom_folder(DataConfig(phantom_difficulty=1))
    assert a != b and f"v{VERSION}-d1" in b.name and f"v{VERSION}-d0" in a.name
