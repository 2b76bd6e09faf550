"""The dry run's cost arithmetic (experiments/estimate.py) by hand, without the course data: the work a run's
settings and data give (its data counts stood in by `_counts`), the pricing, the printed lines, the sum of costs,
the Gemini bill, the hours, the schedule and the model's shape. Inputs are distinct and not round, so that swapping
two fields, an off-by-one, `*` for `/`, a wrong key, a wrong rounding or a dropped term gives another figure; the
expected figures are worked out in the comments, not copied from the code."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import fields, replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.cli import settings_of
from app.settings import EvaluateSettings
from experiments import estimate
from experiments.estimate import Cost, Generation, Rates, SplitCounts, Workload
from experiments.sweeps import TINY_SYNTHETIC_DIR, Evaluation, Run

# GPT-2's tiny preset: 50,257 tokens, 128 positions, width 32, 2 layers.
# (50,257 + 128) * 32 = 1,612,320 embedding weights; a layer 12 * 32^2 + 13 * 32 = 12,288 + 416 = 12,704;
# the final layer norm 2 * 32 = 64: 1,612,320 + 2 * 12,704 + 64 = 1,637,792.
TINY_PARAMS = 1_637_792


# ---------------------------------------------------------------------------------------------- the model's shape

def write_config(folder: Path, **values) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", **values}), encoding="utf-8")
    return folder


def test_n_params_counts_the_tied_embedding_once():
    """By hand for tiny (TINY_PARAMS above); GPT-2 124M's published 124,439,808 parameters."""
    assert estimate.n_params("tiny") == (TINY_PARAMS, 2)
    assert estimate.n_params("gpt2") == (124_439_808, 12)


def test_n_params_of_a_folder_is_what_the_model_holds(tmp_path):
    from minigpt2.model import GPT2

    folder = write_config(tmp_path / "m", vocab_size=100, n_positions=16, n_embd=8, n_layer=3, n_head=2)
    # (100 + 16) * 8 = 928; a layer 12 * 64 + 13 * 8 = 872, three 2,616; the final norm 16: 3,560
    assert estimate.n_params(str(folder)) == (3_560, 3)
    held = sum(p.numel() for p in GPT2(estimate.model_config(str(folder))).parameters())  # the tied head once
    assert held == 3_560


def test_model_config_reads_a_preset_a_folder_or_the_config_beside_a_weights_file(tmp_path):
    assert (estimate.model_config("tiny").n_layer, estimate.model_config("tiny").n_positions) == (2, 128)
    folder = write_config(tmp_path / "run", vocab_size=300, n_positions=48, n_embd=16, n_layer=5, n_head=4)
    for model in (folder, folder / "model.safetensors"):  # the folder, or a weights file in it (not there yet)
        c = estimate.model_config(str(model))
        assert (c.vocab_size, c.n_positions, c.n_embd, c.n_layer, c.n_head) == (300, 48, 16, 5, 4)


@pytest.mark.parametrize("content", [None, "{not json", json.dumps({"model_type": "llama", "n_embd": 8})])
def test_model_config_falls_back_to_gpt2_124m(tmp_path, content):
    """No config.json, one that is not JSON, one that is not GPT-2's: GPT-2 124M's shape."""
    folder = tmp_path / "m"
    folder.mkdir()
    if content is not None:
        (folder / "config.json").write_text(content, encoding="utf-8")
    c = estimate.model_config(str(folder))
    assert (c.vocab_size, c.n_positions, c.n_embd, c.n_layer) == (50257, 1024, 768, 12)


# ---------------------------------------------------------------------------------------------- hours

@pytest.mark.parametrize("seconds, text", [
    (0.0, "0.0 s"), (9.94, "9.9 s"), (10.0, "10 s"), (119.4, "119 s"), (120.0, "2 min"),
    (7199.0, "120 min"),  # 119.98 min
    (7200.0, "2.0 h"),
    (7381.0, "2.1 h"),  # 2.0503 h; over 3,601 s an hour it would be 2.0497
    (172_799.0, "48.0 h"),  # a second short of 2 days: no days
    (172_800.0, "48.0 h (2.0 days)"),
    (177_122.0, "49.2 h (2.1 days)"),  # 2.05002 days; over 86,401 s a day it would be 2.04998
])
def test_format_hours_at_its_boundaries(seconds, text):
    assert estimate.format_hours(seconds) == text


# ---------------------------------------------------------------------------------------------- the schedule

def test_schedule_seconds_by_hand():
    """Longest first to the worker free first: 5 | 4, then 3 -> the 4 (7), 3 -> the 5 (8), 3 -> the 7 (10). (The
    best split, 5 + 4 | 3 + 3 + 3, is 9: the greedy's 10 is what it promises, not the best.) Shortest first:
    3 | 3, 3 -> 6, 4 -> 7, 5 -> 11."""
    assert estimate.schedule_seconds([3.0, 5.0, 3.0, 4.0, 3.0], 2) == 10.0
    assert estimate.schedule_seconds([5.0, 4.0], 1) == 9.0  # one worker: one after the other
    assert estimate.schedule_seconds([2.0, 3.0], 0) == 5.0  # no workers counts as one
    assert estimate.schedule_seconds([2.0, 3.0], 7) == 3.0  # more workers than runs
    assert estimate.schedule_seconds([], 3) == 0.0


def greedy(seconds: list[float], workers: int) -> float:
    """Longest first, each to the least loaded worker (written here with a list, not a heap)."""
    loads = [0.0] * max(1, min(workers, len(seconds)))
    for x in sorted(seconds, reverse=True):
        loads[loads.index(min(loads))] += x
    return max(loads) if seconds else 0.0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 1000).map(float), max_size=9), st.integers(1, 5))
def test_schedule_seconds_is_longest_first_within_its_bounds(seconds, workers):
    wall = estimate.schedule_seconds(seconds, workers)
    assert wall == greedy(seconds, workers)
    assert max(seconds, default=0.0) <= wall <= sum(seconds)
    assert wall >= sum(seconds) / workers


# ---------------------------------------------------------------------------------------------- sonnet generation

def simulate(lengths, conts, batch: int, cap: int, positions: int, times: int) -> dict[str, int]:
    """Token by token: each batch left-padded to its longest prompt, every row computed at every decode step until
    the last row has its continuation or the batch hits `cap` new tokens or the model's last position."""
    out = dict.fromkeys(("prompts", "prefill_tokens", "prefill_batches", "decoded_tokens", "decode_steps",
                         "new_tokens"), 0)
    for _ in range(times):
        for i in range(0, len(lengths), batch):
            rows, want = lengths[i:i + batch], conts[i:i + batch]
            out["prompts"] += len(rows)
            out["prefill_batches"] += 1
            out["prefill_tokens"] += len(rows) * max(rows)
            made, position = [0] * len(rows), max(rows)
            while any(m < w for m, w in zip(made, want)) and made and max(made) < cap and position < positions:
                out["decode_steps"] += 1
                out["decoded_tokens"] += len(rows)
                made = [m + (m < w) for m, w in zip(made, want)]
                position += 1
            out["new_tokens"] += sum(made)
    return out


def counts(g: Generation) -> dict[str, int]:
    return {f.name: getattr(g, f.name) for f in fields(g)}


def test_generation_by_hand():
    """Prompts of 30, 40 and 35 tokens wanting 20, 90 and 24 more, in batches of 2, cut at 40 new tokens, 128
    positions. Batch [30, 40]: 128 - 40 = 88 positions left, so 40 steps (the 90 cut), 2 rows each: 80 decoded,
    20 + 40 new, 2 x 40 prefilled. Batch [35]: 24 steps, 24 decoded and new, 35 prefilled. Twice over."""
    g = Generation()
    g.add([30, 40, 35], [20, 90, 24], 2, 40, 128, times=2)
    assert counts(g) == {"prompts": 6, "prefill_tokens": 2 * (80 + 35), "prefill_batches": 2 * 2,
                         "decoded_tokens": 2 * (80 + 24), "decode_steps": 2 * (40 + 24), "new_tokens": 2 * (60 + 24)}
    g.add([100, 20], [37, 15], 3, 40, 128)  # once by default; 128 - 100 = 28 positions left: 28 steps
    assert (g.prompts, g.prefill_batches, g.decode_steps, g.new_tokens) == (8, 5, 128 + 28, 168 + 28 + 15)
    assert (g.prefill_tokens, g.decoded_tokens) == (230 + 200, 208 + 56)
    h = Generation()
    h.add([126, 3], [9, 9], 2, 40, 128)  # 2 positions left: 2 steps, 2 new tokens a row
    h.add([128], [5], 1, 40, 128)  # none left: nothing decoded
    assert (h.decode_steps, h.decoded_tokens, h.new_tokens, h.prefill_tokens) == (2, 4, 4, 2 * 126 + 128)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 30), st.integers(1, 25)), max_size=7), st.integers(1, 4),
       st.integers(1, 20), st.integers(1, 40), st.integers(0, 3))
def test_generation_counts_what_a_token_by_token_run_computes(rows, batch, cap, positions, times):
    lengths, conts = [r[0] for r in rows], [r[1] for r in rows]
    g = Generation()
    g.add(lengths, conts, batch, cap, positions, times)
    assert counts(g) == simulate(lengths, conts, batch, cap, positions, times)


# ---------------------------------------------------------------------------------------------- a run's work

class FakeCounts:
    """Stands in for `estimate._counts`: the split counts by (task, split), and by (task, split, "all") for the
    mean of every training sonnet (no limit, seed 0); records each call."""

    def __init__(self, table: dict[tuple, SplitCounts]):
        self.table, self.calls = table, []

    def __call__(self, task, folder, tokenizer_dir, max_len, limit, seed, split, synthetic=None):
        self.calls.append(dict(task=task, folder=folder, tokenizer=tokenizer_dir, max_len=max_len, limit=limit,
                               seed=seed, split=split, synthetic=synthetic))
        if task == "sonnet" and split == "train" and limit is None and seed == 0 and ("sonnet", "all") in self.table:
            return self.table[("sonnet", "all")]
        key = (task, split, "synthetic") if synthetic is not None else (task, split)
        return self.table[key]


def run_of(tmp_path, evaluations=(), **options) -> Run:
    opts = {"model.model": "tiny", "paths.data_dir": str(tmp_path), "paths.tokenizer_dir": "tok-dir", **options}
    return Run("r", settings_of(opts), tuple(evaluations))


SST = {
    # train: 11 examples, 1,000 loss tokens (not the 165 of the lengths: the count must come from loss_tokens)
    ("sst", "train"): SplitCounts(tuple(range(10, 21)), 1000),
    ("sst", "dev"): SplitCounts((3, 4, 5, 6, 7, 8, 9), 500),  # 7 rows, 42 tokens
    ("sst", "test"): SplitCounts((11, 12, 13, 14, 15, 16), 81),  # 6 rows, 81 tokens
    ("quora", "dev"): SplitCounts((2, 3, 5, 7, 11, 13, 17, 19), 77),  # 8 rows, 77 tokens
}
SST_OPTIONS = {"data.task": "sst", "optim.epochs": 3, "optim.batch_size": 4, "eval.batch_size": 5,
               "data.max_length": 100, "data.max_train": 7, "data.max_eval": 6, "optim.seed": 13}


def test_a_classifier_run_by_hand(tmp_path, monkeypatch):
    """3 epochs of 11 examples at batch 4: 3 steps an epoch, 9; 3 x 1,000 tokens. Evaluation at batch 5: the dev
    loss after each epoch (3 x 500 tokens, 3 x 2 batches), the dev predictions after each epoch and at the end
    (4 x 42, 4 x 2) and the test's once (81, 2), the zero-shot Quora dev rows (77, 2 batches):
    1,500 + 168 + 81 + 77 = 1,826 tokens in 6 + 8 + 2 + 2 = 18 batches. Two models loaded, in two processes."""
    fake = FakeCounts(SST)
    monkeypatch.setattr(estimate, "_counts", fake)
    quora = Evaluation("zero_shot_quora", EvaluateSettings(task="quora", zero_shot=True), "q.json")
    w = estimate.run_workload(run_of(tmp_path, [quora], **SST_OPTIONS))
    assert (w.name, w.model, w.n_params, w.n_layer, w.epochs) == ("r", "tiny", TINY_PARAMS, 2, 3)
    assert (w.train_tokens, w.train_steps, w.full_optimizer) == (3000, 9, True)
    assert (w.eval_tokens, w.eval_batches) == (1826, 18)
    assert counts(w.generation) == counts(Generation()) and w.assumed == []
    assert (w.model_loads, w.processes) == (2, 2)
    folder = str(tmp_path.resolve())
    assert [(c["task"], c["split"], c["limit"]) for c in fake.calls] == [
        ("sst", "train", 7), ("sst", "dev", 6), ("sst", "test", 6), ("quora", "dev", 6)]
    assert all((c["folder"], c["tokenizer"], c["max_len"], c["seed"], c["synthetic"]) == (folder, "tok-dir", 100, 13,
                                                                                            None) for c in fake.calls)
    assert estimate.run_workload(run_of(tmp_path, [quora], **SST_OPTIONS), "in-process").processes == 0


def test_a_classifier_run_of_no_epochs_is_evaluated_once(tmp_path, monkeypatch):
    """--epochs 0: no training, the dev loss and predictions once, then the dev and test predictions at the end:
    500 + 2 x 42 + 81 = 665 tokens in 2 + 2 x 2 + 2 = 8 batches; a follow-up check that names no task scores the
    run's own dev rows (42 tokens, 2 batches)."""
    monkeypatch.setattr(estimate, "_counts", FakeCounts(SST))
    own = Evaluation("again", EvaluateSettings(), "again.json")
    w = estimate.run_workload(run_of(tmp_path, [own], **{**SST_OPTIONS, "optim.epochs": 0}))
    assert (w.train_tokens, w.train_steps) == (0, 0)
    assert (w.eval_tokens, w.eval_batches) == (665 + 42, 8 + 2)


@pytest.mark.parametrize("max_length, max_len", [(None, 128), (100, 100), (200, 128)])
def test_inputs_are_cut_at_max_length_and_at_the_model_s_positions(tmp_path, monkeypatch, max_length, max_len):
    fake = FakeCounts(SST)
    monkeypatch.setattr(estimate, "_counts", fake)
    estimate.run_workload(run_of(tmp_path, **{**SST_OPTIONS, "data.max_length": max_length}))
    assert {c["max_len"] for c in fake.calls} == {max_len}


def test_a_lora_run_updates_no_full_optimizer(tmp_path, monkeypatch):
    monkeypatch.setattr(estimate, "_counts", FakeCounts(SST))
    w = estimate.run_workload(run_of(tmp_path, **SST_OPTIONS, **{"model.method": "lora", "model.lora.rank": 4}))
    assert not w.full_optimizer and (w.model_loads, w.processes) == (1, 1)


SONNETS = {
    ("sonnet", "train"): SplitCounts((50, 60, 70, 80), 700),
    # the 3 dev prompts continue 20, 90 and 24 tokens; 400 tokens of true sonnets
    ("sonnet", "dev"): SplitCounts((30, 40, 35), 320, (20, 90, 24), 400),
    # the first test prompt's true sonnet unknown; 150 tokens of the other's
    ("sonnet", "test"): SplitCounts((100, 20), 0, (None, 15), 150),
    ("sonnet", "all"): SplitCounts((100, 120, 132)),  # every training sonnet: 352 / 3 = 117.33 tokens each
}
SONNET_OPTIONS = {"data.task": "sonnet", "optim.epochs": 2, "optim.batch_size": 3, "eval.batch_size": 2,
                  "eval.samples": 3, "eval.sampling.max_new_tokens": 40, "optim.seed": 5}


def test_a_sonnet_run_by_hand(tmp_path, monkeypatch):
    """Training: 4 sonnets at batch 3, 2 steps an epoch, 2 epochs: 4 steps, 1,400 tokens. The unknown test
    continuation is the mean of the known ones, (20 + 90 + 24 + 15) / 4 = 37.25, so 37. Generation (batch 2, 40 new
    tokens at most, 128 positions): a dev pass (test_generation_by_hand) is 3 prompts, 115 prefilled in 2 batches,
    104 decoded in 64 steps, 84 new; a test pass, batch [100, 20] wanting [37, 15] with 28 positions left: 200
    prefilled, 28 steps, 56 decoded, 28 + 15 new. Dev after each of 2 epochs and 3 samples at the end (5 passes),
    test 3 samples. Forward: the dev loss twice (2 x 320) and the true sonnets' NLL before and after training,
    2 x (400 + 150): 1,740 tokens; batches 2 x 2 and 2 x (2 + 1): 10."""
    fake = FakeCounts(SONNETS)
    monkeypatch.setattr(estimate, "_counts", fake)
    w = estimate.run_workload(run_of(tmp_path, **SONNET_OPTIONS))
    assert (w.train_tokens, w.train_steps) == (1400, 4)
    assert counts(w.generation) == {"prompts": 5 * 3 + 3 * 2, "prefill_tokens": 5 * 115 + 3 * 200,
                                    "prefill_batches": 5 * 2 + 3, "decoded_tokens": 5 * 104 + 3 * 56,
                                    "decode_steps": 5 * 64 + 3 * 28, "new_tokens": 5 * 84 + 3 * 43}
    assert (w.eval_tokens, w.eval_batches) == (1740, 10)
    assert w.assumed == ["test continuations: the true sonnets' mean, 37 tokens"]
    assert [(c["split"], c["limit"], c["seed"]) for c in fake.calls] == [("train", None, 5), ("dev", None, 5),
                                                                         ("test", None, 5)]


def test_sonnets_without_any_known_continuation_are_sampled_to_the_cap(tmp_path, monkeypatch):
    """No true sonnet anywhere: every prompt continues to --max-new-tokens (6). Dev [10] and test [12, 13] at
    batch 2, once after the 1 epoch and 3 samples at the end: 4 dev passes of 6 steps, 3 test passes of 6 steps of
    2 rows. No test NLL batch without true test sonnets: 1 x 1 dev-loss batch + 2 x 1 NLL batches."""
    table = {("sonnet", "train"): SplitCounts((50,), 50), ("sonnet", "dev"): SplitCounts((10,), 11, (None,), 0),
             ("sonnet", "test"): SplitCounts((12, 13), 0, (None, None), 0)}
    monkeypatch.setattr(estimate, "_counts", FakeCounts(table))
    w = estimate.run_workload(run_of(tmp_path, **{**SONNET_OPTIONS, "optim.epochs": 1,
                                                  "eval.sampling.max_new_tokens": 6}))
    g = w.generation
    assert (g.decode_steps, g.decoded_tokens, g.new_tokens) == (4 * 6 + 3 * 6, 4 * 6 + 3 * 12, 4 * 6 + 3 * 12)
    assert (w.eval_tokens, w.eval_batches) == (11, 1 + 2)
    assert w.assumed == ["test continuations: the true sonnets' mean, 6 tokens"]


def test_evaluation_adds_to_what_the_workload_holds(tmp_path, monkeypatch):
    """`_count_evaluation` adds its tokens and batches to the workload's (run_workload counts training first and the
    follow-up checks after): the 1,740 tokens and 10 batches of test_a_sonnet_run_by_hand on top of 5 and 1."""
    from tasks import get_task

    monkeypatch.setattr(estimate, "_counts", FakeCounts({**SONNETS, **SST}))
    for task, options, tokens, batches in (
            ("sonnet", SONNET_OPTIONS, 1740, 10),
            # sst, 2 epochs: the dev loss 2 x 500 (2 x 2 batches), dev predictions 3 x 42 (3 x 2), test 81 (2)
            ("sst", {**SST_OPTIONS, "optim.epochs": 2}, 1000 + 126 + 81, 4 + 6 + 2)):
        w = Workload("w", "tiny", TINY_PARAMS, 2, 2, eval_tokens=5, eval_batches=1)
        estimate._count_evaluation(w, run_of(tmp_path, **options).settings, get_task(task), (str(tmp_path), None),
                                   128, 128)
        assert (w.eval_tokens, w.eval_batches) == (5 + tokens, 1 + batches)


def test_known_test_continuations_assume_nothing(tmp_path, monkeypatch):
    table = {**SONNETS, ("sonnet", "test"): SplitCounts((100, 20), 0, (37, 15), 0)}
    monkeypatch.setattr(estimate, "_counts", FakeCounts(table))
    w = estimate.run_workload(run_of(tmp_path, **SONNET_OPTIONS))
    assert w.assumed == [] and w.generation.new_tokens == 5 * 84 + 3 * 43
    assert (w.eval_tokens, w.eval_batches) == (2 * 320 + 2 * 400, 2 * 2 + 2 * 2)  # no test NLL


def synthetic_options(path: Path, n: int | None, only: bool = False) -> dict:
    return {**SONNET_OPTIONS, "data.max_train": 7, "data.synthetic.path": str(path), "data.synthetic.n": n,
            "data.synthetic.only": only}


def test_synthetic_sonnets_not_made_yet_count_at_the_real_sonnets_mean(tmp_path, monkeypatch):
    """5 sonnets of a file not made yet, at the mean of every training sonnet (117.33 tokens, not the 7 real ones'
    of the subset): 5 x 117.33 = 586.67, so 587 tokens; with the 7-example subset's 4 sonnets (700 tokens): 9
    examples, 3 steps an epoch, 2 epochs: 6 steps, 2 x 1,287 = 2,574 tokens. --synthetic-only: 5 examples
    (2 steps) of 587 tokens. No --synthetic-n: the real sonnets alone."""
    fake = FakeCounts(SONNETS)
    monkeypatch.setattr(estimate, "_counts", fake)
    path = tmp_path / "flash.jsonl"
    w = estimate.run_workload(run_of(tmp_path, **synthetic_options(path, 5)))
    assert (w.train_tokens, w.train_steps) == (2574, 6)
    assert f"{path} not made yet: its sonnets counted at 117 tokens each (the real training sonnets' mean)" in w.assumed
    train = [(c["limit"], c["seed"], c["synthetic"], c["max_len"]) for c in fake.calls if c["split"] == "train"]
    assert train == [(7, 5, None, 128), (None, 0, None, 128)]  # both cut at the tiny model's 128 positions
    w = estimate.run_workload(run_of(tmp_path, **synthetic_options(path, 5, only=True)))
    assert (w.train_tokens, w.train_steps) == (2 * 587, 2 * 2)
    w = estimate.run_workload(run_of(tmp_path, **synthetic_options(path, None)))
    assert (w.train_tokens, w.train_steps) == (2 * 700, 2 * 2)


def test_one_training_sonnet_is_its_own_mean(tmp_path, monkeypatch):
    monkeypatch.setattr(estimate, "_counts", FakeCounts({**SONNETS, ("sonnet", "all"): SplitCounts((91,))}))
    w = estimate.run_workload(run_of(tmp_path, **synthetic_options(tmp_path / "x.jsonl", 3, only=True)))
    assert w.train_tokens == 2 * 3 * 91


def test_a_synthetic_file_that_exists_is_counted_from_it(tmp_path, monkeypatch):
    """The file's own sonnets: the training counts come from loading the task with the synthetic settings."""
    path = tmp_path / "flash.jsonl"
    path.write_text("", encoding="utf-8")
    fake = FakeCounts({**SONNETS, ("sonnet", "train", "synthetic"): SplitCounts((1, 2, 3, 4, 5, 6, 7), 333)})
    monkeypatch.setattr(estimate, "_counts", fake)
    w = estimate.run_workload(run_of(tmp_path, **synthetic_options(path, 5)))
    assert (w.train_tokens, w.train_steps) == (2 * 333, 2 * 3)  # 7 examples at batch 3
    first = fake.calls[0]
    assert (first["split"], first["limit"], first["seed"], first["synthetic"].path) == ("train", 7, 5, str(path))
    assert not any("not made yet" in a for a in w.assumed)


# ---------------------------------------------------------------------------------------------- pricing

# 2 ms a trained token and a 0.5 s AdamW step for 500M parameters; a 4 s model build.
RATES = Rates("cpu", 2e-3, 0.5, 4.0, 500_000_000, "stated: by hand", 2)
SPEED = 0.35 * 989e12  # MFU x the H100's bf16 peak


def workload(**changes) -> Workload:
    """1B parameters (twice the rates' model), 3 layers, 4 epochs."""
    g = Generation(prompts=5, prefill_tokens=20, prefill_batches=2, decoded_tokens=40, decode_steps=9, new_tokens=33)
    w = Workload("w", "m", 1_000_000_000, 3, 4, train_tokens=100_000, train_steps=7, eval_tokens=30, eval_batches=4,
                 generation=g, processes=2, model_loads=3, assumed=["a guess"])
    return replace(w, **changes)


def test_price_by_hand():
    """Twice the rates' parameters: 4 ms a trained token, a 1 s optimizer step, an 8 s build.
    CPU: training 100,000 x 4 ms + 7 x 1 s = 407 s; evaluation (30 + 20 prefilled) x 4 ms / 3 = 0.0667 s;
    generation 40 x 4 ms = 0.16 s; start-ups 2 processes x 3 s + 3 loads x 8 s = 30 s.
    GPU, FLOP: training 6 x 1e9 x 100,000 = 6e14, evaluation 2 x 1e9 x 50 = 1e11, generation 2 x 1e9 x 40 = 8e10.
    GPU, launches of 10 us: training 7 steps x (3 layers x 45 + 40) = 1,225; evaluation (4 + 2) batches x
    (3 x 15 + 10) = 330; generation 9 steps x (3 x 15 + 20) = 585. Start-ups 2 x (3 + 2) s + 3 x 8 s = 34 s.
    Training is FLOP-bound (1.73 s over 0.012 s), evaluation and generation launch-bound."""
    c = estimate.price(workload(), RATES)
    assert (c.runs, c.processes, c.train_tokens, c.train_steps, c.eval_tokens) == (1, 2, 100_000, 7, 30)
    assert (c.prompts, c.prefill_tokens, c.decoded_tokens, c.new_tokens, c.decode_steps) == (5, 20, 40, 33, 9)
    assert c.epochs == {4} and c.assumed == ["a guess"] and c.unknown == []
    assert (c.train_flop, c.eval_flop, c.gen_flop) == (6e14, 1e11, 8e10)
    assert c.cpu_train_s == pytest.approx(407.0)
    assert c.cpu_eval_s == pytest.approx(0.2 / 3)
    assert c.cpu_gen_s == pytest.approx(0.16)
    assert c.startup_s == pytest.approx(30.0)
    assert c.gpu_flop_s == pytest.approx((6e14 / SPEED, 1e11 / SPEED, 8e10 / SPEED))
    assert c.gpu_launch_s == pytest.approx((1225e-5, 330e-5, 585e-5))
    assert c.gpu_startup_s == pytest.approx(34.0)
    assert c.cpu_s == pytest.approx(407 + 0.2 / 3 + 0.16 + 30)
    assert c.gpu_s == pytest.approx(6e14 / SPEED + 330e-5 + 585e-5 + 34)
    assert (c.run_cpu_s, c.run_gpu_s, c.run_startup_s) == ([c.cpu_s], [c.gpu_s], [c.startup_s])


def test_price_scales_with_the_forward_and_decode_factors(monkeypatch):
    """A decoded token at 2 trained tokens' cost and a forward one at 1/4: generation 40 x 4 ms x 2 = 0.32 s,
    evaluation 50 x 4 ms / 4 = 0.05 s."""
    monkeypatch.setattr(estimate, "DECODE_PER_TRAIN_TOKEN", 2.0)
    monkeypatch.setattr(estimate, "FORWARD_PER_TRAIN_TOKEN", 0.25)
    c = estimate.price(workload(), RATES)
    assert (c.cpu_gen_s, c.cpu_eval_s) == pytest.approx((0.32, 0.05))


def test_price_of_lora_and_in_process_runs():
    """LoRA: no full AdamW step (training 400 s, not 407); in-process: no interpreter start-up (3 x 8 s = 24 s;
    on the GPU also no CUDA context: 24 s)."""
    c = estimate.price(workload(full_optimizer=False, processes=0), RATES)
    assert c.cpu_train_s == pytest.approx(400.0)
    assert (c.startup_s, c.gpu_startup_s) == pytest.approx((24.0, 24.0))


def test_the_cost_sums_its_phases_and_takes_the_larger_gpu_bound():
    c = Cost(cpu_train_s=1.0, cpu_eval_s=20.0, cpu_gen_s=300.0, startup_s=4000.0,
             gpu_flop_s=(5.0, 0.5, 30.0), gpu_launch_s=(1.0, 7.0, 2.0), gpu_startup_s=100.0)
    assert c.cpu_s == 4321.0
    assert c.gpu_s == 5.0 + 7.0 + 30.0 + 100.0


# ---------------------------------------------------------------------------------------------- summing costs

NUMBERS = [f.name for f in fields(Cost) if isinstance(getattr(Cost(), f.name), (int, float))]


@st.composite
def costs(draw) -> Cost:
    small = st.integers(0, 10**6)
    c = Cost(**{name: draw(small) for name in NUMBERS})
    for f in fields(Cost):
        value = getattr(c, f.name)
        if isinstance(value, tuple):
            setattr(c, f.name, draw(st.tuples(small, small, small)))
        elif isinstance(value, set):
            setattr(c, f.name, draw(st.sets(st.integers(0, 12), max_size=3)))
        elif isinstance(value, list):
            setattr(c, f.name, draw(st.lists(st.integers(0, 9).map(str), max_size=3)))
    return c


@settings(max_examples=80, deadline=None)
@given(costs(), costs(), costs())
def test_costs_add_field_by_field(x, y, z):
    """Numbers and tuples (element by element) add, commute and associate; epochs unite; lists concatenate in
    order (a run's seconds stay in the order of the runs); Cost() adds nothing."""
    assert x + Cost() == x and Cost() + x == x
    s = x + y
    for f in fields(Cost):
        a, b, got = getattr(x, f.name), getattr(y, f.name), getattr(s, f.name)
        if isinstance(a, tuple):
            assert got == (a[0] + b[0], a[1] + b[1], a[2] + b[2]), f.name
        elif isinstance(a, set):
            assert got == a | b, f.name
        else:
            assert got == a + b, f.name  # numbers, lists
    numbers = lambda c: [getattr(c, n) for n in NUMBERS] + [c.gpu_flop_s, c.gpu_launch_s, c.epochs]  # noqa: E731
    assert numbers(x + y) == numbers(y + x)
    assert (x + y) + z == x + (y + z)


def test_costs_add_by_hand():
    a = Cost(runs=1, train_tokens=10, cpu_eval_s=0.5, gpu_flop_s=(1.0, 2.0, 3.0), epochs={1, 3}, run_cpu_s=[5.0],
             unknown=["x"])
    b = Cost(runs=2, train_tokens=7, cpu_eval_s=0.25, gpu_flop_s=(10.0, 20.0, 30.0), epochs={3, 10}, run_cpu_s=[6.0],
             unknown=["y"])
    s = a + b
    assert (s.runs, s.train_tokens, s.cpu_eval_s, s.gpu_flop_s) == (3, 17, 0.75, (11.0, 22.0, 33.0))
    assert (s.epochs, s.run_cpu_s, s.unknown) == ({1, 3, 10}, [5.0, 6.0], ["x", "y"])
    assert (a.runs, a.epochs, a.run_cpu_s) == (1, {1, 3}, [5.0])  # the terms are left as they were


# ---------------------------------------------------------------------------------------------- the printed lines

def test_cost_lines_by_hand():
    """Every field in its place: 6,050.5 s of CPU (5,400 + 45 + 5.5 + 600) is 101 min; the GPU, per phase the larger
    bound, 4.5 + 30 + 9,000 + 50 = 9,084.5 s, 2.5 h; the evaluation's forward tokens are its own plus the
    prefilled prompts (1,000 + 234); epochs sorted as numbers; two of the uncounted runs named; three of the four
    distinct assumptions, and how many."""
    c = Cost(runs=3, processes=4, train_tokens=12345, train_steps=678, eval_tokens=1000, prompts=56,
             prefill_tokens=234, decoded_tokens=2345, new_tokens=789, decode_steps=321, train_flop=1.5e12,
             eval_flop=2.5e10, gen_flop=3.5e9, cpu_train_s=5400.0, cpu_eval_s=45.0, cpu_gen_s=5.5, startup_s=600.0,
             gpu_flop_s=(3.0, 30.0, 300.0), gpu_launch_s=(4.5, 12.0, 9000.0), gpu_startup_s=50.0,
             epochs={10, 1, 3}, unknown=["a (x)", "b (y)", "c (z)"], assumed=["q", "p", "q", "s", "r"])
    rates = Rates("cpu:9", 1e-3, 0.3, 1.0, 1, "stated: the docs", 2)
    assert estimate.cost_lines(c, rates) == [
        "  3 runs, epochs 1/3/10, 12,345 training tokens; ~101 min in all on cpu:9 (estimate; stated: the docs)",
        "    training: 12,345 tokens in 678 steps, 1.5e+12 FLOP (6 N per token)",
        "    evaluation: 1,234 forward tokens (dev every epoch, dev and test at the end, follow-up checks, sonnet "
        "prompts), 2.5e+10 FLOP",
        "    sonnet generation: 56 prompts, ~789 new tokens expected (the true continuations' lengths), 2,345 decoded "
        "in 321 decode steps, 3.5e+09 FLOP",
        "    CPU estimate (cpu:9): training ~90 min, evaluation ~45 s, generation ~5.5 s, start-ups ~10 min: ~101 min",
        "    GPU estimate, FLOP-bound (one H100 (bf16 dense peak 989 TFLOP/s) at MFU 0.35): training ~3.0 s, "
        "evaluation ~30 s, generation ~5 min",
        "    GPU estimate, launch-bound (~10 us a kernel launch): training ~4.5 s, evaluation ~12 s, generation "
        "~2.5 h (321 decode steps)",
        "    start-ups: 4 processes x (~3 s interpreter + imports, stated) + model builds: ~10 min on cpu:9, ~50 s on "
        "the GPU (+2 s CUDA context each)",
        "    GPU estimate in all (per phase the larger bound, plus start-ups): ~2.5 h",
        "    no token count for 3 run(s): a (x); b (y)",
        "    assumed: p; q; r; ... (4 in all)",
    ]


def test_cost_lines_without_epochs_unknowns_or_many_assumptions():
    rates = Rates("cpu", 1e-3, 0.3, 1.0, 1, "stated", 2)
    lines = estimate.cost_lines(Cost(assumed=["c", "b", "a", "b"]), rates)
    assert lines[0] == "  0 runs, epochs ?, 0 training tokens; ~0.0 s in all on cpu (estimate; stated)"
    assert len(lines) == 10 and lines[-1] == "    assumed: a; b; c"  # three: no "..."
    assert len(estimate.cost_lines(Cost(), rates)) == 9


# ---------------------------------------------------------------------------------------------- Gemini

def synthetic_run(path, n: int | None, filt: str = "all") -> Run:
    return Run(f"{Path(path).stem}-{n}-{filt}", settings_of({"data.task": "sonnet", "data.synthetic.path": str(path),
                                                             "data.synthetic.n": n, "data.synthetic.filter": filt}))


def test_synthetic_needs_takes_the_largest_arm_per_file_and_filter():
    """a.jsonl: perfect 300 (of 300, 200 and an intended 250), all 70 (of 50 and an intended 70); b.jsonl: a run
    with no --synthetic-n asks nothing of it; c.jsonl: only an intended arm."""
    runs = [synthetic_run("a.jsonl", 300, "perfect"), synthetic_run("a.jsonl", 200, "perfect"),
            synthetic_run("a.jsonl", 50), synthetic_run("b.jsonl", None),
            Run("real", settings_of({"data.task": "sst"}))]
    intended = [("a.jsonl", "all", 70), ("c.jsonl", "perfect", 5), ("a.jsonl", "perfect", 250)]
    assert estimate.synthetic_needs(runs, intended) == {
        Path("a.jsonl"): {"perfect": 300, "all": 70}, Path("b.jsonl"): {"perfect": 0, "all": 0},
        Path("c.jsonl"): {"perfect": 5, "all": 0}}
    assert estimate.synthetic_needs(runs[:1]) == {Path("a.jsonl"): {"perfect": 300, "all": 0}}
    assert estimate.synthetic_needs([]) == {}


def measured_file(folder: Path) -> Path:
    """The fixture's flash file (5 requests, 4 kept, 2 perfect) with a summary that billed $0.37 for 500 prompt,
    1,250 output and 3,000 thinking tokens: 100, 250 and 600 a request."""
    folder.mkdir()
    path = folder / "gemini-2.5-flash.jsonl"
    shutil.copyfile(TINY_SYNTHETIC_DIR / "gemini-2.5-flash.jsonl", path)
    summary = json.loads((TINY_SYNTHETIC_DIR / "gemini-2.5-flash.jsonl.summary.json").read_text(encoding="utf-8"))
    summary.update(jsonl_sha256=hashlib.sha256(path.read_bytes()).hexdigest(), cost_usd=0.37,
                   tokens={"input": 500, "output": 1250, "thinking": 3000, "total": 4750})
    (folder / "gemini-2.5-flash.jsonl.summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return path


def test_gemini_bill_by_hand(tmp_path):
    """flash (measured): 2 perfect of 5 requests, 4 kept: 10 perfect need ceil(10 / 0.4) = 25 requests, 30 kept
    ceil(30 / 0.8) = 38: 38, 33 more than the 5 made; 3,300 prompt tokens at $0.30/M and 8,250 + 19,800 output and
    thinking at $2.50/M: $0.00099 + $0.070125 = $0.071115, plus the $0.37 billed.
    pro (not made): 1 perfect at the study's 75% is 2 requests of 100 + 250 + 1,500 tokens: 200 prompt at $1.25/M
    and 500 + 3,000 at $10/M, $0.00025 + $0.035 = $0.03525.
    teach (no price, no rate): 4 requests of 100 + 250 + 0 tokens, priced at nothing.
    The fixture flash-lite file (5 requests, 4 kept, 2 perfect today, no token counts, $0 billed): 1 kept needs
    ceil(1 / 0.8) = 2, none more. In all $0.37 + $0.071115 + $0.03525 = $0.476365."""
    flash = measured_file(tmp_path / "m")
    pro, teach = tmp_path / "gemini-2.5-pro.jsonl", tmp_path / "teach.jsonl"
    lite = TINY_SYNTHETIC_DIR / "gemini-2.5-flash-lite.jsonl"
    runs = [synthetic_run(flash, 10, "perfect"), synthetic_run(flash, 30), synthetic_run(pro, 1, "perfect")]
    lines, usd = estimate.gemini_bill(runs, [(str(teach), "all", 4), (str(lite), "all", 1)])
    prices = "at the prices of 2026-11-28"
    by_teacher = {line.split(":")[0]: line for line in lines[:-1]}
    assert len(lines) == 5 and sorted(by_teacher) == [f"  Gemini {t}" for t in (
        "gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-2.5-pro", "teach")]
    assert by_teacher["  Gemini gemini-2.5-flash-lite"] == (
        f"  Gemini gemini-2.5-flash-lite: {lite}: 5 requests made, $0.00 billed (its summary); 2 requests for 0 "
        "perfect sonnets (measured: 2 perfect of 5 requests) and 1 kept: 0 more, ~0 prompt + 0 output + 0 thinking "
        f"tokens (assumed per request: 100 prompt, 250 output, 0 thinking tokens), ~$0.00 {prices}")
    assert by_teacher["  Gemini gemini-2.5-pro"] == (
        f"  Gemini gemini-2.5-pro: {pro} not made yet; 2 requests for 1 perfect sonnets (the study's perfect rate "
        "75%, assumed) and 0 kept: 2 more, ~200 prompt + 500 output + 3,000 thinking tokens (assumed per request: "
        f"100 prompt, 250 output, 1500 thinking tokens), ~$0.04 {prices}")
    assert by_teacher["  Gemini gemini-2.5-flash"] == (
        f"  Gemini gemini-2.5-flash: {flash}: 5 requests made, $0.37 billed (its summary); 38 requests for 10 "
        "perfect sonnets (measured: 2 perfect of 5 requests) and 30 kept: 33 more, ~3,300 prompt + 8,250 output + "
        f"19,800 thinking tokens (the file's mean per request), ~$0.07 {prices}")
    assert by_teacher["  Gemini teach"] == (
        f"  Gemini teach: {teach} not made yet; 4 requests for 0 perfect sonnets (no perfect rate known: every "
        "request assumed perfect) and 4 kept: 4 more, ~400 prompt + 1,000 output + 0 thinking tokens (assumed per "
        f"request: 100 prompt, 250 output, 0 thinking tokens), price unknown {prices}")
    assert usd == pytest.approx(0.37 + 0.071115 + 0.03525)
    assert lines[-1] == "  Gemini total: ~$0.48 (billed + still to request; an estimate)"


def test_gemini_bill_counts_a_zero_bill_as_zero(tmp_path):
    """The fixture flash file: $0.00 billed, 5 requests, 2 perfect: 1 perfect needs ceil(1 / 0.4) = 3 requests,
    none more; no token counts in it, so flash's stated 1,000 thinking tokens a request."""
    lines, usd = estimate.gemini_bill([synthetic_run(TINY_SYNTHETIC_DIR / "gemini-2.5-flash.jsonl", 1, "perfect")])
    assert usd == 0.0 and "5 requests made, $0.00 billed (its summary); 3 requests for 1 perfect sonnets" in lines[0]
    assert "0 more, ~0 prompt" in lines[0] and "250 output, 1000 thinking tokens)" in lines[0]
    assert lines[-1] == "  Gemini total: ~$0.00 (billed + still to request; an estimate)"


def test_no_synthetic_run_no_gemini_bill():
    assert estimate.gemini_bill([Run("real", settings_of({"data.task": "sst"}))]) == (
        ["  Gemini: none (no run trains on synthetic sonnets)"], 0.0)


def test_gemini_bill_of_a_file_with_no_perfect_sonnet_assumes_the_studys_rate(tmp_path):
    """flash file: 3 requests, 2 kept, none perfect (was a ZeroDivisionError: a measured perfect rate of 0). 4
    perfect at the study's 72% need ceil(4 / 0.72) = ceil(5.56) = 6 requests, 3 more; no total token count in it,
    so the assumed 100 + 250 + 1,000 tokens a request: 300 prompt at $0.30/M and 750 + 3,000 at $2.50/M,
    $0.00009 + $0.009375 = $0.009465; billed (recomputed, no summary beside it) 30 x 0.30 + 270 x 2.50 per M:
    $0.000684."""
    path = tmp_path / "gemini-2.5-flash.jsonl"
    rows = [{"id": f"00000{i}", "teacher": "gemini-2.5-flash", "status": status, "text": text,
             "usage": {"prompt_tokens": 10, "output_tokens": 90}}
            for i, (status, text) in enumerate([("kept", "one line"), ("rejected", None), ("kept", "two\nlines")])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    lines, usd = estimate.gemini_bill([synthetic_run(path, 4, "perfect")])
    assert lines[0] == (
        f"  Gemini gemini-2.5-flash: {path}: 3 requests made, $0.00 billed (its summary); 6 requests for 4 perfect "
        "sonnets (measured: 0 perfect of 3 requests; the study's perfect rate 72%, assumed) and 0 kept: 3 more, "
        "~300 prompt + 750 output + 3,000 thinking tokens (assumed per request: 100 prompt, 250 output, 1000 "
        "thinking tokens), ~$0.01 at the prices of 2026-11-28")
    assert usd == pytest.approx(0.000684 + 0.009465)
