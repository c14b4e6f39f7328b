"""TensorBoard events read back with tensorboard's EventAccumulator; overlays; figures written atomically."""

import io

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from heartjax.eval.figures import CLASS_COLORS, orthogonal_slices, overlay_contours, plot_case_montage, plot_dice_bars
from heartjax.train.tensorboard import SummaryWriter

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


def test_plot_dice_bars_writes_png(tmp_path):
    path = tmp_path / "figs" / "dice.png"
    means = {"2d": {"LV": 0.9, "RV": 0.8, "Myo": float("nan")}, "3d": {"LV": 0.92, "RV": 0.85, "Myo": 0.7}}
    out = plot_dice_bars(means, path, title="Dice per structure", sd={"2d": {"LV": 0.05}, "3d": {"RV": 0.1}})
    assert out == path
    _assert_png(path)
    with pytest.raises(ValueError, match="empty"):
        plot_dice_bars({}, tmp_path / "empty.png")


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
    assert width > height  # four columns, three rows
    with pytest.raises(ValueError, match="2D"):
        plot_case_montage(image, truth, {"2D": truth[:-1]}, tmp_path / "bad.png", ["LV", "RV"])
    assert not (tmp_path / "bad.png").exists()
