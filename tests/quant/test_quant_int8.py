"""The int8 CPU decode path computes what the int8 fake-quant model (weights + activations) simulates."""

import pytest
import torch
import torch.nn as nn

from minigpt2.config import GPT2Config
from minigpt2.generation import generate
from minigpt2.model import GPT2
from quant import FakeQuantLinear, QuantConfig, ptq
from quant.int8_linear import (Int8FusedQKVAttention, Int8GPT2, Int8Linear, int8_decoder_config,
                               to_int8_decoder)


def test_int8_linear_matches_the_activation_simulation_not_weight_only():
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    x = torch.randn(5, 3, 64)
    fast = Int8Linear.from_linear(lin)
    assert (fast.in_features, fast.out_features) == (64, 48)
    sim = FakeQuantLinear(lin, QuantConfig(weight="int8", activations=True))(x)
    weight_only = FakeQuantLinear(lin, QuantConfig(weight="int8"))(x)
    y = fast(x)
    assert y.shape == (5, 3, 48)
    err_sim, err_wo = (y - sim).abs().max().item(), (y - weight_only).abs().max().item()
    assert err_sim < 1e-5, err_sim
    assert err_wo > 100 * err_sim  # the activation quantization is real, and simulated


@pytest.mark.parametrize("shape", [(64,), (1, 64), (1, 1, 64), (4, 64), (2, 3, 64), (3, 1, 64)])
def test_int8_linear_takes_any_leading_shape_and_quantizes_each_row_alone(shape):
    # One row goes straight to the kernel, several go row by row: both must keep the shape and each row's own
    # activation scale (a row scaled 50x beside small ones would round the small ones to zero on a shared scale).
    torch.manual_seed(1)
    lin = nn.Linear(64, 48)
    x = torch.randn(shape, dtype=torch.float64)
    x.view(-1, 64)[0] *= 50
    y = Int8Linear.from_linear(lin)(x)
    sim = FakeQuantLinear(lin, QuantConfig(weight="int8", activations=True))(x.float())
    assert y.dtype == torch.float32 and y.shape == shape[:-1] + (48,)
    assert (y - sim).abs().max().item() < 1e-4 * sim.abs().max().item()


def test_from_fake_quant_refuses_other_formats():
    fq = FakeQuantLinear(nn.Linear(32, 8), QuantConfig(weight="int4", group_size=16))
    with pytest.raises(ValueError, match="Int8Linear runs int8 weights; this layer simulates 'int4'"):
        Int8Linear.from_fake_quant(fq)


def test_int8_decoder_equals_fake_quant_model_and_generates_the_same_tokens():
    torch.manual_seed(0)
    config = GPT2Config.from_name("tiny", dropout=0.0)
    fq = ptq(GPT2(config), int8_decoder_config()).eval()
    dec = to_int8_decoder(fq)
    assert type(dec) is Int8GPT2 and isinstance(dec.h[0].attn, Int8FusedQKVAttention)
    assert isinstance(dec.h[0].attn.qkv, Int8Linear) and dec.h[0].attn.qkv.out_features == 3 * config.n_embd
    assert not hasattr(dec.h[0].attn, "query")
    assert isinstance(dec, Int8GPT2) and dec.int8_head.out_features == 50257
    ids = torch.randint(0, 50257, (2, 7))
    with torch.no_grad():
        h_fast, h_sim = dec(ids), fq(ids)  # fq's hidden states are already quantized for the head; dec's head
        torch.testing.assert_close(dec.lm_head(h_fast), fq.lm_head(h_sim), rtol=0, atol=1e-4)
        cols = torch.tensor([3, 99])  # a few columns: the float path over the same (quantized) table
        torch.testing.assert_close(dec.lm_head(h_fast, cols), fq.lm_head(h_sim, cols), rtol=0, atol=1e-4)
    prompts = [[464, 3290, 318], [40, 1101]]
    assert generate(dec, prompts, 12, eos_id=None) == generate(fq, prompts, 12, eos_id=None)
    assert isinstance(fq.h[0].attn.query, FakeQuantLinear)  # the source model is untouched


def test_stacked_int8_linear_equals_the_separate_layers_exactly():
    torch.manual_seed(0)
    layers = [nn.Linear(64, 64), nn.Linear(64, 64, bias=False), nn.Linear(64, 64)]
    x = torch.randn(4, 64)
    stacked = Int8Linear.stacked(layers)
    assert stacked.out_features == 192
    separate = torch.cat([Int8Linear.from_linear(layer)(x) for layer in layers], dim=-1)
    assert torch.equal(stacked(x), separate)  # one kernel call, the same numbers


def test_int8_decoder_of_a_lora_model_converts_the_wrapped_projections_one_by_one():
    from minigpt2.lora import LoRAConfig, LoRALinear, apply_lora

    torch.manual_seed(0)
    model = GPT2(GPT2Config.from_name("tiny", dropout=0.0)).eval()
    apply_lora(model, LoRAConfig(rank=2, alpha=4.0, targets="attn"))
    dec = to_int8_decoder(model)
    attn = dec.h[0].attn
    assert not isinstance(attn, Int8FusedQKVAttention)
    assert isinstance(attn.query, LoRALinear) and isinstance(attn.query.base, Int8Linear)
    assert len(generate(dec, [[464, 3290]], 4, eos_id=None)[0]) == 4
