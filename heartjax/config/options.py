"""The pieces' option values the config tree holds, written once: the optimiser, the loss, the U-Net's options
(`ModelConfig`, which `heartjax.model.unet.UNetConfig` extends) and their allowed values. A leaf: the model and
train code import these, and so does the config schema.
"""

from __future__ import annotations

import dataclasses
import math

from heartjax.common.errors import HeartjaxError

NORMS = ("batch", "instance", "group", "none")
UPSAMPLES = ("resize", "transpose")
ACTIVATIONS = ("relu", "leaky_relu")
DTYPES = ("float32", "bfloat16")
CONV_IMPLS = ("auto", "xla", "planes")  # the values of model.conv_impl


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule. sgd: nnU-Net's SGD (Nesterov 0.99, poly decay 0.9); adamw: warm-up + cosine."""

    name: str = "adamw"            # sgd | adamw
    lr: float = 1e-3               # peak learning rate
    momentum: float = 0.99         # SGD momentum
    nesterov: bool = True          # SGD with Nesterov momentum
    weight_decay: float = 3e-5     # weight decay (decoupled for adamw)
    warmup_steps: int = 0          # linear warm-up steps before the decay
    poly_power: float = 0.9        # SGD's poly decay exponent
    clip_norm: float = 12.0        # global gradient-norm clipping; 0 disables it

    def validate(self) -> None:
        if self.name not in ("sgd", "adamw"):
            raise HeartjaxError(f"optim.name must be 'sgd' or 'adamw', got {self.name!r}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise HeartjaxError(f"optim.lr must be a positive number, got {self.lr}")
        if self.warmup_steps < 0:
            raise HeartjaxError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.clip_norm < 0:
            raise HeartjaxError(f"optim.clip_norm must be >= 0 (0 disables clipping), got {self.clip_norm}")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Dice + CE weights and Dice options (see heartjax.model.losses)."""

    lambda_dice: float = 1.0       # weight of the soft Dice term
    lambda_ce: float = 1.0         # weight of the cross-entropy term
    batch_dice: bool = False       # Dice over the whole batch instead of per sample
    include_background: bool = False  # count the background class in the Dice term


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The U-Net's options, written once: the config's `model` section (shared by every kind), each kind's section
    (the same fields, None taking the shared value) and `heartjax.model.unet.UNetConfig` (which extends this class
    with the geometry a spec derives: dims, channels, classes, depth, strides, kernels). A new option is one line here
    (and its rule in `heartjax.config.validation`)."""

    features: int = 8                # channels of the first stage
    max_features: int = 64           # cap on the channels of deeper stages
    growth: int = 2                  # channel factor from one stage to the next
    norm: str = "instance"           # batch | instance | group | none
    dropout: float = 0.0             # dropout rate in the convolution blocks
    upsample: str = "resize"         # resize (1x1 conv + repeat) | transpose (transposed conv)
    activation: str = "leaky_relu"   # relu | leaky_relu
    deep_supervision: bool = True    # also train on the decoder's lower-resolution outputs
    dtype: str = "float32"           # compute dtype: float32 | bfloat16 (parameters stay float32)
    conv_impl: str = "auto"          # convolution implementation: auto | xla | planes
