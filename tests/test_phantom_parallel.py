"""The phantom written by several processes is the same bytes as written by one (coarse grids, a few cases)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from heartjax.data import phantom
from heartjax.common.errors import HeartjaxError

ROOT = Path(__file__).resolve().parents[1]
GRID = (4.0, 4.0, 4.0)


def files(root: Path) -> dict:
    """Every file under root (relative path -> bytes), hidden temporaries included."""
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("modality", ["ct", "cine"])
def test_parallel_writers_write_the_serial_bytes(tmp_path, monkeypatch, modality):
    serial = phantom.write_phantom(tmp_path / "serial", cases=3, modality=modality, seed=5, spacing=GRID, workers=1)
    # a process without JAX (the command line) forks its writers ...
    cli = subprocess.run([sys.executable, "-m", "heartjax.phantom", "--out", str(tmp_path / "forked"), "--cases", "3",
                          "--modality", modality, "--seed", "5", "--spacing", "4", "4", "4", "--workers", "3"],
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                         timeout=300)
    assert cli.returncode == 0, cli.stderr[-3000:]
    # ... one with JAX loaded has a fresh interpreter do it
    monkeypatch.setattr(phantom, "_jax_loaded", lambda: True)
    via = phantom.write_phantom(tmp_path / "via", cases=3, modality=modality, seed=5, spacing=GRID, workers=2)
    ref = files(tmp_path / "serial")
    assert len(ref) == 6
    assert files(tmp_path / "forked") == ref
    assert files(tmp_path / "via") == ref
    assert [p.relative_to(tmp_path / "via") for p in via] == [p.relative_to(tmp_path / "serial") for p in serial]


def test_small_phantoms_are_written_in_this_process_and_workers_checked(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a phantom this small should not start processes")

    monkeypatch.setattr(phantom.concurrent.futures, "ProcessPoolExecutor", refuse)
    monkeypatch.setattr(phantom, "_write_in_subprocess", refuse)
    assert len(phantom.write_phantom(tmp_path, cases=2, spacing=GRID)) == 4
    for bad in (0, -1, 1.5, True):
        with pytest.raises(HeartjaxError, match="workers="):
            phantom.write_phantom(tmp_path / "bad", cases=2, spacing=GRID, workers=bad)


def test_a_failing_subprocess_writer_raises_heartjax_error(tmp_path, monkeypatch):
    monkeypatch.setattr(phantom, "_jax_loaded", lambda: True)
    monkeypatch.setattr(phantom.subprocess, "run",
                        lambda args, **kw: subprocess.CompletedProcess(args, 1, "", "Traceback ...\nOSError: disk full"))
    with pytest.raises(HeartjaxError, match="(?s)exit status 1.*disk full"):
        phantom.write_phantom(tmp_path, cases=2, spacing=GRID, workers=2)
