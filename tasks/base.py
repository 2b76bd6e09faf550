"""What every task shares: encoded examples, padding, the task-model wrapper and the task interface.

A task turns course files into `Example`s, wraps the GPT-2 body in a `TaskModel` (body + head + loss), turns
model outputs into predictions, scores them and writes them in the course's file formats. The training loop in
`minigpt2.train` knows nothing else about tasks.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from minigpt2.device import autocast_for
from minigpt2.model import GPT2
from minigpt2.tokenizer import EOT_ID, Tokenizer

from .readers import Malformed


@dataclass
class Example:
    """One encoded example. `label` is None for unlabelled (test) rows; `meta` holds task-specific extras."""

    id: str
    input_ids: list[int]
    label: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def collate(examples: Sequence[Example], pad_id: int = EOT_ID, lm_targets: bool = False) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest row: input_ids, attention_mask, labels (when all have one) and, for
    language modelling, next-token `targets` with -100 on padding and on the last position."""
    T = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), T), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, :len(e.input_ids)] = torch.tensor(e.input_ids, dtype=torch.long)
        mask[i, :len(e.input_ids)] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if all(e.label is not None for e in examples):
        batch["labels"] = torch.tensor([e.label for e in examples], dtype=torch.long)
    if lm_targets:
        targets = torch.full_like(ids, -100)
        targets[:, :-1] = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        batch["targets"] = targets
    return batch


class TaskModel(nn.Module):
    """GPT-2 body + a task head. `forward(batch)` returns the mean training loss; `predict(batch)` class ids.

    The body is `self.gpt`; the knobs of the study (LoRA, fake-quant) wrap layers inside it, so the task code
    never changes for them. When the body has no trainable parameter (`--mode last-linear-layer`) it runs under
    `no_grad`, which saves its activations' memory.
    """

    def __init__(self, gpt: GPT2) -> None:
        super().__init__()
        self.gpt = gpt

    def body(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        trains_body = torch.is_grad_enabled() and any(p.requires_grad for p in self.gpt.parameters())
        with torch.set_grad_enabled(trains_body):
            return self.gpt(input_ids, attention_mask=attention_mask)

    def head_state(self) -> dict[str, torch.Tensor]:
        """Tensors of the task head (everything outside `gpt`), saved beside the model's safetensors."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("gpt.")}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class Task:
    """The interface of a task; see `tasks.sentiment`, `tasks.paraphrase`, `tasks.sonnet`."""

    name: str = ""
    metric: str = "accuracy"  # the dev metric that picks the best epoch (higher is better)
    files: dict[str, str] = {}  # split -> file name in the data folder
    lm_targets: bool = False  # batches carry next-token targets (causal LM tasks)

    def load(self, folder: Path, split: str, tok: Tokenizer, max_len: int, limit: int | None = None,
             args: argparse.Namespace | None = None) -> tuple[list[Example], list[Malformed]]:
        """Encoded examples of one split (`train`, `dev`, `test`) and the malformed rows skipped."""
        raise NotImplementedError

    def build(self, gpt: GPT2, args: argparse.Namespace) -> TaskModel:
        """Wrap the (already knob-wrapped) body in this task's head."""
        raise NotImplementedError

    def predict(self, module: TaskModel, examples: list[Example], args: argparse.Namespace, tok: Tokenizer,
                device: torch.device) -> list[Any]:
        """Predictions for examples, in their order."""
        return predict_classes(module, examples, args.eval_batch_size, device, autocast=args.autocast)

    def score(self, examples: list[Example], predictions: list[Any]) -> dict[str, float]:
        """The dev metric(s) of predictions."""
        raise NotImplementedError

    def output_name(self, split: str, args: argparse.Namespace) -> str:
        """File name of a split's predictions, as the course names it."""
        raise NotImplementedError

    def write_predictions(self, path: Path, examples: list[Example], predictions: list[Any]) -> None:
        raise NotImplementedError


class ClassificationTask(Task):
    """A task whose predictions are one integer per id, scored by accuracy and written as the course does:
    the header `id \t <column>`, then `<id>, <value>` lines."""

    column: str = ""

    def file_value(self, prediction: int) -> int:
        """The value written for a prediction (the class id by default)."""
        return int(prediction)

    def score(self, examples: list[Example], predictions: list[int]) -> dict[str, float]:
        from minigpt2.metrics import accuracy

        return {"accuracy": accuracy(predictions, [e.label for e in examples])}

    def write_predictions(self, path: Path, examples: list[Example], predictions: list[int]) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"id \t {self.column} \n")
            for e, p in zip(examples, predictions):
                f.write(f"{e.id}, {self.file_value(p)} \n")


def read_id_values(path: str | Path, column: str) -> dict[str, int]:
    """id -> integer of a course-format prediction file, with the line of anything unexpected."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or [c.strip() for c in lines[0].split("\t")] != ["id", column]:
        raise ValueError(f"{path}:1: expected the header 'id \\t {column}', got {lines[:1]}")
    out = {}
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise ValueError(f"{path}:{n}: expected '<id>, <integer>', got {line!r}")
        out[parts[0]] = int(parts[1])
    return out


def predict_classes(module: TaskModel, examples: list[Example], batch_size: int, device: torch.device,
                    autocast: str = "off") -> list[int]:
    """Run `module.predict` over examples in length-sorted batches (less padding); results in input order.
    `autocast` is an `--autocast` mode (auto, bf16, off), resolved by `minigpt2.device`."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    out: list[int] = [0] * len(examples)
    was_training = module.training
    module.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = collate([examples[i] for i in idx])
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast_for(autocast, device):
                preds = module.predict(batch).tolist()
            for i, p in zip(idx, preds):
                out[i] = p
    module.train(was_training)
    return out

