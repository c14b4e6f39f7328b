"""Ablation studies over training seeds: `python -m experiments.ablate STUDY` (`--list` shows the shipped ones).

Runs every variant of the study for every training seed (`--seeds 0,1,2`, or `--num-seeds 3` for 0..2; `seed`
only: the patients, split and preprocessing stay fixed), one run folder per variant and seed
(OUT/STUDY/VARIANT/seedS), then writes OUT/STUDY/ablation.json, ablation.md, ablation.png and the TensorBoard
folder OUT/STUDY/hparams.
Each finished run's numbers are kept as a small JSON in RECORDS (default docs/studies/STUDY in the repository;
OUT/STUDY/records for the smoke preset) with their provenance: a run recorded by the running code (the same
code fingerprint, docs/provenance.md) is never redone, one recorded by other code is trained again unless
--reuse-records any, a killed one continues from its checkpoint (--resume), and `--aggregate-only` rebuilds the
outputs from the records alone (whatever code made them; it lists the commits and machines they mix), so a long
study can be run in parts (--max-runs; --variants runs some of its variants only) on several machines. key=value
overrides apply on top of the study's baseline and under its variants, e.g. `data.cache_dir=/scratch/cache`. A
library over `heartjax.ablation`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments import studies
from heartjax import ablation, experiment
from heartjax.common import atomic, provenance
from heartjax.common import cli as cli_lib
from heartjax.config import describe, parse_value, presets
from heartjax.common.errors import HeartjaxError

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "docs" / "studies"


EXAMPLE = """python -m experiments.ablate --list
python -m experiments.ablate norm --preset smoke --num-seeds 2 --out runs/ablation   # a few minutes: a trial
python -m experiments.ablate patients --seeds 0,1,2 --resume
python -m experiments.ablate budget --preset acdc --data data/acdc-ed --num-seeds 3 --max-runs 4
python -m experiments.ablate budget --preset acdc --data data/acdc-ed --variants steps150,steps300 --resume
python -m experiments.ablate patients --aggregate-only --figure docs/studies/patients.png
python -m experiments.ablate --show-config smoke"""


def parse_args(argv):
    p = cli_lib.parser("python -m experiments.ablate", __doc__, EXAMPLE)
    p.add_argument("study", nargs="?", help="a shipped study (see --list) or the path of a .py file defining STUDY")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides under the variants, e.g. data.cache_dir=/tmp/c (--show-config lists "
                        "the keys); one that contradicts a flag is an error")
    p.add_argument("--list", action="store_true", help="print the shipped studies, one line each, and exit")
    p.add_argument("--show-config", nargs="?", const="", default=None, metavar="PRESET",
                   help="print every config key with its value, type and meaning (PRESET or --preset, the study's "
                        "baseline and the overrides applied) and exit")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="dataset folder (default: the study's preset, the phantom for most)")
    p.add_argument("--preset", default="default", choices=list(presets.PRESETS), help="config preset")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=cli_lib.int_list, default=None, metavar="S,S,...",
                       help="training seeds, a comma list, e.g. 0,1,2 (default: the study's, 0,1,2)")
    seeds.add_argument("--num-seeds", type=int, default=None, metavar="N",
                       help="training seeds 0..N-1 (default: the study's, 3)")
    cli_lib.out_folder(p, "runs go to OUT/STUDY/VARIANT/seedS", default=Path("runs/ablation"), old=("--workdir",),
                       type=Path)
    p.add_argument("--records", type=Path, default=None,
                   help="folder of the per-run JSONs (default: docs/studies/STUDY; smoke: OUT/STUDY/records)")
    p.add_argument("--resume", action="store_true", help="continue a started study (recorded runs are kept)")
    p.add_argument("--variants", type=lambda s: [v.strip() for v in s.split(",") if v.strip()], default=None,
                   metavar="V,V,...",
                   help="only these variants of the study, e.g. steps150,steps300 (runs, records and the aggregate "
                        "are the full study's, restricted to them)")
    p.add_argument("--max-runs", type=int, default=None, help="run at most N runs now, then aggregate what exists")
    p.add_argument("--aggregate-only", action="store_true",
                   help="train nothing: rebuild the outputs from the records, whatever code made them")
    p.add_argument("--reuse-records", choices=ablation.REUSE, default="match",
                   help="match (default): reuse a run record only when the code fingerprint it was made with is "
                        "the running code's, train the others again; any: reuse every record (docs/provenance.md)")
    p.add_argument("--train-every-run", action="store_true",
                   help="train every run, also one whose training settings equal a finished run's of the same seed "
                        "in --out (which scans are scored, data.test_phantom_modality, may differ); by default such "
                        "a run scores that run's model (docs/studies/README.md)")
    p.add_argument("--figure", type=Path, default=None, metavar="FILE",
                   help="also write the study's figure (ablation.png) to this path, e.g. docs/studies/STUDY.png")
    p.add_argument("--verbose", action="store_true", help="print each run's own log lines too")
    args = p.parse_intermixed_args(argv)
    args.seed_choice = args.seeds if args.seeds is not None else args.num_seeds
    return args


def check_overrides(args) -> None:
    """An override that contradicts a flag is an error naming both: --data and data.dir=, --preset and preset=,
    --seeds / --num-seeds and seed= (each run of a study sets its own seed)."""
    given = describe.override_keys(args.overrides)
    if "preset" in given:
        raise HeartjaxError(f"{given['preset']} is not a config key; use --preset (it contradicts --preset "
                            f"{args.preset})")
    if "seed" in given:
        raise HeartjaxError(f"{given['seed']} contradicts --seeds / --num-seeds: each run of a study sets its own "
                            f"training seed; give --seeds {given['seed'].split('=', 1)[1]} instead")
    if args.data is not None:
        describe.check_flag_conflicts({"data.dir": (f"--data {args.data}", str(args.data))}, args.overrides,
                                      parse_value)


def show_config(args) -> str:
    """--show-config: the config the study's runs start from (before each variant's own overrides)."""
    preset = args.show_config or args.preset
    extra = list(args.overrides)
    if args.study:
        study = studies.load(args.study)
        extra = [f"train.models={list(study.kinds)!r}", *study.baseline, *extra]
    cfg = experiment.config(preset, args.data, extra)
    return describe.table(cfg, f"config of preset {preset}" + (f", study {args.study}'s baseline" if args.study
                                                              else "") + "".join(f" {o}" for o in args.overrides))


def list_lines() -> list[str]:
    """One line per shipped study: name, kinds, variants, x axis and description."""
    out = []
    for s in studies.shipped():
        x = f", x {s.x}" if s.x else ""
        out.append(f"{s.name:<13} {'/'.join(s.kinds):<8} {len(s.variants)} variants{x}: {s.description}")
    return out


def records_dir(args, study: ablation.Study) -> Path:
    """Where the run records go: --records, else the repository's docs/studies/STUDY (smoke runs stay local)."""
    if args.records is not None:
        return args.records
    return args.out / study.name / "records" if args.preset == "smoke" else RECORDS / study.name


def copy_figure(args, study: ablation.Study) -> None:
    """--figure: the study's ablation.png, copied (atomically) to where the user asked."""
    if args.figure is not None:
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(args.figure, (args.out / study.name / "ablation.png").read_bytes())
        print(f"figure: {args.figure}")


def cli(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.list:
            print("\n".join(list_lines()))
            return 0
        check_overrides(args)
        if args.show_config is not None:
            print(show_config(args))
            return 0
        if not args.study:
            raise HeartjaxError("name a study (python -m experiments.ablate --list shows them)")
        study = studies.load(args.study)
        if args.variants is not None:
            study = study.only(args.variants)
        records = records_dir(args, study)
        if args.aggregate_only:
            result = ablation.aggregate_study(study, records, args.out, args.seed_choice)
            print(f"study {study.name}: {len(result['variants'])} variants from {result['runs']} run records in "
                  f"{records} -> {args.out / study.name / 'ablation.json'}")
            print(f"provenance: {ablation.origins_text(result['provenance'])}")
            copy_figure(args, study)
            return 0
        if args.max_runs is not None and args.max_runs < 1:
            raise HeartjaxError(f"--max-runs={args.max_runs} must be a positive integer")
        print(f"study {study.name}: {study.description}\nruns: {args.out / study.name}; records: {records}; "
              f"reuse records: {args.reuse_records} (code fingerprint {provenance.fingerprint()})", flush=True)
        ablation.run_study(study, preset=args.preset, data=args.data, seeds=args.seed_choice, workdir=args.out,
                           records=records, extra=args.overrides, resume=args.resume, max_runs=args.max_runs,
                           log=lambda *a: print(*a, flush=True), run_log=print if args.verbose else None,
                           reuse=args.reuse_records, share=not args.train_every_run)
        copy_figure(args, study)
    except HeartjaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
