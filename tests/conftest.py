"""Shared fixtures."""

from pathlib import Path

import pytest


@pytest.fixture
def acdc_dir() -> Path:
    """The shared real ACDC end-diastole folder (images/ + masks/), skipping where it is absent."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "acdc-ed"
    if not path.is_dir():
        pytest.skip("shared ACDC folder ../shared/data/acdc-ed is absent (only present on the project's machines)")
    return path
