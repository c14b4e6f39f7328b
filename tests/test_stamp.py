"""Stamping records made before provenance: only after a rerun that reproduces one of them exactly."""

import json

import pytest

from heartjax.common import provenance
from heartjax.ablation import records, stamp
from heartjax.common.errors import HeartjaxError
from experiments.checks import stamp_records


def _rows(dice):
    return [{"case": f"c{i}", "dice": {"LV": d, "RV": float("nan")}, "hd95": {"LV": 1.5, "RV": 2.0},
             "whole_heart_dice": d} for i, d in enumerate(dice)]


def _record(kinds=("2d", "3d"), dice=(0.9, 0.8), overrides=("seed=0",), prov=None, variant="all"):
    rec = {"study": "patients", "variant": variant, "seed": 0, "preset": "smoke", "overrides": list(overrides),
           "variant_overrides": [], "kinds": list(kinds),
           "per_case": {k: _rows(dice) for k in kinds}, "per_case_post": {k: _rows(dice) for k in kinds}}
    if prov:
        rec["provenance"] = prov
    return rec


def _write(path, rec):
    path.write_text(json.dumps(rec))
    return path


@pytest.fixture
def folder(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    _write(old / "all-seed0.json", _record())
    _write(old / "n4-seed0.json", _record(dice=(0.5, 0.6), variant="n4"))
    _write(old / "n4-seed1.json", _record(prov={"fingerprint": "ast1-0000000000000000", "commit": "abc"}))
    return old


def _rerun(tmp_path, **kw):
    prov = {"fingerprint": provenance.fingerprint(), "commit": "f" * 40, "dirty": False, "command": "ablate",
            "versions": {}, "machine": {"cpu": "Test CPU", "cpus": 2}}
    return _write(tmp_path / "rerun.json", _record(prov=prov, **kw))


def test_exact_rerun_stamps_every_record_without_provenance(tmp_path, folder):
    rerun = _rerun(tmp_path, kinds=("2d", "2.5d", "3d"))  # an extra kind leaves the shared ones comparable
    done = stamp.stamp(rerun, folder / "all-seed0.json", [folder], log=lambda *_: None)
    assert sorted(p.name for p in done) == ["all-seed0.json", "n4-seed0.json"]
    rec = json.loads((folder / "n4-seed0.json").read_text())
    assert rec["provenance"]["fingerprint"] == provenance.fingerprint()
    assert rec["provenance"]["stamped"]["values_compared"] == 2 * 2 * 2 * 5  # 2 fields x 2 kinds x 2 cases x 5 values
    assert rec["provenance"]["stamped"]["reproduces"] == "patients/all-seed0.json"
    assert rec["per_case"]["2d"][1]["dice"]["LV"] == 0.6  # scores untouched
    assert json.loads((folder / "n4-seed1.json").read_text())["provenance"]["commit"] == "abc"  # left alone
    o = records.origins([rec])
    assert o["stamped"] == 1 and "1 records stamped after a bit-exact rerun" in records.origins_text(o)


def test_one_different_value_stamps_nothing(tmp_path, folder, capsys):
    rerun = _rerun(tmp_path, dice=(0.9, 0.8000000000000002))
    assert stamp_records.main(["--rerun", str(rerun), "--old", str(folder / "all-seed0.json")]) == 1
    out = capsys.readouterr().out
    assert "nothing stamped" in out and "0.8 vs 0.8000000000000002" in out
    assert "provenance" not in json.loads((folder / "n4-seed0.json").read_text())


def test_other_settings_or_other_code_are_refused(tmp_path, folder):
    with pytest.raises(HeartjaxError, match="different settings"):
        stamp.stamp(_rerun(tmp_path, overrides=("seed=1",)), folder / "all-seed0.json", [folder])
    stale = _write(tmp_path / "stale.json", _record(prov={"fingerprint": "ast1-0123456789abcdef"}))
    with pytest.raises(HeartjaxError, match="not the running code's"):
        stamp.stamp(stale, folder / "all-seed0.json", [folder])
    with pytest.raises(HeartjaxError, match="already has provenance"):
        stamp.stamp(_rerun(tmp_path), folder / "n4-seed1.json", [folder])
