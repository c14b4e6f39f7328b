"""Checkpointer: exact round trips, slots and their retention, resumed timelines, asynchronous saves, the layout
before orbax's CheckpointManager, errors, and atomicity under crashes (including SIGKILL)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from heartjax.train import checkpoint as ckpt
from heartjax.train.leaves import flatten
from heartjax.train.checkpoint import Checkpointer
from heartjax.common.errors import HeartjaxError

REPO = Path(__file__).resolve().parents[1]


def make_state(seed: int = 0):
    key = jax.random.key(seed)
    k1, k2, k3 = jax.random.split(key, 3)
    w = jax.random.normal(k1, (3, 5), jnp.float32).at[0, 0].set(jnp.nan)
    return {
        "params": {
            "conv": {"kernel": w, "bias": (jax.random.normal(k2, (5,)) / 3).astype(jnp.bfloat16)},
            "scale": [jnp.float32(1 / 3), jnp.arange(4, dtype=jnp.uint8)],
        },
        "opt": (jnp.int32(-7), jnp.full((2, 2), 2.0**-20, jnp.float32)),
        "step": jnp.int32(123 + seed),
        "rng": jax.random.split(k3, 2),
        "host": {"np": np.arange(6, dtype=np.int64).reshape(2, 3) * (seed + 1), "scalar": np.float32(0.1),
                 "count": 5 + seed, "flag": True},
    }


def assert_bitwise_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert type(x) is type(y), (type(x), type(y))
        if jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
            assert x.dtype == y.dtype
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def test_round_trip_mixed_dtypes_is_bitwise(tmp_path):
    state = make_state()
    meta = {"step": 123, "best_dice": np.float32(0.75), "sampler": {"epoch": 2, "order": [3, 1, 2]}}
    with Checkpointer(tmp_path / "ck") as c:
        c.save("latest", 123, state, meta)
        assert c.latest_step() == 123
        restored, got_meta = c.restore("latest", make_state(seed=1))  # different values, same structure
    assert_bitwise_equal(restored, state)
    assert got_meta == {"step": 123, "best_dice": 0.75, "sampler": {"epoch": 2, "order": [3, 1, 2]}}
    assert isinstance(restored["rng"], jax.Array) and restored["rng"].dtype == state["rng"].dtype
    # the restored keys draw the same numbers
    drawn = jax.random.uniform(restored["rng"][1], (3,))
    np.testing.assert_array_equal(drawn, jax.random.uniform(state["rng"][1], (3,)))


def test_restore_into_abstract_target(tmp_path):
    state = {"w": jnp.linspace(0, 1, 7, dtype=jnp.bfloat16), "step": jnp.int32(4), "key": jax.random.key(9), "n": 3}
    abstract = jax.eval_shape(lambda: state)  # "n" becomes a weak int32, saved as int64: exact cast is allowed
    c = Checkpointer(tmp_path)
    c.save("latest", 4, state, {})
    restored, _ = c.restore("latest", abstract)
    assert all(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(restored))
    assert restored["w"].dtype == jnp.bfloat16 and restored["n"].dtype == jnp.int32 and int(restored["n"]) == 3
    assert np.asarray(restored["w"]).tobytes() == np.asarray(state["w"]).tobytes()
    assert np.array_equal(jax.random.key_data(restored["key"]), jax.random.key_data(state["key"]))
    c.close()


def test_mismatched_target_raises_clear_errors(tmp_path):
    c = Checkpointer(tmp_path)
    c.save("latest", 1, {"w": jnp.full((2, 3), np.pi, jnp.float32), "b": jnp.zeros(3)}, {})
    b = jax.ShapeDtypeStruct((3,), jnp.float32)
    with pytest.raises(HeartjaxError, match=r"\['w'\].*\[2, 3\].*\[3, 3\].*--resume"):
        c.restore("latest", {"w": jax.ShapeDtypeStruct((3, 3), jnp.float32), "b": b})
    expected = r"2 arrays, the current state 3; missing from the checkpoint: \['c'\]; not in the current state: none"
    with pytest.raises(HeartjaxError, match=expected):
        c.restore("latest", {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3), "c": jnp.zeros(1)})
    with pytest.raises(HeartjaxError, match=r"\['w'\] float32 -> bfloat16"):  # pi does not fit bf16 exactly
        c.restore("latest", {"w": jax.ShapeDtypeStruct((2, 3), jnp.bfloat16), "b": b})


def test_latest_keeps_newest_and_best_keeps_highest_dice(tmp_path):
    c = Checkpointer(tmp_path)
    for step, dice in ((10, 0.3), (20, 0.5), (30, 0.4)):
        c.save("latest", step, {"x": jnp.full(4, step, jnp.int32)}, {"step": step})
        c.save("best", step, {"x": jnp.full(4, -step, jnp.int32)}, {"dice": dice}, metric=dice)
    assert [p.name for p in (tmp_path / "latest").iterdir()] == ["step_00000030"]
    assert [p.name for p in (tmp_path / "best").iterdir()] == ["step_00000020"]  # 0.4 at step 30 is worse
    assert (c.latest_step(), c.latest_step("best")) == (30, 20)
    c.save("best", 40, {"x": jnp.full(4, -40, jnp.int32)}, {"best_ema": 0.6})  # the loop state's EMA ranks it
    target = {"x": jax.ShapeDtypeStruct((4,), jnp.int32)}
    latest, meta = c.restore("latest", target)
    best, best_meta = c.restore("best", target)
    assert latest["x"].tolist() == [30] * 4 and meta == {"step": 30}
    assert best["x"].tolist() == [-40] * 4 and best_meta == {"best_ema": 0.6}
    with pytest.raises(ValueError, match="slot"):
        c.save("final", 1, {"x": jnp.zeros(1)}, {})
    with pytest.raises(ValueError, match="validation Dice"):
        c.save("best", 50, {"x": jnp.zeros(1)}, {})
    c.close()


def test_resumed_run_replaces_the_abandoned_timeline(tmp_path):
    """A killed run saved "best" at 30 (after its last "latest" at 20); the resumed run saves lower steps again."""
    c = Checkpointer(tmp_path)
    c.save("latest", 20, {"x": jnp.ones(2)}, {"step": 20})
    c.save("best", 30, {"x": jnp.ones(2)}, {}, metric=0.9)
    c.save("best", 30, {"x": jnp.zeros(2)}, {"again": True}, metric=0.8)  # re-saving a step replaces it
    assert c.restore("best", {"x": jnp.ones(2)})[1] == {"again": True}
    c.save("best", 25, {"x": jnp.zeros(2)}, {"resumed": True}, metric=0.7)  # worse, but the 30 is stale
    c.save("latest", 10, {"x": jnp.zeros(2)}, {"step": 10})
    assert (c.latest_step(), c.latest_step("best")) == (10, 25)
    assert c.restore("best", {"x": jnp.ones(2)})[1] == {"resumed": True}
    assert Checkpointer(tmp_path).restore("latest", {"x": jnp.ones(2)})[1] == {"step": 10}  # a fresh reader too


def test_interrupted_saves_leave_previous_checkpoint(tmp_path, monkeypatch):
    c = Checkpointer(tmp_path)
    c.save("latest", 1, {"x": jnp.arange(3.0)}, {"step": 1})
    slot = tmp_path / "latest"
    # the leftover of a save killed half-way: orbax's temporary folder with partial output
    partial = slot / "step_00000002.orbax-checkpoint-tmp-1234"
    (partial / "state" / "d").mkdir(parents=True)
    (partial / "state" / "d" / "junk").write_bytes(b"\0" * 100)
    c = Checkpointer(tmp_path)
    assert c.latest_step() == 1
    restored, meta = c.restore("latest", {"x": jnp.zeros(3)})
    assert restored["x"].tolist() == [0.0, 1.0, 2.0] and meta == {"step": 1}

    # a save that fails while orbax writes: the exception propagates, the old entry stays
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, "async_save", broken)
    with pytest.raises(OSError, match="disk full"):
        c.save("latest", 2, {"x": jnp.arange(3.0) + 10}, {"step": 2})
    monkeypatch.undo()
    c = Checkpointer(tmp_path)
    assert c.latest_step() == 1
    assert c.restore("latest", {"x": jnp.zeros(3)})[0]["x"].tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(TypeError, match="JSON"):  # unserialisable metadata fails before anything is written
        c.save("latest", 2, {"x": jnp.arange(3.0)}, {"bad": object()})
    c.save("latest", 3, {"x": jnp.arange(3.0) + 20}, {"step": 3})
    assert [p.name for p in slot.iterdir()] == ["step_00000003"]  # the temporary folders are gone


def test_asynchronous_save_is_waited_for(tmp_path):
    with Checkpointer(tmp_path, asynchronous=True) as c:
        for step in (1, 2):
            c.save("latest", step, {"w": jnp.full((256, 256), step, jnp.float32)}, {"step": step})
        state, meta = c.restore("latest", {"w": jax.ShapeDtypeStruct((256, 256), jnp.float32)})
        assert meta == {"step": 2} and bool(jnp.all(state["w"] == 2))
        c.save("best", 3, {"w": jnp.full((256, 256), 3, jnp.float32)}, {}, metric=0.5)
    assert [p.name for p in (tmp_path / "best").iterdir()] == ["step_00000003"]  # close waited for the commit


def write_old_layout(slot_dir, name, state, meta):
    """A save as heartjax wrote it before CheckpointManager: SLOT/step_S_N/{state, metadata.json}."""
    leaves, records = flatten(state)
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as writer:
        writer.save((slot_dir / name / "state").absolute(), args=ocp.args.StandardSave(leaves))
    info = {"format": "heartjax-checkpoint-1", "step": int(name.split("_")[1]), "metadata": meta, "leaves": records}
    (slot_dir / name / "metadata.json").write_text(json.dumps(info))


def test_old_layout_restores_and_is_replaced_by_the_first_save(tmp_path):
    old = make_state()
    write_old_layout(tmp_path / "latest", "step_00000005_000000", make_state(seed=2), {"step": 5})
    write_old_layout(tmp_path / "latest", "step_00000004_000001", old, {"step": 4})  # the newer save
    write_old_layout(tmp_path / "best", "step_00000003_000000", {"x": jnp.ones(2)}, {"best": 3})
    (tmp_path / "latest" / ".tmp_step_00000006_000002_99").mkdir()  # a crashed save of the old code
    c = Checkpointer(tmp_path)
    assert (c.latest_step(), c.latest_step("best")) == (4, 3)
    restored, meta = c.restore("latest", make_state(seed=1))
    assert_bitwise_equal(restored, old) and meta == {"step": 4}
    c.save("latest", 6, restored, {"step": 6})
    assert [p.name for p in (tmp_path / "latest").iterdir()] == ["step_00000006"]
    assert c.restore("latest", make_state(seed=1))[1] == {"step": 6}
    assert c.restore("best", {"x": jnp.zeros(2)})[1] == {"best": 3}  # untouched until "best" is saved


def test_corrupt_checkpoint_raises_heartjax_error(tmp_path):
    c = Checkpointer(tmp_path)
    c.save("best", 7, {"x": jnp.ones(2)}, {}, metric=0.5)
    entry = tmp_path / "best" / "step_00000007"
    (entry / "info" / "metadata").write_text("{not json")
    with pytest.raises(HeartjaxError, match=f"{entry}.*unreadable"):
        c.restore("best", {"x": jnp.ones(2)})
    (entry / "info" / "metadata").write_text(json.dumps({"format": "heartjax-checkpoint-1", "step": 7, "metadata": {},
                                                         "leaves": [{"path": "['x']", "shape": [2], "dtype": "float32"}]}))
    for f in (entry / "state").rglob("*"):
        if f.is_file():
            f.unlink()
    with pytest.raises(HeartjaxError, match=f"{entry}.*could not be read"):
        c.restore("best", {"x": jnp.ones(2)})


_SAVER = textwrap.dedent(
    """
    import sys
    import jax.numpy as jnp
    import numpy as np
    from heartjax.train.checkpoint import Checkpointer

    c = Checkpointer(sys.argv[1])
    step = 0
    while True:
        step += 1
        state = {"w": np.full((768, 1024), step, np.float32), "b": jnp.full((512, 1024), step, jnp.bfloat16),
                 "step": jnp.int32(step)}
        c.save("latest", step, state, {"step": step})
        print(step, flush=True)
    """
)


def test_sigkill_during_saves_leaves_restorable_latest(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(tmp_path)], stdout=subprocess.PIPE, env=env, text=True)
    try:
        seen, times = 0, []
        deadline = time.monotonic() + 60
        while seen < 3 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen, times = int(line), times + [time.monotonic()]
        assert seen >= 3, "the saver process did not complete three saves"
        time.sleep((times[-1] - times[-2]) / 2)  # aim at the middle of the next save (about 4 MB)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    c = Checkpointer(tmp_path)
    step = c.latest_step()
    assert step is not None and step >= seen
    abstract = {"b": jax.ShapeDtypeStruct((512, 1024), jnp.bfloat16), "step": jax.ShapeDtypeStruct((), jnp.int32),
                "w": np.zeros((768, 1024), np.float32)}
    state, meta = c.restore("latest", abstract)
    assert meta == {"step": step} and int(state["step"]) == step
    assert np.all(state["w"] == step) and bool(jnp.all(state["b"] == step))
    c.save("latest", step + 1, state, {"step": step + 1})  # the run can go on; leftovers are cleared
    assert [p.name for p in (tmp_path / "latest").iterdir()] == [f"step_{step + 1:08d}"]
