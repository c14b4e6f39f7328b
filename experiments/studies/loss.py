"""Training loss: Dice + cross-entropy (the default, nnU-Net's), cross-entropy only, Dice only."""

from heartjax.ablation import Study

STUDY = Study(
    name="loss",
    description="Dice+CE (default) vs CE only vs Dice only, 2D and 3D",
    kinds=("2d", "3d"),
    variants={
        "dice_ce": ("loss.lambda_dice=1.0", "loss.lambda_ce=1.0"),
        "ce": ("loss.lambda_dice=0.0", "loss.lambda_ce=1.0"),
        "dice": ("loss.lambda_dice=1.0", "loss.lambda_ce=0.0"),
    },
    reference="dice_ce",
)
