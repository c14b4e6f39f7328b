"""Model FLOPs of the U-Net, counted from its own convolutions: the numerator of model FLOP utilisation (MFU).

The count needs no device and no compiler, so it is the same on CPUs, GPUs and TPUs (XLA's cost analysis of a
GPU program reports no FLOPs for cuDNN's convolutions, and on the CPU it counts heartjax's "planes" formulation,
which executes extra zero taps). Every convolution is walked with its input shape, kernel, stride and "SAME"
padding; a multiply-add counts 2 FLOPs, and only the multiply-adds whose input voxel lies inside the (unpadded)
input count, as in XLA's own `HloCostAnalysis`. A training step adds the two gradients of each convolution,
each with the forward's multiply-adds: the kernel gradient always, the input gradient except for the first
convolution (the images need none). Deep-supervision heads whose loss weight is 0 are left out, as XLA removes
them. Element-wise work (norms, activations, the loss, the optimiser) is not model FLOPs.

`unet_flops(cfg, batch, patch, train)` is tested against XLA's CPU cost analysis of the same step with
`conv_impl="xla"` (within 2 %).
"""

from __future__ import annotations

import math
from typing import Sequence

from heartjax.model.losses import deep_supervision_weights
from heartjax.model.unet import UNetConfig


def _axis_taps(n: int, k: int, s: int) -> tuple[int, int]:
    """(output size, valid (output, tap) pairs) of a "SAME"-padded axis of size n, kernel k, stride s."""
    out = -(-n // s)
    lo = max((out - 1) * s + k - n, 0) // 2
    valid = sum(1 for o in range(out) for t in range(k) if 0 <= o * s - lo + t < n)
    return out, valid


def conv_macs(spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int], cin: int, cout: int,
              batch: int) -> tuple[int, tuple[int, ...]]:
    """(multiply-adds, output spatial shape) of one "SAME" convolution of [batch, *spatial, cin] to cout."""
    taps = [_axis_taps(n, k, s) for n, k, s in zip(spatial, kernel, strides)]
    return batch * cin * cout * math.prod(v for _, v in taps), tuple(o for o, _ in taps)


def unet_convs(cfg: UNetConfig, batch: int, patch: Sequence[int], train: bool = True) -> list[dict]:
    """Every convolution the U-Net runs on [batch, *patch, in_channels], in execution order: dicts with
    name, macs, and first (True for the one whose input is the image)."""
    feats, strides, kernels = cfg.stage_features(), cfg.stage_strides(), cfg.stage_kernels()
    ones = (1,) * cfg.spatial_dims
    convs, shapes, shape, cin = [], [], tuple(patch), cfg.in_channels

    def add(name, spatial, kernel, stride, c_in, c_out):
        macs, out = conv_macs(spatial, kernel, stride, c_in, c_out, batch)
        convs.append({"name": name, "macs": macs, "first": not convs})
        return out

    for i, f in enumerate(feats):
        shape = add(f"enc{i}.0", shape, kernels[i], strides[i - 1] if i else ones, cin, f)
        shape = add(f"enc{i}.1", shape, kernels[i], ones, f, f)
        shapes.append(shape)
        cin = f
    heads = deep_supervision_weights(cfg.depth)[::-1] if cfg.deep_supervision and train else None
    for j, i in enumerate(reversed(range(cfg.depth))):
        up_kernel = ones if cfg.upsample == "resize" else tuple(strides[i])
        if cfg.upsample == "resize":
            add(f"up{i}", shapes[i + 1], ones, ones, feats[i + 1], feats[i])
        else:  # kernel == stride: each input voxel meets each kernel tap once
            macs = batch * math.prod(shapes[i + 1]) * math.prod(up_kernel) * feats[i + 1] * feats[i]
            convs.append({"name": f"up{i}", "macs": macs, "first": False})
        add(f"dec{i}.0", shapes[i], kernels[i], ones, 2 * feats[i], feats[i])
        add(f"dec{i}.1", shapes[i], kernels[i], ones, feats[i], feats[i])
        if heads is None and i == 0 or heads is not None and float(heads[j]) != 0.0:
            add(f"head{i}", shapes[i], ones, ones, feats[i], cfg.num_classes)
    return convs


def unet_flops(cfg: UNetConfig, batch: int, patch: Sequence[int], train: bool = True) -> float:
    """Model FLOPs of one forward pass (train False) or one training step's forward and backward (train True)
    of the U-Net on a batch of [batch, *patch, in_channels]; see the module docstring for what counts."""
    total = 0
    for c in unet_convs(cfg, batch, patch, train):
        passes = 1 if not train else (2 if c["first"] else 3)
        total += 2 * c["macs"] * passes
    return float(total)
