"""Slice-wise 2D versus volumetric 3D U-Net on the same patients: `python -m experiments.volumetric`.

Trains the models of `train.models` (2d and 3d by default; 2.5d on request) with the same split, plan, loss,
optimiser and number of steps, scores each on whole volumes of test patients none of them saw (on their original
grid), and writes one run folder: config.json, splits.json, plan.json, label_scheme.json, models/KIND.json,
tb/KIND, checkpoints/KIND, predictions/KIND, results.json, results.md, figures/. `--resume` continues a killed
run from its latest checkpoints (train.steps, train.max_seconds, train.log_every and train.eval_every may change
then; any other changed setting is refused). A command line over `heartjax.experiment`.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import jax

from heartjax.common import cli as cli_lib
from heartjax import experiment
from heartjax.config import describe, parse_value, presets, tupled
from heartjax.common.errors import HeartjaxError
from heartjax.train import parallel

EXAMPLE = """python -m experiments.volumetric --preset smoke --out runs/smoke          # a one-minute check
python -m experiments.volumetric --preset acdc --data data/acdc-ed --models 2d,2.5d,3d
python -m experiments.volumetric --seed 1 data.seed=0 train.steps=1200    # flags and key=value overrides
python -m experiments.volumetric --out runs/smoke --resume train.steps=20  # continue, training longer
python -m experiments.volumetric --show-config smoke                      # every key: value, type, meaning"""


def parse_args(argv):
    p = cli_lib.parser("python -m experiments.volumetric", __doc__, EXAMPLE)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. train.steps=200 model.features=8 (--show-config lists the keys); "
                        "one that contradicts a flag is an error")
    p.add_argument("--preset", default=None, choices=list(presets.PRESETS), help="config preset (default: default)")
    p.add_argument("--show-config", nargs="?", const="", default=None, metavar="PRESET",
                   help="print every config key with its value, type and meaning (of PRESET or --preset, with the "
                        "flags and overrides applied) and exit")
    cli_lib.out_folder(p, "run folder (default: runs/volumetric-<timestamp>)", old=("--workdir",), type=Path)
    p.add_argument("--data", default=None, metavar="DIR",
                   help="dataset folder (MM-WHS, nnU-Net, ACDC or images/+labels/), data.dir; default: the phantom")
    p.add_argument("--seed", type=int, default=None, help="training seed, `seed` (default: 0); data.seed=N sets the "
                                                          "patients' seed")
    p.add_argument("--models", default=None, metavar="KINDS",
                   help="comma-separated kinds to train, train.models (default: 2d,3d), e.g. 2d,2.5d,3d")
    p.add_argument("--cv", type=int, default=None, metavar="K",
                   help="cross-validate: train all K folds into RUN/foldI and pool them (data.folds=K)")
    p.add_argument("--fold", type=int, default=None, help="which fold is the test fold, data.fold (default: 0)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoints; only train.steps, train.max_seconds, "
                        "train.log_every and train.eval_every may change (recorded in its config.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    g = p.add_argument_group("several processes (jax.distributed; detected on SLURM, Open MPI and TPU pods)")
    g.add_argument("--coordinator", default=None, help="host:port of process 0")
    g.add_argument("--num-processes", type=int, default=None, help="how many processes take part")
    g.add_argument("--process-id", type=int, default=None, help="this process's index, 0 .. num-processes - 1")
    return p.parse_args(argv)


def flag_settings(args) -> dict:
    """{config key: (the flag as typed, value)} of the flags given."""
    out = {}
    if args.seed is not None:
        out["seed"] = (f"--seed {args.seed}", args.seed)
    if args.models is not None:
        out["train.models"] = (f"--models {args.models}", tuple(m.strip() for m in args.models.split(",") if m.strip()))
    if args.data is not None:
        out["data.dir"] = (f"--data {args.data}", str(args.data))
    if args.cv is not None:
        out["data.folds"], out["data.cross_validate"] = (f"--cv {args.cv}", args.cv), (f"--cv {args.cv}", True)
    if args.fold is not None:
        out["data.fold"] = (f"--fold {args.fold}", args.fold)
    return out


def overrides_of(args) -> list[str]:
    """The flags as config overrides, then the positional ones; an override that contradicts a flag (or names the
    preset) is an error naming both."""
    flags = flag_settings(args)
    given = describe.override_keys(args.overrides)
    if "preset" in given:
        raise HeartjaxError(f"{given['preset']} is not a config key; use --preset"
                            + (f" (and it contradicts --preset {args.preset})" if args.preset else ""))
    describe.check_flag_conflicts(flags, args.overrides, lambda s: tupled(parse_value(s)))
    return [f"{k}={v!r}" for k, (_, v) in flags.items()] + list(args.overrides)


def build_config(args, log=print):
    """The config to run (or show): the preset with the flags and overrides, or with --resume the run folder's
    own, changed only where a resume may change it."""
    overrides = overrides_of(args)
    preset = args.preset
    if args.show_config:
        if preset not in (None, args.show_config):
            raise HeartjaxError(f"--show-config {args.show_config} and --preset {preset} contradict each other")
        preset = args.show_config
    if args.resume:
        if args.out is None:
            raise HeartjaxError("--resume needs --out: the run folder to continue")
        if preset is not None:
            raise HeartjaxError(f"--resume continues {args.out} with its saved config; drop --preset {preset}")
        return experiment.resume_config(args.out, overrides, record=args.show_config is None, log=log), None
    preset = preset or "default"
    return experiment.config(preset, overrides=overrides), preset


def cli(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.show_config is not None:
            cfg, preset = build_config(args)
            print(describe.table(cfg, f"config of {f'preset {preset}' if preset else args.out}"
                                      f"{' with ' + ' '.join(overrides_of(args)) if overrides_of(args) else ''}"))
            return 0
        parallel.initialize(args.coordinator, args.num_processes, args.process_id)
        log = print if jax.process_index() == 0 else (lambda *a, **k: None)
        cfg, preset = build_config(args, log)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = args.out or Path("runs") / f"volumetric-{stamp}"
        log(f"run folder: {out}  ({f'preset {preset}' if preset else 'resumed'})", flush=True)
        parallel.report_devices(log)
        experiment.run(cfg, out, resume=args.resume, overwrite=args.overwrite, log=log)
    except HeartjaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
