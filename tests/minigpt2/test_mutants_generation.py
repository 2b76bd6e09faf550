"""`minigpt2.generation` pinned on inputs worked by hand: the plain sampler's distribution on a 5-token vocabulary
(temperature, top-k with a tie, top-p at its exact boundary, both together), and `generate`'s loop driven by a
scripted stand-in model whose every call is recorded (left padding, masks, positions, stopping, the token budget,
the order of `on_token`). The fast sampler meets the same cases in tests/minigpt2/fast/test_mutants_decoding.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from minigpt2.config import GPT2Config
from minigpt2.generation import generate, left_pad, sample_next

# A 5-token vocabulary whose probabilities are powers of two (exact in float32, so the cumulative masses below are
# exact too), listed by token id in an order that is not the ranking. Ranked: id 1 (1/2), id 4 (1/4), id 2 (1/8),
# then ids 0 and 3 (1/16 each, a tie). The mass ranked above each: 0, 1/2, 3/4, 7/8, 15/16.
P = [0.0625, 0.5, 0.125, 0.0625, 0.25]
LOGITS = torch.log(torch.tensor(P))


def _norm(d: dict[int, float]) -> dict[int, float]:
    s = sum(d.values())
    return {k: v / s for k, v in d.items()}


# (settings, the distribution worked by hand: token id -> probability)
CASES = [
    (dict(), dict(enumerate(P))),  # the default temperature is 1
    (dict(temperature=1.0), dict(enumerate(P))),
    # temperature T: p ** (1 / T), renormalised
    (dict(temperature=0.5), _norm({i: p ** 2 for i, p in enumerate(P)})),
    (dict(temperature=2.0), _norm({i: math.sqrt(p) for i, p in enumerate(P)})),
    (dict(temperature=1.0, top_k=2), {1: 2 / 3, 4: 1 / 3}),
    (dict(temperature=1.0, top_k=3), {1: 0.5 / 0.875, 4: 0.25 / 0.875, 2: 0.125 / 0.875}),
    # top-p's boundary: id 2's preceding mass is exactly 3/4 = top_p, so it is dropped; just above, it stays
    (dict(temperature=1.0, top_p=0.75), {1: 2 / 3, 4: 1 / 3}),
    (dict(temperature=1.0, top_p=0.76), {1: 0.5 / 0.875, 4: 0.25 / 0.875, 2: 0.125 / 0.875}),
    (dict(temperature=1.0, top_p=0.5), {1: 1.0}),  # id 4's preceding mass 1/2 = top_p: dropped
    (dict(temperature=1.0, top_p=1.0), dict(enumerate(P))),  # top_p 1: nothing dropped
    # top-p on what top-k kept, renormalised: {2/3, 1/3}; id 4's preceding mass 2/3 >= 0.6 (of the unrenormalised
    # mass it would be 1/2 < 0.6 and stay)
    (dict(temperature=1.0, top_k=2, top_p=0.6), {1: 1.0}),
    # temperature before the nucleus: at T = 2 the ranked masses are sqrt(p) / 2.0607: 0.3431, 0.2426, 0.1716, ...;
    # top_p 0.5 keeps the first two (preceding 0 and 0.3431; the third's is 0.5858)
    (dict(temperature=2.0, top_p=0.5), _norm({1: math.sqrt(0.5), 4: math.sqrt(0.25)})),
    (dict(temperature=0.5, top_k=3), _norm({1: 0.25, 4: 0.0625, 2: 0.015625})),
]
N = 40_000  # draws per case: the frequency of a p = 1/2 token has a standard deviation of 0.0025


def frequencies(sample, logits: torch.Tensor, n: int = N, **kw) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    draws = sample(logits.expand(n, -1).contiguous(), generator=g, **kw)
    assert draws.shape == (n,) and draws.dtype == torch.long
    return torch.bincount(draws, minlength=logits.size(-1)).double() / n


def check_case(sample, kw, want):
    got = frequencies(sample, LOGITS[None], **kw)
    assert set(got.nonzero().flatten().tolist()) == set(want), (kw, got)
    expected = torch.tensor([want.get(i, 0.0) for i in range(len(P))], dtype=torch.double)
    assert (got - expected).abs().max() < 0.012, (kw, got, expected)


@pytest.mark.parametrize("kw,want", CASES, ids=[str(kw) for kw, _ in CASES])
def test_plain_sampler_draws_the_hand_worked_distribution(kw, want):
    check_case(sample_next, kw, want)


def check_top_k_tie(sample):
    """top_k = 4 with the 4th and 5th most likely tokens tied (ids 0 and 3): exactly 4 tokens stay, one of the tied
    pair, each at its mass over 15/16."""
    got = frequencies(sample, LOGITS[None], temperature=1.0, top_k=4)
    drawn = set(got.nonzero().flatten().tolist())
    assert len(drawn) == 4 and {1, 4, 2} < drawn and len(drawn & {0, 3}) == 1, got
    (tied,) = drawn & {0, 3}
    want = {1: 0.5 / 0.9375, 4: 0.25 / 0.9375, 2: 0.125 / 0.9375, tied: 0.0625 / 0.9375}
    assert max(abs(got[i].item() - p) for i, p in want.items()) < 0.012


def test_plain_sampler_top_k_keeps_exactly_k_of_a_tie():
    check_top_k_tie(sample_next)


def check_rows_apart(sample):
    """Each row keeps its own nucleus: row 0 (the powers of two) keeps 2 tokens at top_p 0.75, row 1 (masses 0.35,
    0.25, 0.2, 0.12, 0.08 at ids 3, 0, 4, 1, 2; preceding 0, 0.35, 0.6, 0.8, 0.92) keeps 3."""
    row1 = torch.log(torch.tensor([0.25, 0.12, 0.08, 0.35, 0.2]))
    n = N // 2
    logits = torch.cat([LOGITS[None].expand(n, -1), row1[None].expand(n, -1)])
    g = torch.Generator().manual_seed(2)
    draws = sample(logits, temperature=1.0, top_p=0.75, generator=g)
    f0 = torch.bincount(draws[:n], minlength=5).double() / n
    f1 = torch.bincount(draws[n:], minlength=5).double() / n
    want0 = torch.tensor([0, 2 / 3, 0, 0, 1 / 3], dtype=torch.double)
    want1 = torch.tensor([0.25, 0, 0, 0.35, 0.2], dtype=torch.double) / 0.8
    assert torch.equal(f0 > 0, want0 > 0) and torch.equal(f1 > 0, want1 > 0), (f0, f1)
    assert (f0 - want0).abs().max() < 0.015 and (f1 - want1).abs().max() < 0.015, (f0, f1)


def test_plain_sampler_keeps_each_rows_own_nucleus():
    check_rows_apart(sample_next)


def check_greedy(sample):
    """Temperature 0 is the argmax of each row, whatever top_k / top_p say, one id per row (also for one row)."""
    logits = torch.tensor([[0.0, 2.0, 1.0, 3.0, -1.0], [5.0, 0.0, 1.0, 0.0, 4.0], [0.0, 0.0, 0.0, 0.0, 0.5]])
    for kw in [dict(), dict(top_k=2), dict(top_p=0.1), dict(top_k=3, top_p=0.5)]:
        got = sample(logits, temperature=0, **kw)
        assert got.tolist() == [3, 0, 4] and got.dtype == torch.long
        one = sample(logits[1:2], temperature=0, **kw)
        assert one.shape == (1,) and one.tolist() == [0]
        assert sample(logits.bfloat16(), temperature=0, **kw).tolist() == [3, 0, 4]


def test_plain_sampler_is_the_argmax_at_temperature_zero():
    check_greedy(sample_next)


def check_one_row_shape(sample):
    for kw in [dict(), dict(top_k=2), dict(top_p=0.75), dict(top_k=3, top_p=0.9)]:
        got = sample(LOGITS[None], temperature=1.0, generator=torch.Generator().manual_seed(0), **kw)
        assert got.shape == (1,) and got.dtype == torch.long and 0 <= got.item() < 5


def test_plain_sampler_gives_one_id_per_row_for_a_single_row():
    check_one_row_shape(sample_next)


def test_left_pad_puts_everything_on_the_devices_given():
    """On the meta device (no data): the three tensors are made there, as on a GPU, not on the CPU."""
    meta = torch.device("meta")
    ids, mask, positions = left_pad([[5, 6, 7], [4]], 0, 2, meta)
    assert ids.device == mask.device == positions.device == meta
    assert ids.shape == positions.shape == (2, 3) and mask.shape == (2, 5)
    assert ids.dtype == mask.dtype == positions.dtype == torch.long
    ids, mask, positions = left_pad([[5, 6, 7], [4]], 9, 2, torch.device("cpu"))
    assert ids.tolist() == [[5, 6, 7], [9, 9, 4]] and mask.tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
    assert positions.tolist() == [[0, 1, 2], [0, 0, 0]]


def check_single_rows(sample):
    """One row a call (a batch of 1): top-k 2 and top-p 0.76 keep their 2 and 3 tokens, at their masses."""
    g = torch.Generator().manual_seed(5)
    for kw, want in [(dict(top_k=2), {1: 2 / 3, 4: 1 / 3}),
                     (dict(top_p=0.76), {1: 0.5 / 0.875, 4: 0.25 / 0.875, 2: 0.125 / 0.875})]:
        draws = [sample(LOGITS[None], 1.0, generator=g, **kw).item() for _ in range(3000)]
        assert set(draws) == set(want), kw
        assert max(abs(draws.count(i) / 3000 - p) for i, p in want.items()) < 0.04, kw


def test_plain_sampler_on_single_rows():
    check_single_rows(sample_next)


def check_seeded(sample):
    """Every path draws from the generator given: the same seed, the same draws; another seed, others."""
    logits = LOGITS[None].expand(2000, -1)
    for kw in [dict(), dict(top_k=3), dict(top_p=0.9), dict(top_k=4, top_p=0.9), dict(top_k=5)]:
        draws = [sample(logits, 1.0, generator=torch.Generator().manual_seed(s), **kw) for s in (3, 3, 4)]
        assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2]), kw


def test_plain_sampler_draws_from_the_generator_given():
    check_seeded(sample_next)


# --- generate, driven by a scripted stand-in model -------------------------------------------------------------

V = 8


class Scripted(nn.Module):
    """Stands in for `GPT2` in `generate`: the logits of row b's k-th new token put 10 on `script[b][k]` (so greedy
    decoding emits the script), or are `logits` at every step when given. Records every forward call."""

    def __init__(self, script: list[list[int]] | None = None, logits: torch.Tensor | None = None,
                 n_positions: int = 32) -> None:
        super().__init__()
        self.config = GPT2Config(vocab_size=V, n_positions=n_positions, n_embd=V, n_layer=1, n_head=1)
        self.wte = nn.Embedding(V, V)
        self.script, self.fixed = script, logits
        self.calls: list[dict] = []

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None):
        B, T = input_ids.shape
        self.calls.append(dict(ids=input_ids.tolist(),
                               mask=None if attention_mask is None else attention_mask.tolist(),
                               pos=position_ids.tolist(), start=cache.length, max_len=cache.max_len,
                               cache_dtype=cache.k[0].dtype, training=self.training))
        step = len(self.calls) - 1
        hidden = torch.zeros(B, T, V)
        for b in range(B):
            if self.fixed is not None:
                hidden[b, -1] = self.fixed
            else:
                hidden[b, -1, self.script[b][step]] = 10.0
        cache.length += T
        return hidden

    def lm_head(self, hidden, token_ids=None):
        return hidden


def test_left_padding_masks_and_positions_of_every_call():
    """Prompts of 3 and 1 tokens: the short one is padded on the left with the EOS id, the mask has room for the new
    tokens (1 = real, each new column set as its token is fed), and each row's positions count from its own first
    real token. Three new tokens take three forward calls (the last token is never fed back)."""
    m = Scripted([[1, 2, 3], [3, 2, 1]])
    out = generate(m, [[5, 6, 7], [4]], 3, eos_id=0)
    assert out == [[1, 2, 3], [3, 2, 1]]
    assert [c["ids"] for c in m.calls] == [[[5, 6, 7], [0, 0, 4]], [[1], [3]], [[2], [2]]]
    assert [c["mask"] for c in m.calls] == [[[1, 1, 1], [0, 0, 1]],
                                            [[1, 1, 1, 1], [0, 0, 1, 1]],
                                            [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]]
    assert [c["pos"] for c in m.calls] == [[[0, 1, 2], [0, 0, 0]], [[3], [1]], [[4], [2]]]
    assert [c["start"] for c in m.calls] == [0, 3, 4]
    assert m.calls[0]["max_len"] >= 5  # room for the prompt and the two tokens fed back
    assert len(m.calls) == 3


@pytest.mark.parametrize("eos_id,pad", [(None, 0), (7, 7)])
def test_the_padding_id_is_the_eos_id_or_0(eos_id, pad):
    m = Scripted([[1, 2], [1, 2]])
    assert generate(m, [[5, 6, 4], [3]], 2, eos_id=eos_id) == [[1, 2], [1, 2]]
    assert m.calls[0]["ids"] == [[5, 6, 4], [pad, pad, 3]]


def test_an_unpadded_batch_counts_positions_from_0_and_masks_nothing_out():
    m = Scripted([[1, 2, 3], [3, 2, 1]])
    generate(m, [[5, 6], [4, 4]], 3, eos_id=0)
    assert [c["pos"] for c in m.calls] == [[[0, 1], [0, 1]], [[2], [2]], [[3], [3]]]
    for c in m.calls:  # no mask, or one that keeps every position
        assert c["mask"] is None or all(all(v == 1 for v in row) for row in c["mask"])


def test_eos_in_one_row_while_the_other_continues():
    """Row 0 emits EOS (6) as its 2nd token and stops there (EOS kept); row 1 runs to the budget. Tokens sampled
    for a stopped row afterwards are neither kept nor reported; `on_token` sees each kept token in order."""
    m = Scripted([[1, 6, 3, 4], [2, 3, 4, 5]])
    seen = []
    out = generate(m, [[5], [5]], 4, eos_id=6, on_token=lambda row, t: seen.append((row, t)))
    assert out == [[1, 6], [2, 3, 4, 5]]
    assert seen == [(0, 1), (1, 2), (0, 6), (1, 3), (1, 4), (1, 5)]
    assert len(m.calls) == 4


def test_the_loop_ends_once_every_row_has_stopped():
    m = Scripted([[1, 6, 2, 2, 2], [6, 2, 2, 2, 2]])
    assert generate(m, [[5], [5, 5]], 5, eos_id=6) == [[1, 6], [6]]
    assert len(m.calls) == 2  # the prompt, then the token of step 1; nothing after both rows stopped


def test_eos_none_never_stops_early():
    m = Scripted([[0, 1, 0, 1]])
    assert generate(m, [[5]], 4, eos_id=None) == [[0, 1, 0, 1]]


def test_stop_fires_on_the_third_token_of_its_row_only():
    """`stop` is asked after each token with the row's own new tokens so far; it fires on row 0's 3rd token."""
    asked = []

    def stop(tokens):
        asked.append(list(tokens))
        return tokens[-1] == 3

    m = Scripted([[1, 2, 3, 4, 5], [4, 4, 4, 4, 4]])
    out = generate(m, [[5], [5]], 5, eos_id=None, stop=stop)
    assert out == [[1, 2, 3], [4, 4, 4, 4, 4]]
    assert asked == [[1], [4], [1, 2], [4, 4], [1, 2, 3], [4, 4, 4], [4, 4, 4, 4], [4, 4, 4, 4, 4]]


def test_max_new_tokens_is_capped_by_n_positions_and_a_full_prompt_is_an_error():
    m = Scripted([list(range(1, 8))], n_positions=8)
    assert generate(m, [[5] * 5], 10, eos_id=None) == [[1, 2, 3]]  # 8 - 5 = 3 new tokens
    m = Scripted([list(range(1, 8))], n_positions=8)
    assert generate(m, [[5] * 7], 10, eos_id=None) == [[1]]
    m = Scripted([list(range(1, 8))], n_positions=8)
    assert generate(m, [[5] * 4], 2, eos_id=None) == [[1, 2]]  # within the context: as asked
    with pytest.raises(ValueError, match=r"^prompt of 8 tokens leaves no room within n_positions=8$"):
        generate(Scripted([[1]], n_positions=8), [[5] * 8], 10, eos_id=None)


def test_empty_prompts_are_an_error():
    for prompts in ([], [[]], [[1], []]):
        with pytest.raises(ValueError, match=r"^generate needs at least one prompt, and every prompt at least one "
                                             r"token$"):
            generate(Scripted([[1]]), prompts, 3)


def test_the_seed_is_the_generators_seed_zero_included():
    """With the same logits at every step, `generate`'s tokens are `sample_next`'s draws, one step after another,
    from a generator seeded with `seed` (seed 0 is a seed, not "no seed")."""
    logits = torch.log(torch.tensor([0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05]))
    for seed in (0, 5):
        g = torch.Generator().manual_seed(seed)
        want = [[], []]
        for _ in range(12):
            t = sample_next(logits[None].expand(2, -1), 1.3, None, 0.9, g).tolist()
            want[0].append(t[0]), want[1].append(t[1])
        got = generate(Scripted(logits=logits), [[1], [2]], 12, temperature=1.3, top_p=0.9, seed=seed, eos_id=None)
        assert got == want
    runs = {str(generate(Scripted(logits=logits), [[1]], 12, temperature=1.0, eos_id=None)) for _ in range(6)}
    assert len(runs) > 1  # no seed: not one fixed sequence


def test_a_models_own_sampler_and_cache_dtype_are_used_with_the_settings_as_given():
    m = Scripted([[1, 2, 3]])
    asked = []

    def own_sampler(logits, temperature, top_k, top_p, generator):
        asked.append((temperature, top_k, top_p, generator.initial_seed()))
        return logits.argmax(dim=-1)

    m.sample_next = own_sampler
    m.kv_cache_dtype = torch.float64
    assert generate(m, [[5]], 3, temperature=0.7, top_k=4, top_p=0.8, seed=11, eos_id=None) == [[1, 2, 3]]
    assert asked == [(0.7, 4, 0.8, 11)] * 3
    assert {c["cache_dtype"] for c in m.calls} == {torch.float64}
    plain = Scripted([[1]])
    generate(plain, [[5]], 1)
    assert plain.calls[0]["cache_dtype"] == torch.float32  # the weights' dtype


@pytest.mark.parametrize("training", [True, False])
def test_generation_runs_in_eval_mode_and_restores_the_mode(training):
    m = Scripted([[1, 2]])
    m.train(training)
    generate(m, [[5]], 2, eos_id=None)
    assert [c["training"] for c in m.calls] == [False, False]
    assert m.training is training
