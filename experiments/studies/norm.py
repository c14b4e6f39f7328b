"""Normalisation layer of every U-Net block: instance (the default, nnU-Net's), batch, group (8 channels)."""

from heartjax.ablation import Study

STUDY = Study(
    name="norm",
    description="instance (default) vs batch vs group normalisation, 2D and 3D",
    kinds=("2d", "3d"),
    variants={
        "instance": ("model.norm=instance",),
        "batch": ("model.norm=batch",),
        "group": ("model.norm=group",),
    },
    reference="instance",
)
