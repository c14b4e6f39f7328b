"""experiments.benchmark: the --quick JSON report, rows that follow the config, FLOP parsing, torch handling."""

import dataclasses
import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import bench_common, benchmark
from heartjax import config as config_lib
from heartjax import experiment
from heartjax.common.errors import HeartjaxError


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_quick_json_report(tmp_path):
    path = tmp_path / "bench.json"
    # The quick run is compile-bound. These XLA flags cut its compile time about 3x (the timings are not
    # looked at here); a subprocess keeps them away from the other tests.
    fast_compile = " --xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + fast_compile).strip()}
    proc = subprocess.run([sys.executable, "-m", "experiments.benchmark", "--quick", "--json", str(path)],
                          cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(path.read_text())
    assert set(report) >= {"machine", "peak_matmul_gflops", "rows"}
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["backend"] == "cpu" and machine["jax"] and machine["device_kind"]
    assert _positive(report["peak_matmul_gflops"])
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == list(benchmark.ROW_NAMES)
    for r in rows.values():
        for key in ("jax_s", "gflop", "jax_gflops", "jax_voxels_per_s", "jax_compile_s"):
            assert _positive(r[key]), (r["name"], key, r[key])
        assert r["torch_s"] is None and r["ratio"] is None and r["torch_gflops"] is None and r["torch_max_s"] is None
        assert r["torchc_s"] is None and r["ratio_compiled"] is None and r["torchc_compile_s"] is None
        assert r["jax_min_s"] <= r["jax_s"] <= r["jax_max_s"]
        assert r["jax_gflops"] == pytest.approx(r["gflop"] / r["jax_s"])
        assert r["jax_peak_share"] == pytest.approx(r["jax_gflops"] / report["peak_matmul_gflops"])
        assert r["voxels"] == r["batch"] * math.prod(r["patch"])
    for name in ("train3d_ref", "train2d_ref", "train3d_default", "train2d_default"):
        r = rows[name]
        assert _positive(r["jax_aug_s"]) and _positive(r["augment_s"]) and 0 < r["augment_share"]
    for name in ("train3d_ref", "forward3d_ref", "train3d_default"):  # strided 3D convs execute zero taps
        assert rows[name]["gflop"] < rows[name]["gflop_executed"], name
    # A train step (forward + backward) costs more FLOPs than the forward of the same net and batch.
    assert rows["train2d_ref"]["gflop"] > rows["forward2d_ref"]["gflop"]
    out = proc.stdout
    assert all(name in out for name in benchmark.ROW_NAMES) and "GFLOP/s" in out


def test_rows_follow_the_default_config():
    cfg = experiment.config("default")
    rows = {r.name: r for r in benchmark.make_rows(["default"])}
    assert set(rows) == {"train3d_default", "train2d_default"}
    for kind, dims in (("3d", 3), ("2d", 2)):
        row, model = rows[f"train{kind}_default"], config_lib.unet_settings(cfg, kind)
        assert row.model.spatial_dims == dims and row.model.depth == cfg.plan.depth
        assert (row.model.features, row.model.max_features) == (model["features"], model["max_features"])
        assert row.model.deep_supervision == model["deep_supervision"] and row.model.norm == model["norm"]
        assert row.model.conv_impl == model["conv_impl"]
        assert row.batch == cfg.plan.entry(kind).batch and row.optim == cfg.optim and row.loss == cfg.loss
        expected = cfg.plan.entry(kind).patch or benchmark.FALLBACK_PATCH[dims]
        assert row.patch == tuple(expected)
        if cfg.plan.entry(kind).patch is None:
            assert f"plan.kinds.{kind}.patch is None" in row.note
        row.model.check_input(row.patch)


def test_reference_rows():
    rows = {r.name: r for r in benchmark.make_rows(["ref"])}
    assert list(rows) == ["train3d_ref", "forward3d_ref", "train2d_ref", "forward2d_ref"]
    for r in rows.values():
        assert r.model.stage_features() == [16, 32, 64, 128]
        assert r.model.norm == "instance" and r.model.activation == "relu" and not r.model.deep_supervision
        assert r.model.num_classes == 8 and r.model.in_channels == 1
    shapes = {n: (r.batch, r.patch) for n, r in rows.items()}
    assert shapes == {"train3d_ref": (2, (64, 64, 64)), "forward3d_ref": (1, (96, 96, 96)),
                      "train2d_ref": (32, (128, 128)), "forward2d_ref": (32, (128, 128))}


def test_host_initialised_state_matches_create_train_state():
    import jax

    from heartjax.train.step import create_train_state

    row = benchmark.make_rows(["default"], quick=True)[0]
    tx = benchmark.make_optimizer(row.optim)
    _, state = benchmark.init_train_state(row.model, tx, 0, total_steps=77)
    _, expected = jax.eval_shape(lambda: create_train_state(row.model, tx, 0, 77))
    assert jax.tree.structure(state) == jax.tree.structure(expected)
    def shapes(tree):
        return [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]

    assert shapes(state) == shapes(expected)
    assert int(state["step"]) == 0 and int(state["total"]) == 77
    leaves = jax.tree_util.tree_leaves_with_path(state["params"])
    kernels = [x for path, x in leaves if "kernel" in jax.tree_util.keystr(path)]
    assert kernels and all(float(np.std(k)) > 0 for k in kernels)


class _Compiled:
    def __init__(self, cost):
        self.cost = cost

    def cost_analysis(self):
        return self.cost


def test_flops_of_handles_dict_and_list():
    assert bench_common.flops_of(_Compiled({"flops": 12.0, "bytes accessed": 3.0})) == 12.0
    assert bench_common.flops_of(_Compiled([{"flops": 7.0}])) == 7.0
    assert math.isnan(bench_common.flops_of(_Compiled(None)))


def test_model_flops_count_the_network_not_its_formulation():
    import jax
    import jax.numpy as jnp

    from heartjax import conv as conv_lib
    from heartjax.model.flops import conv_macs

    # stride 2, SAME: 4 outputs per axis reading taps 2o + t (t < 3) of 8 voxels; 11 of the 12 (output, tap)
    # pairs per axis are inside the image (XLA counts no padding taps): 2 * C_out * C_in * 11^3
    analytic = 2 * 6 * 4 * 11**3
    assert 2 * conv_macs((8, 8, 8), (3, 3, 3), (2, 2, 2), 4, 6, 1)[0] == analytic
    x, w = jnp.ones((1, 8, 8, 8, 4)), jnp.ones((3, 3, 3, 4, 6))
    xla = bench_common.flops_of(jax.jit(lambda a, b: conv_lib.conv(a, b, strides=2, impl="xla")).lower(x, w))
    assert xla == analytic
    executed = bench_common.flops_of(jax.jit(lambda a, b: conv_lib.conv(a, b, strides=2, impl="planes")).lower(x, w))
    # The X-phase split also convolves the zero planes padded in X (15 plane-taps per output row of 4 against
    # the 11 inside the image): the executed count differs, the model count does not.
    assert executed == pytest.approx(analytic * 15 / 11, rel=0.03)


def test_compare_torch_without_torch_exits_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    assert benchmark.main(["--quick", "--compare-torch"]) == 2
    err = capsys.readouterr().err
    assert "pip install -r requirements-bench.txt" in err


def test_unknown_conv_impl_exits_2(capsys):
    assert benchmark.main(["--quick", "--conv-impl", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert "nonsense" in err and "model.conv_impl" in err


def test_conv_impl_travels_with_every_row_model():
    cfg = experiment.config("default")
    rows = benchmark.make_rows(["ref", "default"], quick=True)
    assert {r.model.conv_impl for r in rows} == {cfg.model.conv_impl}
    rows = benchmark.variant_rows(benchmark.make_rows(["ref", "default"], quick=True, conv_impl="xla"),
                                  ("float32", "bfloat16"))
    assert rows and all(r.model.conv_impl == "xla" for r in rows)
    with pytest.raises(HeartjaxError, match="model.conv_impl"):
        benchmark.make_rows(["ref"], conv_impl="nonsense")[0].model.validate()


def test_rows_rate_the_network_flops():
    from heartjax.model.flops import unet_flops

    rows = {r.name: r for r in benchmark.make_rows(["ref"], quick=True)}
    out = benchmark.run_row(rows["forward3d_ref"], 1, None)
    r = rows["forward3d_ref"]
    assert out["gflop"] * 1e9 == pytest.approx(unet_flops(r.model, r.batch, r.patch, train=False))
    assert out["gflop_executed"] > 0 and out["jax_gflops"] == pytest.approx(out["gflop"] / out["jax_s"])


@pytest.mark.parametrize("argv", [["--rows", "ref,huge"], ["--sizes", "huge"], ["--sizes", "ref"]])
def test_bad_rows_or_sizes_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        benchmark.parse_args(argv)
    assert exc.value.code == 2
    if argv == ["--sizes", "ref"]:  # the older meaning of --sizes, pointed to its new name
        assert "--rows ref" in capsys.readouterr().err


def test_quick_is_sizes_tiny():
    assert benchmark.parse_args(["--quick"]).sizes == benchmark.parse_args(["--sizes", "tiny"]).sizes == "tiny"
    assert benchmark.parse_args([]).sizes == "full" and benchmark.parse_args([]).rows == ["ref", "default"]


def test_torch_twin_matches_parameters_and_loss():
    """Runs only where torch is installed (requirements-bench.txt); heartjax itself never needs it."""
    torch = pytest.importorskip("torch")
    import jax
    import jax.numpy as jnp

    from experiments import torch_unet
    from heartjax.model import losses
    from heartjax.train.step import LossConfig

    rng = np.random.default_rng(0)
    for row in benchmark.make_rows(["ref", "default"], quick=True):
        _, state = benchmark.init_train_state(row.model, benchmark.make_optimizer(row.optim), 0)
        jax_sizes = sorted(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
        shape = (row.batch, *row.patch)
        images, labels = rng.standard_normal((*shape, 1)).astype(np.float32), rng.integers(0, 8, shape)
        run, sizes = torch_unet.make_runner(row.model, row.mode, row.optim, row.loss, images, labels)
        assert sizes == jax_sizes, row.name
        out = run()
        expected_shape = (row.batch, 8, *row.patch) if row.mode == "forward" else ()
        assert tuple(out.shape) == expected_shape and bool(torch.isfinite(out).all()), row.name
    logits = rng.standard_normal((2, 16, 16, 8, 5)).astype(np.float32)
    labels = rng.integers(0, 5, (2, 16, 16, 8))
    outputs = [logits, logits[:, ::2, ::2, ::2], logits[:, ::4, ::4, ::4]]  # deep supervision, full resolution first
    for loss_cfg in (LossConfig(), LossConfig(batch_dice=True, lambda_ce=0.5)):
        loss_fn = functools.partial(losses.dice_ce_loss, lambda_dice=loss_cfg.lambda_dice,
                                    lambda_ce=loss_cfg.lambda_ce, batch_dice=loss_cfg.batch_dice)
        for out in (outputs, outputs[0]):
            expected = losses.deep_supervision_loss(jax.tree.map(jnp.asarray, out), jnp.asarray(labels), loss_fn)
            t_out = jax.tree.map(lambda o: torch.from_numpy(np.moveaxis(o, -1, 1).copy()), out)
            got = torch_unet.deep_supervision_loss(t_out, torch.from_numpy(labels), loss_cfg)
            assert float(got) == pytest.approx(float(expected), rel=1e-5)


def test_torch_compile_side_computes_what_eager_torch_does():
    """Runs only where torch is installed: the torch.compile runner shares the eager twin's parameters, so its
    first train step's loss and a forward's probabilities match eager PyTorch's from the same seed."""
    torch = pytest.importorskip("torch")
    from experiments import torch_unet

    rng = np.random.default_rng(1)
    rows = {r.name: r for r in benchmark.make_rows(["ref"], quick=True)}
    for name in ("train2d_ref", "forward2d_ref"):
        row = rows[name]
        shape = (row.batch, *row.patch)
        images, labels = rng.standard_normal((*shape, 1)).astype(np.float32), rng.integers(0, 8, shape)
        eager, sizes = torch_unet.make_runner(row.model, row.mode, row.optim, row.loss, images, labels)
        compiled, sizes_c = torch_unet.make_runner(row.model, row.mode, row.optim, row.loss, images, labels,
                                                   compile_mode="default")
        assert sizes_c == sizes
        a, b = eager(), compiled()
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (name, a, b)
    r = benchmark.run_row(rows["train2d_ref"], 1, "cpu", torch_compile="default")
    assert r["torchc_s"] > 0 and r["torchc_compile_s"] > 0 and r["torch_compile_mode"] == "default"
    assert r["ratio_compiled"] == pytest.approx(r["jax_s"] / r["torchc_s"])


def test_variant_rows_name_and_configure_each_dtype_and_upsampling():
    base = benchmark.make_rows(["ref"], quick=True)
    rows = benchmark.variant_rows(base, ("float32", "bfloat16"), ("resize", "transpose"))
    assert len(rows) == 4 * len(base)
    by_name = {r.name: r for r in rows}
    assert by_name["train3d_ref"].model == base[0].model  # the default variant keeps name and config
    r = by_name["train3d_ref.bf16.transpose"]
    assert (r.model.dtype, r.model.upsample) == ("bfloat16", "transpose")
    assert (r.batch, r.patch) == (base[0].batch, base[0].patch)
    assert by_name["forward2d_ref.transpose"].model.dtype == "float32"
    assert benchmark.variant_rows(base) == base


@pytest.mark.parametrize("argv", [["--dtypes", "float16"], ["--dtypes", ""], ["--upsamples", "bilinear"]])
def test_bad_variant_options_exit_2(argv):
    with pytest.raises(SystemExit) as e:
        benchmark.parse_args(argv)
    assert e.value.code == 2


def test_quick_bfloat16_transpose_rows_run(tmp_path):
    path = tmp_path / "v.json"
    fast_compile = " --xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + fast_compile).strip()}
    proc = subprocess.run([sys.executable, "-m", "experiments.benchmark", "--quick", "--rows", "ref", "--dtypes",
                           "bfloat16", "--upsamples", "transpose", "--json", str(path)],
                          cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(path.read_text())
    names = [r["name"] for r in report["rows"]]
    assert names == [f"{n}.bf16.transpose" for n in ("train3d_ref", "forward3d_ref", "train2d_ref", "forward2d_ref")]
    assert _positive(report["peak_matmul_gflops_bf16"])
    for r in report["rows"]:
        assert (r["dtype"], r["upsample"]) == ("bfloat16", "transpose") and _positive(r["jax_s"])
        assert r["jax_peak_share"] == pytest.approx(r["jax_gflops"] / report["peak_matmul_gflops_bf16"])
