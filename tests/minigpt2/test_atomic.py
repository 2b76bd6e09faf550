"""The one atomic-write helper: whole files or nothing, strict JSON."""

import json
import math

import pytest

from minigpt2.atomic import atomic_path, atomic_write, atomic_write_json


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
