"""Thick-slice cine MRI on the phantom: 2D, 2.5D and 3D on the phantom's cine mode, the case (like ACDC) where a
3D network's through-plane context is least reliable. Does 2D win here, where 3D wins on thin-slice CT?

The phantom's MRI scanner model, written as ACDC-like 10 mm slices (each the mean of about 2 mm thin slices, shifted
in-plane as between breath-holds; docs/phantom.md), planned as the `acdc` preset plans ACDC: 10 mm through-plane,
the in-plane spacing of the `default` preset (3 mm), a 3D patch 8 slices deep (the plan pools the 10 mm axis only
where it is within 2x of the in-plane spacing) and rotations in-plane only. Same 40 patients, split and training
budget (900 steps) as the `default` preset's CT run, so `cine` set beside `patients`' `all` reads as: what thick
slices do to each kind.
"""

from heartjax.ablation import Study

STUDY = Study(
    name="cine",
    description="2D vs 2.5D vs 3D on the phantom's thick-slice cine MRI (10 mm, breath-hold shifts)",
    baseline=("data.phantom_modality=cine", "data.phantom_spacing=[1.5, 1.5, 10.0]",
              "plan.target_spacing=[3.0, 3.0, 10.0]", "plan.kinds.3d.patch=[64, 64, 8]",
              "augment.rotation_axes=[2]"),
    kinds=("2d", "2.5d", "3d"),
    variants={"cine": ()},
    presets=("smoke", "default"),
    phantom_only=True,
)
