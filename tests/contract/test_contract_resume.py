"""Resuming a run held to what it promises (minigpt2/train.py, minigpt2/resume.py, app/runfolder.py, app/cli.py):

- a run stopped after any epoch k of n and resumed ends as the uninterrupted run, bit for bit: the same losses, LR
  and dev figures per epoch, the same batches in the same order, the same weights, AdamW moments, schedule
  position and RNG streams (torch, Python, NumPy), the same best epoch and the same `improved` marks;
- the resume state holds exactly the trainable weights, the optimizer, the schedule, every RNG state and the
  history; a state that does not fit is one line naming the file and what is wrong, before anything is written;
- `--resume --out-dir RUN` takes the settings saved in RUN (an older layout upgraded), replaces those a resume may
  change, accepts the others only when they repeat the saved value, and refuses a folder that holds nothing to
  continue, an edited config.json or changed inputs, each as one line naming what differs.
"""
from __future__ import annotations

import copy
import json
import random
import sys
from dataclasses import replace
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from safetensors.torch import save_file

from app import cli, finetune, runfolder
from app.finetune import parse_settings
from app.runfolder import RunFolderError, check_inputs, check_resumable, check_resume, saved_settings
from app.settings import RunSettings, SettingsError, defining
from minigpt2.atomic import atomic_write_json
from minigpt2.checkpoint import read_safetensors
from minigpt2.distributed import Dist
from minigpt2 import train as train_module
from minigpt2.resume import (STATE_FILE, ResumeStateError, check_resume_state, has_resume_state, load_resume_state,
                             save_resume_state)
from minigpt2.train import EpochEnd, TrainConfig, keep_resume_state, lr_lambda, param_groups, restore, train
from tests.app.test_finetune import RESUME_ARGS, assert_same_run, finetune_args, straight  # noqa: F401 (a fixture)
from tests.contract.test_contract_train import Recorder, Toy, collate, examples
from tests.minigpt2.test_train import one_thread  # noqa: F401  (autouse fixture: one torch thread)


class Noisy(Toy):
    """The toy regression with dropout and a loss that draws from Python's and NumPy's RNGs (a Gaussian, whose
    second value NumPy caches): every RNG stream the resume state holds changes the losses when it is lost."""

    def __init__(self) -> None:
        super().__init__()
        self.drop.p = 0.3

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = super().forward(batch)
        return loss * (1.0 + 0.1 * random.random()) * (1.0 + 0.1 * float(np.random.standard_normal()))


class Scripted:
    """A dev evaluation scoring epoch e with scores[e - 1] (`first`: the epoch of the first call), drawing one
    Gaussian from NumPy's RNG (an odd number of draws per epoch leaves a cached value in the saved state)."""

    def __init__(self, scores: list[float], first: int = 1) -> None:
        self.scores, self.epoch = scores, first

    def __call__(self, module: nn.Module) -> dict[str, float]:
        np.random.standard_normal()
        score = self.scores[self.epoch - 1]
        self.epoch += 1
        # a dev figure that depends on the weights: a resumed run with other weights reports another dev_loss
        return {"acc": score, "dev_loss": float(sum(p.detach().double().square().sum() for p in module.parameters()))}


class Seen:
    """A callback recording each epoch's `improved` mark and best epoch as it is handed over."""

    def __init__(self) -> None:
        self.marks: list[tuple[int, bool, int]] = []

    def __call__(self, end: EpochEnd) -> None:
        self.marks.append((end.epoch, end.improved, end.metrics["best"]["epoch"]))


ROW_KEYS = ("epoch", "train_loss", "lr", "acc", "dev_loss")  # what an epoch computes (not how long it took)


class Clock:
    """minigpt2.train's clock, one second later at every read: the timings of two runs that read it alike are
    equal, and `span` is the time from the run's first read to its last."""

    def __init__(self) -> None:
        self.reads: list[float] = []

    def time(self) -> float:
        self.reads.append(1000.0 + len(self.reads))
        return self.reads[-1]

    @property
    def span(self) -> float:
        return self.reads[-1] - self.reads[0]


def fit(folder, scores, resume=False, stop=None, first=1, module=None, **cfg):
    """One `train` call of the noisy toy on its own clock, with its resume state kept in folder/last; returns the
    module, the batches it trained on, the metrics, the marks the callbacks saw, the RNG states it ended with and
    the time it spent by its clock."""
    module = module or Noisy()
    rec, seen, clock = Recorder(), Seen(), Clock()
    with mock.patch.object(train_module, "time", clock):
        metrics = train(module, examples(), rec, TrainConfig(progress=False, stop_after_epoch=stop, **cfg),
                        evaluate=Scripted(scores, first), metric="acc",
                        callbacks=[keep_resume_state(folder / "last"), seen],
                        resume_from=folder / "last" if resume else None)
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state())
    return module, rec.batches, metrics, seen.marks, rng, clock.span


def rows(metrics):
    return [{k: r[k] for k in ROW_KEYS} for r in metrics["epochs"]]


def same_rng(a, b) -> bool:
    (ta, pa, na), (tb, pb, nb) = a, b
    return (torch.equal(ta, tb) and pa == pb and na[0] == nb[0] and np.array_equal(na[1], nb[1])
            and tuple(na[2:]) == tuple(nb[2:]))


def state_of(folder):
    tensors, meta = read_safetensors(folder / "last" / STATE_FILE)
    return tensors, json.loads(meta["trainer"])


def assert_resumed_equals_whole(tmp_path, n, k, scores, **cfg):
    whole, whole_batches, mw, marks_w, rng_w, spent = fit(tmp_path / "whole", scores, **cfg)
    assert mw["wall_s"] == spent and "resumed_from_epoch" not in mw
    _, cut_batches, mc, marks_c, _, _ = fit(tmp_path / "cut", scores, stop=k, **cfg)
    per_epoch = len(whole_batches) // n
    assert mc["stopped_after_epoch"] == k and [r["epoch"] for r in mc["epochs"]] == list(range(1, k + 1))
    assert cut_batches == whole_batches[:k * per_epoch] and marks_c == marks_w[:k]
    saved_wall = state_of(tmp_path / "cut")[1]["wall_s"]

    resumed, batches, mr, marks_r, rng_r, took = fit(tmp_path / "cut", scores, resume=True, first=k + 1, **cfg)
    assert mr["resumed_from_epoch"] == k and "stopped_after_epoch" not in mr
    assert batches == whole_batches[k * per_epoch:]  # the epochs after k, each in the uninterrupted order
    assert rows(mr) == rows(mw)  # losses, LR and dev figures of every epoch, bit for bit
    assert mr["epochs"] == mw["epochs"]  # and the timings, on a clock read alike
    assert mr["best"] == mw["best"] and marks_r == marks_w[k:]  # the best so far carried over
    for (name, p), q in zip(whole.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name
    assert same_rng(rng_r, rng_w)
    tw, sw = state_of(tmp_path / "whole")
    tr, sr = state_of(tmp_path / "cut")
    assert tw.keys() == tr.keys() and all(torch.equal(tw[key], tr[key]) for key in tw)  # weights, moments, RNG
    assert sr == sw  # epoch, optimizer groups, schedule position, Python/NumPy RNG, history, best, time spent
    assert mr["wall_s"] == saved_wall + took == mw["wall_s"]  # the time spent before the stop, and this call's


def test_the_best_epoch_before_the_stop_stays_the_best(tmp_path):
    """The best so far is part of the state: epoch 1 scored highest, so the later, lower epochs never improve.
    (One case of the property below, first: a mutant caught here is not shrunk by hypothesis.)"""
    assert_resumed_equals_whole(tmp_path, 4, 1, [0.9, 0.5, 0.7, 0.6], epochs=4, batch_size=4, lr=0.05, warmup=0.2)
    _, _, metrics, marks, _, _ = fit(tmp_path / "again", [0.9, 0.5, 0.7, 0.6], epochs=4, batch_size=4, lr=0.05)
    assert metrics["best"]["epoch"] == 1 and [m[1] for m in marks] == [True, False, False, False]


@hsettings(max_examples=10, deadline=None, derandomize=True,  # the same cases every time (a mutant run too)
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(2, 4), data=st.data(), grad_accum=st.integers(1, 4),
       schedule=st.sampled_from(("linear", "cosine", "constant")), warmup=st.sampled_from((0.0, 0.2, 0.5)),
       seed=st.integers(0, 2**40))
def test_a_run_stopped_after_any_epoch_resumes_to_the_uninterrupted_run(tmp_path_factory, n, data, grad_accum,
                                                                        schedule, warmup, seed):
    k = data.draw(st.integers(1, n - 1), label="k")
    scores = data.draw(st.lists(st.sampled_from((0.1, 0.5, 0.9)), min_size=n, max_size=n), label="scores")
    assert_resumed_equals_whole(tmp_path_factory.mktemp("run"), n, k, scores, epochs=n, batch_size=4, lr=0.05,
                                grad_accum=grad_accum, warmup=warmup, schedule=schedule, seed=seed, weight_decay=0.1)


def test_stopping_at_the_last_epoch_or_beyond_finishes_the_run(tmp_path):
    """--stop-after-epoch n (or more) of an n-epoch run is no interruption: the run finishes, nothing is marked."""
    for stop in (3, 4):
        _, batches, metrics, _, _, _ = fit(tmp_path / str(stop), [0.1] * 3, stop=stop, epochs=3, batch_size=4)
        assert "stopped_after_epoch" not in metrics and len(metrics["epochs"]) == 3 and len(batches) == 18


def test_a_fresh_run_spends_only_its_own_time_and_says_where_it_starts(tmp_path, capsys):
    """Without a state (`resume_from` None, or a folder with none yet) the run starts at epoch 1 from no time
    spent, and says so when it was asked to resume."""
    _, batches, metrics, _, _, took = fit(tmp_path, [0.1, 0.2], epochs=2, batch_size=4)
    assert len(batches) == 12 and metrics["wall_s"] == took and "resumed_from_epoch" not in metrics
    assert capsys.readouterr().out.count("resume:") == 0
    _, batches, metrics, _, _, took = fit(tmp_path / "fresh", [0.1, 0.2], resume=True, epochs=2, batch_size=4)
    assert len(batches) == 12 and metrics["wall_s"] == took and "resumed_from_epoch" not in metrics
    out = capsys.readouterr().out
    assert f"resume: no saved state in {tmp_path / 'fresh' / 'last'}; starting from epoch 1" in out


# ------------------------------------------------------------------------------------------- the state file

def setup(module: nn.Module, lr: float = 0.05):
    optimizer = torch.optim.AdamW(param_groups(module, 0.1), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(10, 0.2, "linear"))
    return optimizer, scheduler


def stepped(module: nn.Module, steps: int = 3):
    """A module, optimizer and schedule after a few AdamW steps (moments and schedule position not at zero)."""
    optimizer, scheduler = setup(module)
    for i in range(steps):
        module(collate(examples()[i * 4:i * 4 + 4])).backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return optimizer, scheduler


HISTORY = {"history": [{"epoch": 1, "acc": 0.5}], "best": {"epoch": 1, "acc": 0.5}, "wall_s": 12.5}


def test_the_state_restores_weights_moments_schedule_and_every_rng(tmp_path):
    module = Toy()
    module.gain.requires_grad_(False)  # a frozen tensor is no part of the state
    optimizer, scheduler = stepped(module)
    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    np.random.standard_normal()  # one Gaussian drawn: NumPy caches the second of its pair
    save_resume_state(tmp_path, module, optimizer, scheduler, 2, HISTORY)
    after_save = (torch.rand(4), random.random(), np.random.standard_normal(), np.random.rand())
    tensors, _ = read_safetensors(tmp_path / STATE_FILE)
    assert {k for k in tensors if k.startswith("model.")} == {"model.emb.weight", "model.lin.weight", "model.lin.bias"}
    assert sum(k.startswith("optim.") for k in tensors) == 3 * 3  # step, exp_avg, exp_avg_sq of 3 tensors

    other = Toy()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    other.gain.requires_grad_(False)
    frozen = other.gain.detach().clone()
    opt2, sched2 = setup(other, lr=0.7)
    torch.manual_seed(6), random.seed(6), np.random.seed(6)
    trainer = load_resume_state(tmp_path, other, opt2, sched2)
    again = (torch.rand(4), random.random(), np.random.standard_normal(), np.random.rand())
    assert torch.equal(again[0], after_save[0]) and again[1:] == after_save[1:]
    assert trainer["epoch"] == 2 and {k: trainer[k] for k in HISTORY} == HISTORY
    for (name, p), q in zip(module.named_parameters(), other.parameters()):
        if name != "gain":
            assert torch.equal(p, q), name
    assert torch.equal(other.gain, frozen)  # not in the state: left as it was
    sa, sb = optimizer.state_dict(), opt2.state_dict()
    as_json = lambda groups: json.loads(json.dumps(groups))  # noqa: E731  (the betas come back as a list)
    assert as_json(sb["param_groups"]) == as_json(sa["param_groups"])  # lr, initial_lr, decay, betas by group
    for idx in sa["state"]:
        assert sa["state"][idx].keys() == sb["state"][idx].keys()
        assert all(torch.equal(torch.as_tensor(sa["state"][idx][k]), torch.as_tensor(sb["state"][idx][k]))
                   for k in sa["state"][idx])
    assert sched2.state_dict() == scheduler.state_dict() and sched2.get_last_lr() == scheduler.get_last_lr()


class FakeCuda:
    """torch.cuda's RNG functions on a machine with `n` GPUs, each with its own state (no GPU needed)."""

    def __init__(self, monkeypatch, n: int) -> None:
        self.states = [torch.full((8,), i, dtype=torch.uint8) for i in range(n)]
        self.set: list[torch.Tensor] | None = None
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(self.states))
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: list(self.states))
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: setattr(self, "set", list(states)))


@pytest.mark.parametrize("saved,now", [(12, 12), (12, 3), (2, 4)])
def test_each_gpu_gets_back_its_own_rng_state(tmp_path, monkeypatch, saved, now):
    """GPU i's state goes back to GPU i (also past GPU 9: 10 sorts before 2 as text); where fewer GPUs are
    visible, the first ones get theirs."""
    module = Toy()
    optimizer, scheduler = setup(module)
    cuda = FakeCuda(monkeypatch, saved)
    save_resume_state(tmp_path, module, optimizer, scheduler, 1, HISTORY)
    tensors, _ = read_safetensors(tmp_path / STATE_FILE)
    assert all(torch.equal(tensors[f"rng.cuda.{i}"], cuda.states[i]) for i in range(saved))
    cuda.states = [torch.zeros(8, dtype=torch.uint8)] * now
    load_resume_state(tmp_path, module, *setup(module))
    assert [int(s[0]) for s in cuda.set] == list(range(min(saved, now)))


def test_without_a_gpu_a_gpu_state_is_left_alone(tmp_path, monkeypatch):
    module = Toy()
    optimizer, scheduler = setup(module)
    FakeCuda(monkeypatch, 2)
    save_resume_state(tmp_path, module, optimizer, scheduler, 1, HISTORY)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("no GPU to set"))
    load_resume_state(tmp_path, module, *setup(module))


def saved_state(tmp_path):
    module = Toy()
    optimizer, scheduler = stepped(module, 1)
    save_resume_state(tmp_path, module, optimizer, scheduler, 1, HISTORY)
    return read_safetensors(tmp_path / STATE_FILE)


def rewrite(tmp_path, tensors, meta):
    save_file(tensors, str(tmp_path / STATE_FILE), metadata=meta)


def trainer_with(tmp_path, **changes):
    tensors, meta = saved_state(tmp_path)
    trainer = {**json.loads(meta["trainer"]), **changes}
    rewrite(tmp_path, tensors, {"trainer": json.dumps({k: v for k, v in trainer.items() if v is not ...})})


AFRESH = "start the run afresh, overwriting the folder"


def refused(read, folder, message: str) -> None:
    """`read(folder)` raises a ResumeStateError whose one line is `message` (the file, then what is wrong)."""
    with pytest.raises(ResumeStateError) as e:
        read(folder)
    assert str(e.value) == f"{folder / STATE_FILE}: {message}"


def load_into_toy(folder):
    return load_resume_state(folder, Toy(), *setup(Toy()))


@pytest.mark.parametrize("change,error", [
    ({"epoch": "1"}, "TypeError: epoch, history or wall_s of the wrong type"),
    ({"history": {}}, "TypeError: epoch, history or wall_s of the wrong type"),
    ({"wall_s": "3"}, "TypeError: epoch, history or wall_s of the wrong type"),
    ({"wall_s": None}, "TypeError: epoch, history or wall_s of the wrong type"),
    ({"scheduler": {"last_epoch": 1}}, "KeyError: 'lr_lambdas'"),
    ({"rng_python": [3, [1, 2], None, 4]}, "ValueError: too many values to unpack (expected 3)"),
    ({"rng_numpy": ["MT19937", [1, 2], 0, 0, 0.0]}, "IndexError: "),  # a key array of 2 words, not 624
])
def test_a_state_that_parses_but_does_not_fit_is_one_line_naming_the_file(tmp_path, change, error):
    trainer_with(tmp_path, **change)
    check_resume_state(tmp_path)  # the metadata is whole: the misfit shows when the state is loaded
    with pytest.raises(ResumeStateError) as e:
        load_into_toy(tmp_path)
    head = f"{tmp_path / STATE_FILE}: the saved optimizer, schedule or random state does not fit this run ("
    message = str(e.value)
    assert message.startswith(head + error) and message.endswith(f"); {AFRESH}") and "\n" not in message


@pytest.mark.parametrize("key", ["epoch", "param_groups", "scheduler", "rng_python", "rng_numpy", "history", "best",
                                 "wall_s"])
def test_a_state_missing_any_trainer_key_is_refused_before_loading(tmp_path, key):
    trainer_with(tmp_path, **{key: ...})
    for read in (check_resume_state, load_into_toy):
        refused(read, tmp_path, "its trainer state is not an object with best, epoch, history, param_groups, "
                                f"rng_numpy, rng_python, scheduler, wall_s; the file is damaged: {AFRESH}")


@pytest.mark.parametrize("meta,message", [
    ({}, f"no trainer state in its metadata (written by an older version?); {AFRESH}"),
    ({"other": "{}"}, f"no trainer state in its metadata (written by an older version?); {AFRESH}"),
    ({"trainer": "{not json"}, "its trainer state is not valid JSON (Expecting property name enclosed in double "
                               "quotes: line 1 column 2 (char 1)); the file is damaged: start the run again with "
                               "--overwrite"),
    ({"trainer": "[1, 2]"}, "its trainer state is not an object with best, epoch, history, param_groups, rng_numpy, "
                            f"rng_python, scheduler, wall_s; the file is damaged: {AFRESH}"),
])
def test_a_damaged_trainer_record_is_refused_naming_the_file(tmp_path, meta, message):
    tensors, _ = saved_state(tmp_path)
    rewrite(tmp_path, tensors, meta)
    for read in (check_resume_state, load_into_toy):
        refused(read, tmp_path, message)


def test_an_unreadable_state_file_is_refused_and_a_missing_one_is_no_state(tmp_path):
    check_resume_state(tmp_path)  # nothing saved yet: nothing to refuse
    assert not has_resume_state(tmp_path)
    (tmp_path / STATE_FILE).mkdir()
    assert not has_resume_state(tmp_path)  # a folder by that name is no state
    check_resume_state(tmp_path)
    (tmp_path / STATE_FILE).rmdir()
    (tmp_path / STATE_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    assert has_resume_state(tmp_path)
    with pytest.raises(ResumeStateError) as e:
        check_resume_state(tmp_path)
    message = str(e.value)
    assert message.startswith(f"{tmp_path / STATE_FILE}: not a readable resume state (") and message.endswith(
        f"); {AFRESH}") and "\n" not in message


def test_a_state_of_other_trainable_weights_names_the_missing_tensor(tmp_path):
    saved_state(tmp_path)
    bigger = Toy()
    bigger.extra = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    refused(lambda f: load_resume_state(f, bigger, *setup(bigger)), tmp_path,
            "no tensor 'model.extra'; was the run started with other settings (mode, LoRA, ...)?")


def test_a_state_is_strict_json_or_not_written(tmp_path):
    """A NaN or infinity in the history cannot be written as strict JSON: refused, and no state file is left."""
    module = Toy()
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            save_resume_state(tmp_path, module, *setup(module), 1, {**HISTORY, "best": {"epoch": 1, "acc": bad}})
        assert not has_resume_state(tmp_path)


def test_each_rank_but_the_first_continues_on_its_own_seeded_stream(tmp_path):
    """Rank 0 gets back the saved RNG; every other rank loads it, then reseeds from the seed, its rank and the
    epoch: the same stream on every resume of that epoch, another one on each rank."""
    module = Toy()
    optimizer, scheduler = stepped(module, 1)
    torch.manual_seed(1)
    save_resume_state(tmp_path, module, optimizer, scheduler, 3, HISTORY)
    saved = torch.rand(3)
    cfg = TrainConfig(seed=7)
    draws = {}
    for rank in (0, 1, 2):
        for again in (0, 1):
            torch.manual_seed(100 + again)
            metrics = {"epochs": [], "best": None}
            start, wall = restore(tmp_path, module, *setup(module), metrics, cfg, Dist(rank=rank, world=3))
            assert (start, wall, metrics["resumed_from_epoch"]) == (4, 12.5, 3)
            assert metrics["epochs"] == HISTORY["history"] and metrics["best"] == HISTORY["best"]
            draws[rank, again] = torch.rand(3)
    assert torch.equal(draws[0, 0], saved) and torch.equal(draws[0, 1], saved)
    assert torch.equal(draws[1, 0], draws[1, 1]) and torch.equal(draws[2, 0], draws[2, 1])
    assert not torch.equal(draws[1, 0], saved) and not torch.equal(draws[1, 0], draws[2, 0])
    torch.manual_seed(7 + 1 + 1000 * 3)
    assert torch.equal(draws[1, 0], torch.rand(3))


# --------------------------------------------------------------------------------------- the run folder


BASE = ["--task", "sst", "--model", "tiny", "--data-dir", "data", "--device", "cpu"]


def settings(*extra: str, out=None) -> RunSettings:
    return parse_settings(BASE + (["--out-dir", str(out)] if out else []) + list(extra))


def resuming(s: RunSettings) -> RunSettings:
    return replace(s, run=replace(s.run, resume=True))


def saved_run(run, s: RunSettings, metrics: bool = False, state: bool = False):
    """A run folder as finetune leaves it: config.json (settings + fingerprint), metrics.json after an epoch, and
    the resume state of that epoch."""
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run / "config.json", {**runfolder.settings_record(s), "fingerprint": {"settings": defining(s)}})
    if metrics:
        (run / "metrics.json").write_text("{}")
    if state:
        module = Toy()
        save_resume_state(run / "last", module, *setup(module), 1, HISTORY)
    return run


def raises(error: type, call, message: str) -> None:
    """`call()` raises `error` whose one line is exactly `message`."""
    with pytest.raises(error) as e:
        call()
    assert str(e.value) == message


def test_resume_needs_a_folder_that_holds_a_run_to_continue(tmp_path):
    run = tmp_path / "run"
    raises(RunFolderError, lambda: check_resumable(run), f"--resume --out-dir {run}: no such folder; check the path "
                                                         "(a fresh run is started without --resume)")
    run.mkdir()
    (run / "config.json").mkdir()  # not a file
    raises(RunFolderError, lambda: check_resumable(run), f"--resume --out-dir {run}: holds no run (config.json not "
                                                         "found); check the path, or start a fresh run without --resume")
    (run / "config.json").rmdir()
    saved_run(run, settings(out=run))
    check_resumable(run)  # stopped before its first epoch ended: nothing to lose, it starts from epoch 1
    (run / "metrics.json").write_text("{}")  # an epoch finished, and its state is gone
    raises(RunFolderError, lambda: check_resumable(run), f"--resume {run}: its resume state {run / 'last'} is missing "
                                                         "although the run finished an epoch; it cannot be continued: "
                                                         "start it again with --overwrite")
    saved_run(run, settings(out=run), metrics=True, state=True)
    check_resumable(run)
    (run / "last" / STATE_FILE).write_bytes(b"damaged")
    with pytest.raises(ResumeStateError, match=rf"^{run / 'last' / STATE_FILE}: not a readable resume state"):
        check_resumable(run)
    (run / "last" / STATE_FILE).unlink()
    (run / "last" / "other").mkdir()
    (run / "last" / "other" / STATE_FILE).write_bytes(b"damaged")  # the state is last/'s own, nowhere else
    with pytest.raises(RunFolderError, match="is missing although the run finished an epoch"):
        check_resumable(run)


def test_a_fresh_run_never_replaces_what_a_folder_holds_unless_told(tmp_path):
    """Without --overwrite a fresh run into a folder that holds a run is refused (--resume goes on with it); a
    folder whose config.json is not a run's is refused even with --overwrite; --overwrite removes what a run
    writes (a link as a link), and nothing else."""
    run = tmp_path / "run"
    fresh, overwrite = settings(out=run), settings("--overwrite", out=run)
    run.mkdir()
    (run / "full-model-sst-dev-out.csv").write_text("id,Predicted_Sentiment\n")  # a prediction, no run part
    (run / "notes.txt").write_text("mine")
    runfolder.prepare(run, fresh)
    assert sorted(p.name for p in run.iterdir()) == ["full-model-sst-dev-out.csv", "notes.txt"]
    (run / "config.json").write_text('{"n_layer": 2}')  # a model checkpoint's
    for s in (fresh, overwrite):
        raises(RunFolderError, lambda: runfolder.prepare(run, s),
               f"{run / 'config.json'}: not the config.json of a finetune run (a model checkpoint?); --out-dir {run} is "
               "not a run folder, and nothing in it is replaced: choose another --out-dir")
    saved_run(run, fresh, metrics=True, state=True)
    (run / "best").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "kept.txt").write_text("kept")
    (run / "quantized").symlink_to(elsewhere, target_is_directory=True)
    raises(RunFolderError, lambda: runfolder.prepare(run, fresh),
           f"{run} already holds a run; pass --resume to continue it, --overwrite to replace it, or choose another "
           "--out-dir")
    runfolder.prepare(run, resuming(fresh))
    assert sorted(p.name for p in run.iterdir()) == ["best", "config.json", "full-model-sst-dev-out.csv", "last",
                                                     "metrics.json", "notes.txt", "quantized"]
    runfolder.prepare(run, overwrite)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    assert (elsewhere / "kept.txt").read_text() == "kept"  # the link went, not what it pointed to


def test_resume_refuses_a_config_edited_after_the_run_started(tmp_path):
    """config.json's settings must still match its fingerprint; a setting added to the code since the run started
    (in the settings, not in the recorded fingerprint) is no edit."""
    run = tmp_path / "run"
    s = resuming(settings(out=run))
    saved_run(run, s)
    assert check_resume(run, s)["settings"] == s.to_dict()
    config = json.loads((run / "config.json").read_text())
    del config["fingerprint"]["settings"]["optim.lr"]  # recorded before lr was a setting: nothing to compare
    (run / "config.json").write_text(json.dumps(config))
    check_resume(run, s)
    config["fingerprint"]["settings"].update({"optim.lr": 0.5, "optim.seed": 3})
    (run / "config.json").write_text(json.dumps(config))
    raises(RunFolderError, lambda: check_resume(run, s),
           f"--resume {run}: {run / 'config.json'} was edited: its settings differ from its fingerprint (optim.lr: 0.5 "
           "-> 1e-05; optim.seed: 3 -> 11711); a run cannot be changed by editing its config.json: restore it, or "
           "start a new run")
    config["fingerprint"] = {"settings": "not a record"}  # nothing to compare with
    (run / "config.json").write_text(json.dumps(config))
    check_resume(run, s)


def test_resume_with_other_run_defining_settings_names_each_and_what_may_change(tmp_path):
    run = tmp_path / "run"
    saved_run(run, settings(out=run))
    now = resuming(settings("--lr", "0.5", "--top-p", "0.5", "--threads", "2", out=run))
    with pytest.raises(RunFolderError) as e:
        check_resume(run, now)
    message = str(e.value)
    assert message.startswith(f"--resume {run}: run-defining settings differ: eval.sampling.top_p: 0.9 -> 0.5; "
                              "optim.lr: 1e-05 -> 0.5. Only ")
    assert message.endswith(", ".join(cli.may_change_on_resume()) + " may change on resume")
    check_resume(run, resuming(settings("--threads", "2", "--no-progress", "--eval-batch-size", "3", out=run)))


@pytest.mark.parametrize("change,message", [
    ({"base_weights": {"file": "b.safetensors", "sha256": "2"}}, "base weights a.safetensors sha256 1 -> "
                                                                "b.safetensors sha256 2"),
    ({"base_weights": None}, "base weights a.safetensors sha256 1 -> None sha256 None"),
    ({"data": {"x.csv": "1", "y.csv": "2"}}, "data y.csv: '1' -> '2'"),
    ({"data": {"x.csv": "1"}}, "data y.csv: '1' -> None"),
    ({"data": {"x.csv": "1", "y.csv": "1", "z.csv": "3"}}, "data z.csv: None -> '3'"),
    ({"base_weights": None, "data": {"x.csv": "2", "y.csv": "1"}},
     "base weights a.safetensors sha256 1 -> None sha256 None; data x.csv: '1' -> '2'"),
])
def test_resume_refuses_other_inputs_naming_each(tmp_path, change, message):
    recorded = {"base_weights": {"file": "a.safetensors", "sha256": "1"}, "data": {"x.csv": "1", "y.csv": "1"}}
    check_inputs(tmp_path, recorded, {**recorded, "base_weights": {"file": "moved.safetensors", "sha256": "1"}})
    check_inputs(tmp_path, {"base_weights": None, "data": {}}, {"base_weights": None})  # a tiny model, no file
    check_inputs(tmp_path, {"base_weights": None}, {"base_weights": None, "data": {}})
    with pytest.raises(RunFolderError, match=rf"^--resume {tmp_path}: the run's inputs changed: {message}$"):
        check_inputs(tmp_path, recorded, {**recorded, **change})


def test_resume_refuses_a_run_that_recorded_no_fingerprint(tmp_path):
    now = {"base_weights": None, "data": {"x.csv": "1"}}
    with pytest.raises(RunFolderError) as e:
        check_inputs(tmp_path, {}, now)
    assert str(e.value) == (f"--resume {tmp_path}: its config.json records no fingerprint of the run's inputs (base "
                            "weights, data files), so they cannot be checked against today's; start the run afresh "
                            "with --overwrite or in another --out-dir")


def test_the_saved_settings_of_a_run_folder_and_a_line_naming_it_when_they_do_not_fit(tmp_path):
    run = tmp_path / "run"
    s = settings("--lr", "0.25", "--epochs", "3", out=run)
    saved_run(run, s)
    assert saved_settings(run) == s
    config = json.loads((run / "config.json").read_text())
    config["settings"]["optim"]["momentum"] = 0.9
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(SettingsError, match=rf"^{run / 'config.json'}: run settings do not fit .*'momentum'"):
        saved_settings(run)


# ----------------------------------------------------------------------------- --resume --out-dir RUN alone

def test_a_command_line_without_resume_is_no_resume_and_a_malformed_flag_is_left_to_the_parser():
    assert cli.resume_options(BASE + ["--out-dir", "r"]) is None
    assert cli.resume_options(["--out-dir", "r", "--epochs", "many", "--resume"]) is None  # argparse's own error
    assert cli.resume_options(["--resume", "--out-dir", "r", "--threads", "2", "--top-p", "0.5", "--no-progress"]
                              ) == {"run.resume": True, "run.out_dir": "r", "hardware.threads": 2,
                                    "eval.sampling.top_p": 0.5, "optim.progress": False}


def test_help_beside_resume_is_finetunes_whole_help(capsys):
    """`--resume ... --help` prints finetune's own help (with the description given), not the quiet parser's
    that only looks for --resume."""
    with pytest.raises(SystemExit) as e:
        cli.resume_options(["--resume", "--out-dir", "r", "--help"], description="Continue a run.")
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage: python -m minigpt2.finetune ")
    assert "Continue a run." in out and "--settings FILE.json" in out


WATCHED = {"optim.progress": False, "optim.stop_after_epoch": 5, "hardware.threads": 3, "hardware.device": "cpu",
           "hardware.fetch_timeout": 9.0, "eval.batch_size": 2, "optim.compile": True, "paths.data_dir": "elsewhere",
           "paths.tokenizer_dir": "tok", "paths.offline": True, "run.name": "n2"}


def test_a_resume_takes_the_saved_settings_and_the_flags_that_may_change(tmp_path):
    """Each setting a resume may change takes the given value; the others keep the saved ones; the run resumes,
    overwrites nothing and stops only where this command line says."""
    saved = settings("--epochs", "4", "--lr", "0.25", "--stop-after-epoch", "1", "--name", "n1", out=tmp_path)
    assert cli.resumed_settings(saved, {}) == resuming(
        settings("--epochs", "4", "--lr", "0.25", "--name", "n1", out=tmp_path))
    now = cli.resumed_settings(saved, {"run.resume": True, "run.out_dir": str(tmp_path), **WATCHED})
    flat = {p: cli._at(now, p) for p in WATCHED}
    assert flat == WATCHED and now.run.resume and not now.run.overwrite
    assert defining(now) == defining(saved) and now.optim.epochs == 4 and now.optim.lr == 0.25


@pytest.mark.parametrize("options", [{"optim.lr": 0.25, "optim.epochs": 4}, {"data.task": "sst", "model.mode":
                                                                              "full-model"},
                                     {"optim.seed": 11711, "hardware.plain": False, "precision.qaft": False}])
def test_a_defining_flag_that_repeats_the_saved_value_is_accepted(tmp_path, options):
    saved = settings("--epochs", "4", "--lr", "0.25", out=tmp_path)
    assert cli.resumed_settings(saved, options) == resuming(saved)


def test_defining_flags_that_differ_are_one_line_naming_each_with_the_runs_value(tmp_path):
    saved = settings("--epochs", "4", out=tmp_path)
    with pytest.raises(SettingsError) as e:
        cli.resumed_settings(saved, {"optim.epochs": 5, "hardware.threads": 2, "hardware.plain": True,
                                     "model.lora.rank": 4})
    may = ", ".join(dict.fromkeys(cli._flag_of_path(p) for p in cli.may_change_on_resume()
                                  if p not in ("run.resume", "run.overwrite")))
    assert not {"--resume", "--overwrite"} & set(may.split(", ")) and "--threads" in may.split(", ")
    assert str(e.value) == ("--resume continues the run in --out-dir with the settings saved in its config.json; "
                            "--epochs 5 (the run's: 4), --plain (the run's: False), --lora-rank 4 (the run's: None) "
                            f"would change what it computes. Only {may} may change on resume; start a new run "
                            "(another --out-dir) for other settings")


def test_a_resume_checks_what_its_flags_name_here(tmp_path):
    saved = settings(out=tmp_path)
    with pytest.raises(SettingsError, match=r"^--test-references .*nowhere.csv: file not found"):
        cli.resumed_settings(saved, {"data.test_references": str(tmp_path / "nowhere.csv")})
    with pytest.raises(SettingsError, match=r"^--threads 0: expected an integer >= 1"):
        cli.resumed_settings(saved, {"hardware.threads": 0})


def test_parse_settings_checks_the_folder_before_reading_it(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RunFolderError, match=rf"^--resume --out-dir {run}: no such folder"):
        parse_settings(["--resume", "--out-dir", str(run)])
    saved_run(run, settings("--epochs", "4", "--stop-after-epoch", "2", out=run), metrics=True, state=True)
    now = parse_settings(["--resume", "--out-dir", str(run), "--threads", "2"])
    assert now == resuming(settings("--epochs", "4", "--threads", "2", out=run))


# ------------------------------------------------------------------------------------------ finetune's part

def test_a_resumed_run_reports_the_base_likelihood_it_measured_when_it_started(tmp_path, monkeypatch):
    """heldout-nll-base.json is measured once, before any step, on the run's own data and test references; a resume
    reads it back (the model it was measured on is gone by then), and a fresh run (or a resume that finds none)
    measures and writes it."""
    measured: list[tuple] = []
    monkeypatch.setattr(finetune, "heldout_measures", lambda *a: measured.append(a) or {"dev": len(measured)})
    refs = tmp_path / "refs.txt"
    refs.write_text("")
    task, module, splits, how, tok = "task", nn.Linear(1, 1), {"dev": []}, "how", "tok"
    s = settings("--max-train", "3", "--data-dir", str(tmp_path / "d"), out=tmp_path)
    call = lambda s: finetune.base_heldout_measures(task, module, splits, s, how, tok,  # noqa: E731
                                                    torch.device("cpu"), tmp_path)
    assert call(resuming(s)) == {"dev": 1}  # a resume that finds no file: measured now
    assert call(settings("--test-references", str(refs), "--data-dir", str(tmp_path / "d"))) == {"dev": 2}
    assert json.loads((tmp_path / runfolder.HELDOUT_BASE_FILE).read_text()) == {"dev": 2}  # a fresh run measures
    assert measured == [(task, module, splits, how, tok, torch.device("cpu"), tmp_path / "d", None),
                        (task, module, splits, how, tok, torch.device("cpu"), tmp_path / "d", refs)]
    (tmp_path / runfolder.HELDOUT_BASE_FILE).write_text('{"dev": 7}')
    assert call(resuming(s)) == {"dev": 7} and len(measured) == 2


def test_a_resumed_run_keeps_the_time_it_started(tmp_path):
    s = settings(out=tmp_path)
    fingerprint = {"settings": defining(s)}
    finetune.write_run_config(tmp_path, s, Dist(), fingerprint, 64, None)
    started = json.loads((tmp_path / "config.json").read_text())["started"]
    finetune.write_run_config(tmp_path, resuming(s), Dist(), fingerprint, 64, {"started": "2001-02-03T04:05:06+00:00"})
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["started"] == "2001-02-03T04:05:06+00:00" and started != config["started"]
    assert started[:2] == "20" and started.endswith("+00:00") and len(started) == 25  # UTC, to the second
    assert config["settings"] == resuming(s).to_dict() and config["fingerprint"] == fingerprint
    assert (config["run_dir"], config["world_size"], config["device"], config["max_length"], config["torch"]) == (
        str(tmp_path), 1, "cpu", 64, torch.__version__)


def test_each_epoch_writes_the_resume_state_and_the_metrics_of_the_run_so_far(tmp_path):
    """finetune's end-of-epoch callbacks: last/ holds the state of the epoch, metrics.json the run's info beside the
    figures so far (what a resume and a report read back when the run stops there)."""
    s = settings(out=tmp_path)
    saved_run(tmp_path, s)
    module = Toy()
    optimizer, scheduler = stepped(module, 1)
    metrics = {"metric": "acc", "epochs": [{"epoch": 1, "acc": 0.5}], "best": {"epoch": 1, "acc": 0.5},
               "wall_s": 3.0}
    for callback in finetune.epoch_callbacks(s, tmp_path, {"task": "sst", "data": {"train": 9}}):
        callback(EpochEnd(1, metrics["epochs"][0], metrics, False, module, optimizer, scheduler))
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"task": "sst", "data": {"train": 9}, **metrics}
    trainer = state_of(tmp_path)[1]
    assert (trainer["epoch"], trainer["history"], trainer["best"], trainer["wall_s"]) == (
        1, metrics["epochs"], metrics["best"], 3.0)
    assert not (tmp_path / "best").exists()  # not an improved epoch


def tiny_run_folder(run, fingerprint: dict | None, **changes) -> RunSettings:
    """A folder that holds the config.json of a 1-epoch tiny sst run on the tiny data and nothing else (stopped before
    its first epoch ended), its fingerprint replaced by `fingerprint` (None: no fingerprint)."""
    s = parse_settings(finetune_args("sst", run, "--epochs", "1"))
    saved_run(run, s)
    config = json.loads((run / "config.json").read_text())
    if fingerprint is None:
        del config["fingerprint"]
    else:
        config["fingerprint"] = fingerprint
    (run / "config.json").write_text(json.dumps(config))
    return s


@pytest.mark.parametrize("recorded", ["other data", "no fingerprint"])
def test_resuming_onto_other_inputs_is_one_line_naming_the_folder_and_the_file(tmp_path, recorded):
    """What the run reads is compared with what config.json recorded, before anything is written; a config.json
    without a fingerprint recorded no inputs to compare with, and the line says so."""
    run = tmp_path / "run"
    tiny_run_folder(run, {"settings": defining(parse_settings(finetune_args("sst", run, "--epochs", "1"))),
                              "data": {"ids-sst-train.csv": "0" * 64}} if recorded == "other data" else None)
    before = (run / "config.json").read_text()
    with pytest.raises(SystemExit) as e:
        finetune.main(["--resume", "--out-dir", str(run)])
    line = str(e.value.code)
    if recorded == "other data":
        assert line.startswith(f"error: --resume {run}: the run's inputs changed: data ids-sst-dev.csv: None -> '")
        assert "data ids-sst-train.csv: '" + "0" * 64 + "' -> '" in line
    else:
        assert line.startswith(f"error: --resume {run}: its config.json records no fingerprint of the run's inputs")
    assert "\n" not in line and (run / "config.json").read_text() == before
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]


def test_ctrl_c_says_how_to_continue_a_run_and_that_nothing_was_saved_before_it_started(tmp_path, monkeypatch, capsys):
    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(finetune, "_run", interrupted)
    run = tmp_path / "run"
    for saved, message in ((False, f"interrupted before the run started; nothing was saved in {run}"),
                           (True, f"interrupted; continue with --resume --out-dir {run}")):
        if saved:
            tiny_run_folder(run, None)
        with pytest.raises(SystemExit) as e:
            finetune.main(finetune_args("sst", run, "--epochs", "1", *(["--resume"] if saved else [])))
        assert e.value.code == 130 and capsys.readouterr().err.strip().splitlines()[-1] == message


def test_the_command_line_is_read_from_sys_argv_when_none_is_given(tmp_path, monkeypatch):
    run = tmp_path / "run"
    saved = tiny_run_folder(run, None)
    monkeypatch.setattr(sys, "argv", ["finetune", "--resume", "--out-dir", str(run), "--threads", "2"])
    now = parse_settings()
    assert now.run.resume and now.hardware.threads == 2 and defining(now) == defining(saved)


# ------------------------------------------------------------------------------- finetune, end to end (tiny)



def test_a_run_stopped_after_its_second_epoch_or_twice_ends_like_the_uninterrupted_one(straight,  # noqa: F811
                                                                                     tmp_path, capsys):
    """The 3-epoch tiny sst run stopped after epoch 2, or after epoch 1 and then again after epoch 2 (a resumed run
    interrupted in turn), resumed with the run folder alone: the same losses, figures, predictions and state."""
    late = tmp_path / "late"
    finetune.main(finetune_args("sst", late, *RESUME_ARGS, "--stop-after-epoch", "2"))
    assert "resume:" not in capsys.readouterr().out  # a fresh run looks for no resume state
    config = json.loads((late / "config.json").read_text())
    config["started"] = "2001-02-03T04:05:06+00:00"  # not a setting: no edit a resume refuses
    (late / "config.json").write_text(json.dumps(config))
    finetune.main(["--resume", "--out-dir", str(late)])
    assert_same_run(straight, late, resumed_from=2)
    assert json.loads((late / "config.json").read_text())["started"] == "2001-02-03T04:05:06+00:00"

    twice = tmp_path / "twice"
    finetune.main(finetune_args("sst", twice, *RESUME_ARGS, "--stop-after-epoch", "1"))
    finetune.main(["--resume", "--out-dir", str(twice), "--stop-after-epoch", "2"])
    metrics = json.loads((twice / "metrics.json").read_text())
    assert (metrics["resumed_from_epoch"], metrics["stopped_after_epoch"], len(metrics["epochs"])) == (1, 2, 2)
    finetune.main(["--resume", "--out-dir", str(twice)])
    assert_same_run(straight, twice, resumed_from=2)


# ------------------------------------------------------------------------------ the layouts before schema 2

OLDER = {  # the "settings" of a config.json of the first layout: an fp32 sst run
    "data": {"task": "sst", "data_dir": "d", "tokenizer_dir": "t", "offline": True, "max_train": None,
             "max_eval": None, "max_length": None, "synthetic": None, "test_references": None},
    "model": {"model": "tiny", "mode": "full-model", "method": "full", "lora": None},
    "optim": {"epochs": 3, "batch_size": 4, "grad_accum": 1, "lr": 0.001, "weight_decay": 0.01, "warmup": 0.05,
              "schedule": "linear", "grad_clip": 1.0, "seed": 7},
    "precision": {"precision": "fp32", "qaft": False, "group_size": 128, "quant_activations": False,
                  "quant_embeddings": True},
    "eval": {"batch_size": 8, "sampling": {"temperature": 1.2, "top_p": 0.9, "max_new_tokens": 4, "seed": 7}},
    "hardware": {"device": "cpu", "autocast": "bf16", "compile": True, "progress": False, "threads": 2,
                 "fetch_timeout": 60.0},
    "run": {"out_dir": "x", "name": None, "resume": False, "overwrite": False, "stop_after_epoch": 2},
}


def test_the_first_layout_reads_back_with_every_setting_in_its_place():
    old = copy.deepcopy(OLDER)
    s = RunSettings.from_dict(old)
    assert old == OLDER  # the caller's record is read, never changed
    assert RunSettings.from_dict(old) == s
    assert (s.optim.compile, s.optim.autocast, s.optim.progress, s.optim.stop_after_epoch) == (True, "bf16", False, 2)
    assert (s.hardware.device, s.hardware.threads, s.hardware.fetch_timeout) == ("cpu", 2, 60.0)
    assert (s.paths.data_dir, s.paths.tokenizer_dir, s.paths.offline) == ("d", "t", True)
    assert (s.precision.format, s.precision.qaft, s.precision.quant) == ("fp32", False, None)
    assert s.eval.samples == 1 and s.optim.epochs == 3 and s.optim.seed == 7  # one sample per prompt, as then


def test_a_first_layout_fake_quant_run_gets_the_defaults_of_what_it_did_not_record():
    old = {**OLDER, "precision": {"precision": "int8", "qaft": True}}
    q = RunSettings.from_dict(old).precision.quant
    assert (q.weight, q.group_size, q.activations, q.embeddings) == ("int8", 128, False, True)
    q = RunSettings.from_dict({**OLDER, "precision": {"precision": "int4", "qaft": True}}).precision.quant
    assert (q.weight, q.group_size, q.activations, q.embeddings) == ("int4", 128, False, True)
    old = {**OLDER, "precision": {"precision": "int4", "qaft": False, "group_size": 32, "quant_activations": True,
                                  "quant_embeddings": False}}
    q = RunSettings.from_dict(old).precision.quant
    assert (q.weight, q.group_size, q.activations, q.embeddings) == ("int4", 32, True, False)


def test_todays_layout_reads_back_as_itself():
    """Nothing is upgraded in a record of this version: four sonnets per prompt stay four."""
    for s in (settings("--task", "sonnet", "--precision", "int4", "--qaft", "--group-size", "32"),
              settings("--method", "lora", "--lora-rank", "2", "--max-train", "5", "--stop-after-epoch", "1")):
        assert RunSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert settings("--task", "sonnet").eval.samples == 4


def test_a_path_that_names_no_setting_is_a_key_error_naming_it():
    from app.settings import role_of

    for path in ("optim.momentum", "hardware.cores"):
        with pytest.raises(KeyError) as e:
            role_of(path)
        assert e.value.args == (f"no setting {path!r}",)


def test_where_both_layouts_hold_a_setting_the_newer_place_wins():
    old = {**OLDER, "optim": {**OLDER["optim"], "compile": False, "stop_after_epoch": None}}
    s = RunSettings.from_dict(old)
    assert (s.optim.compile, s.optim.stop_after_epoch, s.optim.autocast) == (False, None, "bf16")
    both = {**OLDER, "paths": {"data_dir": "p"}, "data": {k: v for k, v in OLDER["data"].items()
                                                         if k not in ("data_dir", "tokenizer_dir", "offline")}}
    assert RunSettings.from_dict(both).paths.data_dir == "p"
