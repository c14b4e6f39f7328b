"""Slice-wise 2D versus volumetric 3D U-Net on the same patients: `python -m experiments.volumetric`.

Trains both models with the same split, plan, loss, optimiser and number of steps, evaluates each on whole
volumes of test patients neither saw (on their original grid), and writes one run folder:
config.json, splits.json, plan.json, label_scheme.json, tb/{2d,3d}, checkpoints/{2d,3d}, predictions/{2d,3d},
results.json, results.md, figures/. `--resume` continues a killed run from its latest checkpoints.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import jax
import numpy as np

from experiments.configs.references import REFERENCES
from experiments.configs.volumetric import get_config
from heartjax import config as config_lib
from heartjax import workflow
from heartjax.eval import scoring as evaluation
from heartjax.data import nifti
from heartjax.eval import postprocess
from heartjax.data import preprocess
from heartjax.eval.postprocess import keep_largest_component
from heartjax.train.checkpoint import Checkpointer
from heartjax.errors import HeartjaxError
from heartjax.eval.metrics import paired_test
from heartjax.data.plan import Plan
from heartjax.eval.summary import SummaryWriter, overlay_contours, plot_case_montage, plot_dice_bars
from heartjax.train.step import fit


def prepare_workdir(workdir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber an existing run unless --resume or --overwrite."""
    if workdir.exists() and any(workdir.iterdir()):
        if resume:
            if not (workdir / "config.json").exists():
                raise HeartjaxError(f"--resume: {workdir} is not a heartjax run (no config.json); check --workdir")
            return
        if not overwrite:
            raise HeartjaxError(f"run folder {workdir} exists and is not empty; pass --resume to continue it, "
                                f"--overwrite to replace it, or choose another --workdir")
        shutil.rmtree(workdir)
    elif resume:
        raise HeartjaxError(f"--resume: run folder {workdir} does not exist or is empty; start without --resume")
    workdir.mkdir(parents=True, exist_ok=True)


def train_and_evaluate(kind, cfg, ds, split, plan, pre, workdir, resume, log):
    """Train one model (resuming from its latest checkpoint), restore its best, and score the test patients."""
    scheme, names = ds.scheme, list(ds.scheme.names)
    trainer = workflow.build_trainer(cfg, plan, kind, scheme.num_classes)
    abstract = jax.eval_shape(lambda s: s, trainer.state)
    ckpt = Checkpointer(workdir / "checkpoints" / kind)
    state, start, meta = trainer.state, 0, {}
    if resume and ckpt.latest_step() is not None:
        state, meta = ckpt.restore("latest", abstract)
        start = int(meta["step"])
        log(f"[{kind}] resuming from step {start}")
    writer = SummaryWriter(workdir / "tb" / kind)
    if start == 0:
        writer.text("config", "```\n" + config_lib.to_json(cfg) + "\n```")
        writer.text("plan", "```\n" + json.dumps(plan.to_json(), indent=2) + "\n```")
    sampler = workflow.make_sampler(pre, split["train"], plan, kind, cfg, seed=cfg["seed"] + (0 if kind == "2d" else 1))
    val_fn = workflow.make_val_fn(trainer, pre, split["val"], plan, cfg, names)
    key = jax.random.key(cfg["seed"] + (11 if kind == "2d" else 13))
    t = cfg["train"]
    res = fit(state, trainer.train_step, sampler, key, start_step=start, num_steps=t["steps"], log_every=t["log_every"],
              eval_every=t["eval_every"], eval_fn=val_fn, checkpointer=ckpt, writer=writer, meta=meta,
              ema_decay=t["ema_decay"], desc=f"train {kind}", max_seconds=t["max_seconds"])
    best, best_meta = ckpt.restore("best", abstract)
    log(f"[{kind}] trained {res.steps} steps in {res.train_seconds:.0f} s; best EMA val Dice "
        f"{best_meta['best_ema']:.3f} at step {best_meta['best_step']}; evaluating {len(split['test'])} test patients")

    decision = decide_postprocessing(trainer, best, kind, cfg, ds, split, plan, pre)
    log(f"[{kind}] largest-component post-processing on validation: "
        f"{'kept' if decision['largest_component'] else 'not kept'}")
    per_case, per_case_pp, infer_seconds = [], [], []
    pred_dir = workdir / "predictions" / kind
    pred_dir.mkdir(parents=True, exist_ok=True)
    for i, cid in enumerate(split["test"]):
        vol = workflow.load_case(ds, cid)
        t0 = time.perf_counter()
        probs = workflow.predict_probs(trainer, best, pre[cid], plan, kind, cfg, scheme.num_classes)
        labels = preprocess.restore(probs, pre[cid])
        infer_seconds.append(time.perf_counter() - t0)
        per_case.append(evaluation.score_case(labels, vol.label, vol.spacing, names, cid))
        per_case_pp.append(evaluation.score_case(keep_largest_component(labels), vol.label, vol.spacing, names, cid))
        if cfg["infer"]["save_predictions"]:
            nifti.save_label(pred_dir / f"{cid}.nii.gz", labels, vol.grid, scheme, overwrite=True)
        if i == 0:
            p = pre[cid]
            mid = int(np.argmax((p.label > 0).sum(axis=tuple(a for a in range(3) if a != plan.slice_axis))))
            take = lambda a: np.take(a, mid, axis=plan.slice_axis)
            pred_small = np.argmax(probs, -1)
            writer.image(res.steps, "test/overlay", overlay_contours(take(p.image), take(p.label), take(pred_small), scheme.num_classes))
    results = evaluation.model_results(per_case, names, {
        "steps": res.steps, "train_seconds": res.train_seconds,
        "infer_seconds_per_case": float(np.mean(infer_seconds)), "best_step": int(best_meta["best_step"]),
        "params": int(sum(x.size for x in jax.tree.leaves(best["params"]))),
        "best_val_dice": float(best_meta["best_ema"]), "postprocessing": decision,
    })
    pp = evaluation.model_results(per_case_pp, names)
    results["largest_component_test"] = {"mean_dice": pp["mean_dice"], "per_structure": pp["per_structure"]}
    writer.scalars(res.steps, {f"test/dice/{n}": v["dice_mean"] for n, v in results["per_structure"].items()
                                if v["dice_mean"] is not None})
    hp = {"kind": kind, "features": trainer.model_cfg.features, "steps": res.steps, "lr": cfg["optim"]["lr"],
          "optimizer": cfg["optim"]["name"], "seed": cfg["seed"]}
    writer.hparams(hp, {"hparam/test_mean_dice": results["mean_dice"] or 0.0,
                        "hparam/test_whole_heart_dice": results["whole_heart_dice"] or 0.0})
    writer.close()
    ckpt.close()
    return results


def decide_postprocessing(trainer, state, kind, cfg, ds, split, plan, pre) -> dict:
    """nnU-Net's rule on the validation patients: keep the largest component per structure only if it helps."""
    cases = []
    for cid in split["val"]:
        vol = workflow.load_case(ds, cid)
        probs = workflow.predict_probs(trainer, state, pre[cid], plan, kind, cfg, ds.scheme.num_classes)
        cases.append((preprocess.restore(probs, pre[cid]), vol.label, vol.spacing, cid))
    return postprocess.decide(cases, list(ds.scheme.names))


def comparison(models: dict, names) -> dict:
    """Per structure: 3D minus 2D Dice across the same test patients, with paired tests."""
    if not {"2d", "3d"} <= set(models):
        return {}
    out = {}
    for n in [*names, "whole_heart"]:
        get = (lambda c: c["whole_heart_dice"]) if n == "whole_heart" else (lambda c, n=n: c["dice"][n])
        a = [np.nan if get(c) is None else get(c) for c in models["2d"]["per_case"]]
        b = [np.nan if get(c) is None else get(c) for c in models["3d"]["per_case"]]
        out[n] = evaluation._clean(paired_test(a, b))
    return out


TIE = 5e-4  # |3D - 2D| mean Dice below this is reported as a tie
ALPHA = 0.05  # significance level of the paired Wilcoxon test in the 2D vs 3D verdicts


def _significant(comparison: dict | None) -> bool:
    """Whether a paired 3D-minus-2D comparison has a Wilcoxon p-value below ALPHA."""
    p = (comparison or {}).get("p_wilcoxon")
    return p is not None and p < ALPHA


def as_applied(m: dict) -> dict:
    """A model's test metrics as heartjax.predict applies it: with the largest-component post-processing where
    validation chose it, raw otherwise."""
    lcc = m.get("largest_component_test")
    return lcc if (lcc and m.get("postprocessing", {}).get("largest_component")) else m


def reference_section(scheme: str, models: dict, names: list[str]) -> list[str]:
    """results.md lines setting this run's Dice beside the reference figures for `scheme` (none if unknown)."""
    ref = REFERENCES.get(scheme)
    if not ref:
        return []
    fmt = evaluation.fmt
    lines = ["", "## Beside reference figures", "",
             "| | " + " | ".join(names) + " | mean | what it is |", "|---|" + "---|" * (len(names) + 2)]
    for k, m in models.items():
        a = as_applied(m)
        cells = [f"{fmt(a['per_structure'][n]['dice_mean'])} ± {fmt(a['per_structure'][n]['dice_sd'])}" for n in names]
        lcc = "with largest-component post-processing" if a is not m else "raw network output"
        lines.append(f"| this run, {k} | " + " | ".join(cells) + f" | **{fmt(a['mean_dice'])}** | test patients, "
                     f"mean ± sd, {lcc}; {m['steps']} steps, {m['train_seconds'] / 60:.1f} min of training |")
    for name, per, mean, what in ref["rows"]:
        cells = [fmt(per.get(n)) if per else "–" for n in names]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {fmt(mean)} | {what} |")
    lines += ["", "What differs:"] + [f"- {d}" for d in ref["differences"]]
    return lines


def write_report(workdir: Path, cfg, ds, split, plan: Plan, models: dict) -> dict:
    """results.json, results.md and figures."""
    names = list(ds.scheme.names)
    results = {
        "dataset": "phantom-" + cfg["data"]["phantom_modality"] if cfg["data"]["dir"] is None else str(cfg["data"]["dir"]),
        "layout": ds.layout,
        "label_names": names,
        "split": {k: len(v) for k, v in split.items()},
        "test_cases": split["test"],
        "seed": cfg["seed"],
        "models": models,
        "comparison_3d_minus_2d": comparison(models, names),
    }
    workflow.write_json(workdir / "results.json", results)
    figs = workdir / "figures"
    figs.mkdir(exist_ok=True)
    plot_dice_bars({k: {n: (m["per_structure"][n]["dice_mean"] or 0.0) for n in names} for k, m in models.items()},
                   figs / "dice_per_structure.png", title=f"Test Dice per structure ({results['dataset']})")
    case = split["test"][0]
    vol = workflow.load_case(ds, case)
    preds = {}
    for kind in models:
        p = workdir / "predictions" / kind / f"{case}.nii.gz"
        if p.exists():
            preds[kind], _ = nifti.load_label_file(p, ds.scheme, reference_grid=vol.grid)
    if preds:
        plot_case_montage(vol.image, vol.label, preds, figs / f"montage_{case}.png", names, spacing=vol.spacing)

    lines = [f"# 2D slice-wise vs 3D volumetric U-Net: {results['dataset']}", "",
             f"Run on {platform.node() or 'unknown host'} ({platform.machine()}, {jax.devices()[0].platform}, "
             f"{jax.device_count()} device(s)), {datetime.date.today().isoformat()}, seed {cfg['seed']}.",
             f"Patients: {results['split']['train']} train, {results['split']['val']} validation, "
             f"{results['split']['test']} test (patient-level split; test patients seen by neither model).",
             f"Plan: spacing {plan.target_spacing} mm, 3D patch {plan.patch_3d} x {plan.batch_3d}, "
             f"2D patch {plan.patch_2d} x {plan.batch_2d} (slices along axis {plan.slice_axis}).", "",
             "| model | steps | train s | infer s/case | params | mean Dice | whole-heart Dice |", "|---|---|---|---|---|---|---|"]
    for k, m in models.items():
        lines.append(f"| {k} | {m['steps']} | {m['train_seconds']:.0f} | {m['infer_seconds_per_case']:.1f} | "
                     f"{m['params']:,} | {evaluation.fmt(m['mean_dice'])} | {evaluation.fmt(m['whole_heart_dice'])} |")
    lines += ["", "## Per structure (test patients, mean ± sd)", ""] + evaluation.structure_table(models, names)
    lines += ["", "## Largest-connected-component post-processing (test patients)", "",
              "Kept for a model only if it raised the mean validation Dice and made no structure worse (nnU-Net's rule).",
              "", "| structure | " + " | ".join(f"{k} Dice raw → LCC | {k} HD95 mm raw → LCC" for k in models) + " |",
              "|---|" + "---|---|" * len(models)]
    for n in names:
        cells = []
        for m in models.values():
            raw, lcc = m["per_structure"][n], m["largest_component_test"]["per_structure"][n]
            cells += [f"{evaluation.fmt(raw['dice_mean'])} → {evaluation.fmt(lcc['dice_mean'])}",
                      f"{evaluation.fmt(raw['hd95_mean'], 1)} → {evaluation.fmt(lcc['hd95_mean'], 1)}"]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines.append("| kept on validation | " + " | ".join(
        f"{'yes' if m['postprocessing']['largest_component'] else 'no'} | " for m in models.values()) + " |")
    lines += reference_section(ds.scheme.name, models, names)
    comp = results["comparison_3d_minus_2d"]
    if comp:
        lines += ["", "## 3D minus 2D Dice, paired over test patients", "",
                  "| structure | mean diff | sd | n | Wilcoxon p | paired t p | winner |", "|---|---|---|---|---|---|---|"]
        for n, c in comp.items():
            d = c["mean_diff"]
            winner = "–" if d is None else "tie" if abs(d) < TIE else "3D" if d > 0 else "2D"
            if d is not None and abs(d) >= TIE and not _significant(c):
                winner += " (n.s.)"
            lines.append(f"| {n} | {evaluation.fmt(d)} | {evaluation.fmt(c['sd_diff'])} | {c['n']} | "
                         f"{evaluation.fmt(c['p_wilcoxon'])} | {evaluation.fmt(c['p_ttest'])} | {winner} |")
        lines += ["", f"With {results['split']['test']} test patients, p-values are indicative only; n.s.: Wilcoxon "
                  f"p >= {ALPHA} (or too few patients to test), the difference may be chance."]
    lines += ["", "Metrics: Dice/IoU from whole-volume voxel counts per patient on the original grid; HD95/ASSD in mm "
              "(a missed structure scores the volume diagonal). See the README for definitions.", ""]
    (workdir / "results.md").write_text("\n".join(lines))
    return results


def main(cfg: dict, workdir: Path, resume: bool = False, log=print) -> dict:
    """Run the experiment of `cfg` into `workdir` (which prepare_workdir has checked): one split, or with
    data.cross_validate every fold into workdir/foldI and the pooled results of all test patients."""
    if resume and (workdir / "config.json").exists():
        cfg = json.loads((workdir / "config.json").read_text())
        log(f"resuming {workdir} with its saved config")
    else:
        workflow.write_json(workdir / "config.json", cfg)
    if not cfg["data"]["cross_validate"]:
        return run_split(cfg, workdir, resume, log)
    folds = []
    for fold in range(cfg["data"]["folds"]):
        sub = workdir / f"fold{fold}"
        log(f"=== fold {fold} of {cfg['data']['folds']} ===")
        fold_cfg = {**cfg, "data": {**cfg["data"], "fold": fold, "cross_validate": False}}
        sub.mkdir(exist_ok=True)
        if not (resume and (sub / "config.json").exists()):
            workflow.write_json(sub / "config.json", fold_cfg)
        folds.append(run_split(fold_cfg, sub, resume, log) if not (sub / "results.json").exists()
                     else json.loads((sub / "results.json").read_text()))
    return pool_folds(cfg, workdir, folds, log)


def pool_folds(cfg, workdir: Path, folds: list, log=print) -> dict:
    """Cross-validation results: every patient is a test patient of exactly one fold."""
    names = folds[0]["label_names"]
    models = {}
    for kind in folds[0]["models"]:
        per_case = [c for f in folds for c in f["models"][kind]["per_case"]]
        ms = [f["models"][kind] for f in folds]
        models[kind] = evaluation.model_results(per_case, names, {
            "steps": ms[0]["steps"], "train_seconds": float(sum(m["train_seconds"] for m in ms)),
            "infer_seconds_per_case": float(np.mean([m["infer_seconds_per_case"] for m in ms])),
            "params": ms[0]["params"], "folds": len(folds),
            "best_val_dice": float(np.mean([m["best_val_dice"] for m in ms])),
        })
    results = {**{k: folds[0][k] for k in ("dataset", "layout", "label_names", "seed")},
               "cross_validation": len(folds), "test_cases": [c for f in folds for c in f["test_cases"]],
               "models": models, "comparison_3d_minus_2d": comparison(models, names)}
    workflow.write_json(workdir / "results.json", results)
    lines = [f"# {len(folds)}-fold cross-validation: {results['dataset']}", "",
             f"Every one of {len(results['test_cases'])} patients is scored once, by the models of the fold that "
             f"held it out. Per-fold details in fold*/results.md.", ""]
    lines += evaluation.structure_table(models, names)
    (workdir / "results.md").write_text("\n".join(lines) + "\n")
    summarize(results, workdir, log)
    return results


def run_split(cfg: dict, workdir: Path, resume: bool, log=print) -> dict:
    """Train and evaluate both models on one patient-level split into workdir."""
    ds = workflow.resolve_dataset(cfg, log)
    log(f"dataset: {ds.root} ({ds.layout}, {len(ds.cases)} cases, scheme {ds.scheme.name}, modality {ds.modality})")
    if (workdir / "splits.json").exists() and (workdir / "plan.json").exists():
        split = json.loads((workdir / "splits.json").read_text())
        plan = Plan.from_json(json.loads((workdir / "plan.json").read_text()))
    else:
        split = workflow.make_split(ds, cfg)
        plan = workflow.make_plan(ds, split["train"], cfg)
        workflow.write_json(workdir / "splits.json", split)
        workflow.write_json(workdir / "plan.json", plan.to_json())
        workflow.write_json(workdir / "label_scheme.json", ds.scheme.to_json())
    log(f"split: {len(split['train'])} train / {len(split['val'])} val / {len(split['test'])} test patients; "
        f"plan: spacing {plan.target_spacing} mm, 3D patch {plan.patch_3d}, 2D patch {plan.patch_2d}")
    t0 = time.perf_counter()
    pre = workflow.preprocess_ids(ds, split["train"] + split["val"] + split["test"], plan, cfg)
    log(f"preprocessed {len(pre)} cases in {time.perf_counter() - t0:.1f} s (cache: {cfg['data']['cache_dir']})")

    models = {}
    for kind in cfg["train"]["models"]:
        if kind not in workflow.KINDS:
            raise HeartjaxError(f"config setting train.models contains {kind!r}; use '2d' and/or '3d'")
        done = workdir / f"eval_{kind}.json"
        if done.exists():
            models[kind] = json.loads(done.read_text())
            log(f"[{kind}] already trained and evaluated; reusing {done.name}")
            continue
        models[kind] = train_and_evaluate(kind, cfg, ds, split, plan, pre, workdir, resume, log)
        workflow.write_json(done, models[kind])
    results = write_report(workdir, cfg, ds, split, plan, models)
    summarize(results, workdir, log)
    return results


def summarize(results: dict, workdir: Path, log=print) -> None:
    """Print which model won where, by how much, and whether the paired test supports it."""
    models, names = results["models"], results["label_names"]
    comp = results.get("comparison_3d_minus_2d") or {}
    log("")
    log(f"Test Dice per structure ({results['dataset']}):")
    log("  structure " + " ".join(f"{k:>8}" for k in models) + ("   winner" if len(models) == 2 else ""))
    for n in names:
        vals = [models[k]["per_structure"][n]["dice_mean"] for k in models]
        win = ""
        if len(vals) == 2 and None not in vals:
            d = vals[1] - vals[0]
            win = "   tie" if abs(d) < TIE else f"   {'3D' if d > 0 else '2D'} by {abs(d):.3f}"
            if abs(d) >= TIE and n in comp:
                p = comp[n].get("p_wilcoxon")
                win += f" (p {evaluation.fmt(p)})" if _significant(comp[n]) else f" (n.s., p {evaluation.fmt(p)})"
        log(f"  {n:9} " + " ".join(f"{evaluation.fmt(v):>8}" for v in vals) + win)
    log("  mean      " + " ".join(f"{evaluation.fmt(models[k]['mean_dice']):>8}" for k in models))
    log("  train s   " + " ".join(f"{models[k]['train_seconds']:8.0f}" for k in models))
    log(f"Results: {workdir / 'results.md'} (table), {workdir / 'results.json'}, figures in {workdir / 'figures'}")
    log(f"TensorBoard: tensorboard --logdir {workdir / 'tb'}")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m experiments.volumetric", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.steps=200 model.features=8")
    p.add_argument("--preset", default="default", help="smoke | default | acdc | full (default: default)")
    p.add_argument("--workdir", type=Path, default=None, help="run folder (default: runs/volumetric-<timestamp>)")
    p.add_argument("--data", default=None, help="dataset folder (MM-WHS, nnU-Net, ACDC or images/+labels/); default: phantom")
    p.add_argument("--seed", type=int, default=None, help="seed of the run (default: the preset's, 0)")
    p.add_argument("--cv", type=int, default=None, help="cross-validate: train all K folds into RUN/foldI and pool them")
    p.add_argument("--fold", type=int, default=None, help="which fold is the test fold (default 0)")
    p.add_argument("--resume", action="store_true", help="continue the run in --workdir from its latest checkpoints")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --workdir")
    return p.parse_args(argv)


def cli(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = get_config(args.preset)
        extra = []
        if args.data is not None:
            extra.append(f"data.dir={args.data!r}")
        if args.seed is not None:
            extra.append(f"seed={args.seed}")
        if args.cv is not None:
            extra += [f"data.folds={args.cv}", "data.cross_validate=True"]
        if args.fold is not None:
            extra.append(f"data.fold={args.fold}")
        cfg = config_lib.apply_overrides(cfg, extra + list(args.overrides))
        if not args.resume:
            workflow.validate_config(cfg)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        workdir = args.workdir or Path("runs") / f"volumetric-{stamp}"
        prepare_workdir(workdir, args.resume, args.overwrite)
        print(f"run folder: {workdir}  (preset {args.preset}; JAX devices: {jax.devices()})", flush=True)
        main(cfg, workdir, resume=args.resume)
    except HeartjaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
