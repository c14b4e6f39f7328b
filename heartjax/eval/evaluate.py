"""`python -m heartjax.evaluate PRED_DIR TRUTH_DIR`: score any method's label maps against ground truth.

Predictions and truth files are paired by name: `X.nii.gz` in PRED_DIR pairs with `X.nii.gz` or
`X_label|_mask|_seg|_gt.nii.gz` in TRUTH_DIR (a prediction may carry those suffixes too; `.nii` works as well).
Each pair is scored on the truth's grid, in RAS order, with the truth's voxel spacing, by
`heartjax.eval.scoring.score_case` (the one implementation of every metric; definitions in `heartjax.eval.metrics` and
`heartjax.eval.surface`). A pair that cannot be scored (missing partner, different grid, unknown codes, unreadable
file) is reported and skipped; the others are still scored and written, and the exit code says something failed.

Writes `evaluation.json` ({"scheme", "names", "pred_dir", "truth_dir", "cases", "summary"}, with "cases" the
pairing and status of every case, "summary" the `scoring.model_results` block) and `evaluation.csv` (one row
per scored case) atomically into the --out folder (default PRED_DIR), and prints a per-structure table.

Exit status: 0 every case scored; 1 a case could not be scored (the others are written); 2 a usage error (a folder
missing or unreadable, --out not writable, no pairs, the scheme not inferable): one `error:` line naming the path
and what to do, nothing written.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import io
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

from heartjax.common import atomic, cli
from heartjax.data.io import cli_paths
from heartjax.data.io import filenames
from heartjax.data import labels as labels_lib
from heartjax.data.io import images
from heartjax.data.io.filenames import natural_key, pair_key
from heartjax.common.errors import HeartjaxError
from heartjax.eval import scoring
from heartjax.eval.metric_table import METRICS

_MAX_LISTED = 10  # failures printed in full; the JSON lists them all
_NAMES = filenames.label_names("X")
_TRIED = f"{_NAMES[0]}.nii(.gz) or {' / '.join(_NAMES[1:])}.nii(.gz)"


@dataclasses.dataclass
class Pair:
    """One case: its prediction and truth files (None when missing) and why it cannot be scored (or None)."""

    case: str
    pred: Path | None
    truth: Path | None
    error: str | None = None
    missing_prediction: bool = False  # the one problem --allow-missing forgives


def _files_by_key(folder: Path) -> dict[str, list[Path]]:
    """Visible NIfTI files of a folder grouped by pair key (`heartjax.data.io.filenames.pair_key`)."""
    out: dict[str, list[Path]] = {}
    for path in filenames.nifti_files(folder):
        out.setdefault(pair_key(path), []).append(path)
    return out


def pair_files(pred_dir, truth_dir) -> list[Pair]:
    """Pair the prediction and truth files of two folders by name (see the module docstring).

    Returns one Pair per case name found in either folder, in natural order; unmatched or ambiguous names come
    with an `error` that names the files and says what to do. Raises HeartjaxError if a folder does not exist.
    """
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    for what, folder in (("prediction", pred_dir), ("truth", truth_dir)):
        cli_paths.check_input_folder(folder, what)
    preds, truths = _files_by_key(pred_dir), _files_by_key(truth_dir)
    pairs = []
    for key in sorted(set(preds) | set(truths), key=natural_key):
        p, t = preds.get(key, []), truths.get(key, [])
        pair = Pair(key, p[0] if len(p) == 1 else None, t[0] if len(t) == 1 else None)
        if len(p) > 1 or len(t) > 1:
            many = p if len(p) > 1 else t
            pair.error = (f"case {key}: several files in {many[0].parent} pair with it: "
                          f"{[f.name for f in many]}; keep only one of them there.")
        elif not t:
            pair.error = (f"case {key}: prediction {p[0]} has no truth file in {truth_dir} (tried "
                          f"{', '.join(filenames.label_names(key))} with .nii.gz or .nii); add the "
                          f"truth file or move the prediction out.")
        elif not p:
            pair.missing_prediction = True
            pair.error = (f"case {key}: truth file {t[0]} has no prediction in {pred_dir} (tried "
                          f"{', '.join(filenames.label_names(key))} with .nii.gz or .nii); predict "
                          f"it, or pass --allow-missing to score only the cases that have a prediction.")
        pairs.append(pair)
    return pairs


def infer_scheme(truth_files: Sequence[Path]) -> labels_lib.LabelScheme:
    """MM-WHS when the truth's non-zero codes are MM-WHS codes; otherwise a HeartjaxError asking for --scheme."""
    for path in truth_files:
        try:
            present = labels_lib.present_codes(images.read_label_codes(path))
        except HeartjaxError:
            continue  # unreadable: that case reports its own error; look at the next file
        if not present:
            continue
        mmwhs = labels_lib.MMWHS
        if labels_lib.scheme_from_codes(present) is mmwhs:
            return mmwhs
        raise HeartjaxError(
            f"truth file {path} holds label codes {present}, which are not MM-WHS codes {list(mmwhs.codes)}; "
            f"say what they mean with --scheme: acdc (1 RV, 2 MYO, 3 LV) or generic{max(present)} "
            f"(structures coded 1..{max(present)})."
        )
    raise HeartjaxError("could not infer the label scheme: no readable truth file holds a structure; pass --scheme "
                        "mmwhs, acdc or genericK.")


def _score_pair(pair: Pair, scheme: labels_lib.LabelScheme) -> dict:
    """Load one pair (prediction on the truth's grid) and score it with scoring.score_case."""
    truth, grid = images.load_label_file(pair.truth, scheme)
    pred, _ = images.load_label_file(pair.pred, scheme, reference_grid=grid)
    return scoring.score_case(pred, truth, grid.ras_spacing, scheme.names, pair.case)


def _try_score(pair: Pair, scheme: labels_lib.LabelScheme) -> tuple[dict | None, str | None]:
    """(scores, None) or (None, error text naming both files)."""
    try:
        return _score_pair(pair, scheme), None
    except HeartjaxError as err:
        return None, f"case {pair.case} (prediction {pair.pred}, truth {pair.truth}): {err}"


def evaluate_folders(pred_dir, truth_dir, scheme=None, workers: int = 1, allow_missing: bool = False,
                     progress=None) -> dict:
    """Score every prediction in `pred_dir` against its truth file in `truth_dir`.

    Args:
      pred_dir, truth_dir: folders of NIfTI label maps paired by name (see the module docstring).
      scheme: a LabelScheme, a name ('mmwhs', 'acdc', 'genericK') or None to infer MM-WHS from the truth codes.
      workers: threads loading and scoring cases at once.
      allow_missing: truth files without a prediction are listed but not counted as failures.
      progress: optional callable(text) told about each case as it finishes.
    Returns:
      {"scheme": name, "names": [K structure names], "pred_dir", "truth_dir",
       "cases": [{"case", "prediction", "truth", "status": "ok" | "error" | "missing_prediction", "error"}],
       "summary": scoring.model_results(...) of the scored cases (None if none), "failed": int}.
    Raises:
      HeartjaxError: a folder is missing, no pairs were found, or the scheme cannot be inferred.
    """
    pairs = pair_files(pred_dir, truth_dir)
    scorable = [p for p in pairs if p.error is None]
    if not scorable:
        preds = sorted(_files_by_key(Path(pred_dir)), key=natural_key)
        truths = sorted(_files_by_key(Path(truth_dir)), key=natural_key)
        raise HeartjaxError(
            f"no prediction in {pred_dir} pairs with a truth file in {truth_dir}: prediction names "
            f"{preds[:8]}{' ...' if len(preds) > 8 else ''}, truth names {truths[:8]}"
            f"{' ...' if len(truths) > 8 else ''} (suffixes stripped). A prediction X.nii(.gz) pairs with truth "
            f"{_TRIED}; rename the files so the names match."
            + "".join(f" {p.error}" for p in pairs if "several files" in p.error)
        )
    scheme = labels_lib.resolve_scheme(scheme) if scheme is not None else infer_scheme([p.truth for p in scorable])
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        results = []
        # map keeps the case order; each result is reported as soon as it and those before it are done
        for index, (pair, res) in enumerate(zip(scorable, pool.map(lambda p: _try_score(p, scheme), scorable))):
            results.append(res)
            if progress:
                progress(f"[{index + 1}/{len(scorable)}] {pair.case}: "
                         + ("failed" if res[0] is None else f"mean Dice {res[0]['mean_dice']:.4f}"))
    outcome = dict(zip((id(p) for p in scorable), results))
    cases, per_case, failed = [], [], 0
    for pair in pairs:
        scores, error = outcome.get(id(pair), (None, pair.error))
        status = "ok" if scores is not None else "error"
        if pair.missing_prediction and allow_missing:
            status = "missing_prediction"
        failed += status == "error"
        if scores is not None:
            per_case.append(scores)
        cases.append({"case": pair.case, "prediction": None if pair.pred is None else str(pair.pred),
                      "truth": None if pair.truth is None else str(pair.truth), "status": status,
                      "error": error})
    extra = {"n_cases": len(per_case), "n_failed": failed}
    summary = scoring.model_results(per_case, scheme.names, extra) if per_case else None
    return {"scheme": scheme.name, "names": list(scheme.names), "pred_dir": str(pred_dir),
            "truth_dir": str(truth_dir), "cases": cases, "summary": summary, "failed": failed}


def csv_rows(result: dict) -> list[list[str]]:
    """Header and one row per scored case: case, per structure every metric of the table, whole heart, accuracies."""
    names = result["names"]
    header = ["case"] + [f"{n}_{m.name}" for n in names for m in METRICS]
    header += ["whole_heart_dice", "accuracy", "fg_accuracy", "mean_dice"]
    rows = [header]
    for c in (result["summary"] or {}).get("per_case", []):
        row = [c["case"]]
        for n in names:
            row += [_cell(c[m.name][n]) for m in METRICS]
        row += [_cell(c[k]) for k in ("whole_heart_dice", "accuracy", "fg_accuracy", "mean_dice")]
        rows.append(row)
    return rows


def _cell(value) -> str:
    """A CSV cell: full-precision float, 'nan' for undefined (None)."""
    return "nan" if value is None or not math.isfinite(value) else repr(float(value))


def output_paths(out: str | os.PathLike | None, pred_dir) -> tuple[Path, Path]:
    """(json, csv) paths: OUT/evaluation.json and OUT/evaluation.csv, OUT being --out (a folder, created if
    missing) or PRED_DIR. Raises HeartjaxError for an --out that names a .json/.csv file (its older meaning)."""
    folder = Path(pred_dir if out is None else out)
    if out is not None and folder.suffix.lower() in (".json", ".csv") and not folder.is_dir():
        raise HeartjaxError(f"--out {out}: --out is the output folder (evaluation.json and evaluation.csv are "
                            f"written into it); give --out {folder.parent}")
    return folder / "evaluation.json", folder / "evaluation.csv"


def write_results(result: dict, out=None) -> tuple[Path, Path]:
    """Write evaluation JSON and CSV atomically (heartjax.common.atomic, overwriting earlier ones); returns their paths."""
    json_path, csv_path = output_paths(out, result["pred_dir"])
    record = {k: result[k] for k in ("scheme", "names", "pred_dir", "truth_dir", "cases", "summary")}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(json_path, record, indent=1, allow_nan=False)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(csv_rows(result))
    atomic.write_text(csv_path, buffer.getvalue())
    return json_path, csv_path


def format_table(result: dict) -> list[str]:
    """Markdown rows: per structure every metric of the table as mean ± sd over the scored cases."""
    s = result["summary"]
    def pm(st, m):
        return f"{scoring.fmt(st[m.name + '_mean'], m.digits)} ± {scoring.fmt(st[m.name + '_sd'], m.digits)}"

    pad = " |" * (len(METRICS) - 1)
    lines = [f"{s['n_cases']} cases scored, {result['failed']} failed (scheme {result['scheme']})",
             "| structure | " + " | ".join(m.column() for m in METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for n in result["names"]:
        st = s["per_structure"][n]
        lines.append(f"| {n} | " + " | ".join(pm(st, m) for m in METRICS) + " |")
    lines.append(f"| mean Dice | {scoring.fmt(s['mean_dice'])} |{pad}")
    if s.get("whole_heart_dice") is not None:
        lines.append(f"| whole heart | {scoring.fmt(s['whole_heart_dice'])} ± "
                     f"{scoring.fmt(s['whole_heart_dice_sd'])} |{pad}")
    lines.append(f"accuracy {scoring.fmt(s['accuracy'], 4)}, foreground accuracy {scoring.fmt(s['fg_accuracy'], 4)}")
    return lines


def _report_warnings(caught: list) -> None:
    """Print the loader's warnings (e.g. header quirks) once each, at most three, then a count."""
    seen = list(dict.fromkeys(str(w.message) for w in caught))
    for text in seen[:3]:
        print(f"warning: {text}", file=sys.stderr)
    if len(seen) > 3:
        print(f"warning: ... and {len(seen) - 3} more warnings like these for other files", file=sys.stderr)


def check_outputs(out, pred_dir) -> None:
    """Refuse, before any scoring, output files that cannot be written (HeartjaxError naming the path)."""
    flag = "--out" if out is not None else "output"
    cli_paths.check_output_folder(Path(pred_dir if out is None else out), flag)
    for path in output_paths(out, pred_dir):
        cli_paths.check_output_file(path, flag)


EXAMPLE = """python -m heartjax.evaluate preds/ truth/ --scheme acdc --out scores/
python -m heartjax.evaluate preds/ truth/ --workers 4 --allow-missing   # writes preds/evaluation.json"""


def _parser():
    parser = cli.parser("python -m heartjax.evaluate", __doc__, EXAMPLE)
    parser.add_argument("pred_dir", help="folder of predicted label maps (NIfTI)")
    parser.add_argument("truth_dir", help="folder of ground-truth label maps (NIfTI)")
    parser.add_argument("--scheme", metavar="SCHEME",
                        help="label scheme: mmwhs, acdc or genericK (default: MM-WHS if the truth codes are MM-WHS codes, else you are asked "
                             "to name it)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output folder for evaluation.json and evaluation.csv (created if missing; default: "
                             "PRED_DIR)")
    parser.add_argument("--workers", type=int, default=1, help="cases loaded and scored at once (threads)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="truth files without a prediction are listed, not failures (score a subset)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry; returns the exit code (0 all scored, 1 a case failed or nothing could be scored, 2 a usage
    error: nothing written)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers {args.workers}: give 1 or more")
    try:
        cli_paths.check_input_folder(Path(args.pred_dir), "prediction")
        check_outputs(args.out, args.pred_dir)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = evaluate_folders(args.pred_dir, args.truth_dir, args.scheme, args.workers, args.allow_missing,
                                      progress=lambda text: print(text, file=sys.stderr))
        _report_warnings(caught)
    except HeartjaxError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. a folder listed but not readable
        print(f"error: {err.filename or args.pred_dir}: {err.strerror or err}; check the folder's permissions",
              file=sys.stderr)
        return 2
    errors = [c["error"] for c in result["cases"] if c["status"] == "error"]
    missing = [c["case"] for c in result["cases"] if c["status"] == "missing_prediction"]
    for text in errors[:_MAX_LISTED]:
        print(f"FAILED {text}", file=sys.stderr)
    if len(errors) > _MAX_LISTED:
        print(f"FAILED ... and {len(errors) - _MAX_LISTED} more cases"
              + (", all listed in the JSON output" if result["summary"] is not None else ""), file=sys.stderr)
    if missing:
        print(f"not scored (no prediction, --allow-missing): {len(missing)} cases {missing[:8]}"
              f"{' ...' if len(missing) > 8 else ''}", file=sys.stderr)
    if result["summary"] is None:
        print(f"error: none of the cases could be scored ({len(errors)} failed); nothing written", file=sys.stderr)
        return 1
    print("\n".join(format_table(result)))
    try:
        json_path, csv_path = write_results(result, args.out)
    except OSError as err:
        print(f"error: could not write the results ({type(err).__name__}: {err}); free space or choose another "
              f"--out", file=sys.stderr)
        return 2
    print(f"wrote {json_path} and {csv_path}")
    if errors:
        n_missing = sum("has no prediction in" in text for text in errors)
        hint = (f" ({n_missing} of them have no prediction: pass --allow-missing to score a subset)"
                if n_missing else "")
        print(f"error: {len(errors)} cases failed{hint}; see above and {json_path}; the others were scored and "
              "written", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
