"""minigpt2.checkpoint pinned where one-line slips show: shapes and names worked out by hand on a tiny config
(vocabulary 11, 5 positions, width 8, 2 layers), safetensors files written byte by byte from the format's definition
(an 8-byte little-endian header length, then the JSON header, then the data), `safetensors` and `transformers` as
referees, and every refusal's whole line."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from minigpt2 import GPT2, GPT2Config
from minigpt2 import checkpoint as ck
from minigpt2.checkpoint import (CheckpointError, UnknownModel, check_safetensors, hf_shapes, hf_to_minigpt2,
                                 infer_config, load_model, minigpt2_to_hf, model_from_state, read_hf_config,
                                 read_safetensors, resolve_model, save_model)

CFG = GPT2Config(vocab_size=11, n_positions=5, n_embd=8, n_layer=2, n_head=2)


def st_bytes(tensors: dict[str, tuple[str, list[int], bytes]], metadata: dict[str, str] | None = None,
             header_len_delta: int = 0) -> bytes:
    """A safetensors file by the format's definition: u64 little-endian header length, JSON header, data."""
    header: dict = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    data, offset = b"", 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h) + header_len_delta) + h + data


def hf_state(config: GPT2Config = CFG, prefix: str = "transformer.") -> dict[str, torch.Tensor]:
    """HF-layout tensors whose every value is distinct (an arange), so a slice or a transpose off shows."""
    out, start = {}, 0
    for k, shape in hf_shapes(config).items():
        n = 1
        for s in shape:
            n *= s
        out[prefix + k] = torch.arange(start, start + n, dtype=torch.float32).reshape(shape) / 1000
        start += n
    return out


# ---- the shapes and the name map ------------------------------------------------------------------------------
def test_hf_shapes_of_a_tiny_config_by_hand_and_as_transformers_has_them():
    C, V, P = 8, 11, 5
    layer = {"ln_1.weight": (C,), "ln_1.bias": (C,), "attn.c_attn.weight": (C, 3 * C), "attn.c_attn.bias": (24,),
             "attn.c_proj.weight": (8, 8), "attn.c_proj.bias": (8,), "ln_2.weight": (8,), "ln_2.bias": (8,),
             "mlp.c_fc.weight": (8, 32), "mlp.c_fc.bias": (32,), "mlp.c_proj.weight": (32, 8),
             "mlp.c_proj.bias": (8,)}
    expected = {"wte.weight": (V, C), "wpe.weight": (P, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
    expected.update({f"h.{i}.{k}": s for i in (0, 1) for k, s in layer.items()})
    assert hf_shapes(CFG) == expected
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=11, n_positions=5, n_embd=8, n_layer=2,
                                                              n_head=2, bos_token_id=0, eos_token_id=0))
    theirs = {k.removeprefix("transformer."): tuple(v.shape) for k, v in hf.state_dict().items()
              if not k.startswith("lm_head") and not k.endswith((".attn.bias", ".attn.masked_bias"))}
    assert theirs == expected


def test_hf_to_minigpt2_splits_and_transposes_each_tensor_as_worked_by_hand():
    hf = hf_state()
    ours = hf_to_minigpt2(hf, CFG)
    assert set(ours) == set(GPT2(CFG).state_dict())
    for i in (0, 1):
        p, t = f"h.{i}.", f"transformer.h.{i}."
        w, b = hf[t + "attn.c_attn.weight"], hf[t + "attn.c_attn.bias"]  # [8, 24] Conv1D, [24]
        for j, proj in enumerate(("query", "key", "value")):
            assert torch.equal(ours[f"{p}attn.{proj}.weight"], w[:, 8 * j:8 * (j + 1)].T)
            assert torch.equal(ours[f"{p}attn.{proj}.bias"], b[8 * j:8 * (j + 1)])
            assert ours[f"{p}attn.{proj}.weight"].is_contiguous()
        for name in ("attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"):
            assert torch.equal(ours[p + name], hf[t + name].T) and ours[p + name].is_contiguous()
        for name in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", "attn.c_proj.bias", "mlp.c_fc.bias",
                     "mlp.c_proj.bias"):
            assert ours[p + name] is hf[t + name]
    for name in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"):
        assert ours[name] is hf["transformer." + name]
    # a key without the prefix is the same key; "transformer" without its dot is not a prefix
    assert ck._strip_prefix("transformer.wte.weight") == "wte.weight"
    assert ck._strip_prefix("wte.weight") == "wte.weight"
    assert ck._strip_prefix("transformerwte.weight") == "transformerwte.weight"


def test_minigpt2_to_hf_is_the_hub_layout_detached_contiguous_on_cpu():
    hf = hf_state()
    back = minigpt2_to_hf(hf_to_minigpt2(hf, CFG), CFG)
    assert back.keys() == hf.keys()
    for k, v in hf.items():
        assert torch.equal(back[k], v) and back[k].is_contiguous() and back[k].device.type == "cpu", k
    model = GPT2(CFG)
    out = minigpt2_to_hf(model.state_dict(keep_vars=True), CFG)
    assert not any(v.requires_grad for v in out.values())
    sd = model.state_dict()
    fused = out["transformer.h.1.attn.c_attn.weight"]  # [C, 3C]: query, key, value side by side, transposed
    assert torch.equal(fused, torch.cat([sd["h.1.attn.query.weight"], sd["h.1.attn.key.weight"],
                                         sd["h.1.attn.value.weight"]]).T)
    assert torch.equal(out["transformer.h.1.attn.c_attn.bias"], torch.cat(
        [sd["h.1.attn.query.bias"], sd["h.1.attn.key.bias"], sd["h.1.attn.value.bias"]]))
    assert torch.equal(out["transformer.h.0.mlp.c_fc.weight"], sd["h.0.mlp.c_fc.weight"].T)


def test_key_errors_name_the_source_config_and_keys_in_one_line():
    hf = hf_state(prefix="")
    for i in (0, 1):  # optional keys: dropped, never "unexpected"
        hf[f"h.{i}.attn.bias"] = torch.zeros(1)
        hf[f"h.{i}.attn.masked_bias"] = torch.zeros(1)
    hf["lm_head.weight"] = hf["wte.weight"].clone()
    assert set(hf_to_minigpt2(hf, CFG)) == set(GPT2(CFG).state_dict())

    def err(tensors, source="src.safetensors") -> str:
        with pytest.raises(CheckpointError) as e:
            hf_to_minigpt2(tensors, CFG, source=source)
        return str(e.value)

    head = "src.safetensors: not a GPT-2 checkpoint for n_layer=2, n_embd=8: "
    nine = sorted(k for k in hf if k.startswith("h.1.") and "attn.bias" not in k and "masked" not in k)[:9]
    t = {k: v for k, v in hf.items() if k not in nine}
    assert err(t) == head + f"missing key(s) {nine[:8]} ..."
    t = {k: v for k, v in hf.items() if k not in nine[:8]}
    assert err(t) == head + f"missing key(s) {nine[:8]}"
    extra = {f"h.{i}.zz": torch.zeros(1) for i in range(9)} | {"h.0.attn.bias2": torch.zeros(1),
                                                                "h.x.attn.bias": torch.zeros(1)}
    assert err({**hf, **extra}) == head + f"unexpected key(s) {sorted(extra)[:8]} ..."
    eight = {f"h.0.z{j}": torch.zeros(1) for j in range(8)}
    assert err({**hf, **eight}) == head + f"unexpected key(s) {sorted(eight)}"
    assert err({**hf, **eight, "h.0.z8": torch.zeros(1)}) == head + f"unexpected key(s) {sorted(eight)} ..."
    assert err({**hf, "a": torch.zeros(1), "lm_head.weightx": torch.zeros(1)}) == (
        head + "unexpected key(s) ['a', 'lm_head.weightx']")
    t = dict(hf)
    t.pop("h.0.ln_2.bias")
    assert err({**t, "b": torch.zeros(1)}) == head + "missing key(s) ['h.0.ln_2.bias']; unexpected key(s) ['b']"
    with pytest.raises(CheckpointError, match=r"^checkpoint: not a GPT-2"):
        hf_to_minigpt2({}, CFG)
    assert err({**hf, "h.1.mlp.c_fc.weight": torch.zeros(32, 8)}) == (
        "src.safetensors: key 'h.1.mlp.c_fc.weight' has shape (32, 8), expected (8, 32)")
    assert err({**hf, "h.1.mlp.c_proj.bias": torch.zeros(8, dtype=torch.int64)}) == (
        "src.safetensors: key 'h.1.mlp.c_proj.bias' has dtype torch.int64, expected a floating-point dtype")
    # the tied head: equal passes (above), one value off is refused
    head_w = hf["wte.weight"].clone()
    head_w[10, 7] += 1
    assert err({**hf, "lm_head.weight": head_w}) == (
        "src.safetensors: 'lm_head.weight' differs from 'wte.weight'; GPT-2 ties them and minigpt2 supports only "
        "the tied head")


# ---- safetensors files ------------------------------------------------------------------------------------------
def test_a_file_written_by_the_formats_definition_is_read_with_its_metadata(tmp_path):
    f = tmp_path / "hand.safetensors"
    f.write_bytes(st_bytes({"a": ("F32", [2], struct.pack("<2f", 1.5, -2.0)), "n": ("I64", [1], struct.pack(
        "<q", 7))}, metadata={"format": "pt", "k": "v"}))
    check_safetensors(f)
    check_safetensors(str(f))
    tensors, meta = read_safetensors(str(f))
    assert meta == {"format": "pt", "k": "v"}
    assert torch.equal(tensors["a"], torch.tensor([1.5, -2.0])) and torch.equal(tensors["n"], torch.tensor([7]))
    bare = tmp_path / "bare.safetensors"
    bare.write_bytes(st_bytes({"a": ("F32", [1], struct.pack("<f", 3.0))}))
    assert read_safetensors(bare)[1] == {}


@pytest.mark.parametrize("delta", [1, -1])
def test_a_header_length_off_by_one_is_refused_with_the_files_size(tmp_path, delta):
    f = tmp_path / "off.safetensors"
    data = st_bytes({"a": ("F32", [2], struct.pack("<2f", 1.0, 2.0))}, header_len_delta=delta)
    f.write_bytes(data)
    for reader in (check_safetensors, read_safetensors):
        with pytest.raises(CheckpointError) as e:
            reader(f)
        assert str(e.value).startswith(f"{f}: not a valid safetensors file ({len(data)} bytes; truncated or "
                                       "another format?): ")
        assert "\n" not in str(e.value)
    # safetensors itself refuses the same bytes (the referee)
    from safetensors import SafetensorError, safe_open
    with pytest.raises(SafetensorError):
        with safe_open(str(f), framework="pt") as g:
            [g.get_tensor(k) for k in g.keys()]


def test_a_folder_or_missing_file_is_one_line(tmp_path):
    with pytest.raises(CheckpointError) as e:
        check_safetensors(tmp_path / "gone.safetensors")
    assert str(e.value) == f"{tmp_path / 'gone.safetensors'}: no such checkpoint file"
    (tmp_path / "d.safetensors").mkdir()
    with pytest.raises(CheckpointError) as e:
        read_safetensors(tmp_path / "d.safetensors")
    assert str(e.value) == f"{tmp_path / 'd.safetensors'}: no such checkpoint file"


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth", ".ckpt", ".pkl"])
def test_every_pickle_suffix_is_refused_before_the_file_is_opened(tmp_path, suffix):
    p = tmp_path / f"weights{suffix}"  # not even there: the name alone is refused
    for reader in (check_safetensors, read_safetensors, load_model):
        with pytest.raises(CheckpointError) as e:
            reader(p)
        assert str(e.value) == (
            f"{p}: refusing to load a pickled checkpoint (loading pickle can execute arbitrary code). Use the "
            "model's `model.safetensors` instead, or convert it once in a trusted environment with `transformers`: "
            "GPT2LMHeadModel.from_pretrained(dir).save_pretrained(out_dir, safe_serialization=True).")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_inf_in_any_checked_float_is_refused(tmp_path, dtype, bad):
    f = tmp_path / "w.safetensors"
    save_file({"ok": torch.ones(2), "h.0.x": torch.tensor([1.0, bad, 2.0]).to(dtype)}, str(f))
    with pytest.raises(CheckpointError) as e:
        read_safetensors(f)
    assert str(e.value) == (f"{f}: tensor 'h.0.x' holds NaN or infinite values; the run that wrote it diverged "
                            "(retrain it with a lower --lr)")


def test_finite_floats_ints_and_fp8_pass(tmp_path):
    f = tmp_path / "w.safetensors"
    tensors = {"a": torch.tensor([1e4, -3.0], dtype=torch.float16), "i": torch.tensor([5, -1], dtype=torch.int8),
               "q": torch.tensor([448.0, 0.5]).to(torch.float8_e4m3fn)}
    save_file(tensors, str(f))
    got, _ = read_safetensors(f)
    assert torch.equal(got["a"], tensors["a"]) and torch.equal(got["i"], tensors["i"])
    assert torch.equal(got["q"].float(), torch.tensor([448.0, 0.5]))


# ---- files and folders ------------------------------------------------------------------------------------------
def test_folders_configs_and_refusals(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "model.ckpt").write_bytes(b"x")  # not among the pickles a folder is searched for
    with pytest.raises(CheckpointError) as e:
        load_model(empty)
    assert str(e.value) == f"{empty}: folder holds no model.safetensors"
    for name in ("pytorch_model.bin", "model.pt", "model.pth"):
        d = tmp_path / name.replace(".", "_")
        d.mkdir()
        (d / name).write_bytes(b"x")
        with pytest.raises(CheckpointError, match=f"^{d / name}: refusing to load a pickled checkpoint"):
            load_model(d)
    folder = tmp_path / "m"
    save_model(GPT2(CFG), folder)
    assert ck._find_files(folder) == (folder / "model.safetensors", folder / "config.json")
    assert ck._find_files(folder / "model.safetensors") == (folder / "model.safetensors", folder / "config.json")
    (folder / "config.json").unlink()
    assert ck._find_files(folder) == (folder / "model.safetensors", None)


def test_read_hf_config_errors_are_one_line_naming_the_file(tmp_path):
    c = tmp_path / "config.json"
    c.write_text("[1, 2]")
    with pytest.raises(CheckpointError) as e:
        read_hf_config(c)
    assert str(e.value) == f"{c}: expected a JSON object"
    c.write_text('{"n_embd": 8, "n_layer": 2}')
    with pytest.raises(CheckpointError) as e:
        read_hf_config(str(c))
    assert str(e.value) == f"{c}: missing key(s) ['n_head'] in a GPT-2 config"
    c.write_text('{"n_embd": 8, "n_layer": 2, "n_head": 3}')  # 8 not divisible by 3
    with pytest.raises(CheckpointError):
        read_hf_config(c)
    with pytest.raises(CheckpointError, match=f"^{tmp_path / 'none.json'}: cannot read a JSON config: "):
        read_hf_config(tmp_path / "none.json")
    c.write_text('{"n_embd": 8, "n_layer": 2, "n_head": 2, "vocab_size": 11, "n_positions": 5}')
    assert read_hf_config(c) == GPT2Config(vocab_size=11, n_positions=5, n_embd=8, n_layer=2, n_head=2)


def _shaped(C: int, n_layer: int, V: int = 3, P: int = 2) -> dict[str, torch.Tensor]:
    t = {"transformer.wte.weight": torch.empty(V, C, device="meta"),
         "transformer.wpe.weight": torch.empty(P, C, device="meta")}
    for i in range(n_layer):
        t[f"transformer.h.{i}.ln_1.weight"] = torch.empty(C, device="meta")
        t[f"transformer.h.{i}.attn.c_attn.weight"] = torch.empty(C, 3 * C, device="meta")
    return t


def test_infer_config_from_shapes_uses_the_presets_heads_else_64_wide():
    # GPT-2's own sizes take the preset's heads (gpt2-xl: 1600 / 64 = 25, and medium's 1024 has 16 heads)
    assert infer_config(_shaped(1024, 24)) == GPT2Config(vocab_size=3, n_positions=2, n_embd=1024, n_layer=24,
                                                         n_head=16)
    assert infer_config(_shaped(1280, 36)).n_head == 20
    # a width of a preset with another layer count: 64-wide heads
    assert infer_config(_shaped(1024, 3)).n_head == 16
    assert infer_config(_shaped(768, 2)).n_head == 12
    assert infer_config(_shaped(192, 3)) == GPT2Config(vocab_size=3, n_positions=2, n_embd=192, n_layer=3, n_head=3)
    assert type(infer_config(_shaped(192, 3)).n_head) is int  # 192 // 64, not 3.0
    assert infer_config(_shaped(32, 1)).n_head == 1  # narrower than one 64-wide head: one head
    assert infer_config(_shaped(32, 2)).n_head == 2  # the tiny preset's own sizes: its 2 heads of 16
    assert infer_config(_shaped(192, 24)).n_head == 3  # medium's layer count alone is not medium (16 heads)
    assert infer_config(_shaped(64, 2)).n_head == 1  # tiny's layer count alone is not tiny
    assert infer_config(_shaped(128, 11)).n_layer == 11  # layers counted by their index, keys without prefix too
    no_prefix = {k.removeprefix("transformer."): v for k, v in _shaped(64, 12).items()}
    assert infer_config(no_prefix).n_layer == 12
    for drop in ("transformer.wte.weight", "transformer.wpe.weight"):
        t = _shaped(64, 1)
        t.pop(drop)
        with pytest.raises(CheckpointError) as e:
            infer_config(t, source="f.safetensors")
        assert str(e.value) == "f.safetensors: missing key 'wte.weight' or 'wpe.weight'; not a GPT-2 checkpoint"
    with pytest.raises(CheckpointError, match="^checkpoint: missing key"):
        infer_config({})


def test_model_from_state_holds_the_very_tensors_and_names_the_source():
    state = hf_to_minigpt2(hf_state(), CFG)
    model = model_from_state(CFG, state, "s")
    assert model.wte.weight.data_ptr() == state["wte.weight"].data_ptr()
    assert model.h[1].attn.query.weight.data_ptr() == state["h.1.attn.query.weight"].data_ptr()


def test_tensors_that_do_not_fit_are_one_line_naming_the_keys():
    """A packed or GGUF file whose tensors do not fit its config: one line (torch's own error spans many)."""
    full = hf_to_minigpt2(hf_state(), CFG)
    head = "src: tensors do not fit a GPT2 of this config (n_layer=2, n_embd=8): "

    def err(state) -> str:
        with pytest.raises(CheckpointError) as e:
            model_from_state(CFG, state, "src")
        return str(e.value)

    state = {k: v for k, v in full.items() if k != "ln_f.bias"}
    assert err(state) == head + "missing key(s) ['ln_f.bias']"
    layer1 = sorted(k for k in full if k.startswith("h.1."))  # 16 keys
    state = {k: v for k, v in full.items() if k not in layer1[:9]}
    assert err(state) == head + f"missing key(s) {layer1[:8]} ..."
    state = {k: v for k, v in full.items() if k not in layer1[:8]}
    assert err(state) == head + f"missing key(s) {layer1[:8]}"
    extra = {f"h.2.{k[4:]}": v for k, v in full.items() if k.startswith("h.1.")}
    assert err({**full, **extra}) == head + f"unexpected key(s) {sorted(extra)[:8]} ..."
    assert err({**full, "h.2.x": torch.zeros(1)}) == head + "unexpected key(s) ['h.2.x']"
    assert err({**full, "wpe.weight": torch.zeros(4, 8), "h.0.ln_1.bias": torch.zeros(9)}) == (
        head + "key 'wpe.weight' has shape (4, 8), expected (5, 8)")  # the first, in the model's order
    state = {k: v for k, v in full.items() if k != "ln_f.bias"}
    assert err({**state, "x": torch.zeros(1), "wte.weight": torch.zeros(11, 9)}) == (
        head + "missing key(s) ['ln_f.bias']; unexpected key(s) ['x']; key 'wte.weight' has shape (11, 9), "
        "expected (11, 8)")


def test_save_then_load_keeps_names_dtypes_config_and_metadata(tmp_path):
    torch.manual_seed(0)
    model = GPT2(CFG)
    folder = save_model(model, tmp_path / "a" / "b")  # parents made
    assert folder == tmp_path / "a" / "b"
    tensors, meta = read_safetensors(folder / "model.safetensors")
    assert meta == {"format": "pt"}
    assert set(tensors) == {"transformer." + k for k in hf_shapes(CFG)}
    assert all(v.dtype == torch.float32 for v in tensors.values())
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg == CFG.to_hf_dict() and "minigpt2" not in cfg
    save_model(model, folder, extra_config={}, dtype=torch.bfloat16)
    assert "minigpt2" not in json.loads((folder / "config.json").read_text())
    assert all(v.dtype == torch.bfloat16 for v in read_safetensors(folder / "model.safetensors")[0].values())
    half = load_model(folder)  # bf16 on disk, float32 unless asked
    assert half.wte.weight.dtype == torch.float32
    assert torch.equal(half.wte.weight, model.wte.weight.to(torch.bfloat16).float())
    assert load_model(folder, dtype=torch.float16).wte.weight.dtype == torch.float16
    assert load_model(folder, device="cpu").wte.weight.device.type == "cpu"
    assert load_model(folder, device="meta").h[1].mlp.c_proj.weight.device.type == "meta"  # moved when asked
    save_model(model, folder)
    back = load_model(str(folder))
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), model.state_dict().values()))
    # a config given wins over config.json (which says n_positions 5; a file would not fit 4 but the argument is used)
    with pytest.raises(CheckpointError, match=r"key 'wpe.weight' has shape \(5, 8\), expected \(4, 8\)"):
        load_model(folder, config=CFG.replace(n_positions=4))
    # a bare file without config.json: the sizes come from the shapes
    (folder / "config.json").unlink()
    assert load_model(folder / "model.safetensors").config == GPT2Config(vocab_size=11, n_positions=5, n_embd=8,
                                                                          n_layer=2, n_head=1)
    # ... and a bare file without the embeddings is refused naming the file
    tensors = read_safetensors(folder / "model.safetensors")[0]
    tensors.pop("transformer.wpe.weight")
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError) as e:
        load_model(folder)
    assert str(e.value) == (f"{folder / 'model.safetensors'}: missing key 'wte.weight' or 'wpe.weight'; not a GPT-2 "
                            "checkpoint")


def test_resolve_model_refuses_tiny_and_unknown_names_listing_the_presets(tmp_path):
    for name in ("tiny", "gpt3"):
        with pytest.raises(UnknownModel) as e:
            resolve_model(name, cache_dir=tmp_path)
        assert str(e.value) == (f"model '{name}': expected an existing file or folder, or a downloadable preset "
                                "(one of ['gpt2', 'gpt2-large', 'gpt2-medium', 'gpt2-xl'])")
    d = tmp_path / "gpt2-xl"
    d.mkdir()
    (d / "config.json").write_text("{}")  # a folder without weights is not a cached model: downloads (offline here)
    from minigpt2.download import DownloadError
    with pytest.raises(DownloadError, match="downloads are off"):
        resolve_model("gpt2-xl", cache_dir=tmp_path, offline=True)
    (d / "model.safetensors").write_bytes(b"")
    assert resolve_model("gpt2-xl", cache_dir=str(tmp_path)) == d
    assert resolve_model(str(d / "config.json")) == d / "config.json"


def test_resolve_model_looks_in_checkpoints_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints" / "gpt2").mkdir(parents=True)
    (tmp_path / "checkpoints" / "gpt2" / "model.safetensors").write_bytes(b"")
    assert resolve_model("gpt2") == Path("checkpoints") / "gpt2"
