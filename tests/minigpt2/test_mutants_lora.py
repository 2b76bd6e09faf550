"""minigpt2.lora pinned where one-line slips show: parameter counts and the report's line worked out by hand (a toy
model of width 3 and MLP width 5, so attention and MLP projections count differently; GPT-2 124M on the meta
device for the study's 42.5M), the adapter's init, forward, scale and merge against formulas written out, every
refusal's whole line, the adapter file's keys and metadata, and the settings' defaults and help lines."""

from __future__ import annotations

import copy
import json
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from minigpt2 import GPT2, GPT2Config
from minigpt2.checkpoint import CheckpointError
from minigpt2.errors import FieldError
from minigpt2.lora import (ADAPTER_FORMAT, METADATA_KEY, TARGET_PRESETS, LoRAConfig, LoRALinear, LoRAReport,
                           LoraSettingsError, apply_lora, find_targets, load_adapter, lora_modules, lora_report,
                           lora_state_dict, mark_only_lora_trainable, merge_lora, read_adapter_config, save_adapter,
                           target_suffixes, unmerge_lora, without_lora)
from tests.minigpt2.conftest import randomize_adapters

C, FF = 3, 5  # the toy's width and MLP width: distinct, so an attention slip and an MLP slip count differently


class Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value, self.c_proj = (nn.Linear(C, C) for _ in range(4))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c_fc, self.c_proj = nn.Linear(C, FF), nn.Linear(FF, C)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn, self.mlp = Attn(), MLP()


class Toy(nn.Module):
    """Names as in minigpt2.model: h.<i>.attn.{query,key,value,c_proj}, h.<i>.mlp.{c_fc,c_proj}.

    Parameters: embedding 7 x 3 = 21; per block attention 4 x (3*3 + 3) = 48, c_fc 3*5 + 5 = 20, c_proj 5*3 + 3
    = 18, so 86; two blocks 172; total 193.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.wte = nn.Embedding(7, C)
        self.h = nn.ModuleList([Block(), Block()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.h:
            a = b.attn
            x = x + a.c_proj(a.query(x) * a.key(x) + a.value(x))
            x = x + b.mlp.c_proj(torch.tanh(b.mlp.c_fc(x)))
        return x


TOY_TOTAL = 193
X = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]])


def lines_of(excinfo) -> str:
    return str(excinfo.value)


# ---- settings -------------------------------------------------------------------------------------------------
def test_config_defaults_and_help_lines():
    cfg = LoRAConfig()
    assert (cfg.rank, cfg.alpha, cfg.targets, cfg.dropout, cfg.rslora, cfg.trainable) == (8, 16.0, "attn", 0.0,
                                                                                         False, ())
    # what `--help` prints for the --lora-* flags
    helps = {f.name: f.metadata.get("help") for f in fields(LoRAConfig)}
    assert helps == {
        "rank": "LoRA rank r",
        "alpha": "LoRA alpha; the adapter output is scaled by alpha/r",
        "targets": "attn (query, key, value, output projection), attn+mlp (also mlp.c_fc, mlp.c_proj), or "
                   "comma-separated module names, e.g. attn.query,attn.value",
        "dropout": "dropout on the adapters' input",
        "rslora": None, "trainable": None}
    assert TARGET_PRESETS == {
        "attn": ("attn.query", "attn.key", "attn.value", "attn.c_proj"),
        "attn+mlp": ("attn.query", "attn.key", "attn.value", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}


def test_config_to_dict_and_back_keeps_every_field_and_lists_become_tuples():
    cfg = LoRAConfig(rank=3, alpha=5, targets=["attn.query", "mlp.c_fc"], dropout=0.25, rslora=True,
                     trainable=["head"])
    assert (cfg.targets, cfg.trainable) == (("attn.query", "mlp.c_fc"), ("head",))
    assert cfg.to_dict() == {"rank": 3, "alpha": 5, "targets": ["attn.query", "mlp.c_fc"], "dropout": 0.25,
                             "rslora": True, "trainable": ["head"]}
    assert LoRAConfig.from_dict(cfg.to_dict()) == cfg
    assert hash(cfg) == hash(LoRAConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))))
    preset = LoRAConfig(targets="attn+mlp", trainable=(n for n in ["head"]))
    assert preset.targets == "attn+mlp" and preset.trainable == ("head",)
    assert preset.to_dict()["targets"] == "attn+mlp"
    # a record without the optional keys gets their defaults
    short = LoRAConfig.from_dict({"rank": 2, "alpha": 4.0, "targets": ["attn.value"]})
    assert (short.rank, short.alpha, short.targets, short.dropout, short.rslora, short.trainable) == (
        2, 4.0, ("attn.value",), 0.0, False, ())


@pytest.mark.parametrize("kw,line", [
    ({"rank": 0}, "rank 0: expected an integer >= 1"),
    ({"rank": True}, "rank True: expected an integer >= 1"),
    ({"rank": 2.0}, "rank 2.0: expected an integer >= 1"),
    ({"alpha": 0}, "alpha 0: expected a finite number > 0"),
    ({"alpha": True}, "alpha True: expected a finite number > 0"),
    ({"alpha": "16"}, "alpha '16': expected a finite number > 0"),
    ({"alpha": float("inf")}, "alpha inf: expected a finite number > 0"),
    ({"alpha": float("nan")}, "alpha nan: expected a finite number > 0"),
    ({"dropout": -0.1}, "dropout -0.1: expected a fraction in [0, 1)"),
    ({"dropout": 1.0}, "dropout 1.0: expected a fraction in [0, 1)"),
    ({"dropout": "0.1"}, "dropout '0.1': expected a fraction in [0, 1)"),
    ({"rslora": "false"}, "rslora 'false': expected true or false"),
    ({"rslora": 1}, "rslora 1: expected true or false"),
    ({"rank": 0, "alpha": 0, "dropout": 2.0}, "rank 0: expected an integer >= 1"),  # the first field named
    ({"alpha": -1, "dropout": 2.0}, "alpha -1: expected a finite number > 0"),
    ({"dropout": 2.0, "rslora": "no"}, "dropout 2.0: expected a fraction in [0, 1)"),
    ({"targets": []}, "targets []: expected a preset ['attn', 'attn+mlp'] or a non-empty list of module names "
                      "(e.g. ['attn.query', 'attn.value'])"),
])
def test_each_bad_setting_is_one_line_naming_its_field(kw, line):
    with pytest.raises(FieldError) as e:
        LoRAConfig(**kw)
    assert str(e.value) == line


def test_settings_at_their_limits_are_accepted():
    for kw in ({"rank": 1}, {"alpha": 1e-9}, {"alpha": 3}, {"dropout": 0.0}, {"dropout": 0}, {"dropout": 0.999},
               {"rslora": True}):
        LoRAConfig(**kw)
    layer = LoRALinear(nn.Linear(2, 2), r=1, alpha=1e-9, dropout=0.999)
    assert layer.r == 1 and layer.dropout.p == 0.999


@pytest.mark.parametrize("targets,expected", [
    ("attn", TARGET_PRESETS["attn"]),
    ("attn+mlp", TARGET_PRESETS["attn+mlp"]),
    ("attn.query", ("attn.query",)),
    ("attn.query, mlp.c_fc ,value", ("attn.query", "mlp.c_fc", "value")),
    (["attn.key", "c_proj"], ("attn.key", "c_proj")),
    (("mlp.c_fc",), ("mlp.c_fc",)),
])
def test_target_suffixes(targets, expected):
    assert target_suffixes(targets) == expected


@pytest.mark.parametrize("targets,shown", [
    ("", "['']"), ("attn,", "['attn', '']"), ("attn.query, attn", "['attn.query', 'attn']"),
    (["attn.query", "attn+mlp"], "['attn.query', 'attn+mlp']"), (["attn.query", 3], "['attn.query', 3]"),
    ([], "[]"), (["attn.query", ""], "['attn.query', '']"),
])
def test_bad_targets_are_refused_with_the_list_as_read(targets, shown):
    with pytest.raises(FieldError) as e:
        target_suffixes(targets)
    assert str(e.value) == (f"targets {shown}: expected a preset ['attn', 'attn+mlp'] or a non-empty list of "
                            "module names (e.g. ['attn.query', 'attn.value'])")


def test_from_dict_refusals_name_the_source_and_the_keys():
    with pytest.raises(CheckpointError) as e:
        LoRAConfig.from_dict([4, 8])
    assert str(e.value) == "adapter: LoRA settings must be a JSON object, got list"
    with pytest.raises(CheckpointError) as e:
        LoRAConfig.from_dict({"rank": 4, "lr": 1, "extra": 2, "dropout": 0.0}, source="f.json")
    assert str(e.value) == ("f.json: LoRA settings have missing key(s) ['alpha', 'targets'] / unknown key(s) "
                            "['extra', 'lr']; expected rank, alpha, targets, dropout, rslora, trainable")
    for key in ("rank", "alpha", "targets"):
        d = {"rank": 4, "alpha": 8, "targets": "attn"}
        del d[key]
        with pytest.raises(CheckpointError, match=rf"missing key\(s\) \['{key}'\] / unknown key\(s\) \[\]"):
            LoRAConfig.from_dict(d)
    with pytest.raises(CheckpointError) as e:
        LoRAConfig.from_dict({"rank": 4, "alpha": 8, "targets": "attn", "rslora": "false"}, source="s")
    assert str(e.value) == ("s: invalid LoRA settings {'rank': 4, 'alpha': 8, 'targets': 'attn', 'rslora': "
                            "'false'}: rslora 'false': expected true or false")
    with pytest.raises(CheckpointError) as e:
        LoRAConfig.from_dict({"rank": 4, "alpha": 8, "targets": 5})
    assert str(e.value).startswith("adapter: invalid LoRA settings {'rank': 4, 'alpha': 8, 'targets': 5}: ")


# ---- the adapter layer ------------------------------------------------------------------------------------------
def test_a_base_without_integer_sizes_is_refused_with_both_values():
    with pytest.raises(TypeError) as e:
        LoRALinear(nn.LayerNorm(8), 2, 4)
    assert str(e.value) == ("LoRA needs a linear-like base with integer `in_features`/`out_features`; LayerNorm "
                            "has in_features=None, out_features=None")

    class HalfLinear(nn.Module):
        in_features, out_features = 4, 2.0

    with pytest.raises(TypeError, match="HalfLinear has in_features=4, out_features=2.0$"):
        LoRALinear(HalfLinear(), 2, 4)

    class OtherHalf(nn.Module):
        in_features, out_features = "4", 2

    with pytest.raises(TypeError, match="OtherHalf has in_features='4', out_features=2$"):
        LoRALinear(OtherHalf(), 2, 4)
    with pytest.raises(FieldError, match="^rank 0: expected an integer >= 1$"):
        LoRALinear(nn.Linear(2, 2), 0, 4)


def test_layer_settings_scale_and_repr():
    base = nn.Linear(9, 6)
    # scaling = alpha / r = 6 / 4 = 1.5; rsLoRA: alpha / sqrt(r) = 6 / 2 = 3
    plain = LoRALinear(base, r=4, alpha=6)
    rs = LoRALinear(base, r=4, alpha=6, rslora=True)
    assert (plain.r, plain.alpha, plain.scaling, plain.rslora, plain.merged) == (4, 6.0, 1.5, False, False)
    assert (rs.scaling, rs.rslora) == (3.0, True)
    assert type(plain.alpha) is float and type(plain.r) is int
    assert (plain.in_features, plain.out_features) == (9, 6)
    assert plain.extra_repr() == ("in_features=9, out_features=6, r=4, alpha=6, scaling=1.5, rslora=False, "
                                  "merged=False")
    assert rs.extra_repr() == "in_features=9, out_features=6, r=4, alpha=6, scaling=3, rslora=True, merged=False"
    # r = 9, alpha 4.5: alpha / r = 0.5, alpha / sqrt(r) = 1.5
    assert LoRALinear(base, r=9, alpha=4.5).scaling == 0.5
    assert LoRALinear(base, r=9, alpha=4.5, rslora=True).scaling == 1.5
    assert isinstance(plain.dropout, nn.Identity)
    d = LoRALinear(base, r=2, alpha=2, dropout=0.25).dropout
    assert isinstance(d, nn.Dropout) and d.p == 0.25
    assert (tuple(plain.lora_A.shape), tuple(plain.lora_B.shape)) == ((4, 9), (6, 4))


def test_init_is_kaiming_uniform_a_sqrt5_for_a_and_zero_for_b():
    base = nn.Linear(9, 6)
    torch.manual_seed(7)
    layer = LoRALinear(base, r=4, alpha=8)
    # Kaiming-uniform with a = sqrt(5): gain sqrt(2 / (1 + 5)) = sqrt(1/3); bound gain * sqrt(3 / fan_in) =
    # 1 / sqrt(fan_in) = 1/3 for 9 inputs (nn.Linear's own weight init; peft's for lora_A)
    torch.manual_seed(7)
    expected = torch.empty(4, 9).uniform_(-1 / 3, 1 / 3)
    torch.testing.assert_close(layer.lora_A.detach(), expected, atol=1e-6, rtol=0)
    assert torch.equal(layer.lora_B.detach(), torch.zeros(6, 4))
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad


def test_adapters_take_the_base_device_and_float_dtype():
    assert LoRALinear(nn.Linear(3, 2).double(), 2, 4).lora_A.dtype == torch.float64
    assert LoRALinear(nn.Linear(3, 2, bias=False).half(), 2, 4).lora_B.dtype == torch.float16
    meta = LoRALinear(nn.Linear(3, 2, device="meta"), 2, 4)
    assert meta.lora_A.device.type == "meta" and meta.lora_B.device.type == "meta"

    class Packed(nn.Module):  # a packed base: integer codes first, then a float scale
        in_features, out_features = 3, 2

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("codes", torch.zeros(2, 3, dtype=torch.int8))
            self.register_buffer("scale", torch.ones(2, dtype=torch.bfloat16))

    layer = LoRALinear(Packed(), 2, 4)
    assert (layer.lora_A.dtype, layer.lora_B.dtype) == (torch.bfloat16, torch.bfloat16)

    class Bare(nn.Module):  # no tensors at all: the defaults
        in_features, out_features = 3, 2

    layer = LoRALinear(Bare(), 2, 4)
    assert (layer.lora_A.dtype, layer.lora_A.device.type) == (torch.float32, "cpu")


def test_forward_and_delta_weight_by_hand():
    base = nn.Linear(2, 2)
    with torch.no_grad():
        base.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        base.bias.copy_(torch.tensor([0.5, -0.5]))
    layer = LoRALinear(base, r=2, alpha=3)  # scaling 1.5
    with torch.no_grad():
        layer.lora_A.copy_(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
        layer.lora_B.copy_(torch.tensor([[1.0, 0.0], [2.0, -1.0]]))
    # B A = [[1, 2], [2, 3]]; scaled: [[1.5, 3], [3, 4.5]]
    assert torch.equal(layer.delta_weight(), torch.tensor([[1.5, 3.0], [3.0, 4.5]]))
    x = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    # W x + b = [1.5, 0.5], [2.5, -0.5]; delta x = [4.5, 7.5], [3, 6]
    assert torch.equal(layer(x), torch.tensor([[6.0, 8.0], [5.5, 5.5]]))
    layer.merge()
    assert torch.equal(base.weight.detach(), torch.tensor([[2.5, 3.0], [3.0, 5.5]]))
    assert torch.equal(layer(x), torch.tensor([[6.0, 8.0], [5.5, 5.5]]))  # the base alone now
    assert layer.extra_repr().endswith("merged=True")
    layer.unmerge()
    assert torch.equal(base.weight.detach(), torch.eye(2)) and layer.merged is False
    assert layer.extra_repr().endswith("merged=False")
    assert torch.equal(layer(x), torch.tensor([[6.0, 8.0], [5.5, 5.5]]))


def test_dropout_acts_in_training_on_the_adapter_input_only():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 8), r=8, alpha=8, dropout=0.5).train()  # scaling 1
    with torch.no_grad():
        layer.lora_A.copy_(torch.eye(8))
        layer.lora_B.copy_(torch.eye(8))  # B A = I: the adapter path is dropout(x) itself
    x = torch.randn(16, 8)
    torch.manual_seed(3)
    path = (layer(x) - layer.base(x)).detach()
    # nn.Dropout(0.5) keeps each input with probability 1/2 and scales it by 1 / (1 - 1/2) = 2; the base sees all
    dropped = path.abs() < 1e-6
    torch.testing.assert_close(path[~dropped], 2 * x[~dropped])
    assert 0.3 < dropped.float().mean().item() < 0.7
    layer.eval()
    torch.testing.assert_close((layer(x) - layer.base(x)).detach(), x)


def test_merge_is_for_a_plain_linear_only():
    class Sub(nn.Linear):
        pass

    class Scaled(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    assert LoRALinear(nn.Linear(3, 2), 1, 1).mergeable
    assert LoRALinear(Sub(3, 2), 1, 1).mergeable
    layer = LoRALinear(Scaled(3, 2), 1, 1)
    assert not layer.mergeable
    with pytest.raises(TypeError) as e:
        layer.merge()
    assert str(e.value) == (
        "cannot merge LoRA into a Scaled base: merging is exact only for a plain nn.Linear (output x @ W.T + b). A "
        "fake-quant base would quantize W + B A again and change the model; keep the adapter unmerged, or merge "
        "into the full-precision weight and quantize that.")
    assert not layer.merged


def test_merge_and_unmerge_each_happen_once():
    base = nn.Linear(2, 2)
    with torch.no_grad():
        base.weight.copy_(torch.tensor([[0.25, -1.0], [2.0, 0.5]]))  # sums with 0.5 that floats hold exactly
    w = base.weight.detach().clone()
    layer = LoRALinear(base, r=1, alpha=2)
    with torch.no_grad():
        layer.lora_A.fill_(1.0)
        layer.lora_B.fill_(0.25)  # delta = 2 * 0.25 = 0.5 everywhere
    layer.unmerge()  # not merged: nothing to take out
    assert torch.equal(base.weight.detach(), w) and not layer.merged
    layer.merge()
    layer.merge()
    assert torch.equal(base.weight.detach(), w + 0.5) and layer.merged
    layer.unmerge()
    layer.unmerge()
    assert torch.equal(base.weight.detach(), w) and not layer.merged


# ---- targets and apply_lora ---------------------------------------------------------------------------------------
def test_presets_on_the_toy_count_by_hand():
    # rank 2, attention: each 3 x 3 projection adds r (in + out) = 2 * 6 = 12; 4 a block, 2 blocks: 96
    model = Toy()
    report = apply_lora(model, LoRAConfig(rank=2, alpha=4, targets="attn"))
    assert report.modules == [f"h.{i}.attn.{n}" for i in (0, 1) for n in ("query", "key", "value", "c_proj")]
    assert (report.trainable, report.total, report.lora) == (96, TOY_TOTAL + 96, 96)
    # 96 of 289: 33.218%
    assert str(report) == "LoRA on 8 modules: 96 trainable of 289 parameters (33.22%; adapters 96)"
    assert model.lora_config == LoRAConfig(rank=2, alpha=4, targets="attn")
    # attn+mlp: c_fc (3 -> 5) and c_proj (5 -> 3) add 2 * 8 each: 32 a block more, so 80 a block, 160 in all
    model = Toy()
    report = apply_lora(model, LoRAConfig(rank=2, alpha=4, targets="attn+mlp"))
    assert report.modules == [f"h.{i}.{n}" for i in (0, 1) for n in (
        "attn.query", "attn.key", "attn.value", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    # 160 of 353: 45.326%
    assert str(report) == "LoRA on 12 modules: 160 trainable of 353 parameters (45.33%; adapters 160)"
    assert lora_report(model) == report
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == sorted(f"h.{i}.{n}.lora_{m}" for i in (0, 1) for m in "AB" for n in (
        "attn.query", "attn.key", "attn.value", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))


def test_the_study_count_rank_256_on_attention_and_mlp_of_gpt2_124m():
    """The study's "42.5M": per block the four 768 x 768 attention projections add 256 (768 + 768) = 393,216 each,
    1,572,864 together; c_fc (768 -> 3072) and c_proj (3072 -> 768) add 256 (768 + 3072) = 983,040 each; a block
    3,538,944; 12 blocks 42,467,328. GPT-2 124M holds 124,439,808 (the tied embedding once), so 166,907,136 in
    all, 25.44% trainable."""
    with torch.device("meta"):
        base = GPT2(GPT2Config.from_name("gpt2"))
    report = apply_lora(copy.deepcopy(base), LoRAConfig(rank=256, alpha=16, targets="attn+mlp"))
    assert str(report) == ("LoRA on 72 modules: 42,467,328 trainable of 166,907,136 parameters (25.44%; adapters "
                           "42,467,328)")
    assert f"{report.trainable / 1e6:.1f}M" == "42.5M"
    # the default, rank 8 on attention: 12 * 4 * 8 * 1536 = 589,824 of 125,029,632 (0.4717%)
    report = apply_lora(copy.deepcopy(base), LoRAConfig())
    assert str(report) == "LoRA on 48 modules: 589,824 trainable of 125,029,632 parameters (0.47%; adapters 589,824)"


def test_report_percent_and_line_of_an_empty_model():
    assert LoRAReport(trainable=0, total=0, lora=0).percent == 0.0
    assert str(LoRAReport(0, 0, 0)) == "LoRA on 0 modules: 0 trainable of 0 parameters (0.00%; adapters 0)"
    # 1 of 8 is 12.5%; a head of 3 besides 5 adapter numbers
    assert LoRAReport(1, 8, 1).percent == 12.5
    assert str(LoRAReport(8, 2000, 5, ["a", "b"])) == (
        "LoRA on 2 modules: 8 trainable of 2,000 parameters (0.40%; adapters 5)")


def test_a_trainable_head_trains_and_a_module_whose_name_only_starts_alike_does_not():
    model = Toy()
    model.head = nn.Linear(C, 2)    # 8 numbers, trained in full
    model.head2 = nn.Linear(C, 1)   # 4 numbers: "head2" is not under "head"
    report = apply_lora(model, LoRAConfig(rank=1, alpha=1, targets=["attn.query"], trainable=["head"]))
    # query adapters: r (3 + 3) = 6 each, 2 blocks: 12; with the head 20; total 193 + 8 + 4 + 12 = 217
    assert (report.trainable, report.total, report.lora) == (20, 217, 12)
    assert not any(p.requires_grad for p in model.head2.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    assert set(lora_state_dict(model)) == {"h.0.attn.query.lora_A", "h.0.attn.query.lora_B",
                                           "h.1.attn.query.lora_A", "h.1.attn.query.lora_B", "head.weight",
                                           "head.bias"}
    # mark again without the head (a generator of names works too): 12; then with it from a generator: 20
    assert mark_only_lora_trainable(model) == 12
    assert not model.head.weight.requires_grad
    assert mark_only_lora_trainable(model, (n for n in ["head"])) == 20
    assert model.head.weight.requires_grad and not model.wte.weight.requires_grad
    with pytest.raises(ValueError) as e:
        mark_only_lora_trainable(model, ["head", "tail"])
    assert str(e.value) == "trainable module 'tail' is not a module of Toy"


def test_a_parameter_named_like_an_adapter_only_at_its_start_stays_frozen():
    model = Toy()
    model.lora_A_extra = nn.Linear(1, 1)  # names "lora_A_extra.weight": not an adapter matrix
    apply_lora(model, LoRAConfig(rank=1, alpha=1, targets=["attn.query"]))
    assert not model.lora_A_extra.weight.requires_grad
    assert "lora_A_extra.weight" not in lora_state_dict(model)


def test_find_targets_matches_whole_name_parts_in_model_order():
    model = Toy()
    model.head = nn.Linear(C, 2)
    # "head" is a top-level name (matched as a whole); "query" and "c_fc" after a dot; order is the model's
    assert find_targets(model, ["head", "mlp.c_fc", "query"]) == ["h.0.attn.query", "h.0.mlp.c_fc", "h.1.attn.query",
                                                                  "h.1.mlp.c_fc", "head"]
    assert find_targets(model, "h.1.attn.value") == ["h.1.attn.value"]
    with pytest.raises(LoraSettingsError) as e:
        find_targets(model, ["query", "uery"])  # a suffix of a name, not a part of it
    assert str(e.value) == ("unknown LoRA target 'uery': no module of Toy is named so. Use a preset ['attn', "
                            "'attn+mlp'] or module names such as 'attn.query', 'attn.value', 'mlp.c_fc'")
    with pytest.raises(LoraSettingsError) as e:
        find_targets(model, ["attn.query", "mlp"])
    assert str(e.value) == ("LoRA target 'mlp' selects 'h.0.mlp' (MLP), which is not a linear layer (no "
                            "in_features/out_features); name its projections instead, e.g. 'mlp.c_fc'")

    class InOnly(nn.Module):
        in_features = 3

    model.h[1].attn.odd = InOnly()
    with pytest.raises(LoraSettingsError, match="^LoRA target 'odd' selects 'h.1.attn.odd' \\(InOnly\\), which"):
        find_targets(model, ["query", "odd"])


class Wrapper(nn.Module):
    """A fake-quant stand-in: linear-like, holding the projection as `.base`."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features

    def forward(self, x):
        return self.base(x)


def test_only_the_outermost_of_nested_matches_gets_an_adapter():
    model = Toy()
    for b in model.h:
        b.attn.query = Wrapper(b.attn.query)
    # "base" names h.<i>.attn.query.base, inside the matched h.<i>.attn.query: left alone
    assert find_targets(model, ["query", "base"]) == ["h.0.attn.query", "h.1.attn.query"]
    report = apply_lora(model, LoRAConfig(rank=1, alpha=1, targets=["query", "base"]))
    assert report.modules == ["h.0.attn.query", "h.1.attn.query"]
    assert isinstance(model.h[0].attn.query.base, Wrapper)


def test_apply_lora_twice_is_refused():
    model = Toy()
    apply_lora(model, LoRAConfig(rank=1, alpha=1))
    with pytest.raises(ValueError) as e:
        apply_lora(model, LoRAConfig(rank=1, alpha=1))
    assert str(e.value) == "Toy already has LoRA adapters; apply_lora works on a plain model"


def test_merge_lora_of_a_model_gives_the_adapter_model_and_unmerge_gives_back_the_base():
    model = Toy()
    plain = model(X)
    apply_lora(model, LoRAConfig(rank=2, alpha=3, targets="attn+mlp"))
    randomize_adapters(model, scale=0.5)
    with torch.no_grad():
        adapted = model(X)
        assert (adapted - plain).abs().max() > 0.1
        merge_lora(model)
        assert all(m.merged for m in lora_modules(model).values())
        with pytest.raises(ValueError) as e:
            with without_lora(model):
                pass
        assert str(e.value) == "without_lora needs unmerged adapters (the merged base weights include B A)"
        torch.testing.assert_close(model(X), adapted)
        unmerge_lora(model)
        assert not any(m.merged for m in lora_modules(model).values())
        with without_lora(model):
            torch.testing.assert_close(model(X), plain)
        # one layer merged is enough to refuse
        model.h[1].mlp.c_proj.merge()
        with pytest.raises(ValueError, match="needs unmerged adapters"):
            with without_lora(model):
                pass


# ---- adapter files -------------------------------------------------------------------------------------------------
class Compiled(nn.Module):
    """What torch.compile returns, for names: the module under `_orig_mod`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._orig_mod = model


def saved(tmp_path: Path, **kw) -> tuple[Toy, Path]:
    model = Toy()
    apply_lora(model, LoRAConfig(**{"rank": 2, "alpha": 3, "targets": "attn", **kw}))
    randomize_adapters(model, scale=0.5)
    return model, save_adapter(model, tmp_path / "a.safetensors")


def test_adapter_file_keys_and_metadata(tmp_path):
    model = Toy()
    model.head = nn.Linear(C, 2)
    apply_lora(model, LoRAConfig(rank=2, alpha=3, targets=["attn.value", "mlp.c_proj"], trainable=["head"]))
    randomize_adapters(model, scale=0.5)
    path = save_adapter(Compiled(model), tmp_path / "sub" / "a.safetensors")
    assert path == tmp_path / "sub" / "a.safetensors"
    tensors = load_file(str(path))
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    assert shapes == {"h.0.attn.value.lora_A": (2, 3), "h.0.attn.value.lora_B": (3, 2),
                      "h.0.mlp.c_proj.lora_A": (2, 5), "h.0.mlp.c_proj.lora_B": (3, 2),
                      "h.1.attn.value.lora_A": (2, 3), "h.1.attn.value.lora_B": (3, 2),
                      "h.1.mlp.c_proj.lora_A": (2, 5), "h.1.mlp.c_proj.lora_B": (3, 2),
                      "head.weight": (2, 3), "head.bias": (2,)}
    assert torch.equal(tensors["h.1.mlp.c_proj.lora_B"], model.h[1].mlp.c_proj.lora_B.detach())
    assert set(lora_state_dict(Compiled(model))) == set(shapes)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta == {"format": "pt", METADATA_KEY: json.dumps({
        "format_version": 1, "rank": 2, "alpha": 3, "targets": ["attn.value", "mlp.c_proj"], "dropout": 0.0,
        "rslora": False, "trainable": ["head"]})}
    assert (METADATA_KEY, ADAPTER_FORMAT) == ("minigpt2.lora", 1)
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.safetensors"]  # no temporary file left

    with pytest.raises(ValueError) as e:
        save_adapter(Toy(), tmp_path / "b.safetensors")
    assert str(e.value) == "Toy has no LoRA adapters to save; call apply_lora first"
    bare = Toy()
    bare.lora_config = LoRAConfig()  # settings but no adapter layers
    with pytest.raises(ValueError, match="^Toy has no LoRA adapters to save"):
        save_adapter(bare, tmp_path / "b.safetensors")
    assert not (tmp_path / "b.safetensors").exists()


def test_adapter_round_trip_into_a_fresh_and_a_compiled_model(tmp_path):
    model, path = saved(tmp_path, rslora=True)
    with torch.no_grad():
        want = model(X)
    fresh = Toy()
    report = load_adapter(fresh, path)
    assert (report.trainable, report.total) == (96, TOY_TOTAL + 96)
    assert fresh.lora_config == model.lora_config
    with torch.no_grad():
        assert torch.equal(fresh(X), want)
    inner = Toy()
    report = load_adapter(Compiled(inner), path)
    assert report.modules == [f"h.{i}.attn.{n}" for i in (0, 1) for n in ("query", "key", "value", "c_proj")]
    with torch.no_grad():
        assert torch.equal(inner(X), want)
    # into a model with the same adapters (dropout may differ: it is not part of what was trained)
    same = Toy()
    apply_lora(same, LoRAConfig(rank=2, alpha=3, targets="attn", rslora=True, dropout=0.3))
    load_adapter(same, path)
    with torch.no_grad():
        assert torch.equal(same.eval()(X), want)


def test_read_adapter_config_refusals(tmp_path):
    p = tmp_path / "x.safetensors"
    with pytest.raises(CheckpointError) as e:
        read_adapter_config(p, {"format": "pt"})
    assert str(e.value) == (f"{p}: no LoRA settings in the safetensors metadata (key 'minigpt2.lora'); not an "
                            "adapter written by minigpt2.lora.save_adapter")
    with pytest.raises(CheckpointError) as e:
        read_adapter_config(p, {METADATA_KEY: "{rank"})
    assert str(e.value).startswith(f"{p}: metadata key 'minigpt2.lora' is not valid JSON: Expecting property name")
    good = {"rank": 2, "alpha": 3, "targets": "attn"}
    for version in (2, None, "1"):
        d = {**good} if version is None else {"format_version": version, **good}
        with pytest.raises(CheckpointError) as e:
            read_adapter_config(p, {METADATA_KEY: json.dumps(d)})
        assert str(e.value) == f"{p}: adapter format_version {version!r}, expected 1"
    assert read_adapter_config(p, {METADATA_KEY: json.dumps({"format_version": 1, **good})}) == LoRAConfig(2, 3)
    with pytest.raises(CheckpointError) as e:
        read_adapter_config(p, {METADATA_KEY: "[1, 2]"})
    assert str(e.value) == f"{p}: metadata key 'minigpt2.lora': LoRA settings must be a JSON object, got list"
    with pytest.raises(CheckpointError) as e:
        read_adapter_config(p, {METADATA_KEY: json.dumps({"format_version": 1, "rank": 2, "alpha": 3})})
    assert str(e.value) == (f"{p}: metadata key 'minigpt2.lora': LoRA settings have missing key(s) ['targets'] / "
                            "unknown key(s) []; expected rank, alpha, targets, dropout, rslora, trainable")


def rewrite(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    save_file(tensors, str(path), metadata=meta)


def test_load_adapter_refusals_name_the_file_and_the_key(tmp_path):
    _, path = saved(tmp_path)
    good = load_file(str(path))
    keys = sorted(good)

    with pytest.raises(CheckpointError) as e:
        load_adapter(nn.Sequential(nn.Linear(2, 2)), path)
    assert str(e.value) == (f"{path}: adapter settings do not fit this model: unknown LoRA target 'attn.query': no "
                            "module of Sequential is named so. Use a preset ['attn', 'attn+mlp'] or module names "
                            "such as 'attn.query', 'attn.value', 'mlp.c_fc'")

    other = Toy()
    apply_lora(other, LoRAConfig(rank=4, alpha=5, targets="attn", dropout=0.1))
    with pytest.raises(CheckpointError) as e:
        load_adapter(other, path)
    assert str(e.value) == (f"{path}: adapter settings differ from the model's LoRA (file, model): "
                            "{'rank': (2, 4), 'alpha': (3, 5)}")

    merged = Toy()
    apply_lora(merged, LoRAConfig(rank=2, alpha=3, targets="attn"))
    merged.h[1].attn.key.merge()  # one layer merged
    with pytest.raises(ValueError) as e:
        load_adapter(merged, path)
    assert str(e.value) == (f"{path}: cannot load an adapter into merged LoRA layers; call unmerge_lora(model) "
                            "first")

    # 16 keys: 6 missing are listed whole, 7 with " ..."
    rewrite(path, {k: v for k, v in good.items() if k not in keys[:6]})
    with pytest.raises(CheckpointError) as e:
        load_adapter(Toy(), path)
    assert str(e.value) == (f"{path}: adapter does not match the model: missing key(s) {keys[:6]}, unexpected "
                            "key(s) []")
    rewrite(path, {k: v for k, v in good.items() if k not in keys[:7]})
    with pytest.raises(CheckpointError) as e:
        load_adapter(Toy(), path)
    assert str(e.value) == (f"{path}: adapter does not match the model: missing key(s) {keys[:6]} ..., unexpected "
                            "key(s) []")
    extra = {f"x{i}.lora_A": torch.zeros(1) for i in range(7)}
    rewrite(path, {**good, **extra})
    with pytest.raises(CheckpointError) as e:
        load_adapter(Toy(), path)
    assert str(e.value) == (f"{path}: adapter does not match the model: missing key(s) [], unexpected key(s) "
                            f"{sorted(extra)[:6]} ...")
    rewrite(path, {**good, **dict(list(extra.items())[:6])})
    with pytest.raises(CheckpointError) as e:
        load_adapter(Toy(), path)
    assert str(e.value).endswith(f"unexpected key(s) {sorted(extra)[:6]}")

    rewrite(path, {**good, "h.1.attn.value.lora_B": torch.zeros(3, 4)})
    with pytest.raises(CheckpointError) as e:
        load_adapter(Toy(), path)
    assert str(e.value) == (f"{path}: key 'h.1.attn.value.lora_B' has shape (3, 4), the model expects (3, 2) "
                            "(rank 2)")
    rewrite(path, {**good, "h.1.attn.value.lora_B": torch.zeros(3, 2, dtype=torch.int32)})
    with pytest.raises(CheckpointError) as e:
        load_adapter(Toy(), path)
    assert str(e.value) == (f"{path}: key 'h.1.attn.value.lora_B' has dtype torch.int32, expected a floating-point "
                            "dtype")


def test_an_infinite_alpha_is_refused_on_the_command_line_before_any_work():
    """`--lora-alpha inf` was accepted, and every output of the adapted model was NaN (B = 0 times inf)."""
    from app.cli import SettingsError, finetune_parser, settings_from

    ns = finetune_parser().parse_args(["--task", "sst", "--method", "lora", "--lora-alpha", "inf"])
    with pytest.raises(SettingsError) as e:
        settings_from(ns)
    assert str(e.value) == "--lora-alpha inf: expected a finite number > 0"
    with pytest.raises(FieldError, match="^alpha inf: expected a finite number > 0$"):
        LoRALinear(nn.Linear(2, 2), 2, float("inf"))


def test_one_trainable_name_given_as_a_string_is_refused_not_read_as_its_letters(tmp_path):
    """`trainable="head"` was tuple("head"): modules 'h', 'e', 'a', 'd', refused later as "trainable module 'h'
    is not a module"; a settings or adapter file's `"trainable": "head"` the same."""
    with pytest.raises(FieldError) as e:
        LoRAConfig(trainable="head")
    assert str(e.value) == "trainable 'head': expected a list of module names"
    with pytest.raises(CheckpointError) as e:
        LoRAConfig.from_dict({"rank": 2, "alpha": 4, "targets": "attn", "trainable": "head"}, source="s.json")
    assert str(e.value) == ("s.json: invalid LoRA settings {'rank': 2, 'alpha': 4, 'targets': 'attn', 'trainable': "
                            "'head'}: trainable 'head': expected a list of module names")
    assert LoRAConfig(trainable=["head"]).trainable == ("head",)


def test_adapter_tensors_of_a_model_wrapped_by_hand_without_settings():
    """LoRALinear put in place by hand (no `apply_lora`, so no `lora_config`): the A and B matrices, no head."""
    model = Toy()
    model.h[1].mlp.c_fc = LoRALinear(model.h[1].mlp.c_fc, r=2, alpha=2)
    assert {k: tuple(v.shape) for k, v in lora_state_dict(model).items()} == {
        "h.1.mlp.c_fc.lora_A": (2, 3), "h.1.mlp.c_fc.lora_B": (5, 2)}
    with pytest.raises(ValueError, match="^Toy has no LoRA adapters to save; call apply_lora first$"):
        save_adapter(model, "unused.safetensors")


def test_top_level_parameters_adapter_layer_alone_and_model_without_dots():
    """Names without a dot: the adapter layer as the model ("lora_A", "base.weight") and a model's own parameter."""
    layer = LoRALinear(nn.Linear(4, 3), r=2, alpha=2)
    # A (2 x 4) and B (3 x 2): 8 + 6 = 14 train; the base's 12 + 3 do not
    assert mark_only_lora_trainable(layer) == 14
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["lora_A", "lora_B"]
    model = Toy()
    model.temperature = nn.Parameter(torch.ones(()))
    apply_lora(model, LoRAConfig(rank=1, alpha=1, targets=["attn.key"]))
    assert not model.temperature.requires_grad
    assert mark_only_lora_trainable(model, ["h.0.attn.key"]) == 12 + 12  # key adapters 2 x 6, block 0's key 9 + 3


def test_the_adapter_layer_checks_rslora_as_the_settings_do():
    """`LoRALinear(..., rslora="false")` was scaled by alpha / sqrt(r) (a non-empty string is true); LoRAConfig
    already refused it."""
    with pytest.raises(FieldError) as e:
        LoRALinear(nn.Linear(2, 2), 4, 8, rslora="false")
    assert str(e.value) == "rslora 'false': expected true or false"
    assert LoRALinear(nn.Linear(2, 2), 4, 8).scaling == 2.0  # alpha / r by default
