"""Pieces every command line shares, so a flag name means one thing everywhere (argparse only; a leaf module).

Conventions of `experiments.volumetric`, `experiments.ablate`, `heartjax.predict`, `heartjax.evaluate`,
`experiments.benchmark`, `experiments.bench_gpu` and `experiments.bench_pipeline`:

  --out DIR      the output folder (created if missing); older names (--workdir) are deprecated aliases
  --json FILE    a machine-readable report, one file
  --data DIR     a dataset folder (default: the built-in phantom)
  --preset NAME  a config preset;  --show-config [PRESET] lists every key with its value, type and meaning
  --seed N       one training seed;  --seeds 0,1,2 a list of them;  --num-seeds N the seeds 0..N-1
  --sizes full|tiny  network and batch sizes of a benchmark (tiny: a smoke test); --quick = --sizes tiny
  --resume       continue what the output folder holds;  --overwrite  replace it
"""

from __future__ import annotations

import argparse
import sys


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The description and epilog as written, and each option's default appended unless the help already says
    it or there is none to show (None, a switch that is off)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("%(default)" in text or "default" in text.lower() or not action.option_strings
                or action.default in (None, False, argparse.SUPPRESS)):
            return text
        return text + " (default: %(default)s)"


def parser(prog: str, description: str, example: str) -> argparse.ArgumentParser:
    """An ArgumentParser with the shared formatter and an `Example:` epilog."""
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter,
                                   epilog="Example:\n  " + example.strip().replace("\n", "\n  "))


class DeprecatedAlias(argparse.Action):
    """An old option name that stores into the new one's destination and says so on stderr."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs):
        self.new = new
        kwargs.setdefault("help", f"deprecated alias of {new}")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def out_folder(p: argparse.ArgumentParser, help: str, default=None, old: tuple[str, ...] = (), type=None) -> None:
    """--out DIR (the output folder), with `old` names as deprecated aliases into the same destination."""
    p.add_argument("--out", metavar="DIR", default=default, type=type, help=help)
    for name in old:
        p.add_argument(name, dest="out", metavar="DIR", action=DeprecatedAlias, new="--out", type=type,
                       default=argparse.SUPPRESS)


def int_list(text: str) -> list[int]:
    """"0,1,2" -> [0, 1, 2] (argparse type); distinct non-negative integers."""
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of integers, e.g. 0,1,2") from None
    if not values or any(v < 0 for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct non-negative integers, e.g. 0,1,2")
    return values


def choice_list(allowed) -> callable:
    """An argparse type: a comma list of values from `allowed`, e.g. "ref,default" -> ["ref", "default"]."""

    def parse(text: str) -> list[str]:
        values = [t.strip() for t in text.split(",") if t.strip()]
        if not values or any(v not in allowed for v in values):
            raise argparse.ArgumentTypeError(f"{text!r}: give a comma list of {', '.join(allowed)}")
        return values

    return parse
