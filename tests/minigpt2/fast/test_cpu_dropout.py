"""minigpt2.fast.cpu_dropout: the cheap CPU dropout mask and the written-out training attention, held to torch's."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from minigpt2 import GPT2, GPT2Config
from minigpt2.fast.cpu_dropout import (CPUDropout, CPUDropoutAttention, attention_with_cpu_dropout, cpu_dropout,
                                  dropout_mask, use_cpu_dropout)
from minigpt2.model import attention_mask_for


def test_mask_drops_p_rounded_to_2_pow_15_in_every_lane():
    torch.manual_seed(0)
    n = 1 << 22
    keep, scale = dropout_mask(torch.Size([n]), 0.1)
    p_eff = round(0.1 * 2 ** 15) / 2 ** 15
    assert scale == pytest.approx(1 / (1 - p_eff))
    # each of the four 16-bit lanes of a 64-bit draw separately (the top one has one bit fewer): 5 sigma
    for lane in range(4):
        dropped = 1 - keep[lane::4].float().mean().item()
        sigma = math.sqrt(p_eff * (1 - p_eff) / (n // 4))
        assert abs(dropped - p_eff) < 5 * sigma, (lane, dropped)


def test_masks_are_independent_of_each_other_and_follow_the_seed():
    torch.manual_seed(1)
    a, _ = dropout_mask(torch.Size([4096]), 0.5)
    b, _ = dropout_mask(torch.Size([4096]), 0.5)
    torch.manual_seed(1)
    a2, _ = dropout_mask(torch.Size([4096]), 0.5)
    assert torch.equal(a, a2)
    agree = (a == b).float().mean().item()
    assert 0.45 < agree < 0.55  # two independent fair masks agree half the time


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_and_backward_use_one_mask(dtype):
    torch.manual_seed(2)
    x = (torch.rand(64, 96) + 0.5).to(dtype).requires_grad_()  # no zeros: a zero output means dropped
    y = cpu_dropout(x, 0.3)
    kept = y != 0
    scale = 1 / (1 - round(0.3 * 2 ** 15) / 2 ** 15)
    torch.testing.assert_close(y[kept], (x[kept].float() * scale).to(dtype))
    g = torch.randn(64, 96, dtype=dtype)
    y.backward(g)
    torch.testing.assert_close(x.grad, (g.float() * kept * scale).to(dtype))


def test_mask_refuses_p_that_rounds_to_0_or_1():
    for p in (0.0, 1e-6, 1.0 - 1e-6, 1.0):
        with pytest.raises(ValueError, match="expected a drop probability in"):
            dropout_mask(torch.Size([4]), p)


def test_plain_dropout_where_the_mask_does_not_apply():
    x = torch.randn(8, 8)
    assert torch.equal(cpu_dropout(x, 0.1, training=False), x)
    assert torch.equal(cpu_dropout(x, 0.0), x)
    assert torch.equal(cpu_dropout(x, 1.0), torch.zeros_like(x))  # p rounded to 1: torch's own dropout


def _qkv(B=2, nh=3, T=7, hs=4):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(B, nh, T, hs, generator=g, requires_grad=True) for _ in range(3)]


@pytest.mark.parametrize("padded", [False, True])
def test_written_out_attention_equals_sdpa(padded, monkeypatch):
    """With a mask that keeps everything the written-out attention is SDPA's, causal and padded."""
    q, k, v = _qkv()
    pad = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    mask, causal = attention_mask_for(pad if padded else None, 7, 0, q.device)
    keep_all = lambda shape, p, device="cpu": (torch.ones(shape, dtype=torch.bool), 1.0)
    monkeypatch.setattr("minigpt2.fast.cpu_dropout.dropout_mask", keep_all)
    ours = attention_with_cpu_dropout(q, k, v, attn_mask=mask, dropout_p=0.1, is_causal=causal)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(ours, (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_written_out_attention_drops_attention_probabilities():
    q, k, v = _qkv()
    torch.manual_seed(4)
    ours = attention_with_cpu_dropout(q, k, v, dropout_p=0.2, is_causal=True)
    torch.manual_seed(4)
    keep, scale = dropout_mask(torch.Size([2, 3, 7, 7]), 0.2)
    causal = torch.ones(7, 7, dtype=torch.bool).tril()
    scores = (q @ k.transpose(-2, -1) / 2).masked_fill(~causal, float("-inf"))  # hs = 4: scale 1/2
    ref = (scores.softmax(-1) * keep * scale) @ v
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


def _tiny(dropout: float) -> GPT2:
    config = dataclasses.replace(GPT2Config.from_name("tiny"), dropout=dropout)
    torch.manual_seed(0)
    return GPT2(config)


def test_switching_in_keeps_parameters_and_eval_outputs():
    plain, switched = _tiny(0.1), _tiny(0.1)
    n = use_cpu_dropout(switched)
    layers = plain.config.n_layer
    assert n == 1 + layers * 3  # embeddings' dropout; per block the attention, its residual and the MLP's
    assert use_cpu_dropout(switched) == 0  # a second call changes nothing
    assert all(isinstance(b.attn, CPUDropoutAttention) and isinstance(b.mlp.dropout, CPUDropout)
               for b in switched.h)
    assert list(plain.state_dict()) == list(switched.state_dict())
    ids = torch.randint(0, plain.config.vocab_size, (2, 9))
    plain.eval(), switched.eval()
    torch.testing.assert_close(switched(ids), plain(ids), atol=0, rtol=0)


def test_training_without_dropout_is_the_plain_model():
    plain, switched = _tiny(0.0), _tiny(0.0)
    use_cpu_dropout(switched)
    ids = torch.randint(0, plain.config.vocab_size, (2, 9))
    plain.train(), switched.train()
    torch.testing.assert_close(switched(ids), plain(ids), atol=0, rtol=0)


def test_training_with_dropout_is_seeded_and_unbiased():
    model = _tiny(0.1)
    use_cpu_dropout(model)
    model.train()
    ids = torch.randint(0, model.config.vocab_size, (4, 16))
    mask = torch.ones(4, 16, dtype=torch.long)
    mask[1, 10:] = 0
    mask[2, :3] = 0  # left padding: the explicit mask path
    torch.manual_seed(5)
    a = model(ids, attention_mask=mask)
    torch.manual_seed(5)
    b = model(ids, attention_mask=mask)
    assert torch.equal(a, b) and torch.isfinite(a).all()
    assert not torch.equal(a, model(ids, attention_mask=mask))  # a fresh mask each call
    a.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # Averaged over many masks, the residual dropout's output is its input (it is scaled to keep expectations)
    drop = CPUDropout(0.1)
    x = torch.rand(256, 1024) + 1
    torch.testing.assert_close(torch.stack([drop(x) for _ in range(64)]).mean(0).mean(), x.mean(), rtol=2e-3,
                               atol=0)


def test_under_compile_the_plain_dropout_runs(monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    called = []
    monkeypatch.setattr("minigpt2.fast.cpu_dropout.dropout_mask", lambda *a, **k: called.append(1))
    x = torch.randn(4, 4)
    CPUDropout(0.5)(x)
    assert not called


def test_off_the_cpu_the_plain_dropout_and_sdpa_run(monkeypatch):
    """A tensor on another device (meta here, as CUDA would) never reaches the cheap mask or the written-out
    attention: CUDA keeps torch's fused dropout and SDPA kernels."""
    called = []
    monkeypatch.setattr("minigpt2.fast.cpu_dropout.dropout_mask", lambda *a, **k: called.append(1))
    x = torch.empty(2, 3, 5, 4, device="meta")
    assert cpu_dropout(x, 0.1).device.type == "meta"
    assert attention_with_cpu_dropout(x, x, x, dropout_p=0.1, is_causal=True).shape == x.shape
    assert not called
