"""The training loop's figures pinned where one-line slips give other output (found by `tools/mutate.py --auto
minigpt2/train.py`; docs/testing.md, "Automated mutants"): the LR multiplier at every step worked by hand, the
batches against a loop-by-loop bucketing, the settings' error lines, what a rank trains on and what it reports,
the progress bar, the epoch line and the metrics record, timed on a fake clock (no timing assertions: the clock
moves only where the test moves it).
"""
from __future__ import annotations

import contextlib
import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn as nn

import minigpt2.train as tr
from minigpt2.checkpoint import read_safetensors
from minigpt2.distributed import Dist
from minigpt2.errors import FieldError
from minigpt2.train import (EpochEnd, Loop, TrainConfig, TrainingDiverged, TrainingSetTooSmall, bucketed_batches,
                            count_trainable, keep_resume_state, lr_lambda, new_metrics, param_groups, record_epoch,
                            seed_everything, train)
from tasks.base import Example
from tests.contract.test_contract_train import Toy, collate, examples

# ------------------------------------------------------------------------------------------- the LR schedule


def test_lr_multiplier_at_every_step_worked_by_hand():
    # 10 steps, warmup 0.35: round(3.5) = 4 warm-up steps at 1/4, 2/4, 3/4, 4/4; then 6 steps of decay, from 1 at
    # step 4 to 0 at step 10, and 0 after (steps past the total are clamped, not extrapolated)
    lin = lr_lambda(10, 0.35, "linear")
    assert [lin(s) for s in range(13)] == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0.0, 0.0, 0.0], abs=1e-12)
    cos = lr_lambda(10, 0.35, "cosine")  # 0.5 (1 + cos(pi k / 6)) for k = step - 4
    r3 = math.sqrt(3)
    assert [cos(s) for s in range(13)] == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 1.0, 0.5 + r3 / 4, 0.75, 0.5, 0.25, 0.5 - r3 / 4, 0.0, 0.0, 0.0], abs=1e-12)
    const = lr_lambda(10, 0.35, "constant")
    assert [const(s) for s in range(12)] == [0.25, 0.5, 0.75] + [1.0] * 9
    # no warm-up: the decay starts at 1 on step 0
    assert [lr_lambda(4, 0.0, "linear")(s) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert [lr_lambda(8, 0.0, "cosine")(s) for s in (0, 4, 8)] == pytest.approx([1.0, 0.5, 0.0], abs=1e-12)
    # warm-up of every step (round(2.7) = 3 of 3): 1/3, 2/3, 1, then 0 one step past the end (no decay steps left)
    f = lr_lambda(3, 0.9, "linear")
    assert [f(s) for s in range(5)] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0, 0.0], abs=1e-12)
    # a fraction that rounds down: round(0.24 * 10) = 2 warm-up steps
    assert [lr_lambda(10, 0.24, "linear")(s) for s in range(3)] == [0.5, 1.0, 1.0]


def test_an_unknown_schedule_is_named():
    with pytest.raises(ValueError) as e:
        lr_lambda(10, 0.1, "exponential")
    assert str(e.value) == "unknown schedule 'exponential'; expected linear, cosine or constant"


class Clock:
    """A fake `time` for minigpt2.train: it moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now


class Timed(Toy):
    """The toy model on a fake clock: every forward takes 2 s; it records each loss and each LR it ran at."""

    def __init__(self, clock: Clock, step_s: float = 2.0) -> None:
        super().__init__()
        self.clock, self.step_s = clock, step_s
        self.losses: list[float] = []
        self.autocast: list[tuple[bool, torch.dtype]] = []

    def forward(self, batch):
        self.clock.now += self.step_s
        self.autocast.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        loss = super().forward(batch)
        self.losses.append(float(loss.detach()))
        return loss


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(tr, "time", c)
    return c


def test_each_optimizer_step_runs_at_the_scheduled_lr_and_the_epoch_reports_the_next_one(monkeypatch, clock):
    # 22 examples in batches of 4: 6 micro-batches an epoch, grad_accum 2: 3 steps an epoch, 2 epochs: 6 steps;
    # warmup 0.5: 3 warm-up steps (lr/3, 2lr/3, lr), then 1, 2/3, 1/3 of lr; the epoch's row: the LR of the next step
    seen = []
    real = tr.optimizer_step
    monkeypatch.setattr(tr, "optimizer_step", lambda loop: seen.append(loop.optimizer.param_groups[0]["lr"])
                        or real(loop))
    metrics = train(Timed(clock), examples(), collate, TrainConfig(progress=False, epochs=2, batch_size=4,
                                                                   grad_accum=2, lr=0.06, warmup=0.5, seed=5),
                    evaluate=lambda m: {"acc": 0.0}, metric="acc")
    assert seen == pytest.approx([0.02, 0.04, 0.06, 0.06, 0.04, 0.02], rel=1e-12)
    assert [r["lr"] for r in metrics["epochs"]] == pytest.approx([0.06, 0.0], abs=1e-15)
    assert metrics["optimizer_steps_per_epoch"] == 3


# --------------------------------------------------------------------------------------------- the batches

def plain_bucketed(lengths: list[int], batch_size: int, seed: int, bucket: int) -> list[list[int]]:
    """Bucketing written out: one shuffle, chunks of bucket * batch_size sorted by length, cut, then the batches
    shuffled by the same generator's next draw."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lengths), generator=g).tolist()
    batches = []
    while order:
        chunk, order = order[:bucket * batch_size], order[bucket * batch_size:]
        chunk.sort(key=lambda i: lengths[i])
        while chunk:
            batches.append(chunk[:batch_size])
            chunk = chunk[batch_size:]
    shuffle = torch.randperm(len(batches), generator=g).tolist()
    return [batches[i] for i in shuffle]


def test_bucketed_batches_equal_bucketing_written_out():
    lengths = torch.randperm(400, generator=torch.Generator().manual_seed(4)).tolist()  # distinct lengths
    for n, size, bucket in ((23, 3, 2), (23, 5, 1), (7, 2, 50), (7, 8, 3)):
        got = bucketed_batches(lengths[:n], size, torch.Generator().manual_seed(9), bucket=bucket)
        assert got == plain_bucketed(lengths[:n], size, 9, bucket), (n, size, bucket)
    # the default bucket is 50 batches: 250 examples in batches of 2 make chunks of 100, 100, 50
    got = bucketed_batches(lengths[:250], 2, torch.Generator().manual_seed(9))
    assert got == plain_bucketed(lengths[:250], 2, 9, 50)
    assert got != plain_bucketed(lengths[:250], 2, 9, 51)


# ------------------------------------------------------------------------------------------- the parameters

def half_frozen() -> Toy:
    module = Toy()
    module.emb.weight.requires_grad_(False)  # a frozen embedding: 9 x 4 = 36 weights
    return module


def test_frozen_parameters_are_in_no_group_and_not_counted_as_trainable():
    module = half_frozen()
    decay, no_decay = param_groups(module, 0.3)
    assert [p.shape for p in decay["params"]] == [(1, 4)] and decay["weight_decay"] == 0.3
    assert sorted(p.numel() for p in no_decay["params"]) == [1, 4] and no_decay["weight_decay"] == 0.0
    assert count_trainable(module) == 4 + 1 + 4 and count_trainable(Toy()) == 36 + 4 + 1 + 4


def test_the_metrics_record_before_the_first_epoch():
    cfg = TrainConfig(epochs=3, batch_size=4, lr=0.05, progress=False)
    got = new_metrics(half_frozen(), cfg, "acc", Dist(rank=0, world=3), 7, torch.bfloat16)
    assert got == {"metric": "acc", "epochs": [], "best": None, "trainable_params": 9, "total_params": 45,
                   "world_size": 3, "optimizer_steps_per_epoch": 7, "autocast_used": "bf16",
                   "train_config": dict(vars(cfg))}
    assert new_metrics(Toy(), cfg, "acc", Dist(), 7)["autocast_used"] == "off"
    assert new_metrics(Toy(), cfg, "acc", Dist(), 7, None)["autocast_used"] == "off"


def test_record_epoch_keeps_the_best_with_its_dev_figures_only():
    metrics = {"metric": "acc", "epochs": [], "best": None}
    first = {"epoch": 1, "train_loss": 0.9, "lr": 0.1, "acc": 0.5, "dev_loss": 0.7, "dev_f1": 0.4, "eval_s": 1.0}
    assert record_epoch(metrics, first) is True
    assert metrics["best"] == {"epoch": 1, "acc": 0.5, "dev_loss": 0.7, "dev_f1": 0.4}
    second = {"epoch": 2, "train_loss": 0.5, "acc": 0.5, "dev_loss": 0.6}  # a tie: the earlier epoch stays best
    assert record_epoch(metrics, second) is False and metrics["best"]["epoch"] == 1
    third = {"epoch": 3, "acc": 0.75, "dev_loss": 0.8}
    assert record_epoch(metrics, third) is True
    assert metrics["best"] == {"epoch": 3, "acc": 0.75, "dev_loss": 0.8}
    assert metrics["epochs"] == [first, second, third]


# -------------------------------------------------------------------------------------------- the settings

BAD_SETTINGS = [
    ("epochs", -1, "an integer >= 0"),
    ("batch_size", 0, "an integer >= 1"),
    ("grad_accum", 0, "an integer >= 1"),
    ("bucket", 0, "an integer >= 1"),
    ("lr", 0.0, "a finite number > 0"),
    ("lr", -0.001, "a finite number > 0"),
    ("lr", math.inf, "a finite number > 0"),
    ("lr", math.nan, "a finite number > 0"),
    ("weight_decay", -0.001, "a finite number >= 0"),
    ("weight_decay", math.inf, "a finite number >= 0"),
    ("warmup", 1.0, "a fraction in [0, 1)"),
    ("warmup", -0.01, "a fraction in [0, 1)"),
    ("schedule", "exponential", "one of linear, cosine, constant"),
    ("grad_clip", -0.5, "a finite number >= 0 (0: off)"),
    ("grad_clip", math.inf, "a finite number >= 0 (0: off)"),
    ("seed", -1, "an integer in [0, 2**63)"),
    ("seed", 2**63, "an integer in [0, 2**63)"),
    ("autocast", "fp16", "one of auto, bf16, off"),
    ("stop_after_epoch", 0, "an integer >= 1"),
]


@pytest.mark.parametrize("name,value,expected", BAD_SETTINGS)
def test_a_setting_out_of_range_is_one_line_naming_it(name, value, expected):
    with pytest.raises(FieldError) as e:
        TrainConfig(**{name: value})
    assert str(e.value) == f"{name} {value}: expected {expected}"
    assert e.value.field == name


def test_the_edges_of_every_range_are_accepted():
    for kw in ({"epochs": 0}, {"batch_size": 1, "grad_accum": 1, "bucket": 1}, {"lr": 1e-30}, {"weight_decay": 0.0},
               {"warmup": 0.0}, {"warmup": 0.999}, {"grad_clip": 0.0}, {"seed": 0}, {"seed": 2**63 - 1},
               {"stop_after_epoch": 1}, {"schedule": "cosine"}, {"schedule": "constant"}, {"autocast": "bf16"},
               {"autocast": "off"}):
        TrainConfig(**kw)


def test_seed_everything_seeds_python_numpy_and_torch():
    seed = 3 * 2**32 + 7  # numpy takes the seed mod 2**32: 7
    seed_everything(seed)
    got = (random.random(), float(np.random.rand()), torch.rand(2).tolist())
    assert got == (random.Random(seed).random(), float(np.random.RandomState(7).rand()),
                   torch.rand(2, generator=torch.Generator().manual_seed(seed)).tolist())


# ---------------------------------------------------------------------------------------- one epoch, one rank

class FakeDDP(nn.Module):
    """Stands in for DDP's wrapper: records, for each micro-batch, whether it ran inside `no_sync()`."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.quiet = False
        self.synced: list[bool] = []

    @contextlib.contextmanager
    def no_sync(self):
        self.quiet = True
        try:
            yield
        finally:
            self.quiet = False

    def forward(self, batch):
        self.synced.append(not self.quiet)
        return self.inner(batch)


class Bar:
    """Stands in for tqdm: what it was made with, and every postfix set."""

    made: list["Bar"] = []

    def __init__(self, iterable, **kw) -> None:
        self.items, self.kw, self.postfix = list(iterable), kw, []
        Bar.made.append(self)

    def __iter__(self):
        return iter(self.items)

    def set_postfix(self, **kw) -> None:
        self.postfix.append(kw)


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def __call__(self, chunk):
        self.batches.append([e.id for e in chunk])
        return collate(chunk)


def loop_for(module: Timed, exs: list[Example], cfg: TrainConfig, d: Dist, collate_fn) -> Loop:
    optimizer = torch.optim.AdamW(param_groups(module, cfg.weight_decay), lr=cfg.lr)
    n_batches = len(bucketed_batches([len(e.input_ids) for e in exs], cfg.batch_size,
                                     torch.Generator().manual_seed(0), cfg.bucket))
    per_rank = n_batches // d.world
    steps = math.ceil(per_rank / cfg.grad_accum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(steps * cfg.epochs, cfg.warmup, cfg.schedule))
    return Loop(module, FakeDDP(module), exs, collate_fn, cfg, d, optimizer, scheduler, None, per_rank, None,
                lambda m: {"acc": 0.0}, [])


# 18 examples in batches of 2 (bucket 1: sorted within each batch only): 9 batches. 3 processes: 3 a rank
# (batches r, r + 3, r + 6 of the epoch's order), grad_accum 2 makes groups of 2 and 1 micro-batches, so DDP syncs
# on the 2nd and 3rd; 2 processes: 4 a rank (r, r + 2, r + 4, r + 6; the 9th is dropped), groups of 2 and 2
RANKS = [(3, 0, [False, True, True]), (3, 1, [False, True, True]), (3, 2, [False, True, True]),
         (2, 0, [False, True, False, True]), (2, 1, [False, True, False, True])]


@pytest.mark.parametrize("world,rank,synced", RANKS)
def test_each_rank_takes_its_share_of_batches_syncs_on_the_last_of_a_group_and_reports_the_sums(monkeypatch, clock,
                                                                                                world, rank, synced):
    Bar.made.clear()
    monkeypatch.setattr(tr, "tqdm", Bar)
    monkeypatch.setattr(tr, "all_reduce_sum", lambda v, d: [v[0] + 10.0, v[1] + 3, v[2] + 100])  # the other ranks
    exs = examples()[:18]
    cfg = TrainConfig(epochs=2, batch_size=2, grad_accum=2, lr=0.08, warmup=0.0, seed=5, bucket=1, progress=True)
    module, rec = Timed(clock), Recorder()
    loop = loop_for(module, exs, cfg, Dist(rank=rank, world=world), rec)
    row = tr.run_epoch(loop, 2)
    order = bucketed_batches([len(e.input_ids) for e in exs], 2, torch.Generator().manual_seed(5 + 2), 1)
    mine = list(range(rank, 9 // world * world, world))
    assert rec.batches == [[exs[i].id for i in order[j]] for j in mine]
    assert loop.wrapped.synced == synced
    tokens = sum(len(exs[i].input_ids) for j in mine for i in order[j])
    n = len(mine)
    # n forwards of 2 s; steps = ceil(n / 2) of 2 * steps scheduled (2 epochs): the next LR is 0.08 * (1 - 1/2)
    assert row == {"epoch": 2, "train_loss": pytest.approx((sum(module.losses) + 10.0) / (n + 3), rel=1e-12),
                   "tokens_per_s": pytest.approx((tokens + 100) / (2.0 * n), rel=1e-12), "train_s": 2.0 * n,
                   "lr": pytest.approx(0.04, rel=1e-12)}
    assert module.training
    (bar,) = Bar.made
    assert bar.kw == {"desc": "epoch 2/2", "disable": rank != 0, "dynamic_ncols": True}
    if rank == 0:  # the running mean loss and tokens per second, at the first and the last batch
        seen = [sum(len(exs[i].input_ids) for i in order[j]) for j in mine]
        assert bar.postfix == [{"loss": f"{module.losses[0]:.4f}", "tok_s": f"{seen[0] / 2.0:.0f}"},
                               {"loss": f"{sum(module.losses) / n:.4f}", "tok_s": f"{sum(seen) / (2.0 * n):.0f}"}]
    else:
        assert bar.postfix == []


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_the_forward_runs_under_the_autocast_dtype_given(clock, dtype):
    module = Timed(clock)
    metrics = train(module, examples(), collate, TrainConfig(progress=False, epochs=1, batch_size=4),
                    evaluate=lambda m: {"acc": 0.0}, metric="acc", autocast_dtype=dtype)
    assert metrics["autocast_used"] == ("off" if dtype is None else "bf16")
    assert len(module.autocast) == 6
    assert all(on == (dtype is not None) and (d == dtype or dtype is None) for on, d in module.autocast)


def test_the_progress_bar_shows_the_running_loss_every_ten_batches_and_at_the_last(monkeypatch, clock):
    Bar.made.clear()
    monkeypatch.setattr(tr, "tqdm", Bar)
    exs = [Example(str(i), [(3 * i + j) % 9 for j in range(1 + i % 4)], label=i % 3) for i in range(13)]
    cfg = TrainConfig(epochs=1, batch_size=1, lr=0.01, seed=5, progress=True)
    module = Timed(clock, step_s=0.25)  # a quarter of a second a batch: tokens per second = 4 x tokens per batch
    row = tr.run_epoch(loop_for(module, exs, cfg, Dist(), collate), 1)
    (bar,) = Bar.made
    lengths = [len(exs[b[0]].input_ids)
               for b in bucketed_batches([len(e.input_ids) for e in exs], 1, torch.Generator().manual_seed(6), 50)]
    want = [{"loss": f"{sum(module.losses[:i + 1]) / (i + 1):.4f}",
             "tok_s": f"{sum(lengths[:i + 1]) / (0.25 * (i + 1)):.0f}"} for i in (0, 10, 12)]
    assert bar.kw["desc"] == "epoch 1/1" and bar.kw["disable"] is False and bar.postfix == want
    assert row["train_loss"] == pytest.approx(sum(module.losses) / 13, rel=1e-12)
    Bar.made.clear()
    tr.run_epoch(loop_for(Timed(clock), exs, TrainConfig(epochs=1, batch_size=1, seed=5, progress=False), Dist(),
                          collate), 1)
    assert Bar.made[0].kw["disable"] is True and Bar.made[0].postfix == []


def test_a_diverged_step_is_named_with_its_epoch_step_and_lr(clock):
    # 6 batches, 6 steps over one epoch with 3 warm-up steps: step 2 runs at 0.09 * 2/3 = 0.06
    class Poisoned(Timed):
        def forward(self, batch):
            loss = super().forward(batch)
            return loss * math.nan if len(self.losses) >= 2 else loss

    cfg = TrainConfig(epochs=1, batch_size=4, lr=0.09, warmup=0.5, seed=5, progress=False)
    with pytest.raises(TrainingDiverged) as e:
        tr.run_epoch(loop_for(Poisoned(clock), examples(), cfg, Dist(), collate), 1)
    assert str(e.value) == ("the training loss is nan at epoch 1, step 2 (lr 0.06): training diverged; try a lower "
                            "learning rate (lr)")
    # with grad_accum 2 the 2nd micro-batch ends step 1 (at 0.09 * 1/2: 2 warm-up steps of 3)
    cfg = TrainConfig(epochs=1, batch_size=4, grad_accum=2, lr=0.09, warmup=0.5, seed=5, progress=False)
    with pytest.raises(TrainingDiverged, match=r"is nan at epoch 1, step 1 \(lr 0.045\)"):
        tr.run_epoch(loop_for(Poisoned(clock), examples(), cfg, Dist(), collate), 1)


def test_gradients_are_dropped_after_every_step():
    module = Toy()
    train(module, examples(), collate, TrainConfig(progress=False, epochs=1, batch_size=4),
          evaluate=lambda m: {"acc": 0.0}, metric="acc")
    assert all(p.grad is None for p in module.parameters())


# ----------------------------------------------------------------------------------------- the whole run

def test_the_run_record_and_epoch_lines_on_a_fake_clock(clock, capsys):
    # an epoch: 6 forwards of 2 s (12 s), then a dev evaluation of 5 s
    def evaluate(module):
        clock.now += 5.0
        return {"acc": 0.25 * len(seen), "dev_loss": 0.5, "dev_n": 22}

    seen = []
    module = Timed(clock)
    def saved(end):  # the callbacks (saving weights, metrics.json) take 1 s, after the wall time they were shown
        seen.append((end.epoch, end.metrics["wall_s"]))
        clock.now += 1.0

    metrics = train(module, examples(), collate, TrainConfig(progress=False, epochs=2, batch_size=4, seed=5),
                    evaluate=evaluate, metric="acc", callbacks=[saved])
    tokens = sum(len(e.input_ids) for e in examples())  # 62
    losses = module.losses
    assert [r["train_loss"] for r in metrics["epochs"]] == pytest.approx([sum(losses[:6]) / 6, sum(losses[6:]) / 6])
    for r in metrics["epochs"]:
        assert (r["tokens_per_s"], r["train_s"], r["eval_s"], r["dev_loss"], r["dev_n"]) == (tokens / 12, 12.0, 5.0,
                                                                                              0.5, 22)
    assert [r["acc"] for r in metrics["epochs"]] == [0.0, 0.25]
    assert seen == [(1, 17.0), (2, 35.0)] and metrics["wall_s"] == 36.0
    assert metrics["best"] == {"epoch": 2, "acc": 0.25, "dev_loss": 0.5, "dev_n": 22}
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"epoch {r['epoch']}: train loss {r['train_loss']:.4f}, dev acc {r['acc']:.4f}, 5 tok/s"
                     for r in metrics["epochs"]]


@pytest.mark.parametrize("figures,named", [
    ({"acc": math.nan, "dev_loss": 0.5}, "acc = nan"),
    ({"acc": 0.5, "dev_loss": math.inf, "dev_f1": -math.inf}, "dev_loss = inf, dev_f1 = -inf"),
])
def test_a_non_finite_dev_figure_stops_the_run_naming_it_before_any_callback(tmp_path, figures, named):
    called = []
    with pytest.raises(TrainingDiverged) as e:
        train(Toy(), examples(), collate, TrainConfig(progress=False, epochs=2, batch_size=4),
              evaluate=lambda m: dict(figures), metric="acc", callbacks=[called.append])
    assert str(e.value) == f"epoch 1: {named}; the model diverged; try a lower learning rate (lr)"
    assert called == []


def test_fewer_batches_than_processes_is_one_line_and_one_batch_on_one_process_trains():
    with pytest.raises(TrainingSetTooSmall) as e:
        train(Toy(), examples()[:3], collate, TrainConfig(progress=False, batch_size=4),
              evaluate=lambda m: {"acc": 0.0}, metric="acc", d=Dist(world=2))
    assert str(e.value) == "3 training examples make 1 batches of 4: fewer than the 2 processes"
    module = Toy()
    before = module.lin.weight.detach().clone()
    metrics = train(module, examples()[:3], collate, TrainConfig(progress=False, epochs=2, batch_size=4, lr=0.1),
                    evaluate=lambda m: {"acc": 0.0}, metric="acc")
    assert metrics["optimizer_steps_per_epoch"] == 1 and len(metrics["epochs"]) == 2
    assert not torch.equal(module.lin.weight, before)


@pytest.mark.parametrize("stop,epochs_run", [(1, 1), (2, 2), (3, 3), (5, 3)])
def test_stop_after_epoch_stops_there_unless_it_is_the_last(stop, epochs_run):
    metrics = train(Toy(), examples(), collate, TrainConfig(progress=False, epochs=3, batch_size=4,
                                                            stop_after_epoch=stop),
                    evaluate=lambda m: {"acc": 0.0}, metric="acc")
    assert [r["epoch"] for r in metrics["epochs"]] == list(range(1, epochs_run + 1))
    assert metrics.get("stopped_after_epoch") == (stop if stop < 3 else None)


def test_a_resumed_run_adds_the_saved_wall_time_and_rank_one_draws_its_own_numbers(tmp_path, clock, capsys):
    cfg = TrainConfig(progress=False, epochs=2, batch_size=4, lr=0.05, seed=5, stop_after_epoch=1)
    folder = tmp_path / "last"
    train(Timed(clock), examples(), collate, cfg, evaluate=lambda m: {"acc": 0.5, "dev_loss": 0.25}, metric="acc",
          callbacks=[keep_resume_state(folder)])
    tensors, meta = read_safetensors(folder / "state.safetensors")
    trainer = json.loads(meta["trainer"])
    assert (trainer["epoch"], trainer["wall_s"]) == (1, 12.0)
    assert trainer["best"] == {"epoch": 1, "acc": 0.5, "dev_loss": 0.25} and len(trainer["history"]) == 1
    assert trainer["history"][0]["train_s"] == 12.0

    # rank 0 continues the saved random state; any other rank reseeds with seed + rank + 1000 * epoch
    def restored(rank: int):
        module = Toy()
        optimizer = torch.optim.AdamW(param_groups(module, 0.01), lr=0.05)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(12, 0.0, "linear"))
        metrics = {"epochs": [], "best": None}
        start = tr.restore(folder, module, optimizer, scheduler, metrics, cfg, Dist(rank=rank, world=2))
        return start, metrics, torch.rand(3), random.random()

    start, metrics, draw, py = restored(0)
    assert start == (2, 12.0) and metrics["resumed_from_epoch"] == 1 and metrics["epochs"] == trainer["history"]
    assert metrics["best"] == trainer["best"]
    torch.set_rng_state(tensors["rng.torch"])
    assert torch.equal(draw, torch.rand(3))
    start, _, draw, py = restored(1)
    assert start == (2, 12.0)
    assert torch.equal(draw, torch.rand(3, generator=torch.Generator().manual_seed(5 + 1 + 1000)))
    assert py == random.Random(5 + 1 + 1000).random()

    walls = []
    resumed = train(Timed(clock), examples(), collate, TrainConfig(progress=False, epochs=2, batch_size=4, lr=0.05,
                                                                   seed=5),
                    evaluate=lambda m: {"acc": 0.5}, metric="acc", resume_from=folder,
                    callbacks=[lambda end: walls.append(end.metrics["wall_s"])])
    assert resumed["wall_s"] == 24.0 and walls == [24.0] and [r["epoch"] for r in resumed["epochs"]] == [1, 2]
    capsys.readouterr()
    for rank, said in ((0, f"resume: no saved state in {tmp_path}; starting from epoch 1\n"), (1, "")):
        module = Toy()
        optimizer = torch.optim.AdamW(param_groups(module, 0.01), lr=0.05)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(12, 0.0, "linear"))
        assert tr.restore(tmp_path, module, optimizer, scheduler, {}, cfg, Dist(rank=rank, world=2)) == (1, 0.0)
        assert capsys.readouterr().out == said
    assert tr.restore(None, Toy(), optimizer, scheduler, {}, cfg, Dist()) == (1, 0.0)


def test_train_seeds_the_process_with_the_seed_plus_its_rank(monkeypatch):
    seeds = []
    monkeypatch.setattr(tr, "seed_everything", seeds.append)
    with pytest.raises(TrainingSetTooSmall):
        train(Toy(), examples()[:3], collate, TrainConfig(progress=False, batch_size=4, seed=40),
              evaluate=lambda m: {"acc": 0.0}, metric="acc", d=Dist(rank=1, world=2))
    train(Toy(), examples()[:3], collate, TrainConfig(progress=False, epochs=1, batch_size=4, seed=40),
          evaluate=lambda m: {"acc": 0.0}, metric="acc")
    assert seeds == [41, 40]


def test_keep_resume_state_saves_the_epoch_the_history_the_best_and_the_wall_time(tmp_path):
    module = Toy()
    optimizer = torch.optim.AdamW(param_groups(module, 0.01), lr=0.05)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(12, 0.0, "linear"))
    rows = [{"epoch": 1, "acc": 0.5}, {"epoch": 2, "acc": 0.25}]
    metrics = {"metric": "acc", "epochs": rows, "best": {"epoch": 1, "acc": 0.5}, "wall_s": 33.5, "world_size": 1}
    keep_resume_state(tmp_path)(EpochEnd(2, rows[1], metrics, False, module, optimizer, scheduler))
    trainer = json.loads(read_safetensors(tmp_path / "state.safetensors")[1]["trainer"])
    assert (trainer["epoch"], trainer["history"], trainer["best"], trainer["wall_s"]) == (2, rows, metrics["best"],
                                                                                         33.5)
    assert "world_size" not in trainer and "metric" not in trainer


def test_each_micro_batch_goes_to_the_process_device(monkeypatch):
    """The batch is moved to `d.device` before the forward: on the "meta" device (shapes only, no CPU tensor can
    mix with it), the forward sees meta tensors and the gradients land there. (autocast has no meta device.)"""
    monkeypatch.setattr(tr, "autocast", lambda device, dtype: contextlib.nullcontext())
    module = Toy().to("meta")
    seen = []

    class Wrapped(nn.Module):
        def forward(self, batch):
            seen.append({k: v.device.type for k, v in batch.items()})
            return module(batch)

    loop = Loop(module, Wrapped(), examples(), collate, TrainConfig(), Dist(device=torch.device("meta")), None,
                None, None, 1, None, None, [])
    loss = tr.forward_backward(loop, examples()[:3], 2, True)
    assert seen == [{"input_ids": "meta", "attention_mask": "meta", "labels": "meta"}]
    assert loss.device.type == "meta" and module.lin.weight.grad.device.type == "meta"


def test_every_setting_has_its_help_text_for_the_command_line():
    from dataclasses import fields

    meta = {f.name: dict(f.metadata) for f in fields(TrainConfig)}
    assert meta["lr"] == {"help": "peak learning rate"}
    assert meta["compile"] == {"help": "torch.compile the model for training", "role": "runs"}
    assert meta["schedule"] == {"help": "LR decay after warmup", "choices": ("linear", "cosine", "constant")}
    assert meta["bucket"] == {}


class Moved(Toy):
    """Records where `train` moves it (and moves nowhere but the CPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.moved_to: list = []

    def to(self, *args, **kwargs):
        self.moved_to.append(args[0] if args else kwargs.get("device"))
        return self


def test_train_moves_the_module_to_the_process_device():
    module = Moved()
    train(module, examples(), collate, TrainConfig(progress=False, epochs=1, batch_size=4),
          evaluate=lambda m: {"acc": 0.0}, metric="acc")
    assert module.moved_to == [torch.device("cpu")]


@pytest.mark.parametrize("rank", [0, 1])
def test_a_process_of_two_wraps_in_ddp_waits_at_each_epoch_end_and_reports_the_checksums(monkeypatch, tmp_path, rank):
    """Two processes, the process group stubbed: the module wrapped once in DDP (no device ids on CPU), a barrier
    after every epoch, the trainable weights' checksums of every rank in the metrics, and a resumed rank 1 reseeded
    from the run's settings."""
    made, barriers, sums = [], [], []

    class DDP(FakeDDP):
        def __init__(self, module, device_ids="unset"):
            super().__init__(module)
            made.append((module, device_ids))

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", DDP)
    monkeypatch.setattr(torch.distributed, "barrier", lambda: barriers.append(1))
    monkeypatch.setattr(tr, "all_reduce_sum", lambda v, d: v)
    monkeypatch.setattr(tr, "param_checksums", lambda module, d: sums.append((module, d)) or [1.5, 1.5])
    folder = tmp_path / "last"
    cfg = dict(progress=False, epochs=3, batch_size=4, lr=0.05, seed=5)
    train(Toy(), examples(), collate, TrainConfig(stop_after_epoch=1, **cfg), evaluate=lambda m: {"acc": 0.5},
          metric="acc", callbacks=[keep_resume_state(folder)])  # one process: no DDP, no barrier, no checksums
    assert made == barriers == sums == []
    module, d, ends = Toy(), Dist(rank=rank, world=2), []
    metrics = train(module, examples(), collate, TrainConfig(**cfg), evaluate=lambda m: {"acc": 0.5}, metric="acc",
                    d=d, resume_from=folder, callbacks=[ends.append])
    assert made == [(module, None)] and len(barriers) == 2 and sums == [(module, d)]
    assert metrics["param_checksums"] == [1.5, 1.5] and metrics["world_size"] == 2 and metrics["wall_s"] >= 0
    assert [e.epoch for e in ends] == ([2, 3] if rank == 0 else [])  # rank 0 alone evaluates and saves
