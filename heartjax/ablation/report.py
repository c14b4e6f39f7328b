"""A study's outputs from its ablation dict (heartjax.ablation.stats.aggregate) and run records.

WORKDIR/STUDY/ablation.json (the dict), ablation.md (tables), ablation.png (Dice per variant with the seed
spread, or a curve per kind over the study's x axis), and hparams/ (one TensorBoard session per run and kind, whose
HParams tab shows every key a variant sets, with the variant, seed and kind). Every file is written atomically.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from heartjax.common import atomic
from heartjax.ablation import calibration
from heartjax.ablation.records import origins_text
from heartjax.ablation.stats import nanmean, pair_key, run_mean_dice
from heartjax.eval.scoring import fmt
from heartjax.train.tensorboard import SummaryWriter

STATISTICS = ("Means are over all (test patient, training seed) values; sd is the standard deviation of the seeds' "
              "own means (the training noise); n counts the values behind a mean. Each variant is compared with "
              "its reference patient by patient: the test patients are the independent units and the seeds repeated "
              "measures of them, so each patient's mean Dice is averaged over the shared seeds before the two-sided "
              "Wilcoxon signed-rank test of the per-patient differences (treating patients x seeds as independent "
              "pairs would understate p). diff is variant minus reference; with few test patients p is indicative only.")
_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860")


def _pm(block: Mapping | None) -> str:
    return "–" if not block or block.get("mean") is None else f"{fmt(block['mean'])} ± {fmt(block.get('sd'))}"


def p_text(p) -> str:
    """A p-value: three decimals, or "< 0.001"."""
    return "–" if p is None or not math.isfinite(p) else "< 0.001" if p < 0.0005 else f"{p:.3f}"


def _test(t: Mapping | None) -> str:
    return "– | – | –" if not t else f"{fmt(t['diff'], 4)} | {p_text(t['p'])} | {t['n']} × {t['seeds']}"


def _overrides(v: Mapping) -> str:
    return "<br>".join(f"`{o}`" for o in v["overrides"]) or "(baseline)"


def markdown(a: Mapping) -> str:
    """ablation.md: the study, its statistics, mean Dice per variant and kind, kinds compared, where curves cross,
    per structure; then the same on the post-processed scores when the records have them."""
    hours = (a.get("total_seconds") or 0) / 3600
    state = "complete" if a["complete"] else f"incomplete, missing {', '.join(a['missing'])}"
    lines = [f"# Ablation study `{a['study']}`", "", a["description"], "",
             f"Preset `{a['preset']}`, data {', '.join(a['datasets'])}; {a['runs']} runs ({state}); "
             f"{hours:.2f} h of run time in total (wall clock, summed over runs). Baseline overrides: "
             f"{', '.join(f'`{o}`' for o in a['baseline']['overrides']) or 'none'}; reference variant "
             f"`{a['baseline']['variant']}`. Scores as the network outputs them (raw)"
             + ("; the post-processed ones follow." if a.get("postprocessed") else "."), "", STATISTICS]
    lines += provenance_lines(a.get("provenance"))
    lines += _sections(a, a["variants"], a.get("crossings"), "")
    post = a.get("postprocessed")
    if post:
        lines += ["", "# After post-processing", "", "The same, on the test scores after the post-processing each "
                  "run's validation patients chose (what `heartjax.predict` writes)."]
        lines += _sections(a, {n: {**a["variants"][n], **v} for n, v in post["variants"].items()},
                           post["crossings"], " (post-processed)")
    lines += calibration.markdown(a.get("calibration"), a["labels"])
    lines += ["", "![Dice per variant](ablation.png)", ""]
    return "\n".join(lines)


def provenance_lines(p: Mapping | None) -> list[str]:
    """Which records were reused and what code, machines and libraries they mix (docs/provenance.md)."""
    if not p:
        return []
    rule = {"match": "only records made by the running code (its fingerprint) were reused; the others were "
                     "trained again",
            "any": "`--reuse-records any`: every record was reused, whatever code made it"}.get(
        p["reuse_records"], "`--aggregate-only`: aggregated from the records as they are, whatever code made them")
    return ["", f"Provenance: {rule} (code fingerprint now `{p['fingerprint']}`). Records: "
            f"{origins_text(p)}."]


def _sections(a: Mapping, variants: Mapping, crossings: Mapping | None, tag: str) -> list[str]:
    """Mean Dice table, kinds compared, where the curves cross, and per-structure tables of one set of scores."""
    x_head = f" {a['x']} |" if a["x"] else ""
    lines = ["", f"## Mean Dice{tag}", "", f"| variant |{x_head} overrides | kind | seeds | mean Dice ± sd | vs | "
             "diff | Wilcoxon p | patients × seeds |", "|---|" + "---|" * (9 if a["x"] else 8)]
    for name, v in variants.items():
        x = (f" {v['x'] if v['x'] is not None else '–'} |") if a["x"] else ""
        for kind in v["kinds"]:
            lines.append(f"| {name} |{x} {_overrides(v)} | {kind} | "
                         f"{len(v['seeds'])} | {_pm(v['mean_dice'][kind])} | {v['reference'] or '–'} | "
                         f"{_test(v['vs_baseline'][kind])} |")
    if len(a["kinds"]) > 1:
        lines += ["", f"## Kinds compared{tag} (same variant, same patients and seeds)", "",
                  "| variant | comparison | diff | Wilcoxon p | patients × seeds |", "|---|---|---|---|---|"]
        k0 = a["kinds"][0]
        lines += [f"| {name} | {k} minus {k0} | {_test(v['vs_kind'][pair_key(k, k0)])} |"
                  for name, v in variants.items() for k in a["kinds"][1:] if pair_key(k, k0) in v["vs_kind"]]
    lines += _crossing_lines(a, crossings or {}, tag)
    for kind in a["kinds"]:
        lines += ["", f"## {kind}{tag}: Dice (mean ± sd over seeds) and HD95 mm (mean) per structure", "",
                  "| variant | " + " | ".join(a["labels"]) + " |", "|---|" + "---|" * len(a["labels"])]
        for name, v in variants.items():
            ps = v["per_structure"].get(kind)
            if ps:
                lines.append(f"| {name} | " + " | ".join(
                    f"{_pm({'mean': ps[s]['dice_mean'], 'sd': ps[s]['dice_sd']})} / {fmt(ps[s]['hd95_mean'], 1)}"
                    for s in a["labels"]) + " |")
    return lines


def _at(x: float) -> str:
    return f"{x:.3g}"


def _signed(x) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:+.4f}"


def _crossing_lines(a: Mapping, crossings: Mapping, tag: str = "") -> list[str]:
    """"Where the curves cross": per kind pair, the paired difference at each x, and at equal training minutes."""
    lines = []
    k0 = a["kinds"][0]
    for b in a["kinds"][1:]:
        c = crossings.get(pair_key(b, k0))
        if c is None:
            continue
        diffs = ", ".join(f"{_signed(r['diff'])} (p {p_text(r['p'])}) at {_at(r['x'])}" for r in c["by_x"])
        verdict = (f"{c['leader']} ahead at every {a['x']}" if c["leader"] else
                   "the curves cross at " + " and ".join(f"≈ {_at(x)}" for x in c["cross_x"]) if c["cross_x"] else
                   "no sign change between the points")
        lines.append(f"- {b} minus {k0} over `{a['x']}`: {diffs}: {verdict}.")
        m = c.get("by_minutes")
        if m:
            cross = m["cross_minutes"]
            lines.append(f"- {b} minus {k0} at equal training minutes ({_at(m['range'][0])}–{_at(m['range'][1])} min, "
                         "each kind at steps × its measured step time; curve against curve, not paired): "
                         + ", ".join(f"{_signed(r['diff'])} at {_at(r['minutes'])} min" for r in m["diff"]) + ": "
                         + ("the curves cross at " + " and ".join(f"≈ {_at(t)} min" for t in cross) if cross else
                            f"{b if m['diff'][0]['diff'] > 0 else k0} ahead over the whole range") + ".")
    return ["", f"## Where the curves cross{tag}", "", *lines] if lines else []


# Axis names of study x keys in the figure; other keys show their last part ("train.val_patches": "val patches").
AXIS_NAMES = {"train.steps": "optimiser steps", "data.train_cases": "training patients",
              "train.max_seconds": "training seconds", "model.features": "channels of the first stage",
              "optim.lr": "learning rate", "model.depth": "U-Net depth", "plan.batch_3d": "3D batch",
              "plan.batch_2d": "2D batch"}
_PHRASES = {"dice_ce": "Dice + CE", "ce": "CE only", "dice": "Dice only", "none": "no augmentation",
            "full": "full augmentation", "intensity": "intensity only", "spatial": "spatial only"}
_TOKENS = {"ce": "CE", "ct": "CT", "mri": "MRI", "lr": "left-right", "ap": "front-back", "aug": "augmentation",
           "adamw": "AdamW", "dice": "Dice", "norm": "norm"}


def axis_name(key: str | None) -> str:
    """A readable name of a config key on a figure's axis: "data.train_cases" -> "training patients"."""
    return "" if not key else AXIS_NAMES.get(key, key.rsplit(".", 1)[-1].replace("_", " "))


def variant_label(name: str) -> str:
    """A readable variant label: "n16" -> "16 patients", "steps300" -> "300 steps", "ct_to_mri_no_intensity" ->
    "CT → MRI, no intensity", "mirror_lr" -> "mirror left-right", "dice_ce" -> "Dice + CE"."""

    if name in _PHRASES:
        return _PHRASES[name]
    m = re.fullmatch(r"(n|steps)(\d+)", name)
    if m:
        return f"{m.group(2)} {'patients' if m.group(1) == 'n' else 'steps'}"
    text = name.replace("_to_", " → ").replace("_no_", ", no_")
    return " ".join(_TOKENS.get(t, t) for t in text.split("_")).replace(" ,", ",")


def _figure(width: float, height: float):
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _series(a: Mapping, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """x, mean, sd and per-seed values of a kind over the variants with a numeric x, sorted by x."""
    pts = sorted((v["x"], v["mean_dice"][kind]) for v in a["variants"].values()
                 if kind in v["mean_dice"] and isinstance(v["x"], (int, float)) and not isinstance(v["x"], bool))
    num = lambda x: np.nan if x is None else x
    return (np.array([p[0] for p in pts], np.float64), np.array([num(p[1]["mean"]) for p in pts], np.float64),
            np.array([num(p[1]["sd"]) for p in pts], np.float64), [p[1]["per_seed"] for p in pts])


def _curves(ax, a: Mapping, scale: Callable[[str], float], xlabel: str) -> None:
    for i, kind in enumerate(a["kinds"]):
        x, mean, sd, seeds = _series(a, kind)
        if not x.size or not math.isfinite(scale(kind)):
            continue
        x = x * scale(kind)
        c = _COLORS[i % len(_COLORS)]
        ax.errorbar(x, mean, yerr=np.nan_to_num(sd), color=c, marker="o", capsize=3, label=kind.upper())
        for xi, vals in zip(x, seeds):
            ax.scatter([xi] * len(vals), [np.nan if v is None else v for v in vals], color=c, s=8, alpha=0.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean Dice (test)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    xs = [v["x"] for v in a["variants"].values() if isinstance(v["x"], (int, float)) and v["x"] > 0]
    if xs and max(xs) / min(xs) >= 8:
        ax.set_xscale("log", base=2)


def _bars(ax, a: Mapping) -> None:
    names, kinds = list(a["variants"]), a["kinds"]
    width = 0.8 / len(kinds)
    for i, kind in enumerate(kinds):
        c = _COLORS[i % len(_COLORS)]
        for j, name in enumerate(names):
            block = a["variants"][name]["mean_dice"].get(kind)
            if not block or block["mean"] is None:
                continue
            xi = j - 0.4 + width * (i + 0.5)
            ax.bar(xi, block["mean"], width, color=c, label=kind.upper() if j == 0 else None,
                   yerr=block["sd"] or 0, capsize=3, ecolor="black")
            vals = [v for v in block["per_seed"] if v is not None]
            ax.scatter([xi] * len(vals), vals, color="black", s=8, zorder=3)
    labels = [variant_label(n) for n in names]
    long = max(map(len, labels), default=0) * len(names) > 90  # upright unless the labels would collide
    ax.set_xticks(range(len(names)), labels, rotation=25 if long else 0, ha="right" if long else "center",
                  fontsize=9)
    shown = [v for name in names for kind in kinds for block in [a["variants"][name]["mean_dice"].get(kind)]
             if block and block["mean"] is not None
             for v in [block["mean"] - (block["sd"] or 0), block["mean"] + (block["sd"] or 0), *block["per_seed"]]
             if v is not None]
    if shown:  # the axis starts just below the lowest bar, so differences of 0.01 stay visible
        ax.set_ylim(max(0.0, np.floor(min(shown) * 20 - 1) / 20), min(1.0, max(shown) + 0.02) + 0.01)
    ax.set_ylabel("mean Dice (test; axis not from 0)" if shown and ax.get_ylim()[0] > 0 else "mean Dice (test)")
    ax.grid(axis="y", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if labels:
        ax.legend(dict(zip(labels, handles)).values(), dict(zip(labels, handles)).keys(), fontsize=8,
                  loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never over one


def plot(a: Mapping, path: Path) -> Path:
    """ablation.png: a curve per kind over the x axis (and over training time for a steps axis, from each kind's
    step time), else bars per variant and kind; error bars are the sd over seeds, dots the seeds."""
    timed = a["x"] == "train.steps"
    width = 10.0 if timed else max(5.0, 0.8 * len(a["variants"]) * max(1, len(a["kinds"])) + 2)
    fig = _figure(width, 4.0)
    title = f"{a['study']} study: mean test Dice over seeds ({a['preset']} preset)"
    if a.get("description"):  # wrapped to the figure's width (about 13 characters an inch at 10 pt)
        title += "\n" + textwrap.fill(a["description"], width=int(width * 13))
    if a["x"]:
        ax = fig.add_subplot(1, 2 if timed else 1, 1)
        _curves(ax, a, lambda k: 1.0, axis_name(a["x"]))
        if timed:
            step = a.get("step_seconds") or {}
            _curves(fig.add_subplot(1, 2, 2), a, lambda k: (step.get(k) or math.nan) / 60,
                    "training minutes (steps x measured step time)")
    else:
        _bars(fig.add_subplot(), a)
    fig.suptitle(title, fontsize=10)
    return atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def _one_type(rows: list[dict]) -> list[dict]:
    """HParams values with one type per key across sessions: scalars as they are; lists, None and keys whose
    values mix types (e.g. a training-set size that is None for "all") as strings."""
    def kind(v):
        return "bool" if isinstance(v, bool) else "number" if isinstance(v, (int, float)) else \
            "str" if isinstance(v, str) else "other"

    mixed = {k for k in rows[0] if len({kind(r[k]) for r in rows}) > 1 or kind(rows[0][k]) == "other"}
    return [{k: (json.dumps(v) if k in mixed and not isinstance(v, str) else v) for k, v in r.items()} for r in rows]


def write_hparams(folder: Path, keys: Sequence[str], records: Mapping, settings_of: Callable) -> Path:
    """One TensorBoard session per (variant, seed, kind) under `folder` (rebuilt whole): hparams variant, seed,
    kind and every varied key's value; metrics the run's mean Dice, whole-heart Dice and Dice per structure."""
    keys = [k for k in keys if k != "seed"]
    sessions = [((variant, seed, kind), rec) for (variant, seed), rec in sorted(records.items()) for kind in rec["kinds"]]
    settings = {key: settings_of(rec, keys) for key, rec in sorted(records.items())}
    hparams = _one_type([{"variant": v, "seed": s, "kind": k, **settings[(v, s)]} for (v, s, k), _ in sessions])
    with atomic.atomic_dir(folder, overwrite=True) as tmp:
        for ((variant, seed, kind), rec), hp in zip(sessions, hparams):
            cases = rec["per_case"][kind]
            metrics = {"mean_dice": run_mean_dice(rec, kind),
                       "whole_heart_dice": nanmean([c.get("whole_heart_dice") for c in cases]),
                       **{f"dice/{s}": nanmean([c["dice"].get(s) for c in cases]) for s in rec["labels"]}}
            with SummaryWriter(tmp / f"{variant}-seed{seed}-{kind}") as w:
                w.hparams(hp, metrics)
    return folder


def write_outputs(study_dir: Path, study, a: Mapping, records: Mapping, settings_of: Callable) -> None:
    """Write ablation.json, ablation.md, ablation.png and hparams/ into study_dir."""
    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_json(study_dir / "ablation.json", a, allow_nan=False)
    atomic.write_text(study_dir / "ablation.md", markdown(a))
    plot(a, study_dir / "ablation.png")
    write_hparams(study_dir / "hparams", study.varied_keys(), records, settings_of)
