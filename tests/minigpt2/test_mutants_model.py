"""`minigpt2.model` held to outside referees on inputs where one-line slips give other numbers: `transformers`'
GPT2LMHeadModel at random init (every weight, bias and LayerNorm parameter drawn away from its init, a LayerNorm
epsilon far from 1e-5, four heads) for hidden states, logits, cached keys and values, with and without padding on
either side and with explicit position ids; a by-hand forward of a one-layer model on two tokens; a KV cache whose
unused slots hold NaN; the init's spreads; each error line by its text."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from minigpt2 import GPT2, GPT2Config, KVCache
from minigpt2.checkpoint import hf_to_minigpt2
from minigpt2.model import attention_mask_for, gather_last, gelu, is_right_padded, last_token_index

V, P, C, L, H, EPS = 97, 16, 32, 2, 4, 0.2  # vocab, positions, width, layers, heads (hs = 8), LayerNorm epsilon


def pair(seed: int = 0, eps: float = EPS, n_layer: int = L):
    """(ours, HF's) on the same weights: matrices N(0, 0.3), biases N(0, 0.5), LayerNorm gains 1 + N(0, 0.5)."""
    from transformers import GPT2Config as HFConfig
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(HFConfig(vocab_size=V, n_positions=P, n_embd=C, n_layer=n_layer, n_head=H,
                                  layer_norm_epsilon=eps, bos_token_id=0, eos_token_id=0,
                                  attn_implementation="eager")).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() > 1:
                p.normal_(std=0.3)
            elif "ln" in name and name.endswith("weight"):
                p.copy_(1 + 0.5 * torch.randn_like(p))
            else:
                p.normal_(std=0.5)
    config = GPT2Config(vocab_size=V, n_positions=P, n_embd=C, n_layer=n_layer, n_head=H, layer_norm_epsilon=eps,
                        dropout=0.0)
    ours = GPT2(config)
    ours.load_state_dict(hf_to_minigpt2(hf.state_dict(), config))
    return ours.eval(), hf


def ids_of(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def close(ours: torch.Tensor, theirs: torch.Tensor, atol: float = 1e-4) -> None:
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=atol)


def test_hidden_states_and_logits_are_transformers_on_a_model_away_from_init():
    ours, hf = pair()
    ids = ids_of(3, 7)
    with torch.no_grad():
        out = hf(ids, output_hidden_states=True)
        hidden = ours(ids)
        close(hidden, out.hidden_states[-1])  # after ln_f
        close(ours.lm_head(hidden), out.logits)
        close(ours.logits(ids), out.logits)
        cols = torch.tensor([5, 96, 0, 5])
        close(ours.lm_head(hidden, cols), out.logits[..., cols])
        close(ours.lm_head(hidden[:, 2], cols), out.logits[:, 2, cols])  # (B, C) rows too
    assert ours.lm_head(hidden, cols).shape == (3, 7, 4)


def test_the_layernorm_epsilon_is_the_configs_in_every_layernorm():
    ours, hf = pair(eps=0.7)
    assert [m.eps for m in ours.modules() if isinstance(m, torch.nn.LayerNorm)] == [0.7] * (2 * L + 1)
    with torch.no_grad():
        close(ours(ids_of(2, 5)), hf(ids_of(2, 5), output_hidden_states=True).hidden_states[-1])


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batches_give_transformers_numbers_at_every_real_position(side):
    ours, hf = pair(seed=2)
    ids = ids_of(3, 6, seed=3)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    if side == "left":
        mask = mask.flip(1)
    real = mask.bool()
    with torch.no_grad():
        want = hf(ids, attention_mask=mask).logits
        close(ours.logits(ids, mask)[real], want[real])
        close(ours.lm_head(ours(ids, mask))[real], want[real])
        if side == "left":  # positions counted from each row's first real token, as `generate` passes them
            pos = (mask.cumsum(1) - 1).clamp(min=0)
            close(ours.lm_head(ours(ids, mask, position_ids=pos))[real],
                  hf(ids, attention_mask=mask, position_ids=pos).logits[real])


def test_a_left_padded_row_equals_the_row_alone_and_its_padding_stays_finite_with_finite_gradients():
    ours, _ = pair(seed=4)
    ids = ids_of(2, 5, seed=5)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    hidden = ours(ids, mask, position_ids=pos)
    assert torch.isfinite(hidden).all()  # a padding query sees itself, not nothing
    with torch.no_grad():
        close(hidden[0, 2:], ours(ids[:1, 2:])[0])
    hidden[mask.bool()].sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters())


def test_two_tokens_by_hand_through_one_layer():
    """One layer, two heads of 2 dims, two tokens: every op written out (LayerNorm by its mean and variance, heads
    as column slices, softmax over the allowed keys, tanh GELU by its formula)."""
    torch.manual_seed(7)
    model = GPT2(GPT2Config(vocab_size=5, n_positions=4, n_embd=4, n_layer=1, n_head=2, layer_norm_epsilon=0.3,
                            dropout=0.0)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.8 + (1.0 if p.dim() == 1 and p.shape[0] == 4 else 0.0))
    ids = torch.tensor([[3, 1]])

    def ln(x, m):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + 0.3) * m.weight + m.bias

    def lin(x, m):
        return x @ m.weight.T + m.bias

    b = model.h[0]
    with torch.no_grad():
        x = model.wte.weight[ids[0]] + model.wpe.weight[:2]  # (2, 4)
        h = ln(x, b.ln_1)
        q, k, v = lin(h, b.attn.query), lin(h, b.attn.key), lin(h, b.attn.value)
        y = torch.zeros(2, 4)
        for head in range(2):
            s = slice(2 * head, 2 * head + 2)
            for t in range(2):
                scores = torch.stack([q[t, s] @ k[u, s] / math.sqrt(2) for u in range(t + 1)])
                y[t, s] = (torch.softmax(scores, 0)[:, None] * v[: t + 1, s]).sum(0)
        x = x + lin(y, b.attn.c_proj)
        f = lin(ln(x, b.ln_2), b.mlp.c_fc)
        f = 0.5 * f * (1 + torch.tanh(math.sqrt(2 / math.pi) * (f + 0.044715 * f ** 3)))
        x = x + lin(f, b.mlp.c_proj)
        want = ln(x, model.ln_f)
        close(model(ids)[0], want, atol=1e-5)
        close(model.logits(ids)[0], want @ model.wte.weight.T, atol=1e-5)


def test_gelu_is_the_tanh_approximation():
    x = torch.tensor([-3.0, -1.5, -0.5, 0.0, 0.7, 1.5, 4.0], dtype=torch.float64)
    want = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    torch.testing.assert_close(gelu(x), want, rtol=1e-12, atol=1e-12)
    assert (gelu(x) - F.gelu(x)).abs().max() > 1e-4  # not the exact erf GELU


def test_the_kv_cache_keys_and_values_are_transformers_and_unused_slots_are_never_read_or_written():
    ours, hf = pair(seed=6)
    ids = ids_of(2, 9, seed=7)
    cache = KVCache(ours.config, 2, 12)
    for t in cache.k + cache.v:
        t.fill_(float("nan"))
    with torch.no_grad():
        parts = [ours(ids[:, :4], cache=cache), ours(ids[:, 4:5], cache=cache), ours(ids[:, 5:6], cache=cache),
                 ours(ids[:, 6:9], torch.ones(2, 9), cache=cache)]  # a prefill, two tokens, three (no padding)
        out = hf(ids, use_cache=True, output_hidden_states=True)
    assert cache.length == 9
    close(torch.cat(parts, 1), out.hidden_states[-1])
    for i in range(L):
        close(cache.k[i][:, :, :9], out.past_key_values.layers[i].keys)
        close(cache.v[i][:, :, :9], out.past_key_values.layers[i].values)
        assert cache.k[i][:, :, 9:].isnan().all() and cache.v[i][:, :, 9:].isnan().all()


def test_a_left_padded_batch_decoded_on_the_cache_gives_transformers_numbers():
    ours, hf = pair(seed=8)
    ids = ids_of(2, 7, seed=9)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    cache = KVCache(ours.config, 2, 7)
    for t in cache.k + cache.v:
        t.fill_(float("nan"))
    with torch.no_grad():
        got = [ours(ids[:, :4], mask[:, :4], pos[:, :4], cache)]
        got += [ours(ids[:, t:t + 1], mask[:, :t + 1], pos[:, t:t + 1], cache) for t in range(4, 6)]
        got.append(ours(ids[:, 6:], mask, pos[:, 6:], cache))  # the full mask: S counts the cached positions
        want = hf(ids, attention_mask=mask, position_ids=pos, output_hidden_states=True).hidden_states[-1]
    real = mask.bool()
    close(torch.cat(got, 1)[real], want[real])


def test_a_cache_filled_to_its_end_works_and_one_more_position_is_refused_by_its_line():
    ours, _ = pair()
    cache = KVCache(ours.config, 1, 5, dtype=torch.float64)
    assert len(cache.k) == len(cache.v) == L and cache.max_len == 5 and cache.length == 0
    assert all(t.shape == (1, H, 5, C // H) and t.dtype == torch.float64 for t in cache.k + cache.v)
    k = torch.zeros(1, H, 3, C // H)
    keys, values = cache.update(1, k, k + 1)
    assert keys.shape == (1, H, 3, C // H) and values.eq(1).all()
    cache.length = 3
    keys, _ = cache.update(0, k[:, :, :2] + 2, k[:, :, :2])  # exactly to max_len
    assert keys.shape == (1, H, 5, C // H) and cache.k[0][:, :, 3:].eq(2).all()
    with pytest.raises(ValueError, match=r"^KV cache full: 6 positions requested, 5 allocated$"):
        cache.update(0, k, k)
    KVCache(ours.config, 1, P)  # as long as the model's context
    with pytest.raises(ValueError, match=rf"^KV cache of {P + 1} positions exceeds n_positions={P}$"):
        KVCache(ours.config, 1, P + 1)


def test_a_sequence_as_long_as_the_context_runs_and_one_more_token_is_refused_by_its_line():
    ours, hf = pair()
    with torch.no_grad():
        close(ours(ids_of(1, P)), hf(ids_of(1, P), output_hidden_states=True).hidden_states[-1])
        with pytest.raises(ValueError, match=rf"^sequence of {P + 1} tokens exceeds n_positions={P}$"):
            ours(ids_of(1, P + 1))
        cache = KVCache(ours.config, 1, P)
        ours(ids_of(1, 10), cache=cache)
        with pytest.raises(ValueError, match=rf"^sequence of {P + 1} tokens exceeds n_positions={P}$"):
            ours(ids_of(1, 7), cache=cache)


def test_attention_mask_for_each_case():
    assert attention_mask_for(None, 5, 0, torch.device("cpu")) == (None, True)  # SDPA's causal path
    assert attention_mask_for(None, 1, 0, torch.device("cpu")) == (None, False)
    assert attention_mask_for(None, 1, 4, torch.device("cpu")) == (None, False)  # one query sees every key
    mask, causal = attention_mask_for(None, 2, 3, torch.device("cpu"))
    assert causal is False and mask.tolist() == [[[[True, True, True, True, False], [True] * 5]]]
    pad = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    mask, causal = attention_mask_for(pad, 2, 1, torch.device("cpu"))  # queries at 1 and 2 of 3 keys
    assert causal is False and mask.dtype == torch.bool and mask.shape == (2, 1, 2, 3)
    assert mask[0, 0].tolist() == [[False, True, False], [False, True, True]]
    assert mask[1, 0].tolist() == [[True, True, False], [True, True, True]]
    mask, _ = attention_mask_for(torch.tensor([[0, 0, 1]]), 3, 0, torch.device("cpu"))
    # padding queries see only themselves (not nothing: softmax of all -inf is NaN)
    assert mask[0, 0].tolist() == [[True, False, False], [False, True, False], [False, False, True]]


def test_attention_mask_for_one_query_per_row():
    cpu = torch.device("cpu")
    mask, causal = attention_mask_for(None, 4, 0, cpu, at=torch.tensor([2, 0]))
    assert causal is False and mask.dtype == torch.bool and mask.shape == (2, 1, 1, 4)
    assert mask[:, 0, 0].tolist() == [[True, True, True, False], [True, False, False, False]]
    mask, _ = attention_mask_for(None, 2, 3, cpu, at=torch.tensor([1, 0]))  # after 3 cached positions
    assert mask[:, 0, 0].tolist() == [[True] * 5, [True] * 4 + [False]]
    pad = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]])
    mask, _ = attention_mask_for(pad, 4, 0, cpu, at=torch.tensor([3, 1]))
    assert mask[:, 0, 0].tolist() == [[False, True, True, True], [True, True, False, False]]
    mask, _ = attention_mask_for(pad, 4, 0, cpu, at=torch.tensor([0, 3]))  # padding queries see themselves
    assert mask[:, 0, 0].tolist() == [[True, False, False, False], [True, True, False, True]]


def test_right_padding_and_the_last_real_token():
    assert is_right_padded(torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]]))
    assert is_right_padded(torch.tensor([[1, 1]])) and is_right_padded(torch.tensor([[1, 0]]))
    assert not is_right_padded(torch.tensor([[1, 1, 0], [0, 1, 1]]))
    assert not is_right_padded(torch.tensor([[1, 0, 1]])) and not is_right_padded(torch.tensor([[0, 1]]))
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 0, 3]
    assert last_token_index(mask.bool()).tolist() == [2, 0, 3]
    hidden = torch.arange(3 * 4 * 2.0).reshape(3, 4, 2)
    assert gather_last(hidden, mask).tolist() == [[4.0, 5.0], [8.0, 9.0], [22.0, 23.0]]
    assert gather_last(hidden, None).tolist() == [[6.0, 7.0], [14.0, 15.0], [22.0, 23.0]]


def test_the_init_is_gpt2s_and_the_parameter_count_counts_the_tied_head_once():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=300, n_positions=64, n_embd=64, n_layer=3, n_head=4)
    model = GPT2(config)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert p.eq(0).all(), name
        elif "ln" in name:
            assert p.eq(1).all(), name
        else:
            std = 0.02 / math.sqrt(2 * 3) if name.endswith("c_proj.weight") else 0.02
            assert abs(p.mean().item()) < 5 * std / math.sqrt(p.numel()), name
            assert abs(p.std().item() / std - 1) < 5 / math.sqrt(2 * p.numel()), name
    per_block = 4 * (64 * 64 + 64) + (64 * 256 + 256) + (256 * 64 + 64) + 2 * 2 * 64
    total = 300 * 64 + 64 * 64 + 3 * per_block + 2 * 64
    assert model.num_parameters() == total
    model.wte.weight.requires_grad_(False)
    assert model.num_parameters() == total
    assert model.num_parameters(trainable_only=True) == total - 300 * 64


def test_dropout_is_the_configs_at_each_site_in_training_and_none_in_eval():
    """Training with dropout p: each site alone (the others' p set to 0) changes the output from call to call and
    keeps about 1 - p of the embedding sums; eval is deterministic."""
    ours, _ = pair(seed=3)
    ids = ids_of(2, 6)
    base = GPT2(GPT2Config(vocab_size=V, n_positions=P, n_embd=C, n_layer=L, n_head=H, layer_norm_epsilon=EPS,
                           dropout=0.4))
    base.load_state_dict(ours.state_dict())
    assert base.h[0].attn.dropout == 0.4 and base.drop.p == base.h[1].attn.resid_dropout.p == 0.4
    assert base.h[1].mlp.dropout.p == 0.4
    with torch.no_grad():
        base.eval()
        close(base(ids), ours(ids))
        sites = {"attention": lambda m: [setattr(m.h[i].attn, "dropout", 0.0) for i in range(L)],
                 "residual": lambda m: [setattr(m.h[i].attn.resid_dropout, "p", 0.0) for i in range(L)],
                 "mlp": lambda m: [setattr(m.h[i].mlp.dropout, "p", 0.0) for i in range(L)],
                 "embedding": lambda m: setattr(m.drop, "p", 0.0)}
        for keep in sites:
            model = GPT2(base.config)
            model.load_state_dict(base.state_dict())
            for site, off in sites.items():
                if site != keep:
                    off(model)
            model.train()
            torch.manual_seed(0)
            a, b = model(ids), model(ids)
            assert not torch.allclose(a, b), keep
            model.eval()
            close(model(ids), ours(ids))


def test_the_cache_and_the_masks_are_made_on_the_device_asked_for():
    """On the meta device (no GPU needed): a tensor left on the default device would show up as "cpu"."""
    meta = torch.device("meta")
    config = GPT2Config(vocab_size=11, n_positions=8, n_embd=8, n_layer=2, n_head=2)
    cache = KVCache(config, 2, 5, device=meta)
    assert {t.device.type for t in cache.k + cache.v} == {"meta"}
    mask, _ = attention_mask_for(torch.tensor([[0, 1, 1]]), 3, 0, meta)
    assert mask.device == meta
    mask, _ = attention_mask_for(None, 2, 3, meta)
    assert mask.device == meta
    mask, _ = attention_mask_for(None, 2, 3, meta, at=torch.tensor([1, 0], device=meta))
    assert mask.device == meta
    with torch.device("meta"):
        model = GPT2(config)
    ids = torch.zeros(2, 3, dtype=torch.long, device=meta)
    assert model(ids, cache=cache).device == meta and model(ids[:, :2], cache=cache).device == meta
    assert model(ids, at=torch.tensor([2, 0], device=meta)).device == meta  # the rows indexed on the device


def test_every_block_of_a_deeper_model_writes_its_own_cache_layer():
    """Four blocks: the forward loops over all but the last and calls that one apart; each writes the keys and
    values of its own layer, as transformers' cache holds them."""
    ours, hf = pair(seed=11, n_layer=4)
    ids = ids_of(2, 6, seed=12)
    cache = KVCache(ours.config, 2, 6)
    with torch.no_grad():
        ours(ids[:, :4], cache=cache)
        got = ours(ids[:, 4:], cache=cache)
        past = hf(ids, use_cache=True).past_key_values
        close(got, ours(ids)[:, 4:])
    for i in range(4):
        close(cache.k[i], past.layers[i].keys)
        close(cache.v[i], past.layers[i].values)


def test_a_block_and_its_attention_called_alone_on_a_cache_write_layer_0_by_default():
    ours, hf = pair(seed=5, n_layer=1)
    ids = ids_of(2, 4, seed=6)
    cache = KVCache(ours.config, 2, 4)
    with torch.no_grad():
        x = ours.wte(ids) + ours.wpe(torch.arange(4))[None]
        block = ours.h[0]
        y = x + block.attn(block.ln_1(x), None, True, cache)  # no `layer`: the first
        close(cache.k[0], hf(ids, use_cache=True).past_key_values.layers[0].keys)
        cache.length = 0
        close(ours.ln_f(block(x, None, True, cache)), ours(ids))
        close(y, x + block.attn(block.ln_1(x), None, True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (the meta test above covers the CPU)")
def test_on_a_gpu_the_positions_masks_and_one_token_steps_are_made_on_the_models_device():
    """Positions, masks and row indices made on the default device would fail (or copy) on a GPU; on the CPU and
    the meta device an embedding takes CPU indices, so only this test sees them."""
    from minigpt2.fast.step import with_one_token_step

    ours, _ = pair(seed=9)
    ids = ids_of(2, 6, seed=10)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        want = [ours(ids), ours(ids, mask)]
        cache = KVCache(ours.config, 2, 6)
        want += [ours(ids[:, :5], mask[:, :5], cache=cache), ours(ids[:, 5:], mask, cache=cache)]
        gpu = with_one_token_step(copy.deepcopy(ours).cuda())
        dev = ids.cuda(), mask.cuda()
        got = [gpu(dev[0]), gpu(dev[0], dev[1])]
        cache = KVCache(ours.config, 2, 6, device="cuda")
        got += [gpu(dev[0][:, :5], dev[1][:, :5], cache=cache), gpu(dev[0][:, 5:], dev[1], cache=cache)]
    real = mask.bool()
    close(got[0].cpu(), want[0], atol=1e-3)
    for g, w, m in ((got[1], want[1], real), (got[2], want[2], real[:, :5]), (got[3], want[3], real[:, 5:])):
        close(g.cpu()[m], w[m], atol=1e-3)
    right = mask.flip(1)
    close(gather_last(got[0], right.cuda()).cpu(), gather_last(want[0], right), atol=1e-3)
    at = torch.tensor([5, 2])  # one row each, the last block's rows picked on the model's device
    close(gpu(dev[0], dev[1], at=at.cuda()).cpu(), ours(ids, mask, at=at), atol=1e-3)
