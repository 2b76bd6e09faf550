"""Parity with `transformers` + `peft`: same base weights and the same A/B matrices give the same logits.

HF fuses query, key and value into one Conv1D `c_attn` (C -> 3C) and `peft` puts one adapter on the whole module.
minigpt2's three per-projection adapters of rank r are exactly one `c_attn` adapter of rank 3r with

    A = [A_q; A_k; A_v]            (3r × C)
    B = blockdiag(B_q, B_k, B_v)   (3C × 3r)

because B A x = [B_q A_q x; B_k A_k x; B_v A_v x]. The scale must stay alpha/r, so c_attn gets rank 3r and alpha
3·alpha (alpha·sqrt(3) with rsLoRA) through peft's `rank_pattern` / `alpha_pattern`. The other projections map
one to one (peft's lora_A/lora_B are nn.Linear weights, (r, in) and (out, r), like ours).
"""

from __future__ import annotations

import math

import pytest
import torch

from minigpt2 import GPT2, GPT2Config
from minigpt2.checkpoint import hf_to_minigpt2
from minigpt2.lora import LoRAConfig, apply_lora

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers deprecation notes
IDS = torch.tensor([[464, 2068, 7586, 21831, 18045, 625, 262, 16931], [40, 588, 11, 257, 3797, 13, 198, 50256]])


def models(rank: int, alpha: float, targets: str, rslora: bool):
    torch.manual_seed(0)
    config = GPT2Config.from_name("tiny", dropout=0.0)
    hf_config = transformers.GPT2Config(**{k: v for k, v in config.to_hf_dict().items()
                                           if k not in ("model_type", "architectures")})
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    ours = GPT2(config)
    ours.load_state_dict(hf_to_minigpt2(hf.state_dict(), config), strict=True)
    ours.eval()
    apply_lora(ours, LoRAConfig(rank=rank, alpha=alpha, targets=targets, rslora=rslora))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)

    modules = ["c_attn", "attn.c_proj"] + (["mlp.c_fc", "mlp.c_proj"] if targets == "attn+mlp" else [])
    lora_config = peft.LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=modules, lora_dropout=0.0, fan_in_fan_out=True,
        use_rslora=rslora, rank_pattern={"c_attn": 3 * rank},
        alpha_pattern={"c_attn": alpha * (math.sqrt(3) if rslora else 3)})
    peft_model = peft.get_peft_model(hf, lora_config).eval()
    blocks = peft_model.base_model.model.transformer.h
    with torch.no_grad():
        for i, block in enumerate(ours.h):
            c_attn = blocks[i].attn.c_attn
            assert c_attn.scaling["default"] == pytest.approx(block.attn.query.scaling)
            qkv = [getattr(block.attn, n) for n in ("query", "key", "value")]
            c_attn.lora_A["default"].weight.copy_(torch.cat([m.lora_A for m in qkv]))
            c_attn.lora_B["default"].weight.copy_(torch.block_diag(*[m.lora_B for m in qkv]))
            pairs = [(blocks[i].attn.c_proj, block.attn.c_proj)]
            if targets == "attn+mlp":
                pairs += [(blocks[i].mlp.c_fc, block.mlp.c_fc), (blocks[i].mlp.c_proj, block.mlp.c_proj)]
            for theirs, mine in pairs:
                assert theirs.scaling["default"] == pytest.approx(mine.scaling)
                theirs.lora_A["default"].weight.copy_(mine.lora_A)
                theirs.lora_B["default"].weight.copy_(mine.lora_B)
    return ours, peft_model


@pytest.mark.parametrize("targets,rslora", [("attn+mlp", False), ("attn", False), ("attn+mlp", True)])
def test_logits_match_peft(targets, rslora):
    ours, theirs = models(rank=4, alpha=8.0, targets=targets, rslora=rslora)
    with torch.no_grad():
        mine = ours.logits(IDS)
        ref = theirs(input_ids=IDS).logits
        base = theirs.get_base_model()
        with theirs.disable_adapter():
            plain = base(input_ids=IDS).logits
    assert (ref - plain).abs().max() > 1e-2, "the adapters must change the logits, or the test proves nothing"
    diff = (mine - ref).abs().max().item()
    assert diff <= 1e-4, f"max |minigpt2 - peft| = {diff:.3g}"


def test_gradients_match_peft():
    """Training sees the same function: gradients of A and B agree too (the c_attn ones block by block)."""
    ours, theirs = models(rank=4, alpha=8.0, targets="attn+mlp", rslora=False)
    ours.lm_head(ours(IDS)).logsumexp(-1).mean().backward()
    theirs(input_ids=IDS).logits.logsumexp(-1).mean().backward()
    C, r = ours.config.n_embd, 4
    for i, block in enumerate(ours.h):
        c_attn = theirs.base_model.model.transformer.h[i].attn.c_attn
        gA, gB = c_attn.lora_A["default"].weight.grad, c_attn.lora_B["default"].weight.grad
        for j, name in enumerate(("query", "key", "value")):
            m = getattr(block.attn, name)
            torch.testing.assert_close(m.lora_A.grad, gA[j * r:(j + 1) * r], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(m.lora_B.grad, gB[j * C:(j + 1) * C, j * r:(j + 1) * r], atol=1e-5, rtol=1e-4)
        mlp = theirs.base_model.model.transformer.h[i].mlp
        for theirs_m, mine in ((mlp.c_fc, block.mlp.c_fc), (mlp.c_proj, block.mlp.c_proj)):
            torch.testing.assert_close(mine.lora_A.grad, theirs_m.lora_A["default"].weight.grad, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(mine.lora_B.grad, theirs_m.lora_B["default"].weight.grad, atol=1e-5, rtol=1e-4)
