"""Throughput probe of the U-Net train steps and forward passes, optionally side by side with PyTorch.

    python -m experiments.benchmark [--sizes ref,default] [--repeats N] [--json FILE] [--compare-torch]
                                    [--conv-impl NAME] [--dtypes float32,bfloat16] [--upsamples resize,transpose]
                                    [--quick]

Every row is timed after compilation and one warm-up call, `--repeats` times, each call ended by
block_until_ready; the table shows the median and the spread (min-max). Train rows time the jitted step
WITHOUT augmentation (`jax_s`: the work PyTorch does too; its loaders augment on the host), and additionally
the step with the on-device augmentation and the jitted augment_batch alone on the same batch. FLOPs per call
are the network's own (model FLOPs): XLA's cost analysis of the same function traced with every convolution as
one lax.conv_general_dilated (`gflop`; what the CPU formulation executes, ~5 % more in 3D, is
`gflop_executed`); GFLOP/s and the share of the machine's float32 matmul peak (a 4096^2 jnp.dot, measured
before and after the rows; the better median) follow from them. With
--compare-torch the same network (experiments/torch_unet.py, parameter tensors asserted equal) is timed in the
same run, alternating JAX and PyTorch calls, and `ratio` = jax_s / torch_s (> 1: JAX is slower). The torch
rows reuse JAX's FLOP count. --quick (a smoke test) shrinks everything; its numbers mean nothing.

--dtypes and --upsamples repeat every row per compute dtype (bfloat16 activations and convolutions with
float32 parameters; PyTorch under autocast; rated against a bfloat16 matmul peak measured in the same run) and
per decoder upsampling (1x1 conv + repeat, or a transposed conv); the float32 + resize rows keep their names.
On a GPU: `python -m experiments.benchmark --dtypes float32,bfloat16 --upsamples resize,transpose --json F`.

Rows: `*_ref` is a fixed reference network (features 16-32-64-128, instance norm, ReLU, no deep supervision,
SGD); `*_default` follows experiments/configs/volumetric.py's default preset (widths, depth, batch, patch).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import gc
import json
import math
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from experiments.configs.volumetric import get_config
from heartjax import conv as conv_lib
from heartjax.model.augment import AugmentConfig, augment_batch, identity_config, make_augment
from heartjax.errors import HeartjaxError
from heartjax.train.step import LossConfig, OptimConfig, create_train_state, make_optimizer, make_predict_fn, make_train_step
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


def make_rows(sizes, quick: bool = False) -> list[Row]:
    """The rows of the requested size groups ("ref", "default").

    `quick` (a smoke test, compile-bound) shrinks every network to depth 1 and width 4-8, every batch to
    1-2 small patches, and the augmentation to noise + mirroring, which compile in a fraction of the time.
    """
    cfg = get_config("default")
    aug, rows = AugmentConfig(**cfg["augment"]), []
    tiny = dict(features=4, max_features=8, depth=1) if quick else {}
    if quick:
        aug = dataclasses.replace(identity_config(), noise_p=0.1, mirror_p=0.5)
    if "ref" in sizes:
        ref = UNetConfig(spatial_dims=3, in_channels=1, num_classes=NUM_CLASSES, features=16, depth=3, growth=2,
                         max_features=128, norm="instance", activation="relu", upsample="resize",
                         deep_supervision=False)
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
        plan = cfg["plan"]
        for dims in (3, 2):
            kind = f"{dims}d"
            m = {**cfg["model"], **cfg[f"model_{kind}"]}
            m.pop("conv_impl", None)
            model = UNetConfig(spatial_dims=dims, in_channels=1, num_classes=NUM_CLASSES, depth=plan["depth"], **m)
            patch, batch = plan[f"patch_{kind}"], plan[f"batch_{kind}"]
            notes = ["isotropic strides (the data's plan may make them anisotropic)"]
            if patch is None:
                patch = FALLBACK_PATCH[dims]
                notes.append(f"plan.patch_{kind} is None in the default preset (derived from the data): used {patch}")
            if quick:
                model, patch, batch = dataclasses.replace(model, **tiny), (16,) * 3 if dims == 3 else (32, 32), 2
                notes = ["--quick: shrunken"]
            rows.append(Row(f"train{kind}_default", "train", model, batch, tuple(patch), OptimConfig(**cfg["optim"]),
                            LossConfig(**cfg["loss"]), aug, "; ".join(notes)))
    return rows


def flops_of(compiled) -> float:
    """FLOPs of a compiled (or lowered) function from XLA's cost analysis (a dict, or a list of dicts)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def model_flops(build) -> float:
    """The network's own FLOPs (as in model FLOP utilisation): XLA's cost analysis of the lowered function
    that `build()` returns as (jitted, args), traced with every convolution as ONE lax.conv_general_dilated.

    `build` must make a new jitted function (jit caches traces per function, and the conv impl is not part
    of its key). The CPU formulation executes more (the zero planes of the strided convs' X-phase split,
    the 2D strided input gradients' space-to-depth: train3d_ref 165.4 vs 158.1 GFLOP); the executed count is
    reported as `gflop_executed`, rates use the model count.
    """
    prev = conv_lib.get_default_impl()
    conv_lib.set_default_impl("xla")
    try:
        fn, args = build()
        return flops_of(fn.lower(*args))
    finally:
        conv_lib.set_default_impl(prev)


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
        if row.mode == "forward":
            self.model_flops = model_flops(lambda: (make_predict_fn(graphdef), (self.state, self.images)))
        else:
            self.model_flops = model_flops(lambda: (make_train_step(graphdef, tx, None, row.loss, row.optim),
                                                    (self.state, batch, self.key)))
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


def _loadavg():
    """1-minute load average, or None where the platform has none."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def machine_info(conv_impl: str) -> dict:
    """CPU model, cores, versions, JAX backend and device; load average at the start."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    resolve = getattr(conv_lib, "resolve_impl", None)  # what "auto" means on this backend, per spatial_dims
    resolved = {f"{d}d": resolve(conv_impl, d) for d in (2, 3)} if resolve else None
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": os.cpu_count(), "cores_usable": affinity, "python": platform.python_version(),
            "platform": platform.platform(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
            "device_count": jax.device_count(), "conv_impl": conv_impl, "conv_impl_resolved": resolved,
            "xla_flags": os.environ.get("XLA_FLAGS"), "loadavg_start": _loadavg()}


def run_row(row: Row, repeats: int, torch_device: str | None, seed: int = 0, parallel: bool = False) -> dict:
    """Compile, warm up and time one row; JAX and PyTorch calls alternate within each repeat."""
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
    for fn in runs.values():  # warm-up: first-call allocations, thread pools, oneDNN primitive caches
        jax.block_until_ready(fn())
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
    for side in ("jax", "torch"):
        s = out.get(f"{side}_s")
        out[f"{side}_gflops"], out[f"{side}_voxels_per_s"] = (gflop / s, voxels / s) if s else (None, None)
    for k in ("torch_s", "torch_min_s", "torch_max_s"):
        out.setdefault(k, None)
    out["ratio"] = out["jax_s"] / out["torch_s"] if out["torch_s"] else None
    if row.mode == "train":
        out["jax_aug_compile_s"], out["augment_compile_s"] = jr.compile_s["aug"], jr.compile_s["augment"]
        out["augment_share"] = out["augment_s"] / out["jax_aug_s"]  # augment_batch alone / step with it
        out["augment_overhead"] = (out["jax_aug_s"] - out["jax_s"]) / out["jax_aug_s"]
    del jr, runs
    gc.collect()
    return out


def _ms(s) -> str:
    """Seconds as milliseconds for the table ("-" for None)."""
    return "-" if s is None else f"{1e3 * s:.0f}" if s >= 0.1 else f"{1e3 * s:.1f}"


def format_table(report: dict) -> str:
    """The rows as a fixed-width text table, then the augmentation timings and notes of the train rows."""
    def spread(r, side):
        s = [_ms(r[f"{side}{k}"]) for k in ("_s", "_min_s", "_max_s")]
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
    bf16 = report.get("peak_matmul_gflops_bf16")
    lines.append(f"peak float32 matmul {report['peak_matmul_gflops']:.1f} GFLOP/s"
                 + (f", bfloat16 {bf16:.1f} GFLOP/s (the .bf16 rows' %peak)" if bf16 else "")
                 + ". Train rows: jax ms = step without augmentation; aug % = augment_batch alone / step with "
                   "augmentation.")
    lines += [f"  {r['name']}: step with augmentation {_ms(r['jax_aug_s'])} ms, augment_batch alone "
              f"{_ms(r['augment_s'])} ms" + (f"; {r['note']}" if r["note"] else "")
              for r in report["rows"] if r["mode"] == "train"]
    return "\n".join(lines)


def write_json(path: str, report: dict) -> None:
    """Write the report through a temporary name, so a crash never leaves half a file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, path)


def parse_args(argv):
    """The command line, validated (argparse exits 2 on a bad value)."""
    p = argparse.ArgumentParser(prog="python -m experiments.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="ref,default", help="comma list of row groups: ref, default")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 5; --quick: 1)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON")
    p.add_argument("--compare-torch", action="store_true", help="time the same network in PyTorch, alternating")
    p.add_argument("--conv-impl", default=None, metavar="NAME",
                   help="heartjax.conv implementation (default: the default preset's model.conv_impl). XLA options "
                        "apply through the XLA_FLAGS environment variable and are recorded in the report")
    p.add_argument("--dtypes", default="float32",
                   help="comma list of compute dtypes: float32, bfloat16 (bfloat16 rows get '.bf16' appended, are "
                        "rated against a bfloat16 matmul peak, and PyTorch runs them under autocast)")
    p.add_argument("--upsamples", default="resize",
                   help="comma list of decoder upsamplings: resize (1x1 conv + repeat), transpose (transposed "
                        "conv; rows get '.transpose' appended)")
    p.add_argument("--quick", action="store_true", help="tiny networks and batches, 1 repeat (a smoke test)")
    args = p.parse_args(argv)
    for opt, allowed in (("sizes", ("ref", "default")), ("dtypes", DTYPES), ("upsamples", UPSAMPLE_VARIANTS)):
        vals = [v.strip() for v in getattr(args, opt).split(",") if v.strip()]
        if not vals or any(v not in allowed for v in vals):
            p.error(f"--{opt} {getattr(args, opt)!r}: give a comma list of {', '.join(allowed)}")
        setattr(args, opt, vals)
    args.repeats = args.repeats if args.repeats is not None else (1 if args.quick else 5)
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
    impl = args.conv_impl or get_config("default")["model"]["conv_impl"]
    try:
        conv_lib.set_default_impl(impl)
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
    for row in variant_rows(make_rows(args.sizes, args.quick), args.dtypes, args.upsamples):
        rows.append(run_row(row, args.repeats, torch_device, parallel=args.quick))
        r = rows[-1]
        print(f"  {r['name']}: jax {_ms(r['jax_s'])} ms" + (f", torch {_ms(r['torch_s'])} ms"
              if r["torch_s"] else ""), flush=True)
    machine["loadavg_end"] = _loadavg()
    # Measured before and after the rows: on a shared machine the better median is the closer to the peak.
    end = matmul_peak(n, max(args.repeats, 3))
    peak = max(start["gflops"], end["gflops"])
    end_bf16 = matmul_peak(n, max(args.repeats, 3), "bfloat16") if bf16 else None
    peak_bf16 = max(start_bf16["gflops"], end_bf16["gflops"]) if bf16 else None
    for r in rows:
        row_peak = peak_bf16 if r["dtype"] == "bfloat16" else peak
        for side in ("jax", "torch"):
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
