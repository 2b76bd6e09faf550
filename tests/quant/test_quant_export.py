"""Packed checkpoints: export -> load reproduces the fake-quant logits; sizes from shapes match real files."""

import json
import struct

import pytest
import torch

from minigpt2.checkpoint import CheckpointError
from minigpt2.config import GPT2Config
from minigpt2.model import GPT2
from quant import QuantConfig, export_packed, load_packed, pack_model, ptq, size_report
from quant.export import packed_layout

CFG = GPT2Config.from_name("tiny", vocab_size=96, n_positions=32, dropout=0.0)
IDS = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(1))


def tiny() -> GPT2:
    torch.manual_seed(0)
    return GPT2(CFG).eval()


QCFGS = {
    "int8": QuantConfig(weight="int8", activations=True),
    "int4": QuantConfig(weight="int4", group_size=16),
    "fp8": QuantConfig(weight="fp8_e4m3"),
    "fp8_e5m2": QuantConfig(weight="fp8_e5m2", embeddings=False),
}


@pytest.mark.parametrize("name", sorted(QCFGS))
def test_packed_export_load_equals_fake_quant_logits(tmp_path, name):
    cfg = QCFGS[name]
    fq = ptq(tiny(), cfg).eval()
    path = export_packed(fq, tmp_path)
    loaded = load_packed(path).eval()
    # the loaded weights are the fake-quant weights bit for bit; logits agree to float noise (a different
    # memory alignment of file-backed tensors may pick another SIMD path)
    assert torch.equal(loaded.wte.weight, fq.wte.weight)
    layer = loaded.h[1].mlp.c_proj  # wrapped for activation fake-quant when the config asks for it
    assert torch.equal(getattr(layer, "base", layer).weight, fq.h[1].mlp.c_proj.quantized_weight())
    torch.testing.assert_close(loaded.logits(IDS), fq.logits(IDS), rtol=0, atol=1e-6)
    tensors, meta = pack_model(fq)
    q = tensors["h.0.mlp.c_fc.weight.q"]
    assert q.dtype == {"int8": torch.int8, "int4": torch.uint8, "fp8": torch.float8_e4m3fn,
                       "fp8_e5m2": torch.float8_e5m2}[name]
    if name == "int4":
        assert q.shape == (128, 16)  # two values per byte
        assert tensors["h.0.mlp.c_fc.weight.scale"].shape == (128, 2)
    assert ("wte.weight.q" in tensors) == cfg.embeddings
    assert tensors["h.0.ln_1.weight"].dtype == torch.float32 and tensors["h.0.attn.query.bias"].dtype == torch.float32


@pytest.mark.parametrize("precision,dtype", [("fp64", torch.float64), ("fp32", torch.float32),
                                             ("bf16", torch.bfloat16)])
def test_dtype_precisions_roundtrip(tmp_path, precision, dtype):
    model = tiny().to(dtype)
    path = export_packed(model, tmp_path, precision)
    assert path.name == f"model-{precision}.safetensors"
    loaded = load_packed(path).eval()
    assert loaded.wte.weight.dtype == dtype
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    torch.testing.assert_close(loaded.logits(IDS), model.logits(IDS), rtol=0, atol=1e-6 if dtype != torch.bfloat16 else 0)


@pytest.mark.parametrize("precision", ["fp64", "fp32", "bf16", "fp8", "int8", "int4"])
def test_size_from_shapes_equals_the_written_file(tmp_path, precision):
    cfg = QuantConfig.for_precision(precision, group_size=16) if precision in ("fp8", "int8", "int4") else None
    path = export_packed(tiny(), tmp_path, precision, cfg)
    report = size_report(CFG, precision, cfg)
    assert path.stat().st_size == report.file_bytes
    raw = path.read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]
    assert header_len == report.header_bytes
    layout = packed_layout(CFG, precision, cfg)
    header = json.loads(raw[8:8 + header_len])
    assert {k: (tuple(v["shape"])) for k, v in header.items() if k != "__metadata__"} == \
        {k: s.shape for k, s in layout.items()}


@pytest.mark.slow
def test_size_report_124m_ratios():
    """GPT-2 124M on the meta device: nothing is allocated or written."""
    config = GPT2Config.from_name("gpt2")
    r = {p: size_report(config, p) for p in ["fp64", "fp32", "bf16", "fp8", "int8", "int4"]}
    fp32 = r["fp32"].param_bytes
    assert fp32 == 124_439_808 * 4 and abs(fp32 / 1e6 - 498) < 1  # ~498 MB
    assert r["fp64"].param_bytes == 2 * fp32 and r["bf16"].param_bytes * 2 == fp32
    assert r["fp32"].parts == {"embeddings": (50257 + 1024) * 768 * 4, "linear": 85_017_600 * 4,
                               "norms": 25 * 2 * 768 * 4}
    # quantized: every linear weight, wte (the tied head) and wpe; biases and norms stay fp32
    quantized = (50257 + 1024) * 768 + 12 * 12 * 768 * 768  # parameters
    rest = 124_439_808 - quantized
    rows = 50257 + 1024 + 12 * (4 * 768 + 3072 + 768)  # one fp32 scale per row
    assert r["int8"].param_bytes == quantized + rows * 4 + rest * 4
    assert r["fp8"].param_bytes == r["int8"].param_bytes
    groups = (50257 + 1024) * 6 + 12 * (4 * 768 * 6 + 3072 * 6 + 768 * 24)  # one fp32 scale per 128 inputs
    assert r["int4"].param_bytes == quantized // 2 + groups * 4 + rest * 4
    assert 0.25 < r["int8"].param_bytes / fp32 < 0.26
    assert 0.125 < r["int4"].param_bytes / fp32 < 0.14
    assert "wte (tied LM head)" in r["int4"].quantized


def test_load_refuses_an_hf_file_and_bad_metadata(tmp_path):
    from minigpt2.checkpoint import save_model

    save_model(tiny(), tmp_path / "hf")
    with pytest.raises(CheckpointError, match="not a minigpt2 packed checkpoint"):
        load_packed(tmp_path / "hf" / "model.safetensors")
    path = export_packed(tiny(), tmp_path, "int8", QuantConfig(weight="int8"))
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    del tensors["h.1.attn.key.weight.scale"]
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"format": "minigpt2-packed", "precision": "int8",
                                           "config": json.dumps(CFG.to_hf_dict()),
                                           "quant": QuantConfig(weight="int8").to_json()})
    with pytest.raises(CheckpointError, match=r"'h\.1\.attn\.key\.weight\.q' has no matching"):
        load_packed(bad)


def test_pack_refuses_disabled_fake_quant_and_mismatched_precision(tmp_path):
    from quant import set_quant_enabled

    fq = ptq(tiny(), QuantConfig(weight="int8"))
    with pytest.raises(ValueError, match="fake-quantized as 'int8', cannot pack it as 'int4'"):
        pack_model(fq, "int4")
    set_quant_enabled(fq, False)
    with pytest.raises(ValueError, match="disabled"):
        pack_model(fq)
