"""Ablation studies: every shipped study expands into valid configs; the statistics pair by patient; a tiny study
runs end to end at the smoke preset with 2 seeds, is killed mid-run, resumed without redoing a finished run, and
ends with the same ablation.json as an uninterrupted run; outputs, HParams events and refusals."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from experiments import ablate, studies
from heartjax import ablation, experiment
from heartjax.ablation import records as ablation_records
from heartjax.ablation import report as ablation_report
from heartjax import config as config_lib
from heartjax.ablation.stats import aggregate
from heartjax.common.errors import HeartjaxError

# Config fields a shipped study needs that heartjax.config may not have yet (the study is then expected to fail).
PENDING: dict[str, str] = {}  # study -> a config setting it still needs (none now)


def strip_timing(x):
    """Drop wall-clock fields (names ending in "seconds") and provenance (how the numbers were made: command line,
    date, which records were reused), the only ones allowed to differ between two runs."""
    if isinstance(x, dict):
        return {k: strip_timing(v) for k, v in x.items() if not k.endswith("seconds") and k != "provenance"}
    if isinstance(x, list):
        return [strip_timing(v) for v in x]
    return x


@pytest.mark.parametrize("name", studies.NAMES)
def test_shipped_study_expands_into_valid_configs(name):
    study = studies.load(name)
    assert study.name == name and study.description and study.kinds
    for preset in study.presets:
        try:
            runs = ablation.expand(study, preset, seeds=2)
        except HeartjaxError as e:
            if name in PENDING and PENDING[name] in str(e):
                pytest.xfail(f"study {name} needs the config setting {PENDING[name]}")
            raise
        assert [(r.variant, r.seed) for r in runs] == [(v, s) for s in (0, 1) for v in study.variants]
        for r in runs:
            assert r.cfg.seed == r.seed and set(r.kinds) <= {"2d", "2.5d", "3d"}
            assert r.cfg.data.seed == 0  # the training seed never moves the patients
        if study.x:
            for r in runs:
                assert config_lib.get(r.cfg, study.x) is not None or study.x in ablation_records.X_FALLBACK
        for r in runs:  # a variant's own settings hold in its config: nothing later overrides them
            for item in r.variant_overrides:
                key, value = item.split("=", 1)
                assert config_lib.get(r.cfg, key) == config_lib.tupled(config_lib.parse_value(value)), (r.variant, item)
        seed0 = [config_lib.to_json(r.cfg) for r in runs if r.seed == 0]
        assert len(set(seed0)) == len(seed0), "two variants of the study run the same experiment"
        assert all(r.cfg != s.cfg for r in runs for s in runs if r.seed != s.seed and r.variant == s.variant)


def test_list_and_refusals(tmp_path, capsys):
    assert ablate.cli(["--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == list(studies.NAMES)
    assert ablate.cli(["no_such_study"]) == 2
    assert "unknown study 'no_such_study'" in capsys.readouterr().err
    assert ablate.cli(["norm", "--preset", "smoke", "--out", str(tmp_path), "model.nrom=batch"]) == 2
    err = capsys.readouterr().err
    assert "study norm" in err and "model.nrom" in err
    with pytest.raises(HeartjaxError, match="names no variant"):
        ablation.Study("s", "d", variants={"a": ()}, reference="b")
    with pytest.raises(HeartjaxError, match="list of overrides"):
        ablation.Study("s", "d", variants={"a": "model.norm=batch"})
    assert ablate.cli(["norm", "--aggregate-only", "--records", str(tmp_path / "none")]) == 2
    assert "no run records" in capsys.readouterr().err


def test_a_study_restricted_to_some_variants_keeps_its_name_settings_and_references():
    study = ablation.Study("s", "d", baseline=("train.steps=4",), kinds=("2d",), x="train.steps", reference="b",
                           compare={"c": "a", "d": "c"},
                           variants={"a": ("model.norm=batch",), "b": (), "c": ("model.norm=group",), "d": ("x=1",)})
    part = study.only(["d", "b", "c"])
    assert list(part.variants) == ["b", "c", "d"]  # the study's order
    assert (part.name, part.baseline, part.kinds, part.x) == (study.name, study.baseline, study.kinds, study.x)
    assert part.variants["c"] == study.variants["c"] and part.reference_name == "b"
    assert part.compare == {"d": "c"}  # c's own reference, a, is not chosen: c is compared with b
    assert part.reference_of("c") == "b" and part.reference_of("d") == "c"
    assert study.only(["c", "d"]).reference_name == "c"  # the reference not chosen: the first chosen one
    with pytest.raises(HeartjaxError, match=r"no variant 'e'.*its variants: a,b,c,d"):
        study.only(["b", "e"])
    with pytest.raises(HeartjaxError, match="no variant"):
        study.only([])
    budget = studies.load("budget")  # the shipped study's runs, restricted: the same configs as the full study's
    full = {(r.variant, r.seed): r.overrides for r in ablation.expand(budget, "acdc", seeds=1)}
    some = ablation.expand(budget.only(["steps300"]), "acdc", seeds=1)
    assert [(r.variant, r.seed) for r in some] == [("steps300", 0)] and some[0].overrides == full[("steps300", 0)]


def test_variants_flag_refuses_an_unknown_variant(capsys):
    assert ablate.cli(["norm", "--variants", "batch,nrom", "--aggregate-only"]) == 2
    err = capsys.readouterr().err
    assert "'nrom'" in err and "study norm" in err


# ---- statistics and schema on hand-made records ---------------------------------------------------------------

LABELS = ["LV", "RV"]


def fake_record(variant, seed, overrides, dice, kinds=("2d",)):
    """A run record with per-case Dice {case: (LV, RV)} for every kind (the 3D numbers shifted by +0.01)."""
    per_case = {k: [{"case": c, "dice": {"LV": lv + 0.01 * i, "RV": rv}, "hd95": {"LV": 2.0, "RV": 3.0 + seed},
                     "whole_heart_dice": 0.9} for c, (lv, rv) in dice.items()] for i, k in enumerate(kinds)}
    return {"study": "toy", "variant": variant, "seed": seed, "preset": "smoke", "data": None,
            "overrides": ["train.models=['2d']", *overrides, f"seed={seed}"], "variant_overrides": list(overrides),
            "kinds": list(kinds), "x": None, "dataset": "phantom-ct", "labels": LABELS, "split": {"train": 3},
            "test_cases": list(dice), "seconds": 10.0 + seed, "steps": {k: 8 for k in kinds},
            "train_seconds": {k: 4.0 for k in kinds}, "per_case": per_case}


TOY = ablation.Study("toy", "toy study", variants={"base": (), "bn": ("model.norm=batch",)}, kinds=("2d", "3d"))


def toy_records():
    """6 patients x 3 seeds; the variant's LV is better by a known per-patient amount plus seed noise."""
    rng = np.random.default_rng(0)
    gain = np.array([0.05, -0.01, 0.03, 0.02, 0.04, -0.02])
    recs = {}
    for seed in range(3):
        base = {f"p{i}": (0.7 + 0.01 * i + 0.01 * seed, 0.6) for i in range(6)}
        noise = rng.normal(0, 0.01, 6)
        bn = {c: (lv + g + e, rv) for (c, (lv, rv)), g, e in zip(base.items(), gain, noise)}
        recs[("base", seed)] = fake_record("base", seed, (), base, ("2d", "3d"))
        recs[("bn", seed)] = fake_record("bn", seed, ("model.norm=batch",), bn, ("2d", "3d"))
    return recs


def test_wilcoxon_pairs_patients_averaged_over_seeds():
    recs = toy_records()
    a = aggregate(TOY, recs, [(v, s) for s in range(4) for v in TOY.variants])
    case_mean = lambda r, k: np.array([np.mean(list(c["dice"].values())) for c in r["per_case"][k]])
    diffs = np.mean([case_mean(recs[("bn", s)], "2d") - case_mean(recs[("base", s)], "2d") for s in range(3)], axis=0)
    t = a["variants"]["bn"]["vs_baseline"]["2d"]
    assert t["test"] == "wilcoxon" and t["n"] == 6 and t["seeds"] == 3 and t["n_pairs"] == 18
    assert t["diff"] == pytest.approx(diffs.mean())
    assert t["p"] == pytest.approx(stats.wilcoxon(diffs).pvalue)
    pooled = [x for s in range(3) for x in case_mean(recs[("bn", s)], "2d") - case_mean(recs[("base", s)], "2d")]
    assert t["p"] != pytest.approx(stats.wilcoxon(pooled).pvalue)  # not 18 pseudo-independent pairs
    assert a["variants"]["base"]["vs_baseline"]["2d"] is None  # the reference is not compared with itself
    k = a["variants"]["base"]["vs_kind"]["3d_minus_2d"]
    assert k["diff"] == pytest.approx(0.005) and k["n"] == 6  # the 3D LV is +0.01, RV equal: mean +0.005
    # mean Dice: sd over the seeds' own means; per structure n counts (patient, seed) values
    md = a["variants"]["base"]["mean_dice"]["2d"]
    per_seed = [np.mean([0.7 + 0.01 * i + 0.01 * s for i in range(6)]) / 2 + 0.3 for s in range(3)]
    assert md["per_seed"] == pytest.approx(per_seed) and md["n"] == 3
    assert md["sd"] == pytest.approx(np.std(per_seed, ddof=1))
    ps = a["variants"]["base"]["per_structure"]["2d"]["RV"]
    assert ps == {"dice_mean": pytest.approx(0.6), "dice_sd": pytest.approx(0.0), "hd95_mean": pytest.approx(4.0),
                  "n": 18}
    assert a["missing"] == ["base-seed3", "bn-seed3"] and not a["complete"]


def test_schema_markdown_figure_and_hparams(tmp_path):
    recs = toy_records()
    a = aggregate(TOY, recs)
    assert set(a) >= {"study", "baseline", "variants", "kinds", "labels", "statistics", "complete", "missing"}
    assert a["baseline"] == {"variant": "base", "overrides": []}
    for v in a["variants"].values():
        assert set(v) >= {"overrides", "kinds", "seeds", "per_structure", "mean_dice", "vs_baseline"}
        assert v["seeds"] == [0, 1, 2] and set(v["per_structure"]) == {"2d", "3d"}
        for kind in v["kinds"]:
            assert set(v["per_structure"][kind]) == set(LABELS)
            assert set(v["per_structure"][kind]["LV"]) == {"dice_mean", "dice_sd", "hd95_mean", "n"}
            assert set(v["mean_dice"][kind]) >= {"mean", "sd", "n"}
    json.dumps(a, allow_nan=False)
    ablation_report.write_outputs(tmp_path, TOY, a, recs, ablation_records.settings_of)
    assert json.loads((tmp_path / "ablation.json").read_text()) == a
    md = (tmp_path / "ablation.md").read_text()
    assert "| bn |" in md and "Wilcoxon" in md and "averaged over the shared seeds" in md
    assert (tmp_path / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    sessions = sorted(p.name for p in (tmp_path / "hparams").iterdir())
    assert sessions == sorted(f"{v}-seed{s}-{k}" for v in ("base", "bn") for s in range(3) for k in ("2d", "3d"))
    hp = read_hparams(tmp_path / "hparams" / "bn-seed2-3d")
    assert hp["model.norm"].string_value == "batch" and hp["kind"].string_value == "3d"
    assert hp["seed"].number_value == 2 and hp["variant"].string_value == "bn"
    assert read_hparams(tmp_path / "hparams" / "base-seed0-2d")["model.norm"].string_value == "instance"
    # one HParams type per key: a None among numbers (e.g. "all" training patients) turns the key into strings
    assert ablation_report._one_type([{"n": None, "s": 4}, {"n": 4, "s": 8}]) == [{"n": "null", "s": 4},
                                                                                {"n": "4", "s": 8}]


BUDGET = ablation.Study("budget_toy", "toy budget", kinds=("2d", "3d"), x="train.steps", reference="s800",
                        variants={f"s{n}": (f"train.steps={n}",) for n in (100, 200, 400, 800)})


def budget_records(dice_2d, dice_3d, sec_2d=0.5, sec_3d=1.0):
    """Two seeds x 5 patients per budget; every patient's Dice (both structures) is the kind's value at that
    budget plus a per-patient offset shared by the kinds; train seconds = 10 s compile + steps x step time."""
    recs = {}
    for seed in range(2):
        for (name, own), d2, d3 in zip(BUDGET.variants.items(), dice_2d, dice_3d):
            steps = int(own[0].split("=")[1])
            per_case = {k: [{"case": f"p{i}", "dice": {"LV": d + 0.01 * i + 0.001 * seed, "RV": d + 0.01 * i},
                             "hd95": {"LV": 2.0, "RV": 3.0}, "whole_heart_dice": 0.9} for i in range(5)]
                        for k, d in (("2d", d2), ("3d", d3))}
            recs[(name, seed)] = {
                "study": BUDGET.name, "variant": name, "seed": seed, "preset": "smoke", "data": None,
                "overrides": ["train.models=['2d', '3d']", *own, f"seed={seed}"], "variant_overrides": list(own),
                "kinds": ["2d", "3d"], "x": steps, "dataset": "phantom-ct", "labels": LABELS, "split": {"train": 3},
                "test_cases": [f"p{i}" for i in range(5)], "seconds": 1.0,
                "steps": {"2d": steps, "3d": steps}, "train_seconds": {"2d": 10 + steps * sec_2d, "3d": 10 + steps * sec_3d},
                "per_case": per_case}
    return recs


def test_budget_curves_cross_by_steps_and_by_minutes():
    # 3D behind at 100 and 200 steps, ahead at 400 and 800: crossing between 200 and 400 steps, in log steps
    a = aggregate(BUDGET, budget_records([0.80, 0.85, 0.88, 0.90], [0.70, 0.80, 0.91, 0.94]))
    assert a["step_seconds"] == {"2d": pytest.approx(0.5), "3d": pytest.approx(1.0)}  # compile time drops out
    c = a["crossings"]["3d_minus_2d"]
    assert [r["x"] for r in c["by_x"]] == [100, 200, 400, 800] and c["leader"] is None
    assert [r["diff"] for r in c["by_x"]] == pytest.approx([-0.10, -0.05, 0.03, 0.04])
    assert c["cross_x"] == pytest.approx([200 * 2 ** (0.05 / 0.08)])
    # in minutes 2D spans 0.83-6.7, 3D 1.7-13.3: compared over 1.7-6.7 min, at 3D's 100/200/400 steps = 2D's
    # 200/400/800: -0.15, -0.08, +0.01, so the curves cross between 3.3 and 6.7 min
    m = c["by_minutes"]
    assert m["range"] == pytest.approx([100 / 60, 800 * 0.5 / 60])
    assert [r["minutes"] for r in m["diff"]] == pytest.approx([100 / 60, 200 / 60, 400 / 60])
    assert [r["diff"] for r in m["diff"]] == pytest.approx([-0.15, -0.08, 0.01])
    assert m["cross_minutes"] == pytest.approx([200 / 60 * 2 ** (0.08 / 0.09)])
    assert a["postprocessed"] is None  # these records have no post-processed scores
    md = ablation_report.markdown(a)
    assert "## Where the curves cross" in md and "the curves cross at ≈ 308" in md and "the curves cross at ≈ 6.17 min" in md
    # 3D ahead everywhere: a leader and no crossing; a study without an x axis has no crossings
    b = aggregate(BUDGET, budget_records([0.80, 0.85, 0.88, 0.90], [0.90, 0.91, 0.92, 0.95]))
    assert b["crossings"]["3d_minus_2d"]["leader"] == "3d" and b["crossings"]["3d_minus_2d"]["cross_x"] == []
    assert "3d ahead at every train.steps" in ablation_report.markdown(b)
    assert aggregate(TOY, toy_records())["crossings"] == {}


def read_hparams(logdir):
    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    return plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams


# ---- end to end at the smoke preset ----------------------------------------------------------------------------

TINY_SOURCE = ("from heartjax.ablation import Study\nSTUDY = Study('tiny', 'two step budgets, 2D only', "
               "kinds=('2d',), x='train.steps', variants={'steps4': ('train.steps=4',), "
               "'steps6': ('train.steps=6',)}, seeds=2)\n")
TINY = ablation.Study("tiny", "two step budgets, 2D only", kinds=("2d",), x="train.steps",
                      variants={"steps4": ("train.steps=4",), "steps6": ("train.steps=6",)}, seeds=2)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablate")
    extra = [f"data.phantom_dir={root / 'phantom'}", f"data.cache_dir={root / 'cache'}", "data.folds=2",
             "infer.save_predictions=False"]
    return root, extra


def counting(calls):
    def run_fn(cfg, workdir, **kw):
        calls.append((workdir.parent.name, workdir.name, kw["resume"]))
        return experiment.run(cfg, workdir, **kw)
    return run_fn


def test_smoke_study_killed_resumed_equals_uninterrupted(tiny_env):
    root, extra = tiny_env
    lines, calls = [], []
    full = ablation.run_study(TINY, "smoke", seeds=2, workdir=root / "a", extra=extra, run_fn=counting(calls),
                              log=lines.append)
    assert len(calls) == 4 and full["complete"] and full["runs"] == 4
    assert lines[0].startswith("[1/4] tiny steps4 seed 0: ran") and "study ETA" in lines[0]
    assert "[4/4]" in lines[3] and "ETA" not in lines[3]
    assert [v["x"] for v in full["variants"].values()] == [4, 6]
    assert full["variants"]["steps6"]["steps"]["2d"] == 6

    # SIGKILL (the study in a subprocess) while the fourth run trains: its step-4 checkpoint written, 6 steps planned
    study_file = root / "tiny_study.py"
    study_file.write_text(TINY_SOURCE)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "experiments.ablate", str(study_file), "--preset", "smoke",
                             "--num-seeds", "2", "--out", str(root / "b"), *extra], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = root / "b" / "tiny" / "steps6" / "seed1" / "checkpoints" / "2d" / "latest"
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        if latest.is_dir() and any(p.name.startswith("step_") and "tmp" not in p.name for p in latest.iterdir()):
            break
        time.sleep(0.02)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed, "the study finished before its last run could be killed"
    records = root / "b" / "tiny" / "records"
    assert sorted(p.name for p in records.glob("*.json")) == ["steps4-seed0.json", "steps4-seed1.json",
                                                              "steps6-seed0.json"]
    assert not (root / "b" / "tiny" / "steps6" / "seed1" / "results.json").exists()
    mtimes = {p.name: p.stat().st_mtime_ns for p in records.glob("*.json")}
    with pytest.raises(HeartjaxError, match="--resume"):
        ablation.run_study(TINY, "smoke", seeds=2, workdir=root / "b", extra=extra)
    calls, seen = [], []
    resumed = ablation.run_study(TINY, "smoke", seeds=2, workdir=root / "b", extra=extra, run_fn=counting(calls),
                                 resume=True, log=lambda *a: None, run_log=seen.append)
    assert calls == [("steps6", "seed1", True)]  # only the killed run runs again, from its checkpoint
    assert any("resuming from step" in m for m in seen)
    assert {p.name: p.stat().st_mtime_ns for p in records.glob("*.json") if p.name in mtimes} == mtimes
    assert strip_timing(resumed) == strip_timing(full)
    on_disk = json.loads((root / "b" / "tiny" / "ablation.json").read_text())
    assert strip_timing(on_disk) == strip_timing(json.loads((root / "a" / "tiny" / "ablation.json").read_text()))

    rec = json.loads((records / "steps6-seed1.json").read_text())
    assert {"overrides", "seed", "kinds", "steps", "seconds", "per_case", "machine"} <= set(rec)
    assert rec["seed"] == 1 and rec["steps"] == {"2d": 6} and rec["overrides"][-2:] == ["train.steps=6", "seed=1"]
    assert not any("phantom_dir" in o or "cache_dir" in o for o in rec["overrides"])  # no machine's paths
    assert set(rec["per_case"]["2d"][0]) == {"case", "dice", "hd95", "whole_heart_dice"}
    # the post-processed scores (validation's choice, what predict writes) are kept beside the raw ones
    run = json.loads((root / "b" / "tiny" / "steps6" / "seed1" / "results.json").read_text())["models"]["2d"]
    assert rec["per_case_post"]["2d"] == [{k: c[k] for k in ("case", "dice", "hd95", "whole_heart_dice")}
                                          for c in run["largest_component_test"]["per_case"]]
    assert on_disk["postprocessed"]["variants"]["steps6"]["mean_dice"]["2d"]["n"] == 2
    assert "# After post-processing" in (root / "b" / "tiny" / "ablation.md").read_text()
    # a record made before they were kept is completed from its run folder while that folder exists
    old = {k: v for k, v in rec.items() if k != "per_case_post"}
    (records / "steps6-seed1.json").write_text(json.dumps(old))
    assert ablation.aggregate_study(TINY, records, root / "nowhere")["postprocessed"] is None  # no run folder
    assert "per_case_post" not in json.loads((records / "steps6-seed1.json").read_text())
    ablation.aggregate_study(TINY, records, root / "b")
    assert json.loads((records / "steps6-seed1.json").read_text()) == rec
    one = ablation.aggregate_study(TINY, records, root / "one", seeds=1)  # seed 0 only, seed 1's records left out
    assert one["variants"]["steps6"]["mean_dice"]["2d"]["n"] == 1 and one["complete"]
    # --variants: the recorded runs of one variant are the full study's, so nothing trains; the aggregate is its own
    assert ablate.cli([str(study_file), "--preset", "smoke", "--num-seeds", "2", "--out", str(root / "b"),
                       "--records", str(records), "--resume", "--variants", "steps6", *extra]) == 0
    part = json.loads((root / "b" / "tiny" / "ablation.json").read_text())
    assert list(part["variants"]) == ["steps6"] and part["runs"] == 2 and part["complete"]
    assert strip_timing(part["variants"]["steps6"]["mean_dice"]) == strip_timing(
        full["variants"]["steps6"]["mean_dice"])
    assert {p.name: p.stat().st_mtime_ns for p in records.glob("*.json") if p.name in mtimes} == mtimes

    # aggregation from the records alone (another machine; the study from its own file), and a stale record refused
    assert ablate.cli([str(study_file), "--aggregate-only", "--records", str(records), "--workdir", str(root / "c"),
                       "--figure", str(root / "fig" / "tiny.png")]) == 0
    again = json.loads((root / "c" / "tiny" / "ablation.json").read_text())
    assert strip_timing(again) == strip_timing(full)
    assert (root / "fig" / "tiny.png").read_bytes() == (root / "c" / "tiny" / "ablation.png").read_bytes()
    assert read_hparams(root / "c" / "tiny" / "hparams" / "steps6-seed1-2d")["train.steps"].number_value == 6
    calls = []
    with pytest.raises(HeartjaxError, match="delete it to redo the run"):  # other overrides than recorded
        ablation.run_study(TINY, "smoke", seeds=2, workdir=root / "b", extra=[*extra, "train.log_every=1"],
                           resume=True, run_fn=counting(calls))
    assert calls == []
    changed = ablation.Study("tiny", "d", kinds=("2d",), variants={"steps4": ("train.steps=5",)})
    with pytest.raises(HeartjaxError, match="delete the record"):
        ablation.aggregate_study(changed, records, root / "d")


CROSS = ablation.Study("cross", "one CT model scored on CT and on MRI", kinds=("2d",),
                       variants={"ct": ("data.phantom_modality=ct", "data.test_phantom_modality=None"),
                                 "ct_on_mri": ("data.phantom_modality=ct", "data.test_phantom_modality=mri"),
                                 "ct_short": ("data.phantom_modality=ct", "data.test_phantom_modality=mri",
                                              "train.steps=4")}, seeds=1)


def test_a_run_that_differs_only_in_its_test_scans_scores_its_twins_model(tiny_env):
    """ct_on_mri trains what ct trained (only the scored scans differ): it scores ct's model, training no step, and
    its record is the one training it again gives, per case; ct_short (other training settings) trains."""
    root, extra = tiny_env
    calls, lines, seen = [], [], []
    shared = ablation.run_study(CROSS, "smoke", seeds=1, workdir=root / "share", extra=extra, run_fn=counting(calls),
                                log=lines.append, run_log=seen.append)
    assert calls == [("ct", "seed0", False), ("ct_on_mri", "seed0", True), ("ct_short", "seed0", False)]
    assert any("cross ct_on_mri seed 0: the model of ct seed 0" in m for m in lines)
    assert any("trained 2 runs, scored 1 runs with another run's model, reused 0" in m for m in lines)
    assert not any("ct_short seed 0: the model of" in m for m in lines)
    assert any("[2d] resuming from step 8" in m for m in seen)
    recs = root / "share" / "cross" / "records"
    ct, on_mri = (json.loads((recs / f"{v}-seed0.json").read_text()) for v in ("ct", "ct_on_mri"))
    assert on_mri["model_of"] == "ct" and "model_of" not in ct
    assert on_mri["train_seconds"] == ct["train_seconds"] and on_mri["dataset"].endswith("tested-on-mri")
    assert on_mri["per_case"]["2d"] != ct["per_case"]["2d"]  # other scans scored
    assert (root / "share" / "cross" / "ct_on_mri" / "seed0" / "model_of.txt").read_text() == "ct\n"
    # another study in the same workdir with ct's training settings scores ct's model on its own scans (CT: the same)
    other = ablation.Study("other", "ct again", kinds=("2d",), variants={"same": ("data.phantom_modality=ct",)})
    calls = []
    ablation.run_study(other, "smoke", seeds=1, workdir=root / "share", extra=extra, run_fn=counting(calls),
                       log=lines.append)
    assert calls == [("same", "seed0", True)] and any("the model of cross/ct seed 0" in m for m in lines)
    same = json.loads((root / "share" / "other" / "records" / "same-seed0.json").read_text())
    assert same["model_of"] == "cross/ct" and same["per_case"] == ct["per_case"]
    assert same["per_case_post"] == ct["per_case_post"] and same["calibration"] == ct["calibration"]

    calls = []
    trained = ablation.run_study(CROSS, "smoke", seeds=1, workdir=root / "train", extra=extra,
                                 run_fn=counting(calls), log=lambda *a: None, share=False)
    assert calls == [("ct", "seed0", False), ("ct_on_mri", "seed0", False), ("ct_short", "seed0", False)]
    again = json.loads((root / "train" / "cross" / "records" / "ct_on_mri-seed0.json").read_text())
    assert strip_timing({k: v for k, v in on_mri.items() if k != "model_of"}) == strip_timing(again)
    assert strip_timing(shared) == strip_timing(trained)
