"""The augmentation config: probability and range of every transform, validated on construction.

Used by `heartjax.model.augment` (the transforms) and by the experiment config tree.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

from heartjax.common.errors import HeartjaxError

_BORDER_MODES = ("min", "zero", "edge")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Probability and range of every transform; defaults are nnU-Net v2's except mirroring (off).

    Angles in degrees, elastic settings in voxels. Ranges are (low, high) pairs, sampled uniformly; brightness,
    contrast and gamma factors are drawn below or above 1 with equal chance, as in batchgenerators.
    Lists are accepted and stored as tuples (the config stays hashable); the config validates on construction.
    """

    rotation_p: float = 0.2        # probability of a rotation
    rotation_deg: tuple[float, float] = (-30.0, 30.0)  # rotation angle range, degrees
    rotation_axes: Optional[tuple[int, ...]] = None  # 3D only: axes to rotate about; None = all three.
    scale_p: float = 0.2           # probability of a scaling
    scale_range: tuple[float, float] = (0.7, 1.4)  # One factor for all axes; > 1 magnifies.
    elastic_p: float = 0.0         # probability of an elastic deformation
    elastic_magnitude: tuple[float, float] = (1.0, 4.0)  # Std of the displacement at control points, voxels.
    elastic_sigma: float = 12.0  # Control-point spacing in voxels: larger means smoother.
    border_mode: str = "min"  # "min", "zero" or "edge": what the spatial transform sees outside the patch.
    noise_p: float = 0.1           # probability of Gaussian noise
    noise_variance: tuple[float, float] = (0.0, 0.1)  # range of the noise variance
    blur_p: float = 0.2            # probability of a Gaussian blur
    blur_sigma: tuple[float, float] = (0.5, 1.0)  # Voxels, drawn per axis and channel.
    blur_p_per_channel: float = 0.5  # per channel, once a blur applies
    brightness_p: float = 0.15     # probability of a brightness change
    brightness_range: tuple[float, float] = (0.75, 1.25)  # brightness factor range
    contrast_p: float = 0.15       # probability of a contrast change
    contrast_range: tuple[float, float] = (0.75, 1.25)  # Range of each channel preserved (clipped).
    lowres_p: float = 0.25         # probability of simulated low resolution
    lowres_scale: tuple[float, float] = (0.5, 1.0)  # Fraction of the resolution kept, same on all axes.
    lowres_p_per_channel: float = 0.5  # per channel, once low resolution applies
    gamma_inverted_p: float = 0.1  # probability of a gamma on the inverted image
    gamma_p: float = 0.3           # probability of a gamma change
    gamma_range: tuple[float, float] = (0.7, 1.5)  # Used by both gammas; mean and std are retained.
    mirror_p: float = 0.0  # Probability of a mirroring, per axis.
    mirror_axes: Optional[tuple[int, ...]] = None  # None = all spatial axes.
    joint_channels: bool = False  # True: intensity transforms draw once for all channels (2.5D neighbour slices)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, list):
                object.__setattr__(self, field.name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """Raises HeartjaxError naming the field if a probability is outside [0, 1] or a range is invalid."""
        for field in dataclasses.fields(self):
            name, value = field.name, getattr(self, field.name)
            if name.endswith("_p") or name.endswith("_p_per_channel"):
                _require(_is_number(value) and 0 <= value <= 1, name, value, "a probability in [0, 1]")
            elif name in _RANGE_RULES:
                rule, text = _RANGE_RULES[name]
                pair = isinstance(value, tuple) and len(value) == 2 and all(_is_number(v) for v in value)
                _require(pair and value[0] <= value[1] and rule(*value), name, value, f"(low, high) with {text}")
            elif name.endswith("_axes"):
                _require(value is None or (isinstance(value, tuple) and all(
                    isinstance(a, int) and not isinstance(a, bool) and 0 <= a <= 2 for a in value)
                    and len(set(value)) == len(value)), name, value, "None or distinct spatial axes from 0, 1, 2")
        _require(_is_number(self.elastic_sigma) and self.elastic_sigma >= 1, "elastic_sigma", self.elastic_sigma,
                 "a number of voxels >= 1")
        _require(self.border_mode in _BORDER_MODES, "border_mode", self.border_mode, f"one of {_BORDER_MODES}")
        _require(isinstance(self.joint_channels, bool), "joint_channels", self.joint_channels, "true or false")


_RANGE_RULES = {  # (low, high) fields: what they need beyond low <= high, as code and as words.
    "rotation_deg": (lambda low, high: True, "low <= high, in degrees"),
    "scale_range": (lambda low, high: low > 0, "0 < low <= high"),
    "elastic_magnitude": (lambda low, high: low >= 0, "0 <= low <= high, in voxels"),
    "noise_variance": (lambda low, high: low >= 0, "0 <= low <= high"),
    "blur_sigma": (lambda low, high: low > 0 and high <= 20, "0 < low <= high <= 20, in voxels"),
    "brightness_range": (lambda low, high: low > 0, "0 < low <= high"),
    "contrast_range": (lambda low, high: low >= 0, "0 <= low <= high"),
    "lowres_scale": (lambda low, high: low > 0 and high <= 1, "0 < low <= high <= 1"),
    "gamma_range": (lambda low, high: low > 0, "0 < low <= high"),
}


def _is_number(value) -> bool:
    """True for a finite int or float, not bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require(ok, name, value, what) -> None:
    """Raise HeartjaxError naming the config field unless ok."""
    if not ok:
        raise HeartjaxError(f"augment config: {name}={value!r} is invalid; set {name} to {what}")


def identity_config() -> AugmentConfig:
    """An AugmentConfig with every probability 0: make_augment then returns its inputs unchanged."""
    zero = {f.name: 0.0 for f in dataclasses.fields(AugmentConfig) if f.name.endswith("_p")}
    return AugmentConfig(**zero)
