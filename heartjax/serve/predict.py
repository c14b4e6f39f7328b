"""Segment new scans with a trained run: `python -m heartjax.predict RUN_DIR INPUT... --out DIR`.

A run folder is a model: it holds the config, plan, label scheme (with on-disk codes), preprocessing statistics,
post-processing decision and the best weights of each model it trained. Each scan is written as one label map
named after the input, on the scan's own grid with its own header, in the dataset's label codes. A DICOM series
(a folder holding one, see `heartjax.data.io.dicom`) is read like a NIfTI scan and its label map is written as
NIfTI on the series' grid, named after the folder (SERIES.nii.gz).

Before anything runs, the run folder, the inputs and --out are checked: a mistake there prints one `error:` line
naming the path and what to do, exits with status 2 and writes nothing. Each scan is then checked against the
model's plan (`heartjax.serve.scan_checks`: too small for the network's field of view, blank, intensities unlike the
training data's); warnings are printed and the scan is still segmented. A scan that cannot be processed does not
stop the batch. `OUT/predictions.json` records every case (input, output, on-disk shape and spacing, seconds,
warnings, error); the exit status is 1 when a case failed.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
import warnings
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from heartjax.common import atomic, cli
from heartjax.data.io import cli_paths
from heartjax.serve import scan_checks
from heartjax.serve.outputs import output_name, planned_outputs, probabilities_name, write_uncertainty
from heartjax.config import KINDS
from heartjax.data.io import images
from heartjax.data import preprocess
from heartjax.data.io.filenames import case_id_from_path
from heartjax.data.labels import LabelScheme
from heartjax.data.plan import Plan
from heartjax.data.io.quirks import quirk_key
from heartjax.common.errors import HeartjaxError
from heartjax.eval import postprocess
from heartjax.experiment.specs import ModelSpec
from heartjax.common.paths import RunFolder
from heartjax.train.checkpoint import Checkpointer
from heartjax.train.parallel import DataParallel
from heartjax.train.step import abstract_weights, make_predict_fn


PREDICTIONS_JSON = "predictions.json"


def _read_json(path: Path):
    """A run file's JSON; a missing or damaged file raises HeartjaxError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise HeartjaxError(f"run file {path} could not be read ({type(err).__name__}: {err}); the run folder is "
                            f"incomplete or damaged: --resume the run, or train it again.") from err


class Model:
    """A trained model of a run folder, ready to segment RAS volumes: built from its network spec
    (models/KIND.json), the plan and the label scheme, with the best weights restored."""

    def __init__(self, run_dir: Path, kind: str | None = None):
        self.run_dir = Path(run_dir)
        run = RunFolder(self.run_dir)
        missing = [p.name for p in (run.plan, run.label_scheme) if not p.exists()]
        if missing:
            raise HeartjaxError(f"{self.run_dir} is not a finished heartjax run (missing {missing}); "
                                f"point RUN_DIR at a folder written by python -m experiments.volumetric")
        try:
            self.plan = Plan.from_json(_read_json(run.plan))
            self.scheme = LabelScheme.from_json(_read_json(run.label_scheme))
        except (TypeError, KeyError, AttributeError) as err:
            raise HeartjaxError(f"run {self.run_dir}: plan.json or label_scheme.json is not what this heartjax "
                                f"writes ({type(err).__name__}: {err}); train the run again with this "
                                f"version.") from err
        self.kind = kind or self._best_kind()
        ckpt_dir, spec_file = run.checkpoints(self.kind), run.model_spec(self.kind)
        if not ckpt_dir.exists() or not spec_file.exists():
            have = sorted(p.stem for p in run.models.glob("*.json"))
            raise HeartjaxError(f"run {self.run_dir} has no trained {self.kind} model ({ckpt_dir} or {spec_file} is "
                                f"missing); choose --model from {have}")
        try:
            self.spec = ModelSpec.from_json(_read_json(spec_file))
        except (TypeError, KeyError, AttributeError) as err:
            raise HeartjaxError(f"model file {spec_file} is not what this heartjax writes ({type(err).__name__}: "
                                f"{err}); train the run again with this version.") from err
        graphdef, abstract = abstract_weights(self.spec.unet)
        parallel = DataParallel.create()  # tiles spread over this machine's devices, weights on each
        self.predict = make_predict_fn(graphdef, parallel)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=parallel.replicated),
                                abstract)
        with Checkpointer(ckpt_dir) as ckpt:
            self.weights, _ = ckpt.restore("best", abstract)
        ev = run.eval_record(self.kind)
        decision = _read_json(ev).get("postprocessing", {}) if ev.exists() else {}
        self.postprocessing = decision  # replayed by heartjax.eval.postprocess.apply

    def _best_kind(self) -> str:
        """The model with the best validation Dice (EMA), else the only one trained."""
        scores = {}
        for kind in KINDS:
            f = RunFolder(self.run_dir).eval_record(kind)
            if f.exists():
                scores[kind] = _read_json(f).get("best_val_dice") or 0.0
        if not scores:
            raise HeartjaxError(f"run {self.run_dir} has no evaluated model (no eval_KIND.json); "
                                f"finish or --resume the run first")
        return max(scores, key=scores.get)

    def probabilities(self, volume: images.Volume, tta: bool = False) -> tuple[np.ndarray, preprocess.Preprocessed]:
        """Class probabilities at the plan's spacing and the preprocessed case (for `restore`)."""
        pre = preprocess.preprocess_volume(volume, self.plan, self.scheme.num_classes)
        probs = self.spec.predict_volume(lambda x: self.predict(self.weights, x), pre.image, mirror=bool(tta))
        return probs, pre


class Ensemble:
    """The fold models of a cross-validated run (RUN/fold0, fold1, ...): probabilities averaged on each scan's
    original grid, as nnU-Net does; a single-split run is an ensemble of one."""

    def __init__(self, run_dir: Path, kind: str | None = None):
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            state = "is a file, not a folder" if run_dir.exists() else "does not exist"
            raise HeartjaxError(f"run folder {run_dir} {state}; point RUN_DIR at a folder written by "
                                f"python -m experiments.volumetric")
        folds = [f.root for f in RunFolder(run_dir).folds()]
        if not folds and not RunFolder(run_dir).plan.exists():
            raise HeartjaxError(f"{run_dir} is not a heartjax run (no plan.json and no fold*/ folders); "
                                f"point RUN_DIR at a folder written by python -m experiments.volumetric")
        if folds and kind is None:
            kind = Model(folds[0]).kind  # the first fold's validation decides, so every fold uses the same kind
        self.models = [Model(f, kind) for f in folds] if folds else [Model(run_dir, kind)]
        self.kind, self.scheme = self.models[0].kind, self.models[0].scheme
        self.postprocessing = self.models[0].postprocessing if len(self.models) == 1 else {}

    def segment(self, volume: images.Volume, tta: bool = False):
        """Label indices [X, Y, Z] uint8 on the volume's RAS grid and the averaged probabilities [X, Y, Z, C]."""
        labels, probs, _ = self.segment_with_variance(volume, tta, variance=False)
        return labels, probs

    def segment_with_variance(self, volume: images.Volume, tta: bool = False, variance: bool = True):
        """`segment`'s labels and probabilities, and the fold variance [X, Y, Z] float32: per voxel the mean over
        classes of the variance across folds (population, 1/n) of the probabilities; None with one fold."""
        total = sumsq = None
        for m in self.models:
            probs, pre = m.probabilities(volume, tta)
            full = preprocess.restore_probabilities(probs, pre)
            total = full if total is None else total + full
            if variance and len(self.models) > 1:
                sumsq = full * full if sumsq is None else sumsq + full * full
        probs = total / len(self.models)
        labels = probs.argmax(-1).astype(np.uint8)
        foldvar = None
        if sumsq is not None:  # E[p^2] - E[p]^2, clipped at 0 against float32 rounding
            foldvar = np.maximum(sumsq / len(self.models) - probs * probs, 0.0).mean(-1, dtype=np.float32)
        return postprocess.apply(labels, self.postprocessing), probs, foldvar

    def scan_warnings(self, volume: images.Volume) -> list[str]:
        """`heartjax.serve.scan_checks` warnings of a scan for every fold's plan and patch (each text once)."""
        out: list[str] = []
        for m in self.models:
            for text in scan_checks.scan_warnings(volume.image, volume.spacing, m.plan, m.spec.patch,
                                                  m.spec.slice_axis):
                if text not in out:
                    out.append(text)
        return out


def _load(path: Path) -> tuple[images.Volume, list[str]]:
    """Load a scan, returning the loader's warnings (header quirks, misnamed compression) as texts."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vol = images.load_volume(path)
    return vol, list(dict.fromkeys(str(w.message) for w in caught))


def predict_case(model: Ensemble, path: Path, target: Path, args, log) -> dict:
    """Segment one scan and write its outputs; never raises. Returns its predictions.json entry: case, input,
    output, status ("ok" | "error"), shape and spacing (on-disk axis order, mm), seconds, warnings, error."""
    entry = {"case": case_id_from_path(output_name(path)), "input": str(path), "output": str(target), "status": "ok",
             "shape": None, "spacing": None, "seconds": None, "warnings": [], "error": None}
    t0 = time.perf_counter()
    try:
        vol, loader_warnings = _load(path)
        entry["shape"], entry["spacing"] = list(vol.grid.shape), [round(s, 6) for s in vol.grid.spacing]
        entry["warnings"] = loader_warnings + model.scan_warnings(vol)
        for text in entry["warnings"]:
            log.warn(path, text)
        if args.uncertainty:
            labels, probs, foldvar = model.segment_with_variance(vol, args.tta)
        else:
            labels, probs = model.segment(vol, args.tta)
        images.save_label(target, labels, vol.grid, model.scheme, overwrite=args.overwrite)
        if args.uncertainty:
            entry.update(write_uncertainty(args, path, vol, probs, foldvar))
        if args.probabilities:
            probs_path = args.out / probabilities_name(path)
            images.save_array(probs_path, probs, vol.grid, overwrite=args.overwrite)
            entry["probabilities"] = str(probs_path)
    except (HeartjaxError, OSError) as err:
        entry.update(status="error", error=str(err))
    except Exception as err:  # noqa: BLE001 - one scan never stops the batch; the traceback is still shown
        entry.update(status="error", error=f"{type(err).__name__}: {err} (an unexpected error; please report it "
                                           f"with the traceback above)")
        log.write(traceback.format_exc(), err=True)
    entry["seconds"] = round(time.perf_counter() - t0, 3)
    return entry


class Log:
    """Progress lines through the progress bar; each loader warning is printed once per text (file names aside),
    scan warnings every time."""

    def __init__(self, bar):
        self.bar, self.seen, self.repeated = bar, set(), 0

    def write(self, text: str, err: bool = False) -> None:
        self.bar.write(text.rstrip("\n"), file=sys.stderr if err else sys.stdout)

    def warn(self, path: Path, text: str) -> None:
        key = quirk_key(text, path)  # the same quirk, other file and numbers
        if str(path) in text and key in self.seen:
            self.repeated += 1
            return
        self.seen.add(key)
        self.write(f"warning: {text}" if str(path) in text else f"warning: {path.name}: {text}", err=True)


def write_predictions(out: Path, entries: list[dict], model: Ensemble, args) -> Path:
    """OUT/predictions.json, atomically: this run's cases, plus the cases of earlier runs into the same folder
    whose outputs this run did not rewrite."""
    path = out / PREDICTIONS_JSON
    earlier = []
    if path.exists():
        try:
            earlier = json.loads(path.read_text()).get("cases", [])
        except (OSError, ValueError, AttributeError):
            earlier = []  # an unreadable record is replaced by this run's
    outputs = {e["output"] for e in entries}
    cases = [e for e in earlier if isinstance(e, dict) and e.get("output") not in outputs] + entries
    record = {"run_dir": str(args.run_dir), "model": model.kind, "folds": len(model.models), "tta": bool(args.tta),
              "postprocessing": postprocess.describe(model.postprocessing, model.scheme.names), "cases": cases}
    return atomic.write_json(path, record, indent=1, allow_nan=False)


EXAMPLE = """python -m heartjax.predict runs/smoke scan1.nii.gz scans/ --out preds/
python -m heartjax.predict runs/cv5 scans/ --out preds/ --model 3d --tta --probabilities"""


def _parse(argv):
    p = cli.parser("python -m heartjax.predict", __doc__, EXAMPLE)
    p.add_argument("run_dir", type=Path, help="a run folder of experiments.volumetric (its --out)")
    p.add_argument("inputs", nargs="+", help="NIfTI files, DICOM series folders (one series each), or folders of them")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--model", choices=KINDS, default=None, help="the kind to use (default: the run's best by validation)")
    p.add_argument("--tta", action="store_true", help="mirroring test-time augmentation")
    p.add_argument("--probabilities", action="store_true", help="also write class probabilities (NAME_probs.nii.gz)")
    p.add_argument("--uncertainty", action="store_true", help="also write the voxel entropy (NAME_entropy.nii.gz) "
                   "and, for a cross-validated run, the variance across folds (NAME_foldvar.nii.gz)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return p.parse_args(argv)


def prepare(args) -> tuple[Ensemble, list[Path], list[Path]]:
    """Every check that needs no scan read, then the model, then the output folder. Raises HeartjaxError."""
    files = cli_paths.collect_inputs(args.inputs)
    cli_paths.check_output_folder(args.out, "--out")
    targets = planned_outputs(files, args.out, args.probabilities, args.overwrite, args.uncertainty)
    model = Ensemble(args.run_dir, args.model)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise HeartjaxError(f"--out {args.out} could not be created ({type(err).__name__}: {err}); choose another "
                            f"folder.") from err
    return model, files, targets


def main(argv=None) -> int:
    """Command line entry: 0 every scan written, 1 a scan failed (the others written), 2 a usage error (nothing
    written)."""
    args = _parse(argv)
    try:
        model, files, targets = prepare(args)
    except HeartjaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"segmenting {len(files)} scan(s) with the {model.kind} model of {args.run_dir} "
          f"({len(model.models)} fold(s)) on {jax.devices()[0].platform}"
          f"{' with mirroring' if args.tta else ''}; post-processing: "
          f"{postprocess.describe(model.postprocessing, model.scheme.names)}")
    bar = tqdm(list(zip(files, targets)), unit="scan", dynamic_ncols=True)
    log, entries = Log(bar), []
    for f, target in bar:
        entry = predict_case(model, f, target, args, log)
        entries.append(entry)
        if entry["status"] == "ok":
            log.write(f"{f.name}: {entry['seconds']:.1f} s -> {target}")
        else:
            log.write(f"FAILED {f}: {entry['error']}", err=True)
    try:
        record = write_predictions(args.out, entries, model, args)
    except OSError as err:
        print(f"error: the label maps were written but {args.out / PREDICTIONS_JSON} could not be "
              f"({type(err).__name__}: {err}); free space or fix permissions in {args.out}", file=sys.stderr)
        return 1
    if log.repeated:
        print(f"warning: {log.repeated} more warning(s) like those above for other scans; every case's warnings "
              f"are in {record}", file=sys.stderr)
    failed = [e["case"] for e in entries if e["status"] == "error"]
    flagged = sum(bool(e["warnings"]) for e in entries if e["status"] == "ok")
    if failed:
        print(f"error: {len(failed)} of {len(files)} scan(s) failed ({', '.join(failed[:8])}"
              f"{' ...' if len(failed) > 8 else ''}); the others were written; see {record}", file=sys.stderr)
        return 1
    print(f"wrote {len(files)} label map(s) to {args.out}"
          f"{f'; {flagged} with warnings' if flagged else ''}; record: {record}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
