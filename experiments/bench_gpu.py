"""Train-step speed at the `full` preset's sizes, JAX against the same network in PyTorch: `python -m
experiments.bench_gpu`.

For a machine with accelerators (it runs anywhere; `--sizes tiny`, or `--quick`, is the CPU check the tests use). Builds the 2D
and 3D models exactly as `experiment.run` would with the `full` preset (widths 32-320/512, depth 5, SGD, deep
supervision, data parallel over every device of the machine) on a synthetic plan of isotropic 1 mm patches
(3D 2 x 128^3, 2D 12 x 512^2), and times the jitted train step on device-resident batches (median of --steps
after 2 warm-ups). A row is a kind and a compute dtype (`--rows 3d:bfloat16,2d:bfloat16,...`, in that order).

Per row: step time, steps/s, voxels/s, peak device memory, model GFLOP (counted from the network's own
convolutions by heartjax.model.flops: the same on every backend), TFLOP/s and MFU: model FLOP/s over the
device's peak for the row's dtype (dense tensor-core rates from the vendors' data sheets, `PEAKS`, float32 as
TF32; a matrix product measured here for devices not in the table, or --peak-tflops).

--compare-torch times the PyTorch twin (experiments/torch_unet.py, parameter tensors asserted equal) in the same
run, alternating with JAX step by step: eager, and with --torch-compile MODE also through `torch.compile`; a
bfloat16 row runs PyTorch under bfloat16 autocast, a float32 row without. Ratios are JAX / PyTorch (> 1: JAX is
slower). The step is timed without augmentation, as the twin has none; --augment adds a column with the
preset's augmentation inside the JAX step.

--export-stablehlo DIR writes each row's train step as StableHLO text (`train3d_bfloat16.mlir`, ...) for
--platform cuda|rocm|tpu|cpu (default: this machine's) without needing that device: how to read the program an
accelerator would run from a laptop. --hlo DIR writes each row's compiled, optimised HLO for this machine.

"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import re
import statistics
import sys
import time

import jax
import numpy as np

from experiments.bench_common import init_train_state, machine_info, matmul_peak, timed
from heartjax import experiment
from heartjax.common import atomic, cli, rng
from heartjax.experiment import specs
from heartjax.config.presets import PLAN_KINDS
from heartjax.data.plan import KindPlan, Plan, stage_layout
from heartjax.model.augment import make_augment
from heartjax.model.flops import unet_flops
from heartjax.train.parallel import DataParallel, report_devices
from heartjax.train.step import create_train_state, make_optimizer, make_train_step

PEAKS = {  # device_kind substring -> dense peak TFLOP/s per chip (bfloat16, float32 as TF32)
    "H200": {"bfloat16": 989.0, "float32": 494.0},
    "H100": {"bfloat16": 989.0, "float32": 494.0},  # SXM; the PCIe card is lower, pass --peak-tflops
    "A100": {"bfloat16": 312.0, "float32": 156.0},
    "L4": {"bfloat16": 121.0, "float32": 60.0},
    "TPU v5 lite": {"bfloat16": 197.0, "float32": 197.0},
    "TPU v4": {"bfloat16": 275.0, "float32": 275.0},
}
SIZES = {"full": {"kinds": {"3d": ((128, 128, 128), 2), "2d": ((512, 512), 12)}, "depth": 5, "overrides": []},
         "tiny": {"kinds": {"3d": ((16, 16, 16), 2), "2d": ((32, 32), 4)}, "depth": 2,
                  "overrides": ["model.features=4", "model.max_features=8", "model_2d.features=4",
                                "model_2d.max_features=8"]}}
DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float32": "float32", "f32": "float32"}
PLATFORMS = ("cuda", "rocm", "tpu", "cpu")


def plan_for(size: dict, devices: int) -> Plan:
    """A plan of isotropic 1 mm patches; batches rounded up to a multiple of the device count. Kinds that inherit
    from one of `size`'s kinds by default (2.5d from 2d) take its entry."""
    up = lambda b: -(-b // devices) * devices
    kinds = {}
    for kind, (patch, batch) in size["kinds"].items():
        dims = len(patch)
        strides, kernels = stage_layout((1.0,) * dims, patch, size["depth"])
        kinds[kind] = KindPlan(dims, (1.0,) * dims, tuple(patch), up(batch), strides, kernels)
    for kind, entry in PLAN_KINDS.items():
        parent = entry.get("inherits_from")
        if kind not in kinds and parent in kinds:
            kinds[kind] = dataclasses.replace(kinds[parent], inherits_from=parent)
    return Plan((1.0, 1.0, 1.0), "ct", "ct", (-100.0, 300.0), 50.0, 80.0, 2, size["depth"], kinds)


def parse_rows(text: str) -> list[tuple[str, str]]:
    """"3d:bfloat16,2d:f32" -> [("3d", "bfloat16"), ("2d", "float32")]; an error names a bad entry."""
    rows = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        kind, _, dtype = item.partition(":")
        if kind not in ("2d", "3d") or dtype not in DTYPES:
            raise SystemExit(f"bench_gpu: --rows entry {item!r} must be KIND:DTYPE with KIND 2d or 3d and DTYPE one of "
                             f"{', '.join(DTYPES)} (e.g. 3d:bfloat16)")
        rows.append((kind, DTYPES[dtype]))
    return rows


def peak_tflops(dtype: str, override: float | None) -> tuple[float, str]:
    """The compute peak to rate against, and where it comes from."""
    if override:
        return override, "--peak-tflops"
    kind = jax.devices()[0].device_kind
    for name, peaks in PEAKS.items():
        if name in kind:
            return peaks[dtype] * jax.device_count(), f"data sheet ({name}) x {jax.device_count()}"
    measured = matmul_peak(1024 if jax.default_backend() != "cpu" else 512, 5, dtype)["gflops"] / 1e3
    return measured * jax.device_count(), "measured matrix product"


def row_setup(kind: str, dtype: str, sizes: str, devices: int, conv_impl: str | None = None):
    """(config, ModelSpec) of one row: the `full` preset's network for `kind` in `dtype` at `sizes`."""
    size = SIZES[sizes]
    extra = [f"model.conv_impl={conv_impl}"] if conv_impl else []
    cfg = experiment.config("full", overrides=[f"model.dtype={dtype}", *size["overrides"], *extra])
    return cfg, specs.build_spec(cfg, plan_for(size, devices), kind, 8)


def export_stablehlo(kind: str, dtype: str, sizes: str, platform: str) -> str:
    """The StableHLO text of one row's train step (no augmentation) exported for `platform`, traced here with
    abstract values (no device of that platform, no parameters drawn). Off the CPU the convolutions are XLA's
    own (`conv_impl="xla"`), as "auto" chooses there."""
    cfg, spec = row_setup(kind, dtype, sizes, 1, None if platform == "cpu" else "xla")
    tx = make_optimizer(cfg.optim)
    graphdef, state = jax.eval_shape(lambda: create_train_state(spec.unet, tx, 0, 1000))
    step = make_train_step(graphdef, tx, None, cfg.loss, cfg.optim)
    images = jax.ShapeDtypeStruct((spec.batch, *spec.patch, spec.context), np.float32)
    labels = jax.ShapeDtypeStruct((spec.batch, *spec.patch), np.uint8)
    key = jax.eval_shape(lambda: rng.key(0, "bench"))
    return jax.export.export(step, platforms=[platform])(state, (images, labels), key).mlir_module()


def conv_dtypes(mlir: str) -> collections.Counter:
    """Count the StableHLO convolutions of `mlir` by "input x kernel -> result" element types, e.g.
    {"bf16 x bf16 -> bf16": 38}."""
    sig = re.compile(r": \(tensor<[^>]*x(\w+)>, tensor<[^>]*x(\w+)>\) -> tensor<[^>]*x(\w+)>")
    found = (sig.search(line) for line in mlir.splitlines() if "stablehlo.convolution" in line)
    return collections.Counter(f"{m[1]} x {m[2]} -> {m[3]}" for m in found if m)


class JaxSide:
    """The compiled JAX train step of one row, with its state threaded through the calls (donated)."""

    def __init__(self, kind: str, dtype: str, sizes: str, augment: bool):
        self.dp = DataParallel.create()
        self.cfg, self.spec = row_setup(kind, dtype, sizes, self.dp.size)
        spec, tx = self.spec, make_optimizer(self.cfg.optim)
        graphdef, state = init_train_state(spec.unet, tx, 0)
        self.param_sizes = sorted(x.size for x in jax.tree.leaves(state["params"]))
        self.state = self.dp.replicate(state)
        data = np.random.default_rng(0)
        self.images = data.normal(size=(spec.batch, *spec.patch, spec.context)).astype(np.float32)
        self.labels = data.integers(0, spec.unet.num_classes, size=(spec.batch, *spec.patch)).astype(np.uint8)
        self.batch = (self.dp.spread(self.images), self.dp.spread(self.labels))
        self.key = self.dp.replicate(rng.key(0, "bench"))
        self.compiled, self.compile_s = {}, {}
        variants = {"plain": None, **({"aug": make_augment(spec.augment, spec.spatial_dims)} if augment else {})}
        for name, aug_fn in variants.items():
            t0 = time.perf_counter()
            step = make_train_step(graphdef, tx, aug_fn, self.cfg.loss, self.cfg.optim, self.dp)
            self.compiled[name] = step.lower(self.state, self.batch, self.key).compile()
            self.compile_s[name] = time.perf_counter() - t0

    def run(self, name: str = "plain"):
        """One step; returns its metrics (the state is replaced by the new one)."""
        self.state, metrics = self.compiled[name](self.state, self.batch, self.key)
        return metrics


def torch_sides(side: JaxSide, compile_mode: str | None) -> dict:
    """{"torch": run, ["torchc": run]}: the PyTorch twin of the row, eager and compiled."""
    import torch

    from experiments import torch_unet  # torch is optional: imported only for --compare-torch

    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    spec, cfg = side.spec, side.cfg
    args = (spec.unet, "train", cfg.optim, cfg.loss, side.images, side.labels, device, 0)
    run, sizes = torch_unet.make_runner(*args, autocast=spec.unet.dtype)
    if sizes != side.param_sizes:
        raise AssertionError(f"the torch twin has {sum(sizes)} parameters in {len(sizes)} tensors, the JAX U-Net "
                             f"{sum(side.param_sizes)} in {len(side.param_sizes)}")
    sides = {"torch": run}
    if compile_mode:
        sides["torchc"] = torch_unet.make_runner(*args, autocast=spec.unet.dtype, compile_mode=compile_mode)[0]
    return sides


def time_row(kind, dtype, args) -> dict:
    """Compile, warm up and time one row (JAX and PyTorch alternating); returns the row's record."""
    side = JaxSide(kind, dtype, args.sizes, args.augment)
    runs = {name: (lambda n=name: side.run(n)) for name in side.compiled}
    runs["jax"] = runs.pop("plain")
    if args.compare_torch:
        runs.update(torch_sides(side, args.torch_compile))
    first = {}
    for name, fn in runs.items():  # two warm-up calls; the first of torch.compile compiles
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        first[name] = time.perf_counter() - t0
        jax.block_until_ready(fn())
    times = {name: [] for name in runs}
    for i in range(args.steps):  # alternate the sides, the order reversed every other step
        for name in (list(runs) if i % 2 == 0 else list(runs)[::-1]):
            times[name].append(timed(runs[name]))
    spec = side.spec
    flops = unet_flops(spec.unet, spec.batch, spec.patch, train=True)
    peak, source = peak_tflops(dtype, args.peak_tflops)
    stats = jax.devices()[0].memory_stats() or {}
    med = {name: statistics.median(ts) for name, ts in times.items()}
    r = {"row": f"train{kind}_{args.sizes}", "kind": kind, "dtype": dtype, "patch": list(spec.patch),
         "global_batch": spec.batch, "devices": side.dp.size, "params": sum(side.param_sizes),
         "features": [spec.unet.features, spec.unet.max_features], "depth": spec.unet.depth,
         "compile_s": side.compile_s["plain"], "step_ms": med["jax"] * 1e3, "step_ms_min": min(times["jax"]) * 1e3,
         "steps_per_s": 1 / med["jax"], "voxels_per_s": spec.batch * int(np.prod(spec.patch)) / med["jax"],
         "model_gflop": flops / 1e9, "peak_tflops": peak, "peak_source": source,
         "peak_memory_gib": stats["peak_bytes_in_use"] / 2**30 if "peak_bytes_in_use" in stats else None,
         "loss": float(side.run()["loss"])}
    for name, sec in med.items():
        r[f"{name}_ms"] = sec * 1e3
        r[f"{name}_tflops"] = flops / sec / 1e12
        r[f"{name}_mfu"] = flops / sec / (peak * 1e12)
        r[f"{name}_first_call_s"] = first[name]
        if name.startswith("torch"):
            r[f"ratio_{name}"] = med["jax"] / sec  # > 1: JAX is slower
    r["tflops"], r["mfu"] = r["jax_tflops"], r["jax_mfu"]
    if args.profile:  # three JAX steps under the profiler, for TensorBoard's profile plugin or xprof
        with jax.profiler.trace(os.path.join(args.profile, f"train{kind}_{dtype}")):
            for _ in range(3):
                jax.block_until_ready(side.run())
    if args.hlo:
        os.makedirs(args.hlo, exist_ok=True)
        with open(os.path.join(args.hlo, f"train{kind}_{dtype}.hlo.txt"), "w") as f:
            f.write(side.compiled["plain"].as_text())
    return r


def format_row(r: dict) -> str:
    """One printed line: JAX's figures, then each PyTorch side with its ratio."""
    mem = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}"
    line = (f"{r['row']:14} {r['dtype']:9} {r['global_batch']:5d} {r['step_ms']:9.1f} {r['steps_per_s']:8.2f} "
            f"{r['voxels_per_s'] / 1e6:8.1f} {r['model_gflop']:9.1f} {r['tflops']:8.2f} {r['mfu']:6.1%} {mem:>8}")
    if "aug_ms" in r:
        line += f"  with aug {r['aug_ms']:.1f} ms"
    for name, label in (("torch", "eager"), ("torchc", "compile")):
        if f"{name}_ms" in r:
            line += (f" | torch {label} {r[f'{name}_ms']:.1f} ms (MFU {r[f'{name}_mfu']:.1%}) "
                     f"JAX/{label} {r[f'ratio_{name}']:.2f}")
    return line


EXAMPLE = """python -m experiments.bench_gpu --rows 3d:bfloat16,2d:bfloat16 --compare-torch --torch-compile default
python -m experiments.bench_gpu --quick --steps 1                      # a CPU smoke test
python -m experiments.bench_gpu --export-stablehlo hlo/ --platform cuda"""


def parse_args(argv):
    p = cli.parser("python -m experiments.bench_gpu", __doc__, EXAMPLE)
    p.add_argument("--sizes", choices=list(SIZES), default="full",
                   help="network and batch sizes: full (the full preset's) or tiny (a smoke test; its numbers mean "
                        "nothing)")
    p.add_argument("--quick", dest="sizes", action="store_const", const="tiny", default=argparse.SUPPRESS,
                   help="the same as --sizes tiny")
    p.add_argument("--rows", default="3d:bfloat16,3d:float32,2d:bfloat16,2d:float32",
                   help="KIND:DTYPE rows, timed in this order (default: %(default)s)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per row after 2 warm-ups")
    p.add_argument("--augment", action="store_true", help="also time the JAX step with the preset's augmentation")
    p.add_argument("--compare-torch", action="store_true", help="time the PyTorch twin too (eager), alternating")
    p.add_argument("--torch-compile", default=None, metavar="MODE",
                   help="also time it through torch.compile(mode=MODE), e.g. default (implies --compare-torch)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the machine's peak for MFU, all devices together")
    p.add_argument("--json", default=None, metavar="FILE", help="write the rows and the machine record here "
                   "(rewritten after every row)")
    p.add_argument("--hlo", default=None, metavar="DIR", help="write each row's compiled, optimised HLO here")
    p.add_argument("--profile", default=None, metavar="DIR", help="trace three JAX steps of each row into DIR/ROW")
    p.add_argument("--export-stablehlo", default=None, metavar="DIR",
                   help="write each row's train step as StableHLO text for --platform and exit (no timing)")
    p.add_argument("--platform", choices=PLATFORMS, default=None,
                   help="platform of --export-stablehlo (default: this machine's)")
    args = p.parse_args(argv)
    args.compare_torch = args.compare_torch or args.torch_compile is not None
    if args.steps < 1:
        p.error(f"--steps must be at least 1, got {args.steps}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = parse_rows(args.rows)
    if args.export_stablehlo:
        platform = args.platform or {"gpu": "cuda"}.get(jax.default_backend(), jax.default_backend())
        os.makedirs(args.export_stablehlo, exist_ok=True)
        for kind, dtype in rows:
            path = os.path.join(args.export_stablehlo, f"train{kind}_{dtype}.mlir")
            text = export_stablehlo(kind, dtype, args.sizes, platform)
            atomic.write_text(path, text)
            counts = ", ".join(f"{n} {sig}" for sig, n in sorted(conv_dtypes(text).items()))
            print(f"wrote {path} ({platform}): convolutions {counts}")
        return 0
    if args.compare_torch:
        try:
            import torch
        except ImportError:
            print("bench_gpu: --compare-torch needs PyTorch (not a heartjax dependency): "
                  "pip install -r requirements-bench.txt", file=sys.stderr)
            return 2
    report_devices()
    machine = machine_info("auto")
    if args.compare_torch:
        machine.update({"torch": torch.__version__, "torch_compile_mode": args.torch_compile})
    print(f"{'row':14} {'dtype':9} {'batch':>5} {'step ms':>9} {'steps/s':>8} {'Mvox/s':>8} {'GFLOP':>9} "
          f"{'TFLOP/s':>8} {'MFU':>6} {'peak GiB':>8}")
    done = []
    for kind, dtype in rows:
        done.append(time_row(kind, dtype, args))
        print(format_row(done[-1]), flush=True)
        if args.json:
            atomic.write_json(args.json, {"machine": machine, "rows": done})
    return 0


if __name__ == "__main__":
    sys.exit(main())
