"""Preprocessing: body crop, resampling without new labels, normalisation, cache reuse, and the way back."""

import dataclasses
from pathlib import Path

import numpy as np

from heartjax.data import preprocess
from heartjax.config import KindPlanConfig
from heartjax.data.plan import Fingerprint, make_plan


@dataclasses.dataclass
class FakeVolume:
    image: np.ndarray
    label: np.ndarray
    spacing: tuple
    case: str = "c1"


@dataclasses.dataclass(frozen=True)
class FakeCase:
    case_id: str
    image: Path
    label: Path


def phantom_like(shape=(40, 36, 30)):
    img = np.full(shape, -1000.0, np.float32)
    img[4:-4, 3:-3, :] = 40.0
    lbl = np.zeros(shape, np.uint8)
    lbl[15:25, 12:22, 10:20] = 1
    lbl[18:22, 15:19, 13:17] = 2
    img[lbl == 1] = 300
    img[lbl == 2] = 120
    return FakeVolume(img, lbl, (1.0, 1.0, 2.0))


def make_test_plan(spacing=(2.0, 2.0, 2.0)):
    f = Fingerprint(((1.0, 1.0, 2.0),), ((40, 36, 30),), "ct", 250.0, 80.0, 100.0, 320.0, 300.0)
    kinds = {"3d": KindPlanConfig(spatial_dims=3, patch=(8, 8, 8), batch=2),
             "2d": KindPlanConfig(spatial_dims=2, patch=(8, 8), batch=16)}
    return make_plan(f, kinds, depth=2, target_spacing=spacing)


def test_body_box_crops_air_with_margin():
    v = phantom_like()
    box = preprocess.body_box(v.image, "ct", v.spacing, margin_mm=2.0)
    assert box[0] == (2, 38) and box[1] == (1, 35) and box[2] == (0, 30)


def test_resample_label_never_invents_values():
    rng = np.random.default_rng(0)
    lbl = rng.choice([0, 3, 7], size=(13, 11, 9)).astype(np.uint8)
    out = preprocess.resample_label(lbl, (20, 7, 15), 8)
    assert out.shape == (20, 7, 15)
    assert set(np.unique(out)) <= {0, 3, 7}


def test_resample_image_exact_shape_and_identity():
    img = np.random.default_rng(0).standard_normal((10, 12, 7)).astype(np.float32)
    np.testing.assert_array_equal(preprocess.resample_image(img, (10, 12, 7)), img)
    assert preprocess.resample_image(img, (21, 5, 13)).shape == (21, 5, 13)


def test_ct_normalisation_clips_and_standardises():
    plan = make_test_plan()
    out = preprocess.normalize(np.array([-1000.0, 100.0, 250.0, 5000.0]), plan)
    np.testing.assert_allclose(out, [(100 - 250) / 80, (100 - 250) / 80, 0.0, (320 - 250) / 80])


def test_mri_zscore_makes_scales_alike():
    plan = dataclasses.replace(make_test_plan(), normalization="zscore")
    x = np.random.default_rng(0).gamma(2.0, 1.0, (8, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(preprocess.normalize(x, plan), preprocess.normalize(x * 255.0, plan), atol=1e-5)


def test_preprocess_and_restore_round_trip():
    v = phantom_like()
    plan = make_test_plan(spacing=(1.0, 1.0, 2.0))  # same spacing: restore must give the labels back exactly
    pre = preprocess.preprocess_volume(v, plan, num_classes=3)
    probs = np.eye(3, dtype=np.float32)[pre.label]
    back = preprocess.restore(probs, pre)
    np.testing.assert_array_equal(back, v.label)
    plan2 = make_test_plan(spacing=(2.0, 2.0, 2.0))
    pre2 = preprocess.preprocess_volume(v, plan2, num_classes=3)
    assert pre2.image.shape == tuple(round((hi - lo) * s / 2) for (lo, hi), s in zip(pre2.crop, v.spacing))
    back2 = preprocess.restore(np.eye(3, dtype=np.float32)[pre2.label], pre2)
    dice = 2 * ((back2 == 1) & (v.label == 1)).sum() / ((back2 == 1).sum() + (v.label == 1).sum())
    assert back2.shape == v.label.shape and dice > 0.8


def test_cache_is_reused(tmp_path):
    v = phantom_like()
    img_path, lbl_path = tmp_path / "img.nii.gz", tmp_path / "lbl.nii.gz"
    img_path.write_bytes(b"x")
    lbl_path.write_bytes(b"y")
    calls = []

    def load(case):
        calls.append(case.case_id)
        return v

    class Scheme:
        num_classes = 3

    plan = make_test_plan()
    cases = [FakeCase("c1", img_path, lbl_path)]
    a = preprocess.preprocess_cases(cases, plan, Scheme, tmp_path / "cache", load)
    b = preprocess.preprocess_cases(cases, plan, Scheme, tmp_path / "cache", load)
    assert calls == ["c1"]
    np.testing.assert_array_equal(a["c1"].image, b["c1"].image)
    np.testing.assert_array_equal(a["c1"].label, b["c1"].label)
    assert a["c1"].crop == b["c1"].crop
    assert not list((tmp_path / "cache").rglob("*.tmp*"))
