"""`minigpt2.fast.lora`: `FusedLoRALinear` (the fused autograd node, the cast cache) against the plain `LoRALinear`
it replaces, when its fast path is taken, and the swap that puts it in place."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from minigpt2.config import GPT2Config
from minigpt2.fast.lora import FusedLoRALinear, use_fused_lora
from minigpt2.lora import LoRAConfig, LoRALinear, apply_lora, lora_modules
from minigpt2.model import GPT2


def _adapter(dropout: float = 0.0) -> FusedLoRALinear:
    torch.manual_seed(0)
    base = nn.Linear(48, 80)
    base.requires_grad_(False)  # as apply_lora leaves it
    m = LoRALinear(base, 4, 16.0, dropout=dropout)
    nn.init.normal_(m.lora_B)  # a trained adapter, not the zero init
    return FusedLoRALinear(m)


def _plain(m: LoRALinear, x: torch.Tensor) -> torch.Tensor:
    y = m.base(x)
    xa = F.linear(x, m.lora_A)
    return torch.addmm(y.reshape(-1, 80), xa.reshape(-1, 4), m.lora_B.t(), alpha=m.scaling).view(y.shape)


def _output_and_grads(m: LoRALinear, x: torch.Tensor, fn, bf16: bool) -> list[torch.Tensor]:
    m.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = fn(x)
    (y.float() * torch.linspace(-1, 1, 80)).sum().backward()
    return [y.detach(), x.grad, m.lora_A.grad, m.lora_B.grad]


@pytest.mark.parametrize("bf16", [False, True])
def test_fused_path_matches_the_plain_composition(bf16):
    m = _adapter()
    x = torch.randn(3, 5, 48)
    assert m.fusable
    fused = _output_and_grads(m, x, m, bf16)
    plain = _output_and_grads(m, x, lambda x: _plain(m, x), bf16)
    for a, b, name in zip(fused, plain, ["output", "grad x", "grad A", "grad B"]):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        # fp32: the same products (only the adds happen in place); bf16: one rounding of the input gradient's sum
        tol = dict(atol=1e-6, rtol=1e-6) if not bf16 else dict(atol=0.0, rtol=2 ** -7)
        torch.testing.assert_close(a.float(), b.float(), **tol, msg=name)
    assert fused[0].dtype == (torch.bfloat16 if bf16 else torch.float32)
    assert fused[2].dtype == fused[3].dtype == torch.float32  # fp32 master adapters
    reading = _output_and_grads(m, x, lambda x: LoRALinear.forward(m, x), bf16)  # the plain layer's forward
    for a, b, name in zip(fused, reading, ["output", "grad x", "grad A", "grad B"]):
        tol = dict(atol=1e-5, rtol=1e-5) if not bf16 else dict(atol=2e-2, rtol=2 ** -6)
        torch.testing.assert_close(a.float(), b.float(), **tol, msg=name)


def test_use_fused_lora_swaps_every_adapter_keeping_parameters_and_keys():
    torch.manual_seed(0)
    model = GPT2(GPT2Config.from_name("tiny"))
    apply_lora(model, LoRAConfig(rank=2, targets="attn+mlp"))
    keys, params = list(model.state_dict()), [id(p) for p in model.parameters()]
    n = len(lora_modules(model))
    assert use_fused_lora(model) == n and use_fused_lora(model) == 0  # a second call changes nothing
    assert all(type(m) is FusedLoRALinear for m in lora_modules(model).values())
    assert list(model.state_dict()) == keys and [id(p) for p in model.parameters()] == params
    assert not hasattr(LoRALinear, "fusable") and not hasattr(LoRALinear, "_frozen_base_as")  # the plain layer


def test_fused_path_skips_gradients_nobody_needs():
    m = _adapter()
    m.lora_A.requires_grad_(False)  # fusable needs both adapters training: the plain path then runs
    assert not m.fusable
    m.lora_A.requires_grad_(True)
    y = m(torch.randn(2, 48))  # an input without grad: no input gradient is computed
    y.sum().backward()
    assert m.lora_A.grad is not None and m.lora_B.grad is not None


def test_fused_path_is_taken_only_where_it_is_exact():
    assert not _adapter(dropout=0.1).fusable  # adapter dropout: the plain path
    m = _adapter()
    with torch.no_grad():
        assert not m.fusable  # inference: the plain path (nothing to save for backward)
    m.base.weight.requires_grad_(True)
    assert not m.fusable  # a training base weight needs its own gradient
    m.base.weight.requires_grad_(False)
    m.merge()
    assert not m.fusable
    m.unmerge()
    assert m.fusable


def test_bf16_copy_of_the_frozen_base_follows_its_weight():
    m = _adapter()
    x = torch.randn(4, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m(x)
        first = m._frozen_base_as(torch.bfloat16)[0]
        assert m._frozen_base_as(torch.bfloat16)[0] is first  # cast once while the weight is unchanged
        with torch.no_grad():
            m.base.weight.mul_(2)  # changed in place: the copy is made again
        y = m(x)
    assert m._frozen_base_as(torch.bfloat16)[0] is not first
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = _plain(m, x)
    torch.testing.assert_close(y, expected)
    assert m._frozen_base_as(torch.float32)[0] is m.base.weight  # no copy in the weight's own dtype
