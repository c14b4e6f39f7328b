"""The synthetic phantom: determinism, anatomy, intensities, file layout and argument errors (coarse grids).

Anatomy and intensity checks here are of difficulty 0, the first generator's phantom (kept bit for bit); the
realistic levels are tested in test_phantom_levels.py.
"""

import nibabel
import numpy as np
import pytest
from scipy import ndimage

from heartjax.data import phantom
from heartjax.common.errors import HeartjaxError
from heartjax.data.labels import MMWHS

COARSE = (3.0, 3.0, 3.0)
SEEDS = range(6)
# plausible adult volumes (ml) at the coarse test grid, per MM-WHS structure
VOLUME_ML = {"MYO": (80, 210), "LA": (30, 130), "LV": (90, 190), "RA": (30, 130), "RV": (70, 230),
             "AO": (30, 80), "PA": (12, 40)}
BLOOD = ("LA", "LV", "RA", "RV", "AO", "PA")


def code(name):
    return MMWHS.codes[MMWHS.names.index(name)]


def tissue_index(name):
    return phantom.TISSUES.index(name)


@pytest.fixture(scope="module")
def ct_cases():
    return {s: phantom.generate_case(s, "ct", COARSE, difficulty=0) for s in SEEDS}


def test_same_seed_same_case_and_different_seed_differs(ct_cases):
    image, label, affine = phantom.generate_case(2, "ct", COARSE, difficulty=0)
    ref_image, ref_label, ref_affine = ct_cases[2]
    np.testing.assert_array_equal(image, ref_image)
    np.testing.assert_array_equal(label, ref_label)
    np.testing.assert_array_equal(affine, ref_affine)
    other_image, other_label, _ = ct_cases[3]
    assert not np.array_equal(label, other_label)
    assert np.abs(image - other_image).mean() > 10


def test_shapes_dtypes_codes_and_affine(ct_cases):
    for image, label, affine in ct_cases.values():
        assert image.shape == label.shape == (67, 67, 53)
        assert image.dtype == np.float32 and label.dtype == np.uint16
        assert set(np.unique(label).tolist()) == {0, *MMWHS.codes}
        np.testing.assert_allclose(np.diag(affine)[:3], COARSE)  # RAS order: positive diagonal
        assert np.array_equal(image, np.rint(image)) and image.min() >= -1024 and image.max() <= 3071


def test_every_structure_present_once_with_plausible_volume(ct_cases):
    voxel_ml = np.prod(COARSE) / 1000.0
    for seed, (_, label, _) in ct_cases.items():
        for name, (lo, hi) in VOLUME_ML.items():
            mask = label == code(name)
            assert lo <= mask.sum() * voxel_ml <= hi, (seed, name, mask.sum() * voxel_ml)
            assert ndimage.label(mask)[1] == 1, (seed, name)


def test_adult_arrangement_in_ras(ct_cases):
    for seed, (_, label, affine) in ct_cases.items():
        c = {n: affine[:3, :3] @ np.argwhere(label == code(n)).mean(0) + affine[:3, 3] for n in MMWHS.names}
        assert c["RA"][0] > c["LA"][0] + 20, seed  # RA to the patient's right (+x in RAS)
        assert c["LV"][0] < c["RA"][0] - 30, seed  # LV on the left
        assert c["LA"][1] < c["LV"][1] - 20 and c["LA"][1] < c["RV"][1] - 20, seed  # LA posterior
        assert c["RV"][1] > c["LV"][1] - 5, seed  # RV anterior
        assert c["AO"][2] > c["LV"][2] + 30 and c["PA"][2] > c["RV"][2] + 30, seed  # great vessels rise
        apex_dir = c["LV"] - c["LA"]  # base (posterior, superior, right) to apex (anterior, inferior, left)
        assert apex_dir[0] < 0 and apex_dir[1] > 0 and apex_dir[2] < 0, seed


def test_ct_intensities_per_structure(ct_cases):
    for seed, (image, label, _) in ct_cases.items():
        for name in BLOOD:
            assert 250 <= np.median(image[label == code(name)]) <= 450, (seed, name)
        assert 80 <= np.median(image[label == code("MYO")]) <= 150, seed


def test_tissues_match_case_and_surroundings_are_realistic(ct_cases):
    for seed in (0, 1):
        tissue, label, affine = phantom.generate_tissues(seed, COARSE, difficulty=0)
        image, ref_label, ref_affine = ct_cases[seed]
        np.testing.assert_array_equal(label, ref_label)
        np.testing.assert_array_equal(affine, ref_affine)
        median = {t: np.median(image[tissue == tissue_index(t)]) for t in ("lung", "fat", "cortex")}
        assert median["lung"] < -700 and -140 < median["fat"] < -60 and 300 < median["cortex"] < 1200
        # contrast-filled vessels that carry no label (aorta beyond the ascending part, pulmonary branches)
        blood = np.isin(tissue, [tissue_index("blood_left"), tissue_index("blood_right")])
        unlabelled = blood & (label == 0)
        assert unlabelled.sum() * np.prod(COARSE) / 1000 > 20
        assert np.median(image[unlabelled]) > 200
        bright_unlabelled = (image > 200) & (label == 0) & ~np.isin(tissue, [tissue_index(t) for t in
                                                                            ("cortex", "marrow", "rib")])
        assert bright_unlabelled.sum() > 0.3 * unlabelled.sum()
        # the RV free wall: myocardium intensity, no label
        assert ((tissue == tissue_index("myocardium")) & (label == 0)).sum() * np.prod(COARSE) / 1000 > 5


def test_mri_blood_brighter_than_myocardium_with_bias_and_rician_noise():
    scales = []
    for seed in (0, 1):
        image, label, _ = phantom.generate_case(seed, "mri", COARSE, difficulty=0)
        assert image.dtype == np.float32 and image.min() >= 0  # magnitude (Rician) data
        myo = np.median(image[label == code("MYO")])
        for name in ("LV", "RV", "LA"):
            assert np.median(image[label == code(name)]) > 2 * myo, (seed, name)
        scales.append(np.median(image[label == code("LV")]))
    assert abs(np.log(scales[0] / scales[1])) > 0.05  # the per-case scale is arbitrary


def test_cli_writes_mmwhs_layout_and_refuses_overwrite(tmp_path, capsys):
    args = ["--out", str(tmp_path), "--cases", "2", "--spacing", "4", "4", "4", "--seed", "3"]
    assert phantom.main(args) == 0
    folder = tmp_path / "ct_train"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["ct_train_1001_image.nii.gz", "ct_train_1001_label.nii.gz", "ct_train_1002_image.nii.gz",
                     "ct_train_1002_label.nii.gz"]
    img = nibabel.load(folder / "ct_train_1002_image.nii.gz")
    lab = nibabel.load(folder / "ct_train_1002_label.nii.gz")
    assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint16
    assert nibabel.aff2axcodes(img.affine) == ("L", "P", "S")  # stored like a DICOM-derived scan
    image, label, affine = phantom.generate_case(phantom.case_seed(3, 1), "ct", (4.0, 4.0, 4.0))
    ras = nibabel.as_closest_canonical(img)
    np.testing.assert_array_equal(np.asarray(ras.dataobj), image)
    np.testing.assert_array_equal(np.asarray(nibabel.as_closest_canonical(lab).dataobj), label)
    np.testing.assert_allclose(ras.affine, affine, atol=1e-4)
    before = (folder / "ct_train_1001_image.nii.gz").read_bytes()
    assert phantom.main(args) == 2
    assert "ct_train_1001_image.nii.gz" in capsys.readouterr().err
    with pytest.raises(HeartjaxError, match="ct_train_1001_image.nii.gz"):
        phantom.write_phantom(tmp_path, cases=1, seed=3, spacing=(4, 4, 4))
    phantom.write_phantom(tmp_path, cases=1, seed=3, spacing=(4, 4, 4), overwrite=True)
    assert (folder / "ct_train_1001_image.nii.gz").read_bytes() == before  # identical bytes for identical calls
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_mri_layout(tmp_path):
    paths = phantom.write_phantom(tmp_path, cases=1, modality="mri", spacing=(5, 5, 5))
    assert [p.name for p in paths] == ["mr_train_1001_image.nii.gz", "mr_train_1001_label.nii.gz"]
    assert nibabel.load(paths[0]).get_data_dtype() == np.float32


@pytest.mark.parametrize("kwargs, setting", [
    (dict(cases=0), "cases"),
    (dict(modality="pet"), "modality"),
    (dict(spacing=(1.0, 0.0, 1.0)), "spacing"),
    (dict(spacing=(1.0, 1.0)), "spacing"),
    (dict(seed=-1), "seed"),
    (dict(difficulty=3), "difficulty"),
    (dict(difficulty="hard"), "difficulty"),
])
def test_bad_arguments_name_the_setting(tmp_path, kwargs, setting):
    with pytest.raises(HeartjaxError, match=setting):
        phantom.write_phantom(tmp_path, **{"cases": 1, **kwargs})
    assert not (tmp_path / "ct_train").exists()


def test_generate_case_rejects_bad_settings():
    with pytest.raises(HeartjaxError, match="modality"):
        phantom.generate_case(0, "xray", COARSE)
    with pytest.raises(HeartjaxError, match="fov_mm"):
        phantom.generate_case(0, "ct", COARSE, fov_mm=(200, -1, 160))
