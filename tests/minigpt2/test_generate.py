"""Sampling controls of `minigpt2.generation` (the plain sampler; the fast one: tests/minigpt2/fast/test_generate_fast.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from minigpt2.checkpoint import load_model
from minigpt2.generation import generate, sample_next

PROMPTS = [[464, 2068, 7586], [40, 1101, 257, 922]]


@pytest.fixture(scope="module")
def model(tiny_hf_dir):
    return load_model(tiny_hf_dir).eval()


def test_seeded_sampling_is_reproducible(model):
    a = generate(model, PROMPTS, 20, temperature=1.2, top_p=0.9, seed=7, eos_id=None)
    b = generate(model, PROMPTS, 20, temperature=1.2, top_p=0.9, seed=7, eos_id=None)
    c = generate(model, PROMPTS, 20, temperature=1.2, top_p=0.9, seed=8, eos_id=None)
    assert a == b
    assert a != c


def test_top_k_1_and_tiny_top_p_are_greedy(model):
    greedy = generate(model, PROMPTS, 10, eos_id=None)
    assert generate(model, PROMPTS, 10, temperature=1.0, top_k=1, seed=0, eos_id=None) == greedy
    assert generate(model, PROMPTS, 10, temperature=1.0, top_p=1e-6, seed=0, eos_id=None) == greedy


def test_top_p_keeps_the_smallest_set_holding_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = {sample_next(logits, 1.0, top_p=0.7, generator=g).item() for _ in range(300)}
    assert draws == {0, 1}  # 0.5 < 0.7 <= 0.5 + 0.3


def test_top_k_restricts_the_choice():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    assert {sample_next(logits, 1.0, top_k=2, generator=g).item() for _ in range(300)} == {0, 1}


def test_stops_at_eos_and_at_stop_callback(model):
    greedy = generate(model, PROMPTS[:1], 10, eos_id=None)[0]
    # pretend the 4th greedy token is end-of-text: generation stops right after emitting it
    assert generate(model, PROMPTS[:1], 10, eos_id=greedy[3])[0] == greedy[:4]
    assert generate(model, PROMPTS[:1], 10, eos_id=None, stop=lambda toks: len(toks) == 6)[0] == greedy[:6]


def test_max_new_tokens_is_capped_by_the_context(model):
    out = generate(model, [[1] * 120], 50, eos_id=None)[0]
    assert len(out) == model.config.n_positions - 120


def test_empty_prompt_is_an_error(model):
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[]], 5)


def test_on_token_sees_every_new_token_in_order_as_it_is_sampled(model):
    seen: list[tuple[int, int]] = []
    calls_at_step: list[int] = []
    real_lm_head = model.lm_head

    def lm_head(hidden, token_ids=None):  # counts how many tokens were reported before each new step
        calls_at_step.append(len(seen))
        return real_lm_head(hidden, token_ids)

    model.lm_head = lm_head
    try:
        out = generate(model, PROMPTS, 6, temperature=1.0, seed=3, eos_id=None,
                       on_token=lambda row, token: seen.append((row, token)))
    finally:
        del model.lm_head
    assert [t for r, t in seen if r == 0] == out[0] and [t for r, t in seen if r == 1] == out[1]
    assert calls_at_step == [0, 2, 4, 6, 8, 10]  # both rows' tokens reported before the next step is computed
    assert generate(model, PROMPTS, 6, temperature=1.0, seed=3, eos_id=None) == out  # the hook changes nothing


@pytest.fixture
def cache_dtypes(monkeypatch):
    """The dtype of every KV cache `generate` makes while the test runs."""
    import minigpt2.generation as gen

    made = []

    class Recording(gen.KVCache):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self.k[0].dtype)

    monkeypatch.setattr(gen, "KVCache", Recording)
    return made


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_the_plain_path_keeps_the_models_own_cache_dtype(model, cache_dtypes, dtype):
    generate(copy.deepcopy(model).to(dtype), PROMPTS[:1], 3, eos_id=None)
    assert cache_dtypes == [dtype]
