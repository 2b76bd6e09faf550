"""`minigpt2.fast.prepack` on a model whose biases and LayerNorms are not at their init (zeros and ones hide a
dropped bias): every packed layer kind, at one and two threads and one and several rows, computes what the plain
layer computes; the packed tables are not saved; the dtype and batch each layer is packed for."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from minigpt2 import GPT2, GPT2Config
from minigpt2.device import torch_threads
from minigpt2.fast import prepack
from minigpt2.fast.prepack import (Fp16Linear, FusedQKVAttention, PackedGPT2, PackedLinear, SlabLinear,
                                   _packed_layer, _stacked, available, fp16_available, inference_copy, prepacked)
from tests.conftest import bf16_prepacked


def can_pack() -> bool:
    """Whether this torch packs a weight and multiplies by it with oneDNN, tried rather than asked."""
    try:
        w = torch.ops.mkldnn._reorder_linear_weight(torch.ones(4, 2), 1)
        return bool(torch.ops.mkldnn._linear_pointwise(torch.ones(1, 2), w, None, "none", [], "").sum() == 8)
    except (AttributeError, RuntimeError):
        return False


pytestmark = pytest.mark.skipif(not can_pack(), reason="this PyTorch build has no oneDNN")
NBYTES = torch.ops.mkldnn._nbytes if can_pack() else None


def test_available_says_whether_oneDNN_packs_here(monkeypatch):
    assert available() is True  # can_pack() held, or the module would be skipped
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert available() is False


def biased_tiny(seed: int = 0) -> GPT2:
    """The tiny GPT-2 with every vector parameter (biases, LayerNorm gains and shifts) drawn away from its init."""
    torch.manual_seed(seed)
    model = GPT2(GPT2Config.from_name("tiny", dropout=0.0)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    with torch_threads(request.param):
        yield request.param


@pytest.mark.parametrize("batch", [1, 3])
def test_fp32_copy_of_a_biased_model_gives_its_logits_for_one_and_several_rows(threads, batch):
    model = biased_tiny()
    fast = prepacked(model, torch.float32, batch)
    kind = SlabLinear if batch == 1 else PackedLinear
    assert type(fast.h[0].mlp.c_fc) is kind and type(fast.h[0].attn.qkv) is kind and type(fast.packed_head) is kind
    with torch.no_grad():
        for rows in (1, batch, 4):
            ids = torch.randint(0, 50257, (rows, 6), generator=torch.Generator().manual_seed(rows))
            torch.testing.assert_close(fast.logits(ids), model.logits(ids), rtol=1e-4, atol=1e-4)
            h = torch.randn(rows, 5, model.config.n_embd)
            mlp = fast.h[1].mlp
            gelu = nn.functional.gelu(model.h[1].mlp.c_fc(h), approximate="tanh")  # GPT-2's GELU
            torch.testing.assert_close(mlp.c_fc.forward_gelu(h), gelu, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(mlp.c_fc(h), model.h[1].mlp.c_fc(h), rtol=1e-4, atol=1e-4)


@bf16_prepacked
def test_bf16_copy_keeps_the_biases_and_computes_in_bf16():
    model = biased_tiny()
    fast = prepacked(model, torch.bfloat16)
    layer = fast.h[0].mlp.c_fc
    assert type(layer) is PackedLinear and layer.packed.dtype == torch.bfloat16 and layer.bias.dtype == torch.bfloat16
    h = torch.randn(2, 3, model.config.n_embd)
    ref = model.h[0].mlp.c_fc
    want = nn.functional.linear(h.bfloat16(), ref.weight.bfloat16(), ref.bias.bfloat16())
    got = layer(h)  # an fp32 input is cast to the packed dtype
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    gelu = nn.functional.gelu(want.float(), approximate="tanh")
    torch.testing.assert_close(layer.forward_gelu(h).float(), gelu, rtol=2e-2, atol=2e-2)
    ids = torch.randint(0, 50257, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(fast.logits(ids).float(), model.logits(ids), rtol=0.1, atol=0.1)


def can_fp16() -> bool:
    """Whether fbgemm's fp16 linear runs here, tried rather than asked (x86 only: on other CPUs fbgemm is absent)."""
    try:
        w = torch.ops.quantized.linear_prepack_fp16(torch.ones(4, 2), None)
        return bool(torch.ops.quantized.linear_dynamic_fp16(torch.ones(1, 2), w).sum() == 8)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


@pytest.mark.parametrize("capability, engines, want", [
    ("AVX2", ["none", "fbgemm"], True), ("AVX512", ["fbgemm"], True),
    ("DEFAULT", ["none", "fbgemm"], False),  # fbgemm's fp16 kernels need AVX2
    ("AVX2", ["none", "qnnpack"], False), ("AVX512", ["onednn", "x86"], False),
])
def test_fp16_weights_need_fbgemm_and_avx2(monkeypatch, capability, engines, want):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    # a property of torch.backends.quantized's module class: patched there
    monkeypatch.setattr(type(torch.backends.quantized), "supported_engines", property(lambda self: engines))
    assert fp16_available() is (want and hasattr(torch.ops.quantized, "linear_prepack_fp16"))


@pytest.mark.skipif(not can_fp16(), reason="no fbgemm fp16 linear on this CPU")
def test_fp16_copy_rounds_only_the_weights_and_keeps_the_biases():
    model = biased_tiny()
    fast = inference_copy(model, torch.float16)
    assert type(fast.h[0].mlp.c_fc) is Fp16Linear and type(fast.h[0].attn.qkv) is Fp16Linear
    assert type(fast.packed_head) is Fp16Linear and fast.h[0].ln_1.weight.dtype == torch.float32
    h = torch.randn(3, model.config.n_embd)
    ref = model.h[0].mlp.c_fc
    want = nn.functional.linear(h, ref.weight.half().float(), ref.bias)  # fp16 weights, fp32 everything else
    torch.testing.assert_close(fast.h[0].mlp.c_fc(h), want, rtol=1e-5, atol=1e-5)
    ids = torch.randint(0, 50257, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(fast.logits(ids), model.logits(ids), rtol=1e-2, atol=1e-2)
    # an fp16 copy asked of a bf16 model is the model's own dtype path, not fp16 weights
    assert not isinstance(inference_copy(model.to(torch.bfloat16), torch.float16).h[0].mlp.c_fc, Fp16Linear)


def test_stacked_projection_is_the_three_layers_side_by_side_with_zeros_for_a_missing_bias():
    torch.manual_seed(0)
    q, k, v = nn.Linear(8, 4), nn.Linear(8, 4, bias=False), nn.Linear(8, 6)
    s = _stacked([q, k, v])
    x = torch.randn(5, 8)
    torch.testing.assert_close(s(x), torch.cat([q(x), k(x), v(x)], -1))
    assert s.weight.shape == (14, 8) and s.bias.shape == (14,) and not s.bias[4:8].any()
    assert not s.weight.requires_grad and not s.bias.requires_grad
    assert s.weight.device.type == "cpu" and s.bias.device.type == "cpu"
    none = _stacked([nn.Linear(8, 4, bias=False), nn.Linear(8, 4, bias=False)])
    assert none.bias is None and none.weight.shape == (8, 8)


def test_fused_attention_packs_both_products_in_the_copy_s_dtype_and_batch(threads):
    model = biased_tiny()
    fast = prepacked(model, torch.float32, 4)
    attn = fast.h[0].attn
    assert type(attn) is FusedQKVAttention
    for layer in (attn.qkv, attn.c_proj):
        assert type(layer) is PackedLinear and layer.batch == 4 and layer.packed.dtype == torch.float32
    x = torch.randn(4, 5, model.config.n_embd)
    q, k, v = attn.project_qkv(x)
    ref = model.h[0].attn
    for got, lin in ((q, ref.query), (k, ref.key), (v, ref.value)):
        torch.testing.assert_close(got, lin(x), rtol=1e-4, atol=1e-4)


def test_the_packed_tables_and_their_biases_are_not_saved(threads):
    model = biased_tiny()
    for batch in (1, 2):
        fast = prepacked(model, torch.float32, batch)
        layer = fast.h[0].mlp.c_fc
        assert layer.bias is not None and dict(layer.state_dict()) == {}  # packed tables and biases: not saved
        saved = set(fast.state_dict())
        assert not any(name.startswith("h.0.mlp.c_fc") or "packed" in name or "table" in name for name in saved)


def test_a_copy_is_packed_for_one_row_unless_asked(threads):
    model = biased_tiny()
    for fast in (prepacked(model), inference_copy(model), prepacked(model, torch.float32)):
        layers = [fast.h[0].mlp.c_fc, fast.h[0].attn.qkv, fast.h[0].attn.c_proj, fast.packed_head]
        assert all(type(layer) is SlabLinear for layer in layers)  # one row: slabs, at any thread count
    fast = inference_copy(model, batch=3)
    assert [type(fast.h[0].mlp.c_fc), fast.h[0].mlp.c_fc.batch, fast.packed_head.batch] == [PackedLinear, 3, 3]
    assert repr(fast.h[0].mlp.c_fc) == ("PackedLinear(in_features=32, out_features=128, oneDNN prepacked float32 "
                                        "for 3 row(s))")


def test_a_slab_layer_with_one_row_per_position_is_a_product_of_several_rows():
    """(1, 5, C): five rows of one sequence (a prompt), not one row: the path that reads the table as (out, in)."""
    torch.manual_seed(0)
    lin = nn.Linear(16, 12)
    with torch.no_grad():
        lin.bias.normal_()
    layer = SlabLinear(lin, slabs=5)  # 12 rows in 5 slabs of 3: three padding rows
    for shape in ((1, 5, 16), (5, 1, 16), (1, 1, 16), (16,)):
        x = torch.randn(*shape)
        torch.testing.assert_close(layer(x), lin(x), rtol=1e-5, atol=1e-5)
        want = nn.functional.gelu(lin(x), approximate="tanh")
        torch.testing.assert_close(layer.forward_gelu(x), want, rtol=1e-5, atol=1e-5)
    head = SlabLinear(None, weight=lin.weight)
    x = torch.randn(3, 16)
    torch.testing.assert_close(head(x), x @ lin.weight.t(), rtol=1e-5, atol=1e-5)


def test_a_packed_layer_is_laid_out_for_one_row_unless_told():
    """oneDNN pads the (96, 32) table to 12,288 bytes for one row and to 16,384 for more (this torch's layouts)."""
    lin = nn.Linear(32, 96)
    one, two = (NBYTES(torch.ops.mkldnn._reorder_linear_weight(lin.weight.detach(), rows)) for rows in (1, 2))
    assert one != two
    layer = PackedLinear(lin)
    assert layer.batch == 1 and NBYTES(layer.packed) == one
    assert NBYTES(PackedLinear(lin, batch=2).packed) == two
    torch.manual_seed(0)
    attn = GPT2(GPT2Config.from_name("tiny", dropout=0.0)).h[0].attn
    with torch_threads(2):  # one row: slabs, one per thread; several: oneDNN laid out for them
        assert type(FusedQKVAttention(attn).qkv) is SlabLinear and _packed_layer(lin, torch.float32, batch=2).batch == 2
    with torch_threads(1):  # still two slabs
        assert type(_packed_layer(lin, torch.float32)) is SlabLinear and _packed_layer(lin, torch.float32).slabs == 2


def test_stacked_layer_reports_its_real_shape():
    s = _stacked([nn.Linear(8, 4), nn.Linear(8, 4, bias=False), nn.Linear(8, 6)])
    assert (s.in_features, s.out_features) == (8, 14)


@bf16_prepacked
def test_a_bf16_packed_layer_made_from_an_fp32_linear_is_bf16():
    lin = nn.Linear(32, 24)
    for layer in (PackedLinear(lin, torch.bfloat16), _packed_layer(lin, torch.bfloat16)):
        assert layer.packed.dtype == torch.bfloat16 and layer.bias.dtype == torch.bfloat16
        assert layer(torch.randn(2, 32)).dtype == torch.bfloat16


def test_fp16_falls_back_to_an_fp32_copy_where_fbgemm_lacks_it(monkeypatch):
    monkeypatch.setattr(prepack, "fp16_available", lambda: False)
    model = biased_tiny()
    fast = inference_copy(model, torch.float16)
    assert type(fast) is PackedGPT2 and fast is not model
    assert type(fast.h[0].mlp.c_fc) is SlabLinear


def test_one_row_on_the_slab_layer_is_the_batched_product_bit_for_bit_at_any_slabs_and_threads():
    """One row: `baddbmm(bias, slabs, x)`, each output the dot product of its row and x: the same bits at any
    thread count and slab count (so a copy made at one thread count runs at another unchanged), as long as a slab
    holds more than a few rows (slabs of 6 rows or fewer took another MKL kernel here, off in the last place; GPT-2's
    layers cut per thread have hundreds)."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    with torch.no_grad():
        lin.bias.normal_()
    w, b = lin.weight.detach(), lin.bias.detach()
    for shape in ((1, 64), (1, 1, 64), (64,)):
        x = torch.randn(*shape)
        want = torch.baddbmm(b.view(2, 24, 1), w.view(2, 24, 64), x.reshape(1, 64).t().expand(2, 64, 1))
        want = want.reshape(*shape[:-1], 48)
        with torch_threads(1):
            got = [SlabLinear(lin, slabs=slabs)(x) for slabs in (2, 5, 7)]
        with torch_threads(2):
            got += [SlabLinear(lin, slabs=slabs)(x) for slabs in (2, 3, 6)]
        for y in got:
            assert torch.equal(y, want)
