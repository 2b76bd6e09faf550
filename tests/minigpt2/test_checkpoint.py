"""Loading and saving the Hugging Face file layout, and every way a checkpoint can be wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from minigpt2 import GPT2, GPT2Config
from minigpt2.checkpoint import (CheckpointError, check_safetensors, hf_to_minigpt2, load_model, read_safetensors,
                                 resolve_model, save_model)

from tests.conftest import load_hf


def hf_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return read_safetensors(folder / "model.safetensors")[0]


def write_variant(tmp_path: Path, tensors: dict[str, torch.Tensor], config_from: Path | None) -> Path:
    folder = tmp_path / "variant"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    if config_from is not None:
        shutil.copy(config_from / "config.json", folder / "config.json")
    return folder


def test_minigpt2_checkpoint_loads_into_transformers(tiny_hf_dir, tmp_path):
    model = load_model(tiny_hf_dir).eval()
    save_model(model, tmp_path / "ours", extra_config={"task": "sonnet"})
    hf = load_hf(tmp_path / "ours")
    ids = torch.randint(0, 50257, (2, 11))
    with torch.no_grad():
        diff = (hf(ids).logits - model.logits(ids)).abs().max().item()
    assert diff <= 1e-4, f"max |diff| = {diff}"
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["minigpt2"] == {"task": "sonnet"}
    reloaded = load_model(tmp_path / "ours")
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), model.state_dict().values()))


def test_original_hub_layout_without_prefix_with_buffers_and_lm_head(tiny_hf_dir, tmp_path):
    """The hub's gpt2 file has no `transformer.` prefix and stores `attn.bias`/`attn.masked_bias` buffers."""
    tensors = {k.removeprefix("transformer."): v for k, v in hf_tensors(tiny_hf_dir).items()}
    tensors["lm_head.weight"] = tensors["wte.weight"].clone()
    for i in range(2):
        tensors[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 128, 128))
        tensors[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    folder = write_variant(tmp_path, tensors, tiny_hf_dir)
    ids = torch.randint(0, 50257, (1, 7))
    with torch.no_grad():
        assert torch.equal(load_model(folder).eval().logits(ids), load_model(tiny_hf_dir).eval().logits(ids))


def test_bare_file_infers_config_from_shapes(tiny_hf_dir, tmp_path):
    folder = write_variant(tmp_path, hf_tensors(tiny_hf_dir), config_from=None)
    model = load_model(folder / "model.safetensors")
    assert (model.config.n_layer, model.config.n_embd, model.config.n_positions) == (2, 32, 128)


def test_half_precision_checkpoint_loads_as_fp32_or_as_asked(tiny_hf_dir, tmp_path):
    folder = write_variant(tmp_path, {k: v.to(torch.bfloat16) for k, v in hf_tensors(tiny_hf_dir).items()},
                           tiny_hf_dir)
    assert load_model(folder).wte.weight.dtype == torch.float32
    assert load_model(folder, dtype=torch.bfloat16).wte.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("change, message", [
    (lambda t: t.pop("transformer.h.1.mlp.c_fc.weight"), r"missing key\(s\) \['h.1.mlp.c_fc.weight'\]"),
    (lambda t: t.__setitem__("transformer.h.0.attn.extra", torch.zeros(1)),
     r"unexpected key\(s\) \['h.0.attn.extra'\]"),
    (lambda t: t.__setitem__("transformer.ln_f.weight", torch.ones(33)),
     r"key 'ln_f.weight' has shape \(33,\), expected \(32,\)"),
    (lambda t: t.__setitem__("transformer.ln_f.bias", torch.zeros(32, dtype=torch.int32)),
     r"key 'ln_f.bias' has dtype torch.int32, expected a floating-point dtype"),
    (lambda t: t.__setitem__("lm_head.weight", torch.zeros(50257, 32)), r"'lm_head.weight' differs from"),
])
def test_bad_tensors_name_file_and_key(tiny_hf_dir, tmp_path, change, message):
    tensors = dict(hf_tensors(tiny_hf_dir))
    change(tensors)
    folder = write_variant(tmp_path, tensors, tiny_hf_dir)
    with pytest.raises(CheckpointError, match=message) as err:
        load_model(folder)
    assert str(folder / "model.safetensors") in str(err.value)


def test_truncated_file_is_a_clear_error(tiny_hf_dir, tmp_path):
    data = (tiny_hf_dir / "model.safetensors").read_bytes()
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors: not a valid safetensors file .*truncated"):
        load_model(bad)


def test_non_safetensors_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_text("<html>404 Not Found</html>")
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_model(bad)


def test_check_safetensors_reads_the_header_and_refuses_what_load_would(tiny_hf_dir, tmp_path):
    """The header-only check a sweep makes before its runs: a whole file passes; missing, empty, truncated by one
    byte and pickled files give `load_model`'s own error, with the file's size."""
    good = tiny_hf_dir / "model.safetensors"
    check_safetensors(good)
    data = good.read_bytes()
    short = tmp_path / "short.safetensors"
    short.write_bytes(data[:-1])
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    for bad, size in ((short, len(data) - 1), (empty, 0)):
        with pytest.raises(CheckpointError) as err:
            check_safetensors(bad)
        assert str(err.value).startswith(f"{bad}: not a valid safetensors file ({size} bytes; truncated or another "
                                         "format?): ")
        with pytest.raises(CheckpointError) as load_err:
            read_safetensors(bad)
        assert str(load_err.value) == str(err.value)
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'none.safetensors'}: no such checkpoint file"):
        check_safetensors(tmp_path / "none.safetensors")
    (tmp_path / "model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointError, match="refusing to load a pickled checkpoint"):
        check_safetensors(tmp_path / "model.bin")


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt"])
def test_pickle_is_refused(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(CheckpointError, match="refusing to load a pickled checkpoint"):
        load_model(tmp_path / name)
    with pytest.raises(CheckpointError, match="refusing to load a pickled checkpoint"):
        load_model(tmp_path)  # a folder with only a pickle in it


def test_missing_paths_and_bad_config(tmp_path, tiny_hf_dir):
    with pytest.raises(CheckpointError, match="folder holds no model.safetensors"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_model(tmp_path / "nope.safetensors")
    folder = write_variant(tmp_path, hf_tensors(tiny_hf_dir), tiny_hf_dir)
    (folder / "config.json").write_text('{"model_type": "llama", "n_embd": 32, "n_layer": 2, "n_head": 2}')
    with pytest.raises(CheckpointError, match=r"config.json: model_type is 'llama', expected 'gpt2'"):
        load_model(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: cannot read a JSON config"):
        load_model(folder)


def test_resolve_model(tmp_path, tiny_hf_dir):
    assert resolve_model(tiny_hf_dir) == tiny_hf_dir
    with pytest.raises(CheckpointError, match="'gpt3': expected an existing file or folder, or a downloadable preset"):
        resolve_model("gpt3", cache_dir=tmp_path)
    cached = tmp_path / "gpt2"
    shutil.copytree(tiny_hf_dir, cached)
    assert resolve_model("gpt2", cache_dir=tmp_path) == cached  # found in the cache: no download


def test_round_trip_of_the_key_map_is_exact():
    model = GPT2(GPT2Config.from_name("tiny"))
    from minigpt2.checkpoint import minigpt2_to_hf

    back = hf_to_minigpt2(minigpt2_to_hf(model.state_dict(), model.config), model.config)
    assert back.keys() == model.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())
