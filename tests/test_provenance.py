"""Provenance: the code fingerprint keeps still under a pure refactor and moves with any change of a constant; run
folders and study records carry commit, fingerprint, library versions, machine and command line; `ablate` trains a
run again when its record comes from other code (and says so), reuses it with `--reuse-records any` (and says
so), and `--aggregate-only` lists the commits and machines it mixes."""

import copy
import json
import shutil
import shlex
import sys
from pathlib import Path

import pytest

from experiments import ablate
from heartjax import ablation
from heartjax.common import provenance
from heartjax.ablation import runner
from heartjax.common.paths import study_run

ROOT = Path(__file__).resolve().parents[1]
FIELDS = {"commit", "dirty", "fingerprint", "versions", "machine", "command", "date"}

# ---- the fingerprint -------------------------------------------------------------------------------------------

ORIGINAL = {
    "__init__.py": "",
    "model.py": '''"""The model."""
from pkg import ops
from pkg.ops import clip

SCALE = 2.0


def forward(x):
    """Scale, then shift."""
    return clip(ops.shift(x) * SCALE)  # the result


class Net:
    """A net."""
    width = 4

    def __call__(self, x):
        return forward(x) + self.width

    def size(self):
        return self.width
''',
    "ops.py": '''def shift(x):
    return x + 1


def clip(x, lo=0.0):
    return max(x, lo)
''',
    "cli.py": "def main():\n    print('hello')\n",
}

# The same code refactored: comments, docstrings, formatting, type hints and import order edited, the methods
# reordered, `shift` moved into model.py, `clip` into a renamed module, and the command line's message changed.
REFACTORED = {
    "__init__.py": '"""A package."""\n',
    "model.py": '''from __future__ import annotations
import pkg.helpers as helpers


def shift(x: float) -> float:
    # moved here from ops.py
    return x + 1


SCALE: float = 2.0


class Net:
    width = 4

    def size(self) -> int:
        """How wide."""
        return self.width

    def __call__(self, x):
        return forward(x) + self.width


def forward(x: float) -> float:
    return helpers.clip(
        shift(x) * SCALE
    )
''',
    "helpers.py": '"""Helpers."""\n\ndef clip(x, lo = 0.0):\n    return max(x, lo)\n',
    "cli.py": "def main():\n    print('hello, world')\n",
}


def write_tree(root: Path, files: dict) -> Path:
    pkg = root / "pkg"
    pkg.mkdir(parents=True)
    for name, text in files.items():
        (pkg / name).write_text(text)
    return pkg


def test_fingerprint_is_stable_under_a_pure_refactor(tmp_path):
    a = write_tree(tmp_path / "a", ORIGINAL)
    b = write_tree(tmp_path / "b", REFACTORED)
    fa, fb = provenance.fingerprint(a, ("cli",)), provenance.fingerprint(b, ("cli",))
    assert fa == fb and fa.startswith("ast1-") and len(fa) == 5 + 16
    assert provenance.source_entries(a, ("cli",)) == provenance.source_entries(b, ("cli",))
    assert provenance.fingerprint(a, ()) != provenance.fingerprint(b, ())  # cli.py counts once not excluded


@pytest.mark.parametrize("old, new", [
    ("SCALE = 2.0", "SCALE = 2.5"),             # a constant
    ("lo=0.0", "lo=0.1"),                       # a default
    ("return x + 1", "return x + 1.0"),         # int vs float
    ("width = 4", "width = 5"),                 # a class attribute
    ("* SCALE)", "/ SCALE)"),                   # an operator
])
def test_fingerprint_changes_with_any_change_of_results(tmp_path, old, new):
    files = copy.deepcopy(ORIGINAL)
    name = next(n for n, t in files.items() if old in t)
    files[name] = files[name].replace(old, new)
    a = write_tree(tmp_path / "a", ORIGINAL)
    b = write_tree(tmp_path / "b", files)
    assert provenance.fingerprint(a, ("cli",)) != provenance.fingerprint(b, ("cli",))


def test_the_package_fingerprint_and_its_scope():
    fp = provenance.fingerprint()
    assert fp == provenance.fingerprint(ROOT / "heartjax") and fp.startswith("ast1-")
    modules = {p.relative_to(ROOT / "heartjax").with_suffix("").as_posix().replace("/", ".")
               for p in (ROOT / "heartjax").rglob("*.py")}
    for name in provenance.EXCLUDED:  # every exclusion names a module or package (no typo hides a module)
        assert any(m == name or m.startswith(name + ".") for m in modules), name
    keys = {k for k, _ in provenance.source_entries()}
    assert {"score_case", "make_train_step", "Plan.to_json"} <= keys  # result-computing code is in scope
    assert "markdown" not in keys and "provenance_section" not in keys  # reporting is not


def test_git_state_and_collect(tmp_path):
    commit, dirty = provenance.git_state(ROOT)
    assert len(commit) == 40 and dirty in (True, False)
    assert provenance.git_state(tmp_path) == ("unknown", "unknown")  # not a checkout (a pip-installed copy)
    assert provenance.git_state(ROOT / "heartjax") == ("unknown", "unknown")  # inside one, but not its top
    p = provenance.collect()
    assert set(p) == FIELDS and set(p["versions"]) == {"python", *provenance.LIBRARIES}
    assert p["machine"]["cpu"] and p["machine"]["cpus"] >= 1 and p["fingerprint"] == provenance.fingerprint()
    assert p["command"] == shlex.join(sys.orig_argv)  # this process's command line, whatever runs the tests
    assert provenance.commit_label(None) == "not recorded" and provenance.fingerprint_of(None) == "unknown"


# ---- run folders and ablate ------------------------------------------------------------------------------------

STUDY_SOURCE = ("from heartjax.ablation import Study\nSTUDY = Study('one', 'one 2D run', kinds=('2d',), "
                "x='train.steps', variants={'steps4': ('train.steps=4',)}, seeds=1)\n")
ONE = ablation.Study("one", "one 2D run", kinds=("2d",), x="train.steps", variants={"steps4": ("train.steps=4",)},
                     seeds=1)
OTHER_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    """Variant steps4, seed 0, of a one-seed study at the smoke preset: its run folder and record."""
    root = tmp_path_factory.mktemp("prov")
    extra = [f"data.phantom_dir={root / 'phantom'}", f"data.cache_dir={root / 'cache'}", "data.folds=2",
             "infer.save_predictions=False"]
    ablation.run_study(ONE, "smoke", workdir=root / "w", extra=extra, log=lambda *a: None)
    (root / "one.py").write_text(STUDY_SOURCE)
    return root, extra


def other_code(rec: dict, **changes) -> dict:
    """A copy of a record as if made by other code at another commit (and machine)."""
    rec = copy.deepcopy(rec)
    rec["provenance"].update(fingerprint="ast1-0000000000000000", commit=OTHER_COMMIT, dirty=False, **changes)
    return rec


def records_with(folder: Path, **recs) -> Path:
    folder.mkdir(parents=True)
    for name, rec in recs.items():
        (folder / f"{name}.json").write_text(json.dumps(rec))
    return folder


def test_run_folder_and_record_carry_provenance(one_run):
    root, _ = one_run
    run = study_run(root / "w" / "one", "steps4", 0)
    results = json.loads(run.results.read_text())
    p = results["provenance"]
    assert set(p) == FIELDS and p["fingerprint"] == provenance.fingerprint()
    assert set(p["versions"]) >= {"jax", "jaxlib", "flax", "optax", "numpy"}
    assert p["machine"]["backend"] == "cpu" and p["machine"]["devices"] >= 1 and p["machine"]["cpu"]
    md = run.results_md.read_text()
    assert "## Provenance" in md and p["fingerprint"] in md and p["commit"] in md and "jaxlib" in md
    rec = json.loads((root / "w" / "one" / "records" / "steps4-seed0.json").read_text())
    assert rec["provenance"] == p  # the record keeps its run's provenance
    assert "Provenance: only records made by the running code" in (root / "w" / "one" / "ablation.md").read_text()


def test_record_of_other_code_trains_again_and_says_so(one_run, capsys):
    root, extra = one_run
    rec = json.loads((root / "w" / "one" / "records" / "steps4-seed0.json").read_text())
    records = records_with(root / "stale", **{"steps4-seed0": other_code(rec)})
    assert ablate.cli([str(root / "one.py"), "--preset", "smoke", "--workdir", str(root / "w2"), "--records",
                       str(records), *extra]) == 0
    out = capsys.readouterr().out
    assert "ignoring 1 of 1 run records" in out and "not made by the running code" in out
    assert "commits 0123456 (1)" in out and "the 1 runs asked for among them train again" in out
    assert "trained 1 runs, reused 0 run records" in out
    new = json.loads((records / "steps4-seed0.json").read_text())
    assert new["provenance"]["fingerprint"] == provenance.fingerprint() and new["provenance"]["commit"] != OTHER_COMMIT


def test_reuse_records_any_trains_nothing_and_says_so(one_run, capsys):
    root, extra = one_run
    rec = json.loads((root / "w" / "one" / "records" / "steps4-seed0.json").read_text())
    old = other_code(rec)
    records = records_with(root / "any", **{"steps4-seed0": old})
    assert ablate.cli([str(root / "one.py"), "--preset", "smoke", "--workdir", str(root / "w3"), "--records",
                       str(records), *extra, "--reuse-records", "any"]) == 0
    out = capsys.readouterr().out
    assert "--reuse-records any: reusing all 1 run records" in out and "1 not made by the running code" in out
    assert "trained 0 runs, reused 1 run records (--reuse-records any)" in out
    assert json.loads((records / "steps4-seed0.json").read_text()) == old
    md = (root / "w3" / "one" / "ablation.md").read_text()
    assert "`--reuse-records any`: every record was reused" in md and "commits 0123456 (1)" in md
    assert json.loads((root / "w3" / "one" / "ablation.json").read_text())["provenance"]["reuse_records"] == "any"


def test_run_folder_of_other_code_runs_again(one_run, tmp_path):
    root, _ = one_run
    folder = tmp_path / "seed0"
    shutil.copytree(study_run(root / "w" / "one", "steps4", 0).root, folder)
    spec = ablation.expand(ONE, "smoke")[0]
    calls, lines = [], []
    run_fn = lambda cfg, workdir, **kw: calls.append(kw) or "ran"
    assert runner.run_one(spec, folder, run_fn, lines.append).models  # made by the running code: read back
    results = json.loads((folder / "results.json").read_text())
    results["provenance"]["fingerprint"] = "ast1-0000000000000000"
    (folder / "results.json").write_text(json.dumps(results))
    assert runner.run_one(spec, folder, run_fn, lines.append, reuse="any").models and not calls
    assert runner.run_one(spec, folder, run_fn, lines.append) == "ran"
    assert calls[0]["overwrite"] and not calls[0]["resume"] and "holds results of other code" in lines[0]


def test_aggregate_only_lists_commits_and_machines(one_run, capsys):
    root, _ = one_run
    rec = json.loads((root / "w" / "one" / "records" / "steps4-seed0.json").read_text())
    gpu = dict(rec["provenance"]["machine"], backend="gpu", accelerator="NVIDIA H200", devices=1)
    seed1 = dict(other_code(rec, machine=gpu), seed=1)  # other code, another machine
    seed2 = dict({k: v for k, v in rec.items() if k != "provenance"}, seed=2)  # made before provenance existed
    records = records_with(root / "mixed", **{"steps4-seed0": rec, "steps4-seed1": seed1, "steps4-seed2": seed2})
    assert ablate.cli([str(root / "one.py"), "--aggregate-only", "--num-seeds", "3", "--records", str(records),
                       "--workdir", str(root / "agg")]) == 0
    out = capsys.readouterr().out
    commits = {c.rsplit(" (", 1)[0] for c in out.split("commits ")[1].split(";")[0].split(", ")}
    assert commits == {"0123456", provenance.commit_label(rec["provenance"]), "not recorded"}
    assert "NVIDIA H200 x1 (gpu)" in out and "CPU model not recorded" in out
    assert rec["provenance"]["machine"]["cpu"] in out and "1 records without provenance" in out
    a = json.loads((root / "agg" / "one" / "ablation.json").read_text())
    assert a["runs"] == 3 and a["provenance"]["without_provenance"] == 1 and len(a["provenance"]["machines"]) == 3
    md = (root / "agg" / "one" / "ablation.md").read_text()
    assert "`--aggregate-only`: aggregated from the records as they are" in md and "NVIDIA H200" in md


def test_fresh_clone_continues_committed_records_without_resume(one_run, capsys):
    """Records alone (a fresh clone's docs/studies) need no --resume: the matching one is reused, the other code's
    trained again; run folders of an earlier start still ask for --resume."""
    root, extra = one_run
    rec = json.loads((root / "w" / "one" / "records" / "steps4-seed0.json").read_text())
    records = records_with(root / "clone", **{"steps4-seed0": rec, "steps4-seed1": dict(other_code(rec), seed=1)})
    args = [str(root / "one.py"), "--preset", "smoke", "--num-seeds", "2", "--workdir", str(root / "w4"),
            "--records", str(records), *extra]
    assert ablate.cli(args) == 0
    out = capsys.readouterr().out
    assert "ignoring 1 of 2 run records" in out and "trained 1 runs, reused 1 run records" in out
    assert ablate.cli(args) == 2 and "pass --resume" in capsys.readouterr().err  # run folders now exist
