"""Plan: nnU-Net's spacing rule, anisotropic strides and kernels, patch fitting, overrides and errors."""

import dataclasses

import numpy as np
import pytest

from heartjax import config as config_lib
from heartjax.common.errors import HeartjaxError
from heartjax.data.plan import Fingerprint, KindPlan, Plan, make_plan, plan_kinds, stage_layout, target_spacing_from


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


def kinds(*overrides, depth=4):
    """Every kind's plan settings of the default config with `overrides` (plan.kinds.KIND.FIELD=value)."""
    cfg = config_lib.apply_overrides(config_lib.Config(), [f"plan.depth={depth}", *overrides])
    return plan_kinds(cfg.plan)


def test_plan_patch_fits_budget_and_divisors():
    f = fp([[1.0, 1.0, 1.6]] * 4, [[200, 200, 100]] * 4)
    p = make_plan(f, kinds("plan.kinds.3d.patch=None", "plan.kinds.3d.max_patch_voxels=262144",
                           "plan.kinds.2d.max_patch_voxels=16384"), depth=4, target_spacing=(2.0, 2.0, 2.0))
    assert np.prod(p.kind("3d").patch) <= 64**3
    assert all(s % 16 == 0 for s in p.kind("3d").patch)
    assert np.prod(p.kind("2d").patch) <= 128**2
    assert p.normalization == "ct" and p.slice_axis == 2
    assert Plan.from_json(p.to_json()) == p
    assert p.key() == Plan.from_json(p.to_json()).key()


def test_the_plan_is_keyed_by_kind_and_25d_inherits_2d():
    f = fp([[1.0, 1.0, 2.5]] * 4, [[200, 200, 60]] * 4)
    p = make_plan(f, kinds(), depth=3, target_spacing=(2.0, 2.0, 4.0))
    assert list(p.kinds) == list(config_lib.Config().plan.kinds)
    e2, e25, e3 = p.kind("2d"), p.kind("2.5d"), p.kind("3d")
    assert e3.spatial_dims == 3 and e3.spacing == (2.0, 2.0, 4.0) and e3.patch == (48, 48, 48) and e3.batch == 2
    assert e2.spatial_dims == 2 and e2.spacing == (2.0, 2.0) and e2.batch == 16 and len(e2.strides) == 3
    assert e25 == dataclasses.replace(e2, inherits_from="2d")
    own = make_plan(f, kinds("plan.kinds.2.5d.batch=4", "plan.kinds.2.5d.patch=[32,32]"), depth=3,
                    target_spacing=(2.0, 2.0, 4.0))
    assert own.kind("2.5d").batch == 4 and own.kind("2.5d").patch == (32, 32) and own.kind("2d") == e2
    toy = make_plan(f, kinds("plan.kinds.toy.inherits_from=3d", "plan.kinds.toy.patch=[8,8,8]"), depth=3,
                    target_spacing=(2.0, 2.0, 4.0))
    assert toy.kind("toy").patch == (8, 8, 8) and toy.kind("toy").batch == 2 and toy.kind("3d") == e3
    with pytest.raises(HeartjaxError, match="no entry for model kind 'nope'.*plan.kinds.nope.inherits_from"):
        p.kind("nope")


def test_a_plan_json_of_heartjax_05_is_read_with_kinds_as_keys():
    old = {"target_spacing": [2.0, 2.0, 4.0], "modality": "ct", "normalization": "ct", "ct_clip": [-100.0, 300.0],
           "ct_mean": 50.0, "ct_std": 80.0, "slice_axis": 2, "patch_3d": [16, 16, 8], "batch_3d": 2,
           "strides_3d": [[2, 2, 1], [2, 2, 2]], "kernels_3d": [[3, 3, 1], [3, 3, 3], [3, 3, 3]],
           "patch_2d": [16, 16], "batch_2d": 4, "strides_2d": [[2, 2], [2, 2]], "kernels_2d": [[3, 3]] * 3,
           "depth": 2, "crop_margin_mm": 10.0}
    p = Plan.from_json(old)
    assert p.kind("3d") == KindPlan(3, (2.0, 2.0, 4.0), (16, 16, 8), 2, ((2, 2, 1), (2, 2, 2)),
                                    ((3, 3, 1), (3, 3, 3), (3, 3, 3)))
    assert p.kind("2d") == KindPlan(2, (2.0, 2.0), (16, 16), 4, ((2, 2), (2, 2)), ((3, 3),) * 3)
    assert p.kind("2.5d") == dataclasses.replace(p.kind("2d"), inherits_from="2d")
    assert Plan.from_json(p.to_json()) == p and p.key() == Plan.from_json(p.to_json()).key()
    with pytest.raises(HeartjaxError, match="neither `kinds`.*patch_3d.*plan the run again"):
        Plan.from_json({k: v for k, v in old.items() if k != "batch_2d"})


def test_plan_slices_along_coarsest_axis():
    f = fp([[1.5, 10.0, 1.5]] * 3, [[200, 10, 200]] * 3, modality="mri")
    p = make_plan(f, kinds("plan.kinds.3d.patch=None", depth=3), depth=3)
    assert p.slice_axis == 1 and p.in_plane_axes() == (0, 2) and p.normalization == "zscore"
    assert p.kind("2d").spacing == (1.5, 1.5)


@pytest.mark.parametrize("kw,overrides,setting", [
    (dict(target_spacing=(1.0, -1.0, 1.0)), [], "target_spacing"),
    ({}, ["plan.kinds.3d.batch=0"], "plan.kinds.3d needs .* a batch >= 1"),
    ({}, ["plan.kinds.3d.patch=[30, 32, 32]"], r"plan.kinds.3d.patch \(30, 32, 32\)"),
])
def test_plan_errors_name_the_setting(kw, overrides, setting):
    with pytest.raises(HeartjaxError, match=setting):
        make_plan(fp([[1.0, 1.0, 1.0]] * 2, [[64, 64, 64]] * 2), kinds(*overrides, depth=3), depth=3,
                  target_spacing=kw.pop("target_spacing", (1, 1, 1)))
