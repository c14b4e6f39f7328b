"""PyTorch twin of `heartjax.model.unet.UNet`, used only by `python -m experiments.benchmark --compare-torch`.

Built from the same `UNetConfig`: the same stages, widths, kernels, strides, norms, activation, upsampling,
deep-supervision heads and therefore the same parameter count (the benchmark asserts it). The loss is the same
Dice + CE (per-sample soft Dice without background, deep-supervision weights from heartjax.model.losses) and the
optimiser the same SGD-Nesterov or AdamW with gradient-norm clipping. Layout is torch's own NC[D]HW; "SAME"
padding is written as padding k // 2, which gives the same output shapes (the stride-2 windows sit one voxel
apart from XLA's, irrelevant for timing). The learning-rate schedule is left out: one scalar per step.

torch is not a heartjax dependency: `pip install -r requirements-bench.txt` (CPU wheel, pinned).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from heartjax.model.losses import deep_supervision_weights


def _conv_cls(dims: int):
    return nn.Conv3d if dims == 3 else nn.Conv2d


def _norm(cfg, features: int) -> nn.Module:
    """The torch norm layer matching heartjax.model.unet.Norm (affine scale and bias, eps 1e-5)."""
    if cfg.norm == "instance":
        return (nn.InstanceNorm3d if cfg.spatial_dims == 3 else nn.InstanceNorm2d)(features, eps=1e-5, affine=True)
    if cfg.norm == "batch":  # heartjax keeps 0.9 of the old statistics; torch's momentum is the new share
        return (nn.BatchNorm3d if cfg.spatial_dims == 3 else nn.BatchNorm2d)(features, eps=1e-5, momentum=0.1)
    if cfg.norm == "group":
        return nn.GroupNorm(features // min(cfg.group_size, features), features, eps=1e-5)
    return nn.Identity()


class ConvBlock(nn.Module):
    """conv -> norm -> activation (-> dropout while training), as heartjax.model.unet.ConvBlock."""

    def __init__(self, cfg, cin: int, cout: int, kernel, stride=1):
        super().__init__()
        if any(k % 2 == 0 for k in kernel):
            raise ValueError(f"torch twin: even kernel sizes {kernel} have no symmetric padding")
        self.conv = _conv_cls(cfg.spatial_dims)(cin, cout, tuple(kernel), stride=stride,
                                                 padding=tuple(k // 2 for k in kernel), bias=cfg.norm == "none")
        self.norm = _norm(cfg, cout)
        self.act = nn.LeakyReLU(0.01, inplace=True) if cfg.activation == "leaky_relu" else nn.ReLU(inplace=True)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x):
        return self.drop(self.act(self.norm(self.conv(x))))


class Up(nn.Module):
    """resize: 1x1 conv at the coarse resolution, then nearest repeat; transpose: kernel = stride."""

    def __init__(self, cfg, cin: int, cout: int, factor):
        super().__init__()
        self.factor, self.mode = tuple(factor), cfg.upsample
        if self.mode == "resize":
            self.conv = _conv_cls(cfg.spatial_dims)(cin, cout, 1)
        else:
            cls = nn.ConvTranspose3d if cfg.spatial_dims == 3 else nn.ConvTranspose2d
            self.conv = cls(cin, cout, self.factor, stride=self.factor)

    def forward(self, x):
        y = self.conv(x)
        return F.interpolate(y, scale_factor=self.factor, mode="nearest") if self.mode == "resize" else y


class TorchUNet(nn.Module):
    """U-Net for NC[D]HW input; returns logits [B, K, *spatial] (a list, full resolution first, with deep
    supervision in training mode)."""

    def __init__(self, cfg):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        feats, strides, kernels = cfg.stage_features(), cfg.stage_strides(), cfg.stage_kernels()
        enc, cin = [], cfg.in_channels
        for i, f in enumerate(feats):
            stride = strides[i - 1] if i else 1
            enc.append(nn.Sequential(ConvBlock(cfg, cin, f, kernels[i], stride), ConvBlock(cfg, f, f, kernels[i])))
            cin = f
        self.encoder = nn.ModuleList(enc)
        ups, dec, heads = [], [], []
        for i in reversed(range(cfg.depth)):
            ups.append(Up(cfg, feats[i + 1], feats[i], strides[i]))
            dec.append(nn.Sequential(ConvBlock(cfg, 2 * feats[i], feats[i], kernels[i]),
                                     ConvBlock(cfg, feats[i], feats[i], kernels[i])))
            heads.append(_conv_cls(cfg.spatial_dims)(feats[i], cfg.num_classes, 1))
        self.ups, self.decoder = nn.ModuleList(ups), nn.ModuleList(dec)
        self.heads = nn.ModuleList(heads if cfg.deep_supervision else heads[-1:])

    def forward(self, x):
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        skips.pop()
        outs = []
        for j, (up, stage) in enumerate(zip(self.ups, self.decoder)):
            x = stage(torch.cat([skips.pop(), up(x)], dim=1))
            if self.cfg.deep_supervision and self.training:
                outs.append(self.heads[j](x))
        return outs[::-1] if outs else self.heads[-1](x)


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def dice_ce_loss(logits, labels, lambda_dice=1.0, lambda_ce=1.0, include_background=False, batch_dice=False,
                 smooth=1e-5):
    """heartjax.model.losses.dice_ce_loss in torch: logits float [B, K, *spatial], labels int64 [B, *spatial]."""
    probs = logits.float().softmax(1)
    onehot = torch.zeros_like(probs).scatter_(1, labels.unsqueeze(1), 1.0)
    axes = ((0,) if batch_dice else ()) + tuple(range(2, logits.ndim))  # dice: [B, K] or [K]
    intersect, denom = (probs * onehot).sum(axes), probs.sum(axes) + onehot.sum(axes)
    dice = (2.0 * intersect + smooth) / (denom + smooth)
    if not include_background:
        dice = dice[..., 1:]
    return lambda_dice * (1.0 - dice.mean()) + lambda_ce * F.cross_entropy(logits.float(), labels)


def _downsample_labels(labels, spatial):
    """Strided nearest selection, as heartjax.model.losses.downsample_labels."""
    idx = (slice(None),) + tuple(slice((s // t) // 2, None, s // t) for s, t in zip(labels.shape[1:], spatial))
    return labels[idx]


def deep_supervision_loss(outputs, labels, loss_cfg):
    """heartjax.model.losses.deep_supervision_loss of dice_ce_loss with a LossConfig; outputs: logits or a list of
    logits, full resolution first; labels int64 [B, *spatial]."""
    kw = dict(lambda_dice=loss_cfg.lambda_dice, lambda_ce=loss_cfg.lambda_ce,
              include_background=loss_cfg.include_background, batch_dice=loss_cfg.batch_dice)
    if not isinstance(outputs, list):
        return dice_ce_loss(outputs, labels, **kw)
    total = 0.0
    for w, out in zip(deep_supervision_weights(len(outputs)), outputs):
        if float(w) != 0.0:
            total = total + float(w) * dice_ce_loss(out, _downsample_labels(labels, out.shape[2:]), **kw)
    return total


def make_optimizer(model: nn.Module, optim_cfg) -> torch.optim.Optimizer:
    """SGD-Nesterov (coupled weight decay, as optax.add_decayed_weights before sgd) or AdamW (decoupled)."""
    params = model.parameters()
    if optim_cfg.name == "sgd":
        return torch.optim.SGD(params, lr=optim_cfg.lr, momentum=optim_cfg.momentum, nesterov=optim_cfg.nesterov,
                               weight_decay=optim_cfg.weight_decay)
    return torch.optim.AdamW(params, lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay)


def make_train_step(model: TorchUNet, optim_cfg, loss_cfg):
    """Return `step(images [B, C, *spatial] float32, labels [B, *spatial] int64) -> loss` (one optimiser step)."""
    opt = make_optimizer(model, optim_cfg)
    model.train()

    def step(images, labels):
        opt.zero_grad(set_to_none=True)
        loss = deep_supervision_loss(model(images), labels, loss_cfg)
        loss.backward()
        if optim_cfg.clip_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), optim_cfg.clip_norm)
        opt.step()
        return loss.detach()

    return step


def make_forward(model: TorchUNet):
    """Return `forward(images) -> probabilities [B, K, *spatial]` in eval mode without autograd."""

    def forward(images):
        model.eval()
        with torch.inference_mode():
            return model(images).softmax(1)

    return forward


def make_runner(cfg, mode: str, optim_cfg, loss_cfg, images: np.ndarray, labels: np.ndarray, device: str = "cpu",
                seed: int = 0, autocast: str = "float32", compile_mode: str | None = None):
    """The torch side of one benchmark row.

    images float32 [B, *spatial, C] and labels int [B, *spatial] are channels-last numpy arrays, as fed to JAX;
    mode is "train" (one optimiser step per call) or "forward". Returns (run, sorted parameter-tensor sizes);
    run() does one call and waits for the device. autocast "bfloat16" runs each call under torch.autocast (the
    counterpart of the JAX U-Net's bfloat16 compute with float32 parameters). compile_mode (e.g. "default",
    "max-autotune-no-cudagraphs") runs the network through `torch.compile` with that mode (TorchInductor: fused
    C++/OpenMP kernels on the CPU, Triton on GPUs; the forward and, through AOTAutograd, the backward pass; the
    optimiser step stays eager), with static shapes, so the first call compiles.
    """
    torch.manual_seed(seed)
    model = TorchUNet(cfg).to(device)
    sizes = sorted(p.numel() for p in model.parameters())
    if compile_mode is not None:  # static shapes, compiled afresh for each row (one forward code object for all)
        torch._dynamo.reset()
        model = torch.compile(model, mode=compile_mode, dynamic=False)  # shares the wrapped module's parameters
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(images, -1, 1))).to(device)
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
    forward = make_forward(model) if mode == "forward" else None
    step = make_train_step(model, optim_cfg, loss_cfg) if mode == "train" else None

    def run():
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast == "bfloat16"):
            out = forward(x) if forward is not None else step(x, y)
        if device != "cpu":
            torch.cuda.synchronize()
        return out

    return run, sizes
