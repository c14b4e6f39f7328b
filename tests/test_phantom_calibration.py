"""The phantom CT against the real chest CT here (skipped without ../shared/data/ct-chest-sample)."""

from pathlib import Path

import numpy as np
import pytest

from experiments.checks import phantom_calibration as cal

CT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ct-chest-sample"
needs_ct = pytest.mark.skipif(not (CT_DIR / "ct.nii.gz").exists(),
                              reason=f"the real chest CT is not at {CT_DIR} (a fresh clone does not have it)")


def test_regions_follow_the_rule_on_a_synthetic_volume():
    hu = np.full((30, 30, 30), -800.0, np.float32)
    heart = np.zeros(hu.shape, bool)
    heart[5:25, 5:25, 5:25] = True
    hu[heart] = 120.0
    hu[10:20, 10:20, 10:20] = 500.0
    hu[2:5, 5:25, 5:25] = -90.0
    m = cal.ct_regions(hu, heart, (1.5, 1.5, 1.5))
    assert np.all(hu[m["blood"]] == 500.0) and np.all(hu[m["myocardium"]] == 120.0)
    assert np.all(hu[m["fat"]] == -90.0) and np.all(hu[m["lung"]] == -800.0) and not m["bone"].any()


@needs_ct
def test_phantom_ct_intensities_match_the_real_scan():
    real = cal.real_ct(CT_DIR)
    assert all(v > 1000 for v in real["voxels"].values())
    ph = cal.phantom_ct(4, 1)
    for region in ("myocardium", "fat"):  # fixed tissue values: within 25 HU of the real scan's
        assert abs(np.median(ph["rule"][region]) - real["medians"][region]) < 25, region
        # the rule finds the tissue: its median on the phantom is the tissue map's
        assert abs(np.median(ph["rule"][region]) - np.median(ph["truth"][region])) < 20, region
    # blood varies with contrast timing between patients: the real scan lies inside the phantom's range
    assert min(ph["rule"]["blood"]) - 60 < real["medians"]["blood"] < max(ph["rule"]["blood"]) + 60
