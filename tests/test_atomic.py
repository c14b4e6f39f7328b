"""heartjax.common.atomic: files and folders appear whole or not at all, and no temporary name is left behind."""

from pathlib import Path

import numpy as np
import pytest

from heartjax.common import atomic
def listing(folder) -> list[str]:
    """Names in a folder (hidden ones included), sorted."""
    return sorted(p.name for p in Path(folder).iterdir())


def test_write_helpers_write_the_content(tmp_path):
    assert atomic.write_bytes(tmp_path / "a.bin", b"\x00\x01") == tmp_path / "a.bin"
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    atomic.write_text(str(tmp_path / "b.txt"), "héllo\n")  # str paths work; text is UTF-8
    assert (tmp_path / "b.txt").read_bytes() == "héllo\n".encode("utf-8")
    atomic.write_json(tmp_path / "c.json", {"x": [1, 2]})
    assert (tmp_path / "c.json").read_text() == '{\n  "x": [\n    1,\n    2\n  ]\n}\n'  # indent 2, newline
    atomic.write_json(tmp_path / "d.json", {"x": 1}, indent=None, sort_keys=True)  # json.dumps options pass on
    assert (tmp_path / "d.json").read_text() == '{"x": 1}\n'
    with pytest.raises(ValueError):
        atomic.write_json(tmp_path / "e.json", {"x": float("nan")}, allow_nan=False)
    assert listing(tmp_path) == ["a.bin", "b.txt", "c.json", "d.json"]


def test_write_replaces_an_existing_file(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    atomic.write_text(path, "new")
    assert path.read_text() == "new" and listing(tmp_path) == ["f.txt"]


def test_writer_gets_a_hidden_temporary_name_in_the_same_folder(tmp_path):
    seen = []

    def writer(tmp):
        seen.append(tmp)
        assert (tmp_path / "out.png").exists() == (len(seen) > 1)  # nothing at the real name before the rename
        tmp.write_bytes(b"png")

    atomic.write_with(tmp_path / "out.png", writer)
    atomic.write_with(tmp_path / "out.png", writer)
    tmp = seen[0]
    assert tmp.parent == tmp_path and tmp.name.startswith(".out.png.") and tmp.name.endswith(".tmp")
    assert seen[0] != seen[1]  # a fresh name every call
    assert listing(tmp_path) == ["out.png"]


@pytest.mark.parametrize("fail", ["before_writing", "half_written", "rename"])
def test_failure_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, monkeypatch, fail):
    path = tmp_path / "data.json"
    path.write_text("old content")

    def writer(tmp):
        if fail == "before_writing":
            raise RuntimeError("boom")
        tmp.write_text("half")
        if fail == "half_written":
            raise RuntimeError("boom")

    def failing_replace(src, dst):
        raise OSError("boom")

    if fail == "rename":
        monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises((RuntimeError, OSError), match="boom"):
        atomic.write_with(path, writer)
    assert path.read_text() == "old content"
    assert listing(tmp_path) == ["data.json"]


def test_failure_without_an_old_file_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        atomic.write_json(tmp_path / "x.json", {"x": object()})  # not serialisable: fails before writing

    def interrupted(tmp):
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # not only Exceptions: an interrupt cleans up too
        atomic.write_with(tmp_path / "y.bin", interrupted)
    assert listing(tmp_path) == []


def test_suffix_for_writers_that_append_an_extension(tmp_path):
    path = tmp_path / "cache.npz"
    names = []

    def save(tmp):
        names.append(tmp.name)
        np.savez(tmp, a=np.arange(3))  # savez appends .npz to names without it

    atomic.write_with(path, save, suffix=".npz")
    assert names[0].startswith(".cache.npz.") and names[0].endswith(".tmp.npz")
    with np.load(path) as z:
        np.testing.assert_array_equal(z["a"], np.arange(3))
    assert listing(tmp_path) == ["cache.npz"]


def test_missing_parent_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic.write_text(tmp_path / "no" / "such" / "f.txt", "x")
    assert listing(tmp_path) == []


def test_atomic_dir_commits_on_success(tmp_path):
    target = tmp_path / "parent" / "run"  # parents are created
    with atomic.atomic_dir(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".run.")
        assert not target.exists()  # invisible until the block ends
        (tmp / "a.txt").write_text("a")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("b")
    assert (target / "a.txt").read_text() == "a" and (target / "sub" / "b.txt").read_text() == "b"
    assert listing(target.parent) == ["run"]
    plain = tmp_path / "plain"
    plain.mkdir()
    assert (target.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)  # the umask's mode, not 0700


def test_atomic_dir_error_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with atomic.atomic_dir(tmp_path / "run") as tmp:
            (tmp / "a.txt").write_text("a")
            raise RuntimeError("boom")
    assert listing(tmp_path) == []


def test_atomic_dir_refuses_an_existing_folder_without_overwrite(tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    (target / "old.txt").write_text("old")
    ran = []
    with pytest.raises(FileExistsError, match="run"):
        with atomic.atomic_dir(target):
            ran.append(True)
    assert ran == []  # refused before any work is done
    with pytest.raises(FileExistsError):
        with atomic.atomic_dir(tmp_path / "late") as tmp:
            (tmp_path / "late").mkdir()  # appears while the block runs
            (tmp / "new.txt").write_text("new")
    assert listing(tmp_path) == ["late", "run"] and listing(tmp_path / "late") == []
    assert listing(target) == ["old.txt"]


def test_atomic_dir_overwrite_replaces_and_error_keeps_the_old_folder(tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(target, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("boom")
    assert listing(target) == ["old.txt"] and listing(tmp_path) == ["run"]
    with atomic.atomic_dir(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
        assert listing(target) == ["old.txt"]  # the old folder stays readable until the rename
    assert listing(target) == ["new.txt"] and listing(tmp_path) == ["run"]


def test_atomic_dir_overwrite_replaces_a_file(tmp_path):
    target = tmp_path / "run"
    target.write_text("a file")
    with atomic.atomic_dir(target, overwrite=True) as tmp:
        (tmp / "x").write_text("x")
    assert target.is_dir() and listing(target) == ["x"] and listing(tmp_path) == ["run"]



def test_atomic_dir_keeps_a_folder_another_process_finished_first(tmp_path):
    target = tmp_path / "phantom"
    with atomic.atomic_dir(target, overwrite=True, keep=lambda p: (p / ".complete").exists()) as tmp:
        (tmp / "a.txt").write_text("mine")
        target.mkdir()  # meanwhile another writer renamed its finished folder into place
        (target / "a.txt").write_text("theirs")
        (target / ".complete").write_text("ok")
    assert (target / "a.txt").read_text() == "theirs"  # kept: a reader of it never sees it replaced
    assert [p.name for p in tmp_path.iterdir()] == ["phantom"]  # the new one is discarded
    with atomic.atomic_dir(target, overwrite=True, keep=lambda p: False) as tmp:  # not complete: replaced as before
        (tmp / "a.txt").write_text("mine")
    assert (target / "a.txt").read_text() == "mine"
