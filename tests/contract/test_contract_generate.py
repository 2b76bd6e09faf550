"""Generation held to what minigpt2/generation.py promises, on the plain path and on minigpt2.fast's:

- ragged prompts in one batch (left-padded) give, row by row, what each prompt gives alone, and what a decoder
  without a KV cache gives (re-reading the whole text at every step); a row that meets EOS stops alone;
- generation runs in eval mode (dropout off) and gives the model its mode back;
- sampling draws from softmax(logits / temperature), restricted to the top k, or to each row's own nucleus (the
  smallest best-first set holding top_p of the mass, decided per row), renormalised: checked as frequencies over
  thousands of draws against the distribution computed here;
- the first sampled token of each row of a ragged batch follows that prompt's own distribution, over many seeds.
"""
from __future__ import annotations

import pytest
import torch

from minigpt2 import GPT2, GPT2Config
from minigpt2 import generation
from minigpt2.fast import decoding, for_inference
from minigpt2.generation import generate

SAMPLERS = {"plain": generation.sample_next, "fast": decoding.sample_next}


@pytest.fixture(params=list(SAMPLERS))
def sample_next(request):
    """Each sampler in turn: the plain sort-based one and the fast short-list one."""
    return SAMPLERS[request.param]

VOCAB = 97
PROMPTS = [[5, 17, 33], [40, 11, 2, 9, 60, 7], [88], [3, 3, 3, 3]]


@pytest.fixture(scope="module")
def model() -> GPT2:
    torch.manual_seed(0)
    m = GPT2(GPT2Config.from_name("tiny", vocab_size=VOCAB))
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.3)  # a spread-out next-token distribution: greedy explores many tokens
    return m.eval()


def cache_free_greedy(model: GPT2, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding the slow way: the whole text through the model at every step, no cache, no padding."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            hidden = model(torch.tensor([ids]))
            ids.append(int(model.lm_head(hidden[0, -1]).argmax()))
    return ids[len(prompt):]


def test_ragged_greedy_batch_equals_each_prompt_alone_and_a_cache_free_decoder(model):
    batched = generate(model, PROMPTS, 12, eos_id=None)
    for prompt, row in zip(PROMPTS, batched):
        assert row == generate(model, [prompt], 12, eos_id=None)[0]
        assert row == cache_free_greedy(model, prompt, 12)
    assert len({tuple(r) for r in batched}) == len(PROMPTS)  # the rows differ: a mix-up would show


def test_a_row_that_meets_eos_stops_alone(model):
    alone = [generate(model, [p], 10, eos_id=None)[0] for p in PROMPTS]
    eos = alone[1][4]  # row 1's fifth token is taken as end-of-text
    out = generate(model, PROMPTS, 10, eos_id=eos)
    for row, full in zip(out, alone):
        cut = full.index(eos) + 1 if eos in full else len(full)
        assert row == full[:cut]
    assert len(out[1]) == 5


def test_generation_runs_in_eval_mode_and_gives_the_mode_back(model):
    noisy = GPT2(GPT2Config.from_name("tiny", vocab_size=VOCAB, dropout=0.5))
    noisy.load_state_dict(model.state_dict())
    noisy.train()
    out = generate(noisy, PROMPTS, 8, eos_id=None)
    assert noisy.training
    assert out == generate(model, PROMPTS, 8, eos_id=None)  # dropout 0.5 was off while generating


# ------------------------------------------------------------------------------------------------- sampling

def expected_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None) -> torch.Tensor:
    """The distribution a sampler should draw from, per row, written from the definitions (fp64)."""
    out = []
    for row in logits.double():
        p = torch.softmax(row / temperature, -1)
        order = torch.argsort(p, descending=True)
        keep = torch.zeros_like(p, dtype=torch.bool)
        if top_k is not None:
            keep[order[:top_k]] = True
        else:
            keep[:] = True
        if top_p is not None:
            q = torch.where(keep, p, torch.zeros_like(p))
            q = q / q.sum()
            mass = 0.0
            nucleus = torch.zeros_like(keep)
            for i in order.tolist():  # best first, until the tokens kept hold top_p
                if not keep[i] or mass >= top_p:
                    continue
                nucleus[i] = True
                mass += float(q[i])
            keep = nucleus
        p = torch.where(keep, p, torch.zeros_like(p))
        out.append(p / p.sum())
    return torch.stack(out)


def frequencies(sample_next, logits: torch.Tensor, draws: int, seed: int = 0, **kw) -> torch.Tensor:
    """Empirical distribution of each row over `draws` samples (each row repeated `draws` times in one batch)."""
    B, V = logits.shape
    big = logits.repeat_interleave(draws, 0)
    tokens = sample_next(big, generator=torch.Generator().manual_seed(seed), **kw).view(B, draws)
    return torch.stack([torch.bincount(t, minlength=V).double() / draws for t in tokens])


# row 0: one token holds 0.92 of the mass; row 1: nearly flat over 5 tokens; row 2: a steady decay
LOGITS = torch.log(torch.tensor([
    [0.92, 0.03, 0.025, 0.015, 0.01, 0.0, 0.0, 0.0],
    [0.20, 0.195, 0.19, 0.185, 0.18, 0.02, 0.02, 0.01],
    [0.35, 0.25, 0.15, 0.10, 0.07, 0.04, 0.03, 0.01],
]).clamp(min=1e-9))


@pytest.mark.parametrize("kw", [
    dict(temperature=1.0),
    dict(temperature=2.0),
    dict(temperature=0.7, top_k=3),
    dict(temperature=1.0, top_p=0.9),  # row 0 keeps 1 token, row 1 keeps 5, row 2 keeps 5: per row
    dict(temperature=1.3, top_p=0.5),
    dict(temperature=1.0, top_p=1.0),  # top-p 1: everything
    dict(temperature=1.0, top_k=4, top_p=0.8),  # nucleus within the top k, renormalised
], ids=str)
def test_sampling_follows_the_defined_distribution(sample_next, kw):
    want = expected_probs(LOGITS, kw.get("temperature", 1.0), kw.get("top_k"), kw.get("top_p"))
    got = frequencies(sample_next, LOGITS, 6000, **kw)
    assert ((got > 0) <= (want > 0)).all(), f"drawn outside the kept set:\n{got}\n{want}"
    assert torch.allclose(got, want, atol=0.025), f"\n{got}\n{want}"


def test_each_row_keeps_its_own_nucleus(sample_next):
    """Row 0's nucleus is one token, row 1's is five: row 1 must still draw all five."""
    got = frequencies(sample_next, LOGITS[:2], 3000, temperature=1.0, top_p=0.9)
    assert (got[0] > 0).sum() == 1 and (got[1, :5] > 0.12).all()


def test_the_nucleus_search_beyond_its_first_candidates(sample_next):
    """A flat row needs more than the first few hundred candidates to hold top_p: all of them stay possible,
    also when the other row of the batch is peaked (its nucleus fits in the first candidates)."""
    rows = torch.zeros(2, 1000)
    rows[0, 3] = 20.0
    got = frequencies(sample_next, rows, 4000, temperature=1.0, top_p=0.95)
    assert (got[1] > 0).sum() > 850 and (got[0] > 0).sum() == 1


def test_temperature_zero_is_the_argmax(sample_next):
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(sample_next(logits, 0.0), logits.argmax(-1))


@pytest.mark.parametrize("path", ["plain", "fast"])
def test_the_first_sampled_token_of_each_ragged_row_follows_its_own_prompt(model, path):
    """Over many seeds, the first token of every row of a left-padded batch is drawn from that prompt's own
    distribution (top-k 3 at temperature 1.5), computed from the prompt alone without padding."""
    kw = dict(temperature=1.5, top_k=3)
    with torch.no_grad():
        want = torch.cat([expected_probs(model.lm_head(model(torch.tensor([p]))[:, -1]), **kw) for p in PROMPTS])
    seeds = 150
    counts = torch.zeros(len(PROMPTS), VOCAB, dtype=torch.float64)
    decoder = model if path == "plain" else for_inference(model, torch.device("cpu"))
    for seed in range(seeds):
        for i, row in enumerate(generate(decoder, PROMPTS, 1, eos_id=None, seed=seed, **kw)):
            counts[i, row[0]] += 1
    got = counts / seeds
    assert ((got > 0) <= (want > 0)).all()
    assert torch.allclose(got, want, atol=0.15), f"\n{got.max(-1)}\n{want.max(-1)}"
    # the prompts' distributions are far apart, so rows swapped or shifted by the padding would show
    assert min((want[i] - want[j]).abs().max() for i in range(4) for j in range(i)) > 0.3
