"""Give study records made before provenance was recorded the provenance of a rerun that reproduced one of them
bit for bit.

A record without `provenance` counts as code fingerprint "unknown" and is trained again by `experiments.ablate`.
Where the running code reruns one of a study's runs (the same preset and settings, on the same kind of CPU) and
gets every per-case Dice and HD95 of the old record back exactly, raw and post-processed, for every kind the two
share, the old records of that study were made by code that computes what the running code computes. `stamp`
then writes into each record without provenance the rerun's provenance (commit, fingerprint, libraries, machine)
and a `stamped` entry saying so: which record was rerun, how many values matched, when and by which command. A
single differing value stamps nothing.

    python -m experiments.checks.stamp_records --rerun NEW/all-seed0.json --old docs/studies/patients/all-seed0.json
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from pathlib import Path
from typing import Mapping, Sequence

from heartjax import experiment

from heartjax.common import atomic, provenance
from heartjax.ablation.records import kept
from heartjax.common.errors import HeartjaxError

SCORES = ("per_case", "per_case_post")


def read(path: Path) -> dict:
    """A record, or a HeartjaxError naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise HeartjaxError(f"cannot read run record {path} ({e})") from None


def settings(rec: Mapping):
    """The config a record's run used, with the kinds it trained left out (kinds train independently: each has
    its own seeds, so adding a kind to a run leaves the others' numbers unchanged)."""
    cfg = experiment.config(rec["preset"], None, kept(rec["overrides"]))
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, models=()))


def _values(rows: Sequence[Mapping]):
    """(case, metric, structure, value) of every score in a record's per-case rows."""
    for row in rows:
        for metric, v in row.items():
            if isinstance(v, Mapping):
                yield from ((row["case"], metric, s, x) for s, x in v.items())
            elif metric != "case":
                yield row["case"], metric, "", v


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def compare(rerun: Mapping, old: Mapping) -> tuple[int, list[str]]:
    """(values compared, differences) between two records' scores, kind by kind for the kinds both have."""
    if settings(rerun) != settings(old):
        raise HeartjaxError("the two records come from different settings (preset or overrides other than "
                            "train.models); a rerun must repeat the old run")
    kinds = [k for k in old["kinds"] if k in rerun["kinds"]]
    if not kinds:
        raise HeartjaxError(f"the records share no kind (old {old['kinds']}, rerun {rerun['kinds']})")
    n, diffs = 0, []
    for field in SCORES:
        if field not in old:
            continue
        if field not in rerun:
            diffs.append(f"{field}: missing in the rerun")
            continue
        for k in kinds:
            a, b = list(_values(old[field][k])), list(_values(rerun[field][k]))
            if [x[:3] for x in a] != [x[:3] for x in b]:
                diffs.append(f"{field} {k}: different cases, metrics or structures")
                continue
            n += len(a)
            diffs += [f"{field} {k} {c} {m} {s}: {x} vs {y}" for (c, m, s, x), (_, _, _, y) in zip(a, b)
                      if not _same(x, y)]
    return n, diffs


def stamp(rerun_path: Path, old_path: Path, folders: Sequence[Path], log=print) -> list[Path]:
    """Stamp every record without provenance in `folders` when the rerun reproduces the old record exactly;
    returns the records stamped (none when anything differs)."""
    rerun, old = read(rerun_path), read(old_path)
    if not rerun.get("provenance"):
        raise HeartjaxError(f"{rerun_path} has no provenance: it must come from the running code")
    if old.get("provenance"):
        raise HeartjaxError(f"{old_path} already has provenance; nothing to verify")
    if rerun["provenance"].get("fingerprint") != provenance.fingerprint():
        raise HeartjaxError(f"{rerun_path} was made by code fingerprint {rerun['provenance'].get('fingerprint')}, "
                            f"not the running code's {provenance.fingerprint()}; rerun it with this code")
    n, diffs = compare(rerun, old)
    log(f"compared {n} per-case values of {old_path.name} (old) and {rerun_path.name} (rerun): "
        f"{len(diffs)} differ")
    if diffs or n == 0:
        for d in diffs[:10]:
            log(f"  {d}")
        log("nothing stamped")
        return []
    mark = {"verified_by": f"{rerun.get('study')}/{rerun_path.name}", "reproduces": f"{old.get('study')}/{old_path.name}",
            "values_compared": n, "rerun_command": rerun["provenance"].get("command"),
            "command": provenance.command(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    done = []
    for folder in folders:
        for path in sorted(Path(folder).glob("*-seed*.json")):
            rec = read(path)
            if rec.get("provenance"):
                continue
            rec["provenance"] = {**{k: v for k, v in rerun["provenance"].items() if k not in ("command", "date")},
                                 "command": None, "date": None, "stamped": mark}
            atomic.write_json(path, rec, indent=1)
            done.append(path)
    log(f"stamped {len(done)} records: " + ", ".join(f"{p.parent.name}/{p.name}" for p in done))
    return done

