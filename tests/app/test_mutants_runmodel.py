"""app.runmodel pinned where one-line slips show: which model a run folder gives back.

On a small body (vocabulary 11, 5 positions, width 8, 2 layers): the files a full, a head-less and a LoRA run leave
in best/ (names, the "minigpt2" record of config.json, the head's tensors), every weight read back into a fresh
module, the base a LoRA run starts from (checked against the sha256 it was trained on, with --offline handed
down), and each refusal's whole line.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from app import runfolder, runmodel
from app.finetune import parse_settings
from app.runfolder import RunFolderError
from app.runmodel import (ADAPTER_NAME, base_weights_file, head_modules, load_base_model, load_run_body,
                          load_run_model, save_run_model)
from app.settings import SettingsError
from minigpt2 import GPT2, GPT2Config
from minigpt2.checkpoint import CheckpointError, read_safetensors, save_model
from minigpt2.lora import LoRALinear, apply_lora
from tasks import TaskModel, get_task
from tests.minigpt2.test_train import one_thread  # noqa: F401  (autouse fixture: one torch thread)

CFG = GPT2Config(vocab_size=11, n_positions=5, n_embd=8, n_layer=2, n_head=2)


def settings(task: str = "sst", *extra: str, model: str = "tiny"):
    return parse_settings(["--task", task, "--model", model, "--data-dir", "data", "--device", "cpu", *extra])


def body(seed: int) -> GPT2:
    torch.manual_seed(seed)
    return GPT2(CFG)


def randomized(module: nn.Module, seed: int) -> nn.Module:
    """Every trainable parameter drawn anew (LoRA's B starts at zero: a zero adapter would read back from
    anything; a LoRA run's frozen base stays the base)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g))
    return module


def same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------- the base model


class Resolve:
    """`resolve_model` as runmodel calls it: records (name, offline), returns `path`."""

    def __init__(self, path: Path) -> None:
        self.path, self.calls = path, []

    def __call__(self, name, offline=False):
        self.calls.append((name, offline))
        return self.path


def test_tiny_has_no_weights_file_and_is_never_resolved(monkeypatch):
    monkeypatch.setattr(runmodel, "resolve_model", lambda *a, **k: pytest.fail("tiny resolved"))
    assert base_weights_file("tiny") is None and base_weights_file("tiny", offline=True) is None


def test_the_weights_file_of_a_folder_a_file_and_a_preset_with_offline_handed_down(tmp_path, monkeypatch):
    folder = save_model(body(0), tmp_path / "hf")
    assert base_weights_file(str(folder)) == folder / "model.safetensors"
    assert base_weights_file(str(folder / "model.safetensors")) == folder / "model.safetensors"
    resolve = Resolve(folder)
    monkeypatch.setattr(runmodel, "resolve_model", resolve)
    assert base_weights_file("gpt2", offline=True) == folder / "model.safetensors"
    assert base_weights_file("gpt2-medium") == folder / "model.safetensors"
    assert resolve.calls == [("gpt2", True), ("gpt2-medium", False)]


def test_an_unknown_model_is_one_line_naming_the_flag(tmp_path):
    with pytest.raises(SettingsError) as e:
        base_weights_file(str(tmp_path / "nope"))
    assert str(e.value).startswith(f"--model '{tmp_path / 'nope'}': expected an existing file or folder, or a "
                                   "downloadable preset (one of ['gpt2', ")
    with pytest.raises(SettingsError, match="^--model 'nope': expected an existing file"):
        load_base_model(settings(model="nope"))


def test_the_base_model_is_tiny_at_random_or_the_weights_its_flag_names(tmp_path, monkeypatch):
    tiny = load_base_model(settings())
    assert tiny.config == GPT2Config.from_name("tiny")
    saved = body(3)
    folder = save_model(saved, tmp_path / "hf")
    loaded = load_base_model(settings(model=str(folder)))
    assert loaded.config == CFG
    same_weights(loaded, saved)
    resolve = Resolve(folder)
    monkeypatch.setattr(runmodel, "resolve_model", resolve)
    same_weights(load_base_model(settings("sst", "--offline", model="gpt2")), saved)
    same_weights(load_base_model(settings(model="gpt2")), saved)
    assert resolve.calls == [("gpt2", True), ("gpt2", False)]


class TwoHeads(TaskModel):
    def __init__(self, gpt: GPT2) -> None:
        super().__init__(gpt)
        self.first = nn.Linear(8, 2)
        self.act = nn.ReLU()  # no parameters: no head of its own
        self.second = nn.Sequential(nn.Dropout(0.1), nn.Linear(2, 1))


def test_head_modules_are_the_children_with_parameters_beside_the_body():
    assert head_modules(get_task("sst").build(body(0))) == ["classifier"]
    assert head_modules(get_task("quora").build(body(0))) == []  # the cloze task reuses the LM head
    assert head_modules(TwoHeads(body(0))) == ["first", "second"]


# --------------------------------------------------------------------------------------- saved and loaded


def test_a_full_run_saves_the_body_in_hf_layout_and_the_head_beside_it(tmp_path):
    s = settings("sst", "--lr", "0.001")
    module = randomized(get_task("sst").build(body(0)), 1)
    save_run_model(module, tmp_path / "best", s)
    assert sorted(os.listdir(tmp_path / "best")) == ["config.json", "head.safetensors", "model.safetensors"]
    config = json.loads((tmp_path / "best" / "config.json").read_text())
    assert config["minigpt2"] == {"task": "sst", "mode": "full-model", **runfolder.settings_record(s)}
    assert config["n_embd"] == 8 and config["n_layer"] == 2
    head, _ = read_safetensors(tmp_path / "best" / "head.safetensors")
    assert head.keys() == {"classifier.weight", "classifier.bias"}
    assert torch.equal(head["classifier.weight"], module.classifier.weight)
    assert torch.equal(head["classifier.bias"], module.classifier.bias)

    fresh = get_task("sst").build(body(5))
    assert load_run_model(fresh, tmp_path / "best") is fresh
    same_weights(fresh, module)
    same_weights(load_run_body(tmp_path / "best", s), module.gpt)
    assert load_run_body(tmp_path / "best", s).config == CFG


def test_a_last_linear_layer_run_records_its_mode(tmp_path):
    s = settings("cfimdb", "--mode", "last-linear-layer")
    save_run_model(get_task("cfimdb").build(body(0)), tmp_path, s)
    assert json.loads((tmp_path / "config.json").read_text())["minigpt2"]["mode"] == "last-linear-layer"


def test_a_run_without_a_head_saves_none_and_loads_the_body(tmp_path):
    module = randomized(get_task("quora").build(body(0)), 2)
    save_run_model(module, tmp_path, settings("quora"))
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    fresh = get_task("quora").build(body(7))
    load_run_model(fresh, tmp_path)
    same_weights(fresh, module)


def test_a_missing_head_is_one_line_naming_the_file(tmp_path):
    save_run_model(get_task("sst").build(body(0)), tmp_path, settings())
    (tmp_path / "head.safetensors").unlink()
    with pytest.raises(RunFolderError) as e:
        load_run_model(get_task("sst").build(body(0)), tmp_path)
    assert str(e.value) == (f"{tmp_path / 'head.safetensors'}: missing; without the trained head the scores would "
                            "come from a random classifier")


@pytest.mark.parametrize("edit,unexpected,missing", [
    (lambda h: {**h, "extra.weight": torch.zeros(2)}, ["extra.weight"], []),
    (lambda h: {"classifier.weight": h["classifier.weight"]}, [], ["classifier.bias"]),
    (lambda h: {"classifier.weight": h["classifier.weight"], "other.bias": torch.zeros(5)}, ["other.bias"],
     ["classifier.bias"]),
])
def test_a_head_of_other_tensors_is_one_line_naming_them(tmp_path, edit, unexpected, missing):
    save_run_model(get_task("sst").build(body(0)), tmp_path, settings())
    head, _ = read_safetensors(tmp_path / "head.safetensors")
    save_file(edit(head), str(tmp_path / "head.safetensors"))
    with pytest.raises(RunFolderError) as e:
        load_run_model(get_task("sst").build(body(0)), tmp_path)
    assert str(e.value) == (f"{tmp_path / 'head.safetensors'}: head does not fit this task (unexpected "
                            f"{unexpected}, missing {missing})")


def test_a_folder_without_weights_has_no_best_checkpoint(tmp_path):
    with pytest.raises(RunFolderError) as e:
        load_run_body(tmp_path, settings())
    assert str(e.value) == (f"{tmp_path}: no model.safetensors or adapter.safetensors; the run has no best "
                            "checkpoint (did it finish an epoch?)")


# ------------------------------------------------------------------------------------------------- LoRA

LORA = ("--method", "lora", "--lora-rank", "2", "--lora-alpha", "4", "--lora-targets", "attn")


def lora_run(tmp_path, task: str = "sst"):
    """A LoRA run on a saved small base: (settings, the trained module, best/, the base's weights file)."""
    base = save_model(body(0), tmp_path / "base")
    s = settings(task, *LORA, model=str(base))
    module = get_task(task).build(load_base_model(s))
    apply_lora(module, s.model.lora.__class__(**{**s.model.lora.__dict__, "trainable": tuple(head_modules(module))}))
    randomized(module, 4)
    save_run_model(module, tmp_path / "run" / "best", s)
    return s, module, tmp_path / "run" / "best", base / "model.safetensors"


def test_a_lora_run_saves_the_adapter_and_a_config_naming_its_base(tmp_path):
    s, module, best, base = lora_run(tmp_path)
    assert sorted(os.listdir(best)) == ["adapter.safetensors", "config.json"] and ADAPTER_NAME == "adapter.safetensors"
    config = json.loads((best / "config.json").read_text())
    assert config["n_embd"] == 8 and config["vocab_size"] == 11
    assert config["minigpt2"] == {"task": "sst", "mode": "full-model", **runfolder.settings_record(s),
                                  "base_model": str(base.parent), "lora": module.lora_config.to_dict()}
    adapter, _ = read_safetensors(best / ADAPTER_NAME)
    assert {"classifier.weight", "classifier.bias"} <= adapter.keys()
    assert all(k.startswith("classifier.") or ".lora_" in k for k in adapter)

    fresh = get_task("sst").build(load_run_body(best, s))  # the base, as the run started from it
    assert not any(isinstance(m, LoRALinear) for m in fresh.modules())
    assert load_run_model(fresh, best) is fresh
    same_weights(fresh, module)


def test_a_lora_run_is_loaded_on_its_base_when_the_recorded_sha256_fits(tmp_path, monkeypatch):
    s, module, best, base = lora_run(tmp_path)
    recorded = {"file": str(base), "sha256": sha256(base)}
    calls = []
    real = runmodel.base_weights_file
    monkeypatch.setattr(runmodel, "base_weights_file", lambda m, o=False: calls.append((m, o)) or real(m, o))
    gpt = load_run_body(best, s, recorded)
    assert calls == [(str(base.parent), False)]
    same_weights(gpt, body(0))
    offline = settings("sst", *LORA, "--offline", model=str(base.parent))
    load_run_body(best, offline, recorded)
    assert calls[-1] == (str(base.parent), True)


def test_a_lora_run_whose_base_changed_is_one_line_with_both_sha256(tmp_path):
    s, _, best, base = lora_run(tmp_path)
    recorded = {"file": str(base), "sha256": sha256(base)}
    save_model(body(1), base.parent)  # other weights in the same place
    now = sha256(base)
    assert now != recorded["sha256"]
    with pytest.raises(RunFolderError) as e:
        load_run_body(best, s, recorded)
    assert str(e.value) == (f"{best / ADAPTER_NAME}: the LoRA run was trained on {base} (sha256 "
                            f"{recorded['sha256']}), but {base} now has sha256 {now}; its adapter does not fit "
                            "this base")


def test_a_lora_run_without_a_recorded_base_loads_the_base_unchecked(tmp_path):
    s, _, best, base = lora_run(tmp_path)
    save_model(body(1), base.parent)
    same_weights(load_run_body(best, s), body(1))
    same_weights(load_run_body(best, s, None), body(1))


def test_a_later_best_epoch_of_a_lora_run_replaces_the_first_in_the_same_folder(tmp_path):
    s, module, best, _ = lora_run(tmp_path)
    randomized(module, 9)  # the next best epoch: other adapters and head
    save_run_model(module, best, s)
    fresh = get_task("sst").build(load_run_body(best, s))
    load_run_model(fresh, best)
    same_weights(fresh, module)


def test_a_body_of_another_shape_is_refused_naming_the_run_s_weights_file(tmp_path):
    save_run_model(get_task("sst").build(body(0)), tmp_path, settings())
    deeper = GPT2(GPT2Config(vocab_size=11, n_positions=5, n_embd=8, n_layer=3, n_head=2))
    with pytest.raises(CheckpointError) as e:
        load_run_model(get_task("sst").build(deeper), tmp_path)
    assert str(e.value).startswith(f"{tmp_path / 'model.safetensors'}: not a GPT-2 checkpoint for n_layer=3, "
                                   "n_embd=8: missing key(s) ['h.2.")


def test_a_full_run_is_never_loaded_in_part_into_a_body_with_other_layers(tmp_path):
    """A body whose projections are wrapped (LoRA adapters) has other tensor names: the whole body must load or
    nothing, never the matching part with the wrapped layers left as they were."""
    save_run_model(get_task("sst").build(body(0)), tmp_path, settings())
    s = settings("sst", *LORA)
    wrapped = get_task("sst").build(body(1))
    apply_lora(wrapped, s.model.lora)
    with pytest.raises(RuntimeError, match="Missing key\\(s\\) in state_dict: .*attn.query.base.weight"):
        load_run_model(wrapped, tmp_path)


class GptNamedHead(TaskModel):
    """A head whose module name ends in "gpt" ("subgpt.bias" holds "gpt." but is no tensor of the body)."""

    def __init__(self, gpt: GPT2) -> None:
        super().__init__(gpt)
        self.subgpt = nn.Linear(8, 2)


def test_a_missing_head_tensor_is_named_even_when_its_name_holds_gpt(tmp_path):
    save_run_model(GptNamedHead(body(0)), tmp_path, settings())
    head, _ = read_safetensors(tmp_path / "head.safetensors")
    save_file({"subgpt.weight": head["subgpt.weight"]}, str(tmp_path / "head.safetensors"))
    with pytest.raises(RunFolderError) as e:
        load_run_model(GptNamedHead(body(0)), tmp_path)
    assert str(e.value) == (f"{tmp_path / 'head.safetensors'}: head does not fit this task (unexpected [], missing "
                            "['subgpt.bias'])")  # was "missing []"
