"""run.sh picks the JAX build for the machine; every requirements file pins exact versions; a GPU JAX cannot use
is reported loudly."""

import os
import re
import subprocess
from pathlib import Path

import pytest

from heartjax.train import parallel

ROOT = Path(__file__).resolve().parents[1]


def _fake_nvidia_smi(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    tool = folder / "nvidia-smi"
    tool.write_text('#!/bin/sh\necho "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"\n')
    tool.chmod(0o755)
    return folder


def _which(env_extra=None, path_prefix=None):
    env = {k: v for k, v in os.environ.items() if k != "HEARTJAX_ACCELERATOR"}
    env.update(env_extra or {})
    if path_prefix:
        env["PATH"] = f"{path_prefix}:{env['PATH']}"
    return subprocess.run(["bash", str(ROOT / "run.sh"), "which"], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("accel, expected", [
    ("cpu", "cpu requirements.txt .venv"), ("cuda", "cuda12 requirements-cuda12.txt .venv-cuda12"),
    ("cuda12", "cuda12 requirements-cuda12.txt .venv-cuda12"), ("cuda13", "cuda13 requirements-cuda13.txt .venv-cuda13"),
    ("tpu", "tpu requirements-tpu.txt .venv-tpu"),
])
def test_run_sh_follows_heartjax_accelerator(accel, expected):
    p = _which({"HEARTJAX_ACCELERATOR": accel})
    assert p.returncode == 0 and p.stdout.strip() == expected


def test_run_sh_finds_a_gpu_with_nvidia_smi(tmp_path):
    assert _which(path_prefix=str(_fake_nvidia_smi(tmp_path / "bin"))).stdout.strip().startswith("cuda12 ")
    assert _which({"HEARTJAX_ACCELERATOR": "cpu"}, str(tmp_path / "bin")).stdout.strip().startswith("cpu ")


def test_run_sh_refuses_an_unknown_accelerator():
    p = _which({"HEARTJAX_ACCELERATOR": "rocm"})
    assert p.returncode == 1 and "HEARTJAX_ACCELERATOR=rocm" in p.stderr and "cuda12" in p.stderr


@pytest.mark.parametrize("name", ["requirements.txt", "requirements-cuda12.txt", "requirements-cuda13.txt",
                                  "requirements-tpu.txt"])
def test_requirements_pin_exact_versions(name):
    lines = [ln.strip() for ln in (ROOT / name).read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    pins = [ln for ln in lines if not ln.startswith("-r ")]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][0-9A-Za-z.+\-]*", ln) for ln in pins), pins
    if name != "requirements.txt":
        assert "-r requirements.txt" in lines  # the accelerator builds add to the CPU pins, never change them
        assert any(ln.startswith(("jax-cuda", "libtpu")) for ln in pins)


def test_gpu_present_but_jax_on_cpu_warns_loudly(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", f"{_fake_nvidia_smi(tmp_path / 'bin')}:{os.environ['PATH']}")
    lines = []
    parallel.report_devices(lines.append)
    assert "device(s)" in lines[0] and "cpu" in lines[0]
    err = capsys.readouterr().err
    assert "WARNING" in err and "JAX runs on the CPU" in err and "HEARTJAX_ACCELERATOR" in err


def test_no_warning_without_a_gpu(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi anywhere
    parallel.report_devices(lambda *a: None)
    assert "WARNING" not in capsys.readouterr().err
