"""Atomic writes: every file heartjax writes goes to a temporary name in the same folder and is renamed into place.

A reader (or a run killed mid-write) therefore sees the old file or the new one, never half of one. The one
helper every writer uses; folders are committed the same way with `atomic_dir`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator


def _tmp_name(path: Path, suffix: str = "") -> Path:
    """A hidden temporary name beside `path`, unique per process and call, ending in `.tmp` + `suffix`.

    A fresh name rather than mkstemp/mkdtemp, whose 0600/0700 modes would survive the rename.
    """
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{suffix}")


def write_with(path: str | os.PathLike, writer: Callable[[Path], Any], suffix: str = "") -> Path:
    """Call `writer(tmp_path)` to write the file, then rename it to `path`; on any error nothing is left behind.

    The parent folder must exist. The temporary name ends in `suffix`, for writers that pick the format from the
    name or append an extension to names without it (`suffix=".npz"` for np.savez, ".nii.gz" for nibabel.save).
    Returns `path` as a Path.
    """
    path = Path(path)
    tmp = _tmp_name(path, suffix)
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
    """Write JSON (with a trailing newline) atomically; the value is serialised before anything is written.

    `kwargs` go to json.dumps (indent defaults to 2), e.g. `indent=1, allow_nan=False`.
    """
    kwargs.setdefault("indent", 2)
    text = json.dumps(data, **kwargs) + "\n"
    return write_text(path, text)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False,
               keep: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it to `path` when the block ends without an error.

    Yields the temporary folder (hidden, beside `path`). With `overwrite`, an existing `path` is replaced;
    otherwise it must not exist (FileExistsError, raised before the block runs and again at the rename). `keep`:
    where `path` exists at the rename and `keep(path)` is true (another process finished the same content first),
    the existing folder stays and the new one is discarded, so a reader of `path` never sees it replaced. On an
    error the temporary folder is removed and `path` is left as it was.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists() and keep is not None and keep(path):
            return
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} exists")
            old = _tmp_name(path, ".old")
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _remove(path: Path) -> None:
    """Delete a folder tree or a file (best effort)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
