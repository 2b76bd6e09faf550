"""The model of a run folder: the base GPT-2 a run starts from, and how its best weights are saved and loaded.

    RUN_DIR/best/model.safetensors + config.json   the body in the HF layout (run settings under "minigpt2")
    RUN_DIR/best/head.safetensors                  a classifier head, when the task has one
    RUN_DIR/best/adapter.safetensors + config.json a LoRA run: adapters and head only, config.json names the base

`finetune` saves through `save_run_model`; `evaluate`, `generate` and `finetune`'s final predictions load through
`load_run_body` (the body) and `load_run_model` (the trained weights into a module of the same shape).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from minigpt2.atomic import atomic_path, atomic_write_json
from minigpt2.checkpoint import hf_to_minigpt2, load_model, read_safetensors, resolve_model, save_model
from minigpt2.config import GPT2Config
from minigpt2.lora import load_adapter, save_adapter
from minigpt2.model import GPT2
from tasks.base import TaskModel

from . import runfolder
from .cli import GROUP, checked
from .settings import RunSettings

ADAPTER_NAME = "adapter.safetensors"


def base_weights_file(model: str, offline: bool = False) -> Path | None:
    """The safetensors file --model names (downloaded if it is a missing preset); None for 'tiny'."""
    if model == "tiny":
        return None
    path = checked(lambda: resolve_model(model, offline=offline), GROUP["model"])
    return path / "model.safetensors" if path.is_dir() else path


def load_base_model(settings: RunSettings) -> GPT2:
    """The GPT-2 body named by --model: 'tiny' (random init), a preset name, or a path."""
    if settings.model.model == "tiny":
        return GPT2(GPT2Config.from_name("tiny"))
    return load_model(checked(lambda: resolve_model(settings.model.model, offline=settings.paths.offline),
                              GROUP["model"]))


def head_modules(module: TaskModel) -> list[str]:
    """Names of the task head's modules (everything with parameters outside the GPT-2 body)."""
    return [n for n, m in module.named_children() if n != "gpt" and any(True for _ in m.parameters())]


def load_run_body(folder: Path, settings: RunSettings, recorded_base: dict[str, Any] | None = None) -> GPT2:
    """The GPT-2 body a saved run starts from: the saved weights, or for a LoRA run (whose checkpoint holds only
    the adapter) the base model named by --model, which must still be the file the run was trained on."""
    if (folder / ADAPTER_NAME).is_file():
        if recorded_base is not None:
            weights = base_weights_file(settings.model.model, settings.paths.offline)
            now = runfolder.sha256_file(weights)
            if now != recorded_base["sha256"]:
                raise runfolder.RunFolderError(
                    f"{folder / ADAPTER_NAME}: the LoRA run was trained on {recorded_base['file']} (sha256 "
                    f"{recorded_base['sha256']}), but {weights} now has sha256 {now}; its adapter does not fit "
                    "this base")
        return load_base_model(settings)
    if not (folder / "model.safetensors").is_file():
        raise runfolder.RunFolderError(f"{folder}: no model.safetensors or {ADAPTER_NAME}; the run has no best "
                                       "checkpoint (did it finish an epoch?)")
    return load_model(folder)


def save_run_model(module: TaskModel, folder: Path, settings: RunSettings) -> None:
    """Best weights: the body as `model.safetensors` + `config.json` (HF layout, run settings under the key
    "minigpt2"), the head (if any) as `head.safetensors`. A LoRA run saves only `adapter.safetensors` (adapters
    + head, LoRA settings in its metadata) and a `config.json` naming the base model."""
    extra = {"task": settings.data.task, "mode": settings.model.mode, **runfolder.settings_record(settings)}
    if settings.model.lora is not None:
        folder.mkdir(parents=True, exist_ok=True)
        save_adapter(module, folder / ADAPTER_NAME)  # atomic
        cfg = module.gpt.config.to_hf_dict()
        cfg["minigpt2"] = {**extra, "base_model": settings.model.model, "lora": module.lora_config.to_dict()}
        atomic_write_json(folder / "config.json", cfg)
        return
    save_model(module.gpt, folder, extra_config=extra)  # fake-quant layers save their full-precision weights
    head = module.head_state()
    if head:
        with atomic_path(folder / "head.safetensors") as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in head.items()}, str(tmp))


def load_run_model(module: TaskModel, folder: Path) -> TaskModel:
    """Load what `save_run_model` wrote into a module of the same shape; a head the task needs must be there."""
    if (folder / ADAPTER_NAME).is_file():
        load_adapter(module, folder / ADAPTER_NAME)  # adds the adapters first if the module has none yet
        return module
    hf, _ = read_safetensors(folder / "model.safetensors")
    state = hf_to_minigpt2(hf, module.gpt.config, source=str(folder / "model.safetensors"))
    module.gpt.load_state_dict(state, strict=True)
    if module.head_state():
        if not (folder / "head.safetensors").is_file():
            raise runfolder.RunFolderError(f"{folder / 'head.safetensors'}: missing; without the trained head the "
                                           "scores would come from a random classifier")
        head, _ = read_safetensors(folder / "head.safetensors")
        missing, unexpected = module.load_state_dict(head, strict=False)
        missing = [k for k in missing if not k.startswith("gpt.")]  # the body's came from model.safetensors
        if unexpected or missing:
            raise runfolder.RunFolderError(
                f"{folder / 'head.safetensors'}: head does not fit this task (unexpected {unexpected}, missing "
                f"{missing})")
    return module
