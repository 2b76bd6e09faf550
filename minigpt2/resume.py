"""The resume state of a run: everything needed to continue after a finished epoch.

One safetensors file (`STATE_FILE`): the trainable weights, the AdamW moments, the torch RNG states as tensors;
the epoch, optimizer groups, schedule, Python/NumPy RNG states and the run's history as JSON in its metadata.
Replaced atomically, so a kill leaves the previous epoch's state or this one, never a mix; nothing is pickled.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import atomic_path
from .checkpoint import read_safetensors
from .errors import UserError

STATE_FILE = "state.safetensors"


def save_resume_state(folder: Path, module: nn.Module, optimizer: torch.optim.Optimizer,
                      scheduler: torch.optim.lr_scheduler.LRScheduler, epoch: int, extra: dict[str, Any]) -> None:
    """Everything needed to continue after `epoch`: trainable weights, AdamW moments and step, the schedule,
    RNG states. The tensors and (in the file's metadata, as JSON) the rest go into one file, swapped in atomically."""
    tensors = {f"model.{n}": p.detach().contiguous().cpu() for n, p in module.named_parameters() if p.requires_grad}
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).contiguous().cpu()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    py_state = random.getstate()
    np_state = np.random.get_state()
    trainer = {
        "epoch": epoch,
        "param_groups": opt["param_groups"],
        "scheduler": scheduler.state_dict(),
        "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
        "rng_numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        **extra,
    }
    with atomic_path(folder / STATE_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"trainer": json.dumps(trainer, allow_nan=False)})


def has_resume_state(folder: Path) -> bool:
    return (folder / STATE_FILE).is_file()


class ResumeStateError(UserError, ValueError):
    """A resume state that does not fit the run being resumed."""


def load_resume_state(folder: Path, module: nn.Module, optimizer: torch.optim.Optimizer,
                      scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """Restore what `save_resume_state` wrote; returns the JSON part (epoch, history, ...)."""
    path = folder / STATE_FILE
    tensors, meta = read_safetensors(path)
    trainer = _trainer_state(path, meta)
    params = dict(module.named_parameters())
    for name, p in params.items():
        if p.requires_grad:
            key = f"model.{name}"
            if key not in tensors:
                raise ResumeStateError(f"{path}: no tensor {key!r}; was the run started with "
                                       "other settings (mode, LoRA, ...)?")
            if tensors[key].shape != p.shape:  # copy_ would broadcast a (1,) into any shape, or fail with a traceback
                raise ResumeStateError(f"{path}: tensor {key!r} has shape {tuple(tensors[key].shape)}, this run's "
                                       f"{tuple(p.shape)}; was the run started with other settings (mode, LoRA, ...)?")
            with torch.no_grad():
                p.copy_(tensors[key])
    try:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": trainer["param_groups"]})
        scheduler.load_state_dict(trainer["scheduler"])
        torch.set_rng_state(tensors["rng.torch"])
        # by GPU index, not as text: "rng.cuda.10" sorts before "rng.cuda.2"
        cuda_states = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")),
                                                  key=lambda k: int(k.rpartition(".")[2]))]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states[:torch.cuda.device_count()])
        v, s, g = trainer["rng_python"]
        random.setstate((v, tuple(s), g))
        kind, keys, pos, has_gauss, cached = trainer["rng_numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
        if not (isinstance(trainer["epoch"], int) and isinstance(trainer["history"], list)
                and isinstance(trainer["wall_s"], (int, float))):
            raise TypeError("epoch, history or wall_s of the wrong type")
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:  # parses but does not fit
        raise ResumeStateError(f"{path}: the saved optimizer, schedule or random state does not fit this run "
                               f"({type(e).__name__}: {e}); start the run afresh, overwriting the folder") from None
    return trainer


_TRAINER_KEYS = frozenset({"epoch", "param_groups", "scheduler", "rng_python", "rng_numpy", "history", "best",
                           "wall_s"})


def _trainer_state(path: Path, meta: dict[str, str]) -> dict[str, Any]:
    """The JSON part of a resume state, or a ResumeStateError naming the file."""
    if "trainer" not in meta:
        raise ResumeStateError(f"{path}: no trainer state in its metadata (written by an older "
                               "version?); start the run afresh, overwriting the folder")
    try:
        trainer = json.loads(meta["trainer"])
    except ValueError as e:
        raise ResumeStateError(f"{path}: its trainer state is not valid JSON ({e}); the file is damaged: start the "
                               "run again with --overwrite") from None
    if not isinstance(trainer, dict) or not _TRAINER_KEYS <= set(trainer):
        raise ResumeStateError(f"{path}: its trainer state is not an object with {', '.join(sorted(_TRAINER_KEYS))}"
                               "; the file is damaged: start the run afresh, overwriting the folder")
    return trainer


def check_resume_state(folder: Path) -> None:
    """Refuse a damaged resume state in `folder` before a resumed run writes anything (its metadata only: the
    tensors are read, and checked, when the state is loaded)."""
    path = folder / STATE_FILE
    if not path.is_file():
        return
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ResumeStateError(f"{path}: not a readable resume state ({e}); start the run afresh, overwriting "
                               "the folder") from None
    _trainer_state(path, meta)


