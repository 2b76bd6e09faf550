"""`app/precision.py`: the precision a run's settings give (formats, QAFT or PTQ, the group size), the refusals
word for word, what `apply_run_precision` does to a task model, and the size report a quantized run writes.

Written against mutmut's survivors (`python tools/mutate.py --auto app/precision.py`, docs/testing.md). Fast: the
tiny model only, no training. Expected values are written out here (the formats and their weight formats, the
dtypes, the keys of size_report.json) or read from the file on disk."""

from __future__ import annotations

import json
import re

import pytest
import torch

from app import finetune
from app.precision import PrecisionError, PrecisionSettings, apply_run_precision, write_quantized
from minigpt2.config import GPT2Config
from minigpt2.errors import FieldError
from minigpt2.model import GPT2
from quant import FakeQuantLinear, QuantConfig
from tasks import get_task

TINY = GPT2Config.from_name("tiny", dropout=0.0)  # n_embd 32: mlp.c_proj reads 128-wide inputs


def task_model(task: str = "sst"):
    torch.manual_seed(0)
    return get_task(task).build(GPT2(TINY))


def test_the_default_is_fp32_trained_in_fp32_with_no_quant_config():
    s = PrecisionSettings()
    assert (s.format, s.qaft, s.quant) == ("fp32", False, None)
    assert s.group_size == 128  # quant.config's default group, reported when no QuantConfig is set
    s.check_model(TINY)  # nothing to check


def test_refusals_word_for_word():
    with pytest.raises(FieldError) as e:
        PrecisionSettings(format="fp16")
    assert str(e.value) == "format fp16: expected one of fp64, fp32, bf16, fp8, int8, int4"
    with pytest.raises(PrecisionError) as e:
        PrecisionSettings(format="fp32", qaft=True)
    assert str(e.value) == "--qaft needs a --precision other than fp32 (fp32 training is the default)"
    for fmt, quant in (("int8", None), ("bf16", QuantConfig(weight="int8"))):
        with pytest.raises(PrecisionError) as e:
            PrecisionSettings(format=fmt, quant=quant)
        assert str(e.value) == (f"--precision {fmt}: a QuantConfig goes with exactly the fake-quant formats "
                                "fp8, int8, int4")
    with pytest.raises(PrecisionError) as e:
        PrecisionSettings(format="int4", quant=QuantConfig(weight="int8"))
    assert str(e.value) == "--precision int4: its QuantConfig quantizes weights to int8, expected int4"


@pytest.mark.parametrize("fmt,weight", [("fp8", "fp8_e4m3"), ("int8", "int8"), ("int4", "int4")])
def test_each_fake_quant_format_takes_its_quant_config(fmt, weight):
    assert PrecisionSettings.fake(fmt)
    q = PrecisionSettings.quant_for(fmt, group_size=16)
    assert (q.weight, q.group_size) == (weight, 16)
    for qaft in (False, True):
        s = PrecisionSettings(format=fmt, qaft=qaft, quant=q)
        assert (s.format, s.qaft, s.group_size) == (fmt, qaft, 16)


@pytest.mark.parametrize("fmt", ["fp64", "fp32", "bf16", "int16", ""])
def test_dtype_casts_and_other_names_are_not_fake_quant(fmt):
    assert not PrecisionSettings.fake(fmt)


def test_only_int4_checks_its_group_size_against_the_model():
    # 48 does not divide the tiny model's 32-wide inputs; INT8 and FP8 scale per row, so there it is never read
    for fmt in ("int8", "fp8"):
        PrecisionSettings(format=fmt, quant=PrecisionSettings.quant_for(fmt, group_size=48)).check_model(TINY)
    PrecisionSettings(format="int4", quant=PrecisionSettings.quant_for("int4", group_size=16)).check_model(TINY)
    with pytest.raises(PrecisionError) as e:
        PrecisionSettings(format="int4", quant=PrecisionSettings.quant_for("int4", group_size=48)).check_model(TINY)
    assert str(e.value).startswith("--group-size 48: ") and "32" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("fmt,dtype", [("fp64", torch.float64), ("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_a_dtype_precision_casts_the_whole_task_model_head_included(fmt, dtype):
    module = task_model()
    apply_run_precision(module, module.gpt, PrecisionSettings(format=fmt))
    assert {p.dtype for p in module.parameters()} == {dtype}
    assert not any(isinstance(m, FakeQuantLinear) for m in module.modules())


def test_a_fake_quant_precision_swaps_the_bodys_linear_layers_and_leaves_the_head():
    module = task_model()
    apply_run_precision(module, module.gpt, PrecisionSettings(format="int4", quant=QuantConfig.for_precision(
        "int4", group_size=16)))
    fake = [n for n, m in module.named_modules() if isinstance(m, FakeQuantLinear)]
    assert fake and all(n.startswith("gpt.") for n in fake)
    assert len([n for n in fake if n.endswith("c_proj")]) == 2 * TINY.n_layer  # attention and mlp, per block
    assert {m.cfg.group_size for m in module.modules() if isinstance(m, FakeQuantLinear)} == {16}
    assert type(module.classifier) is torch.nn.Linear
    assert {p.dtype for p in module.parameters()} == {torch.float32}


def test_a_group_size_the_body_cannot_take_is_one_precision_error_naming_the_format():
    module = task_model()
    bad = PrecisionSettings(format="int4", quant=QuantConfig.for_precision("int4", group_size=48))
    with pytest.raises(PrecisionError) as e:
        apply_run_precision(module, module.gpt, bad)
    assert str(e.value).startswith("--precision int4: ") and "48" in str(e.value)
    assert isinstance(e.value.__cause__, ValueError)


@pytest.mark.parametrize("qaft", [False, True])
def test_write_quantized_reports_the_packed_file_it_wrote(tmp_path, qaft):
    module = task_model()
    cfg = QuantConfig.for_precision("int8")
    s = PrecisionSettings(format="int8", qaft=qaft, quant=cfg)
    apply_run_precision(module, module.gpt, s)
    out = write_quantized(module.gpt, s, tmp_path)
    packed = tmp_path / "quantized" / "model-int8.safetensors"
    assert set(out) == {"precision", "qaft", "file", "file_bytes", "computed_file_bytes", "param_bytes_by_part",
                        "scale_bytes", "quantised", "quant_config"}
    assert (out["precision"], out["qaft"], out["file"]) == ("int8", qaft, "quantized/model-int8.safetensors")
    assert out["file_bytes"] == packed.stat().st_size == out["computed_file_bytes"]
    assert out["quant_config"] == {"weight": "int8", "group_size": 128, "activations": False, "embeddings": True}
    # int8: one fp32 scale per output row of every quantized matrix (wte's 50257 rows, wpe's 128, the blocks')
    rows = TINY.vocab_size + TINY.n_positions + TINY.n_layer * (3 * 32 + 32 + 4 * 32 + 32)
    assert out["scale_bytes"] == 4 * rows
    # by hand, int8 bytes + fp32 scales: wte 50257 x 32 and wpe 128 x 32, each row a scale; per block the four
    # matrices (32x96, 32x32, 32x128, 128x32: 12,288 bytes), a scale and an fp32 bias per output row (288 each);
    # the norms fp32 (two per block and ln_f, weight and bias of 32)
    assert out["param_bytes_by_part"] == {"embeddings": (50257 + 128) * 32 + 4 * (50257 + 128),
                                          "linear": 2 * (12288 + 4 * 288 + 4 * 288), "norms": 4 * 2 * 32 * 5}
    assert "wte (tied LM head)" in out["quantised"]
    assert json.loads((tmp_path / "quantized" / "size_report.json").read_text(encoding="utf-8")) == out


def test_write_quantized_reports_the_groups_of_the_runs_own_config(tmp_path):
    """INT4 in groups of 16 (not the default 128, which the tiny model's 32-wide layers cannot take)."""
    module = task_model()
    s = PrecisionSettings(format="int4", qaft=True, quant=QuantConfig.for_precision("int4", group_size=16))
    apply_run_precision(module, module.gpt, s)
    out = write_quantized(module.gpt, s, tmp_path)
    packed = tmp_path / "quantized" / "model-int4.safetensors"
    assert (out["precision"], out["file"]) == ("int4", "quantized/model-int4.safetensors")
    assert out["file_bytes"] == packed.stat().st_size == out["computed_file_bytes"]
    assert out["quant_config"] == {"weight": "int4", "group_size": 16, "activations": False, "embeddings": True}
    # one fp32 scale per 16 inputs of every row: wte 50257 x 32 and wpe 128 x 32 (2 groups a row), per block
    # 96 + 32 + 128 rows of 32 inputs (2 groups) and 32 rows of 128 (8 groups)
    groups = 2 * (50257 + 128) + 2 * (2 * (96 + 32 + 128) + 8 * 32)
    assert out["scale_bytes"] == 4 * groups


def test_a_dtype_cast_is_reported_without_a_quant_config(tmp_path):
    module = task_model()
    s = PrecisionSettings(format="bf16")
    apply_run_precision(module, module.gpt, s)
    out = write_quantized(module.gpt, s, tmp_path)
    packed = tmp_path / "quantized" / "model-bf16.safetensors"
    assert (out["precision"], out["qaft"], out["file"], out["quant_config"]) == (
        "bf16", False, "quantized/model-bf16.safetensors", None)
    assert out["file_bytes"] == packed.stat().st_size == out["computed_file_bytes"]
    assert out["scale_bytes"] == 0
    # 2 bytes a parameter: the body (wte 50257 x 32, wpe 128 x 32; the blocks' matrices and biases; the norms)
    assert out["param_bytes_by_part"] == {"embeddings": 2 * (50257 + 128) * 32, "linear": 2 * 2 * (12288 + 288),
                                          "norms": 2 * 2 * 32 * 5}


def test_the_precision_flags_help_is_their_own_text(capsys):
    with pytest.raises(SystemExit) as e:
        finetune.main(["--help"])
    assert e.value.code == 0
    flat = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert ("--precision {fp64,fp32,bf16,fp8,int8,int4} numeric precision of the model: fp64/fp32/bf16 are dtype "
            "casts, fp8 (E4M3)/int8/int4 are fake-quantized weights (packed into a real checkpoint at the end) "
            "(default: fp32)") in flat
    assert ("--qaft quantization-aware fine-tuning: train through the quantizer (or in the dtype); without it the "
            "finished model is quantized after training (PTQ)") in flat
