"""The training loop held to what it promises (minigpt2/train.py's docstrings and the README's reading order):

- one optimizer step = the mean gradient of its k micro-batches (a short last group averages its own), clipped to
  the global norm `grad_clip`, then AdamW with decay on matrices only, at the LR of a linear warmup followed by
  linear / cosine decay to 0 (or constant); checked against a hand-written loop (own AdamW, own clipping, own
  schedule) on a tiny fp64 model;
- every epoch visits every example once, in batches whose order the seed decides (same seed: same order;
  another seed or another epoch: another order); the seed also decides the dropout masks;
- training runs in train mode, evaluation in eval mode (and gives the mode back);
- a non-finite training loss stops the run before any update, with nothing written;
- a run stopped after an epoch and resumed ends with the weights of the uninterrupted run.
"""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn as nn

from minigpt2.atomic import atomic_write_json
from minigpt2.checkpoint import read_safetensors
from minigpt2.train import EpochEnd, TrainConfig, TrainingDiverged, keep_resume_state, train
from tasks.base import Example, predict_classes
from tasks.base import collate as _collate

V, C = 9, 4
LENGTHS = [1, 2, 3, 4, 5, 2, 3, 1, 4, 5, 3, 2, 1, 4, 2, 3, 5, 1, 2, 4, 3, 1]  # 22 examples: batches of 4 -> 6


class Toy(nn.Module):
    """A regression on mean-pooled embeddings: a matrix (embedding), a linear (matrix + bias), a gain vector."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.emb = nn.Embedding(V, C)
        self.lin = nn.Linear(C, 1)
        self.gain = nn.Parameter(torch.ones(C))
        self.drop = nn.Dropout(0.0)  # a test sets p before training
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.double()
        self.modes: list[bool] = []
        self.poison = False

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.modes.append(self.training)
        mask = batch["attention_mask"].double()
        h = self.emb(batch["input_ids"].clamp(max=V - 1)) * self.gain  # padding (masked) may be any id
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        pred = self.lin(self.drop(pooled)).squeeze(-1)
        loss = ((pred - batch["labels"].double()) ** 2).mean()
        return loss * float("nan") if self.poison else loss

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.modes.append(self.training)
        return torch.zeros(batch["input_ids"].size(0), dtype=torch.long)


def collate(chunk: list[Example]) -> dict[str, torch.Tensor]:
    return _collate(chunk, pad_id=0)  # the toy's vocabulary is small


def examples() -> list[Example]:
    return [Example(str(i), [(i * 7 + j) % V for j in range(n)], label=i % 3) for i, n in enumerate(LENGTHS)]


class Recorder:
    """A collate that remembers the example ids of every batch it made, in order."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def __call__(self, chunk: list[Example]) -> dict[str, torch.Tensor]:
        self.batches.append([e.id for e in chunk])
        return collate(chunk)


def run(tmp_path, module: nn.Module | None = None, resume: bool = False, evaluate=None, **cfg):
    module = module or Toy()
    rec = Recorder()
    def write_metrics(end: EpochEnd) -> None:
        atomic_write_json(tmp_path / "metrics.json", end.metrics)

    metrics = train(module, examples(), rec, TrainConfig(progress=False, **cfg),
                    evaluate=evaluate or (lambda m: {"acc": 0.0}), metric="acc",
                    callbacks=[keep_resume_state(tmp_path / "last"), write_metrics],
                    resume_from=tmp_path / "last" if resume else None)
    return module, rec.batches, metrics


# ------------------------------------------------------------------------------------------ the reference loop

def schedule(step: int, total: int, warmup: float, kind: str) -> float:
    """LR multiplier: linear warmup over round(warmup * total) steps from lr/warm, then decay to 0 (or flat)."""
    warm = round(warmup * total)
    if step < warm:
        return (step + 1) / warm
    if kind == "constant":
        return 1.0
    x = (step - warm) / max(1, total - warm)
    return 1.0 - x if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * x))


def reference(module: Toy, batches_per_epoch: list[list[list[str]]], lr: float, weight_decay: float, grad_clip: float,
              grad_accum: int, warmup: float, kind: str) -> dict[str, torch.Tensor]:
    """The training loop by hand: mean gradient per group, global-norm clip, AdamW (decay on 2-D tensors only)."""
    by_id = {e.id: e for e in examples()}
    params = dict(module.named_parameters())
    m = {n: torch.zeros_like(p) for n, p in params.items()}
    v = {n: torch.zeros_like(p) for n, p in params.items()}
    total = sum(math.ceil(len(b) / grad_accum) for b in batches_per_epoch)
    step = 0
    for batches in batches_per_epoch:
        groups = [batches[i:i + grad_accum] for i in range(0, len(batches), grad_accum)]
        for group in groups:
            grads = {n: torch.zeros_like(p) for n, p in params.items()}
            for ids in group:
                loss = module(collate([by_id[i] for i in ids]))
                for n, g in zip(params, torch.autograd.grad(loss, list(params.values()))):
                    grads[n] += g / len(group)
            if grad_clip > 0:
                norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads.values()))
                coef = min(1.0, grad_clip / (norm + 1e-6))
                grads = {n: g * coef for n, g in grads.items()}
            rate = lr * schedule(step, total, warmup, kind)
            step += 1
            with torch.no_grad():
                for n, p in params.items():
                    if p.dim() >= 2:
                        p.mul_(1 - rate * weight_decay)
                    m[n] = 0.9 * m[n] + 0.1 * grads[n]
                    v[n] = 0.999 * v[n] + 0.001 * grads[n] ** 2
                    m_hat, v_hat = m[n] / (1 - 0.9 ** step), v[n] / (1 - 0.999 ** step)
                    p.sub_(rate * m_hat / (v_hat.sqrt() + 1e-8))
    return {n: p.detach().clone() for n, p in params.items()}


CASES = [  # grad_accum, grad_clip, schedule, warmup, epochs
    (1, 0.0, "linear", 0.3, 2),
    (4, 0.05, "cosine", 0.2, 2),  # 6 batches: groups of 4 and 2 (the short last group averages over 2)
    (2, 0.05, "constant", 0.0, 1),
    (3, 0.5, "linear", 0.0, 2),
]


@pytest.mark.parametrize("accum,clip,kind,warmup,epochs", CASES)
def test_training_equals_the_hand_written_loop(tmp_path, accum, clip, kind, warmup, epochs):
    start = Toy()
    ref_module = copy.deepcopy(start)
    trained, batches, metrics = run(tmp_path, start, epochs=epochs, batch_size=4, lr=0.05, weight_decay=0.1,
                                    grad_clip=clip, grad_accum=accum, schedule=kind, warmup=warmup, seed=5)
    per_epoch = [batches[i * 6:(i + 1) * 6] for i in range(epochs)]
    assert sum(len(b) for b in per_epoch) == len(batches)
    expected = reference(ref_module, per_epoch, 0.05, 0.1, clip, accum, warmup, kind)
    assert metrics["optimizer_steps_per_epoch"] == math.ceil(6 / accum)
    for name, p in trained.named_parameters():
        assert torch.allclose(p.detach(), expected[name], rtol=1e-9, atol=1e-11), name
    # and the weights moved: the comparison is not between two untouched models
    assert not torch.allclose(trained.lin.weight, Toy().lin.weight)


def test_the_reported_train_loss_is_the_mean_micro_batch_loss(tmp_path):
    start = Toy()
    probe = copy.deepcopy(start)
    _, batches, metrics = run(tmp_path, start, epochs=1, batch_size=4, lr=1e-12, grad_clip=0.0, seed=5)
    by_id = {e.id: e for e in examples()}
    with torch.no_grad():
        losses = [float(probe(collate([by_id[i] for i in ids]))) for ids in batches]
    assert metrics["epochs"][0]["train_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-6)


def test_each_epoch_visits_every_example_once_in_batches(tmp_path):
    _, batches, _ = run(tmp_path, epochs=2, batch_size=4, seed=5)
    assert len(batches) == 12
    for epoch in (batches[:6], batches[6:]):
        ids = [i for b in epoch for i in b]
        assert sorted(ids, key=int) == [str(i) for i in range(len(LENGTHS))]
        assert sorted(len(b) for b in epoch) == [2, 4, 4, 4, 4, 4]


def test_the_seed_decides_the_batch_order(tmp_path):
    _, a, _ = run(tmp_path / "a", epochs=2, batch_size=4, seed=5)
    _, b, _ = run(tmp_path / "b", epochs=2, batch_size=4, seed=5)
    _, c, _ = run(tmp_path / "c", epochs=2, batch_size=4, seed=6)
    assert a == b  # the same seed: the same batches in the same order
    assert a[:6] != c[:6] and a[6:] != c[6:]  # another seed: another order, in every epoch
    assert a[:6] != a[6:]  # each epoch draws its own order


def test_the_seed_decides_the_dropout_masks():
    """One example, one batch: no order to draw, so only the dropout masks can tell two seeds apart."""
    def trained(seed: int) -> torch.Tensor:
        module = Toy()
        module.drop.p = 0.5
        train(module, examples()[4:5], collate, TrainConfig(progress=False, epochs=3, batch_size=1, lr=0.05,
                                                             seed=seed),
              evaluate=lambda m: {"acc": 0.0}, metric="acc")
        return module.lin.weight.detach().clone()

    a, b, c = trained(5), trained(5), trained(6)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_batches_hold_examples_of_similar_length(tmp_path):
    """Length bucketing: within a bucket the examples are sorted by length before being cut into batches."""
    _, batches, _ = run(tmp_path, epochs=1, batch_size=4, seed=5)
    n = {str(i): L for i, L in enumerate(LENGTHS)}
    spread = sum(max(n[i] for i in b) - min(n[i] for i in b) for b in batches)
    assert spread <= 6  # 22 lengths over 1..5 sorted into batches of 4: at most 1-2 apart in each


def test_training_runs_in_train_mode_and_evaluation_in_eval_mode(tmp_path):
    in_training: list[bool] = []
    in_eval: list[bool] = []

    def evaluate(module: Toy) -> dict[str, float]:
        in_training.extend(module.modes)
        module.modes.clear()
        predict_classes(module, examples()[:5], 2, torch.device("cpu"))
        in_eval.extend(module.modes)
        assert module.training  # predict_classes gives the mode back
        module.eval()  # an evaluation that leaves eval mode on must not make the next epoch train in it
        module.modes.clear()
        return {"acc": 0.0}

    run(tmp_path, epochs=2, batch_size=4, evaluate=evaluate)
    assert len(in_eval) == 2 * 3 and not any(in_eval)
    assert len(in_training) == 2 * 6 and all(in_training)


def test_every_training_step_runs_inside_the_step_context_and_evaluation_outside_it(tmp_path):
    """`step_context` (`--compile`'s compiled blocks) is entered once per epoch around the training steps and
    left before the dev evaluation."""
    import contextlib

    inside, entered, seen_by_forward, seen_by_eval = [False], [], [], []

    @contextlib.contextmanager
    def steps():
        entered.append(True)
        inside[0] = True
        try:
            yield
        finally:
            inside[0] = False

    module = Toy()
    real = module.forward
    module.forward = lambda batch: seen_by_forward.append(inside[0]) or real(batch)
    train(module, examples(), collate, TrainConfig(progress=False, epochs=2, batch_size=4),
          evaluate=lambda m: seen_by_eval.append(inside[0]) or {"acc": 0.0}, metric="acc", step_context=steps)
    assert len(entered) == 2 and len(seen_by_forward) == 2 * 6 and all(seen_by_forward)
    assert seen_by_eval == [False, False]


def test_dev_loss_runs_in_eval_mode_without_gradients():
    from app.finetune import dev_loss
    from tasks import get_task

    module = Toy().train()
    seen = []
    real = module.forward

    def forward(batch):
        seen.append(torch.is_grad_enabled())
        return real(batch)

    module.forward = forward
    exs = examples()
    got = dev_loss(module, exs, get_task("sst"), 5, torch.device("cpu"), None)
    assert module.training and module.modes and not any(module.modes) and not any(seen)
    with torch.no_grad():
        expected = sum(float(real(collate(exs[i:i + 5]))) * len(exs[i:i + 5]) for i in range(0, len(exs), 5))
    assert got == pytest.approx(expected / len(exs), rel=1e-9)


def test_eval_batches_keeps_the_order_unless_asked_to_sort_and_runs_under_the_dtype_given():
    """The one evaluation loop (`dev_loss`, `predict_classes`): batches in the examples' order, or length-sorted
    with `by_length`; eval mode, no grad, the autocast dtype given; the mode given back."""
    from tasks.base import eval_batches

    module = Toy().train()
    exs = examples()
    seen = []

    def step(batch):
        seen.append((module.training, torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"),
                     torch.get_autocast_dtype("cpu")))
        return int(batch["input_ids"].size(0))

    plain = eval_batches(module, exs, 5, torch.device("cpu"), None, step)
    assert [i for idx, _ in plain for i in idx] == list(range(len(exs))) and [n for _, n in plain] == [5, 5, 5, 5, 2]
    assert module.training and not any(t or g or a for t, g, a, _ in seen)
    seen.clear()
    by_length = eval_batches(module, exs, 5, torch.device("cpu"), torch.bfloat16, step, by_length=True)
    flat = [i for idx, _ in by_length for i in idx]
    assert sorted(flat) == list(range(len(exs))) and [LENGTHS[i] for i in flat] == sorted(LENGTHS)
    assert module.training and all(a and d is torch.bfloat16 and not t and not g for t, g, a, d in seen)


def test_a_non_finite_training_loss_stops_before_any_update(tmp_path):
    module = Toy()
    module.poison = True
    before = copy.deepcopy(module.state_dict())
    with pytest.raises(TrainingDiverged, match="training loss is nan"):
        run(tmp_path, module, epochs=2, batch_size=4, grad_accum=2)
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "last").exists()


def test_a_resumed_run_ends_with_the_uninterrupted_weights(tmp_path):
    cfg = dict(epochs=3, batch_size=4, lr=0.05, grad_accum=2, warmup=0.2, seed=9)
    whole, _, _ = run(tmp_path / "whole", Toy(), **cfg)
    run(tmp_path / "cut", Toy(), stop_after_epoch=1, **cfg)
    resumed, batches, metrics = run(tmp_path / "cut", Toy(), resume=True, **cfg)
    assert len(batches) == 12 and metrics["resumed_from_epoch"] == 1
    assert [r["epoch"] for r in metrics["epochs"]] == [1, 2, 3]
    for (name, p), q in zip(whole.named_parameters(), resumed.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-12), name


def test_end_of_epoch_callbacks_see_every_epoch_in_order_and_the_best_so_far():
    """The callbacks run after each epoch's evaluation, in the order given; `improved` marks a strictly higher
    metric (a tie keeps the earlier epoch as best), and `metrics` already holds the epoch and the best."""
    scores = iter([0.5, 0.7, 0.7, 0.6])
    seen: list[tuple] = []

    def first(end: EpochEnd) -> None:
        seen.append(("first", end.epoch, end.improved, end.metrics["best"]["epoch"], len(end.metrics["epochs"]),
                     end.row["acc"], end.optimizer.param_groups[0]["lr"] == end.scheduler.get_last_lr()[0]))

    def second(end: EpochEnd) -> None:
        seen.append(("second", end.epoch))

    metrics = train(Toy(), examples(), collate, TrainConfig(progress=False, epochs=4, batch_size=4),
                    evaluate=lambda m: {"acc": next(scores)}, metric="acc", callbacks=[first, second])
    assert seen == [("first", 1, True, 1, 1, 0.5, True), ("second", 1),
                    ("first", 2, True, 2, 2, 0.7, True), ("second", 2),
                    ("first", 3, False, 2, 3, 0.7, True), ("second", 3),
                    ("first", 4, False, 2, 4, 0.6, True), ("second", 4)]
    assert metrics["best"] == {"epoch": 2, "acc": 0.7}


def test_keep_resume_state_writes_what_resume_from_continues(tmp_path):
    """`keep_resume_state(folder)` saves after every epoch; `resume_from` without a saved state starts afresh."""
    cfg = dict(epochs=2, batch_size=4, lr=0.05)
    _, batches, metrics = run(tmp_path, Toy(), resume=True, **cfg)  # nothing saved yet: a fresh run
    assert len(batches) == 12 and "resumed_from_epoch" not in metrics
    state = read_safetensors(tmp_path / "last" / "state.safetensors")[1]["trainer"]
    assert json.loads(state)["epoch"] == 2 and len(json.loads(state)["history"]) == 2


def test_each_epoch_writes_the_best_weights_then_the_resume_state_then_the_metrics(tmp_path, monkeypatch):
    """finetune's end-of-epoch callbacks: the folder is checked first; the best weights are written only for an
    epoch that improved, and before the resume state and metrics.json, so that a kill between two writes never
    leaves a resume state or metrics naming a best epoch whose weights are not on disk."""
    from app import finetune
    from tests.app.test_finetune import finetune_args

    written: list[str] = []
    monkeypatch.setattr(finetune.runfolder, "check_still_there", lambda run_dir: written.append("check"))
    monkeypatch.setattr(finetune, "save_run_model", lambda module, folder, settings: written.append(folder.name))
    monkeypatch.setattr(finetune, "keep_resume_state", lambda folder: lambda end: written.append(folder.name))
    monkeypatch.setattr(finetune, "atomic_write_json", lambda path, obj: written.append(path.name))
    settings = finetune.parse_settings(finetune_args("sst", tmp_path / "run"))
    callbacks = finetune.epoch_callbacks(settings, tmp_path, {"task": "sst"})
    metrics = {"metric": "acc", "epochs": [], "best": None}
    for improved in (True, False):
        for callback in callbacks:
            callback(EpochEnd(1, {}, metrics, improved, None, None, None))  # type: ignore[arg-type]
    assert written == ["check", "best", "last", "metrics.json", "check", "last", "metrics.json"]
