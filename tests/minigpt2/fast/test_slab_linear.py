"""`minigpt2.fast.prepack.SlabLinear` and `FusedQKVAttention`, the fp32 inference copy's layers for one row: the
product of `nn.Linear` (one row as a batched product over the slabs, several on oneDNN), the same bits wherever
the source weight lies in memory, and q, k, v as one product."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
import torch.nn as nn
import torch.nn.functional as F

from minigpt2 import GPT2, GPT2Config
from minigpt2.device import torch_threads
from minigpt2.fast.prepack import FusedQKVAttention, SlabLinear, available, prepacked, slab_count

pytestmark = pytest.mark.skipif(not available(), reason="this PyTorch build has no oneDNN")


def layer(n_in: int = 48, n_out: int = 80, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    linear = nn.Linear(n_in, n_out)
    with torch.no_grad():
        linear.bias.normal_()  # a bias that matters: a product that drops it is off by about 1
    return linear


@pytest.mark.parametrize("slabs", [2, 3, 7, 80])  # 80 rows: even slabs, padded ones, one row a slab
@pytest.mark.parametrize("shape", [(1, 1, 48), (1, 48), (48,), (3, 1, 48), (2, 5, 48)])  # one row; several
def test_slab_linear_is_the_linear_product(shape, slabs):
    linear = layer()
    fast = SlabLinear(linear, slabs=slabs)
    x = torch.randn(shape)
    with torch.no_grad():
        want = linear(x)
        got = fast(x)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast.forward_gelu(x), F.gelu(want, approximate="tanh"), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(fast.forward_gelu(x), F.gelu(want), rtol=1e-5, atol=1e-6)  # tanh, not erf


@pytest.mark.parametrize("where", ["the second row of three", "every other value", "a column of a table"])
def test_one_row_read_from_inside_another_tensor_is_the_linear_product(where):
    """A row that starts past the beginning of its memory, or whose values are not side by side: the one-row path
    reads the column straight from the input's memory, so it must honour the offset and copy a strided row first."""
    linear = layer()
    torch.manual_seed(3)
    x = {"the second row of three": torch.randn(3, 48)[1:2],
         "every other value": torch.randn(1, 96)[:, ::2],
         "a column of a table": torch.randn(48, 3)[:, 1]}[where]
    fast = SlabLinear(linear, slabs=3)
    with torch.no_grad():
        want = linear(x)
        torch.testing.assert_close(fast(x), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast.forward_gelu(x), F.gelu(want, approximate="tanh"), rtol=1e-5, atol=1e-5)


def test_padded_says_whether_the_last_slab_holds_padding_rows():
    assert SlabLinear(layer(48, 80), slabs=4).padded is False  # 4 slabs of 20
    assert SlabLinear(layer(48, 80), slabs=3).padded is True  # 3 slabs of 27: one padding row
    assert SlabLinear(None, weight=layer(48, 81).weight, slabs=3).padded is False


@settings(max_examples=60, deadline=None)
@given(n_out=st.integers(1, 70), n_in=st.integers(1, 40), slabs=st.integers(2, 9), rows=st.integers(1, 3),
       bias=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_any_shape_and_slab_count_is_the_linear_product(n_out, n_in, slabs, rows, bias, seed):
    """More slabs than rows included (slabs of zeros only), one input value, a row count of 1 (the batched
    product) or more (oneDNN)."""
    torch.manual_seed(seed)
    linear = nn.Linear(n_in, n_out, bias=bias)
    if bias:
        with torch.no_grad():
            linear.bias.normal_()
    fast = SlabLinear(linear, slabs=slabs) if bias else SlabLinear(None, weight=linear.weight, slabs=slabs)
    x = torch.randn(rows, 1, n_in)
    with torch.no_grad():
        want = linear(x)
        torch.testing.assert_close(fast(x), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast.forward_gelu(x), F.gelu(want, approximate="tanh"), rtol=1e-5, atol=1e-5)


def test_the_slabs_are_the_weight_s_rows_in_order_padded_with_zeros():
    linear = layer(8, 10)
    fast = SlabLinear(linear, slabs=4)  # 10 rows: 4 slabs of 3, the last with 2 padding rows
    assert fast.table.shape == (4, 3, 8) and fast.bias.shape == (4, 3, 1)
    assert torch.equal(fast.table.reshape(12, 8)[:10], linear.weight.detach())
    assert not fast.table.reshape(12, 8)[10:].any() and not fast.bias.reshape(12)[10:].any()
    assert torch.equal(fast.bias.reshape(12)[:10], linear.bias.detach())
    assert not fast.table.requires_grad and fast.state_dict() == {}  # inference only: nothing saved
    assert repr(fast) == ("SlabLinear(in_features=8, out_features=10, fp32 in 4 slabs (batched product for one row, "
                          "oneDNN for more))")


def test_a_bare_weight_has_no_bias():
    linear = layer(64, 64)
    head = SlabLinear(None, weight=linear.weight)
    assert head.bias is None
    for x in (torch.randn(1, 64), torch.randn(3, 64)):
        with torch.no_grad():
            torch.testing.assert_close(head(x), x @ linear.weight.t(), rtol=1e-5, atol=1e-5)


def test_the_slab_count_is_one_per_thread_and_at_least_two():
    for threads, want in ((1, 2), (2, 2), (3, 3), (4, 4)):
        with torch_threads(threads):
            assert slab_count() == want
            assert SlabLinear(layer()).slabs == want
    assert SlabLinear(layer(), slabs=5).slabs == 5


def _at_offset(t: torch.Tensor, floats: int) -> torch.Tensor:
    """A copy of contiguous `t` whose data starts `floats` fp32 values past a 4096-byte boundary."""
    buf = torch.empty(t.numel() + 1024 + floats)
    start = (-(buf.data_ptr() // 4)) % 1024 + floats
    view = buf[start:start + t.numel()].view(t.shape)
    view.copy_(t)
    return view


def test_one_row_gives_the_same_bits_wherever_the_source_weight_lies():
    """Each output of one row is a dot product of its row, whose bits depend on the row's alignment (a table moved by
    1..3 floats gave other bits on an AMD EPYC): the layer copies the weight into its own table, which starts on
    a 64-byte boundary, so a model loaded twice (its tensors wherever a file put them) decodes to the same bits."""
    torch.manual_seed(1)
    weight, x = torch.randn(1000, 256), torch.randn(1, 256)  # out not a multiple of any vector width
    with torch.no_grad():
        want = SlabLinear(None, weight=weight)(x)
        for floats in range(16):
            fast = SlabLinear(None, weight=_at_offset(weight, floats))
            assert fast.table.data_ptr() % 64 == 0
            assert torch.equal(fast(x), want)


@pytest.mark.parametrize("threads", [1, 2])
def test_fused_qkv_attention_projects_query_key_value_in_that_order(threads):
    torch.manual_seed(2)
    model = GPT2(GPT2Config.from_name("tiny", dropout=0.0)).eval()
    with torch_threads(threads):
        fast = prepacked(model)
    attn, fused = model.h[1].attn, fast.h[1].attn
    assert type(fused) is FusedQKVAttention and fused.qkv.out_features == 3 * model.config.n_embd
    assert type(fused.qkv) is SlabLinear and type(fused.c_proj) is SlabLinear
    assert type(model.h[1].attn) is not FusedQKVAttention  # the source model is untouched
    x = torch.randn(1, 1, model.config.n_embd)
    with torch.no_grad():
        for got, want in zip(fused.project_qkv(x), (attn.query(x), attn.key(x), attn.value(x))):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        x = torch.randn(2, 4, model.config.n_embd)  # the whole attention of a prompt: causal, several rows
        torch.testing.assert_close(fused(x, None, True), attn(x, None, True), rtol=1e-5, atol=1e-5)


def test_one_row_reaches_the_batched_product_as_a_column_with_the_fast_strides(monkeypatch):
    """The layer's speed rests on the layout it hands `baddbmm` / `bmm` (the docstring's "5x slower" otherwise),
    which no value shows: the shared column with strides (0, 1, in_features), the table contiguous."""
    seen = []
    for name in ("baddbmm", "bmm"):
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *args, _real=real, _name=name: seen.append(
            (_name, args[-2].shape, args[-2].is_contiguous(), args[-1].shape, args[-1].stride())) or _real(*args))
    with torch.no_grad():
        SlabLinear(layer(48, 80), slabs=4)(torch.randn(1, 1, 48))
        SlabLinear(None, weight=layer(48, 80).weight, slabs=2)(torch.randn(48))
    assert seen == [("baddbmm", (4, 20, 48), True, (4, 48, 1), (0, 1, 48)),
                    ("bmm", (2, 40, 48), True, (2, 48, 1), (0, 1, 48))]
