"""`minigpt2.fast.decoding` and `for_inference`'s decoding: both samplers (the plain sort-based one and the fast
short-list one) draw from exactly the distribution of the textbook definition; the fast copy of a bf16 model on CPU
attends over an fp32 KV cache; greedy decoding is the same on both paths."""

import copy

import pytest
import torch

from minigpt2 import generation
from minigpt2.checkpoint import load_model
from minigpt2.fast import decoding, for_inference, for_training
from minigpt2.fast.decoding import nucleus_candidates
from minigpt2.generation import generate

PROMPTS = [[464, 2068, 7586], [40, 1101, 257, 922]]
SAMPLERS = {"plain": generation.sample_next, "fast": decoding.sample_next}


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


def empirical(sample_next, logits, n, **kw):
    g = torch.Generator().manual_seed(0)
    rows = logits.expand(n, -1)  # n independent draws in one call
    counts = torch.bincount(sample_next(rows, generator=g, **kw), minlength=logits.size(-1))
    return counts.float() / n


@pytest.mark.parametrize("path", SAMPLERS)
def test_sampling_matches_the_full_sort_definition(path):
    torch.manual_seed(0)
    logits = torch.randn(600) * 3
    for kw in [dict(temperature=0.8, top_k=20, top_p=0.9), dict(temperature=1.0, top_p=0.8),
               dict(temperature=1.3, top_k=7, top_p=None), dict(temperature=0.7, top_k=None, top_p=None)]:
        ref = reference_distribution(logits, kw["temperature"], kw.get("top_k"), kw.get("top_p"))
        got = empirical(SAMPLERS[path], logits[None], 20000, **kw)
        assert set(got.nonzero().flatten().tolist()) <= set(ref.nonzero().flatten().tolist()), kw
        assert (got - ref).abs().max() < 0.02, (kw, (got - ref).abs().max())


def test_both_samplers_are_greedy_at_temperature_zero():
    logits = torch.randn(3, 700).bfloat16()
    want = logits.float().argmax(dim=-1)
    for sample in SAMPLERS.values():
        assert torch.equal(sample(logits, temperature=0), want)


def test_nucleus_candidates_short_list_or_full_sort():
    peaked = torch.softmax(torch.randn(2, 5000) * 8, dim=-1)
    probs, ids = nucleus_candidates(peaked, 0.9, first_try=256)
    assert probs.shape == (2, 256)  # the 256 best hold 90% of a peaked distribution
    flat = torch.full((2, 5000), 1 / 5000)
    probs, ids = nucleus_candidates(flat, 0.9, first_try=256)
    assert probs.shape == (2, 5000)  # they do not here: fall back to sorting everything
    assert torch.equal(probs.gather(-1, torch.argsort(ids, dim=-1)), flat)


@pytest.fixture(scope="module")
def model(tiny_hf_dir):
    return load_model(tiny_hf_dir).eval()


@pytest.fixture
def cache_dtypes(monkeypatch):
    """The dtype of every KV cache `generate` makes while the test runs."""
    made = []

    class Recording(generation.KVCache):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self.k[0].dtype)

    monkeypatch.setattr(generation, "KVCache", Recording)
    return made


def test_the_fast_copy_samples_with_the_fast_sampler_and_leaves_the_model_alone(model):
    fast = for_inference(model, torch.device("cpu"))
    assert fast is not model and fast.sample_next is decoding.sample_next and fast.kv_cache_dtype == torch.float32
    assert not hasattr(model, "sample_next") and not hasattr(model, "kv_cache_dtype")
    assert generate(fast, PROMPTS, 8, eos_id=None) == generate(model, PROMPTS, 8, eos_id=None)  # greedy: same tokens


@pytest.mark.parametrize("trained", [False, True], ids=["plain", "switched-for-training"])
def test_a_bf16_model_on_cpu_attends_over_an_fp32_cache(model, cache_dtypes, trained):
    """On the fast path the cache of a bf16 model on CPU is fp32 (torch's CPU attention is slow in bf16), and the
    incremental logits still match the bf16 model's full forward pass within bf16 rounding. Also for a model that
    training switched to the fast pieces (its CPU-dropout attention), as a sonnet run generates with."""
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    if trained:
        for_training(bf16, torch.device("cpu"))
    fast = for_inference(bf16, torch.device("cpu"))
    assert all(type(b.attn) is decoding.Fp32CacheAttention for b in fast.h)
    assert all(type(b.attn) is not decoding.Fp32CacheAttention for b in bf16.h)  # the model itself unchanged
    new = generate(fast, PROMPTS[:1], 6, eos_id=None)[0]
    assert cache_dtypes == [torch.float32]
    # The same tokens scored by one full forward pass (bf16 attention, no cache): the greedy choices agree with it
    # wherever its winner leads by more than the bf16 rounding of the logits.
    ids = torch.tensor([PROMPTS[0] + new[:-1]])
    with torch.no_grad():
        logits = bf16.logits(ids)[0, len(PROMPTS[0]) - 1:].float()
    top2 = logits.topk(2, dim=-1)
    clear = (top2.values[:, 0] - top2.values[:, 1]) > 0.05 * logits.std()
    assert clear.any()
    assert torch.equal(top2.indices[clear, 0], torch.tensor(new)[clear])


def test_the_kv_cache_dtype_rule():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert decoding.kv_cache_dtype(torch.bfloat16, cpu) == decoding.kv_cache_dtype(torch.float16, cpu) == torch.float32
    assert decoding.kv_cache_dtype(torch.bfloat16, cuda) == torch.bfloat16
    assert decoding.kv_cache_dtype(torch.float64, cpu) == torch.float64
