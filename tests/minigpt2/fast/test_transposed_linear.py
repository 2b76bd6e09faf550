"""`minigpt2.fast.prepack.TransposedLinear` and `FusedQKVAttention`, the fp32 inference copy's layers: the product
of `nn.Linear` (one row on MKL, several on oneDNN), the same bits wherever the table lies in memory, and q, k, v
as one product."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from minigpt2 import GPT2, GPT2Config
from minigpt2.fast.prepack import FusedQKVAttention, TransposedLinear, available, prepacked

pytestmark = pytest.mark.skipif(not available(), reason="this PyTorch build has no oneDNN")


def layer(n_in: int = 48, n_out: int = 80, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    linear = nn.Linear(n_in, n_out)
    with torch.no_grad():
        linear.bias.normal_()  # a bias that matters: a product that drops it is off by about 1
    return linear


@pytest.mark.parametrize("shape", [(1, 1, 48), (1, 48), (3, 1, 48), (2, 5, 48)])  # one row (MKL); several (oneDNN)
def test_transposed_linear_is_the_linear_product(shape):
    linear = layer()
    fast = TransposedLinear(linear)
    x = torch.randn(shape)
    with torch.no_grad():
        want = linear(x)
        got = fast(x)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast.forward_gelu(x), F.gelu(want, approximate="tanh"), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(fast.forward_gelu(x), F.gelu(want), rtol=1e-5, atol=1e-6)  # tanh, not erf


def test_a_square_table_is_not_read_transposed_and_a_bare_weight_has_no_bias():
    linear = layer(64, 64)
    x = torch.randn(1, 64)
    with torch.no_grad():
        torch.testing.assert_close(TransposedLinear(linear)(x), linear(x), rtol=1e-5, atol=1e-5)
        head = TransposedLinear(None, weight=linear.weight)
        assert head.bias is None
        torch.testing.assert_close(head(x), x @ linear.weight.t(), rtol=1e-5, atol=1e-5)


def _at_offset(t: torch.Tensor, floats: int) -> torch.Tensor:
    """A copy of contiguous `t` whose data starts `floats` fp32 values past a 4096-byte boundary."""
    buf = torch.empty(t.numel() + 1024 + floats)
    start = (-(buf.data_ptr() // 4)) % 1024 + floats
    view = buf[start:start + t.numel()].view(t.shape)
    view.copy_(t)
    return view


def test_one_row_gives_the_same_bits_wherever_the_table_lies():
    """MKL's product over the transposed table sums each output over the input in order: moving the table by
    1..15 floats (other alignments, other vector peels) changes no bit. The dropped LM head on MKL (dot products
    of the (out, in) table) gave two results for two loads of one checkpoint."""
    torch.manual_seed(1)
    fast = TransposedLinear(None, weight=torch.randn(1000, 256))  # out not a multiple of any vector width
    x = torch.randn(1, 256)
    with torch.no_grad():
        want = fast(x)
        for floats in range(16):
            fast.weight_t = _at_offset(fast.weight_t.clone(), floats)
            assert fast.weight_t.data_ptr() % 64 == (floats * 4) % 64
            assert torch.equal(fast(x), want)


@pytest.mark.parametrize("threads", [1, 2])  # the transposed layout and oneDNN's packed one
def test_fused_qkv_attention_projects_query_key_value_in_that_order(threads):
    torch.manual_seed(2)
    model = GPT2(GPT2Config.from_name("tiny", dropout=0.0)).eval()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast = prepacked(model)
    finally:
        torch.set_num_threads(before)
    attn, fused = model.h[1].attn, fast.h[1].attn
    assert type(fused) is FusedQKVAttention and fused.qkv.out_features == 3 * model.config.n_embd
    assert type(model.h[1].attn) is not FusedQKVAttention  # the source model is untouched
    x = torch.randn(1, 1, model.config.n_embd)
    with torch.no_grad():
        for got, want in zip(fused.project_qkv(x), (attn.query(x), attn.key(x), attn.value(x))):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        x = torch.randn(2, 4, model.config.n_embd)  # the whole attention of a prompt: causal, several rows
        torch.testing.assert_close(fused(x, None, True), attn(x, None, True), rtol=1e-5, atol=1e-5)
