"""The results tables in README.md and docs/results.md are the committed study records' own numbers."""

import json
import shutil

import pytest

from experiments import results_tables as rt

RECORDS = rt.RECORDS


def test_every_marked_table_equals_its_rebuild_from_the_records():
    names = set()
    for doc in rt.DOCS:
        text = (rt.ROOT / doc).read_text()
        names |= {m["name"] for m in rt._BLOCK.finditer(text)}
        assert rt.rebuild(text) == text, f"{doc}: a table differs from its records; run " \
                                         "`python -m experiments.results_tables --write` and read the diff"
    assert {"phantom", "acdc", "budget", "patients", "cine", "phantom-calibration", "postprocess"} <= names


def test_a_changed_record_changes_its_table(tmp_path):
    if not (RECORDS / "patients").is_dir():
        pytest.skip("no committed patients records")
    root = tmp_path / "studies"
    shutil.copytree(RECORDS / "patients", root / "patients")
    before = rt.TABLES["phantom"](root)
    path = sorted((root / "patients").glob("all-seed*.json"))[0]
    rec = json.loads(path.read_text())
    rec["per_case"]["2d"][0]["dice"]["LV"] -= 0.5  # one patient's LV much worse at one seed
    path.write_text(json.dumps(rec))
    after = rt.TABLES["phantom"](root)
    assert before != after
    row = lambda text: next(ln for ln in text.splitlines() if ln.startswith("| LV |"))
    assert row(before) != row(after) and "| MYO |" in after


def test_unknown_table_and_missing_records_are_named(tmp_path):
    with pytest.raises(SystemExit, match="unknown table 'nope'"):
        rt.rebuild("<!-- table nope -->\nx\n<!-- /table -->\n")
    assert "No records of `cine`" in rt.TABLES["cine"](tmp_path)


def test_postprocess_table_finds_the_worst_drop_and_a_lost_structure(tmp_path):
    if not (RECORDS / "patients").is_dir():
        pytest.skip("no committed patients records")
    root = tmp_path / "studies"
    shutil.copytree(RECORDS / "patients", root / "patients")
    committed = [json.loads(f.read_text()) for f in (root / "patients").glob("*.json")]
    n = sum(bool(r.get("provenance") and r.get("per_case_post")) and "3d" in r["kinds"] for r in committed)
    path = root / "patients" / "all-seed1.json"
    rec = json.loads(path.read_text())
    row = rec["per_case_post"]["3d"][2]
    raw_pa = next(r for r in rec["per_case"]["3d"] if r["case"] == row["case"])["dice"]["PA"]
    assert raw_pa > 0.5
    row["dice"]["PA"] = 0.0  # the post-processing dropped this patient's pulmonary trunk
    path.write_text(json.dumps(rec))
    table = rt.postprocess_table(("patients",))(root)
    line = next(ln for ln in table.splitlines() if ln.startswith("| patients | 3D |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == str(n) and cells[4] == "1" and cells[5] == "1"
    assert cells[3].startswith(f"{-raw_pa:+.4f} (all-seed1, {row['case']}, PA:")
    old = {k: v for k, v in rec.items() if k != "provenance"}  # a record without provenance is left out
    path.write_text(json.dumps(old))
    assert f"| patients | 3D | {n - 1} |" in rt.postprocess_table(("patients",))(root)


def _cells(table: str, first: str) -> list[str]:
    line = next(ln for ln in table.splitlines() if ln.startswith(f"| {first} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_post_variants_calibration_per_variant_and_studies_tables(tmp_path):
    if not (RECORDS / "norm").is_dir():
        pytest.skip("no committed norm records")
    root = tmp_path / "studies"
    shutil.copytree(RECORDS / "norm", root / "norm")
    # calibration per variant: the same figures as the one-variant table's, row by row
    per_variant = rt.calibration_variants_table("norm")(root)
    one = rt.calibration_table("norm", "group")(root)
    ece, brier, auroc = (_cells(one, label) for label in ("ECE (top label)", "Brier (all classes)",
                                                          "entropy-error AUROC"))
    assert _cells(per_variant, "group")[1:] == [*ece[1:], *brier[1:], *auroc[1:]]
    # the post-processed table reads per_case_post, the raw one per_case
    raw, post = rt.variants_table("norm")(root), rt.variants_table("norm", post=True)(root)
    path = root / "norm" / "group-seed0.json"
    rec = json.loads(path.read_text())
    for row in rec["per_case_post"]["2d"]:
        row["dice"] = {k: (None if v is None else v - 0.2) for k, v in row["dice"].items()}
    path.write_text(json.dumps(rec))
    assert rt.variants_table("norm")(root) == raw and "after post-processing" in post
    assert _cells(rt.variants_table("norm", post=True)(root), "group")[2] != _cells(post, "group")[2]
    # one row per shipped study: its record count, seeds per variant and how many carry provenance
    studies = rt.studies_table(root)
    assert _cells(studies, "`norm`")[1:5] == ["3", "9", "3", "9"]
    assert _cells(studies, "`budget`")[2:] == ["0", "–", "–", "–", "–"]
