"""Ablation studies: a baseline and named variants, each a list of config overrides, run over training seeds.

    from heartjax import ablation
    study = ablation.Study("norm", "batch vs instance vs group norm", kinds=("2d", "3d"),
                           variants={"instance": (), "batch": ("model.norm=batch",), "group": ("model.norm=group",)})
    ablation.run_study(study, preset="smoke", seeds=2, workdir="runs/ablation", records="docs/studies/norm")

Every variant x training seed (`seed=S`; the patients, split and preprocessing stay fixed by `data.seed`) is one
`heartjax.experiment.run` into WORKDIR/STUDY/VARIANT/seedS. Its numbers are kept as a small JSON record
(RECORDS/VARIANT-seedS.json: overrides, seed, kinds, steps, seconds, per-case Dice and HD95 per structure), and a
run with a record is never redone; a run folder with a config but no results continues from its checkpoints. The
study's results (`heartjax.ablation_stats.aggregate`) are computed from the records alone, so a study can be run in
parts on several machines and re-aggregated anywhere; `heartjax.ablation_report` writes ablation.json,
ablation.md, ablation.png and the TensorBoard HParams folder WORKDIR/STUDY/hparams.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from heartjax import ablation_report, atomic, experiment
from heartjax import config as config_lib
from heartjax.ablation_records import (LOCAL_KEYS, check_record, complete_from_runs, load_records, make_record,
                                       record_path, settings_of)
from heartjax.ablation_stats import aggregate, run_mean_dice
from heartjax.config import Config
from heartjax.errors import HeartjaxError
from heartjax.eval.results import Results

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclasses.dataclass(frozen=True)
class Study:
    """A study: `variants` {NAME: overrides} on top of `baseline` overrides, trained for `kinds`.

    reference: the variant the others are compared with, patient by patient (default: the first variant);
    compare: {VARIANT: REFERENCE} where a variant is compared with another variant instead; x: a config key whose
    value is the x axis of a curve (e.g. "train.steps"); presets: the presets the study is meant for; seeds: the
    default number of training seeds; phantom_only: the study needs the built-in phantom (no --data).
    """

    name: str
    description: str
    variants: Mapping[str, Sequence[str]]
    baseline: Sequence[str] = ()
    kinds: Sequence[str] = ("2d", "3d")
    reference: str | None = None
    compare: Mapping[str, str] = dataclasses.field(default_factory=dict)
    x: str | None = None
    presets: Sequence[str] = ("smoke", "default", "acdc", "full")
    seeds: int = 3
    phantom_only: bool = False

    def __post_init__(self):
        if not _NAME.match(self.name):
            raise HeartjaxError(f"study name {self.name!r} must be letters, digits, '_', '.' or '-'")
        if not self.variants:
            raise HeartjaxError(f"study {self.name}: define at least one variant")
        for v, overrides in self.variants.items():
            if not _NAME.match(v):
                raise HeartjaxError(f"study {self.name}: variant name {v!r} must be letters, digits, '_', '.' or '-'")
            if isinstance(overrides, str):
                raise HeartjaxError(f"study {self.name}: variant {v!r} must be a list of overrides, not one string")
        for v, ref in {**self.compare, "": self.reference_name}.items():
            if (v and v not in self.variants) or ref not in self.variants:
                raise HeartjaxError(f"study {self.name}: reference {v or 'reference'}={ref!r} names no variant; "
                                    f"variants: {list(self.variants)}")
        if not (isinstance(self.seeds, int) and self.seeds >= 1):
            raise HeartjaxError(f"study {self.name}: seeds={self.seeds!r} must be a positive integer")

    @property
    def reference_name(self) -> str:
        """The variant every other one is compared with unless `compare` says otherwise."""
        return self.reference if self.reference is not None else next(iter(self.variants))

    def reference_of(self, variant: str) -> str | None:
        """The variant `variant` is compared with (None for the study's reference itself)."""
        ref = self.compare.get(variant, self.reference_name)
        return None if ref == variant else ref

    def varied_keys(self) -> list[str]:
        """Every config key a variant sets, in first-seen order."""
        return list(dict.fromkeys(o.split("=", 1)[0].strip() for ov in self.variants.values() for o in ov))


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a study: a variant at one training seed, with its full override list and validated config."""

    study: str
    variant: str
    seed: int
    preset: str
    data: str | None
    overrides: tuple[str, ...]  # applied on the preset, in order
    variant_overrides: tuple[str, ...]
    cfg: Config

    @property
    def name(self) -> str:
        return f"{self.variant}-seed{self.seed}"

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.cfg.train.models)


def expand(study: Study, preset: str = "default", data: str | None = None, seeds: int | None = None,
           extra: Sequence[str] = ()) -> list[RunSpec]:
    """The runs of a study, seed by seed (every variant of seed 0 first), each config validated.

    Overrides apply in this order: `train.models=KINDS`, the study's baseline, `extra` (e.g. from the command
    line), the variant's own, `seed=S`; so a variant always sets the keys it varies.
    """
    if study.phantom_only and data is not None:
        raise HeartjaxError(f"study {study.name} runs on the built-in phantom only; drop --data")
    seeds = study.seeds if seeds is None else seeds
    if not (isinstance(seeds, int) and seeds >= 1):
        raise HeartjaxError(f"--seeds={seeds!r} must be a positive integer")
    runs = []
    for seed in range(seeds):
        for variant, own in study.variants.items():
            overrides = (f"train.models={list(study.kinds)!r}", *study.baseline, *extra, *own, f"seed={seed}")
            try:
                cfg = experiment.config(preset, data, overrides)
            except HeartjaxError as e:
                raise HeartjaxError(f"study {study.name}, variant {variant}: {e}") from None
            runs.append(RunSpec(study.name, variant, seed, preset, data, overrides, tuple(own), cfg))
    return runs


def run_folder(workdir: Path, spec: RunSpec) -> Path:
    return Path(workdir) / spec.study / spec.variant / f"seed{spec.seed}"


def _flat(tree: Mapping, prefix: str = "") -> dict:
    """{dotted.key: value} of a nested dict."""
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
    return out


def run_one(spec: RunSpec, folder: Path, run_fn: Callable = experiment.run, log: Callable = print) -> Results:
    """The results of one run: read back when finished, resumed from its checkpoints when started, else run."""
    if (folder / "results.json").exists():
        return Results.from_json(json.loads((folder / "results.json").read_text()))
    resume = (folder / "config.json").exists()
    if resume:
        saved, wanted = _flat(config_lib.to_dict(experiment.load_config(folder))), _flat(config_lib.to_dict(spec.cfg))
        diff = [k for k in wanted if k not in LOCAL_KEYS and saved.get(k) != wanted[k]]
        if diff:
            raise HeartjaxError(f"run folder {folder} was started with other settings ({', '.join(diff)}); "
                                f"remove it to restart that run, or choose another --workdir")
    return run_fn(spec.cfg, folder, kinds=spec.kinds, resume=resume, log=log)


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def progress_line(i: int, n: int, spec: RunSpec, rec: Mapping, status: str, eta: float | None) -> str:
    """`[3/12] norm batch seed 1: ran (42 s); mean Dice 2d 0.812 3d 0.790; study ETA 6 min`."""
    dice = " ".join(f"{k} {run_mean_dice(rec, k):.3f}" for k in rec["kinds"])
    tail = "" if eta is None else f"; study ETA {_duration(eta)}"
    return f"[{i}/{n}] {spec.study} {spec.variant} seed {spec.seed}: {status} ({_duration(rec['seconds'])}); mean Dice {dice}{tail}"


def _check_fresh(study: Study, study_dir: Path, records: Path, existing: Mapping, resume: bool) -> None:
    started = study_dir.exists() and any(study_dir.iterdir())
    if (existing or started) and not resume:
        raise HeartjaxError(f"study {study.name} is already started ({len(existing)} run records in {records}"
                            f"{', run folders in ' + str(study_dir) if started else ''}); pass --resume to continue "
                            f"it, or choose another --workdir and --records")


def run_study(study: Study, preset: str = "default", data: str | None = None, seeds: int | None = None,
              workdir: str | Path = "runs/ablation", records: str | Path | None = None, extra: Sequence[str] = (),
              resume: bool = False, max_runs: int | None = None, run_fn: Callable = experiment.run,
              log: Callable = print, run_log: Callable | None = None, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Run every variant x seed of `study` not yet recorded, then aggregate and write the study's outputs.

    records: the folder of run records (default WORKDIR/STUDY/records). max_runs: stop after running this many
    (a study in parts); `run_fn` (default experiment.run) and `clock` are injectable for tests; `run_log`
    receives each run's own log lines (default: dropped). Returns the ablation dict written to ablation.json.
    """
    runs = expand(study, preset, data, seeds, extra)
    study_dir = Path(workdir) / study.name
    records = Path(records) if records is not None else study_dir / "records"
    existing = load_records(records, study)
    _check_fresh(study, study_dir, records, existing, resume)
    complete_from_runs(records, existing, study, workdir)
    for spec in runs:  # every record of a run asked for must match it, before anything trains
        if (spec.variant, spec.seed) in existing:
            check_record(spec, existing[(spec.variant, spec.seed)], record_path(records, spec))
    records.mkdir(parents=True, exist_ok=True)
    durations = [r["seconds"] for r in existing.values()]
    todo = [s for s in runs if (s.variant, s.seed) not in existing]
    executed = 0
    for i, spec in enumerate(runs, 1):
        if (spec.variant, spec.seed) in existing:
            log(progress_line(i, len(runs), spec, existing[(spec.variant, spec.seed)], "recorded before", None))
            continue
        if max_runs is not None and executed >= max_runs:
            log(f"stopping after {executed} runs (max_runs); {len(todo)} left: run again with --resume to continue")
            break
        t0 = clock()
        results = run_one(spec, run_folder(workdir, spec), run_fn, run_log or (lambda *a, **k: None))
        rec = make_record(spec, results, clock() - t0, study.x)
        atomic.write_json(record_path(records, spec), rec, indent=1)
        existing[(spec.variant, spec.seed)] = rec
        durations.append(rec["seconds"])
        executed += 1
        todo.remove(spec)
        log(progress_line(i, len(runs), spec, rec, "ran", sum(durations) / len(durations) * len(todo) if todo else None))
    expected = [(s.variant, s.seed) for s in runs]
    result = aggregate(study, existing, expected)
    ablation_report.write_outputs(study_dir, study, result, existing, settings_of)
    log(f"study {study.name}: {study_dir / 'ablation.json'}, ablation.md, ablation.png, hparams/"
        + ("" if result["complete"] else f" ({len(result['missing'])} runs missing)"))
    return result


def aggregate_study(study: Study, records: str | Path, workdir: str | Path = "runs/ablation",
                    seeds: int | None = None) -> dict:
    """Aggregate a study from its run records of seeds 0..seeds-1 alone (no training) and write its outputs to
    WORKDIR/STUDY."""
    found = load_records(Path(records), study)
    if not found:
        raise HeartjaxError(f"no run records of study {study.name} in {records}; run the study first or pass "
                            f"the --records folder that holds them")
    n = study.seeds if seeds is None else seeds
    found = {k: r for k, r in found.items() if k[1] < n}  # --seeds N: seeds 0..N-1 only, as the runs
    if not found:
        raise HeartjaxError(f"no run records of study {study.name} for seeds 0-{n - 1} in {records}")
    complete_from_runs(Path(records), found, study, workdir)
    expected = [(v, s) for s in range(n) for v in study.variants]
    result = aggregate(study, found, expected)
    study_dir = Path(workdir) / study.name
    study_dir.mkdir(parents=True, exist_ok=True)
    ablation_report.write_outputs(study_dir, study, result, found, settings_of)
    return result
