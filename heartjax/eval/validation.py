"""Validation during training, on fixed patches of the validation patients: what `EvalHook` logs.

`make_val_fn` returns `val_fn(state) -> {"dice", "dice/<name>", "hd95/<name>", "loss", "overlay"}`:

- Dice per structure from the voxel counts pooled over all patches (nnU-Net's pseudo-Dice); "dice" is their mean
  and picks the best step (through its EMA).
- HD95 per structure in mm (on the plan's working grid), the mean over the patches where the structure is in the
  reference or the prediction (a patch missing it on one side scores the patch diagonal).
- The validation loss: the training objective (Dice + CE, the same deep-supervision weights) on the same patches
  with the network in eval mode. Computed on the side: it draws no random numbers and changes no training state.
- A readable overlay of one watched patch (TensorBoard image `val/overlay`).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import numpy as np
from flax import nnx

from heartjax import conv as conv_lib
from heartjax.common import rng
from heartjax.eval.figures import overlay_contours, readable_overlay
from heartjax.eval.metrics import add_counts, case_metrics, confusion_counts
from heartjax.eval.surface import surface_metrics
from heartjax.model import losses


def make_loss_fn(graphdef, loss_cfg, parallel=None) -> Callable:
    """`loss(weights, images, labels) -> float32 scalar`: the training loss in eval mode (no dropout, running
    statistics), deep-supervision outputs weighted as in `heartjax.train.step.make_train_step`; jitted."""
    loss_fn = functools.partial(losses.dice_ce_loss, lambda_dice=loss_cfg.lambda_dice, lambda_ce=loss_cfg.lambda_ce,
                                batch_dice=loss_cfg.batch_dice, include_background=loss_cfg.include_background)

    def loss(state, images, labels):
        model = nnx.merge(graphdef, state["params"], state["rest"])
        return losses.deep_supervision_loss(model(images, train=False, all_outputs=True), labels, loss_fn)

    if parallel is None:
        return jax.jit(loss, compiler_options=conv_lib.compiler_options())
    jitted = jax.jit(loss, compiler_options=conv_lib.compiler_options(),
                     in_shardings=(parallel.replicated,) * 3, out_shardings=parallel.replicated)
    return lambda state, images, labels: jitted(state, *parallel.replicate((images, labels)))


def patch_spacing(plan, slice_axis: int | None) -> tuple[float, ...]:
    """Voxel size in mm of a training patch: the plan's working spacing, without the slice axis for 2D patches."""
    spacing = tuple(float(s) for s in plan.target_spacing)
    return spacing if slice_axis is None else tuple(s for a, s in enumerate(spacing) if a != slice_axis)


def _hd95(preds: list[np.ndarray], labels: list[np.ndarray], spacing, k: int) -> np.ndarray:
    """Mean over patches of each structure's HD95 (NaN where no patch has the structure on either side)."""
    values = np.array([surface_metrics(p, t, spacing, k)["hd95"] for p, t in zip(preds, labels)])
    with np.errstate(invalid="ignore"):
        counts = np.isfinite(values).sum(0)
        return np.where(counts > 0, np.nansum(values, 0) / np.maximum(counts, 1), np.nan)


def make_val_fn(spec, predict: Callable, cases, cfg, names: Sequence[str], spacing: Sequence[float] | None = None,
                loss_fn: Callable | None = None) -> Callable:
    """Validation on fixed patches of the validation patients (see the module docstring): state -> metrics.

    The patches come from `data.seed`'s "val/KIND" stream and the inference batch, so validation shares the
    compiled predict function with whole-volume inference. `spacing`: the patches' voxel size (HD95 is left out
    without it); `loss_fn`: from `make_loss_fn` (the loss is left out without it).
    """
    sampler = spec.sampler(cases, rng.seed_for(cfg.data.seed, f"val/{spec.name}"), 0.5, batch=spec.infer_batch)
    batches = [sampler.batch(i) for i in range(max(1, cfg.train.val_patches // spec.infer_batch))]
    k = len(names) + 1
    watch = int(np.argmax([(lbl > 0).sum() for lbl in batches[0][1]]))  # the first batch's most-foreground sample

    def val_fn(state):
        total, overlay, preds, loss = None, None, [], []
        for i, (img, lbl) in enumerate(batches):
            pred = np.asarray(predict(state, img)).argmax(-1)
            c = jax.device_get(confusion_counts(pred, lbl.astype(np.int32), k))
            total = c if total is None else add_counts(total, c)
            preds += list(pred)
            if loss_fn is not None:
                loss.append(float(loss_fn(state, img, lbl.astype(np.int32))))
            if i == 0:
                overlay = readable_overlay(watch_overlay(img[watch], lbl[watch], pred[watch], k), names)
        m = case_metrics(total, names)
        dice = [v for v in m["dice"].values() if np.isfinite(v)]
        out = {"dice": float(np.mean(dice)) if dice else 0.0, **{f"dice/{n}": v for n, v in m["dice"].items()}}
        if spacing is not None:
            hd = _hd95(preds, [lbl for _, labels in batches for lbl in labels], spacing, k)
            out.update({f"hd95/{n}": float(v) for n, v in zip(names, hd)})
        if loss:
            out["loss"] = float(np.mean(loss))
        return {**out, "overlay": overlay}

    return val_fn


def watch_overlay(image, label, pred, num_classes: int) -> np.ndarray:
    """The validation sample TensorBoard watches: its centre slice (3D patches: along the last axis; several input
    channels: the centre one) with the reference and the prediction as contours, at the patch's own size, turned
    to radiological display (heartjax.eval.figures.orthogonal_slices)."""
    image, label, pred = np.asarray(image), np.asarray(label), np.asarray(pred)
    image = image[..., image.shape[-1] // 2]
    if label.ndim == 3:
        mid = label.shape[2] // 2
        image, label, pred = image[:, :, mid], label[:, :, mid], pred[:, :, mid]
    image, label, pred = (a[::-1, ::-1].T for a in (image, label, pred))
    return overlay_contours(image, label.astype(np.int32), pred.astype(np.int32), num_classes)
