"""The predecessor's recipe against the current defaults, one change at a time, on the same patients.

The predecessor's README states a 2D U-Net with batch norm and dropout, trained slice by slice; the rest is a plain
U-Net recipe of its time: no deep supervision, cross-entropy, Adam (AdamW without weight decay or warm-up), no
spatial augmentation (intensity augmentation kept). Its dropout rate is not stated: 0.1 after every conv block
(where heartjax's U-Net applies dropout). Each variant adds one of today's choices to that recipe; `current` is
today's defaults.
"""

from experiments.studies import SPATIAL_P, off
from heartjax.ablation import Study

STUDY = Study(
    name="predecessor",
    description="the predecessor's 2D recipe (BN, dropout, CE, Adam, no spatial aug) vs today's, one change at a time",
    baseline=("model.norm=batch", "model.dropout=0.1", "model.deep_supervision=False", "loss.lambda_dice=0.0",
              "optim.weight_decay=0.0", "optim.warmup_steps=0", *off(*SPATIAL_P)),
    kinds=("2d",),
    variants={
        "predecessor": (),
        "instance_norm": ("model.norm=instance",),
        "no_dropout": ("model.dropout=0.0",),
        "deep_supervision": ("model.deep_supervision=True",),
        "dice_ce": ("loss.lambda_dice=1.0",),
        "spatial_aug": ("augment.rotation_p=0.2", "augment.scale_p=0.2"),
        "adamw": ("optim.weight_decay=3e-5", "optim.warmup_steps=20"),
        "current": ("model.norm=instance", "model.dropout=0.0", "model.deep_supervision=True", "loss.lambda_dice=1.0",
                    "augment.rotation_p=0.2", "augment.scale_p=0.2", "optim.weight_decay=3e-5", "optim.warmup_steps=20"),
    },
    reference="predecessor",
)
