"""The hand-written GPT-2 against `transformers.GPT2LMHeadModel` on the same weights."""

from __future__ import annotations

import pytest
import torch

from minigpt2 import GPT2, GPT2Config, KVCache
from minigpt2.checkpoint import load_model, minigpt2_to_hf
from minigpt2.generation import generate
from minigpt2.losses import lm_loss
from minigpt2.model import gather_last, last_token_index

from tests.conftest import load_hf


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, atol: float, what: str) -> None:
    diff = (ours - theirs).abs().max().item()
    assert diff <= atol, f"{what}: max |diff| = {diff:.3g} > {atol}"


def padded_batch(vocab: int, lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded random token ids and their attention mask."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(0, vocab, (len(lengths), T), generator=g)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return ids, mask


def check_parity(folder, lengths: list[int]) -> None:
    ours, hf = load_model(folder).eval(), load_hf(folder)
    ids, mask = padded_batch(ours.config.vocab_size, lengths)
    with torch.no_grad():
        assert_close(ours.logits(ids), hf(ids).logits, 1e-4, "logits without a mask")
        real = mask.bool()
        assert_close(ours.logits(ids, mask)[real], hf(ids, attention_mask=mask).logits[real], 1e-4,
                     "logits at real tokens with a padding mask")
        left = mask.flip(1)  # the same rows padded on the left: an explicit mask, not SDPA's causal path
        assert_close(ours.logits(ids, left)[left.bool()], hf(ids, attention_mask=left).logits[left.bool()], 1e-4,
                     "logits at real tokens with left padding")


def test_tiny_logits_match_transformers(tiny_hf_dir):
    check_parity(tiny_hf_dir, [17, 9, 3])


@pytest.mark.slow
def test_gpt2_124m_logits_match_transformers(gpt2_hf_dir):
    check_parity(gpt2_hf_dir, [64, 40])


@pytest.mark.slow
def test_gpt2_124m_parameter_count(gpt2_hf_dir):
    with torch.device("meta"):
        model = GPT2(GPT2Config.from_name("gpt2"))
    assert model.num_parameters() == 124_439_808  # the released GPT-2 small, tied head counted once


def test_training_gradients_match_transformers(tiny_hf_dir):
    """One LM loss and backward: the loss and every parameter's gradient equal HF's (in HF's layout)."""
    ours, hf = load_model(tiny_hf_dir).eval(), load_hf(tiny_hf_dir)  # eval: dropout off on both sides
    ids = torch.randint(0, ours.config.vocab_size, (3, 20), generator=torch.Generator().manual_seed(1))
    loss = lm_loss(ours(ids)[:, :-1], ours.wte.weight, ids[:, 1:])
    loss.backward()
    hf_loss = hf(ids, labels=ids).loss
    hf_loss.backward()
    assert_close(loss, hf_loss, 1e-5, "loss")
    ours_grads = minigpt2_to_hf({k: p.grad for k, p in ours.named_parameters()}, ours.config)
    hf_grads = {k: p.grad for k, p in hf.named_parameters()}  # lm_head is tied to transformer.wte
    assert set(ours_grads) == set(hf_grads)
    for key, grad in ours_grads.items():
        torch.testing.assert_close(grad, hf_grads[key], rtol=1e-4, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")


@pytest.mark.parametrize("recompute", [True, False])
def test_gelu_output_is_recomputed_in_backward_not_kept(recompute):
    """With `recompute_gelu_in_backward` the MLP's (N, 4C) GELU output is freed after forward; the gradients are
    identical to the plain MLP's."""
    import weakref

    from minigpt2.fast.recompute import RecomputeGELUMLP, recompute_gelu_in_backward

    torch.manual_seed(0)
    model = GPT2(GPT2Config.from_name("tiny", dropout=0.0))
    reference = GPT2(GPT2Config.from_name("tiny", dropout=0.0))
    reference.load_state_dict(model.state_dict())
    if recompute:
        assert recompute_gelu_in_backward(model) == model.config.n_layer
        assert isinstance(model.h[0].mlp, RecomputeGELUMLP) and recompute_gelu_in_backward(model) == 0
        assert list(model.state_dict()) == list(reference.state_dict())
    gelu_outputs = []
    model.h[0].mlp.c_proj.register_forward_hook(lambda m, args, out: gelu_outputs.append(weakref.ref(args[0])))
    ids = torch.randint(0, 50257, (2, 12))
    losses = [lm_loss(m(ids)[:, :-1], m.wte.weight, ids[:, 1:]) for m in (model, reference)]
    assert (gelu_outputs[0]() is None) == recompute  # without recompute, c_proj keeps it for its weight gradient
    for loss in losses:
        loss.backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_right_padding_takes_the_unmasked_causal_path(tiny_hf_dir):
    model = load_model(tiny_hf_dir).eval()
    ids, mask = padded_batch(model.config.vocab_size, [12, 5])
    from minigpt2.model import attention_mask_for, is_right_padded

    assert is_right_padded(mask) and not is_right_padded(mask.flip(1))
    explicit, _ = attention_mask_for(mask, ids.size(1), 0, ids.device)
    with torch.no_grad():
        fast = model(ids, mask)
        x = model.wte(ids) + model.wpe(torch.arange(ids.size(1)))[None]
        for block in model.h:
            x = block(x, explicit, False)
        slow = model.ln_f(x)
    assert_close(fast[mask.bool()], slow[mask.bool()], 1e-5, "fast causal path vs explicit padding mask")


def test_padding_does_not_change_real_positions(tiny_hf_dir):
    model = load_model(tiny_hf_dir).eval()
    ids, mask = padded_batch(model.config.vocab_size, [12, 5])
    with torch.no_grad():
        batched = model(ids, mask)
        alone = model(ids[1:, :5])
    assert_close(batched[1, :5], alone[0], 1e-5, "a padded row vs the same row alone")
    assert_close(gather_last(batched, mask)[1], alone[0, -1], 1e-5, "gather_last")


@pytest.mark.parametrize("padding", ["none", "right", "left"])
def test_hidden_states_at_one_position_per_row_match_transformers(tiny_hf_dir, padding):
    """`at`: each row's hidden state at one position, as transformers computes it over the whole sequence, and
    the same gradients as the full forward gathered there."""
    model, hf = load_model(tiny_hf_dir).double().eval(), load_hf(tiny_hf_dir).double()
    ids, mask = padded_batch(model.config.vocab_size, [12, 5, 1, 9])
    mask = {"none": None, "right": mask, "left": mask.flip(1)}[padding]
    at = torch.tensor([11, 3, 0, 8]) if mask is None else last_token_index(mask)
    rows = torch.arange(4)
    with torch.no_grad():
        theirs = hf(ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1][rows, at]
    ours = model(ids, attention_mask=mask, at=at)
    assert ours.shape == (4, model.config.n_embd)
    assert_close(ours, theirs, 1e-10, f"hidden state at `at`, {padding} padding")
    full = model(ids, attention_mask=mask)[rows, at]
    weights = torch.randn(ours.shape, dtype=torch.float64)  # a loss that weighs every row and channel apart
    grads = torch.autograd.grad((ours * weights).sum(), list(model.parameters()))
    expected = torch.autograd.grad((full * weights).sum(), list(model.parameters()))
    for (name, _), g, e in zip(model.named_parameters(), grads, expected):
        assert_close(g, e, 1e-12, f"gradient of {name}")


def test_at_computes_the_last_block_at_one_position_per_row(tiny_hf_dir):
    """Only the last block narrows, and only after its keys and values saw every position."""
    model = load_model(tiny_hf_dir).eval()
    ids, mask = padded_batch(model.config.vocab_size, [12, 5, 9])
    layers = ("ln_1", "attn.query", "attn.key", "attn.value", "attn.c_proj", "ln_2", "mlp.c_fc")
    inputs: dict[tuple[int, str], tuple[int, ...]] = {}  # (block, layer) -> the shape of the layer's input
    for i, block in enumerate(model.h):
        for name in layers:
            block.get_submodule(name).register_forward_hook(
                lambda m, args, out, key=(i, name): inputs.__setitem__(key, tuple(args[0].shape)))
    with torch.no_grad():
        model(ids, attention_mask=mask, at=last_token_index(mask))
    B, T, C = 3, 12, model.config.n_embd
    last = len(model.h) - 1
    full = {(i, name): (B, T, C) for i in range(last) for name in layers}
    narrowed = {(last, name): (B, 1, C) if name in ("attn.c_proj", "ln_2", "mlp.c_fc") else (B, T, C)
                for name in layers}
    assert inputs == full | narrowed


def test_at_after_a_kv_cache_indexes_the_new_positions(tiny_hf_dir):
    model = load_model(tiny_hf_dir).eval()
    ids, _ = padded_batch(model.config.vocab_size, [10, 10])
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(model.config, 2, 10)
        model(ids[:, :6], cache=cache)
        ours = model(ids[:, 6:], cache=cache, at=torch.tensor([3, 1]))
    assert cache.length == 10
    assert_close(ours, full[torch.arange(2), torch.tensor([9, 7])], 1e-5, "at after 6 cached positions")


def test_lm_head_columns_equal_full_logits(tiny_hf_dir):
    model = load_model(tiny_hf_dir).eval()
    ids, _ = padded_batch(model.config.vocab_size, [6])
    with torch.no_grad():
        hidden = model(ids)
        cols = torch.tensor([8505, 3919])
        assert model.lm_head(hidden, cols).shape == (1, 6, 2)
        assert_close(model.lm_head(hidden, cols), model.lm_head(hidden)[..., cols], 1e-6, "columns")


def test_kv_cache_equals_full_recomputation(tiny_hf_dir):
    model = load_model(tiny_hf_dir).eval()
    ids, _ = padded_batch(model.config.vocab_size, [20, 20])
    with torch.no_grad():
        full = model.logits(ids)
        cache = KVCache(model.config, 2, 20)
        steps = [model.lm_head(model(ids[:, :8], cache=cache))]  # prefill 8, then one token at a time
        steps += [model.lm_head(model(ids[:, t:t + 1], cache=cache)) for t in range(8, 12)]
        steps.append(model.lm_head(model(ids[:, 12:], cache=cache)))  # a multi-token chunk after the prefix
    assert_close(torch.cat(steps, dim=1), full, 1e-5, "cached vs full logits")
    assert cache.length == 20


def test_sequence_longer_than_context_is_an_error():
    model = GPT2(GPT2Config.from_name("tiny", n_positions=8))
    with pytest.raises(ValueError, match="exceeds n_positions=8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_greedy_generation_matches_transformers(tiny_hf_dir):
    ours, hf = load_model(tiny_hf_dir).eval(), load_hf(tiny_hf_dir)
    prompt = [464, 2068, 7586, 21831, 18045, 625]
    ids = torch.tensor([prompt])
    expected = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=40, do_sample=False,
                           pad_token_id=50256, eos_token_id=None)[0, len(prompt):].tolist()
    got = generate(ours, [prompt], max_new_tokens=40, eos_id=None)[0]
    assert got == expected
    assert len(set(got)) > 5, "test model too degenerate to prove anything"


def test_batched_left_padded_generation_equals_one_by_one(tiny_hf_dir):
    model = load_model(tiny_hf_dir).eval()
    prompts = [[464, 2068, 7586, 21831, 18045], [40, 1101], [15496, 995, 11, 314]]
    batched = generate(model, prompts, max_new_tokens=15, eos_id=None)
    alone = [generate(model, [p], max_new_tokens=15, eos_id=None)[0] for p in prompts]
    assert batched == alone


def test_batched_greedy_matches_transformers_with_left_padding(tiny_hf_dir):
    ours, hf = load_model(tiny_hf_dir).eval(), load_hf(tiny_hf_dir)
    prompts = [[464, 2068, 7586, 21831, 18045], [40, 1101]]
    ids = torch.full((2, 5), 50256)
    mask = torch.zeros(2, 5, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, 5 - len(p):], mask[i, 5 - len(p):] = torch.tensor(p), 1
    expected = hf.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=50256,
                           eos_token_id=None)[:, 5:].tolist()
    assert generate(ours, prompts, max_new_tokens=12, eos_id=None) == expected

