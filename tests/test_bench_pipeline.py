"""The input-pipeline benchmark at tiny sizes, and the Prefetcher's workers: the same batches whatever their number."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from experiments import bench_pipeline
from heartjax.data.sampling import PatchSampler, Prefetcher, default_workers


def test_bench_runs_at_tiny_sizes(tmp_path, capsys):
    out = tmp_path / "pipeline.json"
    code = bench_pipeline.main(["--sizes", "tiny", "--workers", "1,2", "--batches", "5", "--json", str(out),
                                f"data.phantom_dir={tmp_path / 'phantom'}", f"data.cache_dir={tmp_path / 'cache'}"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if line.split()[:1] in (["3d"], ["2d"])]
    assert [(r[0], r[1], r[2]) for r in rows] == [("3d", "2x16x16x16x1", "1"), ("3d", "2x16x16x16x1", "2"),
                                                 ("2d", "4x32x32x1", "1"), ("2d", "4x32x32x1", "2")]
    assert all(math.isfinite(float(r[3])) and float(r[3]) > 0 and float(r[4]) > 0 for r in rows)
    report = json.loads(out.read_text())
    assert report["sizes"] == "tiny" and report["data"]["source"] == "phantom" and report["data"]["cases"] == 5
    assert [r["workers"] for r in report["rows"]] == [1, 2, 1, 2]
    assert all(r["batches"] == 5 and r["batches_per_s"] > 0 for r in report["rows"])
    assert report["machine"]["cores_usable"] >= 1 and report["machine"]["backend"]


def _case(shape, seed):
    r = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    label[2:-2, 3:-3, 1:-1] = r.integers(0, 4, size=(shape[0] - 4, shape[1] - 6, shape[2] - 2))
    return SimpleNamespace(image=r.normal(size=shape).astype(np.float32), label=label)


def _drain(sampler, start, stop, workers):
    fetcher = Prefetcher(sampler, start, stop, depth=2, workers=workers)
    try:
        return [(step, np.asarray(img), np.asarray(lbl)) for step, (img, lbl) in fetcher]
    finally:
        fetcher.close()


@pytest.mark.parametrize("kind", ["3d", "2.5d"])
def test_batches_are_the_same_whatever_the_worker_count(kind):
    cases = [_case((30, 26, 12), 0), _case((18, 40, 9), 1)]
    if kind == "3d":
        sampler = PatchSampler(cases, (16, 16, 16), 3, seed=4)
    else:
        sampler = PatchSampler(cases, (24, 32), 5, seed=4, spatial_dims=2, slice_axis=2, context=3)
    one = _drain(sampler, 0, 23, workers=1)
    assert [s for s, *_ in one] == list(range(23))
    for step, img, lbl in one:  # each batch is the sampler's batch of its step
        ref_img, ref_lbl = sampler.batch(step)
        assert np.array_equal(img, ref_img) and np.array_equal(lbl, ref_lbl)
    for workers in (2, 3, 5):
        many = _drain(sampler, 0, 23, workers)
        assert [s for s, *_ in many] == list(range(23))
        assert all(np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2]) for a, b in zip(one, many))
        resumed = _drain(sampler, 9, 23, workers)  # a resumed run draws the uninterrupted run's batches
        assert all(np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2]) for a, b in zip(one[9:], resumed))


def test_worker_errors_reach_the_consumer_in_order():
    class Failing:
        def batch(self, step):
            if step == 4:
                raise ValueError("bad scan at step 4")
            return np.full((1,), step, np.float32), np.zeros((1,), np.uint8)

    fetcher = Prefetcher(Failing(), 0, 8, workers=3)
    seen = []
    with pytest.raises(ValueError, match="bad scan at step 4"):
        for step, _ in fetcher:
            seen.append(step)
    fetcher.close()
    assert seen == [0, 1, 2, 3]
    empty = Prefetcher(Failing(), 0, 0)
    assert empty.workers == 1 and list(empty) == [] and 1 <= default_workers() <= 4
    empty.close()
