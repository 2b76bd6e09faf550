"""quant/gguf against expectations built outside it: every tensor's name, ggml shape and type written by hand for
a small config, the metadata keys with their GGUF value types, the values read back by the `gguf` package's own
GGUFReader, one q8_0 and one q4_0 block worked by hand, and every refusal's whole line. Written to kill the
survivors of `python tools/mutate.py --auto quant/gguf/__init__.py`.

The vocabulary is a stand-in of four tokens (`gpt2_vocab` is tested on the real BPE files in test_gguf.py): a
GGUF holding GPT-2's 50257 tokens and 50000 merges takes seconds to read, which would make this file slow."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from minigpt2.checkpoint import CheckpointError
from minigpt2.config import GPT2Config
from minigpt2.model import GPT2
from quant import gguf as qg
from quant.config import QuantConfig
from quant.qaft import quantize_model

gguf = pytest.importorskip("gguf")

# All sizes differ (C 64, L 2, heads 4, V 96, context 48) and epsilon is not the default, so that a metadata key
# or a shape taken from the wrong size shows.
C, L, HEADS, V, CTX, EPS = 64, 2, 4, 96, 48, 1e-6
CONFIG = GPT2Config(vocab_size=V, n_positions=CTX, n_embd=C, n_layer=L, n_head=HEADS, layer_norm_epsilon=EPS)
VOCAB = (["a", "b", "ab", "<|endoftext|>"], [1, 1, 1, 3], ["a b"])
FILE_TYPE = {"f32": 0, "f16": 1, "q8_0": 7, "q4_0": 2}  # llama.cpp's LLAMA_FTYPE_ALL_F32, MOSTLY_F16, _Q8_0, _Q4_0

# One block of each quantized type worked by hand, in rows 0 and 1 of block 0's attention output (out, in):
# q8_0, row 0: block 1 = 2.54, -1.0, 0.011, 0.009, then zeros: d = 2.54 / 127 = 0.02, stored as fp16 0x251F
#   (exponent 9 - 15 = -6, mantissa 287/1024: (1 + 287/1024) / 64 = 0.0200042724609375); q = x / d rounded half
#   away from zero = 127, -50, 1 (0.55), 0 (0.45). Block 2 all zeros: d = 0, every q 0.
Q8_ROW = [2.54, -1.0, 0.011, 0.009] + [0.0] * 60
Q8_D = 0.0200042724609375
Q8_BYTES = bytes([0x1F, 0x25, 127, 256 - 50, 1] + [0] * 29) + bytes(34)
# q4_0, row 1: block 1 = -1.6, 1.5, 0.31, 0.29, then zeros: the largest magnitude is -1.6, d = -1.6 / -8 = 0.2,
#   fp16 0x3266 ((1 + 614/1024) / 8 = 0.199951171875); q = min(15, trunc(x / d + 8.5)) = 0, 15 (16 clipped),
#   10 (10.05), 9 (9.95), and 8 for the zeros. Bytes: value j in the low nibble of byte j, value j + 16 in the high
#   one: 0x80, 0x8F, 0x8A, 0x89, then 0x88. Block 2 all zeros: d = 0 / -8 = -0.0 (fp16 0x8000), every q 8 (0x88).
Q4_ROW = [-1.6, 1.5, 0.31, 0.29] + [0.0] * 60
Q4_D = 0.199951171875
Q4_BYTES = bytes([0x66, 0x32, 0x80, 0x8F, 0x8A, 0x89] + [0x88] * 12) + bytes([0x00, 0x80] + [0x88] * 16)


def make_model(config: GPT2Config = CONFIG, seed: int = 0) -> GPT2:
    """Every parameter random (LayerNorms and biases too), so that a tensor put in another's place shows."""
    torch.manual_seed(seed)
    model = GPT2(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
        if config.n_embd == C:
            model.h[0].attn.c_proj.weight[0] = torch.tensor(Q8_ROW)
            model.h[0].attn.c_proj.weight[1] = torch.tensor(Q4_ROW)
    return model.eval()


MODEL = make_model()


@pytest.fixture(autouse=True)
def vocab_calls(monkeypatch):
    """The stand-in vocabulary, and the tokenizer folders export_gguf asked it for."""
    calls = []
    monkeypatch.setattr(qg, "gpt2_vocab", lambda bpe_dir=None: (calls.append(bpe_dir), VOCAB)[1])
    return calls


def exported(tmp_path, type_: str):
    """MODEL written at `type_` (name "small", tokenizer folder tmp_path/bpe) in each test that reads it: mutmut
    counts a function as reached only by the test whose own setup or body calls it, so no module-scoped file."""
    path = qg.export_gguf(MODEL, tmp_path / f"{type_}.gguf", type_, name="small", bpe_dir=tmp_path / "bpe")
    return path, gguf.GGUFReader(path)


def expected_layout(type_: str) -> dict[str, tuple[list[int], str]]:
    """name -> (ggml shape, fastest dimension first; type), written out for C 64, L 2, V 96, context 48."""
    m = type_.upper()
    out = {"token_embd.weight": ([C, V], m), "position_embd.weight": ([C, CTX], "F32"),
           "output_norm.weight": ([C], "F32"), "output_norm.bias": ([C], "F32")}
    for i in range(L):
        b = f"blk.{i}."
        out.update({b + "attn_norm.weight": ([C], "F32"), b + "attn_norm.bias": ([C], "F32"),
                    b + "attn_qkv.weight": ([C, 3 * C], m), b + "attn_qkv.bias": ([3 * C], "F32"),
                    b + "attn_output.weight": ([C, C], m), b + "attn_output.bias": ([C], "F32"),
                    b + "ffn_norm.weight": ([C], "F32"), b + "ffn_norm.bias": ([C], "F32"),
                    b + "ffn_up.weight": ([C, 4 * C], m), b + "ffn_up.bias": ([4 * C], "F32"),
                    b + "ffn_down.weight": ([4 * C, C], m), b + "ffn_down.bias": ([C], "F32")})
    return out


def hf_names(i: int) -> dict[str, list[str]]:
    """blk.i's GGUF tensors -> the minigpt2 parameters they hold, in order (attn_qkv: query, key, value)."""
    h, b = f"h.{i}.", f"blk.{i}."
    out = {}
    for p in ("weight", "bias"):
        out.update({f"{b}attn_norm.{p}": [f"{h}ln_1.{p}"],
                    f"{b}attn_qkv.{p}": [f"{h}attn.query.{p}", f"{h}attn.key.{p}", f"{h}attn.value.{p}"],
                    f"{b}attn_output.{p}": [f"{h}attn.c_proj.{p}"], f"{b}ffn_norm.{p}": [f"{h}ln_2.{p}"],
                    f"{b}ffn_up.{p}": [f"{h}mlp.c_fc.{p}"], f"{b}ffn_down.{p}": [f"{h}mlp.c_proj.{p}"]})
    return out


NAMES = {"token_embd.weight": ["wte.weight"], "position_embd.weight": ["wpe.weight"],
         "output_norm.weight": ["ln_f.weight"], "output_norm.bias": ["ln_f.bias"], **hf_names(0), **hf_names(1)}


# ---- what is written ----

@pytest.mark.parametrize("type_", qg.TYPES)
def test_every_tensor_name_shape_and_type_by_hand(tmp_path, type_):
    per_value = {"F32": 4, "F16": 2, "Q8_0": 34 / 32, "Q4_0": 18 / 32}
    _, reader = exported(tmp_path, type_)
    got = {t.name: ([int(d) for d in t.shape], t.tensor_type.name) for t in reader.tensors}
    assert got == expected_layout(type_)
    for t in reader.tensors:
        assert t.n_bytes == t.n_elements * per_value[t.tensor_type.name], t.name


@pytest.mark.parametrize("type_", ["f32", "f16"])
def test_values_are_the_models_parameters(tmp_path, type_):
    """f32 holds the parameters exactly, f16 their IEEE half; 1-D tensors and the position table f32 always."""
    state = MODEL.state_dict()
    for t in exported(tmp_path, type_)[1].tensors:
        want = torch.cat([state[k] for k in NAMES[t.name]]).numpy()
        if t.tensor_type.name == "F16":
            want = want.astype(np.float16)
        assert t.data.dtype == want.dtype and np.array_equal(t.data, want), t.name


@pytest.mark.parametrize("type_", qg.TYPES)
def test_metadata_keys_values_and_gguf_types(tmp_path, vocab_calls, type_):
    f32_eps = float(np.float32(EPS))
    want = {"general.architecture": ("gpt2", ["STRING"]), "general.name": ("small", ["STRING"]),
            "general.file_type": (FILE_TYPE[type_], ["UINT32"]),
            "gpt2.context_length": (CTX, ["UINT32"]), "gpt2.embedding_length": (C, ["UINT32"]),
            "gpt2.feed_forward_length": (4 * C, ["UINT32"]), "gpt2.block_count": (L, ["UINT32"]),
            "gpt2.attention.head_count": (HEADS, ["UINT32"]),
            "gpt2.attention.layer_norm_epsilon": (f32_eps, ["FLOAT32"]),
            "tokenizer.ggml.model": ("gpt2", ["STRING"]), "tokenizer.ggml.pre": ("gpt-2", ["STRING"]),
            "tokenizer.ggml.tokens": (VOCAB[0], ["ARRAY", "STRING"]),
            "tokenizer.ggml.token_type": (VOCAB[1], ["ARRAY", "INT32"]),
            "tokenizer.ggml.merges": (VOCAB[2], ["ARRAY", "STRING"]),
            "tokenizer.ggml.bos_token_id": (50256, ["UINT32"]), "tokenizer.ggml.eos_token_id": (50256, ["UINT32"]),
            "tokenizer.ggml.add_bos_token": (False, ["BOOL"])}
    fields = {k: (f.contents(), [t.name for t in f.types]) for k, f in exported(tmp_path, type_)[1].fields.items()
              if not k.startswith("GGUF.")}
    assert fields == want
    assert vocab_calls == [str(tmp_path / "bpe")]  # the folder given, as a string


def test_defaults_f32_minigpt2_and_the_tokenizers_own_folder(vocab_calls, tmp_path):
    r = gguf.GGUFReader(qg.export_gguf(MODEL, tmp_path / "m.gguf"))
    assert r.fields["general.name"].contents() == "minigpt2" and vocab_calls == [None]
    assert r.fields["general.file_type"].contents() == 0
    assert {t.tensor_type.name for t in r.tensors} == {"F32"}


def test_q8_0_block_by_hand(tmp_path):
    t = {x.name: x for x in exported(tmp_path, "q8_0")[1].tensors}["blk.0.attn_output.weight"]
    assert t.data.shape == (C, C // 32 * 34) and t.data.dtype == np.uint8
    assert bytes(t.data[0]) == Q8_BYTES
    values = gguf.quants.dequantize(t.data, t.tensor_type)[0]
    assert list(values[:4]) == [127 * Q8_D, -50 * Q8_D, Q8_D, 0.0] and not values[4:].any()


def test_q4_0_block_by_hand(tmp_path):
    t = {x.name: x for x in exported(tmp_path, "q4_0")[1].tensors}["blk.0.attn_output.weight"]
    assert t.data.shape == (C, C // 32 * 18)
    assert bytes(t.data[1]) == Q4_BYTES
    values = gguf.quants.dequantize(t.data, t.tensor_type)[1]
    assert list(values[:4]) == [-8 * Q4_D, 7 * Q4_D, 2 * Q4_D, Q4_D] and not values[4:].any()


# ---- what is read ----

@pytest.mark.parametrize("type_", qg.TYPES)
def test_load_gives_the_files_values_under_minigpt2_names(tmp_path, type_):
    """Each parameter is the gguf package's dequantized tensor, attn_qkv cut in three (query, key, value); the
    config is the metadata's (the vocabulary the token table's rows); the model is in eval mode."""
    path, reader = exported(tmp_path, type_)
    back = qg.load_gguf_model(path, reader)
    assert not back.training
    cfg = back.config
    assert (cfg.vocab_size, cfg.n_positions, cfg.n_embd, cfg.n_layer, cfg.n_head) == (V, CTX, C, L, HEADS)
    assert cfg.layer_norm_epsilon == float(np.float32(EPS))
    state = back.state_dict()
    for t in reader.tensors:
        values = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), np.float32))
        parts = values.chunk(len(NAMES[t.name]), dim=0)
        for name, part in zip(NAMES[t.name], parts):
            assert torch.equal(state[name], part), name


def test_f32_round_trip_is_the_model(tmp_path):
    back = qg.load_gguf_model(exported(tmp_path, "f32")[0])
    for k, v in MODEL.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        assert torch.equal(back.logits(ids), MODEL.logits(ids))


def write_gguf(path, tensors: dict[str, np.ndarray], kv: dict, arch: str | None = "gpt2"):
    w = gguf.GGUFWriter(path, arch or "gpt2")
    if arch is None:  # the writer always adds general.architecture: taken out again, a file without one
        del w.kv_data[0]["general.architecture"]
    for k, v in kv.items():
        w.add_float32(k, v) if isinstance(v, float) else w.add_uint32(k, v)
    for n, a in tensors.items():
        w.add_tensor(n, a)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return path


KV = {"gpt2.context_length": CTX, "gpt2.embedding_length": C, "gpt2.feed_forward_length": 4 * C,
      "gpt2.block_count": L, "gpt2.attention.head_count": HEADS, "gpt2.attention.layer_norm_epsilon": EPS}


@pytest.fixture(scope="module")
def arrays():
    """MODEL's tensors as llama.cpp's gpt2 layout holds them, built from NAMES (not by export_gguf)."""
    state = MODEL.state_dict()
    return {name: torch.cat([state[k] for k in parts]).numpy() for name, parts in NAMES.items()}


def load_error(path) -> str:
    with pytest.raises(qg.GGUFError) as e:
        qg.load_gguf_model(path)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_a_file_without_tokenizer_or_with_a_tied_output_loads(arrays, tmp_path):
    """llama.cpp's converter may write output.weight; equal to token_embd it is accepted (and the rest read)."""
    for extra in ({}, {"output.weight": arrays["token_embd.weight"]}):
        back = qg.load_gguf_model(write_gguf(tmp_path / f"x{len(extra)}.gguf", {**arrays, **extra}, KV))
        assert all(torch.equal(back.state_dict()[k], v) for k, v in MODEL.state_dict().items())


def test_load_refusals_name_the_file_and_the_fault(arrays, tmp_path):
    p = tmp_path / "x.gguf"
    assert load_error(tmp_path / "none.gguf") == f"{tmp_path / 'none.gguf'}: no such file"
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file at all")
    assert load_error(tmp_path / "bad.gguf").startswith(f"{tmp_path / 'bad.gguf'}: not a readable GGUF file (")
    assert load_error(write_gguf(p, arrays, KV, arch="llama")) == \
        f"{p}: general.architecture is 'llama'; minigpt2 reads only 'gpt2'"
    for key in KV:
        assert load_error(write_gguf(p, arrays, {k: v for k, v in KV.items() if k != key})) == \
            f"{p}: metadata key {key!r} missing; expected a GGUF of llama.cpp's gpt2 architecture"
    assert load_error(write_gguf(p, arrays, KV, arch=None)) == \
        f"{p}: metadata key 'general.architecture' missing; expected a GGUF of llama.cpp's gpt2 architecture"
    with pytest.raises(CheckpointError) as e:  # the metadata's context is 40 positions, the table's 48
        qg.load_gguf_model(write_gguf(p, arrays, {**KV, "gpt2.context_length": 40}))
    assert str(e.value) == \
        f"{p}: tensors do not fit a GPT2 of this config (n_layer=2, n_embd=64): key 'wpe.weight' has shape (48, 64), " \
        "expected (40, 64)"
    assert load_error(write_gguf(p, arrays, {**KV, "gpt2.feed_forward_length": 200})) == \
        f"{p}: gpt2.feed_forward_length is 200; GPT-2's MLP is 4 * n_embd = 256"
    no_table = {k: v for k, v in arrays.items() if k != "token_embd.weight"}
    assert load_error(write_gguf(p, no_table, KV)) == f"{p}: no token_embd.weight tensor"
    assert load_error(write_gguf(p, arrays, {**KV, "gpt2.attention.head_count": 5})) == \
        f"{p}: metadata describes no GPT-2: n_embd (64) must be divisible by n_head (5)"
    for missing in ("position_embd.weight", "output_norm.bias", "blk.1.ffn_down.bias", "blk.0.attn_qkv.weight"):
        fewer = {k: v for k, v in arrays.items() if k != missing}
        assert load_error(write_gguf(p, fewer, KV)) == f"{p}: tensor {missing} missing for a 2-layer gpt2"
    extra = {f"blk.2.{n}": arrays["blk.0.attn_norm.weight"] for n in ("e", "d", "c", "b", "a")}
    assert load_error(write_gguf(p, {**arrays, **extra}, KV)) == \
        f"{p}: unexpected tensor(s) ['blk.2.a', 'blk.2.b', 'blk.2.c', 'blk.2.d'] for a 2-layer gpt2"
    assert load_error(write_gguf(p, {**arrays, "output.weight": arrays["token_embd.weight"] + 1}, KV)) == \
        f"{p}: output.weight differs from token_embd.weight; minigpt2's GPT-2 ties them"
    ints = {**arrays, "blk.0.attn_norm.weight": np.arange(C, dtype=np.int32)}
    message = load_error(write_gguf(p, ints, KV))
    assert message.startswith(f"{p}: tensor blk.0.attn_norm.weight has type I32, which the gguf package cannot "
                              "dequantize (") and message.endswith(")")


# ---- what is refused on export: one whole line, nothing written ----

def export_error(model, path, type_) -> str:
    with pytest.raises(qg.GGUFError) as e:
        qg.export_gguf(model, path, type_)
    assert not path.exists() and not list(path.parent.iterdir())
    return str(e.value)


def test_export_refusals_by_line(vocab_calls, tmp_path):
    from minigpt2.lora import LoRAConfig, apply_lora

    p = tmp_path / "x.gguf"
    small = GPT2Config(vocab_size=V, n_positions=CTX, n_embd=48, n_layer=1, n_head=HEADS)
    for type_ in ("q8_0", "q4_0"):
        assert export_error(make_model(small), p, type_) == (
            f"--type {type_}: n_embd 48 is not a multiple of 32; {type_} stores each row in blocks of 32 values "
            "(use f32 or f16)")
    assert export_error(make_model(small), p, "Q8_0") == "--type 'Q8_0': expected one of f32, f16, q8_0, q4_0"
    lora = make_model()
    apply_lora(lora, LoRAConfig(rank=2, alpha=4.0, targets="attn"))
    assert export_error(lora, p, "f32") == ("LoRA adapter h.0.attn.query is not merged into its base weight; merge "
                                            "it first (minigpt2.lora.merge_lora)")
    fq_lora = quantize_model(make_model(), QuantConfig(weight="int8"))
    apply_lora(fq_lora, LoRAConfig(rank=2, alpha=4.0, targets="attn"))
    base = type(fq_lora.h[0].attn.query.base).__name__
    assert export_error(fq_lora, p, "f32") == (
        f"LoRA adapter h.0.attn.query is not merged into its base weight: its base is a {base}, into which it "
        "cannot merge exactly (a fake-quant base would quantize W + BA again); GGUF holds no separate adapter")
    fq = quantize_model(make_model(), QuantConfig(weight="int8"))
    for type_ in ("f16", "q8_0"):
        assert export_error(fq, p, type_) == (
            f"--type {type_}: the model is fake-quantized as int8; its weights are those quantized values, which "
            f"{type_} would round again (GGUF blocks are not int8's scales): use --type f32, which holds them "
            "exactly")
    acts = quantize_model(make_model(), QuantConfig(weight="int8", activations=True))
    assert export_error(acts, p, "f32") == (
        "the model quantizes activations at run time (activations=True); llama.cpp has no such step, so a GGUF "
        "file would compute something else: export a run without it")
    # what is allowed: n_embd 48 as f32 and f16, a merged adapter
    for type_ in ("f32", "f16"):
        assert qg.export_gguf(make_model(small), tmp_path / f"ok-{type_}.gguf", type_).is_file()
