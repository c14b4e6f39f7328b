"""A study's numbers from its run records (pure functions of JSON values): means over seeds and paired tests.

Statistics. The test patients are the independent units; the training seeds are repeated measures of the same
patients. A variant is compared with its reference over the (patient, seed) pairs both have: each patient's
per-case mean Dice (over structures) is averaged over the shared seeds on each side, and the per-patient
differences are tested with the two-sided Wilcoxon signed-rank test (`heartjax.eval.metrics.paired_test`; the
paired t-test p is given too). Testing the patients x seeds pairs as if independent would count each patient
several times and understate p; averaging over seeds first keeps the pairing by patient and uses the seeds to
reduce the training noise of each patient's difference. `diff` is variant minus reference.
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping, Sequence

import numpy as np

from heartjax.ablation import calibration
from heartjax.common.errors import HeartjaxError
from heartjax.eval.metrics import paired_test
from heartjax.eval.scoring import json_safe

TEST = "wilcoxon signed-rank (two-sided) on per-patient differences of mean Dice, averaged over the shared seeds"


def nanmean(values) -> float:
    a = np.asarray([np.nan if v is None else v for v in values], np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(a)) if a.size else math.nan


def _sd(values) -> float:
    """Sample standard deviation of the finite values (NaN below two)."""
    a = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    return float(a.std(ddof=1)) if a.size > 1 else math.nan


def case_mean_dice(case: Mapping) -> float:
    """A case's mean Dice over its structures (NaN-skipping: a structure absent from both maps has no Dice)."""
    return nanmean(case["dice"].values())


def run_mean_dice(rec: Mapping, kind: str) -> float:
    """A run's mean Dice: per structure the mean over test patients, then the mean over structures."""
    cases = rec["per_case"][kind]
    return nanmean([nanmean([c["dice"].get(s) for c in cases]) for s in rec["labels"]])


def per_structure(recs: Sequence[Mapping], kind: str, labels: Sequence[str]) -> dict:
    """{STRUCTURE: {dice_mean, dice_sd, hd95_mean, n}}: means over all (patient, seed) values, sd over the seeds'
    own means, n the number of Dice values behind the mean."""
    out = {}
    for s in labels:
        dice = [c["dice"].get(s) for r in recs for c in r["per_case"][kind]]
        hd95 = [c["hd95"].get(s) for r in recs for c in r["per_case"][kind]]
        per_seed = [nanmean([c["dice"].get(s) for c in r["per_case"][kind]]) for r in recs]
        out[s] = {"dice_mean": nanmean(dice), "dice_sd": _sd(per_seed), "hd95_mean": nanmean(hd95),
                  "n": int(sum(v is not None and math.isfinite(v) for v in dice))}
    return out


def _patient_values(recs: Mapping[int, Mapping], kind: str, seeds: Sequence[int]) -> dict[str, list[float]]:
    """{case: [mean Dice at each of `seeds`]}."""
    out: dict[str, list[float]] = {}
    for seed in seeds:
        for c in recs[seed]["per_case"][kind]:
            out.setdefault(c["case"], []).append(case_mean_dice(c))
    return out


def paired(ref: Mapping[int, Mapping], var: Mapping[int, Mapping], kind_ref: str, kind_var: str) -> dict | None:
    """Variant minus reference over the (patient, seed) pairs both have: {diff, sd, test, p, p_ttest, n (patients),
    seeds, n_pairs}; None when they share no seed or patient. `ref`/`var` are {seed: record}."""
    seeds = sorted(s for s in set(ref) & set(var) if kind_ref in ref[s]["per_case"] and kind_var in var[s]["per_case"])
    if not seeds:
        return None
    a, b = _patient_values(ref, kind_ref, seeds), _patient_values(var, kind_var, seeds)
    cases = [c for c in a if c in b and len(a[c]) == len(b[c]) == len(seeds)]
    if not cases:
        return None
    pairs = [(x, y) for c in cases for x, y in zip(a[c], b[c]) if math.isfinite(x) and math.isfinite(y)]
    t = paired_test([nanmean(a[c]) for c in cases], [nanmean(b[c]) for c in cases])
    return {"diff": t["mean_diff"], "sd": t["sd_diff"], "test": "wilcoxon", "p": t["p_wilcoxon"],
            "p_ttest": t["p_ttest"], "n": t["n"], "seeds": len(seeds), "n_pairs": len(pairs)}


def step_seconds(recs: Sequence[Mapping], kind: str) -> float:
    """Seconds per optimiser step of a kind: the slope of train seconds against steps through the fastest run at
    each step count (fixed costs such as compilation drop out; the fastest run is the least loaded machine), or
    the fastest run's seconds / steps when all runs have one step count."""
    fastest: dict[int, float] = {}
    for r in recs:
        steps, secs = (r.get("steps") or {}).get(kind), (r.get("train_seconds") or {}).get(kind)
        if steps and secs is not None:
            fastest[steps] = min(secs, fastest.get(steps, math.inf))
    if not fastest:
        return math.nan
    if len(fastest) == 1:
        (steps, secs), = fastest.items()
        return secs / steps
    x, y = np.array(list(fastest), np.float64), np.array(list(fastest.values()), np.float64)
    slope = float(np.polyfit(x, y, 1)[0])
    return slope if slope > 0 else float(np.min(y / x))


def _sign_changes(x: np.ndarray, d: np.ndarray) -> list[float]:
    """Where a piecewise-linear difference d(x) changes sign, interpolated in log x (the budgets double)."""
    out = []
    for i in range(len(x) - 1):
        d1, d2 = d[i], d[i + 1]
        if d1 == 0:
            out.append(float(x[i]))
        elif d1 * d2 < 0:
            f = d1 / (d1 - d2)
            out.append(float(np.exp(np.log(x[i]) + f * (np.log(x[i + 1]) - np.log(x[i])))))
    if len(x) and d[-1] == 0:
        out.append(float(x[-1]))
    return out


def _curve(variants: Mapping, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """A kind's (x, mean Dice over seeds) over the variants with a positive numeric x, sorted by x."""
    pts = sorted((v["x"], v["mean_dice"][kind]["mean"]) for v in variants.values()
                 if kind in v["mean_dice"] and isinstance(v["x"], (int, float)) and not isinstance(v["x"], bool)
                 and v["x"] > 0 and v["mean_dice"][kind]["mean"] is not None)
    return np.array([p[0] for p in pts], np.float64), np.array([p[1] for p in pts], np.float64)


def pair_key(kind: str, base: str) -> str:
    """The key of `kind` compared with `base` in a study's dicts ("3d_minus_2d"); built, never parsed."""
    return f"{kind}_minus_{base}"


def crossings(variants: Mapping, kinds: Sequence[str], x_key: str | None, step_secs: Mapping) -> dict:
    """Where each kind's curve crosses the first kind's: {"B_minus_A": {by_x, leader, cross_x, by_minutes}}.

    by_x: the paired difference (vs_kind) at every x both kinds were trained at; cross_x: where it changes sign
    (log-x interpolation); leader: the kind ahead at every x, or None when the curves cross. by_minutes (a steps
    axis with both step times known): each kind's mean-Dice curve placed at steps x its measured step time and
    compared at equal training minutes over the range both cover (interpolated in log minutes; not paired, as
    the two kinds sit at different steps there), with where that difference changes sign.
    """
    out = {}
    for b in kinds[1:]:
        a, name = kinds[0], pair_key(b, kinds[0])
        rows = sorted((v["x"], v["vs_kind"].get(name)) for v in variants.values()
                      if isinstance(v["x"], (int, float)) and not isinstance(v["x"], bool) and v["x"] > 0
                      and v["vs_kind"].get(name))
        if len(rows) < 2:
            continue
        x, d = np.array([r[0] for r in rows], np.float64), np.array([r[1]["diff"] for r in rows], np.float64)
        block = {"by_x": [{"x": r[0], "diff": r[1]["diff"], "p": r[1]["p"]} for r in rows],
                 "leader": b if (d > 0).all() else a if (d < 0).all() else None, "cross_x": _sign_changes(x, d),
                 "by_minutes": None}
        sa, sb = step_secs.get(a), step_secs.get(b)
        (xa, ma), (xb, mb) = _curve(variants, a), _curve(variants, b)
        if x_key == "train.steps" and sa and sb and math.isfinite(sa) and math.isfinite(sb) and min(xa.size, xb.size) > 1:
            ta, tb = xa * sa / 60, xb * sb / 60
            lo, hi = max(ta[0], tb[0]), min(ta[-1], tb[-1])
            grid = np.unique(np.concatenate([ta, tb]))
            grid = grid[(grid >= lo) & (grid <= hi)]
            if grid.size:
                diff = np.interp(np.log(grid), np.log(tb), mb) - np.interp(np.log(grid), np.log(ta), ma)
                block["by_minutes"] = {"range": [float(lo), float(hi)],
                                       "diff": [{"minutes": float(t), "diff": float(v)} for t, v in zip(grid, diff)],
                                       "cross_minutes": _sign_changes(grid, diff)}
        out[name] = block
    return out


def _variant(study, name: str, recs: dict[int, Mapping], ref: dict[int, Mapping] | None, labels) -> dict:
    """One variant's block of ablation.json."""
    kinds = list(next(iter(recs.values()))["kinds"])
    ordered = [recs[s] for s in sorted(recs)]
    block = {"overrides": list(study.variants[name]), "kinds": kinds, "seeds": sorted(recs),
             "x": ordered[0].get("x"), "reference": study.reference_of(name),
             "per_structure": {}, "mean_dice": {}, "vs_baseline": {}, "vs_kind": {}, "steps": {}, "train_seconds": {}}
    for kind in kinds:
        per_seed = [run_mean_dice(r, kind) for r in ordered]
        block["per_structure"][kind] = per_structure(ordered, kind, labels)
        block["mean_dice"][kind] = {"mean": nanmean(per_seed), "sd": _sd(per_seed), "n": len(per_seed),
                                    "per_seed": per_seed}
        block["vs_baseline"][kind] = paired(ref, recs, kind, kind) if ref else None
        block["steps"][kind] = nanmean([r["steps"].get(kind) for r in ordered])
        block["train_seconds"][kind] = nanmean([r["train_seconds"].get(kind) for r in ordered])
        if kind != kinds[0]:
            block["vs_kind"][pair_key(kind, kinds[0])] = paired(recs, recs, kinds[0], kind)
    return block


def _one(values, what: str):
    """The single value all records share, or a HeartjaxError naming `what`."""
    found = {str(v) for v in values}
    if len(found) > 1:
        raise HeartjaxError(f"the study's run records mix {what} {sorted(found)}; keep one per --records folder")
    return next(iter(values))


def aggregate(study, records: Mapping[tuple[str, int], Mapping], expected: Sequence[tuple[str, int]] = ()) -> dict:
    """The ablation.json dict of a study from its records {(variant, seed): record}.

    expected: the (variant, seed) runs the study asked for; those without a record are listed under "missing".
    """
    if not records:
        raise HeartjaxError(f"study {study.name} has no finished runs to aggregate")
    recs = list(records.values())
    labels = _one([r["labels"] for r in recs], "label sets")
    variants = _variants(study, records, labels)
    kinds = list(dict.fromkeys(k for r in recs for k in r["kinds"]))
    missing = [f"{v}-seed{s}" for v, s in expected if (v, s) not in records]
    steps = {k: step_seconds(recs, k) for k in kinds}
    return json_safe({
        "study": study.name, "description": study.description,
        "preset": _one([r["preset"] for r in recs], "presets"), "datasets": sorted({r["dataset"] for r in recs}),
        "baseline": {"variant": study.reference_name, "overrides": list(study.baseline)},
        "x": study.x, "kinds": kinds, "labels": list(labels), "runs": len(recs), "complete": not missing,
        "missing": missing, "statistics": TEST,
        "total_seconds": float(sum(r["seconds"] for r in recs)),
        "step_seconds": steps,
        "variants": variants,
        "crossings": crossings(variants, kinds, study.x, steps) if study.x else {},
        "postprocessed": _postprocessed(study, records, labels, kinds, steps),
        "calibration": calibration.aggregate(records, labels),
    })


def _variants(study, records: Mapping[tuple[str, int], Mapping], labels) -> dict:
    """{variant: block} for the variants with records, each compared with its reference's records."""
    by_variant = {v: {s: r for (vv, s), r in records.items() if vv == v} for v in study.variants}
    out = {}
    for name, vrecs in by_variant.items():
        if vrecs:
            ref_name = study.reference_of(name)
            out[name] = _variant(study, name, vrecs, by_variant.get(ref_name) if ref_name else None, labels)
    return out


def _postprocessed(study, records: Mapping, labels, kinds, steps: Mapping) -> dict | None:
    """The same numbers on the post-processed test scores (`per_case_post`: what `predict` writes, with the
    post-processing each run's validation patients chose), when every record has them; else None."""
    if not all("per_case_post" in r for r in records.values()):
        return None
    view = {key: {**r, "per_case": r["per_case_post"]} for key, r in records.items()}
    variants = {name: {k: v[k] for k in ("x", "kinds", "mean_dice", "per_structure", "vs_baseline", "vs_kind")}
                for name, v in _variants(study, view, labels).items()}
    return {"variants": variants, "crossings": crossings(variants, kinds, study.x, steps) if study.x else {}}
