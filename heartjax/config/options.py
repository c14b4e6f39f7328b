"""The pieces' option values the config tree holds, written once: the optimiser, the loss, the U-Net's options
(`ModelConfig`, which `heartjax.model.unet.UNetConfig` extends) and their allowed values. A leaf: the model and
train code import these, and so does the config schema.
"""

from __future__ import annotations

import dataclasses
import math

from heartjax.errors import HeartjaxError

NORMS = ("batch", "instance", "group", "none")
UPSAMPLES = ("resize", "transpose")
ACTIVATIONS = ("relu", "leaky_relu")
DTYPES = ("float32", "bfloat16")
CONV_IMPLS = ("auto", "xla", "planes")  # the values of model.conv_impl


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule. sgd: nnU-Net's SGD (Nesterov 0.99, poly decay 0.9); adamw: warm-up + cosine."""

    name: str = "adamw"
    lr: float = 1e-3
    momentum: float = 0.99
    nesterov: bool = True
    weight_decay: float = 3e-5
    warmup_steps: int = 0
    poly_power: float = 0.9
    clip_norm: float = 12.0

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

    lambda_dice: float = 1.0
    lambda_ce: float = 1.0
    batch_dice: bool = False
    include_background: bool = False


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The U-Net's options, written once: the config's `model` section (shared by every kind), each kind's section
    (the same fields, None taking the shared value) and `heartjax.model.unet.UNetConfig` (which extends this class
    with the geometry a spec derives: dims, channels, classes, depth, strides, kernels). A new option is one line here
    (and its rule in `heartjax.config.validation`)."""

    features: int = 8
    max_features: int = 64
    growth: int = 2
    norm: str = "instance"
    dropout: float = 0.0
    upsample: str = "resize"
    activation: str = "leaky_relu"
    deep_supervision: bool = True
    dtype: str = "float32"
    conv_impl: str = "auto"
