"""The accelerator benchmark (experiments.bench_gpu) runs end to end on the CPU at tiny sizes."""

import json
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from experiments import bench_gpu
from heartjax import experiment
from heartjax.experiment import specs


def test_tiny_rows_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    assert bench_gpu.main(["--sizes", "tiny", "--steps", "1", "--dtypes", "bfloat16", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {(r["row"], r["dtype"]): r for r in report["rows"]}
    assert set(rows) == {(f"train{k}_tiny", d) for k in ("3d", "2d") for d in ("bfloat16",)}
    for r in rows.values():
        assert r["step_ms"] > 0 and r["steps_per_s"] > 0 and r["voxels_per_s"] > 0 and r["model_gflop"] > 0
        # MFU is the model's FLOP rate over the peak: every figure of the row agrees with the others
        assert r["tflops"] == pytest.approx(r["model_gflop"] * r["steps_per_s"] / 1e3, rel=1e-9)
        assert r["mfu"] == pytest.approx(r["tflops"] / r["peak_tflops"], rel=1e-9) and r["mfu"] > 0
        assert r["step_ms"] == pytest.approx(1e3 / r["steps_per_s"], rel=1e-9) and r["step_ms_min"] <= r["step_ms"]
        assert np.isfinite(r["loss"]) and r["peak_source"] == "measured matrix product"
        assert r["devices"] == jax.device_count() and r["global_batch"] % r["devices"] == 0
    assert report["machine"]["backend"] == "cpu"


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
