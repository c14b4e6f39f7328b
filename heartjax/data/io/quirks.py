"""Loader warnings (header quirks, misnamed compression) gathered across many files and reported once per kind.

A real dataset repeats one quirk in every file (ACDC's unit-scale sform): one line with the count of files it
affects says more than 99 copies of it.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from pathlib import Path


def quirk_key(text: str, path) -> str:
    """The kind of a warning: its text with the file's path and every number blanked out."""
    return re.sub(r"\d+(\.\d+)?", "#", text.replace(str(path), "<file>"))


class Quirks:
    """Warnings by kind: the first text of each kind, and the files it was seen in."""

    def __init__(self):
        self.kinds: dict[str, tuple[str, list[str]]] = {}

    def add(self, path, text: str) -> bool:
        """Record one warning about `path`; True if it is the first of its kind."""
        key = quirk_key(text, path)
        new = key not in self.kinds
        self.kinds.setdefault(key, (text, []))[1].append(str(path))
        return new

    @contextlib.contextmanager
    def capture(self, path):
        """Gather the Python warnings raised while loading `path` instead of printing them."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for w in caught:
            self.add(path, str(w.message))

    def lines(self, total: int | None = None) -> list[str]:
        """One line per kind: how many files, and the first text of it."""
        out = []
        for text, files in self.kinds.values():
            of = f" of {total}" if total else ""
            what = f"{Path(files[0]).name}" + (f" and {len(files) - 1} more" if len(files) > 1 else "")
            out.append(f"note: {len(files)}{of} file(s) ({what}): {text}")
        return out

    def report(self, log, total: int | None = None) -> None:
        """Log the lines, then forget them (so a later report says only what is new)."""
        for line in self.lines(total):
            log(line)
        self.kinds.clear()
