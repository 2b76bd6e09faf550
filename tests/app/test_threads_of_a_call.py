"""A command's --threads is its run's: `finetune.run`, `evaluate.run` and `generate.run` hold torch's thread count at
--threads while they run and give the caller's back after, an error included (`minigpt2.device.torch_threads`).

Called in-process (a sweep's runs, a notebook, the test suite), a run that kept its count left every later
computation of the process on it: in the suite, every test after one that ran `finetune.main([..., "--threads",
"1"])` or `python -m bench ... --threads 1` in-process ran on one thread, so which kernels later tests ran (the
fp32 inference copy takes MKL's one-row product on one thread, oneDNN's packed layers on two) depended on the
order of the test files (docs/testing.md, "Order of the tests"). Fast: the runs' work is stubbed or two tokens of
the tiny model."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from app import evaluate, finetune
from app import generate as gen
from experiments.sweeps import TINY_DATA
from minigpt2.device import torch_threads

DATA = TINY_DATA / "tasks"


@pytest.fixture
def caller_on_two():
    """The caller runs on 2 threads (its own count back after the test): a run's 1 or 3 is not the caller's."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_torch_threads_holds_the_count_inside_and_gives_the_callers_back(caller_on_two):
    with torch_threads(3):
        assert torch.get_num_threads() == 3
    assert torch.get_num_threads() == 2
    with pytest.raises(KeyError), torch_threads(1):
        assert torch.get_num_threads() == 1
        raise KeyError("an error inside")
    assert torch.get_num_threads() == 2
    with torch_threads(None):  # no --threads: the caller's count, as it is
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 2


def finetune_settings(out: Path, *extra: str):
    return finetune.parse_settings(["--task", "sst", "--model", "tiny", "--data-dir", str(DATA), "--tokenizer-dir",
                                    str(TINY_DATA / "gpt2"), "--out-dir", str(out), "--no-progress", "--device",
                                    "cpu", "--offline", *extra])


def test_finetune_runs_on_its_threads_and_the_caller_gets_its_own_back(caller_on_two, monkeypatch, tmp_path):
    seen = []

    def work(settings, d, run_dir, recorded, how):  # the run's set-up, training and scoring
        seen.append(torch.get_num_threads())
        return {"ok": 1}
    monkeypatch.setattr(finetune, "_run", work)
    assert finetune.run(finetune_settings(tmp_path / "a", "--threads", "3")) == {"ok": 1}
    assert seen == [3] and torch.get_num_threads() == 2
    assert finetune.run(finetune_settings(tmp_path / "b")) == {"ok": 1}  # no --threads: the caller's
    assert seen == [3, 2] and torch.get_num_threads() == 2

    def fails(*args):
        seen.append(torch.get_num_threads())
        raise RuntimeError("the run failed")
    monkeypatch.setattr(finetune, "_run", fails)
    with pytest.raises(RuntimeError, match="^the run failed$"):
        finetune.run(finetune_settings(tmp_path / "c", "--threads", "1"))
    assert seen == [3, 2, 1] and torch.get_num_threads() == 2


def test_evaluate_runs_on_its_threads_and_the_caller_gets_its_own_back(caller_on_two, monkeypatch):
    seen = []
    monkeypatch.setattr(evaluate, "evaluate_run", lambda *a, **k: seen.append(torch.get_num_threads()) or {"ok": 1})
    assert evaluate.run(evaluate.parse_settings(["R", "--threads", "3"])) == {"ok": 1}
    assert seen == [3] and torch.get_num_threads() == 2
    assert evaluate.run(evaluate.parse_settings(["R"])) == {"ok": 1}
    assert seen == [3, 2] and torch.get_num_threads() == 2

    def fails(*args, **kw):
        seen.append(torch.get_num_threads())
        raise RuntimeError("the evaluation failed")
    monkeypatch.setattr(evaluate, "evaluate_run", fails)
    with pytest.raises(RuntimeError, match="^the evaluation failed$"):
        evaluate.run(evaluate.parse_settings(["R", "--threads", "1"]))
    assert seen == [3, 2, 1] and torch.get_num_threads() == 2


def generate_settings(*extra: str):
    return gen.parse_settings(["--model", "tiny", "--tokenizer-dir", str(TINY_DATA / "gpt2"), "--max-new-tokens",
                               "2", "--seed", "0", *extra])


def test_generate_samples_on_its_threads_and_the_caller_gets_its_own_back(caller_on_two, tmp_path):
    seen = []
    out = io.StringIO()
    texts = gen.run(generate_settings("--prompt", "x", "--threads", "3"), out=out,
                    on_token=lambda i, n: seen.append(torch.get_num_threads()))
    assert len(texts) == 1 and out.getvalue()  # it sampled and wrote
    assert seen == [3, 3] and torch.get_num_threads() == 2  # each of the 2 tokens on 3 threads
    gen.run(generate_settings("--prompt", "x"), out=io.StringIO(),
            on_token=lambda i, n: seen.append(torch.get_num_threads()))
    assert seen == [3, 3, 2, 2] and torch.get_num_threads() == 2
    missing = tmp_path / "no-such-file.txt"
    with pytest.raises(gen.GenerateError, match=f"^--prompt-file {missing}: no such file$"):
        gen.run(generate_settings("--prompt-file", str(missing), "--threads", "1"), out=io.StringIO())
    assert torch.get_num_threads() == 2
