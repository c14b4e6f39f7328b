"""The accelerator benchmark (experiments.bench_gpu) on the CPU: tiny rows with finite MFU and PyTorch ratios,
the exported accelerator program's convolution dtypes, and the model FLOP count against XLA's cost analysis."""

import json
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from experiments import bench_gpu
from experiments.bench_common import flops_of
from heartjax import experiment
from heartjax.common import rng
from heartjax.experiment import specs
from heartjax.model.flops import conv_macs, unet_flops
from heartjax.train.step import create_train_state, make_optimizer, make_train_step


def test_tiny_rows_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    assert bench_gpu.main(["--sizes", "tiny", "--steps", "1", "--rows", "3d:bfloat16,2d:float32", "--augment",
                           "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [(r["kind"], r["dtype"]) for r in report["rows"]] == [("3d", "bfloat16"), ("2d", "float32")]
    for r in report["rows"]:
        spec = bench_gpu.row_setup(r["kind"], r["dtype"], "tiny", r["devices"])[1]
        assert r["model_gflop"] * 1e9 == pytest.approx(unet_flops(spec.unet, spec.batch, spec.patch, train=True))
        assert r["step_ms"] > 0 and r["aug_ms"] > 0 and np.isfinite(r["loss"])
        assert r["mfu"] == pytest.approx(r["model_gflop"] / r["step_ms"] / r["peak_tflops"], rel=1e-9)
        assert 0 < r["mfu"] and r["peak_source"] == "measured matrix product"
        assert r["devices"] == jax.device_count() and r["global_batch"] % r["devices"] == 0
    assert report["machine"]["backend"] == "cpu"


def test_compare_torch_gives_ratios(tmp_path):
    pytest.importorskip("torch", reason="--compare-torch needs PyTorch (pip install -r requirements-bench.txt)")
    out = tmp_path / "gpu.json"
    assert bench_gpu.main(["--sizes", "tiny", "--steps", "1", "--rows", "2d:bfloat16", "--compare-torch",
                           "--json", str(out)]) == 0
    (r,) = json.loads(out.read_text())["rows"]
    assert r["torch_ms"] > 0 and r["ratio_torch"] == pytest.approx(r["jax_ms"] / r["torch_ms"])
    assert np.isfinite(r["torch_mfu"]) and r["torch_mfu"] > 0


def test_rows_are_checked():
    assert bench_gpu.parse_rows("3d:bf16, 2d:float32") == [("3d", "bfloat16"), ("2d", "float32")]
    with pytest.raises(SystemExit, match="4d:bfloat16"):
        bench_gpu.parse_rows("4d:bfloat16")


@pytest.mark.parametrize("kind", ["3d", "2d"])
def test_bfloat16_step_for_cuda_has_only_bfloat16_convolutions(kind, tmp_path):
    """Exported for CUDA (traced here, no GPU needed): every convolution of the bfloat16 train step, forward
    and both gradients, takes and returns bfloat16; the float32 step's are all float32."""
    assert bench_gpu.main(["--sizes", "tiny", "--rows", f"{kind}:bfloat16,{kind}:float32", "--export-stablehlo",
                           str(tmp_path), "--platform", "cuda"]) == 0
    bf16 = bench_gpu.conv_dtypes((tmp_path / f"train{kind}_bfloat16.mlir").read_text())
    f32 = bench_gpu.conv_dtypes((tmp_path / f"train{kind}_float32.mlir").read_text())
    assert bf16 == {"bf16 x bf16 -> bf16": sum(bf16.values())} and sum(bf16.values()) >= 30
    assert f32 == {"f32 x f32 -> f32": sum(bf16.values())}


def test_conv_macs_count_only_taps_inside_the_input():
    # 1-D view: 5 voxels, kernel 3, stride 1, SAME: the two border outputs have 2 valid taps, the others 3
    assert conv_macs((5, 1), (3, 1), (1, 1), 1, 1, 1) == (13, (5, 1))
    # stride 2 over 5: outputs 0, 2, 4 with pad (1, 1): taps 2 + 3 + 2
    assert conv_macs((5, 1), (3, 1), (2, 1), 2, 3, 4) == (7 * 2 * 3 * 4, (3, 1))


SIZES = {"default": ("default", {"kinds": {"3d": ((48, 48, 48), 2), "2d": ((112, 112), 16)}, "depth": 3,
                                 "overrides": []}),
         "full": ("full", bench_gpu.SIZES["full"])}


@pytest.mark.parametrize("sizes", ["default", "full"])
@pytest.mark.parametrize("kind", ["2d", "2.5d", "3d"])
def test_model_flops_match_xla_cost_analysis(kind, sizes):
    """The network's own convolution FLOPs (forward, input and kernel gradients) are within 2 % of XLA's CPU
    cost analysis of the same train step (which also counts the element-wise work: norms, the loss, SGD)."""
    preset, size = SIZES[sizes]
    cfg = experiment.config(preset, overrides=["model.conv_impl=xla", "model.dtype=float32"])
    spec = specs.build_spec(cfg, bench_gpu.plan_for(size, 1), kind, 8)
    tx = make_optimizer(cfg.optim)
    graphdef, state = jax.eval_shape(lambda: create_train_state(spec.unet, tx, 0, 10))
    step = make_train_step(graphdef, tx, None, cfg.loss, cfg.optim)
    images = jax.ShapeDtypeStruct((spec.batch, *spec.patch, spec.context), np.float32)
    labels = jax.ShapeDtypeStruct((spec.batch, *spec.patch), np.uint8)
    xla = flops_of(step.lower(state, (images, labels), jax.eval_shape(lambda: rng.key(0, "t"))))
    ours = unet_flops(spec.unet, spec.batch, spec.patch, train=True)
    assert 0.98 * xla <= ours <= xla


def test_full_sizes_are_the_full_preset_networks():
    plan = bench_gpu.plan_for(bench_gpu.SIZES["full"], 8)
    cfg = experiment.config("full")
    s3, s2 = (specs.build_spec(cfg, plan, k, 8) for k in ("3d", "2d"))
    assert s3.patch == (128, 128, 128) and s3.batch == 8 and s2.patch == (512, 512) and s2.batch == 16  # 12 -> 16
    assert (s3.unet.features, s3.unet.max_features, s2.unet.max_features) == (32, 320, 512)
    assert s3.unet.dtype == "bfloat16" and cfg.optim.name == "sgd"


def test_peak_from_the_data_sheet(monkeypatch):
    monkeypatch.setattr(jax, "devices", lambda: [SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3")] * 8)
    monkeypatch.setattr(jax, "device_count", lambda: 8)
    peak, source = bench_gpu.peak_tflops("bfloat16", None)
    assert peak == 8 * 989.0 and "H100" in source
    assert bench_gpu.peak_tflops("float32", 123.0) == (123.0, "--peak-tflops")
