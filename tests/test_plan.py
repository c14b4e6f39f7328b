"""Plan: nnU-Net's spacing rule, anisotropic strides and kernels, patch fitting, overrides and errors."""

import numpy as np
import pytest

from heartjax.errors import HeartjaxError
from heartjax.data.plan import Fingerprint, Plan, make_plan, stage_layout, target_spacing_from


def fp(spacings, shapes, modality="ct"):
    return Fingerprint(tuple(map(tuple, spacings)), tuple(map(tuple, shapes)), modality, 300.0, 80.0, 50.0, 600.0, 290.0)


def test_target_spacing_median_and_anisotropy_rule():
    iso = np.array([[1.0, 1.0, 1.5], [0.8, 0.8, 1.7], [0.9, 0.9, 1.6]])
    np.testing.assert_allclose(target_spacing_from(iso), [0.9, 0.9, 1.6])
    # ACDC-like: z is > 3x coarser, so it takes its 10th percentile instead of the median
    acdc = np.array([[1.5, 1.5, 10.0]] * 5 + [[1.4, 1.4, 5.0]] * 2 + [[1.3, 1.3, 6.5]] * 3)
    ts = target_spacing_from(acdc)
    assert ts[2] == pytest.approx(np.percentile(acdc[:, 2], 10))
    assert ts[2] < np.median(acdc[:, 2])


def test_stage_layout_keeps_coarse_axis_until_it_catches_up():
    strides, kernels = stage_layout((1.5, 1.5, 10.0), (128, 128, 8), depth=4)
    assert strides[0] == (2, 2, 1) and kernels[0] == (3, 3, 1)
    assert all(s[2] == 1 for s in strides[:2])
    strides_iso, kernels_iso = stage_layout((2.0, 2.0, 2.0), (64, 64, 64), depth=4)
    assert strides_iso == ((2, 2, 2),) * 4 and kernels_iso == ((3, 3, 3),) * 5


def test_plan_patch_fits_budget_and_divisors():
    f = fp([[1.0, 1.0, 1.6]] * 4, [[200, 200, 100]] * 4)
    p = make_plan(f, depth=4, target_spacing=(2.0, 2.0, 2.0), max_patch_voxels_3d=64**3, max_patch_voxels_2d=128**2)
    assert np.prod(p.patch_3d) <= 64**3
    assert all(s % 16 == 0 for s in p.patch_3d)
    assert np.prod(p.patch_2d) <= 128**2
    assert p.normalization == "ct" and p.slice_axis == 2
    assert Plan.from_json(p.to_json()) == p
    assert p.key() == Plan.from_json(p.to_json()).key()


def test_plan_slices_along_coarsest_axis():
    f = fp([[1.5, 10.0, 1.5]] * 3, [[200, 10, 200]] * 3, modality="mri")
    p = make_plan(f, depth=3)
    assert p.slice_axis == 1 and p.in_plane_axes() == (0, 2) and p.normalization == "zscore"


@pytest.mark.parametrize("kw,setting", [
    (dict(target_spacing=(1.0, -1.0, 1.0)), "target_spacing"),
    (dict(batch_3d=0), "batch"),
    (dict(patch_3d=(30, 32, 32)), "patch_3d"),
])
def test_plan_errors_name_the_setting(kw, setting):
    with pytest.raises(HeartjaxError, match=setting):
        make_plan(fp([[1.0, 1.0, 1.0]] * 2, [[64, 64, 64]] * 2), depth=3, target_spacing=kw.pop("target_spacing", (1, 1, 1)), **kw)
