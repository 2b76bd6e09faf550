"""The chunked, fused `chunked_lm_loss` equals the plain `lm_loss` (full logits, cross-entropy): value, gradients."""

import pytest
import torch
import torch.nn.functional as F

from minigpt2.fast.chunked_loss import chunked_lm_loss
from minigpt2.losses import lm_loss


def _inputs(n: int = 37, c: int = 16, v: int = 101, seed: int = 0, ignore_every: int = 5):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, c, generator=g, dtype=torch.float64).float()
    weight = torch.randn(v, c, generator=g) * 0.5
    targets = torch.randint(0, v, (n,), generator=g)
    if ignore_every:
        targets[::ignore_every] = -100
    return hidden, weight, targets


def _value_and_grads(fn, hidden, weight, targets, **kw):
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    loss = fn(h, w, targets, **kw)
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk_rows", [1, 7, 36, 37, 1000])
def test_chunked_loss_and_grads_match_reference(chunk_rows):
    hidden, weight, targets = _inputs()
    ref = _value_and_grads(lm_loss, hidden, weight, targets)
    got = _value_and_grads(chunked_lm_loss, hidden, weight, targets, chunk_rows=chunk_rows)
    for name, a, b in zip(["loss", "d hidden", "d weight"], got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_lm_loss_batched_shapes_and_custom_ignore_index():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, 9, 8, generator=g)
    weight = torch.randn(50, 8, generator=g)
    targets = torch.randint(0, 50, (3, 9), generator=g)
    targets[0, :4] = 7  # a real token id used as the ignore index
    ref = _value_and_grads(lm_loss, hidden, weight, targets, ignore_index=7)
    got = _value_and_grads(chunked_lm_loss, hidden, weight, targets, ignore_index=7)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_upstream_gradient_scales_grads():
    hidden, weight, targets = _inputs(ignore_every=0)
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    (3.0 * chunked_lm_loss(h1, w1, targets, chunk_rows=5)).backward()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    (3.0 * lm_loss(h2, w2, targets)).backward()
    torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-5, atol=1e-6)


def test_frozen_weight_gets_no_grad_and_grad_accumulates_with_other_uses():
    hidden, weight, targets = _inputs()
    h = hidden.clone().requires_grad_()
    loss = chunked_lm_loss(h, weight, targets, chunk_rows=8)  # weight does not require grad (LoRA, frozen wte)
    loss.backward()
    ref_h = hidden.clone().requires_grad_()
    lm_loss(ref_h, weight, targets).backward()
    torch.testing.assert_close(h.grad, ref_h.grad, rtol=1e-5, atol=1e-6)
    # tied weights: the head's gradient adds to the embedding's, as with the reference
    w = weight.clone().requires_grad_()
    emb = torch.nn.functional.embedding(targets.clamp(min=0), w).sum()
    (chunked_lm_loss(hidden, w, targets, chunk_rows=4) + emb).backward()
    w_ref = weight.clone().requires_grad_()
    (lm_loss(hidden, w_ref, targets) + torch.nn.functional.embedding(targets.clamp(min=0), w_ref).sum()
     ).backward()
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-5, atol=1e-6)


def test_no_grad_gives_the_value_only(monkeypatch):
    hidden, weight, targets = _inputs()
    weight.requires_grad_()
    calls = []
    real_addmm = torch.Tensor.addmm_
    monkeypatch.setattr(torch.Tensor, "addmm_", lambda self, *a, **k: calls.append(1) or real_addmm(self, *a, **k))
    with torch.no_grad():
        got = chunked_lm_loss(hidden, weight, targets)
    assert calls == []  # evaluation computes no weight gradient
    torch.testing.assert_close(got, lm_loss(hidden, weight, targets), rtol=1e-6, atol=1e-6)


def test_all_targets_ignored_is_nan_like_cross_entropy():
    hidden, weight, targets = _inputs()
    targets[:] = -100
    assert torch.isnan(chunked_lm_loss(hidden, weight, targets))
    assert torch.isnan(lm_loss(hidden, weight, targets))


def test_on_gpt2_sized_vocab_matches_reference():
    # the real vocabulary and several chunks: the production chunk size is exercised
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, 40, 32, generator=g)
    weight = torch.randn(50257, 32, generator=g) * 0.02
    targets = torch.randint(0, 50257, (2, 40), generator=g)
    targets[1, 30:] = -100
    ref = _value_and_grads(lm_loss, hidden, weight, targets)
    got = _value_and_grads(chunked_lm_loss, hidden, weight, targets, chunk_rows=16)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hidden_shape, weight_shape, target_shape, message", [
    ((4, 8), (10, 8), (5,), "hidden (4, 8) and targets (5,) disagree"),
    ((4, 8), (10, 6), (4,), "weight (10, 6) must be (V, C) with C = 8"),
])
def test_bad_shapes_are_named(hidden_shape, weight_shape, target_shape, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        chunked_lm_loss(torch.zeros(hidden_shape), torch.zeros(weight_shape),
                        torch.zeros(target_shape, dtype=torch.long))


def test_bad_chunk_rows():
    hidden, weight, targets = _inputs()
    with pytest.raises(ValueError, match="chunk_rows must be >= 1, got 0"):
        chunked_lm_loss(hidden, weight, targets, chunk_rows=0)


# Under CPU bf16 autocast (the same dtype rules as CUDA's) the chunked loss is compared with the plain loss under
# the same autocast, and both with fp32. Both round the logits and the gradient products to bf16 (8 significant
# bits, relative step 2^-8 = 0.4%), so the tolerance is a relative error of the whole tensor below 2%: several
# roundings, but far below what a dtype or scaling bug makes (>= 100%).
BF16_REL = 2e-2


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize("n, v, chunk_rows", [(37, 101, 1), (37, 101, 7), (37, 101, 1000),
                                                   pytest.param(700, 50257, None, marks=pytest.mark.slow)])
def test_chunked_loss_under_bf16_autocast_matches_plain_loss_under_autocast(n, v, chunk_rows):
    # (700, 50257, None): the production chunk size at GPT-2's vocabulary, more rows than one chunk (667)
    hidden, weight, targets = _inputs(n=n, c=32, v=v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _value_and_grads(chunked_lm_loss, hidden, weight, targets, chunk_rows=chunk_rows)
        ref = _value_and_grads(lm_loss, hidden, weight, targets)
    fp32 = _value_and_grads(lm_loss, hidden, weight, targets)
    for name, a, b, c in zip(["loss", "d hidden", "d weight"], got, ref, fp32):
        assert a.dtype == torch.float32, name  # the loss and the gradients of fp32 leaves stay fp32
        assert torch.isfinite(a).all(), name
        assert _rel_err(a, b) < BF16_REL, (name, _rel_err(a, b))
        assert _rel_err(a, c) < BF16_REL, (name, _rel_err(a, c))
    # and it is really the bf16 path: not bit-equal to the fp32 loss
    assert not torch.equal(got[2], fp32[2])


def test_chunked_loss_under_autocast_runs_its_products_in_bf16(monkeypatch):
    hidden, weight, targets = _inputs(n=20, c=16, v=64)
    seen = []
    real_mm = torch.Tensor.__matmul__
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: seen.append((a.dtype, b.dtype)) or real_mm(a, b))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _value_and_grads(chunked_lm_loss, hidden, weight, targets, chunk_rows=6)
    assert seen and set(seen) == {(torch.bfloat16, torch.bfloat16)}


@pytest.mark.parametrize("chunk_rows", [7, None])
def test_chunked_loss_of_a_bf16_model_takes_its_gradient_products_in_fp32(chunk_rows):
    """bf16 weights without autocast: bf16 logits, their statistics and gradient products in fp32."""
    hidden, weight, targets = _inputs(n=70, c=16, v=101)
    got = _value_and_grads(chunked_lm_loss, hidden.bfloat16(), weight.bfloat16(), targets, chunk_rows=chunk_rows)
    ref = _value_and_grads(lm_loss, hidden.bfloat16().float(), weight.bfloat16().float(), targets)
    for name, a, b in zip(["loss", "d hidden", "d weight"], got, ref):
        assert _rel_err(a, b) < BF16_REL, (name, _rel_err(a, b))


# Under bf16 the chunked loss keeps its softmax statistics (max, exp, sum, log) and the sum of the row losses in
# fp32 (docs/finetuning.md); only the three vocabulary-sized products run in bf16. To see the statistics apart from
# the bf16 products, these inputs make every logit exact in bf16: hidden states in {-1, 0, 1} and weights in
# quarters, so each logit is a multiple of 1/4 below 32 in magnitude (7 significant bits), computed exactly by any
# kernel that accumulates in fp32. The loss is then the fp64 cross-entropy of known logits. A constant feature lifts
# every logit by 16, as a model's logits sit away from 0: logsumexp is then 20 to 30, where bf16's step is 0.125.
# Measured: fp32 statistics give the loss within 2e-8; the input to the statistics, their sum or log, or the row
# losses kept in bf16 (each tried as a one-line slip in chunked_loss.py) miss by 1.5e-3, and the loss sum in bf16
# misses too. The max itself is exact in bf16 (the largest of bf16 logits), so a bf16 max changes nothing.
STATS_REL = 1e-5


def _bf16_exact_inputs(n: int = 70, c: int = 16, v: int = 101, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randint(-1, 2, (n, c), generator=g).float()
    weight = torch.randint(-4, 5, (v, c), generator=g).float() / 4
    hidden[:, 0], weight[:, 0] = 1.0, 16.0  # every logit + 16
    targets = torch.randint(0, v, (n,), generator=g)
    targets[::7] = -100
    return hidden, weight, targets


@pytest.mark.parametrize("grads", [True, False], ids=["training", "evaluation"])
@pytest.mark.parametrize("chunk_rows", [7, 40, None])
@pytest.mark.parametrize("how", ["autocast", "bf16 weights"])
def test_chunked_loss_keeps_its_statistics_and_sum_in_fp32_under_bf16(how, chunk_rows, grads):
    hidden, weight, targets = _bf16_exact_inputs()
    logits = hidden.double() @ weight.double().t()
    assert torch.equal(logits.bfloat16().double(), logits) and logits.max() < 32  # exact in bf16, as designed
    want = F.cross_entropy(logits, targets, ignore_index=-100).item()
    if how == "autocast":
        h, w = hidden.clone().requires_grad_(grads), weight.clone().requires_grad_(grads)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = chunked_lm_loss(h, w, targets, chunk_rows=chunk_rows)
    else:
        h, w = hidden.bfloat16().requires_grad_(grads), weight.bfloat16().requires_grad_(grads)
        got = chunked_lm_loss(h, w, targets, chunk_rows=chunk_rows)
    assert got.dtype == torch.float32
    assert abs(got.item() - want) <= STATS_REL * want, (got.item(), want, abs(got.item() - want) / want)
    if grads:  # the training path's gradients too, within bf16 rounding of the fp64 ones
        got.backward()
        ref = _value_and_grads(lm_loss, hidden.double(), weight.double(), targets)
        assert _rel_err(h.grad, ref[1]) < BF16_REL and _rel_err(w.grad, ref[2]) < BF16_REL
