"""`minigpt2.fast.lora` against its referees: the plain `minigpt2.lora.LoRALinear` and autograd on the plain
composition `x W^T + b + scaling (x A^T) B^T`. The adapters are drawn away from init (B is zero at init, which hides
a dropped adapter term), alpha and rank give a scaling other than 1 or 2, and the cases the first tests did not
reach are here: a base without bias, a bias changed in place under autocast, one adapter frozen, operands in other
dtypes than the input, the layer off its fused path, and the cast-once copy of the frozen base."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from minigpt2.fast.lora import FusedLoRALinear, fused_lora_linear
from minigpt2.lora import LoRALinear

IN, OUT, R = 6, 5, 3


def _layer(bias: bool = True, alpha: float = 5.0, rslora: bool = False, dropout: float = 0.0,
           seed: int = 0) -> FusedLoRALinear:
    torch.manual_seed(seed)
    base = nn.Linear(IN, OUT, bias=bias)
    with torch.no_grad():
        if bias:
            base.bias.uniform_(-1, 1)  # away from init
    base.requires_grad_(False)
    plain = LoRALinear(base, R, alpha, dropout=dropout, rslora=rslora)
    with torch.no_grad():
        plain.lora_A.normal_()
        plain.lora_B.normal_()  # a trained adapter: not the zero init
    return FusedLoRALinear(plain)


def _run(m: nn.Module, x: torch.Tensor, forward, bf16: bool = False) -> list[torch.Tensor | None]:
    """Output, then the gradients of x, A and B of a weighted sum of the output."""
    m.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = forward(x)
    (y.float() * torch.linspace(-1, 2, y.size(-1))).sum().backward()
    return [y.detach(), x.grad, m.lora_A.grad, m.lora_B.grad]


def _assert_close_all(got, want, **tol) -> None:
    for a, b, name in zip(got, want, ["output", "grad x", "grad A", "grad B"]):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        torch.testing.assert_close(a, b, **tol, msg=name)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("alpha, rslora, scaling", [(5.0, False, 5 / 3), (6.0, True, 6 / 3 ** 0.5)])
def test_fused_layer_equals_the_plain_layer_in_fp32(bias, alpha, rslora, scaling):
    m = _layer(bias=bias, alpha=alpha, rslora=rslora)
    assert m.fusable and m.scaling == pytest.approx(scaling)
    x = torch.randn(2, 4, IN)
    fused = _run(m, x, m)
    plain = _run(m, x, lambda x: LoRALinear.forward(m, x))
    _assert_close_all(fused, plain, atol=1e-5, rtol=1e-5)
    # and the formula by hand: base + scaling * B A x
    want = x @ m.base.weight.t() + scaling * (x @ m.lora_A.t()) @ m.lora_B.t()
    if bias:
        want = want + m.base.bias
    torch.testing.assert_close(fused[0], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_fused_layer_under_bf16_autocast_equals_the_plain_layer(bias):
    m = _layer(bias=bias)
    x = torch.randn(3, IN)
    fused = _run(m, x, m, bf16=True)
    plain = _run(m, x, lambda x: LoRALinear.forward(m, x), bf16=True)
    assert fused[0].dtype == torch.bfloat16 and fused[1].dtype == fused[2].dtype == fused[3].dtype == torch.float32
    for a, b, name in zip(fused, plain, ["output", "grad x", "grad A", "grad B"]):
        torch.testing.assert_close(a.float(), b.float(), atol=3e-2, rtol=2 ** -6, msg=name)


def test_off_the_fused_path_the_layer_is_the_plain_one():
    m = _layer(dropout=0.5)  # adapter dropout: not fusable
    assert not m.fusable
    x = torch.randn(4, IN)
    torch.manual_seed(7)
    got = _run(m, x, m)
    torch.manual_seed(7)
    want = _run(m, x, lambda x: LoRALinear.forward(m, x))
    _assert_close_all(got, want, atol=0, rtol=0)
    m = _layer()
    with torch.no_grad():  # inference: not fusable either
        assert not m.fusable
        torch.testing.assert_close(m(x), LoRALinear.forward(m, x), atol=0, rtol=0)


def test_the_frozen_base_is_cast_once_under_autocast_and_not_at_all_in_its_own_dtype():
    m = _layer()
    x = torch.randn(2, IN, requires_grad=True)
    m(x).sum().backward()  # fp32: the weight itself is used, no copy kept
    assert getattr(m, "_cast_cache", None) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m(x).float().sum().backward()
    key, w, b = m._cast_cache
    assert w.dtype == b.dtype == torch.bfloat16 and key[-1] == torch.bfloat16
    assert torch.equal(w, m.base.weight.to(torch.bfloat16)) and torch.equal(b, m.base.bias.to(torch.bfloat16))
    weight, bias = m._frozen_base_as(torch.bfloat16)
    assert weight is w and bias is b and bias.dtype == torch.bfloat16


@pytest.mark.parametrize("bias", [True, False])
def test_the_bf16_copy_follows_a_base_changed_in_place(bias):
    """Weight or bias changed in place (e.g. a loaded state): the next autocast forward uses the new values."""
    m = _layer(bias=bias)
    x = torch.randn(3, IN)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = _run(m, x, m, bf16=True)[0]
        with torch.no_grad():
            if bias:
                m.base.bias.add_(4.0)
            else:
                m.base.weight.mul_(-1.0)
        second = _run(m, x, m, bf16=True)[0]
    plain = _run(m, x, lambda x: LoRALinear.forward(m, x), bf16=True)[0]
    assert not torch.allclose(first.float(), second.float(), atol=0.5)
    torch.testing.assert_close(second.float(), plain.float(), atol=3e-2, rtol=2 ** -6)


def _reference(x, weight, bias, A, B, scaling):
    """Autograd on the plain composition, in x's dtype (the leaves cast differentiably)."""
    d = x.dtype
    y = F.linear(x, weight.to(d), None if bias is None else bias.to(d))
    return y + scaling * F.linear(F.linear(x, A.to(d)), B.to(d))


def _grads(fn, x, weight, bias, A, B, scaling):
    leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in (x, A, B)]
    y = fn(leaves[0], weight, bias, leaves[1], leaves[2], scaling)
    (y * torch.linspace(-1, 2, y.size(-1), dtype=y.dtype)).sum().backward()
    return [y.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("frozen", ["A", "B"])
def test_one_adapter_frozen_the_other_still_gets_its_gradient(frozen):
    torch.manual_seed(1)
    x, w, b = torch.randn(4, IN, requires_grad=True), torch.randn(OUT, IN), torch.randn(OUT)
    A = torch.randn(R, IN, requires_grad=frozen != "A")
    B = torch.randn(OUT, R, requires_grad=frozen != "B")
    got = _grads(fused_lora_linear, x, w, b, A, B, 0.75)
    want = _grads(_reference, x, w, b, A, B, 0.75)
    for a, e, name in zip(got, want, ["output", "grad x", "grad A", "grad B"]):
        if e is None:
            assert a is None, name
        else:
            torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5, msg=name)
    assert (got[2] is None) == (frozen == "A") and (got[3] is None) == (frozen == "B")


@pytest.mark.parametrize("dtypes", [(torch.float64, torch.float32, torch.float64),
                                    (torch.float64, torch.float64, torch.float32)])
def test_each_gradient_is_computed_in_the_inputs_dtype_and_given_in_its_own(dtypes):
    """x in fp64 with an fp32 adapter: every product runs in fp64 and each gradient is cast once, to its own
    tensor's dtype; a gradient rounded through another tensor's fp32 on the way would lose fp64's digits."""
    dx, da, db = dtypes
    torch.manual_seed(2)
    x = torch.randn(5, IN, dtype=dx, requires_grad=True)
    w, b = torch.randn(OUT, IN, dtype=torch.float64), torch.randn(OUT, dtype=torch.float64)
    A = torch.randn(R, IN, dtype=da, requires_grad=True)
    B = torch.randn(OUT, R, dtype=db, requires_grad=True)
    got = _grads(fused_lora_linear, x, w, b, A, B, 1 / 3)
    want = _grads(_reference, x, w, b, A, B, 1 / 3)
    for a, e, name in zip(got, want, ["output", "grad x", "grad A", "grad B"]):
        assert a.dtype == e.dtype, name
        torch.testing.assert_close(a, e, atol=1e-12, rtol=1e-12, msg=name)


class DoubledLinear(nn.Linear):
    """A base that transforms its weight in forward (as fake quantization does): W itself is not what it computes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, 2 * self.weight, self.bias)


def test_a_base_that_is_not_a_plain_linear_takes_the_plain_path():
    torch.manual_seed(4)
    base = DoubledLinear(IN, OUT)
    base.requires_grad_(False)
    plain = LoRALinear(base, R, 5.0)
    with torch.no_grad():
        plain.lora_B.normal_()
    m = FusedLoRALinear(plain)
    assert not m.fusable
    x = torch.randn(3, IN)
    got = _run(m, x, m)
    want = _run(m, x, lambda x: LoRALinear.forward(m, x))
    _assert_close_all(got, want, atol=0, rtol=0)
    torch.testing.assert_close(got[0], x @ (2 * base.weight).t() + base.bias
                               + 5 / 3 * (x @ m.lora_A.t()) @ m.lora_B.t(), atol=1e-5, rtol=1e-5)


def test_a_training_base_bias_or_a_frozen_b_takes_the_plain_path():
    m = _layer()
    m.base.bias.requires_grad_(True)  # the bias trains: it needs its gradient, which the fused node does not give
    assert not m.fusable
    x = torch.randn(3, IN)
    m(x).sum().backward()
    torch.testing.assert_close(m.base.bias.grad, torch.full((OUT,), 3.0))  # d(sum)/db: one per row
    m = _layer()
    m.lora_B.requires_grad_(False)  # fusable needs both adapters training
    assert not m.fusable
    m.lora_B.requires_grad_(True)
    assert m.fusable
