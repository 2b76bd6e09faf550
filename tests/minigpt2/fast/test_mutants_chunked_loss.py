"""The chunked LM loss pinned where one-line slips give other output (found by `tools/mutate.py --auto
minigpt2/fast/chunked_loss.py`; docs/testing.md, "Automated mutants"): every value and gradient against
`torch.nn.functional.cross_entropy` on the full logits in fp64 (the chunked loss sums in fp32), on the inputs a
slip would show on: one kept row, every row ignored, logits far from 0, only one of the two inputs trainable; the
error lines in full; the chunk size taken from `CHUNK_ELEMENTS`; and no gradient product where no gradient is wanted.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import minigpt2.fast.chunked_loss as cl
from minigpt2.fast.chunked_loss import ChunkedLMLoss, chunked_lm_loss
from minigpt2.losses import LMLoss, lm_loss


def inputs(n: int = 37, c: int = 16, v: int = 101, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, c, generator=g)
    weight = torch.randn(v, c, generator=g) * 0.5
    targets = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, targets


def reference(hidden, weight, targets, ignore_index=-100, want=(True, True)):
    """The loss and gradients by F.cross_entropy on the whole logits (the definition), in fp64."""
    h = hidden.detach().double().requires_grad_(want[0])
    w = weight.detach().double().requires_grad_(want[1])
    loss = F.cross_entropy(h.reshape(-1, h.size(-1)) @ w.t(), targets.reshape(-1), ignore_index=ignore_index)
    loss.backward()
    return loss.detach(), h.grad, w.grad


def chunked(hidden, weight, targets, want=(True, True), upstream=1.0, **kw):
    h = hidden.detach().clone().requires_grad_(want[0])
    w = weight.detach().clone().requires_grad_(want[1])
    loss = chunked_lm_loss(h, w, targets, **kw)
    (loss * upstream).backward()
    return loss.detach(), h.grad, w.grad


def close(got, want, rtol=1e-5, atol=1e-7):
    """fp32 results (the loss, and the gradients of fp32 inputs) against the fp64 definition."""
    for a, b in zip(got, want):
        if b is None:
            assert a is None
        else:
            assert a is not None and a.dtype == torch.float32 and a.shape == b.shape
            torch.testing.assert_close(a.double(), b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("chunk_rows", [1, 2, 5, 36, 37, 64])
def test_value_and_gradients_equal_cross_entropy_in_fp64(chunk_rows):
    hidden, weight, targets = inputs()
    targets[::4] = -100
    close(chunked(hidden, weight, targets, chunk_rows=chunk_rows), reference(hidden, weight, targets))


@pytest.mark.parametrize("chunk_rows", [1, 3])
def test_a_single_kept_row_has_the_full_gradient(chunk_rows):
    # the mean over one row: the gradients are that row's, not halved or doubled
    hidden, weight, targets = inputs(n=5)
    targets[[0, 1, 3, 4]] = -100
    close(chunked(hidden, weight, targets, chunk_rows=chunk_rows), reference(hidden, weight, targets))
    targets = torch.full((5,), -100)
    targets[4] = 7
    close(chunked(hidden, weight, targets, chunk_rows=chunk_rows), reference(hidden, weight, targets))


def test_every_row_ignored_is_nan_with_zero_gradients_like_cross_entropy():
    hidden, weight, targets = inputs(n=6)
    targets[:] = -100
    loss, dh, dw = chunked(hidden, weight, targets, chunk_rows=4)
    ref = reference(hidden, weight, targets)
    assert torch.isnan(loss) and torch.isnan(ref[0])
    assert torch.equal(dh, torch.zeros_like(hidden)) and torch.equal(dw, torch.zeros_like(weight))
    assert torch.equal(ref[1], dh) and torch.equal(ref[2], dw)


def test_logits_far_from_zero_do_not_overflow():
    # logits in the thousands: exp without the max subtracted is inf in fp32 (above 88) and in fp64 (above 709)
    hidden, weight, targets = inputs(n=9, c=4, v=13)
    weight = weight * 3000
    ref = reference(hidden, weight, targets)
    assert torch.isfinite(ref[0]) and ref[0] > 100
    close(chunked(hidden, weight, targets, chunk_rows=4), ref)
    close(chunked(hidden, -weight, targets, chunk_rows=4), reference(hidden, -weight, targets))


@pytest.mark.parametrize("want", [(True, False), (False, True)], ids=["hidden only", "weight only"])
def test_only_the_trainable_input_gets_a_gradient(want):
    hidden, weight, targets = inputs()
    targets[1::3] = -100
    close(chunked(hidden, weight, targets, want=want, chunk_rows=8), reference(hidden, weight, targets, want=want))


def test_the_upstream_gradient_and_shapes_of_a_batch_with_a_custom_ignore_index():
    hidden, weight, targets = inputs(n=24)
    hidden, targets = hidden.reshape(2, 3, 4, 16), targets.reshape(2, 3, 4)
    targets[0, 1] = 5  # a real id as the ignore index: 4 rows out
    got = chunked(hidden, weight, targets, upstream=-2.5, chunk_rows=7, ignore_index=5)
    h, w = hidden.double().requires_grad_(), weight.double().requires_grad_()
    want = F.cross_entropy((h @ w.t()).reshape(-1, 101), targets.reshape(-1), ignore_index=5)
    (want * -2.5).backward()
    close(got, (want.detach(), h.grad, w.grad))


def test_the_modules_equal_cross_entropy_on_3d_inputs():
    hidden, weight, targets = inputs(n=30)
    hidden, targets = hidden.reshape(3, 10, 16), targets.reshape(3, 10)
    targets[:, -1] = -100
    want = F.cross_entropy((hidden.double() @ weight.double().t()).reshape(-1, 101), targets.reshape(-1))
    for got in (ChunkedLMLoss()(hidden, weight, targets), LMLoss()(hidden, weight, targets),
                lm_loss(hidden, weight, targets)):
        torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("hidden_shape,weight_shape,target_shape,message", [
    ((4, 8), (10, 8), (5,), "chunked_lm_loss: hidden (4, 8) and targets (5,) disagree; expected hidden (..., C) "
                            "and targets (...)"),
    ((2, 4, 8), (10, 8), (2, 4, 1), "chunked_lm_loss: hidden (2, 4, 8) and targets (2, 4, 1) disagree; expected "
                                    "hidden (..., C) and targets (...)"),
    ((4, 8), (10, 6), (4,), "chunked_lm_loss: weight (10, 6) must be (V, C) with C = 8"),
    ((4, 8), (10, 8, 1), (4,), "chunked_lm_loss: weight (10, 8, 1) must be (V, C) with C = 8"),
    ((4, 8), (80,), (4,), "chunked_lm_loss: weight (80,) must be (V, C) with C = 8"),
])
def test_bad_shapes_are_one_line_in_full(hidden_shape, weight_shape, target_shape, message):
    with pytest.raises(ValueError) as e:
        chunked_lm_loss(torch.zeros(hidden_shape), torch.zeros(weight_shape), torch.zeros(target_shape,
                                                                                           dtype=torch.long))
    assert str(e.value) == message


@pytest.mark.parametrize("rows", [0, -3])
def test_bad_chunk_rows_is_one_line_in_full(rows):
    hidden, weight, targets = inputs()
    with pytest.raises(ValueError) as e:
        chunked_lm_loss(hidden, weight, targets, chunk_rows=rows)
    assert str(e.value) == f"chunked_lm_loss: chunk_rows must be >= 1, got {rows}"


def logits_rows(monkeypatch, v: int) -> list[int]:
    """Rows of every (rows, C) x (C, V) product: the chunks of logits."""
    rows = []
    real_matmul, real_mm = torch.Tensor.__matmul__, torch.mm

    def matmul(a, b):
        if b.dim() == 2 and b.size(1) == v:
            rows.append(a.size(0))
        return real_matmul(a, b)

    def mm(a, b, **kw):
        if b.size(1) == v:
            rows.append(a.size(0))
        return real_mm(a, b, **kw)

    monkeypatch.setattr(torch.Tensor, "__matmul__", matmul)
    monkeypatch.setattr(torch, "mm", mm)
    return rows


@pytest.mark.parametrize("elements,chunks", [(7 * 101, [7, 7, 7, 7, 7, 2]), (7 * 101 + 100, [7, 7, 7, 7, 7, 2]),
                                             (50, [1] * 37), (101, [1] * 37), (202, [2] * 18 + [1])])
def test_the_default_chunk_is_chunk_elements_over_the_vocabulary_rows_at_least_one(monkeypatch, elements, chunks):
    hidden, weight, targets = inputs(n=37, v=101)
    monkeypatch.setattr(cl, "CHUNK_ELEMENTS", elements)
    rows = logits_rows(monkeypatch, 101)
    got = chunked(hidden, weight, targets)
    assert rows == chunks
    close(got, reference(hidden, weight, targets))


def test_the_production_chunk_at_gpt2s_vocabulary_is_667_rows():
    assert cl.CHUNK_ELEMENTS == 32 * 1024 * 1024 and cl.CHUNK_ELEMENTS // 50257 == 667


@pytest.mark.parametrize("want", [(False, False), (True, False), (False, True)])
def test_no_gradient_product_where_no_gradient_is_wanted(monkeypatch, want):
    """Evaluation (no_grad, or nothing trainable) takes only the logits products; a frozen input gets none."""
    hidden, weight, targets = inputs(n=20, v=64)
    products = []
    real_matmul, real_mm, real_addmm = torch.Tensor.__matmul__, torch.mm, torch.Tensor.addmm_
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: products.append(tuple(b.shape)) or real_matmul(a, b))
    monkeypatch.setattr(torch, "mm", lambda a, b, **kw: products.append(tuple(b.shape)) or real_mm(a, b, **kw))
    monkeypatch.setattr(torch.Tensor, "addmm_", lambda s, a, b: products.append(tuple(b.shape)) or real_addmm(s, a, b))
    h, w = hidden.clone().requires_grad_(want[0]), weight.clone().requires_grad_(want[1])
    chunked_lm_loss(h, w, targets, chunk_rows=6)
    logits = [(16, 64)] * 4  # 4 chunks of 20 rows
    dh = [(64, 16)] * 4  # (rows, V) x (V, C)
    dw = [(6, 16), (6, 16), (6, 16), (2, 16)]  # (V, rows) x (rows, C)
    expected = {(False, False): logits, (True, False): [x for pair in zip(logits, dh) for x in pair],
                (False, True): [x for pair in zip(logits, dw) for x in pair]}[want]
    assert products == expected
    products.clear()
    with torch.no_grad():
        got = chunked_lm_loss(hidden.clone().requires_grad_(), weight.clone().requires_grad_(), targets, chunk_rows=6)
    assert products == logits
    torch.testing.assert_close(got.double(), reference(hidden, weight, targets)[0], rtol=1e-6, atol=0)


def test_a_chunk_of_more_rows_than_the_vocabulary_has_words_counts_every_row():
    # 70 rows in one chunk of a 13-word vocabulary: the chunk's statistics go 32 rows at a time over all 70
    hidden, weight, targets = inputs(n=70, v=13)
    close(chunked(hidden, weight, targets, chunk_rows=64), reference(hidden, weight, targets))
    close(chunked(hidden, weight, targets, chunk_rows=70), reference(hidden, weight, targets))


def test_the_weight_error_names_the_hidden_width_of_a_batch():
    with pytest.raises(ValueError) as e:
        chunked_lm_loss(torch.zeros(2, 4, 8), torch.zeros(10, 6), torch.zeros(2, 4, dtype=torch.long))
    assert str(e.value) == "chunked_lm_loss: weight (10, 6) must be (V, C) with C = 8"


def test_the_loss_is_summed_in_fp32_whatever_torchs_default_dtype():
    hidden, weight, targets = inputs()
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = chunked(hidden, weight, targets, chunk_rows=8)
    finally:
        torch.set_default_dtype(before)
    close(got, reference(hidden, weight, targets))


def test_a_bf16_model_without_autocast_takes_its_logits_in_bf16_and_its_gradients_in_fp32(monkeypatch):
    hidden, weight, targets = inputs(n=20, v=64)
    seen = []
    real_matmul, real_mm = torch.Tensor.__matmul__, torch.mm
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: seen.append((a.dtype, b.dtype)) or real_matmul(a, b))
    monkeypatch.setattr(torch, "mm", lambda a, b, **kw: seen.append((a.dtype, b.dtype)) or real_mm(a, b, **kw))
    h, w = hidden.bfloat16().requires_grad_(), weight.bfloat16().requires_grad_()
    chunked_lm_loss(h, w, targets, chunk_rows=20).backward()
    bf16, fp32 = torch.bfloat16, torch.float32
    assert seen == [(bf16, bf16), (fp32, fp32), (fp32, fp32)]  # logits; then dh and dW from fp32 copies
    assert h.grad.dtype == bf16 and w.grad.dtype == bf16
