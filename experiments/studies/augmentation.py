"""Augmentation: none / intensity only / spatial only / full (the default), and mirroring on top of full, along the
left-right axis or the anterior-posterior one only. Does flipping a lateralised organ left to right hurt?

Mirror axes are the network's: 0 is left-right and 1 anterior-posterior both for 3D patches (RAS) and for 2D
slices cut along z (the slice axis of the phantom and ACDC), so one override means the same flip for every kind.
"""

from experiments.studies import INTENSITY_P, SPATIAL_P, off
from heartjax.ablation import Study

STUDY = Study(
    name="augmentation",
    description="no / intensity-only / spatial-only / full augmentation, and left-right vs front-back mirroring",
    kinds=("2d", "3d"),
    variants={
        "full": (),
        "none": off(*SPATIAL_P, *INTENSITY_P),
        "intensity": off(*SPATIAL_P),
        "spatial": off(*INTENSITY_P),
        "mirror_lr": ("augment.mirror_p=0.5", "augment.mirror_axes=[0]"),
        "mirror_ap": ("augment.mirror_p=0.5", "augment.mirror_axes=[1]"),
    },
    reference="full",
)
