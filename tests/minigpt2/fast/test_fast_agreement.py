"""The plain path and the fast path (`minigpt2.fast`, as the application switches it in) agree on a tiny run of
every task: the training loss and every gradient after one backward pass, the dev predictions, and for the sonnet
task the greedy tokens and the task's own greedy sonnets. Full fine-tuning and LoRA (the fused adapter layer) both.

Dropout is 0, so the cheap CPU masks draw nothing and both paths compute the same function; each speed piece's
own tests hold its dropout to torch's (tests/minigpt2/fast/test_cpu_dropout.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from app import speed
from experiments.sweeps import TINY_DATA
from minigpt2 import fast
from minigpt2.config import GPT2Config
from minigpt2.fast.chunked_loss import ChunkedLMLoss
from minigpt2.fast.cpu_dropout import CPUDropout, CPUDropoutAttention
from minigpt2.fast.lora import FusedLoRALinear
from minigpt2.fast.prepack import PackedGPT2, available
from minigpt2.fast.recompute import RecomputeGELUMLP
from minigpt2.generation import generate
from minigpt2.lora import LoRAConfig, apply_lora, lora_modules
from minigpt2.losses import LMLoss
from minigpt2.model import GPT2
from minigpt2.tokenizer import Tokenizer
from tasks import collate, get_task
from minigpt2.generation import Sampling
from tasks.base import GenerativeTask, PredictSettings

DATA = TINY_DATA / "tasks"
CPU = torch.device("cpu")
TASKS = ["sst", "cfimdb", "quora", "sonnet"]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(TINY_DATA / "gpt2")


def pair(task, method: str):
    """The same task model twice: as built (plain) and switched to the fast path as `app.speed` does."""
    torch.manual_seed(0)
    gpt = GPT2(GPT2Config.from_name("tiny", dropout=0.0))
    with torch.no_grad():
        for p in gpt.parameters():  # spread-out weights: distinct logits, so a wrong number would show
            p.normal_(0, 0.2) if p.dim() >= 2 else p.add_(torch.randn_like(p) * 0.1)
    plain = task.build(gpt)
    if method == "lora":
        heads = [n for n, m in plain.named_children() if n != "gpt" and any(True for _ in m.parameters())]
        apply_lora(plain, LoRAConfig(rank=4, alpha=8.0, targets="attn+mlp", trainable=heads))
        with torch.no_grad():
            for m in lora_modules(plain).values():
                m.lora_B.normal_(0, 0.2)  # a trained adapter, not the zero init
    quick = copy.deepcopy(plain)
    speed.for_training(quick, CPU, plain=False)
    return plain.train(), quick.train()


def switched(module: torch.nn.Module, method: str, generative: bool) -> None:
    """The fast path is really a different path: each training piece is in place."""
    kinds = {type(m) for m in module.modules()}
    assert RecomputeGELUMLP in kinds and CPUDropout in kinds and CPUDropoutAttention in kinds
    assert (FusedLoRALinear in kinds) == (method == "lora")
    assert (ChunkedLMLoss in kinds) == generative and LMLoss not in kinds - {ChunkedLMLoss}


def loss_and_grads(module: torch.nn.Module, batch: dict[str, torch.Tensor]):
    module.zero_grad(set_to_none=True)
    loss = module(batch)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("name", TASKS)
def test_plain_and_fast_training_agree(name, method, tok):
    task = get_task(name)
    examples, _ = task.load(DATA, "train", tok, 64, limit=6, seed=0)
    batch = collate(examples[:4], lm_targets=task.lm_targets)
    plain, quick = pair(task, method)
    switched(quick, method, isinstance(task, GenerativeTask))
    want_loss, want = loss_and_grads(plain, batch)
    got_loss, got = loss_and_grads(quick, batch)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
    assert list(got) == list(want) and want  # the same trainable parameters, same names (state-dict keys)
    for n in want:
        assert want[n] is not None and got[n] is not None, n
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("name", TASKS)
def test_plain_and_fast_predictions_agree(name, tok):
    task = get_task(name)
    examples, _ = task.load(DATA, "dev", tok, 96, limit=4, seed=0)
    how = PredictSettings(batch_size=2, autocast_dtype=None,
                          sampling=Sampling(temperature=0.0, top_p=0.9, max_new_tokens=12, seed=1))
    plain, quick = pair(task, "full")
    predictor = speed.predicting(quick, task, CPU, how, plain=False)
    assert (predictor is not quick) == isinstance(task, GenerativeTask)
    if isinstance(task, GenerativeTask) and available():
        assert isinstance(predictor.gpt, PackedGPT2)  # sonnet evaluation on the prepacked copy
    assert task.predict(predictor, examples, how, tok, CPU) == task.predict(plain, examples, how, tok, CPU)


def test_plain_and_fast_greedy_tokens_agree():
    """The sonnet path's decoding: `generate` on the model and on `for_inference`'s copy, ragged prompts."""
    plain, quick = pair(get_task("sonnet"), "full")
    prompts = [[464, 2068, 7586, 21831], [40, 1101], [3, 5, 8, 13, 21, 34]]
    want = generate(plain.gpt, prompts, 20, eos_id=None)
    copy_ = fast.for_inference(quick.gpt, CPU)
    assert copy_.sample_next is not None and copy_ is not quick.gpt
    assert generate(copy_, prompts, 20, eos_id=None) == want
    assert len({tuple(w) for w in want}) == len(want)  # the rows differ: a mix-up would show


@pytest.mark.command
def test_plain_runs_every_command_without_the_speed_pieces(tmp_path, monkeypatch, capsys):
    """`--plain`: finetune, evaluate and generate never call a switch of `minigpt2.fast`; without it they do."""
    from app import evaluate, finetune
    from app import generate as generate_cli

    calls: list[str] = []
    real_training, real_inference = fast.for_training, fast.for_inference
    monkeypatch.setattr(fast, "for_training", lambda *a: calls.append("training") or real_training(*a))
    monkeypatch.setattr(fast, "for_inference", lambda *a, **k: calls.append("inference") or real_inference(*a, **k))
    args = ["--task", "sonnet", "--model", "tiny", "--data-dir", str(DATA), "--tokenizer-dir", str(TINY_DATA / "gpt2"),
            "--batch-size", "4", "--no-progress", "--device", "cpu", "--epochs", "1", "--max-new-tokens", "8",
            "--max-eval", "2", "--max-train", "4"]
    for plain in (True, False):
        calls.clear()
        out = tmp_path / f"plain-{plain}"
        finetune.main(args + ["--out-dir", str(out)] + (["--plain"] if plain else []))
        evaluate.main([str(out), "--device", "cpu"] + (["--plain"] if plain else []))
        generate_cli.main(["--model", "tiny", "--tokenizer-dir", str(TINY_DATA / "gpt2"), "--prompt", "x",
                           "--max-new-tokens", "3", "--seed", "1", "--device", "cpu"] + (["--plain"] if plain else []))
        assert (calls == []) == plain, calls
        if not plain:
            assert set(calls) == {"training", "inference"}
    capsys.readouterr()
