"""`minigpt2.fast.recompute` against the plain `MLP` and autograd: the same output and gradients with biases away
from init, with dropout on (same seed, same mask), with a LoRA adapter on `c_proj` (whose gradient reads the
recomputed GELU output too); the plain path without gradients and under `torch.compile`, where the GELU output is
kept as the plain MLP keeps it."""

from __future__ import annotations

import copy
import weakref

import pytest
import torch
import torch.nn as nn

from minigpt2.config import GPT2Config
from minigpt2.fast import recompute
from minigpt2.fast.recompute import RecomputeGELUMLP, recompute_gelu_in_backward
from minigpt2.lora import LoRALinear
from minigpt2.model import MLP


def _plain(dropout: float = 0.0, lora: bool = False) -> MLP:
    torch.manual_seed(0)
    mlp = MLP(GPT2Config(n_embd=8, n_head=2, dropout=dropout))
    with torch.no_grad():
        for p in mlp.parameters():
            p.normal_(0, 0.7)  # biases and weights away from init
    if lora:
        mlp.c_proj.requires_grad_(False)
        mlp.c_proj = LoRALinear(mlp.c_proj, 2, 3.0)
        with torch.no_grad():
            mlp.c_proj.lora_B.normal_()  # a trained adapter, not the zero init
    return mlp


def _run(mlp: nn.Module, x: torch.Tensor, seed: int = 3) -> list[torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    torch.manual_seed(seed)
    y = mlp(x)
    (y * torch.linspace(-1, 2, y.numel()).view_as(y)).sum().backward()
    return [y.detach(), x.grad] + [p.grad for p in mlp.parameters() if p.requires_grad]


@pytest.mark.parametrize("dropout, lora", [(0.0, False), (0.4, False), (0.0, True), (0.4, True)])
def test_recomputing_mlp_gives_the_plain_output_and_gradients(dropout, lora):
    plain = _plain(dropout, lora)
    x = torch.randn(2, 5, 8)
    want = _run(plain, x)
    fast = RecomputeGELUMLP(copy.deepcopy(plain))
    got = _run(fast, x)
    assert len(got) == len(want) == 6  # output, x, then c_fc weight and bias and c_proj weight and bias (or A, B)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_the_gelu_output_is_freed_after_forward_only_when_gradients_are_taken(monkeypatch):
    kept = []

    def hook(module, args, out):
        kept.append(weakref.ref(args[0]))

    fast = RecomputeGELUMLP(_plain())
    fast.c_proj.register_forward_hook(hook)
    x = torch.randn(3, 8, requires_grad=True)
    y = fast(x)
    assert kept[-1]() is None  # recomputed in backward: not kept
    y.sum().backward()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # as while torch.compile traces it
    y = fast(x)
    assert kept[-1]() is not None  # the plain path: c_proj keeps its input for its weight gradient
    y.sum().backward()


def test_without_gradients_the_plain_forward_runs(monkeypatch):
    calls = []
    real = recompute.recompute_in_backward
    monkeypatch.setattr(recompute, "recompute_in_backward", lambda *a: calls.append(1) or real(*a))
    plain = _plain(dropout=0.4).eval()
    fast = RecomputeGELUMLP(copy.deepcopy(plain)).eval()
    x = torch.randn(2, 3, 8)
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            assert torch.equal(fast(x), plain(x))
    assert calls == []  # nothing is saved for backward: no hooks
    fast(x.requires_grad_()).sum().backward()
    assert calls == [1]


def test_the_swap_replaces_every_plain_mlp_once_and_keeps_parameters():
    torch.manual_seed(0)
    model = nn.ModuleDict({"a": _plain(), "b": nn.Sequential(_plain(), nn.ReLU()), "c": nn.Linear(2, 2)})
    params = [id(p) for p in model.parameters()]
    keys = list(model.state_dict())
    assert recompute_gelu_in_backward(model) == 2 and recompute_gelu_in_backward(model) == 0
    assert type(model["a"]) is RecomputeGELUMLP and type(model["b"][0]) is RecomputeGELUMLP
    assert [id(p) for p in model.parameters()] == params and list(model.state_dict()) == keys
