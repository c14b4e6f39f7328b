"""The ablation engine: run every variant x seed of a study not yet recorded (each one `experiment.run` into
WORKDIR/STUDY/VARIANT/seedS, resumed from its checkpoints when started), record it, then aggregate the records
and write the study's outputs.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from heartjax import experiment

from heartjax.common import atomic, provenance
from heartjax import config as config_lib
from heartjax.ablation import report
from heartjax.ablation.records import (LOCAL_KEYS, check_record, complete_from_runs, fingerprint_of, load_records,
                                       make_record, origins, origins_text, record_path, settings_of)
from heartjax.ablation.stats import aggregate, run_mean_dice
from heartjax.ablation.study import RunSpec, Study, expand, seed_list
from heartjax.common.errors import HeartjaxError
from heartjax.eval.results import Results
from heartjax.common.paths import RunFolder, study_run

# --reuse-records: "match" reuses a record (or a finished run folder) only when the code fingerprint it was made
# with is the running code's; "any" reuses every record whatever code made it.
REUSE = ("match", "any")
# Settings that change only which scans a finished model is scored on, never the model: a run that differs from a
# finished run of the same seed (this study's, else another's in the same WORKDIR) in these alone, or not at all, is
# that run's model scored again (see `seed_from_twin`).
SCORING_KEYS = ("data.test_phantom_modality",)
# What a twin's folder lends: the trained weights and what they were trained on (not its scores or predictions).
_LENT = ("checkpoints", "models", "splits.json", "plan.json", "label_scheme.json")
MODEL_OF = "model_of.txt"  # in a seeded run folder: the twin (VARIANT or STUDY/VARIANT) whose model it scores


def run_folder(workdir: Path, spec: RunSpec) -> Path:
    return study_run(Path(workdir) / spec.study, spec.variant, spec.seed).root


def _flat(tree: Mapping, prefix: str = "") -> dict:
    """{dotted.key: value} of a nested dict."""
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
    return out


def run_one(spec: RunSpec, folder: Path, run_fn: Callable = experiment.run, log: Callable = print,
            reuse: str = "match", say: Callable | None = None) -> Results:
    """The results of one run: read back when finished (by the running code, unless `reuse` is "any"; results of
    other code are replaced by a new run, said to `say`, default `log`), resumed from its checkpoints when
    started, else run. `log` receives the run's own lines."""
    run = RunFolder(folder)
    if run.results.exists():
        data = json.loads(run.results.read_text())
        made_by = provenance.fingerprint_of(data.get("provenance"))
        if reuse == "any" or made_by == provenance.fingerprint():
            return Results.from_json(data)
        (say or log)(f"{folder} holds results of other code (fingerprint {made_by}, not {provenance.fingerprint()}): "
                     f"running it again")
        return run_fn(spec.cfg, folder, kinds=spec.kinds, resume=False, overwrite=True, log=log)
    resume = run.config.exists()
    if resume:
        saved, wanted = _flat(config_lib.to_dict(experiment.load_config(folder))), _flat(config_lib.to_dict(spec.cfg))
        diff = [k for k in wanted if k not in LOCAL_KEYS and saved.get(k) != wanted[k]]
        if diff:
            raise HeartjaxError(f"run folder {folder} was started with other settings ({', '.join(diff)}); "
                                f"remove it to restart that run, or choose another --out")
    return run_fn(spec.cfg, folder, kinds=spec.kinds, resume=resume, log=log)


def _training_settings(cfg_dict: Mapping) -> dict:
    """The flat settings that decide the trained model: all but file locations and SCORING_KEYS."""
    return {k: v for k, v in _flat(cfg_dict).items() if k not in LOCAL_KEYS and k not in SCORING_KEYS}


def _twin_folders(spec: RunSpec, runs: Sequence[RunSpec], workdir: Path):
    """(label, folder) of the runs that may hold `spec`'s model: its own study's other runs of its seed first (label
    VARIANT), then every other study's in `workdir` (label STUDY/VARIANT)."""
    own = [(o.variant, run_folder(workdir, o)) for o in runs if o is not spec and o.seed == spec.seed]
    seen = {f for _, f in own} | {run_folder(workdir, spec)}
    others = [(f"{f.parent.parent.name}/{f.parent.name}", f) for f in sorted(Path(workdir).glob(f"*/*/seed{spec.seed}"))
              if f not in seen and f.parent.parent.name != spec.study]
    return own + others


def find_twin(spec: RunSpec, runs: Sequence[RunSpec], workdir: Path, reuse: str = "match") -> tuple[str, Path] | None:
    """(label, folder) of a finished run in `workdir` whose model `spec` would train again: the same seed, kinds
    and training settings, differing at most in SCORING_KEYS (see `_twin_folders` for the order searched); its
    checkpoints are kept and (unless `reuse` is "any") its results were made by the running code. None if none."""
    wanted = _training_settings(config_lib.to_dict(spec.cfg))
    for label, path in _twin_folders(spec, runs, Path(workdir)):
        folder = RunFolder(path)
        if not (folder.results.is_file() and folder.config.is_file()
                and all(folder.checkpoints(k).is_dir() for k in spec.kinds)):
            continue
        if _training_settings(json.loads(folder.config.read_text())) != wanted:
            continue
        made_by = provenance.fingerprint_of(json.loads(folder.results.read_text()).get("provenance"))
        if reuse == "any" or made_by == provenance.fingerprint():
            return label, path
    return None


def seed_from_twin(spec: RunSpec, twin: tuple[str, Path], workdir: Path) -> Path:
    """Start `spec`'s run folder as a copy of its twin's trained state (checkpoints, model specs, split, plan) with
    `spec`'s own config, so that resuming it trains no step and scores the twin's best weights on `spec`'s test
    scans. Training is deterministic on one machine, so these are the weights `spec` would have trained (the
    tests compare both ways). Returns the folder."""
    label, src = twin[0], RunFolder(twin[1])
    dst = RunFolder(run_folder(workdir, spec))
    dst.root.mkdir(parents=True, exist_ok=True)
    for name in _LENT:
        a, b = src.root / name, dst.root / name
        if a.is_dir():
            shutil.copytree(a, b)
        elif a.is_file():
            shutil.copy2(a, b)
    atomic.write_text(dst.root / MODEL_OF, f"{label}\n")
    atomic.write_json(dst.config, config_lib.to_dict(spec.cfg))  # last: a folder with a config is a started run
    return dst.root


def split_by_code(existing: Mapping, runs: Sequence[RunSpec], records: Path, reuse: str,
                  log: Callable) -> dict:
    """The records to reuse: with reuse "match" those made by code with the running code's fingerprint (the
    others are ignored and their runs trained again, said in one line), with "any" all of them (said too)."""
    if reuse not in REUSE:
        raise HeartjaxError(f"--reuse-records={reuse!r}: choose one of {', '.join(REUSE)}")
    now = provenance.fingerprint()
    other = {k: r for k, r in existing.items() if fingerprint_of(r) != now}
    asked = sum((s.variant, s.seed) in other for s in runs)
    if reuse == "any":
        if existing:
            log(f"--reuse-records any: reusing all {len(existing)} run records in {records} whatever code made "
                f"them ({len(other)} not made by the running code, fingerprint {now}): "
                f"{origins_text(origins(existing.values()))}")
        return dict(existing)
    if other:
        log(f"ignoring {len(other)} of {len(existing)} run records in {records}: not made by the running code "
            f"(fingerprint {now}): {origins_text(origins(other.values()))}; the {asked} runs asked for among them "
            f"train again (--reuse-records any would reuse them)")
    elif existing:
        log(f"reusing {len(existing)} run records in {records} made by the running code (fingerprint {now})")
    return {k: r for k, r in existing.items() if k not in other}


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def progress_line(i: int, n: int, spec: RunSpec, rec: Mapping, status: str, eta: float | None) -> str:
    """`[3/12] norm batch seed 1: ran (42 s); mean Dice 2d 0.812 3d 0.790; study ETA 6 min`."""
    dice = " ".join(f"{k} {run_mean_dice(rec, k):.3f}" for k in rec["kinds"])
    tail = "" if eta is None else f"; study ETA {_duration(eta)}"
    return f"[{i}/{n}] {spec.study} {spec.variant} seed {spec.seed}: {status} ({_duration(rec['seconds'])}); mean Dice {dice}{tail}"


def _check_fresh(study: Study, study_dir: Path, records: Path, existing: Mapping, resume: bool) -> None:
    """Run folders of an earlier start need --resume; records alone do not (a fresh clone continues the committed
    records: a matching one is reused, any other is trained again, and one of other settings is refused)."""
    started = study_dir.exists() and any(study_dir.iterdir())
    if started and not resume:
        raise HeartjaxError(f"study {study.name} is already started (run folders in {study_dir}, {len(existing)} "
                            f"run records in {records}); pass --resume to continue it, or choose another --out")


def run_study(study: Study, preset: str = "default", data: str | None = None, seeds: int | Sequence[int] | None = None,
              workdir: str | Path = "runs/ablation", records: str | Path | None = None, extra: Sequence[str] = (),
              resume: bool = False, max_runs: int | None = None, run_fn: Callable = experiment.run,
              log: Callable = print, run_log: Callable | None = None, clock: Callable[[], float] = time.perf_counter,
              reuse: str = "match", share: bool = True) -> dict:
    """Run every variant x seed of `study` not yet recorded, then aggregate and write the study's outputs.

    records: the folder of run records (default WORKDIR/STUDY/records). max_runs: stop after running this many
    (a study in parts); `run_fn` (default experiment.run) and `clock` are injectable for tests; `run_log`
    receives each run's own log lines (default: dropped). reuse: "match" (a record counts only when made by code
    with the running code's fingerprint; the others are trained again) or "any" (every record counts; implies
    --resume). share: a run whose training settings equal a finished run's of the same seed (in this study or
    another in `workdir`; SCORING_KEYS may differ) scores that run's model instead of training it again
    (`find_twin`, `seed_from_twin`; its record names the twin). Returns the
    ablation dict written to ablation.json.
    """
    runs = expand(study, preset, data, seeds, extra)
    study_dir = Path(workdir) / study.name
    records = Path(records) if records is not None else study_dir / "records"
    existing = split_by_code(load_records(records, study), runs, records, reuse, log)
    _check_fresh(study, study_dir, records, existing, resume or reuse == "any")
    complete_from_runs(records, existing, study, workdir)
    for spec in runs:  # every record of a run asked for must match it, before anything trains
        if (spec.variant, spec.seed) in existing:
            check_record(spec, existing[(spec.variant, spec.seed)], record_path(records, spec))
    records.mkdir(parents=True, exist_ok=True)
    executed, scored = _run_missing(study, runs, existing, records, workdir, max_runs, run_fn, log, run_log, clock,
                                    reuse, share)
    log(f"study {study.name}: trained {executed - scored} runs, "
        + (f"scored {scored} runs with another run's model, " if scored else "")
        + f"reused {len(runs) - executed - _missing(runs, existing)} "
        f"run records" + (" (--reuse-records any)" if reuse == "any" else ""))
    result = aggregate(study, existing, [(s.variant, s.seed) for s in runs])
    result["provenance"] = {"reuse_records": reuse, "fingerprint": provenance.fingerprint(),
                            **origins(existing.values())}
    report.write_outputs(study_dir, study, result, existing, settings_of)
    log(f"study {study.name}: {study_dir / 'ablation.json'}, ablation.md, ablation.png, hparams/"
        + ("" if result["complete"] else f" ({len(result['missing'])} runs missing)"))
    return result


def _missing(runs: Sequence[RunSpec], existing: Mapping) -> int:
    return sum((s.variant, s.seed) not in existing for s in runs)


def _run_missing(study: Study, runs: Sequence[RunSpec], existing: dict, records: Path, workdir, max_runs, run_fn,
                 log: Callable, run_log, clock, reuse: str, share: bool = True) -> tuple[int, int]:
    """Run the runs without a record (into `existing`, each recorded as it ends); returns how many ran and how many
    of those scored another run's model."""
    durations = [r["seconds"] for r in existing.values()]
    todo = [s for s in runs if (s.variant, s.seed) not in existing]
    executed = scored = 0
    for i, spec in enumerate(runs, 1):
        if (spec.variant, spec.seed) in existing:
            log(progress_line(i, len(runs), spec, existing[(spec.variant, spec.seed)], "recorded before", None))
            continue
        if max_runs is not None and executed >= max_runs:
            log(f"stopping after {executed} runs (max_runs); {len(todo)} left: run again with --resume to continue")
            break
        t0 = clock()
        folder = run_folder(workdir, spec)
        twin = find_twin(spec, runs, Path(workdir), reuse) if share and not RunFolder(folder).config.exists() else None
        if twin is not None:
            seed_from_twin(spec, twin, Path(workdir))
            log(f"{spec.study} {spec.variant} seed {spec.seed}: the model of {twin[0]} seed {spec.seed} "
                f"(the same training settings), scored on this variant's test scans")
        results = run_one(spec, folder, run_fn, run_log or (lambda *a, **k: None), reuse, log)
        rec = make_record(spec, results, clock() - t0, study.x)
        twin_of = _twin_of(folder)  # seeded now, or before a resume
        if twin_of:
            rec["model_of"] = twin_of  # seconds: scoring only; train_seconds: the twin's training
            scored += 1
        atomic.write_json(record_path(records, spec), rec, indent=1)
        existing[(spec.variant, spec.seed)] = rec
        durations.append(rec["seconds"])
        executed += 1
        todo.remove(spec)
        log(progress_line(i, len(runs), spec, rec, "ran", sum(durations) / len(durations) * len(todo) if todo else None))
    return executed, scored


def _twin_of(folder: Path) -> str | None:
    """The twin whose model a run folder was seeded with (a resumed run that was seeded before)."""
    marker = Path(folder) / MODEL_OF
    return marker.read_text().strip() if marker.is_file() else None


def aggregate_study(study: Study, records: str | Path, workdir: str | Path = "runs/ablation",
                    seeds: int | Sequence[int] | None = None) -> dict:
    """Aggregate a study from its run records of `seeds` (a count N: 0..N-1, or a list) alone (no training),
    whatever code made them, and write its outputs to WORKDIR/STUDY; `result["provenance"]` lists the commits
    and machines it mixes."""
    found = load_records(Path(records), study)
    if not found:
        raise HeartjaxError(f"no run records of study {study.name} in {records}; run the study first or pass "
                            f"the --records folder that holds them")
    chosen = seed_list(seeds, study.seeds)
    found = {k: r for k, r in found.items() if k[1] in chosen}  # those seeds only, as the runs
    if not found:
        raise HeartjaxError(f"no run records of study {study.name} for seeds {chosen} in {records}")
    complete_from_runs(Path(records), found, study, workdir)
    expected = [(v, s) for s in chosen for v in study.variants]
    result = aggregate(study, found, expected)
    result["provenance"] = {"reuse_records": "any (--aggregate-only)", "fingerprint": provenance.fingerprint(),
                            **origins(found.values())}
    study_dir = Path(workdir) / study.name
    study_dir.mkdir(parents=True, exist_ok=True)
    report.write_outputs(study_dir, study, result, found, settings_of)
    return result
