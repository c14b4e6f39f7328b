"""The command lines agree: every --help shows an example, every flag the README and docs/*.md show in a
`python -m` command exists in that CLI's parser, a key=value override that contradicts a flag is an error naming
both, --show-config lists the keys with their types, and --resume applies the settings it may change (recorded in
the run folder) and refuses any other by name.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import re
import sys
from pathlib import Path

import pytest

from experiments import ablate, bench_gpu, bench_pipeline, benchmark, volumetric
from heartjax import ablation, experiment
from heartjax.common import atomic, cli
from heartjax import config as config_lib
from heartjax.eval import evaluate
from heartjax.serve import predict

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {"experiments.volumetric": volumetric.cli, "experiments.ablate": ablate.cli,
                "heartjax.predict": predict.main, "heartjax.evaluate": evaluate.main,
                "experiments.benchmark": benchmark.main, "experiments.bench_gpu": bench_gpu.main,
                "experiments.bench_pipeline": bench_pipeline.main}


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_help_shows_an_example(module, capsys):
    with pytest.raises(SystemExit) as exc:
        ENTRY_POINTS[module](["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "Example:" in out and f"python -m {module}" in out.split("Example:")[1]
    assert not [a.dest for a in parser_of(module)._actions if not a.help], "options without help"


class _Parser(Exception):
    def __init__(self, parser):
        self.parser = parser


def parser_of(module: str) -> argparse.ArgumentParser:
    """The ArgumentParser a `python -m MODULE` entry point builds, caught when it starts parsing."""
    mod = importlib.import_module(module)
    entry = next(getattr(mod, n) for n in ("main", "cli") if callable(getattr(mod, n, None)))

    def catch(self, *a, **k):
        raise _Parser(self)

    saved = (argparse.ArgumentParser.parse_known_args, argparse.ArgumentParser.parse_known_intermixed_args, sys.argv)
    argparse.ArgumentParser.parse_known_args = argparse.ArgumentParser.parse_known_intermixed_args = catch
    sys.argv = [module]
    try:
        entry([]) if inspect.signature(entry).parameters else entry()
    except _Parser as got:
        return got.parser
    finally:
        (argparse.ArgumentParser.parse_known_args, argparse.ArgumentParser.parse_known_intermixed_args,
         sys.argv) = saved
    raise AssertionError(f"{module} did not parse a command line")


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every option of the parser and its subcommands; deprecated aliases left out (the docs show the names)."""
    out = set()
    for action in parser._actions:
        if not isinstance(action, cli.DeprecatedAlias):
            out.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out |= option_strings(sub)
    return out


def documented_commands() -> list[tuple[str, str, str]]:
    """(file, module, the command's text after `python -m MODULE`) of every command in the README and docs/:
    lines of fenced code blocks (backslash continuations joined, comments dropped) and inline code spans."""
    found = []
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = md.read_text()
        blocks = re.findall(r"^ *```[^\n]*\n(.*?)^ *```", text, flags=re.S | re.M)
        prose = re.sub(r"^ *```[^\n]*\n.*?^ *```", "", text, flags=re.S | re.M)
        snippets = [line.split(" #")[0] for b in blocks for line in b.replace("\\\n", " ").splitlines()]
        snippets += [line for line in text.splitlines() if line.startswith("    python -m")]  # indented blocks
        snippets += re.findall(r"`([^`]+)`", prose)
        for s in snippets:
            for m in re.finditer(r"python -m ([\w.]+)(.*?)(?=python -m|$)", " ".join(s.split())):
                if m.group(1).islower():  # not a placeholder such as heartjax.NAME
                    found.append((md.relative_to(ROOT).as_posix(), m.group(1), m.group(2)))
    return found


def test_documented_flags_exist():
    commands = documented_commands()
    modules = {m for _, m, _ in commands}
    assert {"experiments.volumetric", "experiments.ablate", "heartjax.predict", "heartjax.evaluate"} <= modules
    parsers = {m: option_strings(parser_of(m)) for m in sorted(modules)}
    stale = sorted({f"{f}: python -m {m} {flag}" for f, m, rest in commands
                    for flag in re.findall(r"(?<![\w-])(--[A-Za-z][\w-]*)", rest) if flag not in parsers[m]})
    assert not stale, "flags the docs show that the CLI does not have:\n" + "\n".join(stale)


@pytest.mark.parametrize("argv, named", [
    (["--seed", "1", "seed=2"], ("--seed 1", "seed=2")),
    (["--preset", "smoke", "preset=full"], ("--preset", "preset=full")),
    (["--data", "/x", "data.dir=/y"], ("--data /x", "data.dir=/y")),
    (["--models", "2d", "train.models=['3d']"], ("--models 2d", "train.models=['3d']")),
    (["--cv", "5", "data.folds=3"], ("--cv 5", "data.folds=3")),
])
def test_override_contradicting_a_flag_is_an_error_naming_both(argv, named, capsys):
    assert volumetric.cli(["--show-config", *argv]) == 2
    err = capsys.readouterr().err
    assert all(n in err for n in named), err


def test_override_agreeing_with_a_flag_is_fine(capsys):
    assert volumetric.cli(["--show-config", "smoke", "--seed", "3", "seed=3"]) == 0
    assert re.search(r"^seed +=  ?3 +int ", capsys.readouterr().out, flags=re.M)


def test_ablate_override_contradicting_a_flag(capsys):
    assert ablate.cli(["norm", "--preset", "smoke", "--seeds", "0,1", "seed=4"]) == 2
    assert "seed=4" in (err := capsys.readouterr().err) and "--seeds" in err
    assert ablate.cli(["norm", "--data", "/x", "data.dir=/y"]) == 2
    assert "--data /x" in (err := capsys.readouterr().err) and "data.dir=/y" in err


@pytest.mark.parametrize("cli", [volumetric.cli, ablate.cli])
def test_show_config_lists_keys_with_value_type_and_meaning(cli, capsys):
    assert cli(["--show-config", "smoke"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("train.steps "))
    assert re.match(r"train\.steps +=  ?8 +int +the same number of optimiser steps", line), line
    keys = [x.split()[0] for x in out.splitlines()[2:]]
    assert len(keys) == len(config_lib.describe.rows(experiment.config("smoke")))
    assert "model_25d.slices" in keys and "augment.rotation_p" in keys and "optim.lr" in keys


def test_every_config_key_has_a_meaning():
    missing = [k for k, _, _, m in config_lib.describe.rows(config_lib.Config()) if not m]
    assert not missing, f"schema fields without a comment: {missing}"


def test_ablate_seeds_is_a_list_and_num_seeds_a_count():
    assert ablate.parse_args(["norm", "--seeds", "0,1,2"]).seed_choice == [0, 1, 2]
    assert ablate.parse_args(["norm", "--seeds", "3"]).seed_choice == [3]  # one seed, never a count
    assert ablate.parse_args(["norm", "--num-seeds", "3"]).seed_choice == 3
    for bad in (["--seeds", "0,1", "--num-seeds", "2"], ["--seeds", "1,1"], ["--seeds", "a"]):
        with pytest.raises(SystemExit):
            ablate.parse_args(["norm", *bad])
    study = ablation.Study("s", "a study", variants={"a": ("train.steps=2",)}, seeds=2)
    assert [r.seed for r in ablation.expand(study, "smoke", seeds=[1, 3])] == [1, 3]
    assert [r.seed for r in ablation.expand(study, "smoke", seeds=2)] == [0, 1]


def test_workdir_is_a_deprecated_alias_of_out(capsys):
    args = volumetric.parse_args(["--workdir", "runs/x"])
    assert args.out == Path("runs/x") and "--workdir is deprecated; use --out" in capsys.readouterr().err
    assert ablate.parse_args(["norm", "--workdir", "w"]).out == Path("w")


def test_benchmarks_share_sizes_and_quick():
    for parse in (benchmark.parse_args, bench_gpu.parse_args):
        assert parse(["--quick"]).sizes == parse(["--sizes", "tiny"]).sizes == "tiny"
        assert parse([]).sizes == "full"


@pytest.fixture
def saved_run(tmp_path):
    """A run folder as a started smoke run leaves it (its config.json), and the config the CLI would run."""
    run = tmp_path / "run"
    run.mkdir()
    atomic.write_json(run / "config.json", config_lib.to_dict(experiment.config("smoke")))
    return run


def test_resume_applies_a_changed_step_count_and_records_it(saved_run, monkeypatch, capsys):
    got = {}
    monkeypatch.setattr(volumetric.experiment, "run", lambda cfg, out, **kw: got.update(cfg=cfg, out=out, **kw))
    assert volumetric.cli(["--out", str(saved_run), "--resume", "train.steps=12", "train.eval_every=3"]) == 0
    assert got["resume"] and got["cfg"].train.steps == 12 and got["cfg"].train.eval_every == 3
    saved = json.loads((saved_run / "config.json").read_text())
    assert saved["train"]["steps"] == 12 and saved["train"]["eval_every"] == 3
    assert "train.steps 8 -> 12" in capsys.readouterr().out
    assert experiment.load_config(saved_run).train.steps == 12  # what experiment.run(resume=True) then reads


def test_resume_refuses_any_other_change_by_name(saved_run, monkeypatch, capsys):
    monkeypatch.setattr(volumetric.experiment, "run", lambda *a, **k: pytest.fail("must not run"))
    before = (saved_run / "config.json").read_text()
    assert volumetric.cli(["--out", str(saved_run), "--resume", "model.features=6", "train.steps=20"]) == 2
    err = capsys.readouterr().err
    assert "model.features (4 -> 6)" in err and "train.steps" not in err.split("only")[0]
    assert (saved_run / "config.json").read_text() == before  # nothing recorded
    assert volumetric.cli(["--out", str(saved_run), "--resume", "--seed", "5"]) == 2
    assert "seed (0 -> 5)" in capsys.readouterr().err
    assert volumetric.cli(["--out", str(saved_run), "--resume", "--preset", "full"]) == 2
    assert "--preset full" in capsys.readouterr().err
