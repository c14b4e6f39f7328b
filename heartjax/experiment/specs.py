"""One spec per model kind, built once from the plan and the config: the only place that knows how kinds differ.

A `ModelSpec` holds the network config, patch, batch, what a sample is (3D patch, or 2D slice with `context`
neighbouring slices as channels), the augmentation and the inference settings. Everything downstream (training,
validation, whole-volume inference, predict) asks the spec. The kinds, as nnU-Net's configurations table:

  "2d"    a 2D U-Net on single slices cut along the plan's slice axis.
  "2.5d"  the 2D U-Net fed `model_25d.slices` (K) neighbouring slices as channels, predicting the centre one
          (edge slices replicated); intensity augmentations act identically on the K channels.
  "3d"    a 3D U-Net on patches, sliding-window inference.

Each kind's patch, batch and stage layout is its entry of the plan (`plan.kinds.KIND`, set by the config's
`plan.kinds.KIND`; 2.5d inherits 2d's). Adding a kind is one builder in `BUILDERS` and its plan entry (e.g.
`plan.kinds.NAME.inherits_from=3d` plus what differs); its U-Net settings are `model_<kind>` where that section
exists, else those of the kind it inherits from.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import numpy as np

from heartjax import config as config_lib
from heartjax.data.plan import KindPlan, Plan
from heartjax.data.sampling import PatchSampler
from heartjax.common.errors import HeartjaxError
from heartjax.eval.inference import slicewise_predict, sliding_window_predict
from heartjax.model.augment import AugmentConfig
from heartjax.model.unet import UNetConfig


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What one model kind trains on and how it is applied.

    unet: the network; patch: spatial patch (3 sizes in 3D, the 2 in-plane sizes in 2D); batch: training batch;
    slice_axis: axis of the RAS volume slices are cut along (None in 3D); context: slices per sample as channels
    (1 in 2D and 3D); augment: the augmentation config as this kind applies it; infer_batch, overlap, mirror: the
    whole-volume inference settings.
    """

    name: str
    unet: UNetConfig
    patch: tuple[int, ...]
    batch: int
    slice_axis: int | None
    context: int
    augment: AugmentConfig
    infer_batch: int
    overlap: float
    mirror: bool
    batch_key: str = "plan.kinds.KIND.batch"  # the config setting of `batch`, for error messages

    @property
    def spatial_dims(self) -> int:
        return self.unet.spatial_dims

    def sampler(self, cases, seed: int, fg_fraction: float, batch: int | None = None) -> PatchSampler:
        """A training (or fixed validation) sampler over preprocessed cases."""
        return PatchSampler(cases, self.patch, batch or self.batch, seed, spatial_dims=self.spatial_dims,
                            slice_axis=2 if self.slice_axis is None else self.slice_axis, fg_fraction=fg_fraction,
                            context=self.context)

    def predict_volume(self, predict: Callable, image: np.ndarray, mirror: bool | None = None) -> np.ndarray:
        """Class probabilities [x, y, z, K+1] of a preprocessed volume; `predict(images) -> probabilities`."""
        mirror = self.mirror if mirror is None else mirror
        if self.slice_axis is None:
            return sliding_window_predict(predict, image, self.patch, self.unet.num_classes, self.overlap,
                                          self.infer_batch, (0, 1, 2) if mirror else ())
        return slicewise_predict(predict, image, self.slice_axis, self.patch, self.unet.num_classes, self.overlap,
                                 self.infer_batch, (0, 1) if mirror else (), context=self.context)

    def to_json(self) -> dict:
        return config_lib.json_ready(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, data: Mapping) -> "ModelSpec":
        tup = config_lib.tupled
        fields = {k: tup(v) for k, v in data.items()}
        fields["unet"] = UNetConfig(**{k: tup(v) for k, v in data["unet"].items()})
        fields["augment"] = AugmentConfig(**data["augment"])
        return cls(**fields)


def _entry(cfg: config_lib.Config, plan: Plan, kind: str, spatial_dims: int) -> KindPlan:
    """The kind's plan entry, which must be of `spatial_dims` for the builder asking."""
    entry = plan.kind(kind)
    if entry.spatial_dims != spatial_dims:
        raise HeartjaxError(f"config setting {cfg.plan.source(kind, 'spatial_dims')}={entry.spatial_dims} does not "
                            f"fit model kind {kind!r}, whose builder makes a {spatial_dims}D network")
    return entry


def _unet(cfg: config_lib.Config, kind: str, num_classes: int, in_channels: int, entry: KindPlan,
          depth: int) -> UNetConfig:
    unet = UNetConfig(spatial_dims=entry.spatial_dims, in_channels=in_channels, num_classes=num_classes, depth=depth,
                      strides=entry.strides, kernel_sizes=entry.kernels, **config_lib.unet_settings(cfg, kind))
    unet.validate()
    return unet


def build_slices(cfg, plan: Plan, num_classes: int, kind: str, context: int = 1) -> ModelSpec:
    """A 2D network on slices along the plan's slice axis, `context` of them per sample as channels, with the
    patch, batch and stage layout of the kind's plan entry."""
    entry = _entry(cfg, plan, kind, 2)
    aug = dataclasses.replace(cfg.augment, rotation_axes=None,  # a 2D rotation is always in-plane
                              joint_channels=context > 1)
    unet = _unet(cfg, kind, num_classes, context, entry, plan.depth)
    return ModelSpec(kind, unet, tuple(entry.patch), entry.batch, plan.slice_axis, context, aug,
                     config_lib.infer_settings(cfg, kind).batch, cfg.infer.overlap, cfg.infer.mirror,
                     cfg.plan.source(kind, "batch"))


def build_volume(cfg, plan: Plan, num_classes: int, kind: str) -> ModelSpec:
    """A 3D network on patches of the kind's plan entry, applied by sliding window."""
    entry = _entry(cfg, plan, kind, 3)
    unet = _unet(cfg, kind, num_classes, 1, entry, plan.depth)
    return ModelSpec(kind, unet, tuple(entry.patch), entry.batch, None, 1, cfg.augment,
                     config_lib.infer_settings(cfg, kind).batch, cfg.infer.overlap, cfg.infer.mirror,
                     cfg.plan.source(kind, "batch"))


def build_2d(cfg, plan: Plan, num_classes: int) -> ModelSpec:
    return build_slices(cfg, plan, num_classes, "2d")


def build_25d(cfg, plan: Plan, num_classes: int) -> ModelSpec:
    return build_slices(cfg, plan, num_classes, "2.5d", cfg.model_25d.slices)


def build_3d(cfg, plan: Plan, num_classes: int) -> ModelSpec:
    return build_volume(cfg, plan, num_classes, "3d")


# The kinds, by name: a kind is its builder `build(cfg, plan, num_classes) -> ModelSpec` (`build_volume` or
# `build_slices` with the kind's name, for most) and its plan entry. Registering one is one entry
# (`BUILDERS["name"] = build`) plus `plan.kinds.name.*`, from anywhere (a test, a script); everything downstream asks
# the spec.
BUILDERS: dict[str, Callable[..., ModelSpec]] = {"2d": build_2d, "2.5d": build_25d, "3d": build_3d}
assert set(config_lib.KINDS) <= set(BUILDERS)


def check_kinds(cfg: config_lib.Config) -> config_lib.Config:
    """HeartjaxError naming train.models, its value and the known kinds when it names a kind no builder makes."""
    unknown = [k for k in cfg.train.models if k not in BUILDERS]
    if unknown:
        raise HeartjaxError(f"config setting train.models={list(cfg.train.models)!r} is invalid: {unknown[0]!r} is "
                            f"not a model kind; the kinds are {list(BUILDERS)}")
    homeless = [k for k in cfg.train.models if k not in cfg.plan.kinds]
    if homeless:
        raise HeartjaxError(f"config setting train.models={list(cfg.train.models)!r} is invalid: {homeless[0]!r} has "
                            f"no plan entry; add one, e.g. plan.kinds.{homeless[0]}.inherits_from=KIND (plan.kinds: "
                            f"{list(cfg.plan.kinds)})")
    return cfg


def build_spec(cfg: config_lib.Config, plan: Plan, kind: str, num_classes: int) -> ModelSpec:
    """The spec of one kind; checks that its patch fits the network."""
    if kind not in BUILDERS:
        raise HeartjaxError(f"unknown model kind {kind!r}; choose from {list(BUILDERS)} (config setting train.models)")
    spec = BUILDERS[kind](cfg, plan, num_classes)
    spec.unet.check_input(spec.patch)
    return spec
