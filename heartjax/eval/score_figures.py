"""The per-structure score figure of a run (figures/dice_per_structure.png), drawn from results.json's layout.

Two panels: test Dice (left) and HD95 in mm (right) per structure. For every model: one dot per test patient
(thin grey lines join a patient's dots across models), the mean over patients as a short bar and +-1 sd as a
whisker. Above each structure: every kind minus the 2D baseline, paired over patients, with its two-sided Wilcoxon
p (from results["comparisons"] for Dice, computed the same way for HD95): "+0.012 p=0.03". The Dice axis runs
from just below the lowest patient's value to 1, so differences of a few hundredths stay visible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.lines import Line2D

from heartjax.eval.figures import new_figure, save_png
from heartjax.eval.metrics import paired_test

MODEL_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")
BASELINE = "2d"


def _values(model: Mapping, metric: str, name: str) -> np.ndarray:
    """One value per test patient (NaN where undefined), in per_case order."""
    return np.array([np.nan if c.get(metric, {}).get(name) is None else c[metric][name] for c in model["per_case"]],
                    np.float64)


def _p_text(p) -> str:
    if p is None or not np.isfinite(p):
        return "p n/a"
    return f"p={p:.2g}" + ("*" if p < 0.05 else "")


def _paired(models: Mapping, metric: str, name: str, comparisons: Mapping) -> list[str]:
    """"3D−2D +0.012 p=0.03" lines: each kind minus the baseline over the same patients."""
    if BASELINE not in models:
        return []
    lines = []
    for kind, m in models.items():
        if kind == BASELINE:
            continue
        comp = (comparisons.get(f"{kind.replace('.', '')}_minus_{BASELINE}") or {}).get(name) if metric == "dice" \
            else None
        if comp is None:
            comp = paired_test(_values(models[BASELINE], metric, name), _values(m, metric, name))
        d, p = comp.get("mean_diff"), comp.get("p_wilcoxon")
        diff = "n/a" if d is None or not np.isfinite(d) else (f"{d:+.3f}" if metric == "dice" else f"{d:+.1f}")
        lines.append(f"{kind.upper()}−{BASELINE.upper()} {diff}\n{_p_text(p)}")
    return lines


def _panel(ax, models: Mapping, names: Sequence[str], metric: str, comparisons: Mapping) -> np.ndarray:
    """Dots per patient, mean bar and sd whisker per (structure, model); the paired differences above. Returns
    every plotted per-patient value."""
    kinds = list(models)
    width = 0.8 / len(kinds)
    rng = np.random.default_rng(0)  # the same jitter on every drawing
    seen = []
    for j, name in enumerate(names):
        xs, ys = [], []
        for k, kind in enumerate(kinds):
            v = _values(models[kind], metric, name)
            x = j - 0.4 + width * (k + 0.5)
            jitter = x + rng.uniform(-0.18, 0.18, v.size) * width
            colour = MODEL_COLORS[k % len(MODEL_COLORS)]
            ax.scatter(jitter, v, s=14, color=colour, alpha=0.65, edgecolors="none", zorder=3)
            ok = v[np.isfinite(v)]
            if ok.size:
                mean, sd = ok.mean(), ok.std(ddof=1) if ok.size > 1 else 0.0
                ax.hlines(mean, x - 0.42 * width, x + 0.42 * width, color=colour, lw=2.5, zorder=4)
                ax.errorbar(x, mean, yerr=sd, color="black", lw=1, capsize=3, zorder=5)
            xs.append(jitter), ys.append(v)
            seen.append(ok)
        for a in range(len(kinds) - 1):  # a patient's values across models
            ax.plot(np.stack([xs[a], xs[a + 1]]), np.stack([ys[a], ys[a + 1]]), color="0.6", lw=0.5, alpha=0.6,
                    zorder=2)
        text = "\n".join(_paired(models, metric, name, comparisons))
        if text:
            ax.text(j, 1.01, text, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=7.5)
    ax.set_xticks(range(len(names)), names, fontsize=10)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.grid(axis="y", alpha=0.3)
    return np.concatenate(seen) if seen else np.zeros(0)


def dice_range(values: np.ndarray) -> tuple[float, float]:
    """Dice axis limits: from just below the lowest value (a 5 % margin of the span to 1) to 1 (and a hair)."""
    values = values[np.isfinite(values)]
    lo = float(values.min()) if values.size else 0.0
    lo = max(0.0, lo - 0.05 * max(1.0 - lo, 0.02) - 0.002)
    return lo, 1.0 + 0.01 * (1.0 - lo)


def plot_structure_scores(results: Mapping, path, title: str = "") -> Path:
    """figures/dice_per_structure.png of a results dict (results.json's layout): Dice and HD95 per structure.

    Args:
      results: {"models": {kind: {"per_case": [{"dice": {name: v}, "hd95": {name: v}}, ...]}}, "label_names",
        optionally "comparisons" ({"3d_minus_2d": {name: {"mean_diff", "p_wilcoxon"}}})}.
      path: output .png path (parents created); title: figure title.
    Returns:
      the written path.
    """
    models, names = results["models"], list(results["label_names"])
    if not models:
        raise ValueError("plot_structure_scores: no models")
    n_cases = max(len(m["per_case"]) for m in models.values())
    lines = max(1, 2 * (len(models) - 1))
    fig = new_figure(max(9.0, 1.5 * len(names) * max(1, len(models)) / 2 + 3), 4.6 + 0.25 * lines)
    dice_ax, hd_ax = fig.subplots(1, 2, width_ratios=(1.15, 1.0))
    comps = results.get("comparisons") or {}
    dice = _panel(dice_ax, models, names, "dice", comps)
    dice_ax.set_ylim(*dice_range(dice))
    dice_ax.set_ylabel("Dice (test patients)")
    hd = _panel(hd_ax, models, names, "hd95", {})
    hd_ax.set_ylim(0, (float(hd.max()) if hd.size else 1.0) * 1.06 + 0.5)
    hd_ax.set_ylabel("HD95 in mm (lower is better)")

    handles = [Line2D([], [], color=MODEL_COLORS[k % len(MODEL_COLORS)], marker="o", lw=2.5, label=kind.upper())
               for k, kind in enumerate(models)]
    handles.append(Line2D([], [], color="black", lw=1, label="mean ± sd"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9)
    patients = f"{n_cases} test patient{'s' if n_cases != 1 else ''}"
    fig.suptitle((title + "\n" if title else "") + f"{patients}: dots are patients, bars the mean; "
                 f"above: paired difference with {BASELINE.upper()} and its Wilcoxon p (* p < 0.05)", fontsize=10)
    return save_png(fig, path)
