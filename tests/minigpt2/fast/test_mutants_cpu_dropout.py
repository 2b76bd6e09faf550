"""minigpt2.fast.cpu_dropout against referees from outside it (the mutants `tools/mutate.py --auto` left alive).

The mask is rebuilt by hand from torch's int64 stream (numpy cuts each draw into four little-endian 16-bit lanes and
keeps an element when its low 15 bits reach round(p * 2^15)); the attention referee is the softmax written out in
fp64 with that mask; the plain path's referee is torch's own (`F.scaled_dot_product_attention`, `CausalSelfAttention`).
"""

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from minigpt2 import GPT2, GPT2Config
from minigpt2.fast.cpu_dropout import (CPUDropoutAttention, attention_with_cpu_dropout, cpu_dropout, dropout_mask,
                                       use_cpu_dropout)
from minigpt2.model import CausalSelfAttention, attention_mask_for

LANES = 2 ** 15


def mask_by_hand(n_draws: int, n: int, p: float) -> np.ndarray:
    """The keep-mask of n elements from the next `n_draws` int64 draws of torch's default CPU generator."""
    bits = torch.empty(n_draws, dtype=torch.int64).random_().numpy()
    lanes = bits.astype("<i8").view("<u2")[:n]  # four 16-bit lanes per draw, lowest first
    return (lanes & 0x7FFF) >= round(p * LANES)


@pytest.mark.parametrize("p", [0.1, 0.5, 1 / LANES, (LANES - 1) / LANES])
def test_each_mask_is_the_lanes_of_torchs_stream_and_draws_a_quarter_per_element(p):
    """Two masks of 8 elements in a row take 2 + 2 draws; a mask of 6 takes 2 (the next mask starts afresh)."""
    torch.manual_seed(11)
    got = [dropout_mask(torch.Size([2, 4]), p), dropout_mask(torch.Size([8]), p), dropout_mask(torch.Size([6]), p),
           dropout_mask(torch.Size([4000]), p)]
    torch.manual_seed(11)
    want = [mask_by_hand(2, 8, p).reshape(2, 4), mask_by_hand(2, 8, p), mask_by_hand(2, 6, p),
            mask_by_hand(1000, 4000, p)]
    t = round(p * LANES)
    for (keep, scale), w in zip(got, want):
        assert keep.dtype == torch.bool and np.array_equal(keep.numpy(), w)
        assert scale == LANES / (LANES - t)  # 1 / (1 - t / 2^15), exactly


def test_a_lane_at_the_threshold_is_kept_and_one_below_dropped(monkeypatch):
    """Lanes t - 1, t, t + 1 and the top bit set: only t - 1 (and t - 1 + 2^15) is dropped."""
    p = 0.1
    t = round(p * LANES)  # 3277
    lanes = np.array([t - 1, t, t + 1, t - 1 + LANES, t + LANES, 0, LANES - 1, 1], dtype="<u2")
    draws = torch.from_numpy(lanes.view("<i8").copy())

    def fixed(self):
        return self.copy_(draws[: self.numel()])
    monkeypatch.setattr(torch.Tensor, "random_", fixed)
    keep, _ = dropout_mask(torch.Size([8]), p)
    assert keep.tolist() == [False, True, True, False, True, False, True, False]


def test_the_smallest_and_largest_drop_probability_take_the_cheap_mask():
    """p = 2^-15 and 1 - 2^-15 round to thresholds 1 and 2^15 - 1: the cheap mask (not torch's) drops them (2^20
    elements: about 32 dropped at 2^-15, at other places than torch's bernoulli would drop them)."""
    x = torch.rand(1 << 20) + 0.5
    for p in (1 / LANES, (LANES - 1) / LANES):
        torch.manual_seed(3)
        y = cpu_dropout(x, p)
        torch.manual_seed(3)
        keep, scale = dropout_mask(x.shape, p)
        assert torch.equal(y, x * keep * scale) and 0 < (~keep).sum() < len(x)
    assert dropout_mask(torch.Size([4]), 1 / LANES)[0].shape == (4,)


def test_the_refusal_line():
    with pytest.raises(ValueError) as e:
        dropout_mask(torch.Size([4]), 1e-6)
    assert str(e.value) == ("dropout_mask: p=1e-06 rounds to 0/32768; expected a drop probability in (0, 1) that does "
                            "not round to 0 or 1 (cpu_dropout hands those to F.dropout)")


def test_a_mask_is_made_on_the_device_asked_for():
    keep, _ = dropout_mask(torch.Size([3, 5]), 0.25, device="meta")
    assert keep.device.type == "meta" and keep.shape == (3, 5) and keep.dtype == torch.bool


@settings(max_examples=6, deadline=None)
@given(p=st.floats(0.02, 0.9), seed=st.integers(0, 2 ** 31 - 1))
def test_dropout_drops_p_and_scales_the_rest_like_nn_dropout(p, seed):
    """Over 2^17 elements the dropped share is within 6 sigma of p rounded to 2^-15 (sigma <= 0.0014: a drop
    probability off by 0.02 is 14+ sigma away); kept values are the input times 1 / (1 - p) as torch's `nn.Dropout`
    scales them, and the gradient is the same mask times the same scale."""
    torch.manual_seed(seed)
    n = 1 << 17
    x = (torch.rand(n, dtype=torch.float64) + 0.5).requires_grad_()
    y = cpu_dropout(x, p)
    kept = y.detach() != 0
    p_eff = round(p * LANES) / LANES
    assert abs((1 - kept.double().mean().item()) - p_eff) < 6 * math.sqrt(p_eff * (1 - p_eff) / n)
    ones = torch.nn.Dropout(p_eff).train()(torch.ones(64, dtype=torch.float64))  # torch's scale, the referee
    (scale,) = ones[ones != 0].unique().tolist()
    torch.testing.assert_close(y.detach()[kept], x.detach()[kept] * scale, rtol=1e-15, atol=0)
    g = torch.randn(n, dtype=torch.float64)
    (x_grad,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(x_grad, g * kept / (1 - p_eff), rtol=1e-15, atol=0)


def _qkv(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]


def written_out(q, k, v, keep=1, scale=1.0, attn_mask=None, is_causal=False):
    s = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    T, S = s.shape[-2:]
    if is_causal:
        s = s.masked_fill(torch.ones(T, S, dtype=torch.bool).triu(1), float("-inf"))
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf"))
    return (s.softmax(-1) * keep * scale) @ v


def test_the_defaults_are_plain_non_causal_attention_without_dropout():
    q, k, v = _qkv((2, 3, 5, 4))
    torch.testing.assert_close(attention_with_cpu_dropout(q, k, v), F.scaled_dot_product_attention(q, k, v),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(attention_with_cpu_dropout(q, k, v), written_out(q, k, v), rtol=1e-12, atol=1e-12)


def test_a_drop_probability_rounded_to_1_is_handed_to_torch_which_drops_everything():
    q, k, v = _qkv((1, 2, 4, 3))
    assert torch.equal(attention_with_cpu_dropout(q, k, v, dropout_p=1.0), torch.zeros(1, 2, 4, 3,
                                                                                    dtype=torch.float64))


@pytest.mark.parametrize("causal", [True, False])
def test_three_dimensional_inputs_as_sdpa_takes_them(causal):
    """SDPA takes (..., T, hs): with (B, T, hs) inputs, T = 5 != hs = 3, the written-out attention is the same."""
    q, k, v = _qkv((2, 5, 3))
    mask = None if causal else torch.rand(2, 5, 5, generator=torch.Generator().manual_seed(1)) < 0.7
    if mask is not None:
        mask[..., 0] = True  # every query sees something
    torch.manual_seed(9)
    got = attention_with_cpu_dropout(q, k, v, attn_mask=mask, dropout_p=0.2, is_causal=causal)
    torch.manual_seed(9)
    keep, scale = dropout_mask(torch.Size([2, 5, 5]), 0.2)
    torch.testing.assert_close(got, written_out(q, k, v, keep, scale, mask, causal), rtol=1e-12, atol=1e-12)


def _attention(dropout: float) -> tuple[CausalSelfAttention, CPUDropoutAttention]:
    config = dataclasses.replace(GPT2Config.from_name("tiny"), dropout=dropout)
    torch.manual_seed(0)
    plain = CausalSelfAttention(config)
    return plain, CPUDropoutAttention(CausalSelfAttention(config))


@pytest.mark.parametrize("padded", [False, True])
def test_the_switched_attention_in_training_applies_its_own_mask_with_the_padding(padded):
    """Training: the attention probabilities (causal, or the padding mask) times the cheap mask of p = 0.3."""
    _, attn = _attention(0.3)
    attn.train()
    q, k, v = _qkv((2, 2, 6, 4), seed=2)
    pad = torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6])  # row 0 left-padded by two
    mask, causal = attention_mask_for(pad if padded else None, 6, 0, q.device)
    assert causal is not padded
    torch.manual_seed(4)
    got = attn.attention(q, k, v, mask, causal)
    torch.manual_seed(4)
    keep, scale = dropout_mask(torch.Size([2, 2, 6, 6]), 0.3)
    assert not keep.all()
    torch.testing.assert_close(got, written_out(q, k, v, keep, scale, mask, causal), rtol=1e-12, atol=1e-12)


def test_the_switched_attention_in_eval_is_the_plain_one_with_the_padding():
    plain, attn = _attention(0.3)
    plain.eval(), attn.eval()
    q, k, v = _qkv((2, 2, 6, 4), seed=5)
    pad = torch.tensor([[0, 0, 0, 1, 1, 1], [1] * 6])
    mask, causal = attention_mask_for(pad, 6, 0, q.device)
    got = attn.attention(q, k, v, mask, causal)
    torch.testing.assert_close(got, plain.attention(q, k, v, mask, causal), rtol=0, atol=0)
    torch.testing.assert_close(got, written_out(q, k, v, attn_mask=mask), rtol=1e-12, atol=1e-12)


def test_a_left_padded_model_in_eval_gives_the_plain_models_logits():
    config = dataclasses.replace(GPT2Config.from_name("tiny"), dropout=0.2)
    torch.manual_seed(0)
    plain = GPT2(config).eval()
    torch.manual_seed(0)
    switched = GPT2(config)
    use_cpu_dropout(switched)
    switched.eval()
    ids = torch.randint(0, config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    pad = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7])
    torch.testing.assert_close(switched(ids, attention_mask=pad), plain(ids, attention_mask=pad), rtol=0, atol=0)
