"""Run records of an ablation study: one small JSON per run (RECORDS/VARIANT-seedS.json), read back and checked.

A record holds the run's settings (preset and overrides, file locations left out), its facts (kinds, steps,
seconds, the machine) and per-case Dice and HD95 per structure of every kind (and, in records made since calibration
is measured, each kind's per-case calibration rows): everything the study's statistics need, nothing more (no
images, no predictions), so records can be kept in the repository and aggregated anywhere.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import jax

from heartjax import experiment

from heartjax.common import atomic, provenance
from heartjax import config as config_lib
from heartjax.ablation.calibration import record_rows
from heartjax.ablation.study import RunSpec, Study
from heartjax.config import Config
from heartjax.common.errors import HeartjaxError
from heartjax.eval.metric_table import METRICS
from heartjax.eval.results import Results
from heartjax.common.paths import study_run

_RECORD = re.compile(r"^(?P<variant>.+)-seed(?P<seed>\d+)\.json$")
# Settings that say where files live, not what is computed: ignored when a record is matched to its run.
LOCAL_KEYS = ("data.dir", "data.phantom_dir", "data.cache_dir", "infer.save_predictions")
# Where the x value of a run comes from when its config value is None: the size of a part of its split.
X_FALLBACK = {"data.train_cases": "train", "data.max_cases": "train"}


def key_of(override: str) -> str:
    """The dotted key of a `key=value` override."""
    return override.split("=", 1)[0].strip()


def kept(overrides: Sequence[str]) -> list[str]:
    """The overrides that change the numbers (LOCAL_KEYS dropped)."""
    return [o for o in overrides if key_of(o) not in LOCAL_KEYS]


def record_path(records: Path, spec: RunSpec) -> Path:
    """RECORDS/VARIANT-seedS.json."""
    return Path(records) / f"{spec.name}.json"


def x_value(key: str | None, cfg: Config, results: Results):
    """The x value of a run: its config value at `key` (for a None training-set size, the split's size)."""
    if key is None:
        return None
    value = config_lib.get(cfg, key)
    if value is None and key in X_FALLBACK and results.split:
        value = results.split.get(X_FALLBACK[key])
    return config_lib.json_ready(value)


def _case_row(case: Mapping) -> dict:
    """What a record keeps of a case: the metrics the table marks `record` (Dice, HD95), and whole-heart Dice."""
    return {"case": case["case"], **{m.name: case.get(m.name, {}) for m in METRICS if m.record},
            "whole_heart_dice": case.get("whole_heart_dice")}


def machine() -> dict:
    """What a run's seconds were measured on: JAX backend, device kind, device and CPU counts."""
    return {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
            "devices": jax.device_count(), "cpus": os.cpu_count()}


def make_record(spec: RunSpec, results: Results, seconds: float, x_key: str | None = None) -> dict:
    """The small JSON of one run: settings (file locations left out), run facts, the provenance of its results
    (heartjax.common.provenance: commit, code fingerprint, libraries, machine, command line) and per-case Dice / HD95 per
    structure (no images, no predictions)."""
    models = results.models
    return config_lib.json_ready({
        "study": spec.study, "variant": spec.variant, "seed": spec.seed, "preset": spec.preset, "data": spec.data,
        "overrides": kept(spec.overrides), "variant_overrides": list(spec.variant_overrides),
        "kinds": list(spec.kinds), "x": x_value(x_key, spec.cfg, results), "dataset": results.dataset,
        "labels": list(results.label_names), "split": results.split, "test_cases": list(results.test_cases),
        "seconds": float(seconds), "machine": machine(), "provenance": results.provenance,
        "steps": {k: m.info.get("steps") for k, m in models.items()},
        "train_seconds": {k: m.info.get("train_seconds") for k, m in models.items()},
        "per_case": {k: [_case_row(c) for c in m.per_case] for k, m in models.items()},
        **post_rows(models), **record_rows(models),
    })


def post_rows(models: Mapping) -> dict:
    """{"per_case_post": {kind: rows}}: the test scores after the post-processing each kind's validation patients
    chose (what `heartjax.predict` writes), when every kind has them; else {}."""
    post = {k: (m.info.get("largest_component_test") or {}).get("per_case") for k, m in models.items()}
    return {"per_case_post": {k: [_case_row(c) for c in rows] for k, rows in post.items()}} \
        if post and all(post.values()) else {}


def complete_from_runs(records: Path, found: dict, study: Study, workdir: Path) -> int:
    """Give records made before post-processed scores were kept their `per_case_post`, read from the run's
    results.json when its folder is still in `workdir` and its raw scores are the record's (rewritten atomically);
    returns how many were completed."""
    done = 0
    for (variant, seed), rec in found.items():
        results = study_run(Path(workdir) / study.name, variant, seed).results
        if "per_case_post" in rec or not results.is_file():
            continue
        models = Results.from_json(json.loads(results.read_text())).models
        same_run = all(k in models and [_case_row(c) for c in models[k].per_case] == rec["per_case"][k]
                       for k in rec["kinds"])  # its raw scores are the record's own: the run that made it
        extra = post_rows(models)
        if extra and same_run:
            rec.update(extra)
            atomic.write_json(Path(records) / f"{variant}-seed{seed}.json", rec, indent=1)
            done += 1
    return done


def load_records(records: Path, study: Study) -> dict[tuple[str, int], dict]:
    """The study's records in a folder, {(variant, seed): record}; a record whose variant the study defines
    differently now raises (its numbers belong to other settings)."""
    out = {}
    for path in sorted(Path(records).glob("*.json")) if Path(records).is_dir() else []:
        m = _RECORD.match(path.name)
        if not m or m["variant"] not in study.variants:
            continue
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise HeartjaxError(f"cannot read run record {path} ({e}); delete it to redo that run") from None
        if rec.get("study") != study.name or rec.get("variant_overrides") != list(study.variants[m["variant"]]):
            raise HeartjaxError(f"run record {path} was made for variant {m['variant']} = "
                                f"{rec.get('variant_overrides')} of study {rec.get('study')}, but the study now "
                                f"defines {list(study.variants[m['variant']])}; delete the record to redo it, or "
                                f"pass another --records folder")
        out[(m["variant"], int(m["seed"]))] = rec
    return out


def check_record(spec: RunSpec, rec: Mapping, path: Path) -> None:
    """A finished record must come from the same preset and overrides (file locations aside) as the run."""
    if rec.get("preset") != spec.preset or kept(rec.get("overrides", [])) != kept(spec.overrides):
        raise HeartjaxError(f"run record {path} was made with preset {rec.get('preset')} and overrides "
                            f"{kept(rec.get('overrides', []))}, not preset {spec.preset} and {kept(spec.overrides)} "
                            f"as asked now; delete it to redo the run, or pass another --records folder")


def settings_of(rec: Mapping, keys: Sequence[str]) -> dict:
    """The values of config `keys` in the run a record comes from (rebuilt from its preset and overrides)."""
    cfg = experiment.config(rec["preset"], None, [o for o in rec["overrides"] if key_of(o) not in LOCAL_KEYS])
    return {k: config_lib.json_ready(config_lib.get(cfg, k)) for k in keys}


def fingerprint_of(rec: Mapping) -> str:
    """The code fingerprint of the run a record comes from ("unknown": made before provenance was recorded)."""
    return provenance.fingerprint_of(rec.get("provenance"))


def _machine_label(rec: Mapping) -> str:
    if rec.get("provenance"):
        return provenance.machine_label(rec["provenance"].get("machine", {}))
    m = rec.get("machine") or {}
    return f"{m.get('device', '?')} x{m.get('devices', '?')} ({m.get('cpus', '?')} CPUs, CPU model not recorded)"


def _libraries(rec: Mapping) -> str:
    v = (rec.get("provenance") or {}).get("versions")
    return " ".join(f"{k} {v.get(k)}" for k in provenance.LIBRARIES) if v else "not recorded"


def origins(recs) -> dict:
    """What a set of records mixes: {"commits", "fingerprints", "machines", "libraries"}: {label: count} each, and
    how many records lack provenance."""
    recs = list(recs)
    count = lambda f: dict(sorted(Counter(f(r) for r in recs).items()))
    return {"commits": count(lambda r: provenance.commit_label(r.get("provenance"))),
            "fingerprints": count(fingerprint_of), "machines": count(_machine_label), "libraries": count(_libraries),
            "without_provenance": sum(not r.get("provenance") for r in recs),
            "stamped": sum(bool((r.get("provenance") or {}).get("stamped")) for r in recs)}


def origins_text(o: Mapping) -> str:
    """`commits c13b632 (3), not recorded (9); code fingerprints ...; machines ...; libraries ...`: `origins` in
    one line, each value with its number of records."""
    part = lambda d: ", ".join(f"{k} ({n})" for k, n in d.items())
    lacking = f"; {o['without_provenance']} records without provenance (made before it was recorded)" \
        if o.get("without_provenance") else ""
    stamped = f"; {o['stamped']} records stamped after a bit-exact rerun (docs/provenance.md)" \
        if o.get("stamped") else ""
    return (f"commits {part(o['commits'])}; code fingerprints {part(o['fingerprints'])}; machines "
            f"{part(o['machines'])}; libraries {part(o['libraries'])}{lacking}{stamped}")
