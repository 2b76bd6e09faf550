"""The application's two switches (app/speed.py), held by the pieces found in the model afterwards (by type), the
module handed back, and `minigpt2.fast.for_inference`'s arguments as the task's prediction settings give them.

Written against mutmut's survivors (`python tools/mutate.py --auto app/speed.py`, docs/testing.md)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn

from app import speed
from minigpt2.config import GPT2Config
from minigpt2.fast.chunked_loss import ChunkedLMLoss
from minigpt2.fast.cpu_dropout import CPUDropout, CPUDropoutAttention
from minigpt2.fast.lora import FusedLoRALinear
from minigpt2.fast.recompute import RecomputeGELUMLP
from minigpt2.generation import Sampling
from minigpt2.lora import LoRAConfig, apply_lora
from minigpt2.model import GPT2
from tasks import get_task
from tasks.base import PredictSettings

CPU = torch.device("cpu")
PIECES = {RecomputeGELUMLP, CPUDropout, CPUDropoutAttention, FusedLoRALinear, ChunkedLMLoss}


def module_of(name: str, lora: bool = True) -> nn.Module:
    torch.manual_seed(0)
    module = get_task(name).build(GPT2(dataclasses.replace(GPT2Config.from_name("tiny"), dropout=0.1)))
    if lora:
        apply_lora(module, LoRAConfig(rank=2, alpha=4.0, targets="attn"))
    return module


def kinds(module: nn.Module) -> set[type]:
    return {type(m) for m in module.modules()}


@pytest.mark.parametrize("name", ["sonnet", "sst"])
def test_for_training_switches_every_piece_in_on_cpu_and_returns_no_context(name):
    module = module_of(name)
    keys = list(module.state_dict())
    assert not kinds(module) & PIECES
    assert speed.for_training(module, CPU, plain=False) is None  # no --compile: no step context
    want = {RecomputeGELUMLP, CPUDropout, CPUDropoutAttention, FusedLoRALinear} | (
        {ChunkedLMLoss} if name == "sonnet" else set())
    assert kinds(module) & PIECES == want
    assert list(module.state_dict()) == keys


def test_for_training_off_the_cpu_leaves_the_dropout_plain():
    module = module_of("sonnet")
    assert speed.for_training(module, torch.device("cuda"), plain=False) is None
    assert kinds(module) & PIECES == {RecomputeGELUMLP, FusedLoRALinear, ChunkedLMLoss}
    assert nn.Dropout in kinds(module)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_plain_switches_nothing_in(device):
    module = module_of("sonnet")
    before = [(n, type(m)) for n, m in module.named_modules()]
    assert speed.for_training(module, torch.device(device), plain=True) is None
    assert [(n, type(m)) for n, m in module.named_modules()] == before


def test_predicting_a_classification_task_is_the_module_itself_on_either_path():
    task, module = get_task("sst"), module_of("sst", lora=False).eval()
    how = PredictSettings(batch_size=3)
    for plain in (False, True):
        assert speed.predicting(module, task, CPU, how, plain) is module


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_predicting_the_sonnets_takes_a_copy_whose_body_is_for_inferences(monkeypatch, dtype):
    task, module = get_task("sonnet"), module_of("sonnet", lora=False).eval()
    asked, real = [], speed.fast.for_inference

    def spy(model, device, autocast_dtype=None, batch=1):
        asked.append((model, device, autocast_dtype, batch))
        return real(model, device, autocast_dtype, batch=batch)
    monkeypatch.setattr(speed.fast, "for_inference", spy)
    how = PredictSettings(batch_size=3, autocast_dtype=dtype, sampling=Sampling(max_new_tokens=2))
    body, table = module.gpt, dict(module._modules)
    assert speed.predicting(module, task, CPU, how, plain=True) is module and asked == []
    view = speed.predicting(module, task, CPU, how, plain=False)
    assert asked == [(body, CPU, dtype, 3)]
    assert type(view) is type(module) and view is not module
    assert view.gpt is not body and isinstance(view.gpt, GPT2)
    assert module.gpt is body and module._modules == table  # the module keeps its own body
    assert {n: m for n, m in view._modules.items() if n != "gpt"} == {n: m for n, m in table.items() if n != "gpt"}
    ids = torch.tensor([[464, 3290, 318]])
    with torch.no_grad():
        got = view.gpt(ids).float()  # a bf16 copy where the CPU multiplies bf16 natively
        torch.testing.assert_close(got, body(ids), rtol=0.05 if dtype else 1e-4, atol=0.05 if dtype else 1e-5)
