"""Fake-quant layers and `quantize_model`: identity when disabled, exact quantized compute, gradients, LoRA on top."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from minigpt2.config import GPT2Config
from minigpt2.model import GPT2
from quant import (FakeQuantEmbedding, FakeQuantLinear, QuantConfig, apply_precision, bake, fake_quantize, ptq,
                   quantize_model, set_quant_enabled, remove_fake_quant)
from quant.fake import FakeQuantLayerNorm


def tiny(**kw) -> GPT2:
    torch.manual_seed(0)
    return GPT2(GPT2Config.from_name("tiny", vocab_size=96, n_positions=32, dropout=0.0, **kw)).eval()


IDS = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(1))


def test_fake_quant_linear_computes_with_the_quantized_weight_and_keeps_base():
    lin = nn.Linear(32, 16)
    fq = FakeQuantLinear(lin, QuantConfig(weight="int4", group_size=16))
    assert fq.weight is lin.weight and fq.bias is lin.bias and fq.in_features == 32 and fq.out_features == 16
    plain = fq.to_plain()
    assert type(plain) is nn.Linear and plain.weight is lin.weight and plain.bias is lin.bias
    x = torch.randn(3, 5, 32)
    assert torch.equal(fq(x), F.linear(x, fake_quantize(lin.weight, "int4", 16), lin.bias))
    assert not torch.equal(fq(x), lin(x))
    fq.enabled = False
    assert torch.equal(fq(x), lin(x))  # disabled: exactly the wrapped layer


def test_group_size_error_names_the_layer():
    model = tiny()
    with pytest.raises(ValueError, match=r"h\.0\.attn\.query: INT4 group_size=64 does not divide in_features=32"):
        quantize_model(model, QuantConfig(weight="int4", group_size=64, embeddings=False))
    assert not any(isinstance(m, FakeQuantLinear) for m in model.modules())  # nothing half-wrapped


def test_quantize_model_wraps_every_linear_and_embeddings_and_is_idempotent():
    model = quantize_model(tiny(), QuantConfig(weight="int8", activations=True))
    wrapped = {n for n, m in model.named_modules() if isinstance(m, FakeQuantLinear)}
    assert len(wrapped) == 2 * 6 and "h.1.attn.value" in wrapped
    assert isinstance(model.wte, FakeQuantEmbedding) and isinstance(model.wpe, FakeQuantEmbedding)
    assert isinstance(model.ln_f, FakeQuantLayerNorm)  # the tied head's input
    before = str(model)
    quantize_model(model, QuantConfig(weight="int8", activations=True))
    assert str(model) == before


def test_disabled_model_is_exactly_the_original_and_remove_fake_quant_restores_it():
    ref = tiny()
    model = quantize_model(copy.deepcopy(ref), QuantConfig(weight="int4", group_size=16, activations=True))
    assert not torch.equal(model.logits(IDS), ref.logits(IDS))
    set_quant_enabled(model, False)
    assert torch.equal(model.logits(IDS), ref.logits(IDS))
    set_quant_enabled(model, True)
    remove_fake_quant(model)
    assert torch.equal(model.logits(IDS), ref.logits(IDS))
    assert set(model.state_dict()) == set(ref.state_dict())


def test_tied_head_and_lookup_use_the_quantized_table():
    model = quantize_model(tiny(), QuantConfig(weight="int8"))
    table = fake_quantize(model.wte.latent_weight, "int8")
    assert torch.equal(model.wte.weight, table)
    assert torch.equal(model.wte(IDS), table[IDS])  # row-wise: quantizing gathered rows = gathering quantized rows
    h = model(IDS)
    assert torch.equal(model.lm_head(h), F.linear(h, table))


def test_bake_keeps_outputs_and_leaves_plain_modules():
    model = ptq(tiny(), QuantConfig(weight="fp8_e4m3"))
    before = model.logits(IDS)
    bake(model)
    assert not any(isinstance(m, (FakeQuantLinear, FakeQuantEmbedding)) for m in model.modules())
    assert torch.equal(model.logits(IDS), before)


def test_qaft_gradients_reach_the_full_precision_weights():
    model = quantize_model(tiny(), QuantConfig(weight="int4", group_size=16, activations=True))
    model.logits(IDS).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_apply_precision_casts_or_wraps():
    assert apply_precision(tiny(), "bf16").wte.weight.dtype == torch.bfloat16
    assert apply_precision(tiny(), "fp64").h[0].attn.query.weight.dtype == torch.float64
    m = apply_precision(tiny(), "int4", QuantConfig(weight="int4", group_size=16))
    assert m.h[0].mlp.c_fc.cfg.group_size == 16
    with pytest.raises(ValueError, match="precision 'int2'"):
        apply_precision(tiny(), "int2")
    with pytest.raises(ValueError, match="simulates weight='int8', but cfg has 'int4'"):
        apply_precision(tiny(), "int8", QuantConfig(weight="int4"))


def test_lora_on_a_fake_quant_base():
    """Quantized frozen base + high-precision adapter: LoRA wraps the FakeQuantLinear (fake-quant first)."""
    lora = pytest.importorskip("minigpt2.lora")
    model = quantize_model(tiny(), QuantConfig(weight="int4", group_size=16))
    before = model.logits(IDS)
    lora.apply_lora(model, lora.LoRAConfig(rank=4, alpha=8, targets=["attn.query", "attn.value"]))
    lora.mark_only_lora_trainable(model)
    layer = model.h[0].attn.query
    assert isinstance(layer, lora.LoRALinear) and isinstance(layer.base, FakeQuantLinear)
    assert torch.equal(model.logits(IDS), before)  # B = 0: the quantized base's output
    model.logits(IDS).square().mean().backward()
    assert layer.lora_A.grad is not None and layer.base.weight.grad is None


def test_fake_quant_keeps_the_plain_state_dict_keys_and_parameters():
    ref = tiny()
    params = dict(ref.named_parameters())
    model = quantize_model(ref, QuantConfig(weight="int8", activations=True))
    assert isinstance(model.h[0].attn.query, FakeQuantLinear) and isinstance(model.wte, FakeQuantEmbedding)
    assert list(model.state_dict()) == list(tiny().state_dict())  # no `.base.` anywhere
    assert all(p is params[n] for n, p in model.named_parameters())  # the same objects: an optimizer keeps them
    saved = model.state_dict()["wte.weight"]
    assert torch.equal(saved, model.wte.latent_weight) and not torch.equal(saved, model.wte.weight)  # full precision
    fresh = quantize_model(tiny(), QuantConfig(weight="int8", activations=True))
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.logits(IDS), model.logits(IDS))
