"""minigpt2.atomic and minigpt2.resume pinned where one-line slips show (the resume contracts themselves, a stopped
run resumed to the uninterrupted one and each refusal's line, are in tests/contract/test_contract_resume.py).

Atomic writes: the bytes go to `<name>.tmp` beside the target, which keeps its old content until the swap; a failed
block leaves the old file and no `.tmp`; a failure of the machine (an OSError, safetensors' "I/O error") is one
`WriteError` line (the text written out here in full), anything else comes back as itself; the file, then its
folder, are fsynced; JSON is indented by 2, ends with a newline, writes a Path as its text. Expected bytes are
written out by hand.
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import save_file

from minigpt2 import atomic
from minigpt2.atomic import WriteError, atomic_path, atomic_write, atomic_write_json
from minigpt2.checkpoint import read_safetensors
from minigpt2.errors import UserError
from minigpt2.resume import STATE_FILE, ResumeStateError, load_resume_state, save_resume_state

ADVICE = ("the previous file, if any, is untouched: free disk space (or raise the file-size limit, or fix "
          "permissions) and run again")


# ------------------------------------------------------------------------------------------------ atomic


def test_the_bytes_go_to_name_tmp_beside_the_target_which_keeps_its_old_content_until_the_swap(tmp_path):
    path = tmp_path / "run" / "metrics.json"
    atomic_write(path, "old")
    with atomic_path(path) as tmp:
        assert tmp == tmp_path / "run" / "metrics.json.tmp"
        tmp.write_bytes(b"new")
        assert path.read_bytes() == b"old"  # not yet swapped in
    assert path.read_bytes() == b"new" and sorted(os.listdir(path.parent)) == ["metrics.json"]


def test_every_missing_folder_above_the_file_is_made(tmp_path):
    path = tmp_path / "a" / "b" / "c" / "f.txt"
    atomic_write(path, "x")
    atomic_write(path, "y")  # the folders exist now: no error
    assert path.read_bytes() == b"y"


def test_text_is_written_as_utf8_and_bytes_as_they_are(tmp_path):
    atomic_write(tmp_path / "t", "é✓\n")
    assert (tmp_path / "t").read_bytes() == b"\xc3\xa9\xe2\x9c\x93\n"  # U+00E9 and U+2713 in UTF-8, by the table
    atomic_write(tmp_path / "b", b"\xff\x00")
    assert (tmp_path / "b").read_bytes() == b"\xff\x00"


def test_the_file_then_its_folder_are_fsynced_before_and_after_the_swap(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), (tmp_path / "f").exists()))
        real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write(tmp_path / "f", "data")
    # the temporary file before the rename (the target not there yet), then the folder after it
    assert synced == [(str(tmp_path / "f.tmp"), False), (str(tmp_path), True)]


def test_a_block_that_fails_leaves_the_old_file_no_tmp_and_its_own_error(tmp_path):
    path = tmp_path / "a.json"
    atomic_write(path, "old")
    error = KeyError("the code's own")
    with pytest.raises(KeyError) as e:
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise error
    assert e.value is error
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.json"]


def test_a_block_that_fails_before_writing_anything_keeps_its_own_error(tmp_path):
    with pytest.raises(LookupError, match="^early$"):
        with atomic_path(tmp_path / "a"):
            raise LookupError("early")
    assert os.listdir(tmp_path) == []


def test_a_tmp_that_cannot_be_removed_does_not_hide_the_error(tmp_path, monkeypatch):
    def unlink(self, missing_ok=False):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(ZeroDivisionError):
        with atomic_path(tmp_path / "a") as tmp:
            tmp.write_text("half")
            1 / 0


@pytest.mark.parametrize("error,reason", [
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    (OSError(errno.EFBIG, "File too large"), "File too large"),
    (PermissionError(errno.EACCES, "Permission denied"), "Permission denied"),
    (OSError("quota exceeded"), "quota exceeded"),  # no strerror: the error's text
    (SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
     "No space left on device (os error 28)"),
    (SafetensorError("I/O error:   Disk quota exceeded (os error 122)  "), "Disk quota exceeded (os error 122)"),
])
def test_a_failure_of_the_machine_is_one_line_naming_the_file_and_the_reason(tmp_path, error, reason):
    path = tmp_path / "state.safetensors"
    atomic_write(path, "old")
    with pytest.raises(WriteError) as e:
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise error
    assert str(e.value) == f"{path}: cannot write it ({reason}); {ADVICE}"
    assert isinstance(e.value, UserError) and isinstance(e.value, OSError)
    assert e.value.__cause__ is None and e.value.__suppress_context__
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["state.safetensors"]


class NotSafetensors(Exception):
    pass


@pytest.mark.parametrize("error", [
    SafetensorError("Error while serializing: invalid shape"),  # safetensors' own, not the machine's
    NotSafetensors("I/O error: No space left on device"),  # the words, from another library: not trusted
])
def test_other_errors_come_back_as_themselves(tmp_path, error):
    with pytest.raises(type(error)) as e:
        with atomic_path(tmp_path / "f") as tmp:
            tmp.write_text("half")
            raise error
    assert e.value is error and os.listdir(tmp_path) == []


def test_a_write_error_from_an_inner_write_is_not_wrapped_again(tmp_path):
    inner = WriteError("inner: cannot write it (No space left on device); ...")
    with pytest.raises(WriteError) as e:
        with atomic_path(tmp_path / "outer"):
            raise inner
    assert e.value is inner


def test_io_failure_names_the_machine_or_nothing():
    assert atomic._io_failure(OSError(errno.ENOSPC, "No space left on device")) == "No space left on device"
    assert atomic._io_failure(OSError("plain")) == "plain"
    assert atomic._io_failure(WriteError(errno.ENOSPC, "No space left on device")) is None
    assert atomic._io_failure(SafetensorError("I/O error: x: y")) == "x: y"  # split at the first marker only
    assert atomic._io_failure(SafetensorError("I/O error: a I/O error: b")) == "a I/O error: b"
    assert atomic._io_failure(SafetensorError("header too large")) is None
    assert atomic._io_failure(ValueError("I/O error: x")) is None


def test_json_is_indented_by_two_ends_with_a_newline_and_writes_paths_as_text(tmp_path):
    atomic_write_json(tmp_path / "c.json", {"b": [1, 2.5], "a": Path("runs") / "x", "s": "é"})
    assert (tmp_path / "c.json").read_bytes() == (
        b'{\n  "b": [\n    1,\n    2.5\n  ],\n  "a": "runs/x",\n  "s": "\\u00e9"\n}\n')


@pytest.mark.parametrize("value,error,message", [
    (float("nan"), ValueError, "Out of range float values are not JSON compliant"),
    (float("-inf"), ValueError, "Out of range float values are not JSON compliant"),
    ({1, 2}, TypeError, "set is not JSON serialisable"),
    (b"raw", TypeError, "bytes is not JSON serialisable"),
])
def test_json_that_cannot_be_strict_is_refused_and_the_old_file_kept(tmp_path, value, error, message):
    path = tmp_path / "m.json"
    atomic_write_json(path, {"ok": 1})
    with pytest.raises(error) as e:
        atomic_write_json(path, {"x": value})
    assert str(e.value).startswith(message)
    assert path.read_text() == '{\n  "ok": 1\n}\n' and os.listdir(tmp_path) == ["m.json"]


def test_json_default_turns_a_path_into_text_and_refuses_the_rest():
    assert atomic._json_default(Path("a") / "b") == "a/b"
    with pytest.raises(ValueError, match="^not finite: inf$"):
        atomic._json_default(float("inf"))
    with pytest.raises(TypeError, match="^object is not JSON serialisable$"):
        atomic._json_default(object())


# ------------------------------------------------------------------------------------------------ resume


def test_optimizer_state_names_with_dots_and_many_parameters_come_back_under_their_own_names(tmp_path):
    """The state file names a moment `optim.<index>.<name>`; an optimizer may name its state anything, dots
    included (here `ema.slow`), and index 10 must not be read as 1 or 0."""
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(2)) for _ in range(12)]
    module = nn.ParameterList(params)
    optimizer = torch.optim.AdamW(params, lr=0.1)
    sum(p.square().sum() for p in params).backward()
    optimizer.step()
    for i, p in enumerate(params):
        optimizer.state[p]["ema.slow"] = torch.full((2,), float(i))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    save_resume_state(tmp_path, module, optimizer, scheduler, 1, {"history": [], "best": None, "wall_s": 0.0})
    tensors, _ = read_safetensors(tmp_path / STATE_FILE)
    assert torch.equal(tensors["optim.10.ema.slow"], torch.full((2,), 10.0))

    other = [nn.Parameter(torch.zeros(2)) for _ in range(12)]
    opt2 = torch.optim.AdamW(other, lr=0.1)
    load_resume_state(tmp_path, nn.ParameterList(other), opt2,
                      torch.optim.lr_scheduler.LambdaLR(opt2, lambda step: 1.0))
    for i, (p, q) in enumerate(zip(params, other)):
        assert torch.equal(p, q)
        assert opt2.state[q].keys() == {"step", "exp_avg", "exp_avg_sq", "ema.slow"}
        assert torch.equal(opt2.state[q]["ema.slow"], torch.full((2,), float(i))), i
        assert torch.equal(opt2.state[q]["exp_avg"], optimizer.state[p]["exp_avg"]), i


@pytest.mark.parametrize("key,saved,shape", [
    ("model.gain", torch.tensor([7.0], dtype=torch.float64), (4,)),  # was broadcast into all 4 values, silently
    ("model.emb.weight", torch.zeros(3, 4, dtype=torch.float64), (9, 4)),  # was a RuntimeError's traceback
])
def test_a_state_tensor_of_another_shape_is_one_line_naming_the_file_and_both_shapes(tmp_path, key, saved, shape):
    from tests.contract.test_contract_train import Toy

    module = Toy()
    optimizer = torch.optim.AdamW(module.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    save_resume_state(tmp_path, module, optimizer, scheduler, 1, {"history": [], "best": None, "wall_s": 0.0})
    tensors, meta = read_safetensors(tmp_path / STATE_FILE)
    save_file({**tensors, key: saved}, str(tmp_path / STATE_FILE), metadata=meta)
    other = Toy()
    before = {k: v.clone() for k, v in other.state_dict().items()}
    opt2 = torch.optim.AdamW(other.parameters(), lr=0.1)
    with pytest.raises(ResumeStateError) as e:
        load_resume_state(tmp_path, other, opt2, torch.optim.lr_scheduler.LambdaLR(opt2, lambda step: 1.0))
    assert str(e.value) == (f"{tmp_path / STATE_FILE}: tensor {key!r} has shape {tuple(saved.shape)}, this run's "
                            f"{shape}; was the run started with other settings (mode, LoRA, ...)?")
    assert torch.equal(other.state_dict()[key[len("model."):]], before[key[len("model."):]])
