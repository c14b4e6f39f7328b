"""Shared parts of experiments.benchmark: host-initialised train states, FLOP counts, compilation, timing, the
machine record and the table."""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from heartjax import conv as conv_lib
from heartjax.common import provenance
from heartjax.model.unet import UNetConfig
from heartjax.train.step import create_train_state


def init_train_state(model_cfg: UNetConfig, tx, seed: int, total_steps: int = 1000):
    """`create_train_state`'s (graphdef, state) with the parameters drawn on the host (He-normal kernels, unit
    scales, zero biases): eager initialisation compiles one small random program per kernel shape, which took
    longer than the quick benchmark itself on a 2-core CPU. The values do not change the timings."""
    make = functools.partial(create_train_state, model_cfg, tx, seed, total_steps)
    graphdef, shapes = jax.eval_shape(make)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = next((p.key for p in reversed(path) if isinstance(p, jax.tree_util.DictKey)), None)
        if name == "kernel":
            return rng.standard_normal(leaf.shape, np.float32) * np.float32(np.sqrt(2.0 / math.prod(leaf.shape[:-1])))
        return (np.ones if name in ("scale", "var") else np.zeros)(leaf.shape, leaf.dtype)

    params = jax.device_put(jax.tree_util.tree_map_with_path(fill, shapes["params"]))
    rest = jax.device_put(jax.tree_util.tree_map_with_path(fill, shapes["rest"]))
    # The other entries (step counter, schedule length, ...) from the real function; jit drops the unused init.
    others = jax.jit(lambda: {k: v for k, v in make()[1].items() if k not in ("params", "rest", "opt")})()
    return graphdef, {**others, "params": params, "rest": rest, "opt": jax.jit(tx.init)(params)}


def flops_of(compiled) -> float:
    """FLOPs of a compiled (or lowered) function from XLA's cost analysis (a dict, or a list of dicts)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def compile_all(jobs: dict, parallel: bool = False) -> dict:
    """AOT-compile {name: (jitted, args)}: {name: (compiled, seconds, flops)}, seconds = trace + lower + compile.

    `parallel` compiles in threads (XLA releases the GIL), which nearly halves the compile-bound --quick run
    on two cores; the seconds then include the contention, so the full run compiles one at a time.
    """
    lowered = {}
    for name, (jitted, args) in jobs.items():
        t0 = time.perf_counter()
        lowered[name] = (jitted.lower(*args), time.perf_counter() - t0)

    def finish(name):
        low, seconds = lowered[name]
        t0 = time.perf_counter()
        compiled = low.compile()
        return name, (compiled, seconds + time.perf_counter() - t0, flops_of(compiled))

    if not parallel:
        return dict(map(finish, lowered))
    with concurrent.futures.ThreadPoolExecutor(len(lowered)) as pool:
        return dict(pool.map(finish, lowered))


def timed(fn) -> float:
    """Wall seconds of one call, waiting for every output array."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def matmul_peak(n: int, repeats: int, dtype: str = "float32") -> dict:
    """Median GFLOP/s of a jitted n x n matrix product in `dtype` (default precision, as the network's convs)."""
    ka, kb = jax.random.split(jax.random.key(1))
    a, b = (jax.random.normal(k, (n, n), jnp.float32).astype(dtype) for k in (ka, kb))
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, b))
    rates = [2 * n**3 / timed(lambda: dot(a, b)) / 1e9 for _ in range(repeats)]
    return {"n": n, "gflops": statistics.median(rates), "min_gflops": min(rates), "max_gflops": max(rates)}


def loadavg():
    """1-minute load average, or None where the platform has none."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def machine_info(conv_impl: str) -> dict:
    """CPU model, cores, versions, JAX backend and device; load average at the start."""
    cpu = provenance.cpu_model()
    resolved = {f"{d}d": conv_lib.resolve_impl(conv_impl, d) for d in (2, 3)}  # what "auto" means here
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": os.cpu_count(), "cores_usable": affinity, "python": platform.python_version(),
            "platform": platform.platform(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
            "device_count": jax.device_count(), "conv_impl": conv_impl, "conv_impl_resolved": resolved,
            "xla_flags": os.environ.get("XLA_FLAGS"), "loadavg_start": loadavg()}


def fmt_ms(s) -> str:
    """Seconds as milliseconds for the table ("-" for None)."""
    return "-" if s is None else f"{1e3 * s:.0f}" if s >= 0.1 else f"{1e3 * s:.1f}"


def format_table(report: dict) -> str:
    """The rows as a fixed-width text table, then the augmentation timings and notes of the train rows."""
    def spread(r, side):
        s = [fmt_ms(r[f"{side}{k}"]) for k in ("_s", "_min_s", "_max_s")]
        return f"{s[0]} ({s[1]}-{s[2]})" if r[f"{side}_s"] is not None else "-"

    def num(x, fmt):
        return "-" if x is None else format(x, fmt)

    w = max([16] + [len(r["name"]) for r in report["rows"]])
    head = (f"{'row':<{w}} {'shape':<14} {'jax ms (min-max)':<22} {'torch ms (min-max)':<22} {'ratio':>6} {'GFLOP':>8} "
            f"{'jax GF/s':>9} {'%peak':>6} {'torch GF/s':>10} {'Mvox/s':>7} {'compile s':>9} {'aug %':>6}")
    lines = [head, "-" * len(head)]
    for r in report["rows"]:
        shape = f"{r['batch']}x{'x'.join(map(str, r['patch']))}"
        lines.append(f"{r['name']:<{w}} {shape:<14} {spread(r, 'jax'):<22} {spread(r, 'torch'):<22} "
                     f"{num(r['ratio'], '.2f'):>6} {r['gflop']:>8.2f} {r['jax_gflops']:>9.1f} "
                     f"{100 * r['jax_peak_share']:>6.1f} {num(r['torch_gflops'], '.1f'):>10} "
                     f"{r['jax_voxels_per_s'] / 1e6:>7.3f} {r['jax_compile_s']:>9.1f} "
                     f"{num(r.get('augment_share') and 100 * r['augment_share'], '.0f'):>6}")
    compiled = [r for r in report["rows"] if r.get("torchc_s")]
    if compiled:
        lines.append(f"torch.compile (mode {compiled[0]['torch_compile_mode']}), the same PyTorch network through "
                     "TorchInductor; ratio c = jax ms / torch.compile ms:")
        lines += [f"  {r['name']:<{w}} {spread(r, 'torchc'):<22} ratio c {r['ratio_compiled']:.2f}, "
                  f"{r['torchc_gflops']:.1f} GF/s, first call (compilation) {r['torchc_compile_s']:.0f} s"
                  for r in compiled]
    bf16 = report.get("peak_matmul_gflops_bf16")
    lines.append(f"peak float32 matmul {report['peak_matmul_gflops']:.1f} GFLOP/s"
                 + (f", bfloat16 {bf16:.1f} GFLOP/s (the .bf16 rows' %peak)" if bf16 else "")
                 + ". Train rows: jax ms = step without augmentation; aug % = augment_batch alone / step with "
                   "augmentation.")
    lines += [f"  {r['name']}: step with augmentation {fmt_ms(r['jax_aug_s'])} ms, augment_batch alone "
              f"{fmt_ms(r['augment_s'])} ms" + (f"; {r['note']}" if r["note"] else "")
              for r in report["rows"] if r["mode"] == "train"]
    return "\n".join(lines)
