"""`minigpt2.fast.decoding` pinned on inputs worked by hand: the fast sampler on the 5-token cases of
tests/minigpt2/test_mutants_generation.py, `nucleus_candidates` at its short-list boundary, the KV-cache dtype rule,
and `Fp32CacheAttention` / `attend_in_cache_dtype`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from minigpt2.config import GPT2Config
from minigpt2.fast.cpu_dropout import CPUDropoutAttention
from minigpt2.fast.decoding import Fp32CacheAttention, attend_in_cache_dtype, kv_cache_dtype, nucleus_candidates
from minigpt2.fast.decoding import sample_next
from minigpt2.model import GPT2, CausalSelfAttention
from tests.minigpt2.test_mutants_generation import (CASES, check_case, check_greedy, check_one_row_shape,
                                                    check_rows_apart, check_seeded, check_single_rows,
                                                    check_top_k_tie)


@pytest.mark.parametrize("kw,want", CASES, ids=[str(kw) for kw, _ in CASES])
def test_fast_sampler_draws_the_hand_worked_distribution(kw, want):
    check_case(sample_next, kw, want)


def test_fast_sampler_top_k_keeps_exactly_k_of_a_tie():
    check_top_k_tie(sample_next)


def test_fast_sampler_keeps_each_rows_own_nucleus():
    check_rows_apart(sample_next)


def test_fast_sampler_is_the_argmax_at_temperature_zero():
    check_greedy(sample_next)


def test_fast_sampler_gives_one_id_per_row_for_a_single_row():
    check_one_row_shape(sample_next)


def test_fast_sampler_on_single_rows():
    check_single_rows(sample_next)


def test_fast_sampler_draws_from_the_generator_given():
    check_seeded(sample_next)


def test_fast_sampler_top_k_of_the_whole_vocabulary_then_top_p():
    """top_k = V keeps everything; top_p then applies as alone (the boundary case: id 2 dropped at 3/4)."""
    from tests.minigpt2.test_mutants_generation import LOGITS, frequencies

    got = frequencies(sample_next, LOGITS[None], temperature=1.0, top_k=5, top_p=0.75)
    assert set(got.nonzero().flatten().tolist()) == {1, 4}
    assert abs(got[1].item() - 2 / 3) < 0.012


# --- nucleus_candidates ---------------------------------------------------------------------------------------

# 8 tokens; the 4 best of row HELD hold exactly 3/4 (1/4 + 1/4 + 1/8 + 1/8, exact in float32); FLAT's 4 best hold 1/2
HELD = torch.tensor([0.125, 0.25, 0.0625, 0.125, 0.0, 0.25, 0.125, 0.0625])
FLAT = torch.full((8,), 0.125)


def test_nucleus_candidates_stop_at_the_short_list_when_it_holds_exactly_top_p():
    probs, ids = nucleus_candidates(HELD[None], 0.75, first_try=4)
    assert probs.tolist() == [[0.25, 0.25, 0.125, 0.125]]
    assert sorted(ids[0, :2].tolist()) == [1, 5] and sorted(ids[0, 2:].tolist()) in ([0, 3], [0, 6], [3, 6])
    assert torch.equal(HELD[ids], probs)
    # just above, the short list may miss part of the nucleus: every token, sorted
    probs, ids = nucleus_candidates(HELD[None], 0.7501, first_try=4)
    assert probs.shape == (1, 8) and probs[0].tolist() == sorted(HELD.tolist(), reverse=True)
    assert sorted(ids[0].tolist()) == list(range(8)) and torch.equal(HELD[ids], probs)


def test_nucleus_candidates_sort_everything_unless_every_row_is_held():
    probs, ids = nucleus_candidates(torch.stack([HELD, FLAT]), 0.75, first_try=4)
    assert probs.shape == (2, 8)
    assert probs[0].tolist() == sorted(HELD.tolist(), reverse=True) and probs[1].tolist() == [0.125] * 8
    probs, _ = nucleus_candidates(torch.stack([HELD, HELD]), 0.75, first_try=4)
    assert probs.shape == (2, 4)
    probs, _ = nucleus_candidates(torch.stack([FLAT, FLAT]), 0.75, first_try=2)  # 2 rows, 2 tried: 1/4 < 3/4
    assert probs.shape == (2, 8)


def test_nucleus_candidates_first_try_beyond_the_vocabulary_and_its_default():
    probs, ids = nucleus_candidates(FLAT[None], 0.99, first_try=20)  # first_try > V: all 8, no error
    assert probs.shape == (1, 8) and sorted(ids[0].tolist()) == list(range(8))
    peaked = torch.zeros(1, 300)
    peaked[0, 7] = 1.0
    probs, ids = nucleus_candidates(peaked, 0.9)
    assert probs.shape == (1, 256) and ids[0, 0].item() == 7  # the default short list: 256
    probs, _ = nucleus_candidates(torch.full((1, 300), 1 / 300), 0.9)
    assert probs.shape == (1, 300)  # 256 / 300 < 0.9: everything


# --- kv_cache_dtype ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,device,want", [
    (torch.bfloat16, "cpu", torch.float32), (torch.float16, "cpu", torch.float32),
    (torch.float32, "cpu", torch.float32), (torch.float64, "cpu", torch.float64),
    (torch.bfloat16, "cuda", torch.bfloat16), (torch.float16, "cuda", torch.float16),
    (torch.float32, "cuda", torch.float32), (torch.float16, "meta", torch.float16),
])
def test_kv_cache_dtype_is_fp32_only_for_half_weights_on_cpu(dtype, device, want):
    assert kv_cache_dtype(dtype, torch.device(device)) == want


# --- Fp32CacheAttention ----------------------------------------------------------------------------------------------

CONFIG = GPT2Config(vocab_size=16, n_positions=8, n_embd=8, n_layer=3, n_head=2, dropout=0.0)


def test_fp32_cache_attention_attends_in_the_caches_dtype_and_answers_in_the_querys():
    torch.manual_seed(0)
    plain = CausalSelfAttention(CONFIG).eval()
    attn = Fp32CacheAttention(plain)
    assert attn.query is plain.query and attn.c_proj is plain.c_proj and attn.n_head == 2
    assert attn.state_dict().keys() == plain.state_dict().keys()
    q = torch.randn(1, 2, 3, 4).bfloat16()
    k, v = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    mask = torch.tensor([[[[True, True, True, True, False], [True] * 5, [False, True, True, True, True]]]])
    got = attn.attention(q, k, v, mask, False)
    assert got.dtype == torch.bfloat16
    want = F.scaled_dot_product_attention(q.float(), k, v, attn_mask=mask).bfloat16()
    assert torch.equal(got, want)
    got = attn.attention(q, k, v, None, True)
    assert torch.equal(got, F.scaled_dot_product_attention(q.float(), k, v, is_causal=True).bfloat16())


@pytest.mark.parametrize("training", [False, True])
def test_attend_in_cache_dtype_replaces_the_plain_attentions_in_place(training):
    model = GPT2(CONFIG).train(training)
    params = [b.attn.query.weight for b in model.h]
    model.h[1].attn.__class__ = CPUDropoutAttention  # a training switch's attention counts as plain
    other = type("Other", (CausalSelfAttention,), {})
    model.h[2].attn.__class__ = other  # another subclass keeps its own forward
    assert attend_in_cache_dtype(model) == 2
    assert [type(b.attn) for b in model.h] == [Fp32CacheAttention, Fp32CacheAttention, other]
    assert [b.attn.query.weight for b in model.h] == params
    assert all(b.attn.training is training for b in model.h)
