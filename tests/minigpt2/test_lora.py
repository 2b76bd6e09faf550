"""LoRA: exact parameter counts, invariants (B = 0, merge, frozen base), adapter files across processes, errors."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from minigpt2 import GPT2, GPT2Config
from minigpt2.checkpoint import CheckpointError, save_model
from minigpt2.lora import (METADATA_KEY, LoRAConfig, LoRALinear, apply_lora, load_adapter, lora_modules,
                           lora_state_dict, mark_only_lora_trainable, merge_lora, save_adapter, unmerge_lora, without_lora)
from tests import ROOT
from tests.minigpt2.conftest import randomize_adapters

IDS = torch.tensor([[464, 2068, 7586, 21831, 18045, 625, 262, 16931], [40, 588, 11, 257, 3797, 13, 50256, 50256]])


def tiny(seed: int = 0, **overrides) -> GPT2:
    torch.manual_seed(seed)
    return GPT2(GPT2Config.from_name("tiny", **{"dropout": 0.0, **overrides})).eval()


# ------------------------------------------------------------------------------------------ parameter counts

def _table(targets: str) -> dict[int, int]:
    # Per layer: every C×C attention projection has r·(C + C) adapter weights, each MLP projection r·(C + 4C).
    C, L = 768, 12
    per_rank = L * (4 * 2 * C + (2 * 5 * C if targets == "attn+mlp" else 0))
    return {r: r * per_rank for r in (1, 2, 4, 8, 16, 32, 64, 128, 256)}


EXPECTED = {
    "attn+mlp": {1: 165_888, 2: 331_776, 4: 663_552, 8: 1_327_104, 16: 2_654_208, 32: 5_308_416,
                 64: 10_616_832, 128: 21_233_664, 256: 42_467_328},
    "attn": {1: 73_728, 2: 147_456, 4: 294_912, 8: 589_824, 16: 1_179_648, 32: 2_359_296, 64: 4_718_592,
             128: 9_437_184, 256: 18_874_368},
}


@pytest.mark.parametrize("targets", ["attn", "attn+mlp"])
def test_parameter_count_table_124m(targets):
    """The study's table: trainable LoRA parameters of the 124M model for ranks 1..256 (meta device: instant)."""
    assert EXPECTED[targets] == _table(targets)  # the written table is the formula
    with torch.device("meta"):  # shapes only, no memory; copies are cheaper than rebuilding
        base = GPT2(GPT2Config.from_name("gpt2"))
    base_total = base.num_parameters()
    assert base_total == 124_439_808
    for rank, expected in EXPECTED[targets].items():
        model = copy.deepcopy(base)
        report = apply_lora(model, LoRAConfig(rank=rank, alpha=16, targets=targets))
        assert (report.trainable, report.lora, report.total) == (expected, expected, base_total + expected)
        assert len(report.modules) == 12 * (6 if targets == "attn+mlp" else 4)
        assert model.num_parameters(trainable_only=True) == expected


def test_apply_lora_takes_every_setting_from_its_config():
    """rank, alpha, dropout, rslora reach each adapter layer; trainable keeps the head training; the model keeps
    the config (a list of targets or heads held as a tuple, equal to the one its adapter file reads back)."""
    model = tiny()
    model.head = nn.Linear(model.config.n_embd, 2)
    cfg = LoRAConfig(rank=3, alpha=5.0, targets=["attn.query"], dropout=0.25, rslora=True, trainable=["head"])
    apply_lora(model, cfg)
    layers = list(lora_modules(model).values())
    assert layers and all((m.r, m.scaling, m.dropout.p) == (3, 5.0 / 3 ** 0.5, 0.25) for m in layers)
    assert all(p.requires_grad for p in model.head.parameters())
    assert model.lora_config == cfg == LoRAConfig.from_dict(cfg.to_dict())
    assert (cfg.targets, cfg.trainable) == (("attn.query",), ("head",))


def test_targets_presets_and_lists():
    model = tiny()
    report = apply_lora(model, LoRAConfig(rank=2, alpha=4, targets=["attn.query", "value"]))
    assert report.modules == ["h.0.attn.query", "h.0.attn.value", "h.1.attn.query", "h.1.attn.value"]
    model = tiny()
    assert apply_lora(model, LoRAConfig(2, 4, targets="mlp.c_fc,mlp.c_proj")).modules == [
        "h.0.mlp.c_fc", "h.0.mlp.c_proj", "h.1.mlp.c_fc", "h.1.mlp.c_proj"]
    # "c_proj" is a suffix of both the attention output and the second MLP projection.
    assert len(apply_lora(tiny(), LoRAConfig(2, 4, targets=["c_proj"])).modules) == 4


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="unknown LoRA target 'attn.qkv'"):
        apply_lora(tiny(), LoRAConfig(4, 8, targets=["attn.qkv"]))
    with pytest.raises(ValueError, match="LoRA target 'mlp' selects 'h.0.mlp' \\(MLP\\), which is not a linear"):
        apply_lora(tiny(), LoRAConfig(4, 8, targets="mlp"))
    with pytest.raises(ValueError, match="rank 0: expected an integer >= 1"):
        apply_lora(tiny(), LoRAConfig(0, 8))
    with pytest.raises(ValueError, match="alpha -1.0: expected a finite number > 0"):
        apply_lora(tiny(), LoRAConfig(4, -1.0))
    with pytest.raises(ValueError, match=r"dropout 1.0: expected a fraction in \[0, 1\)"):
        apply_lora(tiny(), LoRAConfig(4, 8, dropout=1.0))
    with pytest.raises(ValueError, match="trainable module 'head' is not a module of GPT2"):
        apply_lora(tiny(), LoRAConfig(4, 8, trainable=["head"]))
    model = tiny()
    apply_lora(model, LoRAConfig(4, 8))
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        apply_lora(model, LoRAConfig(4, 8))
    with pytest.raises(TypeError, match="linear-like base"):
        LoRALinear(nn.LayerNorm(8), 2, 4)


# ------------------------------------------------------------------------------------------ invariants

def test_fresh_adapter_leaves_logits_unchanged():
    model = tiny()
    before = model.logits(IDS)
    apply_lora(model, LoRAConfig(rank=8, alpha=16, targets="attn+mlp", dropout=0.1))
    model.train()  # adapter dropout is active but touches only the adapter path, whose B is 0
    assert torch.equal(model.logits(IDS), before)


def test_forward_is_w_plus_scaled_ba():
    torch.manual_seed(0)
    linear = nn.Linear(16, 24)
    for rslora, scale in ((False, 6.0 / 4), (True, 6.0 / 2)):
        layer = LoRALinear(linear, r=4, alpha=6.0, rslora=rslora)
        nn.init.normal_(layer.lora_B)
        assert layer.scaling == scale
        x = torch.randn(3, 5, 16)
        ref = x @ (linear.weight + scale * layer.lora_B @ layer.lora_A).T + linear.bias
        torch.testing.assert_close(layer(x), ref, atol=1e-5, rtol=1e-5)


def test_dropout_only_on_the_adapter_path():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 16), r=4, alpha=4, dropout=0.5).train()
    nn.init.normal_(layer.lora_B)
    x = torch.randn(64, 16)
    torch.manual_seed(1)
    y = layer(x)
    torch.manual_seed(1)
    mask_x = layer.dropout(x)  # the same dropout draw
    torch.testing.assert_close(y, layer.base(x) + layer.scaling * mask_x @ layer.lora_A.T @ layer.lora_B.T)
    assert not torch.equal(y, layer.eval()(x))  # dropout really is on in training


def test_merge_unmerge():
    model = tiny()
    apply_lora(model, LoRAConfig(rank=4, alpha=8, targets="attn+mlp"))
    randomize_adapters(model)
    base_w = model.h[0].attn.query.base.weight.clone()
    unmerged = model.logits(IDS)
    assert (unmerged - tiny().logits(IDS)).abs().max() > 1e-3  # the adapters matter
    merge_lora(model)
    layer = model.h[0].attn.query
    torch.testing.assert_close(layer.base.weight, base_w + layer.delta_weight(), atol=0, rtol=0)
    merged_w = layer.base.weight.clone()
    merge_lora(model)  # idempotent
    assert torch.equal(layer.base.weight, merged_w)
    merged = model.logits(IDS)
    assert (merged - unmerged).abs().max() <= 1e-5
    unmerge_lora(model)
    unmerge_lora(model)  # idempotent
    torch.testing.assert_close(layer.base.weight, base_w, atol=1e-7, rtol=0)
    assert (model.logits(IDS) - unmerged).abs().max() <= 1e-5


class FakeQuantLinear(nn.Module):
    """A stand-in for quant.fake.FakeQuantLinear: computes with a rounded copy of the wrapped weight."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.base.weight.abs().amax(dim=1, keepdim=True) / 7
        return F.linear(x, torch.round(self.base.weight / scale).clamp(-8, 7) * scale, self.base.bias)


def test_lora_on_a_fake_quant_base_trains_but_refuses_to_merge():
    torch.manual_seed(0)
    fq = FakeQuantLinear(nn.Linear(16, 8))
    layer = LoRALinear(fq, r=2, alpha=4)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(4, 16)
    torch.testing.assert_close(layer(x), fq(x) + 2.0 * x @ layer.lora_A.T @ layer.lora_B.T)
    assert not layer.mergeable
    with pytest.raises(TypeError, match="cannot merge LoRA into a FakeQuantLinear base"):
        layer.merge()
    assert not layer.merged


def test_lora_wraps_the_outermost_module_of_a_wrapped_projection():
    model = tiny()
    for block in model.h:
        block.attn.query = FakeQuantLinear(block.attn.query)
    apply_lora(model, LoRAConfig(rank=2, alpha=4, targets=["attn.query"]))
    assert isinstance(model.h[0].attn.query, LoRALinear)
    assert isinstance(model.h[0].attn.query.base, FakeQuantLinear)


def test_only_adapters_and_head_train_and_base_is_bit_identical():
    model = tiny(dropout=0.1).train()
    model.head = nn.Linear(model.config.n_embd, 3)  # a task head, trained in full
    apply_lora(model, LoRAConfig(rank=4, alpha=8, targets="attn+mlp", dropout=0.1, trainable=["head"]))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert set(trained) == set(lora_state_dict(model)) and {"head.weight", "head.bias"} <= set(trained)
    assert all(n.endswith(("lora_A", "lora_B")) or n.startswith("head.") for n in trained)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for _ in range(2):
        logits = model.head(model(IDS)[:, -1])
        F.cross_entropy(logits, torch.tensor([0, 2])).backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
    for n, p in model.named_parameters():
        if n in frozen:
            assert p.grad is None, n
            assert torch.equal(p, frozen[n]), f"frozen {n} changed"
        else:
            assert p.grad is not None, n
            assert not torch.equal(p, trained[n]), f"trainable {n} did not move"
    assert mark_only_lora_trainable(model) == sum(p.numel() for n, p in trained.items() if "lora_" in n)


# ------------------------------------------------------------------------------------------ adapter files

CHILD = """
import sys, torch
from safetensors.torch import save_file
from minigpt2.checkpoint import load_model
from minigpt2.lora import load_adapter
torch.set_num_threads(int(sys.argv[4]))
model = load_model(sys.argv[1]).eval()
print(load_adapter(model, sys.argv[2]))
ids = torch.tensor({ids})
logits = model.logits(ids)
save_file({{"logits": logits, "pred": logits.argmax(-1)}}, sys.argv[3])
"""


@pytest.mark.command
def test_adapter_reloads_in_a_new_process(tmp_path):
    """A saved adapter + the base checkpoint reproduce this process's predictions exactly in another process."""
    base = tiny()
    save_model(base, tmp_path / "base")
    model = tiny()
    apply_lora(model, LoRAConfig(rank=4, alpha=8, targets="attn+mlp", rslora=True))
    randomize_adapters(model)
    path = save_adapter(model, tmp_path / "adapter.safetensors")
    with torch.no_grad():
        logits = model.logits(IDS)
    meta = json.loads(safe_open(str(path), "pt").metadata()[METADATA_KEY])
    assert meta["rank"] == 4 and meta["targets"] == "attn+mlp" and meta["rslora"] is True
    out = tmp_path / "pred.safetensors"
    proc = subprocess.run([sys.executable, "-c", CHILD.format(ids=IDS.tolist()), str(tmp_path / "base"), str(path),
                           str(out), str(torch.get_num_threads())], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "LoRA on 12 modules" in proc.stdout
    child = load_file(str(out))
    assert torch.equal(child["pred"], logits.argmax(-1))
    assert torch.equal(child["logits"], logits)


def test_adapter_with_head_round_trip(tmp_path):
    model = tiny()
    model.head = nn.Linear(32, 2)
    apply_lora(model, LoRAConfig(rank=2, alpha=4, trainable=["head"]))
    randomize_adapters(model)
    save_adapter(model, tmp_path / "a.safetensors")
    fresh = tiny()
    fresh.head = nn.Linear(32, 2)
    report = load_adapter(fresh, tmp_path / "a.safetensors")
    assert report.trainable == model.num_parameters(trainable_only=True)
    for k, v in lora_state_dict(model).items():
        assert torch.equal(lora_state_dict(fresh)[k], v), k
    assert torch.equal(fresh.head(fresh(IDS)), model.head(model(IDS)))


def _adapter(tmp_path: Path, **kw) -> Path:
    model = tiny()
    apply_lora(model, LoRAConfig(**{"rank": 4, "alpha": 8, "targets": "attn", **kw}))
    return save_adapter(model, tmp_path / "adapter.safetensors")


def _rewrite(path: Path, tensors=None, meta=None) -> Path:
    with safe_open(str(path), "pt") as f:
        old_meta = f.metadata()
    save_file(tensors if tensors is not None else load_file(str(path)), str(path),
              metadata=meta if meta is not None else old_meta)
    return path


def test_bad_adapter_files_give_clear_errors(tmp_path):
    path = _adapter(tmp_path)
    name = str(path)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match=f"{garbage}: not a valid safetensors file"):
        load_adapter(tiny(), garbage)
    with pytest.raises(CheckpointError, match="refusing to load a pickled checkpoint"):
        load_adapter(tiny(), tmp_path / "adapter.bin")

    # A model checkpoint is not an adapter.
    save_model(tiny(), tmp_path / "base")
    with pytest.raises(CheckpointError, match=f"model.safetensors: no LoRA settings .*key '{METADATA_KEY}'"):
        load_adapter(tiny(), tmp_path / "base" / "model.safetensors")

    tensors = load_file(name)
    _rewrite(path, meta={METADATA_KEY: "{rank: 4"})
    with pytest.raises(CheckpointError, match=f"{name}: metadata key '{METADATA_KEY}' is not valid JSON"):
        load_adapter(tiny(), path)
    _rewrite(path, meta={METADATA_KEY: json.dumps({"format_version": 1, "rank": 0, "alpha": 8,
                                                    "targets": "attn"})})
    with pytest.raises(CheckpointError, match=f"{name}: .*invalid LoRA settings.*rank 0: expected an integer"):
        load_adapter(tiny(), path)

    # Missing and unexpected keys, wrong shapes: each names the file and the key.
    good = _adapter(tmp_path)
    tensors = load_file(name)
    meta = safe_open(name, "pt").metadata()
    del tensors["h.1.attn.key.lora_B"]
    _rewrite(path, tensors, meta)
    with pytest.raises(CheckpointError, match=rf"{name}: .*missing key\(s\) \['h.1.attn.key.lora_B'\]"):
        load_adapter(tiny(), path)
    tensors = load_file(str(_adapter(tmp_path)))
    tensors["h.0.attn.qkv.lora_A"] = torch.zeros(4, 32)
    _rewrite(path, tensors, meta)
    with pytest.raises(CheckpointError, match=rf"unexpected key\(s\) \['h.0.attn.qkv.lora_A'\]"):
        load_adapter(tiny(), path)
    tensors = load_file(str(_adapter(tmp_path)))
    tensors["h.0.attn.value.lora_A"] = torch.zeros(4, 16)
    _rewrite(path, tensors, meta)
    with pytest.raises(CheckpointError, match=rf"{name}: key 'h.0.attn.value.lora_A' has shape \(4, 16\), "
                                              r"the model expects \(4, 32\)"):
        load_adapter(tiny(), path)
    # An adapter for a bigger model.
    with pytest.raises(CheckpointError, match=rf"{name}: key 'h.0.attn.query.lora_A' has shape \(4, 32\), "
                                              r"the model expects \(4, 64\)"):
        load_adapter(tiny(n_embd=64), _adapter(tmp_path))
    # Settings that differ from adapters already on the model.
    model = tiny()
    apply_lora(model, LoRAConfig(rank=8, alpha=8, targets="attn"))
    with pytest.raises(CheckpointError, match=rf"{name}: adapter settings differ .*'rank': \(4, 8\)"):
        load_adapter(model, good)
    assert good == path


def test_save_without_lora_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="has no LoRA adapters to save"):
        save_adapter(tiny(), tmp_path / "a.safetensors")


def test_without_lora_restores_the_plain_model_temporarily():
    model = tiny()
    before = model.logits(IDS)
    apply_lora(model, LoRAConfig(rank=2, alpha=4, targets="attn+mlp"))
    randomize_adapters(model)
    with_adapters = model.logits(IDS)
    with without_lora(model):
        assert not any("lora_" in k for k in model.state_dict())
        assert torch.equal(model.logits(IDS), before)
    assert torch.equal(model.logits(IDS), with_adapters)
    merge_lora(model)
    with pytest.raises(ValueError, match="needs unmerged adapters"):
        with without_lora(model):
            pass
