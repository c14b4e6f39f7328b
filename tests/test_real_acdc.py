"""Round trip on real ACDC files: train a tiny 2D model on a few patients, predict an unseen patient through the
command line, evaluate it through the command line, and check the written file and a Dice above chance.
Skips where the shared ACDC folder is absent."""

import json

import nibabel as nib
import numpy as np

from test_experiment import run_cli


def test_acdc_train_predict_evaluate_round_trip(acdc_dir, tmp_path):
    run = tmp_path / "run"
    run_cli(["experiments.volumetric", "--preset", "smoke", "--data", str(acdc_dir), "--workdir", str(run),
             "data.max_cases=8", "data.val_cases=1", "plan.target_spacing=[3.0,3.0,10.0]",
             "plan.kinds.2d.patch=[64,64]", "plan.kinds.2d.batch=8", "infer.kinds.2d.batch=8", "train.steps=60",
             "train.eval_every=30", "train.log_every=30",
             "model_2d.features=8", "model_2d.max_features=16", 'train.models=["2d"]', "optim.lr=0.01"], cwd=tmp_path)
    res = json.loads((run / "results.json").read_text())
    assert res["label_names"] == ["RV", "MYO", "LV"]
    split = json.loads((run / "splits.json").read_text())
    case = split["test"][0]
    scan = acdc_dir / "images" / f"{case}.nii.gz"
    out = tmp_path / "pred"
    run_cli(["heartjax.predict", str(run), str(scan), "--out", str(out)], cwd=tmp_path)
    written = out / scan.name
    img, pred = nib.load(scan), nib.load(written)
    assert pred.shape == img.shape
    np.testing.assert_allclose(pred.affine, img.affine)
    np.testing.assert_allclose(pred.header.get_zooms(), img.header.get_zooms())  # pixdim kept (the header quirk)
    codes = np.asarray(pred.dataobj)
    assert set(np.unique(codes)) <= {0, 1, 2, 3} and (codes > 0).any()
    truth = tmp_path / "truth"
    truth.mkdir()
    (truth / f"{case}.nii.gz").symlink_to(acdc_dir / "masks" / f"{case}_mask.nii.gz")
    run_cli(["heartjax.evaluate", str(out), str(truth), "--scheme", "acdc", "--out", str(tmp_path / "scores")],
            cwd=tmp_path)
    scores = json.loads((tmp_path / "scores" / "evaluation.json").read_text())["summary"]["per_case"][0]
    gt = np.asarray(nib.load(truth / f"{case}.nii.gz").dataobj) > 0
    chance = 2 * gt.mean() * (codes > 0).mean() / (gt.mean() + (codes > 0).mean())  # Dice of a random map of equal size
    # 60 steps on 6 patients at 3 mm: far from converged, but several times better than chance (about 0.06 here)
    assert scores["whole_heart_dice"] > 4 * chance, (scores, chance)
