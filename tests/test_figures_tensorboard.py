"""TensorBoard events read back with tensorboard's EventAccumulator; overlays; figures written atomically."""

import io

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from heartjax.eval.figures import (CLASS_COLORS, DISAGREE_COLORS, _disagreement, orthogonal_slices, overlay_contours,
                                   plot_case_montage, readable_overlay)
from heartjax.eval.score_figures import dice_range, plot_structure_scores
from heartjax.train.tensorboard import SummaryWriter, closest_preset, log_test, run_hparams

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_events(logdir) -> EventAccumulator:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_events_round_trip(tmp_path):
    image = np.zeros((6, 9, 3), np.uint8)
    image[1, 2] = (200, 10, 30)
    with SummaryWriter(tmp_path / "tb" / "2d") as writer:
        writer.scalars(1, {"train/loss": 0.5, "val/dice/LV": np.float32(0.25)})
        writer.scalars(3, {"train/loss": 0.125})
        writer.image(3, "val/overlay", image)
        writer.text("config", "```json\n{\"lr\": 0.001}\n```")
        writer.hparams({"lr": 1e-3, "arch": "unet", "features": [16, 32], "mirror": True, "none": None},
                       {"dice_mean": 0.8})
        writer.flush()
    acc = load_events(tmp_path / "tb" / "2d")
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 0.5), (3, 0.125)]
    assert [(e.step, e.value) for e in acc.Scalars("val/dice/LV")] == [(1, 0.25)]
    assert [(e.step, pytest.approx(e.value)) for e in acc.Scalars("hparams/dice_mean")] == [(3, 0.8)]

    (event,) = acc.Images("val/overlay")
    assert (event.step, event.width, event.height) == (3, 9, 6)
    decoded = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
    np.testing.assert_array_equal(decoded, image)  # PNG is lossless

    (text,) = acc.Tensors("config")
    assert text.tensor_proto.string_val[0].decode() == "```json\n{\"lr\": 0.001}\n```"

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["lr"].number_value == pytest.approx(1e-3)
    assert start.hparams["arch"].string_value == "unet"
    assert start.hparams["features"].string_value == "[16, 32]"
    assert start.hparams["mirror"].bool_value is True
    assert start.hparams["none"].string_value == "null"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["hparams/dice_mean"]


def test_image_rejects_float_input(tmp_path):
    with SummaryWriter(tmp_path) as writer, pytest.raises(ValueError, match="uint8"):
        writer.image(0, "x", np.zeros((4, 4, 3), np.float32))


def test_overlay_contours_colours():
    image = np.linspace(0, 1, 20 * 24).reshape(20, 24)
    truth = np.zeros((20, 24), np.int64)
    truth[2:8, 2:10] = 1
    pred = np.zeros_like(truth)
    pred[10:18, 12:22] = 2
    out = overlay_contours(image, truth, pred, num_classes=3)
    assert out.shape == (20, 24, 3) and out.dtype == np.uint8
    # truth contour: solid class colour on every boundary pixel, interior and background stay grey
    for r, c in [(2, 2), (2, 5), (7, 9), (4, 2), (5, 9)]:
        np.testing.assert_array_equal(out[r, c], CLASS_COLORS[1])
    for r, c in [(4, 5), (0, 0), (19, 0), (15, 16)]:
        assert out[r, c, 0] == out[r, c, 1] == out[r, c, 2]
    # prediction contour: dashed, class colour lightened half-way to white
    light = CLASS_COLORS[2].astype(int) + (255 - CLASS_COLORS[2].astype(int)) // 2
    # top edge of the predicted box is row 10; the dash is on where (row // 2 + col // 2) is even
    for c in range(12, 22):
        if (10 // 2 + c // 2) % 2 == 0:
            np.testing.assert_array_equal(out[10, c], light)
        else:
            assert out[10, c, 0] == out[10, c, 1] == out[10, c, 2]
    boundary_on = sum(np.array_equal(out[10, c], light) for c in range(12, 22))
    assert 0 < boundary_on < 10  # dashed, not solid


def test_overlay_where_prediction_matches_truth_keeps_both_visible():
    truth = np.zeros((12, 12), np.int64)
    truth[2:10, 2:10] = 3
    out = overlay_contours(np.zeros((12, 12)), truth, truth.copy(), num_classes=4)
    edge = [tuple(out[2, c]) for c in range(2, 10)]
    light = tuple(int(v) for v in CLASS_COLORS[3].astype(int) + (255 - CLASS_COLORS[3].astype(int)) // 2)
    assert tuple(CLASS_COLORS[3]) in edge and light in edge


def test_orthogonal_slices_radiological_orientation_and_aspect():
    vol = np.zeros((6, 8, 10))
    vol[5, 7, 9] = 1  # patient right, anterior, superior corner
    views = orthogonal_slices(vol, (5, 7, 9), spacing=(0.5, 1.0, 2.0))
    (axial, a, a_aspect), (coronal, c, c_aspect), (sagittal, s, s_aspect) = views
    assert (axial, coronal, sagittal) == ("axial", "coronal", "sagittal")
    assert a.shape == (8, 6) and c.shape == (10, 6) and s.shape == (10, 8)
    # right appears on the viewer's left, anterior/superior at the top: the marker sits top-left everywhere
    assert a[0, 0] == c[0, 0] == s[0, 0] == 1
    assert (a_aspect, c_aspect, s_aspect) == (2.0, 4.0, 2.0)


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 5000
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    return Image.open(path).size


def _results(n=6, names=("LV", "RV", "MYO")):
    rng = np.random.default_rng(0)
    models = {kind: {"per_case": [{"case": f"c{i}", "dice": {s: 0.85 + shift + 0.02 * rng.normal() for s in names},
                                   "hd95": {s: 5.0 + rng.normal() for s in names}} for i in range(n)]}
              for kind, shift in (("2d", 0.0), ("3d", 0.01))}
    models["2d"]["per_case"][0]["dice"]["RV"] = None  # undefined for one patient: left out, not drawn as 0
    comparisons = {"3d_minus_2d": {s: {"mean_diff": 0.01, "p_wilcoxon": 0.03} for s in names}}
    return {"models": models, "label_names": list(names), "comparisons": comparisons}


def test_plot_structure_scores_writes_png(tmp_path):
    path = tmp_path / "figs" / "dice_per_structure.png"
    assert plot_structure_scores(_results(), path, title="Test Dice and HD95") == path
    width, height = _assert_png(path)
    assert width > 1.5 * height  # Dice and HD95 side by side
    with pytest.raises(ValueError, match="no models"):
        plot_structure_scores({"models": {}, "label_names": ["LV"]}, tmp_path / "empty.png")


def test_dice_range_shows_the_differences():
    lo, hi = dice_range(np.array([0.91, 0.95, np.nan, 0.97]))
    assert 0.88 < lo < 0.91 and 1.0 <= hi < 1.01  # from just below the lowest patient to 1, not 0-1.1
    assert dice_range(np.array([np.nan]))[0] == 0.0


def test_plot_case_montage_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(16, 20, 12)).astype(np.float32)
    truth = np.zeros(image.shape, np.uint8)
    truth[4:12, 6:14, 3:9] = 1
    truth[6:9, 8:11, 4:7] = 2
    preds = {"2D": np.roll(truth, 1, axis=0), "3D": truth.copy()}
    path = tmp_path / "case_001.png"
    assert plot_case_montage(image, truth, preds, path, ["LV", "RV"], spacing=(1.0, 1.0, 2.5)) == path
    width, height = _assert_png(path)
    assert width > 1.3 * height  # five columns (scan, truth, 2D, 3D, where they differ), three rows
    with pytest.raises(ValueError, match="2D"):
        plot_case_montage(image, truth, {"2D": truth[:-1]}, tmp_path / "bad.png", ["LV", "RV"])
    assert not (tmp_path / "bad.png").exists()


def test_disagreement_colours_who_is_right():
    grey = np.full((1, 4, 3), 100, np.uint8)
    truth, first, second = np.array([[1, 1, 1, 2]]), np.array([[1, 2, 3, 2]]), np.array([[1, 1, 2, 2]])
    out = _disagreement(grey, first, second, truth)
    np.testing.assert_array_equal(out[0], [grey[0, 0], DISAGREE_COLORS[0], DISAGREE_COLORS[2], grey[0, 0]])
    out = _disagreement(grey, second, first, truth)
    np.testing.assert_array_equal(out[0, 1], DISAGREE_COLORS[1])


def test_readable_overlay_is_upsampled_with_a_legend():
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[3, 4] = (200, 10, 30)
    out = readable_overlay(rgb, ["LV", "RV", "MYO"])
    factor = 13  # the smallest whole factor bringing 20 px to at least 256
    assert out.dtype == np.uint8 and out.shape[1] == 30 * factor and out.shape[0] > 20 * factor
    np.testing.assert_array_equal(out[3 * factor:4 * factor, 4 * factor:5 * factor], np.broadcast_to(rgb[3, 4], (factor, factor, 3)))
    legend = out[20 * factor:].reshape(-1, 3)
    for label in (1, 2, 3):  # a swatch of every structure's colour under the image
        assert (legend == CLASS_COLORS[label]).all(-1).sum() > 50


def test_run_hparams_are_the_changed_keys_plus_identity():
    from heartjax import experiment

    cfg = experiment.config("smoke", overrides=["seed=3", "optim.lr=0.01"])
    hp = run_hparams(cfg, "3d")
    assert (hp["kind"], hp["preset"], hp["seed"], hp["data.seed"]) == ("3d", "smoke", 3, 0)
    assert hp["optim.lr"] == 0.01 and hp["train.steps"] == 8 and hp["plan.kinds.3d.patch"] == [16, 16, 16]
    assert "optim.name" not in hp  # unchanged from the defaults
    assert closest_preset(experiment.config("default")) == "default"
    assert run_hparams(experiment.config("default"), "2d") == {"kind": "2d", "preset": "default", "seed": 0,
                                                               "data.seed": 0}


def test_log_test_writes_clean_metric_tags(tmp_path):
    result = {"mean_dice": 0.8, "whole_heart_dice": 0.9, "per_structure": {
        "LV": {"dice_mean": 0.85, "hd95_mean": 4.0}, "RV": {"dice_mean": 0.75, "hd95_mean": None}}}
    with SummaryWriter(tmp_path) as writer:
        writer.scalars(5, {"train/loss": 1.0})
        log_test(writer, result, {"kind": "2d", "preset": "smoke", "plan.patch_2d": [16, 16]}, 0.7)
    acc = load_events(tmp_path)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")["_hparams_/experiment"]).experiment
    tags = {m.name.tag for m in experiment.metric_infos}
    assert tags == {"test/mean_dice", "test/whole_heart_dice", "val/best_dice_ema", "test/mean_hd95", "test/dice/LV",
                    "test/hd95/LV", "test/dice/RV"}
    assert not any("hparam/" in t for t in tags)
    assert [(e.step, pytest.approx(e.value)) for e in acc.Scalars("test/mean_hd95")] == [(5, 4.0)]


def test_log_hook_throughput_counts_training_time_only():
    from heartjax.train.hooks import LogHook
    from heartjax.train.loop import LoopState, Point

    class Writer:
        def scalars(self, step, values):
            self.last = values

    times, writer, loop = iter([0.0, 10.0]), Writer(), LoopState()
    hook = LogHook(writer, 10, clock=lambda: next(times), batch=4)
    loop.train_seconds = 1.0
    hook(Point(10, None, {"loss": 1.0, "lr": 0.1}, loop, False))
    loop.train_seconds = 5.0  # 4 s of training in the 10 s of wall clock between the log points
    hook(Point(20, None, {"loss": 0.5, "lr": 0.1}, loop, False))
    assert writer.last["train/steps_per_second"] == pytest.approx(1.0)
    assert writer.last["train/patches_per_second"] == pytest.approx(10 * 4 / 4.0)
    assert writer.last["train/lr"] == 0.1


def test_validation_loss_matches_the_training_objective():
    """In eval mode with instance norm and no dropout the network computes what it computes while training, so the
    validation loss must equal the training loss with the same deep-supervision weights, and change no state."""
    import functools

    import jax
    from flax import nnx

    from heartjax.model import losses
    from heartjax.model.unet import UNet, UNetConfig
    from heartjax.train.step import LossConfig
    from heartjax.eval.validation import make_loss_fn

    cfg = UNetConfig(spatial_dims=2, in_channels=1, num_classes=3, features=4, max_features=8, depth=3,
                     deep_supervision=True, dropout=0.0, norm="instance")
    graphdef, params, rest = nnx.split(UNet(cfg, rngs=nnx.Rngs(params=jax.random.key(0))), nnx.Param, ...)
    images = np.asarray(jax.random.normal(jax.random.key(1), (2, 16, 16, 1)))
    labels = np.asarray(jax.random.randint(jax.random.key(2), (2, 16, 16), 0, 3))
    loss_cfg = LossConfig()
    state = {"params": params, "rest": rest}
    val = float(make_loss_fn(graphdef, loss_cfg)(state, images, labels))
    outs = nnx.merge(graphdef, params, rest)(images, train=True)
    assert isinstance(outs, list) and len(outs) == 3
    fn = functools.partial(losses.dice_ce_loss, lambda_dice=1.0, lambda_ce=1.0)
    assert val == pytest.approx(float(losses.deep_supervision_loss(outs, labels, fn)), rel=1e-5)
    assert val != pytest.approx(float(fn(outs[0], labels)), rel=1e-6)  # the lower output is weighted in


def test_smoke_run_events_answer_the_questions(tmp_path, monkeypatch):
    """A 2D smoke run: every tag docs/tensorboard.md lists, with more than one step where it is stepwise."""
    from heartjax import experiment

    monkeypatch.chdir(tmp_path)
    cfg = experiment.config("smoke", overrides=["train.models=['2d']"])
    experiment.run(cfg, tmp_path / "run", log=lambda *a, **k: None)
    acc = load_events(tmp_path / "run" / "tb" / "2d")
    steps = {tag: len(acc.Scalars(tag)) for tag in acc.Tags()["scalars"]}
    stepwise = ["train/loss", "train/lr", "train/grad_norm", "train/steps_per_second", "train/patches_per_second",
                "val/loss", "val/dice", "val/dice_ema", "val/dice/LV", "val/hd95/LV", "val/hd95/MYO"]
    assert {t: steps.get(t, 0) for t in stepwise} == {t: max(steps.get(t, 0), 2) for t in stepwise}
    final = ["test/mean_dice", "test/mean_hd95", "test/whole_heart_dice", "test/dice/LV", "test/hd95/LV",
             "val/best_dice_ema"]
    assert all(steps.get(t) == 1 for t in final), {t: steps.get(t) for t in final}
    assert not [t for t in steps if t.startswith("hparams/")]
    watched = acc.Images("val/overlay")
    assert len(watched) >= 2 and all(min(e.width, e.height) >= 256 for e in watched)
    assert min(acc.Images("test/overlay")[0].width, acc.Images("test/overlay")[0].height) >= 256
    start = plugin_data_pb2.HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
    assert {"kind", "preset", "seed", "data.seed", "train.steps", "plan.kinds.2d.patch"} <= set(start.hparams)
    assert start.hparams["preset"].string_value == "smoke"
