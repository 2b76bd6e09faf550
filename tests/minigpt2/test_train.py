"""The task-agnostic training loop: batching, schedule, weight-decay groups, learning, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments.sweeps import TINY_DATA
from minigpt2.config import GPT2Config
from minigpt2.model import GPT2
from minigpt2.train import TrainConfig, bucketed_batches, lr_lambda, param_groups, train
from tests import ROOT
from tests.course.test_data_fetch import hub  # noqa: F401  (the fake hub with the task data, for the two-node test)
from tasks import Example, collate
from tasks.sentiment import SentimentClassifier



@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread, and a busy 2-core runner makes two threads fight."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
FIX = TINY_DATA  # the tiny model's data and GPT-2 tokenizer files (package data of experiments)


def test_bucketed_batches_cover_every_example_once_and_group_similar_lengths():
    lengths = [(i * 37) % 101 for i in range(1000)]
    batches = bucketed_batches(lengths, 8, torch.Generator().manual_seed(1), bucket=10)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000)) and all(len(b) <= 8 for b in batches)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    perm = torch.randperm(1000, generator=torch.Generator().manual_seed(1)).tolist()
    unbucketed = sum(8 * max(lengths[i] for i in perm[j:j + 8]) for j in range(0, 1000, 8))
    assert padded < 0.7 * unbucketed  # bucketing saves padding
    again = bucketed_batches(lengths, 8, torch.Generator().manual_seed(1), bucket=10)
    assert again == batches  # the seed fixes the order (resume relies on it)


def test_lr_schedule_warmup_then_decay():
    f = lr_lambda(100, 0.1, "linear")
    assert f(0) == 0.1 and f(9) == 1.0 and abs(f(55) - 0.5) < 1e-9 and f(100) == 0.0
    c = lr_lambda(100, 0.0, "cosine")
    assert c(0) == 1.0 and abs(c(50) - 0.5) < 1e-9 and c(100) < 1e-12
    assert lr_lambda(10, 0.0, "constant")(9) == 1.0


def test_weight_decay_only_on_matrices():
    model = SentimentClassifier(GPT2(GPT2Config.from_name("tiny")), 3)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert any(p is model.gpt.wte.weight for p in decay["params"])
    assert any(p is model.gpt.ln_f.weight for p in no_decay["params"])
    n = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())


def test_overfitting_a_handful_of_examples_drives_the_loss_near_zero():
    torch.manual_seed(0)
    model = SentimentClassifier(GPT2(GPT2Config.from_name("tiny", dropout=0.0)), 4)
    g = torch.Generator().manual_seed(0)
    examples = [Example(str(i), torch.randint(0, 1000, (5 + i,), generator=g).tolist(), i % 4) for i in range(8)]
    cfg = TrainConfig(epochs=25, batch_size=8, lr=1e-2, warmup=0.0, schedule="constant", weight_decay=0.0,
                      progress=False)
    metrics = train(model, examples, collate, cfg, evaluate=lambda m: {"accuracy": 0.0}, metric="accuracy")
    losses = [e["train_loss"] for e in metrics["epochs"]]
    assert losses[0] > 1.0 and losses[-1] < 0.02, losses[::5]
    model.eval()
    with torch.no_grad():
        assert model.predict(collate(examples)).tolist() == [e.label for e in examples]


def test_ddp_two_cpu_processes_keep_weights_in_sync(tmp_path):
    """torchrun with 2 gloo processes: each takes half the batches; DDP averages gradients, so the weights
    stay identical on both ranks and rank 0 writes one run folder."""
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "minigpt2.finetune", "--task", "sst", "--model", "tiny", "--data-dir", str(FIX / "tasks"),
           "--tokenizer-dir", str(FIX / "gpt2"), "--epochs", "1", "--batch-size", "2", "--lr", "1e-3",
           "--out-dir", str(out), "--no-progress", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    a, b = metrics["param_checksums"]
    assert a == b
    # 9 examples -> 5 batches of 2 -> 2 per rank (the odd batch is dropped so both ranks step together)
    assert metrics["optimizer_steps_per_epoch"] == 2
    assert (out / "full-model-sst-dev-out.csv").is_file() and (out / "best" / "model.safetensors").is_file()


def test_gradient_accumulation_equals_one_big_batch():
    """Two micro-batches of 4 with --grad-accum 2 make the same optimizer step as one batch of 8."""
    g = torch.Generator().manual_seed(0)
    examples = [Example(str(i), torch.randint(0, 1000, (6,), generator=g).tolist(), i % 3) for i in range(8)]
    weights = []
    for batch_size, accum in ((8, 1), (4, 2)):
        torch.manual_seed(0)
        model = SentimentClassifier(GPT2(GPT2Config.from_name("tiny", dropout=0.0)), 3)
        cfg = TrainConfig(epochs=1, batch_size=batch_size, grad_accum=accum, lr=1e-2, warmup=0.0,
                          schedule="constant", progress=False)
        metrics = train(model, examples, collate, cfg, evaluate=lambda m: {"acc": 0.0}, metric="acc")
        assert metrics["optimizer_steps_per_epoch"] == 1
        weights.append(model.classifier.weight.detach().clone())
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-5, atol=1e-6)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_localhost_fetch_data_and_weights_once(hub, tiny_hf_dir, tmp_path):
    """Two torchrun launchers with --nnodes 2 (one process each, gloo, c10d rendezvous on 127.0.0.1) share this
    machine's folders, as two nodes share a network folder: global rank 0 fetches the task data and the weights
    while the other node waits, and then finds everything there. The fake hub counts one GET per file."""
    from tests.minigpt2.test_download import serve_gpt2

    serve_gpt2(hub, {n: (tiny_hf_dir / n).read_bytes() for n in ("config.json", "model.safetensors")},
               name="gpt2-medium", commit="0" * 40)  # a preset without a pinned sha256: the tiny model stands in
    out, port = tmp_path / "run", free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
              "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes"]
    job = ["-m", "minigpt2.finetune", "--task", "cfimdb", "--model", "gpt2-medium", "--data-dir",
           str(tmp_path / "data"), "--tokenizer-dir", str(FIX / "gpt2"), "--epochs", "1", "--max-train", "4",
           "--max-eval", "2", "--batch-size", "2", "--max-length", "32", "--out-dir", str(out), "--no-progress",
           "--device", "cpu", "--fetch-timeout", "120"]
    nodes = [subprocess.Popen(launch + ["--node-rank", str(i)] + job, cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in (0, 1)]
    outputs = [p.communicate(timeout=240)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and len(set(metrics["param_checksums"])) == 1
    gets = [path for method, path, _ in hub.requests if method == "GET" and "/resolve/" in path]
    assert sorted(set(gets)) == sorted(gets) and len(gets) == 5, gets  # 3 cfimdb files, config, weights
    assert sum("fetching cfimdb data" in o for o in outputs) == 1


def test_a_rank_waiting_for_the_fetch_stops_with_a_clear_error():
    """fetch_once over a real store: rank 1 gives up after the timeout, or at once when rank 0's fetch failed."""
    from datetime import timedelta

    from torch.distributed import HashStore

    from minigpt2.distributed import Dist, FetchWaitError, fetch_once

    store = HashStore()
    store.set_timeout(timedelta(seconds=5))
    with pytest.raises(FetchWaitError, match=r"rank 1 waited 0.2 s \(fetch_timeout\) for global rank 0"):
        fetch_once(lambda: None, Dist(rank=1, world=2, local_rank=0), timeout=0.2, store=store)

    def broken():
        raise OSError("disk full")
    with pytest.raises(OSError):
        fetch_once(broken, Dist(rank=0, world=2), timeout=1, store=store)
    with pytest.raises(FetchWaitError, match=r"global rank 0 could not fetch the run's inputs \(failed: "
                                             r"OSError: disk full\)"):
        fetch_once(lambda: None, Dist(rank=1, world=2, local_rank=0), timeout=1, store=store)
    calls = []
    store2 = HashStore()
    fetch_once(lambda: calls.append(0), Dist(rank=0, world=3), timeout=1, store=store2)
    fetch_once(lambda: calls.append(1), Dist(rank=1, world=3, local_rank=1), timeout=1, store=store2)  # waits
    assert calls == [0]
