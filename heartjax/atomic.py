"""Atomic writes: every file heartjax writes goes to a temporary name in the same folder and is renamed into place.

A reader (or a run killed mid-write) therefore sees the old file or the new one, never half of one. The one
helper every writer uses; folders are committed the same way with `atomic_dir`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator


def _tmp_name(path: Path) -> Path:
    """A hidden temporary name beside `path`, unique per process and call."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def write_with(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Call `writer(tmp_path)` to write the file, then rename it to `path`; on any error nothing is left behind.

    The parent folder must exist. Returns `path` as a Path.
    """
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        writer(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes atomically."""
    return write_with(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, data: Any, **kwargs) -> Path:
    """Write JSON (indent 2, trailing newline) atomically; the value is serialised before anything is written."""
    text = json.dumps(data, indent=2, **kwargs) + "\n"
    return write_text(path, text)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it to `path` when the block ends without an error.

    Yields the temporary folder. With `overwrite`, an existing `path` is replaced; otherwise it must not exist
    (FileExistsError). On an error the temporary folder is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} exists")
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
