"""End to end: the smoke experiment, its outputs, TensorBoard tags, kill -9 + --resume == uninterrupted (which also
shows two runs with the same seed agree), the run folder as a model (predict + evaluate CLIs), and refusals."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from heartjax.data.io import nifti
from heartjax.data.labels import MMWHS
from heartjax.data.plan import Plan
from heartjax.eval import report
from heartjax.eval.postprocess import apply as postprocess_apply
from heartjax.eval.scoring import score_case

ROOT = Path(__file__).resolve().parents[1]



def as_decided(codes, decision):
    """An MM-WHS code map post-processed as a run's validation decided (on label indices, as predict does)."""
    return MMWHS.decode(postprocess_apply(MMWHS.encode(codes), decision))

def cli_env(cwd):
    """The subprocess environment: the repo on the path and a persistent compilation cache shared by the runs of
    this module, so the resumed run and the predict CLI reuse the first run's compiled programs."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "JAX_COMPILATION_CACHE_DIR": str(Path(cwd) / "jax-cache"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def run_cli(args, cwd, timeout=600, check=True):
    env = cli_env(cwd)
    p = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def assert_summaries_match_cases(model: dict) -> None:
    """A model's per-structure Dice means are the means of its per-case Dice, and its mean Dice their mean."""
    means = []
    for name, scores in model["per_structure"].items():
        values = [c["dice"][name] for c in model["per_case"] if c["dice"][name] is not None]
        assert scores["dice_mean"] == (pytest.approx(float(np.mean(values)), abs=1e-12) if values else None), name
        means += [scores["dice_mean"]] if values else []
    assert model["mean_dice"] == pytest.approx(float(np.mean(means)), abs=1e-12)


def strip_wallclock(x):
    """Drop the wall-clock fields and the provenance (command line, date), the only ones allowed to differ between
    runs with the same seed."""
    if isinstance(x, dict):
        return {k: strip_wallclock(v) for k, v in x.items()
                if not k.endswith("_seconds") and k not in ("infer_seconds_per_case", "provenance")}
    if isinstance(x, list):
        return [strip_wallclock(v) for v in x]
    return x


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A scratch folder used as the working directory (phantom and cache land in it)."""
    return tmp_path_factory.mktemp("exp")


@pytest.fixture(scope="module")
def smoke_run(workspace):
    run_cli(["experiments.volumetric", "--preset", "smoke", "--workdir", "run1"], cwd=workspace)
    return workspace / "run1"


def test_smoke_run_writes_everything(smoke_run):
    for name in ["config.json", "splits.json", "plan.json", "label_scheme.json", "results.json", "results.md",
                 "eval_2d.json", "eval_3d.json", "figures/dice_per_structure.png", "models/2d.json", "models/3d.json"]:
        assert (smoke_run / name).exists(), name
    assert list((smoke_run / "figures").glob("montage_*.png"))
    res = json.loads((smoke_run / "results.json").read_text())
    assert res["label_names"] == ["MYO", "LA", "LV", "RA", "RV", "AO", "PA"]
    assert res["dataset"].startswith("phantom")
    split = json.loads((smoke_run / "splits.json").read_text())
    assert not set(split["test"]) & set(split["train"] + split["val"])
    for kind in ("2d", "3d"):
        m = res["models"][kind]
        assert m["steps"] == 8 and m["train_seconds"] > 0
        assert set(m["per_structure"]) == set(res["label_names"])
        for s in m["per_structure"].values():
            assert {"dice_mean", "dice_sd", "iou_mean", "hd95_mean", "assd_mean"} <= set(s)
        assert [c["case"] for c in m["per_case"]] == split["test"]
        assert_summaries_match_cases(m)
        preds = sorted((smoke_run / "predictions" / kind).glob("*.nii.gz"))
        assert [p.name.removesuffix(".nii.gz") for p in preds] == sorted(split["test"])
    md = (smoke_run / "results.md").read_text()
    assert "3D minus 2D" in md and "| MYO |" in md


def test_tensorboard_tags(smoke_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for kind in ("2d", "3d"):
        acc = EventAccumulator(str(smoke_run / "tb" / kind), size_guidance={"images": 0, "tensors": 0})
        acc.Reload()
        scalars = set(acc.Tags()["scalars"])
        assert {"train/loss", "train/lr", "val/dice", "val/dice_ema", "val/dice/LV", "test/dice/LV"} <= scalars
        assert "test/overlay" in acc.Tags()["images"]
        assert {"train/steps_per_second", "train/eta_minutes"} <= scalars
        watched = acc.Images("val/overlay")  # the validation sample at every evaluation, read back from the events
        assert len({e.step for e in watched}) > 1 and all(e.width > 8 and e.height > 8 for e in watched)
        losses = [e.value for e in acc.Scalars("train/loss")]
        assert len(losses) >= 4 and all(np.isfinite(losses))


def test_kill_and_resume_equals_uninterrupted(smoke_run, workspace):
    """SIGKILL the run while the 3D model trains, --resume, and compare with the uninterrupted run."""
    env = cli_env(workspace)
    proc = subprocess.Popen([sys.executable, "-m", "experiments.volumetric", "--preset", "smoke", "--workdir", "run2"],
                            cwd=workspace, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = workspace / "run2" / "checkpoints" / "3d" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and any(p.name.startswith("step_") and "tmp" not in p.name for p in latest.iterdir()):
            break
        time.sleep(0.05)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed, "the run finished before it could be killed"
    assert not (workspace / "run2" / "results.json").exists()
    out = run_cli(["experiments.volumetric", "--workdir", "run2", "--resume"], cwd=workspace)
    assert "resuming from step" in out.stdout
    a = strip_wallclock(json.loads((smoke_run / "results.json").read_text()))
    b = strip_wallclock(json.loads((workspace / "run2" / "results.json").read_text()))
    assert a == b


def test_resume_with_more_steps_trains_on_and_records_it(smoke_run, workspace):
    """--resume train.steps=12 on a finished 8-step run: both models train on to step 12 (the schedule too), the
    change is recorded in config.json; a changed model setting is refused by name and nothing is touched."""
    shutil.copytree(smoke_run, workspace / "run3")
    out = run_cli(["experiments.volumetric", "--out", "run3", "--resume", "train.steps=12"], cwd=workspace)
    assert "train.steps 8 -> 12" in out.stdout and "continuing to train.steps=12" in out.stdout
    assert json.loads((workspace / "run3" / "config.json").read_text())["train"]["steps"] == 12
    results = json.loads((workspace / "run3" / "results.json").read_text())
    assert {k: m["steps"] for k, m in results["models"].items()} == {"2d": 12, "3d": 12}
    refused = run_cli(["experiments.volumetric", "--out", "run3", "--resume", "model.norm=batch"], cwd=workspace,
                      check=False)
    assert refused.returncode == 2 and "model.norm ('instance' -> 'batch')" in refused.stderr


def test_existing_run_folder_is_refused(smoke_run, workspace):
    before = (smoke_run / "results.json").read_bytes()
    p = run_cli(["experiments.volumetric", "--preset", "smoke", "--workdir", "run1"], cwd=workspace, check=False)
    assert p.returncode == 2 and "--overwrite" in p.stderr
    assert (smoke_run / "results.json").read_bytes() == before


def test_bad_override_is_refused(workspace):
    p = run_cli(["experiments.volumetric", "--preset", "smoke", "--workdir", "bad", "train.stepz=3"], cwd=workspace, check=False)
    assert p.returncode == 2 and "train.stepz" in p.stderr
    p = run_cli(["experiments.volumetric", "--preset", "smoke", "--workdir", "bad2", "optim.lr=-1"], cwd=workspace, check=False)
    assert p.returncode == 2 and "optim.lr" in p.stderr


def test_run_folder_is_a_model(smoke_run, workspace):
    """predict an unseen phantom scan through the CLI, then evaluate it through the CLI."""
    split = json.loads((smoke_run / "splits.json").read_text())
    cfg = json.loads((smoke_run / "config.json").read_text())
    folder = next((workspace / cfg["data"]["phantom_dir"]).iterdir()) / "ct_train"
    case = split["test"][0]
    scan = folder / f"{case}_image.nii.gz"
    out = workspace / "preds"
    run_cli(["heartjax.predict", str(smoke_run), str(scan), "--out", str(out), "--model", "3d"], cwd=workspace)
    written = out / scan.name
    img, pred = nib.load(scan), nib.load(written)
    assert pred.shape == img.shape
    np.testing.assert_allclose(pred.affine, img.affine)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 205, 420, 500, 550, 600, 820, 850}
    # the experiment's own prediction of this case is the same model on the same scan
    ref = np.asarray(nib.load(smoke_run / "predictions" / "3d" / f"{case}.nii.gz").dataobj)
    decision = json.loads((smoke_run / "eval_3d.json").read_text())["postprocessing"]
    # the experiment's own (raw) prediction of this case, post-processed as validation decided, is what predict writes
    assert np.array_equal(as_decided(ref, decision), np.asarray(pred.dataobj))
    again = run_cli(["heartjax.predict", str(smoke_run), str(scan), "--out", str(out)], cwd=workspace, check=False)
    assert again.returncode != 0 and "--overwrite" in again.stdout + again.stderr
    truth = workspace / "truth"
    truth.mkdir()
    os.symlink(folder / f"{case}_label.nii.gz", truth / f"{case}_image_label.nii.gz")
    run_cli(["heartjax.evaluate", str(out), str(truth), "--scheme", "mmwhs", "--out", str(workspace / "scores")],
            cwd=workspace)
    got = json.loads((workspace / "scores" / "evaluation.json").read_text())["summary"]["per_case"][0]
    if decision["classes"]:  # scored here with the one metric implementation, on the truth's grid
        vol = nifti.load_volume(scan, folder / f"{case}_label.nii.gz", MMWHS, case=case)
        pred_idx, _ = nifti.load_label_file(written, MMWHS, reference_grid=vol.grid)
        exp = score_case(pred_idx, vol.label, vol.spacing, list(MMWHS.names), case)
    else:  # the experiment's own per-case scores
        exp = json.loads((smoke_run / "results.json").read_text())["models"]["3d"]["per_case"][0]
    for n, v in exp["dice"].items():
        assert (v is None and got["dice"][n] is None) or abs(v - got["dice"][n]) < 1e-9


def test_summary_marks_differences_the_paired_test_does_not_support():

    per = lambda d: {"MYO": {"dice_mean": d[0]}, "LV": {"dice_mean": d[1]}, "RV": {"dice_mean": d[2]}}
    results = {"dataset": "x", "label_names": ["MYO", "LV", "RV"],
               "models": {"2d": {"per_structure": per([0.90, 0.95, 0.80]), "mean_dice": 0.88, "train_seconds": 1.0},
                          "3d": {"per_structure": per([0.90, 0.90, 0.85]), "mean_dice": 0.88, "train_seconds": 2.0}},
               "comparison_3d_minus_2d": {"MYO": {"p_wilcoxon": 1.0}, "LV": {"p_wilcoxon": 0.002},
                                          "RV": {"p_wilcoxon": 0.3}}}
    lines = []
    report.summarize(results, Path("run"), log=lines.append)
    rows = {line.split()[0]: line for line in lines if line.startswith("  ")}
    assert rows["MYO"].endswith("tie")
    assert rows["LV"].endswith("2D by 0.050 (p 0.002)")
    assert rows["RV"].endswith("3D by 0.050 (n.s., p 0.300)")


def test_acdc_results_sit_beside_the_reference_figures():

    per = lambda v: {n: {"dice_mean": v, "dice_sd": 0.01} for n in ("RV", "MYO", "LV")}
    raw = {"per_structure": per(0.80), "mean_dice": 0.80, "steps": 10, "train_seconds": 120.0}
    models = {"2d": {**raw, "postprocessing": {"largest_component": True},
                     "largest_component_test": {"per_structure": per(0.85), "mean_dice": 0.85}},
              "3d": {**raw, "postprocessing": {"largest_component": False},
                     "largest_component_test": {"per_structure": per(0.70), "mean_dice": 0.70}}}
    text = "\n".join(report.reference_section("acdc", models, ["RV", "MYO", "LV"]))
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "0.850 ± 0.010" in rows["this run, 2d"] and "post-processing validation chose" in rows["this run, 2d"]
    assert "0.800 ± 0.010" in rows["this run, 3d"] and "raw network output" in rows["this run, 3d"]
    assert "0.900" in rows["MONAI 2D recipe"] and "0.910" in rows["MONAI 2D recipe"]
    assert "0.915" in rows["nnU-Net (published)"] and "What differs" in text
    assert report.reference_section("mmwhs", models, ["RV", "MYO", "LV"]) == []


def _tb_losses(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return [e.value for e in acc.Scalars("train/loss")]


@pytest.fixture(scope="module")
def api_runs(workspace):
    """The README's Python example at the smoke preset, twice: training seeds 0 and 1, everything else equal.
    Counts how often each scan is read from disk."""
    from heartjax import experiment
    from heartjax.data import cases

    reads, load = {}, cases.images.load_volume

    def counting(image, label=None, scheme=None, case=None, **kw):
        reads[case] = reads.get(case, 0) + 1
        return load(image, label, scheme, case=case, **kw)

    cwd = os.getcwd()
    os.chdir(workspace)
    cases.images.load_volume = counting
    try:
        runs = {}
        for seed in (0, 1):
            reads.clear()
            cfg = experiment.config("smoke", overrides=["model.norm=batch", f"seed={seed}"])
            res = experiment.run(cfg, workdir=f"runs/bn{seed}", kinds=["2d"], log=lambda *a: None)
            runs[seed] = (res, workspace / f"runs/bn{seed}", dict(reads))
    finally:
        cases.images.load_volume = load
        os.chdir(cwd)
    return runs


def test_python_api_example(api_runs):
    res, folder, reads = api_runs[0]
    lv = [c["dice"]["LV"] for c in res.models["2d"].per_case]
    assert res.models["2d"].per_structure["LV"].dice_mean == pytest.approx(float(np.mean(lv)), abs=1e-12)
    assert res.models["2d"].steps == 8 and list(res.models) == ["2d"]
    on_disk = json.loads((folder / "results.json").read_text())
    assert strip_wallclock(on_disk["models"]["2d"]) == strip_wallclock(res.models["2d"].to_json())
    assert json.loads((folder / "config.json").read_text())["model"]["norm"] == "batch"
    for name in ["splits.json", "plan.json", "label_scheme.json", "models/2d.json", "results.md", "eval_2d.json"]:
        assert (folder / name).exists(), name
    assert _tb_losses(folder / "tb" / "2d")
    # every scan of the run read from disk exactly once (plan, preprocessing, validation, test, figures)
    assert sorted(reads) == sorted(sum(json.loads((folder / "splits.json").read_text()).values(), []))
    assert set(reads.values()) == {1}, reads


def test_training_seed_changes_training_only(api_runs):
    """Two runs that differ only in `seed`: same patients, split, plan and preprocessed data; other training."""
    (_, a, _), (_, b, _) = api_runs[0], api_runs[1]
    for name in ("splits.json", "plan.json", "label_scheme.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    from heartjax import experiment
    from heartjax.data import cases

    cfg = experiment.load_config(a)
    assert experiment.load_config(b).data == cfg.data
    ds = cases.resolve_dataset(dataclasses.replace(cfg.data, phantom_dir=str(a.parents[1] / cfg.data.phantom_dir)))
    split = json.loads((a / "splits.json").read_text())
    plan = Plan.from_json(json.loads((a / "plan.json").read_text()))
    pre = cases.preprocess_ids(cases.CaseStore(ds), split["test"], plan, None)  # no cache: computed afresh
    cached = cases.preprocess_ids(cases.CaseStore(ds), split["test"], plan, a.parents[1] / cfg.data.cache_dir)
    for cid in split["test"]:
        assert np.array_equal(pre[cid].image, cached[cid].image) and np.array_equal(pre[cid].label, cached[cid].label)
    assert len(list((a.parents[1] / cfg.data.cache_dir).iterdir())) == 1  # one preprocessing for both seeds
    la, lb = _tb_losses(a / "tb" / "2d"), _tb_losses(b / "tb" / "2d")
    assert len(la) == len(lb) and la != lb


def test_25d_kind_trains_scores_and_predicts(workspace):
    run_cli(["experiments.volumetric", "--preset", "smoke", "--models", "2.5d", "--workdir", "run25"], cwd=workspace)
    run = workspace / "run25"
    res = json.loads((run / "results.json").read_text())
    assert list(res["models"]) == ["2.5d"]
    assert_summaries_match_cases(res["models"]["2.5d"])
    spec = json.loads((run / "models" / "2.5d.json").read_text())
    assert spec["context"] == 3 and spec["unet"]["in_channels"] == 3 and spec["unet"]["spatial_dims"] == 2
    assert spec["augment"]["joint_channels"] is True
    split = json.loads((run / "splits.json").read_text())
    case = split["test"][0]
    cfg = json.loads((run / "config.json").read_text())
    scan = next((workspace / cfg["data"]["phantom_dir"]).iterdir()) / "ct_train" / f"{case}_image.nii.gz"
    run_cli(["heartjax.predict", str(run), str(scan), "--out", str(workspace / "preds25"), "--model", "2.5d"],
            cwd=workspace)
    got = np.asarray(nib.load(workspace / "preds25" / scan.name).dataobj)
    ref = np.asarray(nib.load(run / "predictions" / "2.5d" / f"{case}.nii.gz").dataobj)
    decision = json.loads((run / "eval_2.5d.json").read_text())["postprocessing"]
    assert np.array_equal(as_decided(ref, decision), got)


def test_segment_arrays_like_the_cli(smoke_run, workspace):
    """The Python API on numpy arrays: on-disk (LPS) order with its affine, or RAS order with a spacing, gives what
    the CLI writes for the file; bad arguments are refused by name."""

    from heartjax.common.errors import HeartjaxError
    from heartjax.serve.segment import Segmenter, segment

    split = json.loads((smoke_run / "splits.json").read_text())
    cfg = json.loads((smoke_run / "config.json").read_text())
    case = split["test"][0]
    scan = next((workspace / cfg["data"]["phantom_dir"]).iterdir()) / "ct_train" / f"{case}_image.nii.gz"
    run_cli(["heartjax.predict", str(smoke_run), str(scan), "--out", str(workspace / "preds-api"), "--model", "3d"],
            cwd=workspace)
    cli = np.asarray(nib.load(workspace / "preds-api" / scan.name).dataobj)
    img = nib.load(scan)
    seg = Segmenter(smoke_run, model="3d")
    on_disk = seg(np.asarray(img.dataobj), affine=img.affine, codes=True)
    assert on_disk.shape == img.shape and np.array_equal(on_disk, cli)
    vol = nifti.load_volume(scan)
    ras = seg(vol.image, spacing=vol.spacing)  # indices, RAS order
    assert np.array_equal(MMWHS.decode(ras), nifti.to_ras(cli, vol.grid))
    with pytest.raises(HeartjaxError, match="exactly one of affine"):
        seg(vol.image)
    with pytest.raises(HeartjaxError, match="spacing"):
        seg(vol.image, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(HeartjaxError, match="3D"):
        seg(vol.image[:, :, 0], spacing=(1.0, 1.0, 1.0))
    with pytest.warns(UserWarning, match="constant intensity"):
        blank = segment(smoke_run, np.zeros((40, 40, 30), np.float32), spacing=(4.0, 4.0, 4.0), model="3d")
    assert blank.shape == (40, 40, 30)


def test_postprocess_check_rescores_the_saved_predictions(smoke_run, workspace, monkeypatch):
    from experiments.checks.postprocess_check import check

    monkeypatch.chdir(workspace)  # the run's relative data paths are the folder it ran in
    before = sorted(p.name for p in workspace.iterdir())
    res = check(smoke_run, "3d")
    assert sorted(p.name for p in workspace.iterdir()) == before  # reads the run's data, writes nothing
    ref = json.loads((smoke_run / "eval_3d.json").read_text())
    assert res["cases"] == len(ref["per_case"])
    for n in res["structures"]:  # raw: the run's own scores, from the saved predictions
        want = ref["per_structure"][n]["dice_mean"]
        assert (want is None and np.isnan(res["rules"]["raw"]["dice"][n])) or abs(res["rules"]["raw"]["dice"][n] - want) < 1e-9
    assert res["rules"]["decided"]["lost"] == []  # the per-structure rule never loses a structure
    worst = res["rules"]["decided"]["worst"]  # with the pieces of its structure in that patient's prediction
    pieces = [] if worst is None else worst["components"]
    assert all(0 <= c["true"] <= c["voxels"] and c["gap_mm"] >= 0 for c in pieces)
    assert not pieces or any(c["kept"] for c in pieces)
    assert worst is None or worst["raw"] > 0 or sum(c["true"] for c in pieces) == 0  # Dice 0: no true voxel found
