"""`minigpt2.fast.step` held to `transformers`' GPT2LMHeadModel on a model away from init (biases, LayerNorm gains
and shifts drawn, a LayerNorm epsilon of 0.2, four heads): each one-token step's hidden states on a KV cache whose
unused slots hold NaN (a step reading or writing one slot off shows up), at batch 1 and on a left-padded batch with
its position ids, on the plain model and on the prepacked inference copy; which calls take the step; each refusal
by its line; which layouts `supports` accepts; the class `with_one_token_step` makes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from minigpt2 import GPT2, GPT2Config
from minigpt2.fast import for_inference, step
from minigpt2.fast.recompute import RecomputeGELUMLP
from minigpt2.fast.step import OneTokenStep, one_token_forward, supports, with_one_token_step
from minigpt2.model import MLP, Block, CausalSelfAttention, KVCache
from tests.minigpt2.test_mutants_model import L, P, close, ids_of, pair


def nan_cache(model: GPT2, batch: int, max_len: int) -> KVCache:
    cache = KVCache(model.config, batch, max_len)
    for t in cache.k + cache.v:
        t.fill_(float("nan"))
    return cache


@pytest.fixture(params=["plain", "inference copy"])
def stepper(request):
    """(the model taking the step, HF's on the same weights): the plain model made a `OneTokenStep`, or the
    prepacked copy `for_inference` makes (its MLP's GELU fused into the product)."""
    ours, hf = pair(seed=11)
    fast = with_one_token_step(copy.deepcopy(ours)) if request.param == "plain" else for_inference(ours, "cpu")
    assert isinstance(fast, OneTokenStep)
    return fast, hf


def test_each_step_on_a_nan_filled_cache_gives_transformers_hidden_states(stepper):
    fast, hf = stepper
    ids = ids_of(1, 9, seed=12)
    cache = nan_cache(fast, 1, 12)
    with torch.no_grad():
        got = [fast(ids[:, :3], cache=cache)] + [fast(ids[:, t:t + 1], cache=cache) for t in range(3, 9)]
        out = hf(ids, use_cache=True, output_hidden_states=True)
    assert cache.length == 9
    close(torch.cat(got, 1), out.hidden_states[-1])
    for i in range(L):
        close(cache.k[i][:, :, :9], out.past_key_values.layers[i].keys)
        close(cache.v[i][:, :, :9], out.past_key_values.layers[i].values)
        assert cache.k[i][:, :, 9:].isnan().all() and cache.v[i][:, :, 9:].isnan().all()


def test_a_left_padded_batch_steps_with_its_mask_and_position_ids_as_transformers(stepper):
    fast, hf = stepper
    ids = ids_of(3, 8, seed=13)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8, [0, 1, 1, 1, 1, 1, 1, 1]])
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    cache = nan_cache(fast, 3, 8)
    with torch.no_grad():
        got = [fast(ids[:, :4], mask[:, :4], pos[:, :4], cache)]
        got += [fast(ids[:, t:t + 1], mask[:, :t + 1], pos[:, t:t + 1], cache) for t in range(4, 8)]
        want = hf(ids, attention_mask=mask, position_ids=pos, output_hidden_states=True).hidden_states[-1]
        real = mask.bool()
        close(torch.cat(got, 1)[real], want[real])
        # every row real: an all-ones mask, or none, and the default positions after the cache
        cache = nan_cache(fast, 3, 8)
        got = [fast(ids[:, :5], cache=cache)]
        got += [fast(ids[:, 5:6], torch.ones(3, 6, dtype=torch.long), None, cache)]
        got += [fast(ids[:, t:t + 1], cache=cache) for t in range(6, 8)]
        close(torch.cat(got, 1), hf(ids, output_hidden_states=True).hidden_states[-1])


def test_one_token_on_a_cache_in_eval_takes_the_step_and_nothing_else_does(monkeypatch):
    ours, _ = pair(seed=14)
    fast = with_one_token_step(copy.deepcopy(ours))
    calls = []
    monkeypatch.setattr(step, "one_token_forward", lambda *a: calls.append(a[1].shape) or one_token_forward(*a))
    cache = KVCache(fast.config, 2, 8)
    with torch.no_grad():
        fast(ids_of(2, 2), cache=cache)  # two tokens: `GPT2.forward`
        fast(ids_of(2, 1))  # no cache
        assert calls == []
        fast(ids_of(2, 1), cache=cache)
        assert calls == [(2, 1)]
        fast.train()
        fast(ids_of(2, 1), cache=cache)
    assert calls == [(2, 1)] and cache.length == 4
    with torch.no_grad():  # the two-token forward on the cache after a step is the plain one's
        fast.eval()
        other = copy.deepcopy(cache)
        close(fast(ids_of(2, 2, seed=3), cache=cache), ours(ids_of(2, 2, seed=3), cache=other))


def test_the_last_position_of_the_context_is_decoded_and_the_next_refused_by_its_line():
    ours, hf = pair(seed=15)
    fast = with_one_token_step(ours)
    ids = ids_of(1, P, seed=16)
    cache = nan_cache(fast, 1, P)
    with torch.no_grad():
        fast(ids[:, :P - 1], cache=cache)
        last = one_token_forward(fast, ids[:, P - 1:], None, None, cache)
        close(last[0, 0], hf(ids, output_hidden_states=True).hidden_states[-1][0, -1])
        with pytest.raises(ValueError, match=rf"^sequence of {P + 1} tokens exceeds n_positions={P}$"):
            one_token_forward(fast, ids[:, :1], None, None, cache)
        short = nan_cache(fast, 1, 5)
        fast(ids[:, :4], cache=short)
        one_token_forward(fast, ids[:, 4:5], None, None, short)  # the cache's last slot
        assert short.length == 5
        with pytest.raises(ValueError, match=r"^KV cache full: 6 positions requested, 5 allocated$"):
            one_token_forward(fast, ids[:, 5:6], None, None, short)
    assert short.length == 5


def test_supports_accepts_the_plain_layout_and_refuses_each_other_part():
    def tiny() -> GPT2:
        return GPT2(GPT2Config(vocab_size=11, n_positions=8, n_embd=8, n_layer=2, n_head=2))

    class Attention(CausalSelfAttention):
        pass

    class Other(nn.Module):
        pass

    model = tiny()
    assert supports(model)
    model.h[1].attn.__class__ = Attention  # any attention subclass
    model.h[0].mlp = RecomputeGELUMLP(model.h[0].mlp)
    assert supports(model)

    class Embedding(nn.Embedding):
        pass

    class LayerNorm(nn.LayerNorm):
        pass

    class MLPSub(MLP):
        pass

    class BlockSub(Block):
        pass

    changes = {
        "wte": lambda m: setattr(m.wte, "__class__", Embedding),
        "wpe": lambda m: setattr(m.wpe, "__class__", Embedding),
        "ln_f": lambda m: setattr(m.ln_f, "__class__", LayerNorm),
        "block": lambda m: setattr(m.h[1], "__class__", BlockSub),
        "attn": lambda m: setattr(m.h[1], "attn", Other()),
        "mlp": lambda m: setattr(m.h[1].mlp, "__class__", MLPSub),
        "ln_1": lambda m: setattr(m.h[1].ln_1, "__class__", LayerNorm),
        "ln_2": lambda m: setattr(m.h[1].ln_2, "__class__", LayerNorm),
    }
    for part, change in changes.items():
        model = tiny()
        change(model)
        assert not supports(model), part
        assert with_one_token_step(model) is model and not isinstance(model, OneTokenStep), part
    assert not supports(nn.Linear(2, 2))


def test_with_one_token_step_changes_the_class_in_place_once_per_class():
    class Sub(GPT2):
        pass

    config = GPT2Config(vocab_size=11, n_positions=8, n_embd=8, n_layer=1, n_head=2)
    a, b, s = GPT2(config), GPT2(config), Sub(config)
    assert with_one_token_step(a) is a and with_one_token_step(b) is b and with_one_token_step(s) is s
    cls = type(a)
    assert type(b) is cls and cls.__mro__[1:3] == (OneTokenStep, GPT2)
    assert cls.__name__ == "OneTokenStepGPT2" and cls.__module__ == "minigpt2.fast.step"
    assert cls.__doc__ == "A `GPT2` with `OneTokenStep`."
    assert type(s).__name__ == "OneTokenStepSub" and type(s).__mro__[1:3] == (OneTokenStep, Sub)
    assert type(s).__doc__ == "A `Sub` with `OneTokenStep`." and type(s).__module__ == "minigpt2.fast.step"
    assert with_one_token_step(a) is a and type(a) is cls  # already stepping: unchanged
    assert isinstance(a, GPT2) and list(a.state_dict()) == list(GPT2(config).state_dict())
    with torch.no_grad():
        cache = KVCache(config, 1, 2)
        assert a(torch.tensor([[3]]), cache=cache).shape == (1, 1, 8) and cache.length == 1


def test_the_prepacked_copys_mlp_takes_the_product_with_its_gelu_fused(monkeypatch):
    from minigpt2.fast import prepack

    ours, _ = pair(seed=17)
    fast = for_inference(ours, "cpu")
    kind = type(fast.h[0].mlp.c_fc)
    if kind not in (prepack.PackedLinear, prepack.SlabLinear):
        pytest.skip("no oneDNN: the copy keeps plain layers")
    calls = []
    fused = kind.forward_gelu
    monkeypatch.setattr(kind, "forward_gelu", lambda self, x: calls.append(x.shape) or fused(self, x))
    cache = KVCache(fast.config, 1, 4)
    with torch.no_grad():
        fast(ids_of(1, 2), cache=cache)
        calls.clear()
        fast(ids_of(1, 1), cache=cache)
    assert calls == [(1, 1, 32)] * L
