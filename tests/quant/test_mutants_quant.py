"""The number formats and the packed checkpoint on inputs worked out by hand (the survivors of `--auto` on
quant/formats.py and quant/export.py): every code, scale, byte and error line below is computed in the comments
from the format's definition, not by the code under test.
"""

import json
import struct

import pytest
import torch

from minigpt2.config import GPT2Config
from quant.config import QuantConfig, QuantSettingsError
from quant.formats import (check_group_size, check_group_size_fits, dequantize, fake_quantize,
                           fake_quantize_activations, pack_int4, qmax, quantize, unpack_int4)

# ---- quantize / dequantize: codes and scales by hand ----


def test_int8_codes_and_scales_of_a_2x4_weight():
    # row 0: absmax 127/128, scale 1/128: -0.5 -> -64, 0.25 -> 32, 3/256 -> 1.5 -> 2 (ties to even)
    # row 1: absmax 127/64 (negative), scale 1/64: 0.5 -> 32, 1/128 -> 0.5 -> 0 (ties to even), 3/128 -> 1.5 -> 2
    w = torch.tensor([[127 / 128, -0.5, 0.25, 3 / 256], [-127 / 64, 0.5, 1 / 128, 3 / 128]])
    q, scale = quantize(w, "int8")
    assert q.dtype == torch.int8 and q.tolist() == [[127, -64, 32, 2], [-127, 32, 0, 2]]
    assert scale.shape == (2, 1) and scale.tolist() == [[1 / 128], [1 / 64]]
    assert dequantize(q, scale).tolist() == [[127 / 128, -0.5, 0.25, 2 / 128], [-127 / 64, 0.5, 0.0, 2 / 64]]


def test_int4_codes_and_group_scales_of_a_2x4_weight():
    # group size 2, so four groups of two:
    # row 0: [7/8, -7/16] absmax 7/8, scale 1/8: 7, -3.5 -> -4 (ties to even); [1/4, -7/4] scale 1/4: 1, -7
    # row 1: [0, 0] scale 1e-12 / 7 (the all-zero guard): 0, 0; [7/32, 3/32] scale 1/32: 7, 3
    w = torch.tensor([[0.875, -0.4375, 0.25, -1.75], [0.0, 0.0, 7 / 32, 3 / 32]])
    q, scale = quantize(w, "int4", group_size=2)
    assert q.dtype == torch.int8 and q.tolist() == [[7, -4, 1, -7], [0, 0, 7, 3]]
    zero = torch.tensor(1e-12) / 7  # float32 arithmetic, as the code's
    assert scale.shape == (2, 2) and scale.tolist() == [[0.125, 0.25], [zero.item(), 1 / 32]]
    assert dequantize(q, scale).tolist() == [[0.875, -0.5, 0.25, -1.75], [0.0, 0.0, 7 / 32, 3 / 32]]
    # the packed bytes: q + 8 per nibble, the first value of each pair low: (15, 4) -> 0x4F, (9, 1) -> 0x19,
    # (8, 8) -> 0x88, (15, 11) -> 0xBF
    assert pack_int4(q).tolist() == [[0x4F, 0x19], [0x88, 0xBF]]


def test_int8_zero_row_scale_is_the_guard():
    q, scale = quantize(torch.zeros(1, 4), "int8")
    assert q.tolist() == [[0, 0, 0, 0]] and scale.item() == (torch.tensor(1e-12) / 127).item()


@pytest.mark.parametrize("fmt,codes,m", [
    # e4m3 (3 mantissa bits): 134.4 lies in [128, 256) with steps of 16 -> 128; 44.8 in [32, 64) steps of 4 -> 44
    ("fp8_e4m3", [448.0, 224.0, -128.0, 44.0], 448.0),
    # e5m2 (2 mantissa bits): 17203.2 in [16384, 32768) steps of 4096 -> 16384; 5734.4 in [4096, 8192) steps of
    # 1024 -> 6144 (409.6 away, against 614.4 to 5120)
    ("fp8_e5m2", [57344.0, 28672.0, -16384.0, 6144.0], 57344.0),
])
def test_fp8_codes_of_one_row_by_hand(fmt, codes, m):
    w = torch.tensor([[1.0, 0.5, -0.3, 0.1]])  # absmax 1: scale 1 / m, so w / scale = m * w
    q, scale = quantize(w, fmt)
    assert qmax(fmt) == m
    assert q.float().tolist() == [codes]
    assert scale.item() == (torch.tensor(1.0) / m).item()
    # torch's own float8 cast of the exact products is the referee for the grid
    dtype = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}[fmt]
    assert (torch.tensor(codes).to(dtype).float().tolist()) == codes
    assert (torch.tensor([m * 1.0, m * 0.5, m * -0.3, m * 0.1], dtype=torch.float64).to(dtype).float().tolist()
            == codes)


def test_bf16_absmax_that_divides_to_127_5_is_clamped_to_the_grid_edge():
    # w = 85/128 in bf16; scale = 85/128/127 = 0.0052288 rounded to bf16's 8 significant bits:
    # 2^-8 * 171/128 = 171/32768. Then w / scale = 21760/171 = 127.2515, which bf16 (steps of 0.5 there)
    # rounds to 127.5, and round(127.5) = 128 (ties to even): beyond int8's 127 (int8 would wrap it to -128).
    # The clamp keeps it at the edge, +-127. The other values: 0.25 / scale = 47.906 -> bf16 48.0 -> 48;
    # 0.125 / scale = 23.95 -> 24.0 -> 24.
    w = torch.tensor([[85 / 128, 0.25, 0.125, 0.0], [-85 / 128, -0.25, 0.0, 0.125]], dtype=torch.bfloat16)
    q, scale = quantize(w, "int8")
    assert scale.dtype == torch.bfloat16 and scale.float().tolist() == [[171 / 32768], [171 / 32768]]
    assert q.tolist() == [[127, 48, 24, 0], [-127, -48, 0, 24]]
    assert torch.equal(fake_quantize(w, "int8"), dequantize(q, scale))


def test_dequantize_casts_only_when_asked():
    q = torch.tensor([[3, -2]], dtype=torch.int8)
    scale = torch.tensor([[0.5]])
    assert dequantize(q, scale).dtype == torch.float32
    out = dequantize(q, scale, torch.float64)
    assert out.dtype == torch.float64 and out.tolist() == [[1.5, -1.0]]
    assert dequantize(q, scale.to(torch.bfloat16)).dtype == torch.bfloat16


# ---- the refusals, whole lines ----


def test_error_lines_of_formats_and_group_sizes():
    with pytest.raises(ValueError) as e:
        qmax("int2")
    assert str(e.value) == "unknown weight format 'int2': expected one of int8, int4, fp8_e4m3, fp8_e5m2"
    with pytest.raises(QuantSettingsError) as e:
        check_group_size(6, "int4", 4)
    assert str(e.value) == "layer: INT4 group_size=4 does not divide in_features=6; pick a divisor of 6"
    with pytest.raises(QuantSettingsError) as e:
        quantize(torch.ones(2, 6), "int4", 4)
    assert str(e.value) == ("tensor of shape (2, 6): INT4 group_size=4 does not divide in_features=6; "
                            "pick a divisor of 6")
    with pytest.raises(QuantSettingsError):
        fake_quantize(torch.ones(2, 6), "int4", 4)
    # per-row formats have no groups: any group size goes
    for fmt in ("int8", "fp8_e4m3", "fp8_e5m2"):
        assert quantize(torch.ones(2, 6), fmt, 4)[1].shape == (2, 1)


def test_check_group_size_fits_a_config():
    config = GPT2Config(vocab_size=96, n_positions=32, n_embd=64, n_layer=1, n_head=2)
    for g in (2, 4, 16, 32, 64):  # divisors of 64 (and so of 256): accepted
        check_group_size_fits(config, g)
    for g in (0, 1, 3, -2):
        with pytest.raises(QuantSettingsError) as e:
            check_group_size_fits(config, g)
        assert str(e.value) == f"INT4 group_size={g}: expected an even integer >= 2 (two values share a byte)"
    with pytest.raises(QuantSettingsError) as e:
        check_group_size_fits(config, 6)  # even, but 64 % 6 = 4
    assert str(e.value) == ("64-wide inputs (attention, mlp.c_fc, embeddings): INT4 group_size=6 does not divide "
                            "in_features=64; pick a divisor of 64")
    with pytest.raises(QuantSettingsError):
        check_group_size_fits(config, 128)  # larger than the width
    check_group_size_fits(config, 6, fmt="int8")  # no groups: nothing to fit


# ---- activations: per token, asymmetric, 127 steps ----


def test_activation_codes_by_hand_on_three_tokens():
    # token 0: [-5.1875, 0, 10.6875]: range 127/8, scale 1/8; zero point round(41.5) = 42 (ties to even), so the
    #   codes lie in [-42, 85]; -41.5 -> -42, 85.5 -> 86, clamped to 85 (the uint8 range of the real kernel).
    # token 1: [0.3, 0.5, 127/128], all positive: lo = 0, scale 1/128, zero 0: 38.4 -> 38, 64, 127.
    # token 2: [-127/128, -0.3, -0.5], all negative: hi = 0, scale 1/128, zero 127: codes in [-127, 0].
    x = torch.tensor([[[-5.1875, 0.0, 10.6875], [0.3, 0.5, 127 / 128], [-127 / 128, -0.3, -0.5]]])
    y = fake_quantize_activations(x)
    assert y.tolist() == [[[-42 / 8, 0.0, 85 / 8], [38 / 128, 0.5, 127 / 128], [-127 / 128, -38 / 128, -0.5]]]
    assert fake_quantize_activations(x[0]).tolist() == y[0].tolist()  # (tokens, features) alike
    assert fake_quantize_activations(torch.zeros(2, 3)).tolist() == [[0.0] * 3] * 2
    # 255 steps: token 1 gets scale (127/128)/255: 0.3 -> 77.1 -> 77, 0.5 -> 16320/127 = 128.5039 -> 129, 255
    s = torch.tensor(127 / 128) / 255
    assert fake_quantize_activations(x[0, 1:2], levels=255).tolist() == [[(77 * s).item(), (129 * s).item(),
                                                                         (255 * s).item()]]


# ---- int4 packing ----


def test_pack_int4_bytes_edges_and_more_dimensions():
    # -7 -> 1, 7 -> 15: 1 | 15 << 4 = 0xF1; 0 -> 8, -1 -> 7: 8 | 7 << 4 = 0x78
    q = torch.tensor([[-7, 7, 0, -1]], dtype=torch.int8)
    assert pack_int4(q).tolist() == [[0xF1, 0x78]]
    assert unpack_int4(torch.tensor([[0xF1, 0x78]], dtype=torch.uint8)).tolist() == [[-7, 7, 0, -1]]
    q3 = torch.arange(-7, 8, dtype=torch.int8).repeat(2)[:24].reshape(2, 3, 4)
    packed = pack_int4(q3)
    assert packed.shape == (2, 3, 2) and torch.equal(unpack_int4(packed), q3)
    assert pack_int4(torch.zeros(0, 4, dtype=torch.int8)).shape == (0, 2)
    assert unpack_int4(torch.zeros(0, 2, dtype=torch.uint8)).shape == (0, 4)
    with pytest.raises(ValueError) as e:
        pack_int4(torch.zeros(2, 4, 5, dtype=torch.int8))
    assert str(e.value) == "pack_int4: last dimension 5 is odd; two values share a byte"
    for bad in (8, -8):
        with pytest.raises(ValueError) as e:
            pack_int4(torch.tensor([[0, bad]], dtype=torch.int8))
        assert str(e.value) == "pack_int4: values must lie in [-7, 7]"


# ---- the packed checkpoint: layout and sizes of a model small enough to count by hand ----

from quant.export import (SizeReport, describe, export_packed, header_size, load_packed, pack_model,  # noqa: E402
                          packed_layout, part_of, size_report)

# C 8, one layer, vocabulary 10, 4 positions. Parameters: wte 10 x 8 = 80, wpe 4 x 8 = 32 (embeddings 112);
# query/key/value/c_proj 4 x (64 + 8), c_fc 32 x 8 + 32, c_proj 8 x 32 + 8 (linear 840: weights 768, biases 72);
# ln_1, ln_2, ln_f 3 x 16 = 48 (norms). 1000 in all.
SMALL = GPT2Config(vocab_size=10, n_positions=4, n_embd=8, n_layer=1, n_head=2, dropout=0.0)


def small() -> "GPT2":
    from minigpt2.model import GPT2

    torch.manual_seed(0)
    return GPT2(SMALL).eval()


@pytest.mark.parametrize("precision,parts,scales", [
    ("fp64", {"embeddings": 896, "linear": 6720, "norms": 384}, 0),
    ("fp32", {"embeddings": 448, "linear": 3360, "norms": 192}, 0),
    ("bf16", {"embeddings": 224, "linear": 1680, "norms": 96}, 0),
    # one byte a weight, one fp32 scale a row: embeddings 112 + (10 + 4) x 4 = 168; linear 768 + (4 x 8 + 32 + 8)
    # x 4 = 288 scales + 72 x 4 bias bytes = 1344; scales (14 + 72) x 4 = 344
    ("int8", {"embeddings": 168, "linear": 1344, "norms": 192}, 344),
    ("fp8", {"embeddings": 168, "linear": 1344, "norms": 192}, 344),
])
def test_size_report_parts_by_hand(precision, parts, scales):
    r = size_report(SMALL, precision)
    assert r.precision == precision and r.parts == parts and r.extra == {"scale_bytes": scales}
    assert r.param_bytes == sum(parts.values()) and r.file_bytes == 8 + r.header_bytes + r.param_bytes


def test_int4_size_report_by_hand_with_and_without_embeddings():
    # groups of 4: half a byte a weight, one fp32 scale per 4 inputs. Embeddings: 112 / 2 = 56 + (10 + 4) x 2
    # scales x 4 = 112 -> 168. Linear: 768 / 2 = 384 + (4 x 8 x 2 + 32 x 2 + 8 x 8 = 192 scales) x 4 = 768
    # + 72 x 4 = 288 -> 1440. Scales (28 + 192) x 4 = 880.
    cfg = QuantConfig(weight="int4", group_size=4)
    r = size_report(SMALL, "int4", cfg)
    assert r.parts == {"embeddings": 168, "linear": 1440, "norms": 192} and r.extra == {"scale_bytes": 880}
    assert r.quantized == ("linear weights + wte (tied LM head) + wpe as int4 (fp32 scale per 4 inputs); biases, "
                           "LayerNorm and the rest fp32")
    r = size_report(SMALL, "int4", cfg.replace(embeddings=False))
    assert r.parts == {"embeddings": 448, "linear": 1440, "norms": 192} and r.extra == {"scale_bytes": 768}
    assert r.quantized == "linear weights as int4 (fp32 scale per 4 inputs); biases, LayerNorm and the rest fp32"
    # the defaults: int8 per row
    assert size_report(SMALL, "int8").quantized == ("linear weights + wte (tied LM head) + wpe as int8 (fp32 scale "
                                                    "per row); biases, LayerNorm and the rest fp32")
    assert size_report(SMALL, "fp8").quantized.startswith("linear weights + wte (tied LM head) + wpe as fp8_e4m3 (")
    assert size_report(SMALL, "bf16").quantized == "every tensor stored as bf16"
    assert describe("fp64", None) == "every tensor stored as fp64"


def test_part_of_each_kind_of_key():
    assert [part_of(k) for k in ("wte.weight", "wpe.weight.q", "wte.weight.scale", "h.0.ln_1.weight",
                                 "h.3.ln_2.bias", "ln_f.weight", "h.0.attn.query.weight.q", "h.0.mlp.c_proj.bias",
                                 "h.0.attn.c_proj.weight.scale")] == \
        ["embeddings", "embeddings", "embeddings", "norms", "norms", "norms", "linear", "linear", "linear"]


def test_pack_model_refusals_whole_lines():
    from minigpt2.lora import LoRAConfig, apply_lora
    from quant import ptq, set_quant_enabled

    model = small()
    apply_lora(model, LoRAConfig(rank=2))  # adapters on query, key, value, c_proj: lora_A then lora_B of each
    with pytest.raises(ValueError) as e:
        pack_model(model, "int8")
    assert str(e.value) == ("cannot pack a model with LoRA adapters (h.0.attn.query.lora_A, ...): the adapter is "
                            "full precision and not part of the packed base; save it with minigpt2.lora.save_adapter")
    with pytest.raises(ValueError) as e:
        pack_model(small(), "int9")
    assert str(e.value) == "precision 'int9': expected one of ('fp64', 'fp32', 'bf16', 'fp8', 'int8', 'int4')"
    cfg = QuantConfig(weight="int4", group_size=4)
    fq = ptq(small(), cfg)
    with pytest.raises(ValueError) as e:
        pack_model(fq, cfg=cfg.replace(group_size=8))
    assert str(e.value) == (
        "model is fake-quantized with QuantConfig(weight='int4', group_size=4, activations=False, embeddings=True), "
        "but cfg=QuantConfig(weight='int4', group_size=8, activations=False, embeddings=True) was given")
    tensors, meta = pack_model(fq, "int4", cfg=QuantConfig(weight="int4", group_size=4))  # its own config: fine
    assert meta["precision"] == "int4" and tensors["h.0.mlp.c_proj.weight.scale"].shape == (8, 8)
    set_quant_enabled(fq, False)
    with pytest.raises(ValueError) as e:
        pack_model(fq)
    assert str(e.value) == "cannot pack a model whose fake-quant layers are disabled; enable them first"


def test_a_plain_model_is_packed_with_the_precisions_defaults():
    tensors, meta = pack_model(small(), "int8")
    assert meta["format"] == "minigpt2-packed" and meta["precision"] == "int8"
    assert json.loads(meta["quant"]) == {"weight": "int8", "group_size": 128, "activations": False,
                                         "embeddings": True}
    assert json.loads(meta["config"])["n_embd"] == 8
    assert tensors["wte.weight.q"].dtype == torch.int8 and tensors["wte.weight.scale"].shape == (10, 1)
    layout = packed_layout(SMALL, "fp8")  # no cfg: E4M3, per row, embeddings too
    assert layout["h.0.mlp.c_fc.weight.q"].shape == (32, 8)
    assert layout["h.0.mlp.c_fc.weight.q"].dtype == torch.float8_e4m3fn
    assert layout["wpe.weight.scale"].shape == (4, 1) and layout["wpe.weight.scale"].dtype == torch.float32
    assert layout["h.0.mlp.c_fc.bias"].dtype == torch.float32 and "h.0.mlp.c_fc.weight" not in layout


def test_export_packed_to_a_file_name_or_into_a_new_nested_folder(tmp_path):
    model = small()
    path = export_packed(model, tmp_path / "mine.safetensors", "int8")
    assert path == tmp_path / "mine.safetensors" and path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.safetensors"]
    path = export_packed(model, tmp_path / "a" / "b", "int8")
    assert path == tmp_path / "a" / "b" / "model-int8.safetensors" and path.is_file()


def _real_header(path) -> int:
    with open(path, "rb") as f:
        return struct.unpack("<Q", f.read(8))[0]


@pytest.mark.parametrize("precision,cfg", [
    ("fp32", None), ("bf16", None), ("fp64", None), ("fp8", None), ("int8", None),
    ("fp32", QuantConfig(weight="int8")),  # a dtype precision ignores a quant config: no "quant" metadata
    ("fp8", QuantConfig(weight="fp8_e5m2")), ("fp8", QuantConfig(weight="fp8_e5m2", embeddings=False)),
    ("int4", QuantConfig(weight="int4", group_size=4)), ("int4", QuantConfig(weight="int4", group_size=2)),
    ("int4", QuantConfig(weight="int4", group_size=8, embeddings=False)),
    ("int8", QuantConfig(weight="int8", activations=True)),
])
def test_header_and_file_bytes_equal_the_file_safetensors_writes(tmp_path, precision, cfg):
    r = size_report(SMALL, precision, cfg)
    path = export_packed(small(), tmp_path, precision, cfg)
    assert (_real_header(path), path.stat().st_size) == (r.header_bytes, r.file_bytes)


@pytest.mark.parametrize("precision,cfg", [("fp32", None), ("fp8", QuantConfig(weight="fp8_e5m2")),
                                           ("int4", QuantConfig(weight="int4", group_size=4))])
def test_header_size_of_a_layout_equals_safetensors_for_every_padding(tmp_path, precision, cfg):
    from safetensors.torch import save_file

    layout = packed_layout(SMALL, precision, cfg)
    tensors = {k: torch.zeros(s.shape, dtype=s.dtype) for k, s in layout.items()}
    for pad in range(8):  # eight metadata lengths: a header one byte off shows in at least one of them
        meta = {"format": "x" * pad}
        save_file(tensors, str(tmp_path / "f.safetensors"), metadata=meta)
        assert header_size(layout, meta) == _real_header(tmp_path / "f.safetensors")


def test_header_size_of_hand_layouts_equals_the_written_header(tmp_path):
    from quant.export import TensorSpec
    from safetensors.torch import save_file

    # F32 first (4-byte alignment), then the bytes by name: b [0, 12], a [12, 13], c [13, 14]
    three = {"a": TensorSpec((1,), torch.uint8), "b": TensorSpec((3,), torch.float32),
             "c": TensorSpec((1,), torch.uint8)}
    text3 = ('{"__metadata__":{"k":"%s"},"b":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},'
             '"a":{"dtype":"U8","shape":[1],"data_offsets":[12,13]},"c":{"dtype":"U8","shape":[1],"data_offsets":[13,14]}}')
    # an offset of 9: a [0, 9], b [9, 10] (counted from 1, both would gain a digit)
    two = {"a": TensorSpec((9,), torch.uint8), "b": TensorSpec((1,), torch.uint8)}
    text2 = ('{"__metadata__":{"k":"%s"},"a":{"dtype":"U8","shape":[9],"data_offsets":[0,9]},'
             '"b":{"dtype":"U8","shape":[1],"data_offsets":[9,10]}}')
    for layout, text in ((three, text3), (two, text2)):
        for pad in range(8):  # eight lengths of the metadata: a header a byte longer shows in at least one
            meta = {"k": "v" * pad}
            n = len(text % meta["k"])
            assert header_size(layout, meta) == n + (8 - n % 8) % 8
            save_file({k: torch.zeros(s.shape, dtype=s.dtype) for k, s in layout.items()}, str(tmp_path / "f"),
                      metadata=meta)
            assert header_size(layout, meta) == _real_header(tmp_path / "f")
    assert SizeReport("int8", {"embeddings": 3, "linear": 4}, 16, "").file_bytes == 8 + 16 + 7


def test_load_packed_refusals_whole_lines(tmp_path):
    from minigpt2.checkpoint import CheckpointError
    from safetensors.torch import save_file

    f = tmp_path / "x.safetensors"
    save_file({"x": torch.zeros(1)}, str(f), metadata={"format": "gguf"})
    with pytest.raises(CheckpointError) as e:
        load_packed(f)
    assert str(e.value) == (f"{f}: not a minigpt2 packed checkpoint (metadata format='gguf', expected "
                            "'minigpt2-packed'); use minigpt2.checkpoint.load_model for HF files")
    save_file({"x": torch.zeros(1)}, str(f), metadata={"format": "minigpt2-packed", "precision": "int3"})
    with pytest.raises(CheckpointError) as e:
        load_packed(f)
    assert str(e.value) == (f"{f}: metadata precision='int3', expected one of ('fp64', 'fp32', 'bf16', 'fp8', "
                            "'int8', 'int4')")
    tensors, meta = pack_model(small(), "int8")
    meta["config"] = json.dumps(SMALL.replace(n_layer=2).to_hf_dict())  # sizes of two layers, tensors of one
    save_file(tensors, str(f), metadata=meta)
    with pytest.raises(CheckpointError) as e:
        load_packed(f)
    assert str(e.value).startswith(f"{f}: tensors do not fit a GPT2 of this config (n_layer=2, ")
    assert "missing key(s) ['h.1." in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("cfg", [QuantConfig(weight="int4", group_size=4, activations=True),
                                 QuantConfig(weight="fp8_e4m3", activations=True, embeddings=False)])
def test_load_packed_with_activations_keeps_the_packed_weights(tmp_path, cfg):
    from quant import ptq
    from quant.qaft import fake_quant_modules

    fq = ptq(small(), cfg)
    loaded = load_packed(export_packed(fq, tmp_path))
    # activation fake-quant only: the weights are the packed ones, not quantized again (an int8 pass would move
    # int4 and fp8 values), and the embeddings are plain
    assert {m.cfg for _, m in fake_quant_modules(loaded)} == {QuantConfig(weight=None, activations=True,
                                                                          embeddings=False)}
    for name in ("h.0.attn.query", "h.0.mlp.c_proj"):
        assert torch.equal(loaded.get_submodule(name).quantized_weight(), fq.get_submodule(name).quantized_weight())
    assert torch.equal(loaded.wte.weight, fq.wte.weight)  # a FakeQuantEmbedding's weight is its quantized one
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(loaded.logits(ids), fq.logits(ids), rtol=0, atol=1e-6)


@pytest.mark.parametrize("meta,line", [
    ({}, "metadata key 'config' missing; a packed checkpoint names its model there"),
    ({"config": "[1]"}, "metadata 'config' is not a JSON object"),
    ({"config": "{"}, "metadata 'config' is not JSON (Expecting property name enclosed in double quotes: line 1 "
                      "column 2 (char 1))"),
    ({"config": '{"n_embd": "x", "n_layer": 1, "n_head": 1}'}, "metadata 'config': n_embd is 'x'; expected an integer"),
    ({"config": '{"n_embd": 8, "n_layer": 1, "n_head": 3}'},
     "metadata 'config': n_embd (8) must be divisible by n_head (3)"),
    ({"quant": "[1]"}, "metadata 'quant' is not a JSON object"),
    ({"quant": '{"weight": "int8", "group_size": 7}'},
     "metadata 'quant': group_size 7: expected an even integer >= 2 (two INT4 values share a byte)"),
])
def test_bad_packed_metadata_is_one_line_naming_the_file_once(tmp_path, meta, line):
    """Was "PATH: bad metadata: PATH metadata: ..." (the file twice), "bad metadata: 'config'" for a missing key,
    and an AttributeError traceback for a config that is JSON but not an object."""
    from minigpt2.checkpoint import CheckpointError
    from safetensors.torch import save_file

    f = tmp_path / "x.safetensors"
    full = {"format": "minigpt2-packed", "precision": "int8", "config": json.dumps(SMALL.to_hf_dict()), **meta}
    if not meta:
        del full["config"]
    save_file({"x": torch.zeros(1)}, str(f), metadata=full)
    with pytest.raises(CheckpointError) as e:
        load_packed(f)
    assert str(e.value) == f"{f}: {line}"


# ---- python -m quant.report: the size table of the tiny preset, by hand ----
#
# tiny: V 50257, 128 positions, C 32, 2 layers. Parameters: embeddings (50257 + 128) x 32 = 1,612,320; linear per
# layer 4 x (32 x 32 + 32) + (128 x 32 + 128) + (32 x 128 + 32) = 12,576, so 25,152 (weights 24,576, biases 576);
# norms 5 x 64 = 320. Rows: embeddings 50,385; linear per layer 4 x 32 + 128 + 32 = 288, so 576.
# fp32 bytes: 6,449,280 / 100,608 / 1,280 (MB 6.45, 0.10, 0.00); fp64 twice, bf16 half.
# int8 / fp8: embeddings 1,612,320 + 50,385 x 4 = 1,813,860 (1.81); linear 24,576 + 576 x 4 + 576 x 4 = 29,184
#   (0.03); scales (50,385 + 576) x 4 = 203,844 (0.20).
# int4, groups of 16 (C 32: 2 groups a row; c_proj's 128 inputs: 8): embeddings 806,160 + 100,770 x 4 = 1,209,240
#   (1.21); linear 12,288 + 1,536 x 4 + 2,304 = 20,736 (0.02); scales (100,770 + 1,536) x 4 = 409,224 (0.41).
TINY_PARTS = {
    "fp64": (12_898_560, 201_216, 2_560, 0), "fp32": (6_449_280, 100_608, 1_280, 0),
    "bf16": (3_224_640, 50_304, 640, 0), "fp8": (1_813_860, 29_184, 1_280, 203_844),
    "int8": (1_813_860, 29_184, 1_280, 203_844), "int4": (1_209_240, 20_736, 1_280, 409_224),
}


def test_quant_report_table_files_and_json_of_the_tiny_preset(tmp_path, capsys):
    from quant import report

    report.main(["--model", "tiny", "--group-size", "16", "--write", str(tmp_path / "w"),
                 "--json", str(tmp_path / "t.json")])
    out = capsys.readouterr().out.splitlines()
    sizes = {p: (tmp_path / "w" / f"model-{p}.safetensors").stat().st_size for p in TINY_PARTS}
    head = (f"{'precision':<9} {'file MB':>9} {'x fp32':>7} {'embeddings MB':>14} {'linear MB':>14} "
            f"{'norms MB':>14} {'scales MB':>10}  quantized")
    assert out[0] == head and out[1] == "-" * len(head) and len(out) == 2 + 6 + 6
    rest = {"fp64": "every tensor stored as fp64", "fp32": "every tensor stored as fp32",
            "bf16": "every tensor stored as bf16",
            "fp8": "linear weights + wte (tied LM head) + wpe as fp8_e4m3 (fp32 scale per row); biases, LayerNorm "
                   "and the rest fp32",
            "int8": "linear weights + wte (tied LM head) + wpe as int8 (fp32 scale per row); biases, LayerNorm "
                    "and the rest fp32",
            "int4": "linear weights + wte (tied LM head) + wpe as int4 (fp32 scale per 16 inputs); biases, "
                    "LayerNorm and the rest fp32"}
    mb = {"fp64": ("12.90", "0.20", "0.00", "0.00"), "fp32": ("6.45", "0.10", "0.00", "0.00"),
          "bf16": ("3.22", "0.05", "0.00", "0.00"), "fp8": ("1.81", "0.03", "0.00", "0.20"),
          "int8": ("1.81", "0.03", "0.00", "0.20"), "int4": ("1.21", "0.02", "0.00", "0.41")}
    for line, p in zip(out[2:8], TINY_PARTS):
        e, li, n, s = mb[p]
        # file MB and x fp32 from the files safetensors wrote
        file_mb, ratio = f"{sizes[p] / 1e6:.2f}", f"{sizes[p] / sizes['fp32']:.3f}"
        assert line.split() == [p, file_mb, ratio, e, li, n, s] + rest[p].split()
        assert line.startswith(f"{p:<9} {file_mb:>9} {ratio:>7} {e:>14} {li:>14} {n:>14} {s:>10}  ")
    assert [line.split()[2] for line in out[2:8]] == ["1.999", "1.000", "0.500", "0.282", "0.282", "0.189"]
    for line, p in zip(out[8:], TINY_PARTS):
        assert line == f"wrote {tmp_path / 'w' / f'model-{p}.safetensors'}: {sizes[p]} bytes (matches)"
    rows = json.loads((tmp_path / "t.json").read_text())
    assert rows == [{"precision": p, "file_bytes": sizes[p], "parts": dict(zip(("embeddings", "linear", "norms"),
                                                                                TINY_PARTS[p][:3])),
                     "scale_bytes": TINY_PARTS[p][3], "quantised": rest[p]} for p in TINY_PARTS]


def test_quant_report_without_embeddings_and_its_error_lines(tmp_path, capsys):
    from quant import report

    report.main(["--model", "tiny", "--no-embeddings", "--group-size", "8", "--json", str(tmp_path / "t.json")])
    rows = {r["precision"]: r for r in json.loads((tmp_path / "t.json").read_text())}
    # embeddings stay fp32 (6,449,280 bytes). int4, groups of 8: per layer 4 x 32 x 4 + 128 x 4 + 32 x 16 = 1,536
    # scales, so linear 12,288 + 3,072 x 4 + 2,304 = 26,880 and scales 12,288
    assert rows["int8"]["parts"] == {"embeddings": 6_449_280, "linear": 29_184, "norms": 1_280}
    assert rows["int4"]["parts"] == {"embeddings": 6_449_280, "linear": 26_880, "norms": 1_280}
    assert rows["int4"]["scale_bytes"] == 12_288 and rows["int4"]["quantised"].endswith("per 8 inputs); biases, "
                                                                                       "LayerNorm and the rest fp32")
    assert rows["int8"]["scale_bytes"] == 576 * 4 and rows["fp8"]["quantised"].startswith("linear weights as fp8")
    assert len(capsys.readouterr().out.splitlines()) == 8
    with pytest.raises(SystemExit) as e:
        report.main(["--model", "tiny", "--group-size", "0"])
    assert e.value.code == 2 and capsys.readouterr().err.splitlines()[-1].endswith(
        "error: --group-size must be >= 1, got 0")
    with pytest.raises(SystemExit) as e:
        report.main(["--model", "tiny", "--group-size", "1"])
    assert str(e.value.code) == "error: INT4 group_size=1: expected an even integer >= 2 (two values share a byte)"


def test_quant_report_help_and_its_defaults_gpt2_and_groups_of_128(tmp_path, capsys):
    from quant import report

    with pytest.raises(SystemExit) as e:
        report.main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width
    for piece in ("Size table of the packed checkpoint at every precision: `python -m quant.report [--model gpt2]`. "
                  "options:",
                  "--model {gpt2,gpt2-large,gpt2-medium,gpt2-xl,tiny} model size preset (default gpt2 = 124M)",
                  "--group-size GROUP_SIZE INT4 group size along the inputs",
                  "--no-embeddings keep wte (the tied LM head) and wpe in fp32 instead of quantizing them",
                  "--write WRITE also write the real packed files (random weights) into this folder and check their "
                  "sizes",
                  "--json JSON write the table as JSON to this file"):
        assert piece in text
    report.main(["--json", str(tmp_path / "t.json")])
    rows = {r["precision"]: r for r in json.loads((tmp_path / "t.json").read_text())}
    # GPT-2 124M: embeddings (50257 + 1024) x 768, linear 85,017,600 parameters, norms 25 x 2 x 768.
    # int4 in groups of 128: 84,934,656 linear weights / 2 = 42,467,328 bytes; scales per layer
    # 4 x 768 x 6 + 3072 x 6 + 768 x 24 = 55,296, x 12 x 4 = 2,654,208; biases 82,944 x 4 = 331,776
    assert rows["fp32"]["parts"] == {"embeddings": 51_281 * 768 * 4, "linear": 85_017_600 * 4, "norms": 153_600}
    assert rows["int4"]["parts"]["linear"] == 42_467_328 + 2_654_208 + 331_776
    assert "wte (tied LM head)" in rows["int4"]["quantised"] and "per 128 inputs" in rows["int4"]["quantised"]
    assert (tmp_path / "t.json").read_text().startswith('[\n  {\n    "precision": "fp64",\n    "file_bytes": ')
    assert (tmp_path / "t.json").read_text().endswith('\n  }\n]\n')


def test_reports_defaults_are_embeddings_and_groups_of_128():
    from quant.report import reports

    rows = reports(GPT2Config(vocab_size=10, n_positions=4, n_embd=128, n_layer=1, n_head=2))
    assert [r.precision for r in rows] == ["fp64", "fp32", "bf16", "fp8", "int8", "int4"]
    assert rows[-1].quantized == ("linear weights + wte (tied LM head) + wpe as int4 (fp32 scale per 128 inputs); "
                                  "biases, LayerNorm and the rest fp32")


def test_format_table_megabytes_are_millions_of_bytes():
    from quant.report import format_table

    # 1,375,000 bytes is 1.375 MB, printed "1.38" (an exact binary tie, to even); over 1,000,001 it would be 1.37;
    # likewise the file's 4,375,000 (4.38) and the scales' 375,000 (0.38)
    fp32 = SizeReport("fp32", {"embeddings": 1_375_000, "linear": 2_625_000, "norms": 4_000}, 4_375_000 - 4_004_008,
                      "all fp32", extra={"scale_bytes": 375_000})
    assert fp32.file_bytes == 4_375_000
    line = format_table([fp32]).splitlines()[2]
    assert line == (f"{'fp32':<9} {'4.38':>9} {'1.000':>7} {'1.38':>14} {'2.62':>14} {'0.00':>14} {'0.38':>10}  "
                    "all fp32")


def test_quant_report_writes_files_without_embeddings_and_says_when_a_size_differs(tmp_path, capsys, monkeypatch):
    from quant import export, report

    report.main(["--model", "tiny", "--no-embeddings", "--group-size", "8", "--write", str(tmp_path)])
    wrote = [line for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")]
    assert len(wrote) == 6 and all(line.endswith(" bytes (matches)") for line in wrote)

    def one_byte_off(*args, **kwargs):
        r = export.size_report(*args, **kwargs)
        r.header_bytes += 1
        return r

    monkeypatch.setattr(report, "size_report", one_byte_off)
    report.main(["--model", "tiny", "--group-size", "8", "--write", str(tmp_path / "b")])
    wrote = [line for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")]
    size = (tmp_path / "b" / "model-int4.safetensors").stat().st_size
    assert wrote[-1] == f"wrote {tmp_path / 'b' / 'model-int4.safetensors'}: {size} bytes (DIFFERS from the computed " \
                        f"{size + 1})"


# ---- the int8 CPU decode path (fbgemm) on a weight and inputs worked out by hand ----


def _hand_linear(bias: bool = True) -> "torch.nn.Linear":
    # the int8 weight of test_int8_codes_and_scales_of_a_2x4_weight: codes [[127, -64, 32, 2], [-127, 32, 0, 2]],
    # scales 1/128 and 1/64, so the int8 rows are [127/128, -1/2, 1/4, 2/128] and [-127/64, 1/2, 0, 2/64]
    lin = torch.nn.Linear(4, 2, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[127 / 128, -0.5, 0.25, 3 / 256], [-127 / 64, 0.5, 1 / 128, 3 / 128]]))
        if bias:
            lin.bias.copy_(torch.tensor([0.5, -0.25]))
    return lin


def test_int8_linear_by_hand_one_token_and_two():
    from quant.int8_linear import Int8Linear

    fast = Int8Linear.from_linear(_hand_linear())
    assert repr(fast) == "Int8Linear(in_features=4, out_features=2, int8 fbgemm dynamic)"
    # token a = [-63/64, 0, 1/2, 1]: range 127/64 on 127 steps, scale 1/64, zero point 63: codes exact.
    #   y0 = -63/64 * 127/128 + 1/2 * 1/4 + 2/128 + 0.5 = (-8001 + 1024 + 128) / 8192 + 0.5 = -6849/8192 + 0.5
    #   y1 = 63/64 * 127/64 + 2/64 - 0.25 = 8129/4096 - 0.25
    a = [-63 / 64, 0.0, 0.5, 1.0]
    ya = [-6849 / 8192 + 0.5, 8129 / 4096 - 0.25]
    assert fast(torch.tensor([a])).tolist() == [ya]
    # token b = [0.3, 0, -0.2, 0.1]: scale s = 0.5/127, zero round(50.8) = 51: codes 76 (76.2), 0, -51 (-50.8),
    #   25 (25.4). y0 = s (76 * 127/128 - 51/4 + 25 * 2/128) + 0.5 = 63.046875 s + 0.5;
    #   y1 = s (-76 * 127/64 + 25 * 2/64) - 0.25 = -150.03125 s - 0.25. Activations on [0, 255] (no reduce_range)
    #   would give 0.7492 and -0.8422 here.
    s = 0.5 / 127
    yb = [63.046875 * s + 0.5, -150.03125 * s - 0.25]
    torch.testing.assert_close(fast(torch.tensor([[0.3, 0.0, -0.2, 0.1]])), torch.tensor([yb]), rtol=0, atol=1e-6)
    # two tokens at once: each keeps its own scale (one scale for both would move a's codes); (2, 1, 4) alike
    both = fast(torch.tensor([[a], [[0.3, 0.0, -0.2, 0.1]]]))
    assert both.shape == (2, 1, 2)
    assert both[0].tolist() == [ya]
    torch.testing.assert_close(both[1], torch.tensor([yb]), rtol=0, atol=1e-6)


def test_stacked_int8_linears_without_bias_with_bias_and_mixed():
    from quant.int8_linear import Int8Linear

    a = [[-63 / 64, 0.0, 0.5, 1.0]]
    y = [-6849 / 8192, 8129 / 4096]  # test_int8_linear_by_hand_one_token_and_two, without the bias
    x = torch.tensor(a)
    assert Int8Linear.stacked([_hand_linear(False), _hand_linear(False)])(x).tolist() == [y + y]
    assert Int8Linear.stacked([_hand_linear(), _hand_linear()])(x).tolist() == [[y[0] + 0.5, y[1] - 0.25] * 2]
    mixed = Int8Linear.stacked([_hand_linear(False), _hand_linear(), _hand_linear(False)])
    assert mixed.out_features == 6 and mixed(x).tolist() == [y + [y[0] + 0.5, y[1] - 0.25] + y]


def test_int8_refusals_whole_lines():
    from quant import FakeQuantLinear, quantize_model
    from quant.int8_linear import Int8Linear, to_int8_decoder

    with pytest.raises(ValueError) as e:
        Int8Linear(torch.zeros(2, 3), torch.ones(2, 1), None)
    assert str(e.value) == "Int8Linear needs a 2-D int8 weight, got torch.float32 of shape (2, 3)"
    with pytest.raises(ValueError) as e:
        Int8Linear(torch.zeros(3, dtype=torch.int8), torch.ones(3), None)
    assert str(e.value) == "Int8Linear needs a 2-D int8 weight, got torch.int8 of shape (3,)"
    layer = FakeQuantLinear(_hand_linear(), QuantConfig(weight="int8"))
    layer.enabled = False
    with pytest.raises(ValueError) as e:
        Int8Linear.from_fake_quant(layer)
    assert str(e.value) == "Int8Linear runs int8 weights; this layer simulates 'int8' (enabled=False)"
    # int4 tables, linear layers left plain (skipped): the embedding is refused by name
    model = quantize_model(small(), QuantConfig(weight="int4", group_size=4), skip=["h"])
    with pytest.raises(ValueError) as e:
        to_int8_decoder(model)
    assert str(e.value) == "wte: embedding simulates 'int4', not int8"


def test_int8_linear_of_one_input_feature_still_scales_each_token_alone():
    from quant.int8_linear import Int8Linear

    lin = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(127 / 128)  # code 127, scale 1/128
    # each token alone: 1.0 and 0.3 are each their own range's top (code 127), so exact: 127/128 and 0.3 * 127/128;
    # with one scale for both (1/127), 0.3 would be code 38 and give 38/127 * 127/128 = 0.296875
    y = Int8Linear.from_linear(lin)(torch.tensor([[1.0], [0.3]]))
    torch.testing.assert_close(y, torch.tensor([[127 / 128], [0.3 * 127 / 128]]), rtol=0, atol=1e-7)


# ---- the fake-quant layers on the same hand weights ----


def test_fake_quant_linear_by_hand_weight_only_with_activations_and_disabled():
    from quant.fake import FakeQuantLinear

    x = torch.tensor([[0.3, 0.0, -0.2, 0.1]])
    # int8 weights [127/128, -1/2, 1/4, 2/128] . x + 0.5 = 0.29765625 - 0.05 + 0.0015625 + 0.5 = 0.74921875;
    # row 1: [-127/64, 1/2, 0, 2/64] . x - 0.25 = -0.5953125 + 0.003125 - 0.25 = -0.8421875
    w_only = FakeQuantLinear(_hand_linear(), QuantConfig(weight="int8"))
    torch.testing.assert_close(w_only(x), torch.tensor([[0.74921875, -0.8421875]]), rtol=0, atol=1e-6)
    # activations too: the codes of test_int8_linear_by_hand_one_token_and_two
    s = 0.5 / 127
    both = FakeQuantLinear(_hand_linear(), QuantConfig(weight="int8", activations=True))
    torch.testing.assert_close(both(x), torch.tensor([[63.046875 * s + 0.5, -150.03125 * s - 0.25]]), rtol=0,
                               atol=1e-6)
    # activations only: x's codes 76, 0, -51, 25 times s against the full-precision weight
    act = FakeQuantLinear(_hand_linear(), QuantConfig(weight=None, activations=True))
    xq = torch.tensor([[76 * s, 0.0, -51 * s, 25 * s]])
    w = torch.tensor([[127 / 128, -0.5, 0.25, 3 / 256], [-127 / 64, 0.5, 1 / 128, 3 / 128]])
    torch.testing.assert_close(act(x), xq @ w.T + torch.tensor([0.5, -0.25]), rtol=0, atol=1e-6)
    both.enabled = False  # the plain layer: 0.29765625 - 0.05 + 0.001171875 + 0.5, and row 1 likewise
    torch.testing.assert_close(both(x), torch.tensor([[0.748828125, -0.5953125 - 0.0015625 + 0.00234375 - 0.25]]),
                               rtol=0, atol=1e-6)
    assert repr(w_only) == ("FakeQuantLinear(in_features=4, out_features=2, bias=True, QuantConfig(weight='int8', "
                            "group_size=128, activations=False, embeddings=True), enabled=True)")


def test_fake_quant_embedding_by_hand():
    from quant.fake import FakeQuantEmbedding

    table = torch.tensor([[0.875, -0.4375, 0.25, -1.75], [0.0, 0.0, 7 / 32, 3 / 32]])  # the int4 example
    quantized = [[0.875, -0.5, 0.25, -1.75], [0.0, 0.0, 7 / 32, 3 / 32]]
    emb = FakeQuantEmbedding(torch.nn.Embedding.from_pretrained(table.clone(), freeze=False),
                             QuantConfig(weight="int4", group_size=2))
    assert emb.weight.tolist() == quantized and emb.latent_weight.tolist() == table.tolist()
    assert emb(torch.tensor([[1, 0], [0, 0]])).tolist() == [[quantized[1], quantized[0]], [quantized[0]] * 2]
    assert emb.to_plain().weight.tolist() == table.tolist()
    assert repr(emb) == ("FakeQuantEmbedding(2, 4, QuantConfig(weight='int4', group_size=2, activations=False, "
                         "embeddings=True), enabled=True)")
    emb.enabled = False
    assert emb.weight.tolist() == table.tolist() and emb(torch.tensor([0])).tolist() == [table[0].tolist()]


def test_fake_quant_layer_norm_keeps_eps_and_bias_and_quantizes_its_output():
    from quant.fake import FakeQuantLayerNorm

    norm = torch.nn.LayerNorm(4, eps=1e-3, bias=False)
    fq = FakeQuantLayerNorm(norm, QuantConfig(weight=None, activations=True))
    assert fq.eps == 1e-3 and fq.bias is None and fq.weight is norm.weight
    # x has variance 1.25e-4, small beside eps: (x - 0.015) / sqrt(1.25e-4 + 1e-3) = [-0.4472, -0.1491, 0.1491,
    # 0.4472] (1e-5 would give +-1.34); then quantized per token on 127 steps
    x = torch.tensor([[0.0, 0.01, 0.02, 0.03]])
    y = (x - 0.015) / (1.25e-4 + 1e-3) ** 0.5
    torch.testing.assert_close(fq(x), fake_quantize_activations(y), rtol=0, atol=1e-6)
    plain = fq.to_plain()
    assert plain.eps == 1e-3 and plain.bias is None and plain.weight is norm.weight
    fq.enabled = False
    torch.testing.assert_close(fq(x), y, rtol=0, atol=1e-6)
    assert repr(fq) == ("FakeQuantLayerNorm((4,), eps=0.001, elementwise_affine=True, bias=False, "
                        "QuantConfig(weight=None, group_size=128, activations=True, embeddings=True), enabled=False)")


def test_fake_quant_layers_refusals_whole_lines():
    from quant.fake import FakeQuantEmbedding, FakeQuantLayerNorm, FakeQuantLinear

    cases = [
        (lambda: FakeQuantLinear(torch.nn.Identity(), QuantConfig()), TypeError,
         "linear: FakeQuantLinear is made from an nn.Linear, got Identity"),
        (lambda: FakeQuantLinear(torch.nn.Linear(6, 2), QuantConfig(weight="int4", group_size=4)), ValueError,
         "linear: INT4 group_size=4 does not divide in_features=6; pick a divisor of 6"),
        (lambda: FakeQuantLinear(torch.nn.Linear(6, 2), QuantConfig(weight="int4", group_size=4), name="h.0.x"),
         ValueError, "h.0.x: INT4 group_size=4 does not divide in_features=6; pick a divisor of 6"),
        (lambda: FakeQuantEmbedding(torch.nn.Linear(6, 2), QuantConfig()), TypeError,
         "embedding: FakeQuantEmbedding is made from an nn.Embedding, got Linear"),
        (lambda: FakeQuantEmbedding(torch.nn.Embedding(3, 6), QuantConfig(weight=None, activations=True)),
         ValueError, "embedding: embedding quantization needs a weight format, got weight=None"),
        (lambda: FakeQuantEmbedding(torch.nn.Embedding(3, 6), QuantConfig(weight="int4", group_size=4)),
         ValueError, "embedding: INT4 group_size=4 does not divide in_features=6; pick a divisor of 6"),
        (lambda: FakeQuantEmbedding(torch.nn.Embedding(3, 6), QuantConfig(weight="int4", group_size=4), name="wte"),
         ValueError, "wte: INT4 group_size=4 does not divide in_features=6; pick a divisor of 6"),
        (lambda: FakeQuantLayerNorm(torch.nn.Linear(6, 2), QuantConfig()), TypeError,
         "layernorm: FakeQuantLayerNorm is made from an nn.LayerNorm, got Linear"),
        (lambda: FakeQuantLayerNorm(torch.nn.Linear(6, 2), QuantConfig(), name="ln_f"), TypeError,
         "ln_f: FakeQuantLayerNorm is made from an nn.LayerNorm, got Linear"),
    ]
    for make, kind, line in cases:
        with pytest.raises(kind) as e:
            make()
        assert str(e.value) == line
    FakeQuantLinear(torch.nn.Linear(6, 2), QuantConfig(weight=None, activations=True, group_size=4))  # no groups


def test_fake_quant_layers_allocate_and_draw_nothing():
    """Built on the meta device and handed the layer's own parameters: making a fake-quant layer (or its plain
    layer back) draws no random numbers, so a seeded run goes on exactly as it would have (a CPU placeholder would
    be initialised at random and move torch's generator)."""
    from quant.fake import FakeQuantEmbedding, FakeQuantLayerNorm, FakeQuantLinear

    lin, emb, norm = torch.nn.Linear(4, 2), torch.nn.Embedding(3, 4), torch.nn.LayerNorm(4)
    no_bias = torch.nn.Linear(4, 2, bias=False)
    torch.manual_seed(0)
    expected = torch.rand(3).tolist()
    torch.manual_seed(0)
    layers = [FakeQuantLinear(lin, QuantConfig()), FakeQuantLinear(no_bias, QuantConfig()),
              FakeQuantEmbedding(emb, QuantConfig()), FakeQuantLayerNorm(norm, QuantConfig())]
    plains = [layer.to_plain() for layer in layers]
    assert torch.rand(3).tolist() == expected
    assert [type(p).__name__ for p in plains] == ["Linear", "Linear", "Embedding", "LayerNorm"]
    assert plains[0].bias is lin.bias and plains[1].bias is None and plains[2].weight is emb.weight
    assert plains[3].elementwise_affine is True and plains[3].weight is norm.weight and plains[3].bias is norm.bias
    assert layers[3].elementwise_affine is True and layers[3].eps == 1e-5


def test_fake_quant_layer_norm_without_affine_parameters():
    from quant.fake import FakeQuantLayerNorm

    fq = FakeQuantLayerNorm(torch.nn.LayerNorm(4, elementwise_affine=False), QuantConfig(weight=None,
                                                                                     activations=True))
    plain = fq.to_plain()
    assert (fq.elementwise_affine, fq.weight, fq.bias) == (False, None, None)
    assert (plain.elementwise_affine, plain.weight, plain.bias) == (False, None, None)
    assert [n for n, _ in fq.named_parameters()] == [] and [n for n, _ in plain.named_parameters()] == []


# ---- QuantConfig: defaults, names and every refusal's whole line ----


def test_quant_config_defaults_precisions_and_json():
    from quant.config import DEFAULT_GROUP_SIZE, DTYPE_PRECISIONS, PRECISION_FORMAT, PRECISIONS, WEIGHT_FORMATS

    cfg = QuantConfig()
    assert (cfg.weight, cfg.group_size, cfg.activations, cfg.embeddings) == ("int8", 128, False, True)
    assert DEFAULT_GROUP_SIZE == 128 and PRECISIONS == ("fp64", "fp32", "bf16", "fp8", "int8", "int4")
    assert DTYPE_PRECISIONS == {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16}
    assert PRECISION_FORMAT == {"fp8": "fp8_e4m3", "int8": "int8", "int4": "int4"}
    assert WEIGHT_FORMATS == ("fp8_e4m3", "fp8_e5m2", "int8", "int4")
    assert cfg.to_json() == '{"activations": false, "embeddings": true, "group_size": 128, "weight": "int8"}'
    assert cfg.to_dict() == {"weight": "int8", "group_size": 128, "activations": False, "embeddings": True}
    assert [QuantConfig.for_precision(p).weight for p in ("fp8", "int8", "int4")] == ["fp8_e4m3", "int8", "int4"]
    assert QuantConfig.for_precision("int4", group_size=32, embeddings=False) == QuantConfig(
        weight="int4", group_size=32, embeddings=False)
    assert cfg.replace(weight="fp8_e5m2", activations=True) == QuantConfig(weight="fp8_e5m2", activations=True)
    assert QuantConfig(weight=None, activations=True).weight is None  # activations alone
    assert QuantConfig.from_dict({"weight": "int4", "group_size": 2}) == QuantConfig(weight="int4", group_size=2)
    # the --help lines of the finetune command's quantization flags (app.cli reads them from the fields)
    fields = QuantConfig.__dataclass_fields__
    assert fields["group_size"].metadata["help"] == "INT4 group size along each layer's inputs (must divide n_embd)"
    assert fields["activations"].metadata["help"] == (
        "also fake-quantize linear-layer inputs per token (7-bit asymmetric, as the int8 CPU decode path runs them)")
    assert fields["embeddings"].metadata["help"] == "quantize wte (the tied LM head) and wpe too"
    assert fields["embeddings"].metadata["help_off"] == "keep wte (the tied LM head) and wpe in fp32"


@pytest.mark.parametrize("kw,line", [
    (dict(weight="int3"), "weight 'int3': expected one of ('fp8_e4m3', 'fp8_e5m2', 'int8', 'int4') or None"),
    (dict(weight="INT8"), "weight 'INT8': expected one of ('fp8_e4m3', 'fp8_e5m2', 'int8', 'int4') or None"),
    (dict(group_size=7), "group_size 7: expected an even integer >= 2 (two INT4 values share a byte)"),
    (dict(group_size=0), "group_size 0: expected an even integer >= 2 (two INT4 values share a byte)"),
    (dict(group_size=1), "group_size 1: expected an even integer >= 2 (two INT4 values share a byte)"),
    (dict(group_size=-2), "group_size -2: expected an even integer >= 2 (two INT4 values share a byte)"),
    (dict(group_size=True), "group_size True: expected an even integer >= 2 (two INT4 values share a byte)"),
    (dict(group_size=2.0), "group_size 2.0: expected an even integer >= 2 (two INT4 values share a byte)"),
    (dict(activations="false"), "activations 'false': expected true or false"),
    (dict(embeddings=1), "embeddings 1: expected true or false"),
    (dict(weight=None), "QuantConfig simulates nothing: weight=None and activations=False"),
])
def test_quant_config_refusals_whole_lines(kw, line):
    from quant.config import QuantFieldError

    with pytest.raises(QuantSettingsError) as e:
        QuantConfig(**kw)
    assert str(e.value) == line
    assert isinstance(e.value, QuantFieldError) == ("simulates nothing" not in line)
    if isinstance(e.value, QuantFieldError):
        assert e.value.field == next(iter(kw))


def test_quant_config_readers_name_their_source():
    assert QuantConfig(group_size=2).group_size == 2 and QuantConfig(activations=True, embeddings=False)
    with pytest.raises(QuantSettingsError) as e:
        QuantConfig.for_precision("bf16")
    assert str(e.value) == ("precision 'bf16' is not a fake-quant format: expected one of ['fp8', 'int4', 'int8'] "
                            "(fp64/fp32/bf16 are plain dtype casts)")
    with pytest.raises(QuantSettingsError) as e:
        QuantConfig.from_dict({"bits": 4, "a": 1}, source="f.json")
    assert str(e.value) == ("f.json: unknown quantization key(s) ['a', 'bits']; expected ['activations', "
                            "'embeddings', 'group_size', 'weight']")
    with pytest.raises(QuantSettingsError) as e:
        QuantConfig.from_dict({"group_size": 3}, source="f.json")
    assert str(e.value) == "f.json: group_size 3: expected an even integer >= 2 (two INT4 values share a byte)"
    with pytest.raises(QuantSettingsError) as e:
        QuantConfig.from_dict({"bits": 4})
    assert str(e.value).startswith("config: unknown quantization key(s) ['bits']")
    with pytest.raises(QuantSettingsError) as e:
        QuantConfig.from_dict({"weight": None})
    assert str(e.value) == "config: QuantConfig simulates nothing: weight=None and activations=False"


def test_ste_gradient_on_a_float8_grid_is_zero_past_its_edge():
    """Was 1 everywhere for E4M3: torch saturates float8_e4m3fn casts, so 1e6 "rounded" to 448 and counted as
    inside, though the clamp cut it off."""
    from quant.ste import fake_quant_ste

    # E4M3: the top binade [256, 512) has steps of 32; past 448 would come 480, so the edge is 464. 450 and
    # 463.9 round to 448 (inside, as the integer grid's 7.0000005 rounds to 7); 464 is a tie that rounds to the
    # even 448 (14 steps of 32); 464.1, -470 and 1e6 round past it (outside); NaN is outside.
    x = torch.tensor([1e6, 450.0, 463.9, 464.0, 464.1, -470.0, 448.0, -448.0, 0.3, float("nan")], requires_grad=True)
    y = fake_quant_ste(x, torch.tensor(1.0), -448.0, 448.0, torch.float8_e4m3fn)
    y.backward(torch.ones_like(y))
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    assert y[:8].tolist() == [448.0, 448.0, 448.0, 448.0, 448.0, -448.0, 448.0, -448.0]  # the values clamp as before
    # E5M2 (steps of 8192 above 32768, edge 61440, 57344 = 7 steps: a tie there rounds up): torch's cast, which
    # overflows to inf, is the referee
    x = torch.tensor([1e6, 58000.0, 61439.0, 61440.0, -61440.0, -57344.0], requires_grad=True)
    y = fake_quant_ste(x, torch.tensor(1.0), -57344.0, 57344.0, torch.float8_e5m2)
    y.backward(torch.ones_like(y))
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    assert x.grad.tolist() == torch.isfinite(x.detach().to(torch.float8_e5m2).float()).float().tolist()


# ---- quantize_model, ptq, apply_precision: which layers, names, skips ----


def _fake(model) -> list[str]:
    from quant.qaft import fake_quant_modules

    return [n for n, _ in fake_quant_modules(model)]


def test_skips_leave_whole_subtrees_and_only_them():
    from quant import apply_precision, ptq, quantize_model
    from quant.qaft import quant_config_of

    linear = ["attn.query", "attn.key", "attn.value", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    two = GPT2Config(vocab_size=10, n_positions=4, n_embd=8, n_layer=2, n_head=2, dropout=0.0)

    def model():
        from minigpt2.model import GPT2

        return GPT2(two)

    cfg = QuantConfig(weight="int8")
    # "h.0" skips h.0.* (and the block itself) but the layers after it are still swapped
    assert _fake(quantize_model(model(), cfg, skip=["h.0"])) == ["wte", "wpe"] + [f"h.1.{n}" for n in linear]
    assert _fake(quantize_model(model(), cfg, skip=["h.1.mlp", "wpe"])) == \
        ["wte"] + [f"h.0.{n}" for n in linear] + [f"h.1.{n}" for n in linear[:4]]
    assert _fake(ptq(model(), cfg, skip=["h"])) == ["wte", "wpe"]
    assert _fake(apply_precision(model(), "int8", skip=["h.1"])) == ["wte", "wpe"] + [f"h.0.{n}" for n in linear]
    m = apply_precision(model(), "int8")  # no cfg: the precision's own
    assert quant_config_of(m) == cfg
    # activations also swap ln_f, the head's input
    assert _fake(quantize_model(model(), QuantConfig(weight=None, activations=True), skip=["h.0", "h.1"])) == \
        ["ln_f"]


def test_quantize_model_reaches_a_gpt2_inside_another_module_by_its_leaf_names():
    from quant import quantize_model

    holder = torch.nn.ModuleDict({"gpt": small()})
    names = _fake(quantize_model(holder, QuantConfig(weight="int8", activations=True)))
    assert names[:2] == ["gpt.wte", "gpt.wpe"] and names[-1] == "gpt.ln_f" and len(names) == 2 + 6 + 1


def test_qaft_refusals_whole_lines_and_the_enabled_flag():
    from quant import apply_precision, quantize_model, set_quant_enabled
    from quant.qaft import quant_config_of

    with pytest.raises(QuantSettingsError) as e:
        quantize_model(small(), QuantConfig(weight="int4", group_size=16))  # C 8: the first layer met is wte
    assert str(e.value) == "wte: INT4 group_size=16 does not divide in_features=8; pick a divisor of 8"
    with pytest.raises(ValueError) as e:
        apply_precision(small(), "int9")
    assert str(e.value) == "precision 'int9': expected one of ('fp64', 'fp32', 'bf16', 'fp8', 'int8', 'int4')"
    with pytest.raises(ValueError) as e:
        apply_precision(small(), "int4", QuantConfig(weight="int8"))
    assert str(e.value) == "precision 'int4' simulates weight='int4', but cfg has 'int8'"
    mixed = quantize_model(small(), QuantConfig(weight="int8"), skip=["h.0.mlp"])
    quantize_model(mixed, QuantConfig(weight="int4", group_size=4))  # the mlp layers get the other config
    with pytest.raises(ValueError) as e:
        quant_config_of(mixed)
    assert str(e.value) == (
        "model mixes 2 quantization configs: [\"QuantConfig(weight='int4', group_size=4, activations=False, "
        "embeddings=True)\", \"QuantConfig(weight='int8', group_size=128, activations=False, embeddings=True)\"]")
    model = quantize_model(small(), QuantConfig(weight="int8"))
    set_quant_enabled(model, False)
    assert repr(model.h[0].attn.query).endswith("enabled=False)") and model.wte.enabled is False
    set_quant_enabled(model, True)
    assert model.h[0].mlp.c_fc.enabled is True
