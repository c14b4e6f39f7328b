"""Slice-wise 2D versus volumetric 3D U-Net on the same patients: `python -m experiments.volumetric`.

Trains the models of `train.models` (2d and 3d by default; 2.5d on request) with the same split, plan, loss,
optimiser and number of steps, scores each on whole volumes of test patients none of them saw (on their original
grid), and writes one run folder: config.json, splits.json, plan.json, label_scheme.json, models/KIND.json,
tb/KIND, checkpoints/KIND, predictions/KIND, results.json, results.md, figures/. `--resume` continues a killed
run from its latest checkpoints. A command line over `heartjax.experiment`.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import jax

from heartjax import experiment
from heartjax.config import presets
from heartjax.errors import HeartjaxError
from heartjax.train import parallel


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m experiments.volumetric", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.steps=200 model.features=8")
    p.add_argument("--preset", default="default", help=f"{' | '.join(presets.PRESETS)} (default: default)")
    p.add_argument("--workdir", type=Path, default=None, help="run folder (default: runs/volumetric-<timestamp>)")
    p.add_argument("--data", default=None, help="dataset folder (MM-WHS, nnU-Net, ACDC or images/+labels/); default: phantom")
    p.add_argument("--seed", type=int, default=None, help="training seed (default 0); data.seed=N sets the patients' seed")
    p.add_argument("--models", default=None, help="comma-separated kinds to train, e.g. 2d,2.5d,3d (train.models)")
    p.add_argument("--cv", type=int, default=None, help="cross-validate: train all K folds into RUN/foldI and pool them")
    p.add_argument("--fold", type=int, default=None, help="which fold is the test fold (default 0)")
    p.add_argument("--resume", action="store_true", help="continue the run in --workdir from its latest checkpoints")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --workdir")
    g = p.add_argument_group("several processes (jax.distributed; detected on SLURM, Open MPI and TPU pods)")
    g.add_argument("--coordinator", default=None, help="host:port of process 0")
    g.add_argument("--num-processes", type=int, default=None, help="how many processes take part")
    g.add_argument("--process-id", type=int, default=None, help="this process's index, 0 .. num-processes - 1")
    return p.parse_args(argv)


def overrides_of(args) -> list[str]:
    """The flags as config overrides, before the positional ones (which win)."""
    extra = []
    if args.seed is not None:
        extra.append(f"seed={args.seed}")
    if args.models is not None:
        extra.append(f"train.models={[m.strip() for m in args.models.split(',') if m.strip()]!r}")
    if args.cv is not None:
        extra += [f"data.folds={args.cv}", "data.cross_validate=True"]
    if args.fold is not None:
        extra.append(f"data.fold={args.fold}")
    return extra + list(args.overrides)


def cli(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        parallel.initialize(args.coordinator, args.num_processes, args.process_id)
        log = print if jax.process_index() == 0 else (lambda *a, **k: None)
        if args.resume:
            if args.workdir is None:
                raise HeartjaxError("--resume needs --workdir: the run folder to continue")
            cfg = experiment.load_config(args.workdir)
        else:
            cfg = experiment.config(args.preset, data=args.data, overrides=overrides_of(args))
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        workdir = args.workdir or Path("runs") / f"volumetric-{stamp}"
        log(f"run folder: {workdir}  (preset {args.preset})", flush=True)
        parallel.report_devices(log)
        experiment.run(cfg, workdir, resume=args.resume, overwrite=args.overwrite, log=log)
    except HeartjaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
