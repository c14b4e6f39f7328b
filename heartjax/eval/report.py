"""Reporting a run's results (heartjax.eval.results) : results.json, results.md, figures, the printed summary.

Renders from the JSON form of the results, so a results.json read back renders the same. Every kind is compared
with the 2D baseline patient by patient (paired Wilcoxon and t-test).
"""

from __future__ import annotations

import datetime
import platform
from pathlib import Path
from typing import Callable, Mapping

import jax

from heartjax.common import atomic, provenance
from heartjax.common.paths import RunFolder
from heartjax.eval.references import REFERENCES
from heartjax.config.presets import BASELINE
from heartjax.eval.results import comparison_key
from heartjax.eval.scoring import fmt, structure_table

TIE = 5e-4  # |difference| of mean Dice below this is reported as a tie
ALPHA = 0.05  # significance level of the paired Wilcoxon test in the verdicts


def label(kind: str) -> str:
    return kind.upper()


def significant(comparison: Mapping | None) -> bool:
    """Whether a paired comparison has a Wilcoxon p-value below ALPHA."""
    p = (comparison or {}).get("p_wilcoxon")
    return p is not None and p < ALPHA


def comparisons(results: Mapping) -> dict[str, dict]:
    """{kind: per-structure comparison with the baseline kind} from a results dict (each kind's key is built, never
    parsed; results.json files of before `comparisons` hold one `comparison_<key>`)."""
    comps = results.get("comparisons") or {}
    found = {k: comps.get(comparison_key(k)) or results.get(f"comparison_{comparison_key(k)}")
             for k in results["models"] if k != BASELINE}
    return {k: c for k, c in found.items() if c}


def verdict(diff: float | None, comp: Mapping | None, kind: str, base: str = BASELINE) -> str:
    """"tie", "3D by 0.012 (p 0.002)" or "2D by 0.050 (n.s., p 0.300)"."""
    if diff is None:
        return "–"
    if abs(diff) < TIE:
        return "tie"
    p = (comp or {}).get("p_wilcoxon")
    sig = f"(p {fmt(p)})" if significant(comp) else f"(n.s., p {fmt(p)})"
    return f"{label(kind) if diff > 0 else label(base)} by {abs(diff):.3f} {sig}"


def as_applied(m: Mapping) -> Mapping:
    """A model's test metrics as heartjax.predict applies it: with the post-processing validation chose (per
    structure), raw where it chose none."""
    lcc = m.get("largest_component_test")
    return lcc if (lcc and m.get("postprocessing", {}).get("largest_component")) else m


def reference_section(scheme: str, models: Mapping, names: list[str]) -> list[str]:
    """results.md lines setting this run's Dice beside the reference figures for `scheme` (none if unknown)."""
    ref = REFERENCES.get(scheme)
    if not ref:
        return []
    lines = ["", "## Beside reference figures", "",
             "| | " + " | ".join(names) + " | mean | what it is |", "|---|" + "---|" * (len(names) + 2)]
    for k, m in models.items():
        a = as_applied(m)
        cells = [f"{fmt(a['per_structure'][n]['dice_mean'])} ± {fmt(a['per_structure'][n]['dice_sd'])}" for n in names]
        lcc = "with the post-processing validation chose" if a is not m else "raw network output"
        lines.append(f"| this run, {k} | " + " | ".join(cells) + f" | **{fmt(a['mean_dice'])}** | test patients, "
                     f"mean ± sd, {lcc}; {m['steps']} steps, {m['train_seconds'] / 60:.1f} min of training |")
    for name, per, mean, what in ref["rows"]:
        cells = [fmt(per.get(n)) if per else "–" for n in names]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {fmt(mean)} | {what} |")
    return lines + ["", "What differs:"] + [f"- {d}" for d in ref["differences"]]


def _lcc_section(models: Mapping, names: list[str]) -> list[str]:
    lines = ["", "## Connected-component post-processing (test patients)", "",
             "Per structure, keep one connected component (the largest touching the rest of the heart; a structure is "
             "never removed), where it raised that structure's mean validation Dice; older runs: the largest "
             "component of every structure, if it raised the mean validation Dice.",
             "", "| structure | " + " | ".join(f"{k} Dice raw → post-processed | {k} HD95 mm raw → post-processed" for k in models) + " |",
             "|---|" + "---|---|" * len(models)]
    for n in names:
        cells = []
        for m in models.values():
            raw, lcc = m["per_structure"][n], m["largest_component_test"]["per_structure"][n]
            cells += [f"{fmt(raw['dice_mean'])} → {fmt(lcc['dice_mean'])}",
                      f"{fmt(raw['hd95_mean'], 1)} → {fmt(lcc['hd95_mean'], 1)}"]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines + ["| kept on validation for | " + " | ".join(f"{_kept(m['postprocessing'], names)} | "
                                                           for m in models.values()) + " |"]


def _kept(decision: Mapping, names: list[str]) -> str:
    """The structures a post-processing decision applies to, for the report."""
    if "per_structure" in decision:
        kept = [n for n in names if decision["per_structure"].get(n)]
        return ", ".join(kept) if kept else "none"
    return "all" if decision.get("largest_component") else "none"


def _comparison_section(results: Mapping) -> list[str]:
    lines = []
    for kind, comp in comparisons(results).items():
        lines += ["", f"## {label(kind)} minus 2D Dice, paired over test patients", "",
                  "| structure | mean diff | sd | n | Wilcoxon p | paired t p | winner |", "|---|---|---|---|---|---|---|"]
        for n, c in comp.items():
            d = c["mean_diff"]
            winner = "–" if d is None else "tie" if abs(d) < TIE else label(kind) if d > 0 else "2D"
            if d is not None and abs(d) >= TIE and not significant(c):
                winner += " (n.s.)"
            lines.append(f"| {n} | {fmt(d)} | {fmt(c['sd_diff'])} | {c['n']} | "
                         f"{fmt(c['p_wilcoxon'])} | {fmt(c['p_ttest'])} | {winner} |")
    if lines:
        lines += ["", f"With {len(results['test_cases'])} test patients, p-values are indicative only; n.s.: Wilcoxon "
                  f"p >= {ALPHA} (or too few patients to test), the difference may be chance."]
    return lines


def _pm(block: Mapping, key: str, digits: int = 3) -> str:
    return f"{fmt(block.get(f'{key}_mean'), digits)} ± {fmt(block.get(f'{key}_sd'), digits)}"


def calibration_section(models: Mapping, names: list[str]) -> list[str]:
    """results.md lines: per structure class-wise ECE and Brier, top-label ECE, multi-class Brier, entropy-error
    AUROC, mean entropy and the Dice-entropy Spearman of each model (`heartjax.eval.calibration`; docs/calibration.md);
    none for results.json files from before calibration was measured."""
    cal = {k: m["calibration"] for k, m in models.items() if m.get("calibration")}
    if not cal:
        return []
    region = next(iter(cal.values())).get("region", "")
    lines = ["", f"## Calibration and uncertainty (test patients, mean ± sd; {region})", "",
             "| structure | " + " | ".join(f"{k} ECE | {k} Brier" for k in cal) + " |", "|---|" + "---|---|" * len(cal)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(f"{_pm(c['per_structure'][n], 'ece', 4)} | "
                                                f"{_pm(c['per_structure'][n], 'brier', 4)}" for c in cal.values()) + " |")
    lines.append("| all classes (top-label ECE, multi-class Brier) | " + " | ".join(
        f"**{_pm(c, 'ece', 4)}** | {_pm(c, 'brier_all', 4)}" for c in cal.values()) + " |")
    lines += ["", "| | " + " | ".join(cal) + " |", "|---|" + "---|" * len(cal),
              "| entropy-error AUROC | " + " | ".join(_pm(c, "entropy_auroc") for c in cal.values()) + " |",
              "| mean voxel entropy (nats) | " + " | ".join(_pm(c, "mean_entropy", 4) for c in cal.values()) + " |",
              "| Spearman of Dice with mean entropy (patients) | " + " | ".join(
                  f"{fmt(c.get('dice_entropy_spearman'))} ({c.get('dice_entropy_patients', 0)})" for c in cal.values())
              + " |",
              "", "ECE per structure is one-vs-rest (bins of p_k against 1[y = k]); all classes: top-label confidence "
              "against accuracy; 15 equal-width bins. AUROC: how well the voxel entropy ranks the model's own "
              "errors (0.5 chance). Spearman below 3 patients: –. Definitions in docs/calibration.md."]
    return lines


def mesh_text(m: Mapping) -> str:
    """"data=4 on 2 processes (4 / 1)": the mesh a model trained on, with its global and per-device batch."""
    mesh = m.get("mesh")
    if not mesh:
        return "–"
    axes = ", ".join(f"{a}={n}" for a, n in mesh.items())
    procs = f" on {m['processes']} processes" if m.get("processes", 1) > 1 else ""
    return f"{axes}{procs} ({m['global_batch']} / {m['per_device_batch']})"


def markdown(results: Mapping, plan, scheme: str) -> str:
    """results.md of one split."""
    models, names, split = results["models"], results["label_names"], results["split"]
    lines = [f"# Slice-wise vs volumetric U-Net ({', '.join(models)}): {results['dataset']}", "",
             f"Run on {platform.node() or 'unknown host'} ({platform.machine()}, {jax.devices()[0].platform}, "
             f"{jax.device_count()} device(s)), {datetime.date.today().isoformat()}, seed {results['seed']}, "
             f"data seed {results['data_seed']}.",
             f"Patients: {split['train']} train, {split['val']} validation, {split['test']} test (patient-level split; "
             f"test patients seen by no model).",
             f"Plan: spacing {plan.target_spacing} mm, slices along axis {plan.slice_axis}; " + ", ".join(
                 f"{k} patch {plan.kinds[k].patch} x {plan.kinds[k].batch}" for k in models if k in plan.kinds)
             + ".", "",
             "| model | steps | train s | infer s/case | params | mesh (global / per-device batch) | mean Dice | "
             "whole-heart Dice |", "|---|---|---|---|---|---|---|---|"]
    for k, m in models.items():
        lines.append(f"| {k} | {m['steps']} | {m['train_seconds']:.0f} | {m['infer_seconds_per_case']:.1f} | "
                     f"{m['params']:,} | {mesh_text(m)} | {fmt(m['mean_dice'])} | {fmt(m['whole_heart_dice'])} |")
    lines += ["", "## Per structure (test patients, mean ± sd)", ""] + structure_table(models, names)
    lines += _lcc_section(models, names) + calibration_section(models, names) + reference_section(scheme, models, names)
    lines += _comparison_section(results)
    lines += ["", "Metrics: Dice/IoU from whole-volume voxel counts per patient on the original grid; HD95/ASSD in mm "
              "(a missed structure scores the volume diagonal). See the README for definitions."]
    return "\n".join(lines + provenance_section(results) + [""])


def provenance_section(results: Mapping) -> list[str]:
    """results.md lines saying which code, libraries, machine and command made the results."""
    return ["", "## Provenance", "", *provenance.describe(results.get("provenance"))]


def pooled_markdown(results: Mapping) -> str:
    """results.md of a cross-validated run."""
    lines = [f"# {results['cross_validation']}-fold cross-validation: {results['dataset']}", "",
             f"Every one of {len(results['test_cases'])} patients is scored once, by the models of the fold that "
             f"held it out. Per-fold details in fold*/results.md.", ""]
    lines += structure_table(results["models"], results["label_names"])
    lines += calibration_section(results["models"], results["label_names"]) + _comparison_section(results)
    return "\n".join(lines + provenance_section(results)) + "\n"


def write(workdir: Path, results: Mapping, text: str) -> None:
    """results.json and results.md, each atomically."""
    atomic.write_json(RunFolder(workdir).results, results)
    atomic.write_text(RunFolder(workdir).results_md, text)


def summarize(results: Mapping, workdir: Path, log: Callable = print) -> None:
    """Print which model won where against the 2D baseline, by how much, and whether the paired test supports it."""
    models, names = results["models"], results["label_names"]
    comps = comparisons(results)
    log("")
    log(f"Test Dice per structure ({results['dataset']}):")
    log("  structure " + " ".join(f"{k:>8}" for k in models) + ("   winner" if comps else ""))
    for n in names:
        vals = {k: models[k]["per_structure"][n]["dice_mean"] for k in models}
        verdicts = []
        for k in comps:
            diff = None if None in (vals[k], vals.get(BASELINE)) else vals[k] - vals[BASELINE]
            verdicts.append(verdict(diff, comps[k].get(n), k))
        log(f"  {n:9} " + " ".join(f"{fmt(v):>8}" for v in vals.values()) + ("   " + "; ".join(verdicts) if verdicts else ""))
    log("  mean      " + " ".join(f"{fmt(models[k]['mean_dice']):>8}" for k in models))
    log("  train s   " + " ".join(f"{models[k]['train_seconds']:8.0f}" for k in models))
    log(f"Results: {workdir / 'results.md'} (table), {workdir / 'results.json'}, figures in {workdir / 'figures'}")
    log(f"TensorBoard: tensorboard --logdir {workdir / 'tb'}")
