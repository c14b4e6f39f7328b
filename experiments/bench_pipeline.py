"""Input-pipeline throughput, the host side of the training loop alone: `python -m experiments.bench_pipeline`.

Times what the fit loop's `Prefetcher` does for every optimiser step, without a model: draw the step's samples
from preprocessed volumes (`PatchSampler.batch`: random and foreground-centred corners, crop / pad, batch
assembly) and transfer the batch to the devices (sharded along the data axis, as training places it), with 1 and
with the default number of worker threads (`heartjax.data.sampling.default_workers()`: min(4, usable cores)).
Sizes are the `full` preset's (3D 2 x 128^3, 2D 12 x 512^2; `--sizes tiny`: 2 x 16^3 and 4 x 32^2, a seconds-long
check) on real-size volumes: the `--data` folder (e.g. ../shared/data/acdc-ed) or the built-in phantom otherwise,
fingerprinted, planned and preprocessed as the `full` preset does (the `smoke` preset's phantom for tiny), with
the experiments' preprocessing cache. To keep up with an H200's train step (78 ms in 3D, 41 ms in 2D) with a
margin of 2x, the pipeline must give >= 25 batches/s in 3D and >= 50 in 2D.

Prints one line per row: kind, batch shape [B, *patch, C], workers, batches/s, MB/s (images float32 + labels
uint8 transferred); `--json FILE` also writes the rows, the data and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax
import numpy as np

from heartjax.common import atomic, cli, provenance, rng
from heartjax.config import presets
from heartjax import config as config_lib
from heartjax.data import cases as cases_lib
from heartjax.data.sampling import PatchSampler, Prefetcher, default_workers
from heartjax.train.parallel import DataParallel

SIZES = {"full": {"3d": ((128, 128, 128), 2), "2d": ((512, 512), 12), "preset": "full"},  # bench_gpu's sizes
         "tiny": {"3d": ((16, 16, 16), 2), "2d": ((32, 32), 4), "preset": "smoke"}}
TARGETS = {"3d": 25.0, "2d": 50.0}  # batches/s at the full sizes: 2x an H200's train step rate


def load_cases(sizes: str, data: str | None, cases: int | None, overrides, log=print):
    """(config, plan, preprocessed cases) of the first `cases` cases of the dataset (all when None)."""
    extra = []
    if data is None and cases is not None:  # a smaller phantom is written (and cached) as its own folder
        extra.append(f"data.phantom_cases={max(3, cases)}")
    cfg = config_lib.apply_tree(config_lib.Config(), presets.PRESETS[SIZES[sizes]["preset"]])  # as experiment.config
    if data is not None:
        cfg = config_lib.override(cfg, "data.dir", str(data))
    cfg = config_lib.validate(config_lib.apply_overrides(cfg, [*extra, *overrides]))
    ds = cases_lib.resolve_dataset(cfg.data, log)
    ids = [c.case_id for c in ds.cases][:cases]
    store = cases_lib.CaseStore(ds)
    plan = cases_lib.make_plan(store, ids, cfg.plan, cfg.data.seed)
    t0 = time.perf_counter()
    pre = cases_lib.preprocess_ids(store, ids, plan, cfg.data.cache_dir)
    log(f"data: {ds.root} ({len(ids)} cases), plan spacing {plan.target_spacing} mm, slice axis {plan.slice_axis}; "
        f"preprocessed (or read from {cfg.data.cache_dir}) in {time.perf_counter() - t0:.1f} s")
    return cfg, plan, [pre[i] for i in ids]


def bench_row(kind: str, sampler: PatchSampler, workers: int, batches: int, place, depth: int = 2) -> dict:
    """Time `batches` batches through a Prefetcher of `workers` threads, after a warm-up that drains its queues."""
    warm = workers * (depth + 1) + 2  # the batches queued ahead come out at once: not timed
    fetcher = Prefetcher(sampler, 0, warm + batches, depth=depth, place=place, workers=workers)
    try:
        it = iter(fetcher)
        for _ in range(warm):
            jax.block_until_ready(next(it)[1])
        t0 = time.perf_counter()
        for _, batch in it:
            jax.block_until_ready(batch)
        sec = time.perf_counter() - t0
    finally:
        fetcher.close()
    images, labels = batch
    mb = (images.size * images.dtype.itemsize + labels.size * labels.dtype.itemsize) / 1e6
    return {"kind": kind, "shape": list(images.shape), "workers": fetcher.workers, "batches": batches,
            "seconds": sec, "batches_per_s": batches / sec, "mb_per_batch": mb, "mb_per_s": mb * batches / sec}


def machine() -> dict:
    """CPU, cores, versions, the devices batches go to, the load average at the start."""
    cpu = provenance.cpu_model()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": os.cpu_count(), "cores_usable": usable, "python": platform.python_version(),
            "numpy": np.__version__, "jax": jax.__version__, "backend": jax.default_backend(),
            "device_kind": jax.devices()[0].device_kind, "device_count": jax.device_count(),
            "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def parse_workers(text: str) -> list[int]:
    """'1,auto' -> [1, default_workers()], duplicates dropped, order kept."""
    out = []
    for part in text.split(","):
        n = default_workers() if part.strip() == "auto" else int(part)
        if n < 1:
            raise SystemExit(f"error: --workers {text!r}: counts must be >= 1 (or 'auto')")
        if n not in out:
            out.append(n)
    return out


EXAMPLE = """python -m experiments.bench_pipeline --quick
python -m experiments.bench_pipeline --data data/acdc-ed --workers 1,auto --json pipeline.json"""


def main(argv=None) -> int:
    p = cli.parser("python -m experiments.bench_pipeline", __doc__, EXAMPLE)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.cache_dir=/tmp/cache")
    p.add_argument("--sizes", choices=list(SIZES), default="full",
                   help="batch and patch sizes: full (the full preset's) or tiny (a seconds-long check)")
    p.add_argument("--quick", dest="sizes", action="store_const", const="tiny", default=argparse.SUPPRESS,
                   help="the same as --sizes tiny")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="dataset folder (e.g. data/acdc-ed); default: the phantom")
    p.add_argument("--cases", type=int, default=None, help="use the first N cases (default: all)")
    p.add_argument("--models", default="3d,2d", metavar="KINDS", help="comma list of the kinds whose batches are timed")
    p.add_argument("--kinds", dest="models", action=cli.DeprecatedAlias, new="--models", default=argparse.SUPPRESS)
    p.add_argument("--workers", default="1,auto", help="comma list of worker-thread counts; auto = min(4, cores) "
                                                       f"= {default_workers()} here")
    p.add_argument("--batches", type=int, default=None, help="timed batches per row (default 200; tiny: 20)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the rows, the data and the machine here")
    args = p.parse_args(argv)
    batches = args.batches or (200 if args.sizes == "full" else 20)
    info = machine()
    print(f"{info['cpu']}, {info['cores_usable']} usable cores; JAX {info['jax']} on {info['backend']}: "
          f"{info['device_count']} x {info['device_kind']}", flush=True)
    cfg, plan, pre = load_cases(args.sizes, args.data, args.cases, args.overrides)
    shapes = np.array([c.image.shape for c in pre])
    print(f"volumes: median {tuple(int(v) for v in np.median(shapes, axis=0))} voxels "
          f"(min {tuple(shapes.min(axis=0).tolist())}, max {tuple(shapes.max(axis=0).tolist())})", flush=True)
    dp = DataParallel.create()

    def place(array):
        return dp.place(array, array.shape[0])

    rows = []
    print(f"{'kind':4} {'batch shape':>22} {'workers':>7} {'batches/s':>10} {'MB/s':>9}", flush=True)
    for kind in (k.strip() for k in args.models.split(",")):
        patch, batch = SIZES[args.sizes][kind]
        batch = -(-batch // dp.size) * dp.size  # a multiple of the device count, as training requires
        sampler = PatchSampler(pre, patch, batch, rng.seed_for(cfg.seed, f"sample/{kind}"),
                               spatial_dims=len(patch), slice_axis=plan.slice_axis,
                               fg_fraction=cfg.sampling.fg_fraction)
        for workers in parse_workers(args.workers):
            r = bench_row(kind, sampler, workers, batches, place)
            if args.sizes == "full":
                r["target_batches_per_s"] = TARGETS[kind]
            rows.append(r)
            print(f"{kind:4} {'x'.join(map(str, r['shape'])):>22} {r['workers']:7d} {r['batches_per_s']:10.1f} "
                  f"{r['mb_per_s']:9.0f}", flush=True)
    if args.json:
        data = {"source": args.data or "phantom", "cases": len(pre), "plan_spacing": list(plan.target_spacing),
                "slice_axis": plan.slice_axis, "volume_shapes": shapes.tolist()}
        atomic.write_json(args.json, {"machine": info, "sizes": args.sizes, "data": data, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
