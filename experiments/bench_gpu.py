"""Train-step throughput at the `full` preset's sizes, in float32 and bfloat16: `python -m experiments.bench_gpu`.

For a machine with accelerators (it runs anywhere; `--sizes tiny` is the CPU check the tests use). Builds the 2D
and 3D models exactly as `experiment.run` would with the `full` preset (widths 32-320/512, depth 5, SGD, the
preset's augmentation inside the step, data parallel over every device of the machine), on a synthetic plan of
isotropic 1 mm patches (3D 128^3 x 2, 2D 512^2 x 12), and times the jitted train step on device-resident
batches. Prints and writes (--json) per row: step time, steps/s, voxels/s, peak device memory, model FLOPs (XLA's
cost analysis of the same step with XLA's own convolution) and MFU: achieved model FLOP/s over the card's peak for
the compute dtype (dense tensor-core rates from the vendors' data sheets, `PEAKS`; float32 matmuls run as TF32
by default on NVIDIA GPUs), or over a peak measured with a matrix product when the card is not in the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time

import jax
import numpy as np

from experiments.bench_common import flops_of, machine_info, matmul_peak
from heartjax import atomic, experiment, rng
from heartjax.experiment import specs
from heartjax.data.plan import Plan, stage_layout
from heartjax.model.augment import make_augment
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
SIZES = {"full": {"3d": ((128, 128, 128), 2), "2d": ((512, 512), 12), "depth": 5, "overrides": []},
         "tiny": {"3d": ((16, 16, 16), 2), "2d": ((32, 32), 4), "depth": 2,
                  "overrides": ["model.features=4", "model.max_features=8", "model_2d.features=4",
                                "model_2d.max_features=8"]}}


def plan_for(size: dict, devices: int) -> Plan:
    """A plan of isotropic 1 mm patches; batches rounded up to a multiple of the device count."""
    (p3, b3), (p2, b2), depth = size["3d"], size["2d"], size["depth"]
    s3, k3 = stage_layout((1.0, 1.0, 1.0), p3, depth)
    s2, k2 = stage_layout((1.0, 1.0), p2, depth)
    up = lambda b: -(-b // devices) * devices
    return Plan((1.0, 1.0, 1.0), "ct", "ct", (-100.0, 300.0), 50.0, 80.0, 2, tuple(p3), up(b3), s3, k3, tuple(p2),
                up(b2), s2, k2, depth)


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


def bench_row(kind: str, dtype: str, sizes: str, steps: int, peak_override: float | None) -> dict:
    """Compile and time one model kind's train step; returns the row."""
    size, dp = SIZES[sizes], DataParallel.create()
    cfg = experiment.config("full", overrides=[f"model.dtype={dtype}", *size["overrides"]])
    spec = specs.build_spec(cfg, plan_for(size, dp.size), kind, 8)
    tx = make_optimizer(cfg.optim)
    graphdef, state = create_train_state(spec.unet, tx, rng.key(0, f"init/{kind}"), 1000)
    state = dp.replicate(state)
    step = make_train_step(graphdef, tx, make_augment(spec.augment, spec.spatial_dims), cfg.loss, cfg.optim, dp)
    data = np.random.default_rng(0)
    images = dp.spread(data.normal(size=(spec.batch, *spec.patch, spec.context)).astype(np.float32))
    labels = dp.spread(data.integers(0, 8, size=(spec.batch, *spec.patch)).astype(np.uint8))
    key = dp.replicate(rng.key(0, "bench"))
    t0 = time.perf_counter()
    compiled = step.lower(state, (images, labels), key).compile()
    compile_s = time.perf_counter() - t0
    xla_cfg = dataclasses.replace(spec.unet, conv_impl="xla")
    xla_step = make_train_step(create_train_state(xla_cfg, tx, 0, 1)[0], tx, make_augment(spec.augment, spec.spatial_dims),
                               cfg.loss, cfg.optim, dp)
    flops = flops_of(xla_step.lower(state, (images, labels), key))
    times = []
    for i in range(steps + 2):  # two warm-up steps
        t0 = time.perf_counter()
        state, metrics = compiled(state, (images, labels), key)
        jax.block_until_ready(metrics)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    peak, source = peak_tflops(dtype, peak_override)
    stats = jax.devices()[0].memory_stats() or {}
    voxels = spec.batch * int(np.prod(spec.patch))
    return {"row": f"train{kind}_{sizes}", "dtype": dtype, "patch": list(spec.patch), "global_batch": spec.batch,
            "devices": dp.size, "features": [spec.unet.features, spec.unet.max_features], "depth": spec.unet.depth,
            "compile_s": compile_s, "step_ms": sec * 1e3, "step_ms_min": min(times) * 1e3, "steps_per_s": 1 / sec,
            "voxels_per_s": voxels / sec, "model_gflop": flops / 1e9, "tflops": flops / sec / 1e12,
            "peak_tflops": peak, "peak_source": source, "mfu": flops / sec / (peak * 1e12),
            "peak_memory_gib": stats["peak_bytes_in_use"] / 2**30 if "peak_bytes_in_use" in stats else None,
            "loss": float(metrics["loss"])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.bench_gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", choices=sorted(SIZES), default="full")
    p.add_argument("--kinds", default="3d,2d")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--steps", type=int, default=20, help="timed steps per row (after 2 warm-up steps)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the machine's peak for MFU, all devices together")
    p.add_argument("--json", default=None, help="write the rows and the machine record here")
    args = p.parse_args(argv)
    report_devices()
    rows = []
    print(f"{'row':16} {'dtype':9} {'batch':>5} {'step ms':>9} {'steps/s':>8} {'Mvox/s':>8} {'GFLOP':>8} "
          f"{'TFLOP/s':>8} {'MFU':>6} {'peak GiB':>8}")
    for kind in args.kinds.split(","):
        for dtype in args.dtypes.split(","):
            r = bench_row(kind.strip(), dtype.strip(), args.sizes, args.steps, args.peak_tflops)
            rows.append(r)
            mem = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}"
            print(f"{r['row']:16} {r['dtype']:9} {r['global_batch']:5d} {r['step_ms']:9.1f} {r['steps_per_s']:8.2f} "
                  f"{r['voxels_per_s'] / 1e6:8.2f} {r['model_gflop']:8.1f} {r['tflops']:8.2f} {r['mfu']:6.1%} {mem:>8}",
                  flush=True)
    if args.json:
        atomic.write_json(args.json, {"machine": machine_info("auto"), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
