"""Shared fixtures, and XLA settings for the suite.

The tests use tiny arrays, so XLA's compile time dominates their run time: the suite compiles with the CPU
backend's optimisation turned down (these flags cut compile time about 3x; numerics are unchanged in float32).
They are set here, before JAX starts, and inherited by the experiment subprocesses; a user's XLA_FLAGS wins.
"""

import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false")

import pytest  # noqa: E402


@pytest.fixture
def acdc_dir() -> Path:
    """The shared real ACDC end-diastole folder (images/ + masks/), skipping where it is absent."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "acdc-ed"
    if not path.is_dir():
        pytest.skip("shared ACDC folder ../shared/data/acdc-ed is absent (only present on the project's machines)")
    return path
