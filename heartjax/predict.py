"""Segment new scans with a trained run: `python -m heartjax.predict RUN_DIR INPUT... --out DIR`.

A run folder is a model: it holds the config, plan, label scheme (with on-disk codes), preprocessing statistics,
post-processing decision and the best weights of each model it trained. Each scan is written as one label map
named after the input, on the scan's own grid with its own header, in the dataset's label codes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from heartjax.config import KINDS
from heartjax.data import nifti, preprocess
from heartjax.data.labels import LabelScheme
from heartjax.data.plan import Plan
from heartjax.errors import HeartjaxError
from heartjax.eval.postprocess import keep_largest_component
from heartjax.specs import ModelSpec


class Model:
    """A trained model of a run folder, ready to segment RAS volumes: built from its network spec
    (models/KIND.json), the plan and the label scheme, with the best weights restored."""

    def __init__(self, run_dir: Path, kind: str | None = None):
        self.run_dir = Path(run_dir)
        need = ["plan.json", "label_scheme.json"]
        missing = [n for n in need if not (self.run_dir / n).exists()]
        if missing:
            raise HeartjaxError(f"{self.run_dir} is not a finished heartjax run (missing {missing}); "
                                f"point RUN_DIR at a folder written by python -m experiments.volumetric")
        self.plan = Plan.from_json(json.loads((self.run_dir / "plan.json").read_text()))
        self.scheme = LabelScheme.from_json(json.loads((self.run_dir / "label_scheme.json").read_text()))
        self.kind = kind or self._best_kind()
        ckpt_dir, spec_file = self.run_dir / "checkpoints" / self.kind, self.run_dir / "models" / f"{self.kind}.json"
        if not ckpt_dir.exists() or not spec_file.exists():
            have = sorted(p.stem for p in (self.run_dir / "models").glob("*.json"))
            raise HeartjaxError(f"run {self.run_dir} has no trained {self.kind} model ({ckpt_dir} or {spec_file} is "
                                f"missing); choose --model from {have}")
        from heartjax.train.checkpoint import Checkpointer
        from heartjax.train.parallel import DataParallel
        from heartjax.train.step import abstract_weights, make_predict_fn

        self.spec = ModelSpec.from_json(json.loads(spec_file.read_text()))
        graphdef, abstract = abstract_weights(self.spec.unet)
        parallel = DataParallel.create()  # tiles spread over this machine's devices, weights on each
        self.predict = make_predict_fn(graphdef, parallel)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=parallel.replicated),
                                abstract)
        with Checkpointer(ckpt_dir) as ckpt:
            self.weights, _ = ckpt.restore("best", abstract)
        ev = self.run_dir / f"eval_{self.kind}.json"
        decision = json.loads(ev.read_text()).get("postprocessing", {}) if ev.exists() else {}
        self.largest_component = bool(decision.get("largest_component", False))

    def _best_kind(self) -> str:
        """The model with the best validation Dice (EMA), else the only one trained."""
        scores = {}
        for kind in KINDS:
            f = self.run_dir / f"eval_{kind}.json"
            if f.exists():
                scores[kind] = json.loads(f.read_text()).get("best_val_dice") or 0.0
        if not scores:
            raise HeartjaxError(f"run {self.run_dir} has no evaluated model (no eval_KIND.json); "
                                f"finish or --resume the run first")
        return max(scores, key=scores.get)

    def probabilities(self, volume: nifti.Volume, tta: bool = False) -> tuple[np.ndarray, preprocess.Preprocessed]:
        """Class probabilities at the plan's spacing and the preprocessed case (for `restore`)."""
        pre = preprocess.preprocess_volume(volume, self.plan, self.scheme.num_classes)
        probs = self.spec.predict_volume(lambda x: self.predict(self.weights, x), pre.image, mirror=bool(tta))
        return probs, pre


class Ensemble:
    """The fold models of a cross-validated run (RUN/fold0, fold1, ...): probabilities averaged on each scan's
    original grid, as nnU-Net does; a single-split run is an ensemble of one."""

    def __init__(self, run_dir: Path, kind: str | None = None):
        run_dir = Path(run_dir)
        folds = sorted((p for p in run_dir.glob("fold*") if (p / "plan.json").exists()), key=lambda p: p.name)
        if not folds and not (run_dir / "plan.json").exists():
            raise HeartjaxError(f"{run_dir} is not a heartjax run (no plan.json and no fold*/ folders); "
                                f"point RUN_DIR at a folder written by python -m experiments.volumetric")
        if folds and kind is None:
            kind = Model(folds[0]).kind  # the first fold's validation decides, so every fold uses the same kind
        self.models = [Model(f, kind) for f in folds] if folds else [Model(run_dir, kind)]
        self.kind, self.scheme = self.models[0].kind, self.models[0].scheme
        self.largest_component = self.models[0].largest_component if len(self.models) == 1 else False

    def segment(self, volume: nifti.Volume, tta: bool = False):
        """Label indices [X, Y, Z] uint8 on the volume's RAS grid and the averaged probabilities [X, Y, Z, C]."""
        total = None
        for m in self.models:
            probs, pre = m.probabilities(volume, tta)
            full = preprocess.restore_probabilities(probs, pre)
            total = full if total is None else total + full
        probs = total / len(self.models)
        labels = probs.argmax(-1).astype(np.uint8)
        if self.largest_component:
            labels = keep_largest_component(labels)
        return labels, probs


def collect_inputs(inputs) -> list[Path]:
    """NIfTI files named directly or found in folders (sorted); a missing path is reported later as a failure."""
    out = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if nifti.is_nifti_path(q))
        else:
            out.append(p)
    return out


def output_name(path: Path) -> str:
    name = path.name
    return name if name.endswith((".nii.gz", ".nii")) else name + ".nii.gz"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m heartjax.predict", description=__doc__)
    p.add_argument("run_dir", type=Path)
    p.add_argument("inputs", nargs="+", help="NIfTI files or folders of them")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--model", choices=KINDS, default=None, help="default: the run's best by validation")
    p.add_argument("--tta", action="store_true", help="mirroring test-time augmentation")
    p.add_argument("--probabilities", action="store_true", help="also write class probabilities (NAME_probs.nii.gz)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    args = p.parse_args(argv)
    try:
        model = Ensemble(args.run_dir, args.model)
    except HeartjaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    files = collect_inputs(args.inputs)
    if not files:
        print(f"error: no NIfTI files (.nii, .nii.gz) found in {[str(i) for i in args.inputs]}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"segmenting {len(files)} scan(s) with the {model.kind} model of {args.run_dir} "
          f"({len(model.models)} fold(s)) on {jax.devices()[0].platform}"
          f"{' with mirroring' if args.tta else ''}; post-processing: "
          f"{'largest component' if model.largest_component else 'none'}")
    from tqdm import tqdm

    failed = []
    bar = tqdm(files, unit="scan", dynamic_ncols=True)
    for f in bar:
        t0 = time.perf_counter()
        target = args.out / output_name(f)
        try:
            if target.exists() and not args.overwrite:
                raise HeartjaxError(f"{target} exists; pass --overwrite to replace it")
            vol = nifti.load_volume(f)
            labels, probs = model.segment(vol, args.tta)
            nifti.save_label(target, labels, vol.grid, model.scheme, overwrite=args.overwrite)
            if args.probabilities:
                stem = output_name(f).removesuffix(".gz").removesuffix(".nii")
                nifti.save_array(args.out / f"{stem}_probs.nii.gz", probs, vol.grid, overwrite=args.overwrite)
            bar.write(f"{f.name}: {time.perf_counter() - t0:.1f} s -> {target}")
        except (HeartjaxError, OSError) as e:
            failed.append(f.name)
            bar.write(f"FAILED {f}: {e}")
    if failed:
        print(f"{len(failed)} of {len(files)} scan(s) failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
