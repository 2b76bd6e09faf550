"""The speed pieces held to the plain path and to an fp64 reference, in fp32 and under CPU bf16 autocast:

- `minigpt2.fast.recompute`: the MLP that recomputes its GELU gives the plain MLP's numbers (identical), within 1e-5
  (relative to the largest value) of fp64 in fp32, and the plain autocast numbers under bf16 autocast;
- `minigpt2.fast.chunked_loss`: loss and both gradients within 1e-5 of fp64 `F.cross_entropy` in fp32 (several chunks,
  ignored rows), and close to the plain `lm_loss` under bf16 autocast;
- `minigpt2.fast.cpu_dropout`: masks drop p of the elements and scale kept ones by 1 / (1 - p); the written-out
  training attention equals softmax(q kᵀ / √d + mask) · keep · scale · v computed in fp64 with the same mask;
- `minigpt2.fast.prepack`: the prepacked inference copy's logits within 1e-5 of the fp64 model's, same greedy text;
- LoRA's fused path (`minigpt2.fast.lora`, `fused_lora_linear`): output and the gradients of x, A and B within 1e-5 of the fp64
  composition base(x) + scaling · B A x, and close to the plain path under bf16 autocast.

The fp32 bound is tight on purpose: a piece that rounds through bf16 (or keeps an accumulator in it) somewhere
stays close to the fp32 plain path's looks but is 100x further from fp64.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from minigpt2 import GPT2, GPT2Config
from minigpt2.fast.chunked_loss import chunked_lm_loss
from minigpt2.fast.cpu_dropout import attention_with_cpu_dropout, cpu_dropout, dropout_mask
from minigpt2.fast.lora import FusedLoRALinear, fused_lora_linear
from minigpt2.fast.recompute import RecomputeGELUMLP
from minigpt2.generation import generate
from minigpt2.lora import LoRALinear
from minigpt2.losses import lm_loss
from minigpt2.model import MLP

FP32 = 1e-5  # largest error / largest magnitude, fp32 against fp64
BF16 = 3e-2  # the same under bf16 autocast (8 bits of mantissa)


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref.double()).abs().max() / ref.double().abs().max())


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


# ------------------------------------------------------------------------------------------------- recompute

def mlp_run(mlp: nn.Module, x: torch.Tensor):
    x = x.clone().requires_grad_(True)
    y = mlp(x)
    (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return y.detach(), x.grad, mlp.c_fc.weight.grad, mlp.c_proj.weight.grad


def test_recompute_mlp_gives_the_plain_numbers():
    torch.manual_seed(0)
    plain = MLP(GPT2Config.from_name("tiny", dropout=0.0))
    x = torch.randn(3, 5, 32)
    ref = mlp_run(copy.deepcopy(plain).double(), x.double())
    want = mlp_run(copy.deepcopy(plain), x)
    got = mlp_run(RecomputeGELUMLP(copy.deepcopy(plain)), x)
    for g, w, r in zip(got, want, ref):
        assert torch.allclose(g, w, rtol=0, atol=1e-7) and rel(g, r) < FP32
    with bf16():
        want = mlp_run(copy.deepcopy(plain), x)
        got = mlp_run(RecomputeGELUMLP(copy.deepcopy(plain)), x)
    for g, w, r in zip(got, want, ref):
        assert torch.allclose(g.float(), w.float(), rtol=0, atol=1e-6) and rel(g, r) < BF16


# ---------------------------------------------------------------------------------------------- chunked loss

def loss_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden, weight = torch.randn(70, 16, generator=g), torch.randn(300, 16, generator=g) * 0.5
    targets = torch.randint(0, 300, (70,), generator=g)
    targets[::7] = -100
    return hidden, weight, targets


def loss_and_grads(fn, hidden, weight, targets, **kw):
    h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    loss = fn(h, w, targets, **kw)
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk_rows", [None, 40, 7])
def test_chunked_loss_is_the_cross_entropy_in_fp32(chunk_rows):
    hidden, weight, targets = loss_inputs()
    ref = loss_and_grads(lambda h, w, t: F.cross_entropy(h @ w.t(), t, ignore_index=-100),
                         hidden.double(), weight.double(), targets)
    got = loss_and_grads(chunked_lm_loss, hidden, weight, targets, chunk_rows=chunk_rows)
    for g, r in zip(got, ref):
        assert rel(g, r) < FP32
    assert got[1][::7].abs().max() == 0  # ignored rows get no gradient


def test_chunked_loss_under_bf16_autocast():
    hidden, weight, targets = loss_inputs(1)
    ref = loss_and_grads(lambda h, w, t: F.cross_entropy(h @ w.t(), t), hidden.double(), weight.double(), targets)
    with bf16():
        plain = loss_and_grads(lm_loss, hidden, weight, targets)
        got = loss_and_grads(chunked_lm_loss, hidden, weight, targets, chunk_rows=40)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32 and got[2].dtype == torch.float32
    for g, p, r in zip(got, plain, ref):
        assert rel(g, r) < BF16 and rel(g, p) < BF16
    assert rel(got[0], ref[0]) < 5e-3  # the loss: bf16 logits, fp32 statistics


# ----------------------------------------------------------------------------------------------- cpu dropout

@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_masks_drop_p_and_scale_the_rest(p):
    torch.manual_seed(0)
    keep, scale = dropout_mask(torch.Size([200_000]), p)
    assert keep.dtype == torch.bool
    assert 1 - keep.float().mean().item() == pytest.approx(p, abs=0.005)
    assert scale == pytest.approx(1 / (1 - round(p * 2 ** 15) / 2 ** 15), rel=1e-12)
    x = torch.ones(200_000, requires_grad=True)
    y = cpu_dropout(x, p)
    values = y.detach().unique()
    assert len(values) == 2 and values[0] == 0 and values[1].item() == pytest.approx(scale, rel=1e-6)
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # gradient: the same mask, the same scale
    assert torch.equal(cpu_dropout(x, p, training=False), x)


def attention_reference(q, k, v, keep, scale, attn_mask=None, is_causal=False):
    s = (q.double() @ k.double().transpose(-2, -1)) / math.sqrt(q.size(-1))
    if is_causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf"))
    return (s.softmax(-1) * keep * scale) @ v.double()


@pytest.mark.parametrize("kind", ["causal", "padding"])
def test_training_attention_is_the_written_out_formula(kind):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 6, 8, generator=g) for _ in range(3))
    mask = None
    if kind == "padding":
        mask = torch.ones(6, 6, dtype=torch.bool).tril()[None, None].repeat(2, 1, 1, 1)
        mask[1, :, :, :2] = False  # row 1 left-padded by two
        mask[1, :, :2, :2] = torch.eye(2, dtype=torch.bool)  # padded queries see themselves only
    for amp, tol in ((False, FP32), (True, BF16)):
        torch.manual_seed(5)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            got = attention_with_cpu_dropout(q, k, v, attn_mask=mask, dropout_p=0.2, is_causal=kind == "causal")
        torch.manual_seed(5)
        keep, scale = dropout_mask(torch.Size([2, 2, 6, 6]), 0.2)
        want = attention_reference(q, k, v, keep, scale, mask, kind == "causal")
        assert rel(got, want) < tol, (amp, rel(got, want))
    without = attention_with_cpu_dropout(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=kind == "causal")
    assert rel(without, attention_reference(q, k, v, 1, 1.0, mask, kind == "causal")) < FP32


# ---------------------------------------------------------------------------------------------------- prepack

def test_the_prepacked_copy_computes_the_models_logits():
    prepack = pytest.importorskip("minigpt2.fast.prepack")
    if not prepack.available():
        pytest.skip("no oneDNN in this PyTorch build")
    torch.manual_seed(0)
    model = GPT2(GPT2Config.from_name("tiny", vocab_size=300)).eval()
    with torch.no_grad():
        for p in model.parameters():  # biases and gains too: none of them zero or one
            p.normal_(0, 0.2) if p.dim() >= 2 else p.add_(torch.randn_like(p) * 0.2)
    fast = prepack.prepacked(model)
    ids = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        ref = copy.deepcopy(model).double()
        want = ref.lm_head(ref(ids))
        got = fast.lm_head(fast(ids))
        assert rel(got, want) < FP32
        assert rel(fast.lm_head(fast(ids)[:, -1], token_ids=torch.tensor([3, 7])), want[:, -1, [3, 7]]) < FP32
    prompts = [[1, 2, 3], [4, 5]]
    assert generate(fast, prompts, 10, eos_id=None) == generate(model, prompts, 10, eos_id=None)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the model itself is untouched


# ------------------------------------------------------------------------------------------- LoRA fused path

def lora_layer() -> FusedLoRALinear:
    torch.manual_seed(0)
    base = nn.Linear(24, 20)
    base.requires_grad_(False)
    layer = LoRALinear(base, r=4, alpha=8.0)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.5)
    return FusedLoRALinear(layer)


def lora_run(fn, layer: LoRALinear, x: torch.Tensor):
    x = x.clone().requires_grad_(True)
    a, b = layer.lora_A.detach().clone().requires_grad_(True), layer.lora_B.detach().clone().requires_grad_(True)
    y = fn(x, layer.base.weight, layer.base.bias, a, b, layer.scaling)
    (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return y.detach(), x.grad, a.grad, b.grad


def composition(x, w, bias, a, b, scaling):
    return F.linear(x, w, bias) + scaling * F.linear(F.linear(x, a), b)


def test_fused_lora_is_the_composition():
    layer = lora_layer()
    x = torch.randn(3, 5, 24)
    ref = lora_run(lambda x, w, bias, a, b, s: composition(x, w.double(), bias.double(), a, b, s),
                   copy.deepcopy(layer).double(), x.double())
    got = lora_run(fused_lora_linear, layer, x)
    for g, r in zip(got, ref):
        assert rel(g, r) < FP32
    assert layer.fusable  # and the layer's own forward takes that path while training
    y = layer(x)
    assert rel(y.detach(), ref[0]) < FP32
    with bf16():
        plain = lora_run(composition, layer, x)
        got = lora_run(fused_lora_linear, layer, x)
    for g, p, r in zip(got, plain, ref):
        assert rel(g, r) < BF16 and rel(g, p) < BF16
    assert got[2].dtype == torch.float32 and got[3].dtype == torch.float32  # adapter gradients in the adapters' dtype
