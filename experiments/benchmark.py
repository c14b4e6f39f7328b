"""Throughput probe of the U-Net train steps and forward passes, optionally side by side with PyTorch.

Every row is timed after compilation and one warm-up call, `--repeats` times, each call ended by
block_until_ready; the table shows the median and the spread (min-max). Train rows time the jitted step
WITHOUT augmentation (`jax_s`: the work PyTorch does too; its loaders augment on the host), and additionally
the step with the on-device augmentation and the jitted augment_batch alone on the same batch. FLOPs per call
are the network's own (model FLOPs): counted from its convolutions by heartjax.model.flops (`gflop`, the same
on every backend; what the CPU formulation executes, ~5 % more in 3D, is XLA's cost analysis of the compiled
step, `gflop_executed`); GFLOP/s and the share of the machine's float32 matmul peak (a 4096^2 jnp.dot, measured
before and after the rows; the better median) follow from them. With
--compare-torch the same network (experiments/torch_unet.py, parameter tensors asserted equal) is timed in the
same run, alternating JAX and PyTorch calls, and `ratio` = jax_s / torch_s (> 1: JAX is slower). The torch
rows reuse JAX's FLOP count. --torch-compile MODE (implies --compare-torch) times a third side, the same
PyTorch network through `torch.compile(model, mode=MODE)` (`torchc_*`, `ratio_compiled` = jax_s / torchc_s;
its first call, the compilation, is `torchc_compile_s`). --sizes tiny (or --quick; a smoke test) shrinks every
network and batch; its numbers mean nothing.

--dtypes and --upsamples repeat every row per compute dtype (bfloat16 activations and convolutions with
float32 parameters; PyTorch under autocast; rated against a bfloat16 matmul peak measured in the same run) and
per decoder upsampling (1x1 conv + repeat, or a transposed conv); the float32 + resize rows keep their names.
On a GPU: `python -m experiments.benchmark --dtypes float32,bfloat16 --upsamples resize,transpose --json F`.

Rows: `*_ref` is a fixed reference network (features 16-32-64-128, instance norm, ReLU, no deep supervision,
SGD); `*_default` follows the default preset (heartjax.experiment.config("default"): widths, depth, batch,
patch). Every network's model.conv_impl is --conv-impl (default: the preset's).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import math
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench_common import (compile_all, fmt_ms, format_table, init_train_state, loadavg,
                                      machine_info, matmul_peak, timed)
from heartjax.common import cli
from heartjax import config as config_lib
from heartjax import experiment
from heartjax.common.atomic import write_json
from heartjax.model.augment import AugmentConfig, augment_batch, identity_config, make_augment
from heartjax.common.errors import HeartjaxError
from heartjax.train.step import LossConfig, OptimConfig, make_optimizer, make_predict_fn, make_train_step
from heartjax.model.flops import unet_flops
from heartjax.model.unet import UNetConfig, count_params

TORCH_HINT = ("--compare-torch needs PyTorch, which heartjax itself does not use. Install the pinned CPU build "
              "into this environment with:\n    pip install -r requirements-bench.txt")
ROW_NAMES = ("train3d_ref", "forward3d_ref", "train2d_ref", "forward2d_ref", "train3d_default", "train2d_default")
FALLBACK_PATCH = {3: (64, 64, 64), 2: (112, 112)}
NUM_CLASSES = 8  # MM-WHS: background + 7 structures


@dataclasses.dataclass(frozen=True)
class Row:
    """One benchmark row: a network, a batch shape and what is timed ("train" step or eval "forward")."""

    name: str
    mode: str
    model: UNetConfig
    batch: int
    patch: tuple[int, ...]
    optim: OptimConfig
    loss: LossConfig
    augment: AugmentConfig
    note: str = ""


DTYPES = ("float32", "bfloat16")
UPSAMPLE_VARIANTS = ("resize", "transpose")


def variant_rows(rows: list[Row], dtypes=("float32",), upsamples=("resize",)) -> list[Row]:
    """Each row once per (compute dtype, upsampling) pair. The float32 + resize row keeps its name (the names
    results are compared by across commits); the others get ".bf16" and/or ".transpose" appended."""
    out = []
    for row in rows:
        for dtype in dtypes:
            for up in upsamples:
                suffix = (".bf16" if dtype == "bfloat16" else "") + (".transpose" if up == "transpose" else "")
                model = dataclasses.replace(row.model, dtype=dtype, upsample=up)
                out.append(dataclasses.replace(row, name=row.name + suffix, model=model))
    return out


def make_rows(sizes, quick: bool = False, conv_impl: str | None = None) -> list[Row]:
    """The rows of the requested size groups ("ref", "default").

    `quick` (a smoke test, compile-bound) shrinks every network to depth 1 and width 4-8, every batch to
    1-2 small patches, and the augmentation to noise + mirroring, which compile in a fraction of the time.
    `conv_impl` (heartjax.conv.IMPLS) is every network's model.conv_impl; None: the default preset's.
    """
    cfg = experiment.config("default")
    aug, rows = cfg.augment, []
    tiny = dict(features=4, max_features=8, depth=1) if quick else {}
    if quick:
        aug = dataclasses.replace(identity_config(), noise_p=0.1, mirror_p=0.5)
    if "ref" in sizes:
        ref = UNetConfig(spatial_dims=3, in_channels=1, num_classes=NUM_CLASSES, features=16, depth=3, growth=2,
                         max_features=128, norm="instance", activation="relu", upsample="resize",
                         deep_supervision=False, conv_impl=conv_impl or cfg.model.conv_impl)
        ref = dataclasses.replace(ref, **tiny)
        sgd = OptimConfig(name="sgd", lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5, clip_norm=12.0)
        shapes = ({3: (1, (16,) * 3, 1, (16,) * 3), 2: (2, (32, 32), 2, (32, 32))} if quick else
                  {3: (2, (64,) * 3, 1, (96,) * 3), 2: (32, (128, 128), 32, (128, 128))})
        for dims in (3, 2):
            model, (tb, tp, fb, fp) = dataclasses.replace(ref, spatial_dims=dims), shapes[dims]
            rows.append(Row(f"train{dims}d_ref", "train", model, tb, tp, sgd, LossConfig(), aug))
            rows.append(Row(f"forward{dims}d_ref", "forward", model, fb, fp, sgd, LossConfig(), aug,
                            "a sliding-window tile" if dims == 3 else ""))
    if "default" in sizes:
        for dims in (3, 2):
            kind = f"{dims}d"
            m = config_lib.unet_settings(cfg, kind)  # with the kind's model.conv_impl
            m["conv_impl"] = conv_impl or m["conv_impl"]
            model = UNetConfig(spatial_dims=dims, in_channels=1, num_classes=NUM_CLASSES, depth=cfg.plan.depth, **m)
            patch, batch = cfg.plan.entry(kind).patch, cfg.plan.entry(kind).batch
            notes = ["isotropic strides (the data's plan may make them anisotropic)"]
            if patch is None:
                patch = FALLBACK_PATCH[dims]
                notes.append(f"{cfg.plan.source(kind, 'patch')} is None in the default preset (derived from the data): "
                             f"used {patch}")
            if quick:
                model, patch, batch = dataclasses.replace(model, **tiny), (16,) * 3 if dims == 3 else (32, 32), 2
                notes = ["--sizes tiny: shrunken"]
            rows.append(Row(f"train{kind}_default", "train", model, batch, tuple(patch), cfg.optim, cfg.loss, aug,
                            "; ".join(notes)))
    return rows


class JaxRow:
    """The jitted functions of one row and closures that run them once each (state threaded, donated)."""

    def __init__(self, row: Row, images: np.ndarray, labels: np.ndarray, seed: int = 0, parallel: bool = False):
        row.model.check_input(row.patch)
        tx = make_optimizer(row.optim)
        graphdef, self.state = init_train_state(row.model, tx, seed)
        self.params = count_params(self.state["params"])
        self.param_sizes = sorted(x.size for x in jax.tree.leaves(self.state["params"]))
        self.key = jax.random.key(seed)
        self.images, self.labels = jnp.asarray(images), jnp.asarray(labels)
        batch, labels32 = (self.images, self.labels), self.labels.astype(jnp.int32)
        if row.mode == "forward":
            jobs = {"main": (make_predict_fn(graphdef), (self.state, self.images))}
        else:
            augment_fn = make_augment(row.augment, row.model.spatial_dims)
            plain, with_aug = (make_train_step(graphdef, tx, fn, row.loss, row.optim) for fn in (None, augment_fn))
            jobs = {"main": (plain, (self.state, batch, self.key)), "aug": (with_aug, (self.state, batch, self.key)),
                    "augment": (jax.jit(functools.partial(augment_batch, augment_fn)),
                                (self.key, self.images, labels32))}

        self.model_flops = unet_flops(row.model, row.batch, row.patch, train=row.mode == "train")
        done = compile_all(jobs, parallel)
        fns = {name: c[0] for name, c in done.items()}
        self.compile_s, self.flops = {name: c[1] for name, c in done.items()}, done["main"][2]
        if row.mode == "forward":
            self.runs = {"jax": lambda: fns["main"](self.state, self.images)}
        else:
            self.runs = {"jax": lambda: self._step(fns["main"], batch),
                         "jax_aug": lambda: self._step(fns["aug"], batch),
                         "augment": lambda: fns["augment"](self.key, self.images, labels32)}

    def _step(self, step, batch):
        """One train step; the donated state is replaced by the new one."""
        self.state, metrics = step(self.state, batch, self.key)
        return self.state, metrics


def run_row(row: Row, repeats: int, torch_device: str | None, seed: int = 0, parallel: bool = False,
            torch_compile: str | None = None) -> dict:
    """Compile, warm up and time one row; JAX and PyTorch calls alternate within each repeat (and the
    torch.compile side, with `torch_compile` a mode)."""
    rng = np.random.default_rng(seed)
    shape = (row.batch, *row.patch)
    images = rng.standard_normal((*shape, row.model.in_channels), dtype=np.float32)
    labels = rng.integers(0, row.model.num_classes, shape, dtype=np.uint8)
    jr = JaxRow(row, images, labels, seed, parallel)
    runs = dict(jr.runs)
    if torch_device is not None:
        from experiments import torch_unet  # imported only here: torch is optional

        run_torch, sizes = torch_unet.make_runner(row.model, row.mode, row.optim, row.loss, images, labels,
                                                  torch_device, seed, autocast=row.model.dtype)
        if sizes != jr.param_sizes:  # the same tensors, not only the same total
            raise AssertionError(f"{row.name}: the torch twin has {sum(sizes)} parameters in {len(sizes)} tensors, "
                                 f"the JAX U-Net {jr.params} in {len(jr.param_sizes)}")
        runs = {"jax": runs.pop("jax"), "torch": run_torch, **runs}
        if torch_compile is not None:
            runs["torchc"] = torch_unet.make_runner(row.model, row.mode, row.optim, row.loss, images, labels,
                                                    torch_device, seed, autocast=row.model.dtype,
                                                    compile_mode=torch_compile)[0]
    first = {}
    for k, fn in runs.items():  # warm-up: first-call allocations, thread pools, oneDNN caches, torch.compile
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        first[k] = time.perf_counter() - t0
    if "torchc" in runs:
        jax.block_until_ready(runs["torchc"]())  # a recompilation after the first call's guards, if any
    times = {k: [] for k in runs}
    for r in range(repeats):  # JAX first in even repeats, PyTorch first in odd ones
        order = list(runs) if r % 2 == 0 else ["torch", "jax"] + [k for k in runs if k not in ("jax", "torch")]
        for k in (k for k in order if k in runs):
            times[k].append(timed(runs[k]))
    gflop, voxels = jr.model_flops / 1e9, row.batch * math.prod(row.patch)
    m = row.model
    out = {"name": row.name, "mode": row.mode, "spatial_dims": m.spatial_dims, "batch": row.batch,
           "patch": list(row.patch), "features": m.stage_features(), "deep_supervision": m.deep_supervision,
           "norm": m.norm, "activation": m.activation, "dtype": m.dtype, "upsample": m.upsample,
           "params": jr.params, "voxels": voxels, "gflop": gflop, "gflop_executed": jr.flops / 1e9,
           "optimizer": row.optim.name if row.mode == "train" else None, "repeats": repeats, "note": row.note}
    for k, ts in times.items():  # median and spread
        out.update({f"{k}_s": statistics.median(ts), f"{k}_min_s": min(ts), f"{k}_max_s": max(ts)})
    out["jax_compile_s"] = jr.compile_s["main"]
    for k in ("torch_s", "torch_min_s", "torch_max_s", "torchc_s", "torchc_min_s", "torchc_max_s"):
        out.setdefault(k, None)
    for side in ("jax", "torch", "torchc"):
        s = out.get(f"{side}_s")
        out[f"{side}_gflops"], out[f"{side}_voxels_per_s"] = (gflop / s, voxels / s) if s else (None, None)
    out["ratio"] = out["jax_s"] / out["torch_s"] if out["torch_s"] else None
    out["ratio_compiled"] = out["jax_s"] / out["torchc_s"] if out["torchc_s"] else None
    out["torchc_compile_s"], out["torch_compile_mode"] = first.get("torchc"), torch_compile
    if row.mode == "train":
        out["jax_aug_compile_s"], out["augment_compile_s"] = jr.compile_s["aug"], jr.compile_s["augment"]
        out["augment_share"] = out["augment_s"] / out["jax_aug_s"]  # augment_batch alone / step with it
        out["augment_overhead"] = (out["jax_aug_s"] - out["jax_s"]) / out["jax_aug_s"]
    del jr, runs
    gc.collect()
    return out


SIZES = ("full", "tiny")  # as experiments.bench_gpu: each row's own sizes, or tiny ones (a smoke test)
EXAMPLE = """python -m experiments.benchmark --quick                        # a smoke test: tiny rows, 1 repeat
python -m experiments.benchmark --rows ref --compare-torch --json bench.json
python -m experiments.benchmark --dtypes float32,bfloat16 --upsamples resize,transpose --json gpu.json"""


def _sizes(text: str) -> str:
    if text in ("ref", "default") or "," in text:
        raise argparse.ArgumentTypeError(f"{text!r}: --sizes is the network and batch sizes (full or tiny, as in "
                                         f"experiments.bench_gpu); the row groups are --rows, e.g. --rows {text}")
    if text not in SIZES:
        raise argparse.ArgumentTypeError(f"{text!r}: choose one of {', '.join(SIZES)}")
    return text


def parse_args(argv):
    """The command line, validated (argparse exits 2 on a bad value)."""
    p = cli.parser("python -m experiments.benchmark", __doc__, EXAMPLE)
    p.add_argument("--rows", type=cli.choice_list(("ref", "default")), default="ref,default",
                   help="comma list of row groups: ref (the fixed reference network), default (the default preset's)")
    p.add_argument("--sizes", type=_sizes, default="full", metavar="{full,tiny}",
                   help="network and batch sizes: full (each row's own) or tiny (a smoke test; its numbers mean "
                        "nothing)")
    p.add_argument("--quick", dest="sizes", action="store_const", const="tiny", default=argparse.SUPPRESS,
                   help="the same as --sizes tiny")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 5; tiny: 1)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON")
    p.add_argument("--compare-torch", action="store_true", help="time the same network in PyTorch, alternating")
    p.add_argument("--torch-compile", default=None, metavar="MODE",
                   help="also time it through torch.compile(model, mode=MODE), e.g. default or max-autotune-no-cudagraphs "
                        "(implies --compare-torch)")
    p.add_argument("--conv-impl", default=None, metavar="NAME",
                   help="model.conv_impl of every network, one of heartjax.conv.IMPLS (default: the default "
                        "preset's). XLA options apply through XLA_FLAGS and are recorded in the report")
    p.add_argument("--dtypes", type=cli.choice_list(DTYPES), default="float32",
                   help="comma list of compute dtypes: float32, bfloat16 (bfloat16 rows get '.bf16' appended, are "
                        "rated against a bfloat16 matmul peak, and PyTorch runs them under autocast)")
    p.add_argument("--upsamples", type=cli.choice_list(UPSAMPLE_VARIANTS), default="resize",
                   help="comma list of decoder upsamplings: resize (1x1 conv + repeat), transpose (transposed "
                        "conv; rows get '.transpose' appended)")
    args = p.parse_args(argv)
    args.quick = args.sizes == "tiny"
    args.repeats = args.repeats if args.repeats is not None else (1 if args.quick else 5)
    args.compare_torch = args.compare_torch or args.torch_compile is not None
    if args.repeats < 1:
        p.error(f"--repeats {args.repeats}: needs at least 1")
    return args


def main(argv=None) -> int:
    """Run the benchmark; returns the exit status (2: --compare-torch without torch, or an unknown --conv-impl)."""
    args = parse_args(argv)
    torch_device = None
    if args.compare_torch:
        try:
            import torch
        except ImportError:
            print(TORCH_HINT, file=sys.stderr)
            return 2
        torch.set_num_threads(os.cpu_count())
        torch_device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    impl = args.conv_impl or experiment.config("default").model.conv_impl
    try:
        UNetConfig(conv_impl=impl).validate()
    except HeartjaxError as e:
        print(f"error: --conv-impl: {e}", file=sys.stderr)
        return 2
    machine = machine_info(impl)
    if torch_device is not None:
        machine.update({"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                        "torch_device": torch_device})
    n = 512 if args.quick else 4096
    start = matmul_peak(n, max(args.repeats, 3))
    print(f"{machine['cpu']} ({machine['cores']} cores), jax {machine['jax']} on {machine['backend']} "
          f"({machine['device_kind']}), conv impl {impl}; load {machine['loadavg_start']}; "
          f"float32 matmul {n}^2: {start['gflops']:.1f} GFLOP/s", flush=True)
    bf16 = "bfloat16" in args.dtypes
    start_bf16 = matmul_peak(n, max(args.repeats, 3), "bfloat16") if bf16 else None
    if bf16:
        print(f"bfloat16 matmul {n}^2: {start_bf16['gflops']:.1f} GFLOP/s", flush=True)
    rows = []
    for row in variant_rows(make_rows(args.rows, args.quick, impl), args.dtypes, args.upsamples):
        rows.append(run_row(row, args.repeats, torch_device, parallel=args.quick, torch_compile=args.torch_compile))
        r = rows[-1]
        print(f"  {r['name']}: jax {fmt_ms(r['jax_s'])} ms" + (f", torch {fmt_ms(r['torch_s'])} ms"
              if r["torch_s"] else "") + (f", torch.compile {fmt_ms(r['torchc_s'])} ms" if r["torchc_s"] else ""),
              flush=True)
    machine["loadavg_end"] = loadavg()
    # Measured before and after the rows: on a shared machine the better median is the closer to the peak.
    end = matmul_peak(n, max(args.repeats, 3))
    peak = max(start["gflops"], end["gflops"])
    end_bf16 = matmul_peak(n, max(args.repeats, 3), "bfloat16") if bf16 else None
    peak_bf16 = max(start_bf16["gflops"], end_bf16["gflops"]) if bf16 else None
    for r in rows:
        row_peak = peak_bf16 if r["dtype"] == "bfloat16" else peak
        for side in ("jax", "torch", "torchc"):
            r[f"{side}_peak_share"] = r[f"{side}_gflops"] / row_peak if r[f"{side}_gflops"] else None
    report = {"machine": machine, "peak_matmul_gflops": peak, "peak_matmul": {"start": start, "end": end},
              "rows": rows}
    if bf16:
        report.update({"peak_matmul_gflops_bf16": peak_bf16,
                       "peak_matmul_bf16": {"start": start_bf16, "end": end_bf16}})
    print(format_table(report))
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
