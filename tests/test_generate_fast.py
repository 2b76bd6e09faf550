"""The short-list sampling of `sample_next` draws from exactly the distribution of the full-sort definition."""

import torch

from minigpt2.generate import nucleus_candidates, sample_next


def reference_distribution(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None
                           ) -> torch.Tensor:
    """The textbook definition on one row: mask below the k-th logit, softmax, sort, keep the top-p nucleus."""
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None:
        sorted_probs, order = torch.sort(probs, descending=True)
        drop = (sorted_probs.cumsum(-1) - sorted_probs) >= top_p
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs.masked_fill(drop, 0.0))
    return probs / probs.sum()


def empirical(logits, n, **kw):
    g = torch.Generator().manual_seed(0)
    rows = logits.expand(n, -1)  # n independent draws in one call
    counts = torch.bincount(sample_next(rows, generator=g, **kw), minlength=logits.size(-1))
    return counts.float() / n


def test_sampling_matches_the_full_sort_definition():
    torch.manual_seed(0)
    logits = torch.randn(600) * 3
    for kw in [dict(temperature=0.8, top_k=20, top_p=0.9), dict(temperature=1.0, top_p=0.8),
               dict(temperature=1.3, top_k=7, top_p=None), dict(temperature=0.7, top_k=None, top_p=None)]:
        ref = reference_distribution(logits, kw["temperature"], kw.get("top_k"), kw.get("top_p"))
        got = empirical(logits[None], 20000, **kw)
        assert set(got.nonzero().flatten().tolist()) <= set(ref.nonzero().flatten().tolist()), kw
        assert (got - ref).abs().max() < 0.02, (kw, (got - ref).abs().max())


def test_nucleus_candidates_short_list_or_full_sort():
    peaked = torch.softmax(torch.randn(2, 5000) * 8, dim=-1)
    probs, ids = nucleus_candidates(peaked, 0.9, first_try=256)
    assert probs.shape == (2, 256)  # the 256 best hold 90% of a peaked distribution
    flat = torch.full((2, 5000), 1 / 5000)
    probs, ids = nucleus_candidates(flat, 0.9, first_try=256)
    assert probs.shape == (2, 5000)  # they do not here: fall back to sorting everything
    assert torch.equal(probs.gather(-1, torch.argsort(ids, dim=-1)), flat)
