"""The results tables of README.md and docs/results.md, rebuilt from the committed study records alone.

  python -m experiments.results_tables             # check: every marked table equals its rebuild (exit 1 if not)
  python -m experiments.results_tables --write     # rewrite the marked tables in place
  python -m experiments.results_tables --print phantom

A table sits in a markdown file between `<!-- table NAME -->` and `<!-- /table -->`; NAME is one of TABLES. Each is
computed as `python -m experiments.ablate STUDY --aggregate-only` computes its study (heartjax.ablation.stats:
means over test patients and seeds, sd over the seeds' own means, paired Wilcoxon over the test patients with
each patient's Dice averaged over the seeds), from docs/studies/STUDY/*.json, whatever code made the records
(each table says which commits and machines). tests/test_results_tables.py runs the check.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable, Mapping

from experiments import studies
from experiments.checks.postprocess_check import worst_change
from heartjax.ablation import records as records_lib
from heartjax.ablation import stats
from heartjax.ablation.report import p_text
from heartjax.eval.scoring import fmt

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "docs" / "studies"
DOCS = ("README.md", "docs/results.md")
_BLOCK = re.compile(r"(<!-- table (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
KIND_NAMES = {"2d": "2D", "2.5d": "2.5D", "3d": "3D"}


def _k(kind: str) -> str:
    return KIND_NAMES.get(kind, kind)


def load(name: str, root: Path = RECORDS):
    """(study, {(variant, seed): record}) of a shipped study's committed records."""
    study = studies.load(name)
    return study, records_lib.load_records(root / name, study)


def _pm(mean, sd, digits: int = 3) -> str:
    return "–" if mean is None else f"{fmt(mean, digits)} ± {fmt(sd, digits)}"


def _diff(t: Mapping | None) -> str:
    """`+0.015 (0.008)`: a paired difference and its Wilcoxon p."""
    return "–" if not t else f"{t['diff']:+.3f} ({p_text(t['p'])})"


def _post(recs: Mapping) -> dict:
    """The records with their post-processed scores as their scores."""
    return {key: {**r, "per_case": r["per_case_post"]} for key, r in recs.items()}


def _by_seed(recs: Mapping, variant: str) -> dict:
    return {s: r for (v, s), r in recs.items() if v == variant}


def _structure(by_seed: Mapping, structure: str) -> dict:
    """The records with one structure's Dice as each case's Dice (for a per-structure paired test)."""
    return {s: {**r, "per_case": {k: [{**c, "dice": {structure: c["dice"].get(structure)}} for c in rows]
                                  for k, rows in r["per_case"].items()}} for s, r in by_seed.items()}


def _caption(name: str, recs: Mapping, extra: str = "") -> str:
    seeds = sorted({s for _, s in recs})
    o = records_lib.origins(recs.values())
    hours = sum(r.get("seconds") or 0 for r in recs.values()) / 3600
    return (f"*{len(recs)} runs ({hours:.2f} h of run time), training seeds {', '.join(map(str, seeds))}{extra}; "
            f"records `docs/studies/{name}/` "
            f"(`python -m experiments.ablate {name} --aggregate-only`); {records_lib.origins_text(o)}.*")


def kinds_table(name: str, variant: str, post: bool = False) -> Callable[[Path], str]:
    """Per structure: each kind's Dice (mean ± sd over seeds), each kind minus the first (paired, p) and HD95."""
    def build(root: Path) -> str:
        study, recs = load(name, root)
        recs = {k: r for k, r in recs.items() if k[0] == variant}
        if not recs:
            return f"*No records of `{name}` `{variant}` yet (`python -m experiments.ablate {name}`).*\n"
        view = _post(recs) if post else recs
        a = stats.aggregate(study, view)
        v, by_seed = a["variants"][variant], _by_seed(view, variant)
        kinds, k0 = v["kinds"], v["kinds"][0]
        head = ["structure", *(f"{_k(k)} Dice" for k in kinds), *(f"{_k(k)} − {_k(k0)} (p)" for k in kinds[1:]),
                "HD95 mm " + " / ".join(_k(k) for k in kinds)]
        lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for s in a["labels"]:
            ps = {k: v["per_structure"][k][s] for k in kinds}
            one = _structure(by_seed, s)
            lines.append(f"| {s} | " + " | ".join(
                [_pm(ps[k]["dice_mean"], ps[k]["dice_sd"]) for k in kinds]
                + [_diff(stats.paired(one, one, k0, k)) for k in kinds[1:]]
                + [" / ".join(fmt(ps[k]["hd95_mean"], 1) for k in kinds)]) + " |")
        lines.append("| **mean** | " + " | ".join(
            [f"**{_pm(v['mean_dice'][k]['mean'], v['mean_dice'][k]['sd'])}**" for k in kinds]
            + [f"**{_diff(v['vs_kind'][stats.pair_key(k, k0)])}**" for k in kinds[1:]] + [""]) + " |")
        n = len(next(iter(recs.values()))["test_cases"])
        what = "after post-processing (what `predict` writes)" if post else "raw network output"
        return "\n".join(lines) + "\n\n" + _caption(name, recs, f"; {n} test patients; {what}") + "\n"
    return build


def variants_table(name: str, focus: tuple[str, ...] = (), post: bool = False) -> Callable[[Path], str]:
    """Per variant: each kind's mean Dice (mean ± sd over seeds), its difference from the variant's reference and
    the mean Dice of the `focus` structures, then each kind minus the first kind (paired over the test patients,
    Wilcoxon p); with `post`, after each model's post-processing (records that have it)."""
    def build(root: Path) -> str:
        study, recs = load(name, root)
        if post:
            recs = _post({k: r for k, r in recs.items() if r.get("per_case_post")})
        if not recs:
            return f"*No records of `{name}` yet (`python -m experiments.ablate {name}`).*\n"
        a = stats.aggregate(study, recs)
        kinds = a["kinds"]
        per_kind = ["", " vs reference (p)"] + ([" " + " / ".join(focus)] if focus else [])
        head = ["variant", "seeds", *(f"{_k(k)}{c}" for k in kinds for c in per_kind),
                *(f"{_k(k)} − {_k(kinds[0])} (p)" for k in kinds[1:])]
        lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for vname, v in a["variants"].items():
            ref = f" (vs {v['reference']})" if v["reference"] and v["reference"] != study.reference_name else ""
            cells = [f"{vname}{ref}", str(len(v["seeds"]))]
            for k in kinds:
                md, ps = v["mean_dice"].get(k), v["per_structure"].get(k)
                cells += [_pm(md["mean"], md["sd"]) if md else "–", _diff(v["vs_baseline"].get(k))]
                cells += [" / ".join(fmt(ps[s]["dice_mean"]) for s in focus) if ps else "–"] if focus else []
            cells += [_diff(v["vs_kind"].get(stats.pair_key(k, kinds[0]))) for k in kinds[1:]]
            lines.append("| " + " | ".join(cells) + " |")
        output = "after post-processing (what `predict` writes)" if post else "raw network output"
        return "\n".join(lines) + "\n\n" + _caption(name, recs, f"; reference `{study.reference_name}`; {output}, "
                                                    "mean Dice over structures") + "\n"
    return build


def _hd95(v: Mapping, kind: str) -> float:
    return stats.nanmean([b["hd95_mean"] for b in v["per_structure"][kind].values()])


def curve_table(name: str) -> Callable[[Path], str]:
    """Per x (steps, patients): each kind's mean Dice raw and post-processed (mean HD95), and each kind minus the
    first, raw and post-processed."""
    def build(root: Path) -> str:
        study, recs = load(name, root)
        if not recs:
            return f"*No records of `{name}` yet.*\n"
        raw, post = stats.aggregate(study, recs), stats.aggregate(study, _post(recs))
        kinds = raw["kinds"]
        head = [study.x or "variant", "seeds", *(f"{_k(k)} raw | {_k(k)} post (HD95)" for k in kinds),
                *(f"{_k(k)} − {_k(kinds[0])} raw / post (p)" for k in kinds[1:])]
        ncols = 2 + 2 * len(kinds) + len(kinds) - 1
        lines = ["| " + " | ".join(head) + " |", "|---" * ncols + "|"]
        for vname in sorted(raw["variants"], key=lambda n: (raw["variants"][n]["x"] or 0)):
            r, p = raw["variants"][vname], post["variants"][vname]
            cells = [str(r["x"]), str(len(r["seeds"]))]
            for k in kinds:
                if k not in r["mean_dice"]:
                    cells += ["–", "–"]
                    continue
                cells += [_pm(r["mean_dice"][k]["mean"], r["mean_dice"][k]["sd"]),
                          f"{_pm(p['mean_dice'][k]['mean'], p['mean_dice'][k]['sd'])} ({fmt(_hd95(p, k), 1)})"]
            for k in kinds[1:]:
                key = stats.pair_key(k, kinds[0])
                t_raw, t_post = r["vs_kind"].get(key), p["vs_kind"].get(key)
                cells.append("–" if not t_raw else f"{t_raw['diff']:+.3f} / {t_post['diff']:+.3f} "
                             f"({p_text(t_raw['p'])} / {p_text(t_post['p'])})")
            lines.append("| " + " | ".join(cells) + " |")
        minutes = ", ".join(f"{_k(k)} {s:.2f}" for k, s in raw["step_seconds"].items())
        return "\n".join(lines) + "\n\n" + _caption(name, recs, f"; seconds per step ({minutes}) on the machines "
                                                    "below; HD95 mm, post-processed, mean over structures") + "\n"
    return build


def calibration_table(name: str, variant: str) -> Callable[[Path], str]:
    """Per kind: top-label ECE, Brier score, entropy-error AUROC and Dice-entropy Spearman, then ECE / Brier per
    structure (mean ± sd over seeds; heartjax.ablation.calibration)."""
    def build(root: Path) -> str:
        study, recs = load(name, root)
        recs = {k: r for k, r in recs.items() if k[0] == variant and r.get("calibration")}
        cal = stats.aggregate(study, recs)["calibration"] if recs else None
        if not cal:
            return f"*No records of `{name}` `{variant}` with calibration yet.*\n"
        blocks = cal["variants"][variant]
        kinds = list(blocks)
        cell = lambda b, d=4: _pm(b["mean"], b["sd"], d)
        lines = ["| | " + " | ".join(_k(k) for k in kinds) + " |", "|---" * (len(kinds) + 1) + "|",
                 "| ECE (top label) | " + " | ".join(cell(blocks[k]["ece"]) for k in kinds) + " |",
                 "| Brier (all classes) | " + " | ".join(cell(blocks[k]["brier_all"]) for k in kinds) + " |",
                 "| entropy-error AUROC | " + " | ".join(cell(blocks[k]["entropy_auroc"], 3) for k in kinds) + " |",
                 "| Dice-entropy Spearman | " + " | ".join(
                     f"{fmt(blocks[k]['dice_entropy_spearman'])} ({blocks[k]['patients']} patients)" for k in kinds)
                 + " |"]
        for s in next(iter(blocks.values()))["per_structure"]:
            lines.append(f"| {s}: ECE / Brier | " + " | ".join(
                f"{fmt(blocks[k]['per_structure'][s]['ece']['mean'], 4)} / "
                f"{fmt(blocks[k]['per_structure'][s]['brier']['mean'], 4)}" for k in kinds) + " |")
        return "\n".join(lines) + "\n\n" + _caption(name, recs, f"; `{variant}`; {cal['region']}") + "\n"
    return build


def calibration_variants_table(name: str) -> Callable[[Path], str]:
    """Per variant: each kind's top-label ECE, Brier score and entropy-error AUROC (mean ± sd over seeds), for
    comparing calibration across the variants of one study (e.g. in and across modalities)."""
    def build(root: Path) -> str:
        study, recs = load(name, root)
        recs = {k: r for k, r in recs.items() if r.get("calibration")}
        cal = stats.aggregate(study, recs)["calibration"] if recs else None
        if not cal:
            return f"*No records of `{name}` with calibration yet.*\n"
        kinds = list(next(iter(cal["variants"].values())))
        metrics = (("ECE", "ece", 4), ("Brier", "brier_all", 4), ("entropy-error AUROC", "entropy_auroc", 3))
        head = ["variant", *(f"{label} {_k(k)}" for label, _, _ in metrics for k in kinds)]
        lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for vname in (v for v in study.variants if v in cal["variants"]):  # the study's order
            blocks = cal["variants"][vname]
            lines.append(f"| {vname} | " + " | ".join(_pm(blocks[k][key]["mean"], blocks[k][key]["sd"], d)
                                                      for _, key, d in metrics for k in kinds) + " |")
        return "\n".join(lines) + "\n\n" + _caption(name, recs, f"; {cal['region']}") + "\n"
    return build


def postprocess_table(names: tuple[str, ...]) -> Callable[[Path], str]:
    """Per study and kind: the (patient, structure) pair whose Dice fell most from raw to post-processed over all the
    study's records made since provenance (the joint choice of the heart's component; older records kept the
    per-structure rule's scores), how many pairs fell by more than 0.01, and how many structures the network found
    (raw Dice > 0) the post-processing lost (Dice 0)."""
    def build(root: Path) -> str:
        lines = ["| study | kind | records | worst change (record, patient, structure: raw → post) "
                 "| pairs down > 0.01 | structures lost |", "|---" * 6 + "|"]
        used = {}
        for name in names:
            _, recs = load(name, root)
            recs = {k: r for k, r in recs.items() if r.get("provenance") and r.get("per_case_post")}
            used.update({(name, *k): r for k, r in recs.items()})
            for kind in KIND_NAMES:
                rows = [((v, s), r) for (v, s), r in sorted(recs.items()) if kind in r["per_case_post"]]
                if not rows:
                    continue
                worst, down, lost = None, 0, 0
                for (v, s), r in rows:
                    raw, post = r["per_case"][kind], r["per_case_post"][kind]
                    w = worst_change(raw, post, r["labels"])
                    if w and (worst is None or w["change"] < worst[1]["change"]):
                        worst = (f"{v}-seed{s}", w)
                    pairs = [(a["dice"].get(n), b["dice"].get(n)) for a, b in zip(raw, post) for n in r["labels"]]
                    pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
                    down += sum(y < x - 0.01 for x, y in pairs)
                    lost += sum(x > 0 and y == 0 for x, y in pairs)
                where = "–" if worst is None else (f"{worst[1]['change']:+.4f} ({worst[0]}, {worst[1]['case']}, "
                                                   f"{worst[1]['structure']}: {fmt(worst[1]['raw'])} → "
                                                   f"{fmt(worst[1]['post'])})")
                lines.append(f"| {name} | {_k(kind)} | {len(rows)} | {where} | {down} | {lost} |")
        if not used:
            return "*No records with post-processed scores and provenance yet.*\n"
        o, studied = records_lib.origins(used.values()), ", ".join(f"`{n}`" for n in dict.fromkeys(k[0] for k in used))
        return ("\n".join(lines) + f"\n\n*{len(used)} records of {studied} made since "
                f"provenance (`docs/studies/STUDY/`); each (patient, structure) pair's Dice after the post-processing "
                f"its model's validation patients chose minus its raw Dice; {records_lib.origins_text(o)}.*\n")
    return build


def studies_table(root: Path = RECORDS) -> str:
    """One row per shipped study: its committed records, seeds per variant, how many carry provenance, the run
    time they took (sum of the records' `seconds`) and the machines that made them."""
    lines = ["| study | variants | records | seeds per variant | with provenance | run time (h) | machines |",
             "|---|---|---|---|---|---|---|"]
    total = 0.0
    for name in studies.NAMES:
        study, recs = load(name, root)
        if not recs:
            lines.append(f"| `{name}` | {len(study.variants)} | 0 | – | – | – | – |")
            continue
        per_variant = sorted({sum(v == variant for v, _ in recs) for variant in study.variants})
        seeds = "–".join(map(str, dict.fromkeys((per_variant[0], per_variant[-1]))))
        o = records_lib.origins(recs.values())
        hours = sum(r.get("seconds") or 0 for r in recs.values()) / 3600
        total += hours
        machines = ", ".join(f"{k} ({n})" for k, n in o["machines"].items())
        lines.append(f"| `{name}` | {len(study.variants)} | {len(recs)} | {seeds} | "
                     f"{len(recs) - o['without_provenance']} | {hours:.2f} | {machines} |")
    return ("\n".join(lines) + f"\n\n*Records `docs/studies/STUDY/`; run time is each run's wall-clock time on "
            f"its machine (a run resumed from its checkpoints: the part after the resume; a run that scores another "
            f"run's model: the scoring), {total:.1f} h in all.*\n")


TABLES: dict[str, Callable[[Path], str]] = {
    "studies": studies_table,
    "phantom": kinds_table("patients", "all"),
    "phantom-post": kinds_table("patients", "all", post=True),
    "phantom-calibration": calibration_table("patients", "all"),
    "patients": curve_table("patients"),
    "acdc": kinds_table("budget", "steps1200", post=True),
    "acdc-calibration": calibration_table("budget", "steps1200"),
    "acdc-2400": kinds_table("budget", "steps2400", post=True),
    "acdc-2400-calibration": calibration_table("budget", "steps2400"),
    "budget": curve_table("budget"),
    "cine": kinds_table("cine", "cine"),
    "predecessor": variants_table("predecessor", focus=("PA", "AO")),
    "loss": variants_table("loss", focus=("PA", "AO")),
    "norm": variants_table("norm", focus=("PA", "AO")),
    "augmentation": variants_table("augmentation", focus=("PA", "AO")),
    "transfer": variants_table("transfer"),
    "transfer-post": variants_table("transfer", post=True),
    "transfer-calibration": calibration_variants_table("transfer"),
    "postprocess": postprocess_table(("budget", "patients", "cine", "norm", "loss", "augmentation", "transfer")),
}


def rebuild(text: str, root: Path = RECORDS) -> str:
    """`text` with every marked table rebuilt from the records under `root`."""
    def one(m):
        if m["name"] not in TABLES:
            raise SystemExit(f"unknown table {m['name']!r}; tables: {', '.join(TABLES)}")
        return m.group(1) + TABLES[m["name"]](root) + m.group(4)
    return _BLOCK.sub(one, text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true", help="rewrite the marked tables of README.md and docs/results.md")
    p.add_argument("--print", metavar="NAME", choices=sorted(TABLES), help="print one table and exit")
    args = p.parse_args(argv)
    if args.print:
        print(TABLES[args.print](RECORDS))
        return 0
    stale = []
    for doc in DOCS:
        path = ROOT / doc
        text = path.read_text()
        new = rebuild(text)
        if new != text:
            stale.append(doc)
            if args.write:
                path.write_text(new)
    verb = "rewrote" if args.write else "differ from the records"
    print(f"{verb}: {', '.join(stale)}" if stale else "every marked table equals its rebuild from the records")
    return 1 if stale and not args.write else 0


if __name__ == "__main__":
    sys.exit(main())
