"""`minigpt2.prepack`: the oneDNN-prepacked inference copy computes what the model computes."""

import pytest
import torch

from minigpt2 import GPT2, GPT2Config
from minigpt2.generate import generate
from minigpt2.lora import LoRALinear, apply_lora
from minigpt2.prepack import PackedHeadGPT2, PackedLinear, available, prepacked

pytestmark = pytest.mark.skipif(not available(), reason="this PyTorch build has no oneDNN")


def tiny(seed: int = 0) -> GPT2:
    torch.manual_seed(seed)
    return GPT2(GPT2Config.from_name("tiny", dropout=0.0)).eval()


def test_prepacked_copy_has_the_same_logits_and_greedy_tokens():
    model = tiny()
    fast = prepacked(model)
    assert isinstance(fast, PackedHeadGPT2) and isinstance(fast.h[0].mlp.c_fc, PackedLinear)
    assert type(model.h[0].mlp.c_fc) is torch.nn.Linear  # the source model is untouched
    ids = torch.randint(0, 50257, (3, 9))
    with torch.no_grad():
        torch.testing.assert_close(fast.logits(ids), model.logits(ids), rtol=1e-4, atol=1e-4)
        cols = torch.tensor([5, 50256])
        torch.testing.assert_close(fast.lm_head(fast(ids), cols), model.lm_head(model(ids), cols), rtol=1e-4,
                                   atol=1e-4)
    prompts = [[464, 3290, 318], [40]]
    assert generate(fast, prompts, 10, eos_id=None) == generate(model, prompts, 10, eos_id=None)


def test_prepacked_lora_model_packs_the_frozen_base_and_keeps_the_adapter():
    model = tiny()
    apply_lora(model, rank=4, alpha=8.0, targets="attn+mlp")
    for p in model.parameters():  # a trained-looking adapter, so that it changes the output
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    fast = prepacked(model)
    assert isinstance(fast.h[0].attn.query, LoRALinear) and isinstance(fast.h[0].attn.query.base, PackedLinear)
    ids = torch.randint(0, 50257, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(fast.logits(ids), model.logits(ids), rtol=1e-4, atol=1e-4)


def test_prepacked_refuses_a_non_fp32_model():
    with pytest.raises(ValueError, match="needs an fp32 model on the CPU, got torch.bfloat16"):
        prepacked(tiny().to(torch.bfloat16))


def test_prepacked_fake_quant_model_keeps_its_fake_quant_layers():
    from quant import FakeQuantLinear, QuantConfig, ptq

    model = ptq(tiny(), QuantConfig(weight="int8"))
    fast = prepacked(model)
    assert isinstance(fast.h[0].mlp.c_fc, FakeQuantLinear) and not isinstance(fast, PackedHeadGPT2)
    ids = torch.randint(0, 50257, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(fast.logits(ids), model.logits(ids), rtol=1e-5, atol=1e-5)


def test_without_onednn_prepacked_says_so_and_inference_copy_falls_back(monkeypatch):
    import minigpt2.prepack as prepack

    monkeypatch.setattr(prepack, "available", lambda: False)
    model = tiny()
    with pytest.raises(RuntimeError, match="no oneDNN linear kernels"):
        prepack.prepacked(model)
    assert prepack.inference_copy(model) is model
