"""`minigpt2.fast.step`: the one-token decoding step computes what `GPT2.forward` computes on the KV cache, for
every inference copy `for_inference` makes (fp32 prepacked, fp16 weights, bf16, int8), at batch 1 and on a
left-padded batch, and writes each new key and value at the cache's position, no other."""

import copy

import pytest
import torch
import torch.nn.functional as F

from minigpt2 import GPT2, GPT2Config
from minigpt2.device import torch_threads
from minigpt2.fast import for_inference
from minigpt2.fast.prepack import PackedLinear, SlabLinear, available, fp16_available, prepacked
from minigpt2.fast.step import OneTokenStep, one_token_forward, supports, with_one_token_step
from minigpt2.generation import generate
from minigpt2.lora import LoRAConfig, apply_lora
from minigpt2.model import KVCache
from quant import ptq
from quant.int8_linear import int8_decoder_config, to_int8_decoder
from tests.conftest import bf16_prepacked

CPU = torch.device("cpu")
PROMPTS = [[464, 3290, 318, 257, 1110], [40, 588], [15496, 11, 995]]  # different lengths: left padding


def spread_model(seed: int = 0) -> GPT2:
    """A tiny model with large weights, so that its logits spread and greedy decoding varies its tokens."""
    torch.manual_seed(seed)
    model = GPT2(GPT2Config.from_name("tiny", dropout=0.0)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(std=0.3)
    return model


def plain_forward(model: GPT2) -> GPT2:
    """The same copy with `GPT2.forward`'s path: its class without the `OneTokenStep` mixin."""
    other = copy.copy(model)
    assert isinstance(model, OneTokenStep)
    other.__class__ = type(model).__mro__[2]  # (OneTokenStepX, OneTokenStep, X, ...)
    return other


def step_by_step(model: GPT2, ids: torch.Tensor, steps: int, extra: int = 7
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Greedy decoding of (B, T) `ids` by hand, as `generate` runs it: the last hidden state of the prompt's
    forward and of each one-token step, and the tokens. The cache has `extra` positions more than needed."""
    B, T = ids.shape
    cache = KVCache(model.config, B, T + steps + extra, dtype=getattr(model, "kv_cache_dtype", torch.float32))
    hidden, out, tokens = model(ids, cache=cache), [], []
    for _ in range(steps):
        out.append(hidden[:, -1].float())
        token = model.lm_head(hidden[:, -1]).float().argmax(-1)
        tokens.append(token)
        hidden = model(token[:, None], cache=cache)
    return out, tokens


@pytest.fixture(params=[1, 2], ids=["1 thread", "2 threads"])
def fp32_threads(request):
    """Runs a test with the fp32 copy made (and run) at 1 thread and at 2 (`SlabLinear`s, two slabs either way,
    one per thread at 2); the thread count is restored after."""
    with torch_threads(request.param):
        yield request.param


def test_the_fast_copy_takes_the_one_token_step_and_agrees_with_the_plain_forward(fp32_threads):
    model = spread_model()
    fast = for_inference(model, CPU)
    if available():
        assert type(fast.h[0].mlp.c_fc) is SlabLinear and fast.h[0].mlp.c_fc.slabs == 2
    assert isinstance(fast, OneTokenStep) and not isinstance(model, OneTokenStep)
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        got, got_tokens = step_by_step(fast, ids, 10)
        want, want_tokens = step_by_step(plain_forward(fast), ids, 10)
    assert torch.equal(torch.stack(got_tokens), torch.stack(want_tokens))
    for g, w in zip(got, want):  # the fused GELU rounds fp32 sums differently
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    assert generate(fast, PROMPTS, 12, eos_id=None) == generate(model, PROMPTS, 12, eos_id=None)


def test_each_step_matches_a_full_forward_over_the_whole_sequence(fp32_threads):
    """The step writes the new key and value at `cache.length` and attends to positions 0..length: compared with
    the forward of the whole sequence without a cache. The cache is filled with NaN first, so a step that read a
    slot it had not written (position one too far) gives NaN; one that wrote a slot too early overwrites the
    previous token's key and value, and the following steps no longer match."""
    model = spread_model(1)
    fast = for_inference(model, CPU)
    seq = [464, 3290, 318, 257, 1110, 286, 9552, 13]
    prompt = 3
    cache = KVCache(model.config, 1, len(seq) + 5)
    for buf in cache.k + cache.v:
        buf.fill_(float("nan"))
    with torch.no_grad():
        full = model(torch.tensor([seq]))  # (1, len, C), no cache
        fast(torch.tensor([seq[:prompt]]), cache=cache)
        for i in range(prompt, len(seq)):
            assert cache.length == i
            hidden = fast(torch.tensor([[seq[i]]]), cache=cache)
            assert cache.length == i + 1
            torch.testing.assert_close(hidden[0, 0], full[0, i], rtol=1e-5, atol=1e-5)
    assert not any(buf[:, :, :len(seq)].isnan().any() for buf in cache.k + cache.v)
    assert all(buf[:, :, len(seq):].isnan().all() for buf in cache.k + cache.v)  # nothing written past the end


def test_left_padded_batch_follows_the_plain_path_row_by_row(fp32_threads):
    model = spread_model(2)
    fast = for_inference(model, CPU)
    batch = generate(fast, PROMPTS, 10, eos_id=None)
    assert batch == generate(model, PROMPTS, 10, eos_id=None)
    assert batch == [generate(model, [p], 10, eos_id=None)[0] for p in PROMPTS]
    sampled = dict(temperature=0.9, top_k=20, seed=3)  # the same random draws on both forwards
    assert generate(fast, PROMPTS, 10, eos_id=None, **sampled) == generate(plain_forward(fast), PROMPTS, 10,
                                                                           eos_id=None, **sampled)


def test_int8_decoder_takes_the_step_with_the_same_tokens():
    model = spread_model(3)
    int8 = to_int8_decoder(ptq(model, int8_decoder_config()))
    fast = for_inference(int8, CPU)
    assert isinstance(fast, OneTokenStep) and not isinstance(int8, OneTokenStep)
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        got, got_tokens = step_by_step(fast, ids, 8)
        want, want_tokens = step_by_step(int8, ids, 8)
    assert torch.equal(torch.stack(got_tokens), torch.stack(want_tokens))
    for g, w in zip(got, want):  # the same ops on the same numbers
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)
    assert generate(fast, PROMPTS, 8, eos_id=None) == generate(int8, PROMPTS, 8, eos_id=None)


def test_fast_copies_read_one_position_per_row_as_the_plain_forward():
    """`at` through the inference copies (fp32, and the int8 decoder's fused q/k/v), with and without a cache:
    one token on a cache with `at` goes the full forward's way, not the one-token step's (which has no `at`)."""
    model = spread_model(4)
    ids = torch.tensor([PROMPTS[0], PROMPTS[0][::-1]])
    at = torch.tensor([4, 2])
    for plain in (model, to_int8_decoder(ptq(model, int8_decoder_config()))):
        fast = for_inference(plain, CPU)
        with torch.no_grad():
            torch.testing.assert_close(fast(ids, at=at), plain(ids)[torch.arange(2), at], rtol=1e-5, atol=1e-5)
            caches = [KVCache(model.config, 2, 8) for _ in range(2)]
            for m, cache in zip((fast, plain), caches):
                m(ids, cache=cache)
            got = fast(ids[:, :1], cache=caches[0], at=torch.tensor([0, 0]))
            assert got.shape == (2, model.config.n_embd) and caches[0].length == 6
            torch.testing.assert_close(got, plain(ids[:, :1], cache=caches[1])[:, 0], rtol=1e-5, atol=1e-5)


@bf16_prepacked
def test_bf16_copy_takes_the_step_within_bf16_rounding():
    model = spread_model(4)
    fast = for_inference(model, CPU, torch.bfloat16)
    assert fast.packed_head.packed.dtype == torch.bfloat16 and isinstance(fast, OneTokenStep)
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        got, got_tokens = step_by_step(fast, ids, 6)
        want, want_tokens = step_by_step(plain_forward(fast), ids, 6)
    assert torch.equal(torch.stack(got_tokens), torch.stack(want_tokens))
    for g, w in zip(got, want):  # both bf16; the fused GELU rounds once less
        assert (g - w).abs().max() <= 0.05 * w.std()


def test_lora_layers_are_called_as_they_are_and_training_keeps_the_plain_forward(monkeypatch):
    from minigpt2.fast import step

    model = spread_model(5)
    apply_lora(model, LoRAConfig(rank=2, targets=("query", "value")))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora" in name:
                p.normal_(std=0.5)  # adapters that change the outputs (B starts at zero)
    fast = for_inference(model, CPU)
    assert isinstance(fast, OneTokenStep)
    assert generate(fast, PROMPTS, 6, eos_id=None) == generate(model, PROMPTS, 6, eos_id=None)
    calls = []
    monkeypatch.setattr(step, "one_token_forward", lambda *a: calls.append(a) or one_token_forward(*a))
    cache = KVCache(model.config, 1, 4)
    with torch.no_grad():
        fast.train()
        fast(torch.tensor([[5]]), cache=cache)
        assert calls == []  # training: dropout and all, `GPT2.forward`
        fast.eval()
        fast(torch.tensor([[6]]), cache=cache)
    assert len(calls) == 1 and cache.length == 2
    assert not supports(torch.nn.Linear(2, 2))


def test_a_model_of_another_layout_is_left_as_it_is():
    model = spread_model(6)
    model.h[0].mlp = torch.nn.Sequential(model.h[0].mlp)  # not the plain MLP the step walks
    assert not supports(model)
    assert with_one_token_step(model) is model and not isinstance(model, OneTokenStep)


def test_the_step_refuses_a_full_cache():
    fast = for_inference(spread_model(), CPU)
    cache = KVCache(fast.config, 1, 3)
    with torch.no_grad():
        fast(torch.tensor([[1, 2, 3]]), cache=cache)
        with pytest.raises(ValueError, match="KV cache full"):
            one_token_forward(fast, torch.tensor([[4]]), None, None, cache)


@pytest.mark.skipif(not available(), reason="this PyTorch build has no oneDNN")
def test_packed_linear_gelu_post_op_is_tanh_gelu():
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 64)
    packed = PackedLinear(linear)
    x = torch.randn(2, 1, 32)
    with torch.no_grad():
        torch.testing.assert_close(packed.forward_gelu(x), F.gelu(linear(x), approximate="tanh"), rtol=1e-5,
                                   atol=1e-6)
        assert not torch.allclose(packed.forward_gelu(x), F.gelu(linear(x)), rtol=1e-5, atol=1e-6)  # tanh, not erf


# ------------------------------------------------------------------------------------------------- fp16 weights

needs_fp16 = pytest.mark.skipif(not fp16_available(), reason="no fbgemm fp16 linear on this CPU/build")


@needs_fp16
def test_fp16_copy_rounds_only_the_weights():
    """Every product of the fp16 copy is the fp32 product with fp16-rounded weights (fp32 input, accumulation
    and bias), and everything else stays fp32."""
    from minigpt2.fast.prepack import Fp16Linear, FusedQKVAttention

    model = spread_model(7)
    fast = for_inference(model, CPU, torch.float16)
    assert type(fast.h[0].attn) is FusedQKVAttention  # q, k, v as one product of width 3C, as in fp32
    assert type(fast.h[0].attn.qkv) is Fp16Linear and type(fast.packed_head) is Fp16Linear
    assert fast.wte.weight.dtype == fast.ln_f.weight.dtype == torch.float32 and fast.kv_cache_dtype == torch.float32
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in rounded.named_parameters():
            if p.dim() == 2 and "wpe" not in name:  # the matrices and the tied head (wte); lookups use it too
                p.copy_(p.half().float())
        ids = torch.randint(0, 50257, (2, 7))
        hidden = plain_forward(fast)(ids)
        torch.testing.assert_close(fast.lm_head(hidden), rounded.lm_head(hidden), rtol=1e-5, atol=1e-4)
        # the embedding lookup reads the fp32 table, which the rounded model rounded too: compare blocks only
        x = torch.randn(2, 5, model.config.n_embd)
        torch.testing.assert_close(fast.h[1].mlp(x), rounded.h[1].mlp(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(fast.h[1].mlp(x), model.h[1].mlp(x), rtol=1e-5, atol=1e-6)  # really fp16
        for got, want in zip(fast.h[1].attn.project_qkv(x), (rounded.h[1].attn.query(x), rounded.h[1].attn.key(x),
                                                             rounded.h[1].attn.value(x))):  # in that order
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast.h[1].attn(x, None, True), rounded.h[1].attn(x, None, True),
                                   rtol=1e-5, atol=1e-5)


@needs_fp16
def test_fp16_greedy_tokens_and_logits_follow_fp32():
    model = spread_model(8)
    fast = for_inference(model, CPU, torch.float16)
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        got, got_tokens = step_by_step(fast, ids, 8)
        want, want_tokens = step_by_step(for_inference(model, CPU), ids, 8)
        logits_err = max((fast.lm_head(g) - model.lm_head(w)).abs().max().item() for g, w in zip(got, want))
        spread = model.lm_head(want[0]).std().item()
    assert logits_err <= 0.01 * spread  # fp16 weights: 11 bits of mantissa
    assert torch.equal(torch.stack(got_tokens), torch.stack(want_tokens))
    assert generate(fast, PROMPTS, 8, eos_id=None) == generate(model, PROMPTS, 8, eos_id=None)


def test_fp16_falls_back_to_fp32_where_fbgemm_fp16_is_missing(monkeypatch):
    from minigpt2.fast import prepack

    monkeypatch.setattr(prepack, "fp16_available", lambda: False)
    model = spread_model()
    fast = for_inference(model, CPU, torch.float16)
    assert not any(type(m).__name__ == "Fp16Linear" for m in fast.modules())
    if available():
        assert type(fast.packed_head) is SlabLinear
        with pytest.raises(RuntimeError, match="fp16 weights need fbgemm"):
            prepacked(model, torch.float16)


def test_a_model_after_training_decodes_as_the_same_weights_loaded_fresh():
    """A run predicts with the model it trained (its MLPs now recompute the GELU in the backward); `evaluate`
    loads the same weights into plain modules. Both must take the same step, or a run's own predictions and
    their re-scoring differ (sampled tokens flip on the fused GELU's last bits)."""
    from minigpt2.fast import for_training

    fresh = spread_model(3).eval()
    trained = copy.deepcopy(fresh)
    for_training(trained, torch.device("cpu"))
    assert type(trained.h[0].mlp) is not type(fresh.h[0].mlp) and supports(trained)
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12]]
    a = generate(for_inference(fresh, torch.device("cpu")), prompts, 12, temperature=1.2, top_p=0.9, seed=3)
    b = generate(for_inference(trained.eval(), torch.device("cpu")), prompts, 12, temperature=1.2, top_p=0.9, seed=3)
    assert a == b
