"""The one atomic-write helper: whole files or nothing, strict JSON."""

import errno
import json
import math
import os
import re
from pathlib import Path

import pytest

from course.convert import write_labelled
from minigpt2.atomic import WriteError, atomic_path, atomic_write, atomic_write_json
from minigpt2.download import Lock
from tests import ROOT


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write(path, "first")
    atomic_write(path, b"second")
    assert path.read_text() == "second"
    assert not (tmp_path / "sub" / "a.txt.tmp").exists()


def test_failed_write_leaves_old_file(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_json(path, {"x": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert json.loads(path.read_text()) == {"x": 1}
    assert not path.with_name("a.json.tmp").exists()


def test_json_is_strict(tmp_path):
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "m.json", {"loss": math.nan})
    assert not (tmp_path / "m.json").exists()


# ---- every hand-written write-then-rename goes through here -----------------------------------------------------

RENAME = re.compile(r"\bos\.(replace|rename)\(|\.rename\(")
# The one rename of its own outside this module: a resumable download's `.part` file, which must outlive a failed
# transfer (minigpt2.atomic deletes its temporary file on failure); its bytes are verified on every use.
OWN_RENAMES = {("minigpt2/download.py", "os.replace(part, final)")}


PROJECT = ("minigpt2", "course", "tasks", "quant", "distill", "app", "experiments", "bench", "tools")


def test_no_write_then_rename_outside_minigpt2_atomic():
    found = set()
    for path in sorted(p for package in PROJECT for p in (ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()  # the project's own code: not a virtual environment in the clone
        if rel == "minigpt2/atomic.py":
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if RENAME.search(line) and not line.lstrip().startswith("#"):
                found.add((rel, line.strip()))
    assert found == OWN_RENAMES


def _disk_fills_halfway(monkeypatch):
    """Every Path.write_text / write_bytes writes half its data, then fails as a full disk does."""
    real = Path.write_bytes

    def half(self, data, *args, **kwargs):
        raw = data.encode("utf-8") if isinstance(data, str) else data
        real(self, raw[:len(raw) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "write_bytes", half)
    monkeypatch.setattr(Path, "write_text", half)


def test_a_lock_file_cut_short_leaves_the_old_one_and_no_partial(tmp_path, monkeypatch):
    lock = Lock(tmp_path / "lock.json")
    lock.record("url:a", sha256="1" * 64)
    before = (tmp_path / "lock.json").read_bytes()
    _disk_fills_halfway(monkeypatch)
    with pytest.raises(WriteError, match="lock.json: cannot write it \\(No space left on device\\)"):
        lock.record("url:b", sha256="2" * 64)
    assert (tmp_path / "lock.json").read_bytes() == before and os.listdir(tmp_path) == ["lock.json"]


def test_a_converted_course_file_cut_short_leaves_the_old_one_and_no_partial(tmp_path, monkeypatch):
    path = tmp_path / "ids-sst-dev.csv"
    write_labelled(path, [("id1", "a fine film", "4")], "sentiment")
    before = path.read_bytes()
    _disk_fills_halfway(monkeypatch)
    with pytest.raises(WriteError, match="ids-sst-dev.csv: cannot write it"):
        write_labelled(path, [("id2", "a dull film", "0")], "sentiment")
    assert path.read_bytes() == before and os.listdir(tmp_path) == [path.name]
