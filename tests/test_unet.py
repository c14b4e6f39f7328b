"""U-Net: shapes, parameter counts, jit == eager, no recompilation, finite gradients, config errors, overfitting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from heartjax.model import losses
from heartjax.common.errors import HeartjaxError
from heartjax.train.step import LossConfig, OptimConfig, create_train_state, make_optimizer, make_predict_fn, make_train_step
from heartjax.model.unet import Conv, UNet, UNetConfig, count_params, group_norm, init_model


def tiny(dims, **kw):
    base = dict(spatial_dims=dims, in_channels=1, num_classes=4, features=4, depth=2, max_features=16,
                deep_supervision=False)
    base.update(kw)
    return UNetConfig(**base)


@pytest.mark.parametrize("dims,shape", [(2, (2, 16, 24, 1)), (3, (1, 8, 16, 12, 1))])
@pytest.mark.parametrize("upsample", ["resize", "transpose"])
def test_output_shape(dims, shape, upsample):
    model = UNet(tiny(dims, upsample=upsample), rngs=nnx.Rngs(0))
    out = model(jnp.ones(shape))
    assert out.shape == (*shape[:-1], 4)
    assert out.dtype == jnp.float32


def test_deep_supervision_outputs_and_eval_single_output():
    cfg = tiny(3, deep_supervision=True, depth=3, features=2, max_features=8)
    model = UNet(cfg, rngs=nnx.Rngs(0))
    x = jnp.ones((1, 16, 16, 8, 1))
    outs = model(x, train=True)
    assert [o.shape[1:4] for o in outs] == [(16, 16, 8), (8, 8, 4), (4, 4, 2)]
    assert model(x, train=False).shape == (1, 16, 16, 8, 4)


def test_anisotropic_strides_and_kernels():
    cfg = tiny(3, strides=((2, 2, 1), (2, 2, 2)), kernel_sizes=((3, 3, 1), (3, 3, 3), (3, 3, 3)))
    model = UNet(cfg, rngs=nnx.Rngs(0))
    assert model(jnp.ones((1, 16, 16, 6, 1))).shape == (1, 16, 16, 6, 4)
    assert cfg.divisor() == (4, 4, 2)


def test_param_count_independent_of_input_size():
    cfg = tiny(2)
    _, state = init_model(cfg, 0)
    model = nnx.merge(*init_model(cfg, 0))
    n = count_params(state)
    model(jnp.ones((1, 16, 16, 1)))
    model(jnp.ones((3, 32, 48, 1)))
    assert count_params(nnx.state(model)) == n
    assert n > 100


@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
def test_jit_equals_eager(norm):
    cfg = tiny(2, norm=norm, group_size=2)
    graphdef, state = init_model(cfg, 1)
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))

    def fwd(state, x):
        return nnx.merge(graphdef, state)(x, train=False)

    eager = fwd(state, x)
    jitted = jax.jit(fwd)(state, x)
    np.testing.assert_allclose(np.asarray(eager), np.asarray(jitted), rtol=1e-4, atol=1e-5)


def _group_norm_autodiff(x, scale, bias, groups):
    """The two-pass formulation, differentiated automatically: the reference for group_norm's written-out VJP."""
    g = x.reshape(*x.shape[:-1], groups, x.shape[-1] // groups)
    axes = (*range(1, x.ndim - 1), g.ndim - 1)
    mean = g.mean(axes, keepdims=True)
    var = jnp.square(g - mean).mean(axes, keepdims=True)
    return ((g - mean) * jax.lax.rsqrt(var + 1e-5)).reshape(x.shape) * scale + bias


@pytest.mark.parametrize("shape,groups", [((2, 5, 6, 7, 8), 8), ((3, 9, 10, 12), 12), ((3, 9, 10, 12), 4),
                                          ((2, 4, 3, 5, 16), 2), ((1, 6, 6, 3), 1)])
def test_group_norm_forward_and_gradients_match_autodiff(shape, groups):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape, np.float32) * 3 + 1)
    scale, bias = (jnp.asarray(rng.standard_normal(shape[-1], np.float32)) for _ in range(2))
    ct = jnp.asarray(rng.standard_normal(shape, np.float32))

    def loss(fn):
        return lambda x, s, b: jnp.sum(jax.nn.relu(fn(x, s, b, groups)) * ct)

    np.testing.assert_allclose(group_norm(x, scale, bias, groups), _group_norm_autodiff(x, scale, bias, groups),
                               rtol=1e-5, atol=1e-5)
    got = jax.jit(jax.grad(loss(group_norm), argnums=(0, 1, 2)))(x, scale, bias)
    want = jax.grad(loss(_group_norm_autodiff), argnums=(0, 1, 2))(x, scale, bias)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert float(jnp.abs(g - w).max() / jnp.abs(w).max()) < 1e-5


def test_bfloat16_compute_float32_params():
    cfg = tiny(3, dtype="bfloat16")
    graphdef, state = init_model(cfg, 0)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state))
    out = nnx.merge(graphdef, state)(jnp.ones((1, 8, 8, 8, 1)))
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))


def test_dropout_needs_key_and_changes_output():
    cfg = tiny(2, dropout=0.5)
    model = UNet(cfg, rngs=nnx.Rngs(0))
    x = jnp.ones((1, 16, 16, 1))
    with pytest.raises(HeartjaxError, match="dropout"):
        model(x, train=True)
    a = model(x, train=True, key=jax.random.key(1))
    b = model(x, train=True, key=jax.random.key(2))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(model(x), model(x))  # eval mode is deterministic


@pytest.mark.parametrize("kw,setting", [
    (dict(spatial_dims=4), "spatial_dims"), (dict(depth=0), "depth"), (dict(norm="layer"), "norm"),
    (dict(upsample="bilinear"), "upsample"), (dict(dropout=1.0), "dropout"), (dict(dtype="float16"), "dtype"),
    (dict(num_classes=1), "num_classes"), (dict(strides=((2, 2),)), "strides"),
])
def test_config_errors_name_the_setting(kw, setting):
    with pytest.raises(HeartjaxError, match=setting):
        UNet(tiny(2, **kw), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("bad", ["planes-plain", "XLA", "im2col"])
def test_bad_conv_impl_names_the_setting_and_the_choices(bad):
    with pytest.raises(HeartjaxError, match="model.conv_impl") as exc:
        tiny(3, conv_impl=bad).validate()
    assert all(name in str(exc.value) for name in ("auto", "xla", "planes")) and repr(bad) in str(exc.value)
    with pytest.raises(HeartjaxError, match="model.conv_impl"):
        UNet(tiny(3, conv_impl=bad), rngs=nnx.Rngs(0))


def test_conv_impl_is_part_of_the_traced_graph():
    """The implementation travels with the model (its graphdef): one jitted function compiles once per choice,
    to different programs (XLA's 3D convolutions, or the 2D "planes" ones) with equal outputs."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 8, 8, 8, 1), np.float32))
    fwd = jax.jit(lambda graphdef, state, x: nnx.merge(graphdef, state)(x), static_argnums=0)
    texts, outs = {}, {}
    for impl in ("xla", "planes"):
        graphdef, state = init_model(tiny(3, conv_impl=impl), 0)
        convs = [m for _, m in nnx.iter_graph(nnx.merge(graphdef, state)) if isinstance(m, Conv)]
        assert len(convs) == 2 * (2 * 2 + 1) + 2 + 1 and all(m.impl == impl for m in convs)  # blocks, ups, head
        texts[impl] = fwd.lower(graphdef, state, x).as_text()
        outs[impl] = fwd(graphdef, state, x)
    assert fwd._cache_size() == 2
    conv3d = "[b, 0, 1, 2, f]x[0, 1, 2, i, o]->[b, 0, 1, 2, f]"  # a 3D convolution in StableHLO
    assert conv3d in texts["xla"] and conv3d not in texts["planes"]
    err = float(jnp.abs(outs["planes"] - outs["xla"]).max() / jnp.abs(outs["xla"]).max())
    assert err < 1e-5


def test_input_not_divisible_is_a_clear_error():
    model = UNet(tiny(2, depth=2), rngs=nnx.Rngs(0))
    with pytest.raises(HeartjaxError, match="multiple of"):
        model(jnp.ones((1, 18, 16, 1)))


def _blob_batch(dims, n=2, size=16, seed=0):
    """Images with a bright sphere (class 1) and a darker ring around it (class 2): learnable from intensity+shape."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * dims, indexing="ij"), -1).astype(np.float32)
    imgs, lbls = [], []
    for _ in range(n):
        c = rng.uniform(5, size - 5, dims)
        r = np.linalg.norm(grid - c, axis=-1)
        lbl = np.where(r < 3, 1, np.where(r < 5, 2, 0)).astype(np.uint8)
        img = np.where(lbl == 1, 1.0, np.where(lbl == 2, 0.5, 0.0)) + 0.1 * rng.standard_normal(lbl.shape)
        imgs.append(img.astype(np.float32)[..., None])
        lbls.append(lbl)
    return np.stack(imgs), np.stack(lbls)


@pytest.mark.parametrize("dims,steps", [(2, 60), (3, 60)])
def test_tiny_model_overfits_one_batch(dims, steps):
    cfg = UNetConfig(spatial_dims=dims, num_classes=3, features=8, depth=2, max_features=16, deep_supervision=False)
    ocfg = OptimConfig(name="adamw", lr=1e-2, clip_norm=0.0)
    tx = make_optimizer(ocfg)
    graphdef, state = create_train_state(cfg, tx, seed=0, total_steps=steps)
    step = make_train_step(graphdef, tx, None, LossConfig(), ocfg)
    batch = _blob_batch(dims)
    key = jax.random.key(0)
    for _ in range(steps):
        state, m = step(state, batch, key)
    probs = make_predict_fn(graphdef)(state, batch[0])
    pred = np.asarray(jnp.argmax(probs, -1))
    fg_pred, fg_true = pred > 0, batch[1] > 0
    dice = 2 * (fg_pred & fg_true).sum() / (fg_pred.sum() + fg_true.sum())
    assert dice > 0.9, f"foreground Dice {dice:.3f} after {steps} steps"
    assert np.isfinite(float(m["loss"]))


def test_train_step_does_not_recompile_and_grads_finite():
    cfg = tiny(2)
    tx = make_optimizer(OptimConfig())
    graphdef, state = create_train_state(cfg, tx, seed=0, total_steps=10)
    step = make_train_step(graphdef, tx, None, LossConfig(), OptimConfig())
    batch = _blob_batch(2, n=2, size=16)
    batch = (batch[0], batch[1].clip(0, 3))
    state, m = step(state, batch, jax.random.key(0))
    assert np.isfinite(float(m["grad_norm"])) and float(m["grad_norm"]) > 0
    before = step._cache_size()
    state, m = step(state, batch, jax.random.key(0))
    assert step._cache_size() == before == 1
    assert int(state["step"]) == 2


def test_deep_supervision_loss_weights():
    w = losses.deep_supervision_weights(4)
    np.testing.assert_allclose(w, np.array([1, 0.5, 0.25, 0]) / 1.75, rtol=1e-6)
    assert losses.deep_supervision_weights(1).tolist() == [1.0]


def test_learning_rate_schedules():
    from heartjax.train.step import learning_rate
    sgd = OptimConfig(name="sgd", lr=0.01, warmup_steps=0)
    assert float(learning_rate(sgd, 0, 100)) == pytest.approx(0.01)
    assert float(learning_rate(sgd, 50, 100)) == pytest.approx(0.01 * 0.5**0.9, rel=1e-5)
    assert float(learning_rate(sgd, 100, 100)) == pytest.approx(0.0, abs=1e-9)
    adam = OptimConfig(name="adamw", lr=1e-3, warmup_steps=10)
    assert float(learning_rate(adam, 0, 110)) == pytest.approx(1e-4, rel=1e-5)
    assert float(learning_rate(adam, 9, 110)) == pytest.approx(1e-3, rel=1e-5)
    assert float(learning_rate(adam, 60, 110)) == pytest.approx(0.5e-3, rel=1e-5)  # half-way down the cosine
    assert float(learning_rate(adam, 110, 110)) == pytest.approx(0.0, abs=1e-9)
    # a shorter total (a wall-time budget) decays sooner without changing the warm-up
    assert float(learning_rate(adam, 60, 60)) < float(learning_rate(adam, 60, 110))
    assert float(learning_rate(adam, 5, 60)) == float(learning_rate(adam, 5, 110))


def test_train_step_updates_batch_statistics():
    """model.norm=batch: the step runs under jit + grad and returns updated running statistics."""
    cfg = UNetConfig(spatial_dims=2, num_classes=3, features=4, max_features=8, depth=2, norm="batch",
                     deep_supervision=False)
    ocfg = OptimConfig(name="adamw", lr=1e-3)
    tx = make_optimizer(ocfg)
    graphdef, state = create_train_state(cfg, tx, seed=0, total_steps=10)
    before = [np.asarray(x) for x in jax.tree.leaves(state["rest"])]
    step = make_train_step(graphdef, tx, None, LossConfig(), ocfg)
    images = np.random.default_rng(0).normal(size=(2, 16, 16, 1)).astype(np.float32) + 3.0
    labels = np.zeros((2, 16, 16), np.uint8)
    state, metrics = step(state, (images, labels), jax.random.key(0))
    after = [np.asarray(x) for x in jax.tree.leaves(state["rest"])]
    assert before and len(before) == len(after) and np.isfinite(float(metrics["loss"]))
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
