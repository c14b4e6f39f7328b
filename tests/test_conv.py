"""heartjax.conv: every implementation equals lax.conv_general_dilated, forward and both gradients."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from heartjax import conv as conv_lib
from heartjax.conv import xla_cpu
from heartjax.common.errors import HeartjaxError

# (x shape, kernel spatial, C_out, strides, padding): 2D and 3D, kernel 1 and 3, strides 1 and 2 (also per axis),
# SAME / VALID / explicit (asymmetric, zero and one-sided) padding, odd and even sizes.
CASES = [
    ((2, 7, 6, 5, 3), (3, 3, 3), 4, 1, "SAME"),
    ((2, 8, 9, 7, 4), (3, 3, 3), 5, 2, "SAME"),
    ((1, 9, 8, 7, 3), (3, 1, 3), 2, (2, 1, 2), "VALID"),
    ((2, 6, 7, 5, 2), (3, 3, 3), 3, 1, [(2, 0), (1, 1), (0, 2)]),
    ((1, 7, 5, 6, 3), (3, 3, 3), 2, (1, 2, 2), [(1, 1), (0, 1), (1, 0)]),
    ((2, 6, 5, 7, 1), (3, 3, 3), 4, 1, "SAME"),  # kx * C_in <= C_out: the other kernel-gradient branch
    ((1, 5, 6, 4, 3), (3, 3, 3), 20, 1, "SAME"),  # C_out > 16; C_out >= 2 C_in: inputs stacked forward
    ((1, 6, 5, 7, 6), (3, 3, 3), 2, 1, [(2, 0), (0, 1), (1, 1)]),  # C_in >= 2 C_out: inputs stacked for dx
    ((1, 5, 6, 7, 2), (1, 3, 3), 3, 1, "SAME"),
    ((2, 5, 6, 7, 3), (1, 1, 1), 4, 1, "SAME"),
    ((1, 6, 5, 4, 2), (1, 1, 1), 3, 2, "VALID"),
    ((1, 5, 6, 4, 2), (3, 3, 3), 3, 1, [(3, 0), (1, 2), (0, 4)]),  # pads beyond k - 1
    ((1, 4, 3, 5, 2), (1, 1, 1), 2, 1, [(1, 0), (0, 1), (2, 2)]),
    ((2, 9, 10, 3), (3, 3), 4, 1, "SAME"),  # k^2 * C_in <= TAPS_MAX: forward as a sum of shifted copies
    ((2, 7, 6, 5), (3, 3), 3, 1, "SAME"),  # above TAPS_MAX: XLA's own
    ((2, 9, 10, 3), (3, 3), 4, 2, "SAME"),
    ((2, 8, 9, 3), (3, 3), 4, (2, 1), [(1, 0), (2, 1)]),  # strided 2D: input gradient via space-to-depth
    ((1, 10, 8, 2), (3, 3), 3, 2, "VALID"),
    ((3, 7, 8, 2), (3, 3), 3, 1, [(0, 2), (1, 1)]),
    ((2, 6, 5, 3), (1, 1), 2, 1, "VALID"),
    ((2, 4, 5, 3), (1, 1), 2, 2, [(1, 0), (0, 2)]),
    ((2, 4, 5, 3), (1, 1), 2, 1, [(1, 0), (0, 2)]),  # 2D 1x1 stride 1: matrix products in training
]
IMPLS = ["xla", "planes"]


def reference(x, w, strides, padding):
    """lax.conv_general_dilated in float32 with explicit channels-last dimension numbers."""
    nd = x.ndim - 2
    dn = ("NDHWC", "DHWIO", "NDHWC") if nd == 3 else ("NHWC", "HWIO", "NHWC")
    st = (strides,) * nd if isinstance(strides, int) else strides
    return jax.lax.conv_general_dilated(x, w, st, padding, dimension_numbers=dn,
                                        precision=jax.lax.Precision.HIGHEST)


def rel_err(a, b):
    """Max absolute error relative to the reference's max magnitude."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def make(case, seed=0, dtype=jnp.float32):
    """Random x, kernel and output cotangent for a case (numpy RNG: jax.random compiles slowly on the CPU)."""
    shape, k, cout, strides, padding = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, np.float32)
    w = rng.standard_normal((*k, shape[-1], cout), np.float32)
    out = jax.eval_shape(lambda a, b: reference(a, b, strides, padding), x, w)
    ct = rng.standard_normal(out.shape, np.float32)
    return tuple(jnp.asarray(v, dtype) for v in (x, w, ct))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{len(c[0]) - 2}d-k{c[1][0]}-s{c[3]}-{c[4]}")
def test_forward_and_gradients_match_lax(case):
    x, w, ct = make(case)
    strides, padding = case[3], case[4]

    @jax.jit  # one compilation per case for the reference and every impl (eager dispatch is slow)
    def outputs(x, w, ct):
        fns = {"ref": lambda a, b: reference(a, b, strides, padding)}
        for i in IMPLS:
            fns[i] = lambda a, b, i=i: conv_lib.conv(a, b, strides=strides, padding=padding, impl=i)
        res = {}
        for name, f in fns.items():
            y, vjp = jax.vjp(f, x, w)
            res[name] = (y, *vjp(ct), f(x, w))  # f alone: the undifferentiated (inference) formulation
        return res

    res = outputs(x, w, ct)
    y_ref, dx_ref, dw_ref, _ = res["ref"]
    for impl in IMPLS:
        y, dx, dw, y_primal = res[impl]
        assert rel_err(y_primal, y_ref) < 1e-5, impl
        assert y.shape == y_ref.shape and y.dtype == jnp.float32, impl
        assert dx.shape == x.shape and dw.shape == w.shape, impl
        assert rel_err(y, y_ref) < 1e-5, impl
        assert rel_err(dx, dx_ref) < 1e-5, impl
        assert rel_err(dw, dw_ref) < 1e-5, impl


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(3, 5, 7, 2), (2, 4, 5, 6, 3)])
def test_materialised_returns_its_inputs_exactly_on_both_branches(shape, dtype):
    rng = np.random.default_rng(7)
    x, dy = (jnp.asarray(rng.standard_normal(shape, np.float32), dtype) for _ in range(2))
    f = jax.jit(xla_cpu.materialised)
    for key in (1.0, jnp.nan, jnp.inf):  # finite: the plain branch; non-finite: the double flip
        w = jnp.full((3, 3, 2, 2), key, dtype)
        for out, v in zip(f(x, dy, w), (x, dy)):
            assert out.dtype == dtype and out.shape == v.shape
            np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(v, np.float32))


def test_planes_backward_reads_materialised_buffers():
    """The CPU formulation's gradients put x and dy behind a run-time conditional (see materialised); the
    benchmarks' "planes-plain" variant leaves it out."""
    x, w, ct = make(CASES[0])
    texts = {}
    for impl in ("planes", "planes-plain"):
        grad = jax.jit(jax.grad(lambda a, b: jnp.vdot(conv_lib.conv(a, b, impl=impl), ct), argnums=(0, 1)))
        texts[impl] = grad.lower(x, w).as_text(dialect="hlo")
    assert "conditional" in texts["planes"] and "conditional" not in texts["planes-plain"]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU optimisation")
def test_materialisation_survives_production_compilation():
    """The conditional must still be in the optimised program that training runs: compiled without the suite's
    fast-compile XLA_FLAGS (a subprocess) and with heartjax.conv.compiler_options()."""
    code = ("import jax, jax.numpy as jnp, numpy as np; from heartjax import conv; "
            "r = np.random.default_rng(0); x, ct = (jnp.asarray(r.standard_normal(s, np.float32)) "
            "for s in ((1, 5, 6, 4, 8), (1, 5, 6, 4, 6))); "
            "w = jnp.asarray(r.standard_normal((3, 3, 3, 8, 6), np.float32)); "
            "g = jax.grad(lambda a, b: jnp.vdot(conv.conv(a, b, impl='planes'), ct), argnums=(0, 1)); "
            "t = jax.jit(g, compiler_options=conv.compiler_options()).lower(x, w).compile().as_text(); "
            "print('XLA_FLAGS' in __import__('os').environ, 'conditional' in t)")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": root}, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    assert out == ["False", "True"], "XLA:CPU dropped the conditional that materialises x and dy (xla_cpu.materialised)"


def test_planes_plain_matches_lax():
    """The A/B variant without materialised gradient inputs computes the same, on every custom-gradient path."""
    for case in (CASES[0], CASES[1], CASES[5], CASES[16], CASES[14]):
        x, w, ct = make(case)
        f = lambda a, b, i: conv_lib.conv(a, b, strides=case[3], padding=case[4], impl=i)
        grads = jax.jit(lambda a, b: [jax.vjp(lambda u, v: f(u, v, i), a, b)[1](ct) for i in ("xla", "planes-plain")])
        for got, want in zip(*grads(x, w)):
            assert rel_err(got, want) < 1e-5, case


@pytest.mark.parametrize("impl", IMPLS)
def test_jit_equals_eager_and_compiles_once(impl):
    case = CASES[1]
    x, w, ct = make(case, seed=3)
    f = lambda a, b: conv_lib.conv(a, b, strides=2, impl=impl)
    grad = jax.jit(jax.grad(lambda a, b: jnp.vdot(f(a, b), ct), argnums=(0, 1)))
    jf = jax.jit(f)
    np.testing.assert_allclose(jf(x, w), f(x, w), rtol=1e-5, atol=1e-5)
    g1 = grad(x, w)
    g2 = grad(x * 2, w)
    assert grad._cache_size() == 1 and jf._cache_size() == 1
    np.testing.assert_allclose(g2[1], 2 * g1[1], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", [CASES[1], CASES[9], CASES[5], CASES[14]], ids=["3d-s2", "pointwise", "taps", "2d"])
def test_bfloat16_runs_close_to_float32(case, impl):
    x, w, ct = make(case, seed=5)
    strides, padding = case[3], case[4]
    f = jax.jit(lambda a, b: conv_lib.conv(a, b, strides=strides, padding=padding, impl=impl))
    xb, wb, ctb = (v.astype(jnp.bfloat16) for v in (x, w, ct))
    y, vjp = jax.vjp(f, xb, wb)
    assert y.dtype == jnp.bfloat16
    dx, dw = vjp(ctb)
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
    # Reference on the bf16-rounded inputs, so only the bf16 outputs / accumulation differ: a few bf16 ulps.
    y_ref, vjp_ref = jax.vjp(lambda a, b: reference(a, b, strides, padding), xb.astype(jnp.float32),
                             wb.astype(jnp.float32))
    dx_ref, dw_ref = vjp_ref(ctb.astype(jnp.float32))
    assert rel_err(y.astype(jnp.float32), y_ref) < 2e-2
    assert rel_err(dx.astype(jnp.float32), dx_ref) < 2e-2
    assert rel_err(dw.astype(jnp.float32), dw_ref) < 2e-2


def test_auto_resolves_per_backend_and_explicit_impls_stay():
    cpu = jax.default_backend() == "cpu"
    assert conv_lib.resolve_impl("auto", 3) == ("planes" if cpu else "xla")
    assert conv_lib.resolve_impl("auto", 2) == ("planes" if cpu else "xla")
    for impl in ("xla", "planes", "planes-plain"):
        assert conv_lib.resolve_impl(impl, 3) == impl
    assert "planes-plain" not in conv_lib.IMPLS  # an A/B variant, not a model.conv_impl value
    x, w, _ = make(CASES[0])
    np.testing.assert_allclose(conv_lib.conv(x, w), reference(x, w, 1, "SAME"), rtol=1e-5, atol=1e-5)
    assert not [n for n in dir(conv_lib) if "default_impl" in n or "MATERIALISE" in n]  # no mutable switches


def test_impl_is_part_of_the_jit_cache_key():
    x, w, _ = make(CASES[0])
    f = jax.jit(conv_lib.conv, static_argnames=("strides", "padding", "impl"))
    texts = {impl: f.lower(x, w, impl=impl).as_text() for impl in ("xla", "planes")}
    for impl in ("xla", "planes"):
        f(x, w, impl=impl)
    assert f._cache_size() == 2 and texts["xla"] != texts["planes"]


@pytest.mark.parametrize("bad", ["im2col_typo", "XLA", "", None])
def test_bad_impl_name_raises_naming_the_setting(bad):
    x, w, _ = make(CASES[0])
    with pytest.raises(HeartjaxError, match="model.conv_impl"):
        conv_lib.conv(x, w, impl=bad)
    with pytest.raises(HeartjaxError, match="model.conv_impl"):
        conv_lib.resolve_impl(bad, 3)


def test_bad_shapes_and_arguments_raise():
    x, w, _ = make(CASES[0])
    with pytest.raises(HeartjaxError, match="kernel"):
        conv_lib.conv(x, w[..., :2, :])  # C_in mismatch
    with pytest.raises(HeartjaxError, match="dtype"):
        conv_lib.conv(x, w.astype(jnp.bfloat16))
    with pytest.raises(HeartjaxError, match="padding"):
        conv_lib.conv(x, w, padding="FULL")
    with pytest.raises(HeartjaxError, match="padding"):
        conv_lib.conv(x, w, padding=[(1, 1)])
    with pytest.raises(HeartjaxError, match="strides"):
        conv_lib.conv(x, w, strides=(1, 2))
    with pytest.raises(HeartjaxError, match="strides"):
        conv_lib.conv(x, w, strides=0)
    with pytest.raises(HeartjaxError, match="strides"):
        conv_lib.conv(x, w, strides=1.5)
    with pytest.raises(HeartjaxError, match="padding"):
        conv_lib.conv(x, w, padding=[1, 1, 1])
    with pytest.raises(HeartjaxError, match="negative"):
        conv_lib.conv(x, w, padding=[(1, 1), (-1, 1), (1, 1)])
    # numpy integers (as a plan may hold them) are fine
    y = conv_lib.conv(x, w, strides=np.array([1, 2, 1]), padding=[(np.int64(1), 1)] * 3, impl="planes")
    np.testing.assert_allclose(y, reference(x, w, (1, 2, 1), [(1, 1)] * 3), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("factor", [2, (1, 2, 3)])
def test_upsample_repeats_voxels_like_nearest_resize(factor):
    x = jnp.asarray(np.random.default_rng(7).standard_normal((2, 3, 4, 5, 3), np.float32))
    f = (factor,) * 3 if isinstance(factor, int) else factor
    y = jax.jit(conv_lib.upsample, static_argnums=1)(x, factor)
    expect = x
    for axis, k in enumerate(f):
        expect = jnp.repeat(expect, k, axis=axis + 1)
    np.testing.assert_array_equal(y, expect)
    shape = (2, *(s * k for s, k in zip(x.shape[1:4], f)), 3)
    np.testing.assert_allclose(y, jax.image.resize(x, shape, "nearest"), rtol=0, atol=0)
    # The gradient sums each block of copies back onto its voxel.
    weights = jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape)
    g = jax.jit(jax.grad(lambda v: jnp.sum(conv_lib.upsample(v, factor) * weights)))(x)
    ref = jax.jit(jax.grad(lambda v: jnp.sum(expect_fn(v, f) * weights)))(x)
    np.testing.assert_allclose(g, ref, rtol=1e-6)


def expect_fn(v, f):
    """Nearest upsampling by jnp.repeat (the reference)."""
    for axis, k in enumerate(f):
        v = jnp.repeat(v, k, axis=axis + 1)
    return v


def test_upsample_2d_bfloat16_and_errors():
    x = jnp.arange(12, dtype=jnp.bfloat16).reshape(1, 2, 3, 2)
    y = conv_lib.upsample(x, 2)
    assert y.shape == (1, 4, 6, 2) and y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(y[0, 1, 3], x[0, 0, 1])
    with pytest.raises(HeartjaxError, match="method"):
        conv_lib.upsample(x, 2, method="trilinear")
    with pytest.raises(HeartjaxError, match="factor"):
        conv_lib.upsample(x, (2, 2, 2))


def test_compiler_options_keep_results_equal():
    opts = conv_lib.compiler_options()
    ynn = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
    assert opts == (ynn if jax.default_backend() == "cpu" else {})
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, 6, 6, 6, 20), np.float32))  # > 16 channels: YNNPACK-eligible
    w = jnp.asarray(rng.standard_normal((3, 3, 3, 20, 24), np.float32))
    f = lambda a, b: conv_lib.conv(a, b, impl="planes")
    np.testing.assert_allclose(jax.jit(f, compiler_options=opts)(x, w), reference(x, w, 1, "SAME"),
                               rtol=1e-5, atol=1e-4)


def test_bench_conv_quick_smoke(tmp_path):
    from experiments.bench import conv as bench_conv

    out = bench_conv.main(["--quick", "--repeats", "1", "--sections", "layers,upsample", "--impls",
                           "planes,planes-plain", "--json", str(tmp_path / "b.json")])
    saved = json.loads((tmp_path / "b.json").read_text())
    assert saved["matmul_peak"]["gflops"] > 0 and len(saved["results"]) == len(out["results"]) > 0
    convs = [r for r in saved["results"] if not r["row"].startswith("upsample")]
    assert convs and all(r["fwd_bwd"]["s"] > 0 and r["fwd"]["gflops"] > 0 for r in convs)
    assert {r["variant"] for r in convs} >= {"planes", "planes-plain"}
    methods = {r["variant"] for r in saved["results"] if r["row"].startswith("upsample")}
    assert methods == {"broadcast", "repeat", "resize"}


def test_bench_conv_rejects_unknown_impls():
    from experiments.bench import conv as bench_conv

    with pytest.raises(SystemExit) as exc:
        bench_conv.main(["--quick", "--impls", "planes,im2col"])
    assert exc.value.code == 2


@pytest.mark.parametrize("shape", [(3, 5), (4,), (2, 3, 4)])
def test_unfused_keeps_the_values(shape):
    x = jnp.asarray(np.random.default_rng(4).standard_normal(shape, np.float32))
    y = jax.jit(conv_lib.unfused)(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_array_equal(y, x)
    if jax.default_backend() == "cpu" and x.ndim == 2:  # the identity product, as heartjax.model.augment had it
        eye = jnp.matmul(jnp.eye(shape[0], dtype=x.dtype), x, precision=jax.lax.Precision.HIGHEST)
        np.testing.assert_array_equal(y, eye)
        assert "dot(" in jax.jit(conv_lib.unfused).lower(x).as_text(dialect="hlo")
    with pytest.raises(HeartjaxError, match="dimension"):
        conv_lib.unfused(jnp.float32(1.0))


def test_nothing_outside_the_package_reaches_into_it():
    """Code outside heartjax/conv uses only the public API: no private modules or underscore names."""
    root = Path(__file__).resolve().parents[1]
    private = re.compile(r"heartjax\.conv\.(?!conv\b|IMPLS\b|BENCH_IMPLS\b|resolve_impl\b|compiler_options\b|"
                         r"unfused\b|upsample\b)\w+|from heartjax\.conv import .*\b_\w+|from heartjax\.conv\.\w+ import"
                         r"|conv_lib\._\w+|conv_lib\.(xla_cpu\w*|common)\b")
    offenders = []
    for path in [*root.glob("heartjax/**/*.py"), *root.glob("experiments/**/*.py"), *root.glob("tests/*.py")]:
        if path.parent == root / "heartjax" / "conv" or path.name == "test_conv.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if private.search(line):
                offenders.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
