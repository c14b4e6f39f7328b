"""Data parallelism on CPU virtual devices, and two processes on localhost with jax.distributed.

4 devices train on exactly the samples and keys of 1 device (the global batch), so their loss curves agree up to
float32 reassociation (the gradient's all-reduce sums in another order), which training amplifies a little step
by step; 2 processes write one run folder whose checkpoint restores in a 1-process, 1-device predict.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import nibabel as nib
import numpy as np
import pytest

from heartjax.data.labels import MMWHS
from heartjax.common.errors import HeartjaxError
from heartjax.eval.postprocess import apply as postprocess_apply
from heartjax.train.parallel import DataParallel, Feed

ROOT = Path(__file__).resolve().parents[1]



def as_decided(codes, decision):
    """An MM-WHS code map post-processed as a run's validation decided (on label indices, as predict does)."""
    return MMWHS.decode(postprocess_apply(MMWHS.encode(codes), decision))

def _env(devices: int):
    flags = os.environ.get("XLA_FLAGS", "")
    return {**os.environ, "PYTHONPATH": str(ROOT),
            "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}".strip()}


def _run(args, cwd, devices, timeout=600):
    return subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, env=_env(devices), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def _losses(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return np.array([e.value for e in acc.Scalars("train/loss")])


def test_batch_must_split_over_the_devices():
    dp = DataParallel.create()
    assert dp.size == jax.device_count() and dp.share(6) == (0, 6) and dp.primary
    if dp.size == 1:
        dp.check_batch(3, "plan.kinds.3d.batch")
    with pytest.raises(HeartjaxError, match=r"plan.kinds.3d.batch=3 is not divisible by the 2 devices"):
        DataParallel.create([jax.devices()[0]] * 2).check_batch(3, "plan.kinds.3d.batch")


def test_feed_places_this_process_share():
    class S:
        batch_size = 4

        def batch(self, step, part=None):
            lo, hi = part
            return np.arange(lo, hi, dtype=np.float32) + 10 * step, np.zeros(hi - lo, np.uint8)

    feed = Feed(S(), DataParallel.create())
    img, _ = feed.batch(2)
    np.testing.assert_array_equal(np.asarray(feed.place(img)), [20, 21, 22, 23])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("parallel")


def test_four_devices_train_like_one(workspace):
    args = ["experiments.volumetric", "--preset", "smoke", "plan.kinds.3d.batch=4", "plan.kinds.2d.batch=4",
            "train.steps=20"]
    # (both kinds: the 3D model carries the planes convolution and its reshapes through the sharding)
    procs = {n: _run([*args, "--workdir", f"dev{n}"], workspace, n) for n in (1, 4)}
    for p in procs.values():
        _finish(p)
    res = {n: json.loads((workspace / f"dev{n}" / "results.json").read_text()) for n in (1, 4)}
    for kind in ("2d", "3d"):
        m1, m4 = res[1]["models"][kind], res[4]["models"][kind]
        assert m1["mesh"] == {"data": 1} and m4["mesh"] == {"data": 4} and m4["per_device_batch"] == 1
        a, b = _losses(workspace / "dev1" / "tb" / kind), _losses(workspace / "dev4" / "tb" / kind)
        assert len(a) == len(b) == 10
        rel = np.abs(a - b) / np.abs(a)
        assert rel[0] < 1e-6, rel  # step 2: the same samples, keys and parameters, float reassociation only
        assert rel.max() < 1e-4, rel  # the bar (measured over 20 steps: 2D <= 5.4e-7, 3D <= 7.8e-8)
        print(kind, "relative loss differences", rel, "mean Dice", m1["mean_dice"], m4["mean_dice"])
        assert abs(m1["mean_dice"] - m4["mean_dice"]) < 1e-3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_write_one_run_that_restores_anywhere(workspace):
    port = _free_port()
    args = ["experiments.volumetric", "--preset", "smoke", "--workdir", "mp", "plan.kinds.3d.batch=4",
            "--coordinator", f"localhost:{port}", "--num-processes", "2"]
    procs = [_run([*args, "--process-id", str(i)], workspace, 2) for i in (0, 1)]
    outs = [_finish(p, timeout=900) for p in procs]
    assert "Test Dice per structure" in outs[0] and "Test Dice per structure" not in outs[1]  # one reporter
    run = workspace / "mp"
    res = json.loads((run / "results.json").read_text())
    assert res["models"]["3d"]["mesh"] == {"data": 4} and res["models"]["3d"]["processes"] == 2
    for kind in ("2d", "3d"):
        assert len(list((run / "tb" / kind).glob("events.*"))) == 1  # only process 0 writes TensorBoard
    assert sorted(p.name for p in (run / "tb").iterdir()) == ["2d", "3d"]
    # the checkpoint of 4 devices in 2 processes restores in 1 process on 1 device
    split = json.loads((run / "splits.json").read_text())
    case = split["test"][0]
    scan = next((workspace / "data" / "phantom-smoke").iterdir()) / "ct_train" / f"{case}_image.nii.gz"
    p = subprocess.run([sys.executable, "-m", "heartjax.predict", str(run), str(scan), "--out", str(workspace / "p"),
                        "--model", "3d"], cwd=workspace, env=_env(1), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    got = np.asarray(nib.load(workspace / "p" / scan.name).dataobj)
    ref = np.asarray(nib.load(run / "predictions" / "3d" / f"{case}.nii.gz").dataobj)
    decision = json.loads((run / "eval_3d.json").read_text())["postprocessing"]
    assert np.array_equal(as_decided(ref, decision), got)


def test_results_md_prints_the_mesh():
    from heartjax.eval.report import mesh_text

    assert mesh_text({"mesh": {"data": 4}, "processes": 2, "global_batch": 4, "per_device_batch": 1}) == \
        "data=4 on 2 processes (4 / 1)"
    assert mesh_text({"mesh": {"data": 1}, "processes": 1, "global_batch": 2, "per_device_batch": 2}) == "data=1 (2 / 2)"
    assert mesh_text({}) == "–"
