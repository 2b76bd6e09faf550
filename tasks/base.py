"""What every task shares: encoded examples, padding, the task-model wrapper and the task interface.

A task turns course files into `Example`s, wraps the GPT-2 body in a `TaskModel` (body + head + loss), turns
model outputs into predictions and scores them: the learning interface. Its prediction and reference files are
`task.format`, a `course.formats` object. The training loop in `minigpt2.train` knows nothing else about tasks.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import torch
import torch.nn as nn

from course.files import CourseFiles, LabelledFiles
from course.formats import CourseFormat, LabelFormat
from course.readers import DataError, Malformed, clean_text, read_table
from minigpt2.device import autocast
from minigpt2.generation import Sampling
from minigpt2.model import GPT2, last_token_index
from minigpt2.tokenizer import EOT_ID, Tokenizer


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

    def body(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, at: torch.Tensor | None = None
             ) -> torch.Tensor:
        """The GPT-2 hidden states (B, T, C), or (B, C) at the positions `at` (see `GPT2.forward`)."""
        trains_body = torch.is_grad_enabled() and any(p.requires_grad for p in self.gpt.parameters())
        with torch.set_grad_enabled(trains_body):
            return self.gpt(input_ids, attention_mask=attention_mask, at=at)

    def last_hidden(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The hidden state (B, C) of each row's last real token: all a classifier reads, and all the last block
        computes."""
        return self.body(batch["input_ids"], batch["attention_mask"], at=last_token_index(batch["attention_mask"]))

    def head_state(self) -> dict[str, torch.Tensor]:
        """Tensors of the task head (everything outside `gpt`), saved beside the model's safetensors."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("gpt.")}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def sample_indices(labels: Sequence[int | None], n: int | None, seed: int, split: str) -> list[int]:
    """Indices of a seeded random subset of `n` rows (all when n is None or >= their number), stratified by label
    when every row has one (each class keeps its share, largest remainder first), in file order.

    `--max-train` / `--max-eval` use this instead of the first n rows, which are not a sample of a file (the
    first 128 SST dev rows are mostly classes 3 and 4). Rows are chosen before they are encoded."""
    if n is None or n >= len(labels):
        return list(range(len(labels)))
    rng = random.Random(f"minigpt2-subset:{seed}:{split}")  # one stream per split
    if all(label is not None for label in labels):
        groups: dict[int, list[int]] = {}
        for i, label in enumerate(labels):
            groups.setdefault(int(label), []).append(i)  # type: ignore[arg-type]
        keys = sorted(groups)
        shares = {k: n * len(groups[k]) / len(labels) for k in keys}
        quota = {k: int(shares[k]) for k in keys}
        # Largest remainder first; ties broken by the seeded generator, not by the label's value.
        for k in sorted(keys, key=lambda k: (-(shares[k] - quota[k]), rng.random()))[:n - sum(quota.values())]:
            quota[k] += 1
        chosen = [i for k in keys for i in rng.sample(groups[k], quota[k])]
    else:
        chosen = rng.sample(range(len(labels)), n)
    return sorted(chosen)


@dataclass(frozen=True)
class PredictSettings:
    """What a task's `predict` needs from the run: batch size, the autocast dtype (None: fp32; the application
    resolves the run's `--autocast` mode to it once, with `minigpt2.device.autocast_dtype`), sampling."""

    batch_size: int = 32
    autocast_dtype: torch.dtype | None = None
    sampling: Sampling = Sampling()


class Task(ABC):
    """The learning interface of a task (load, build, loss examples, predict, score); see `tasks.sentiment`,
    `tasks.paraphrase`, `tasks.sonnet`. Callers use only these methods and attributes, never the task's name;
    the course's prediction and reference files go through `format`. A task whose predictions are sampled texts
    is a `GenerativeTask`, which has more."""

    name: str = ""
    metric: str = "accuracy"  # the dev metric that picks the best epoch (higher is better)
    files: CourseFiles  # the course's files of this task (`files.inputs()`: every one required)
    format: CourseFormat  # its prediction and reference files (`course.formats`)
    lm_targets: bool = False  # batches carry next-token targets (causal LM tasks)
    has_head: bool = True  # a trained head beside the body (False: the task reads the LM head, zero-shot works)
    takes_extra_texts: bool = False  # `load("train", extra_texts=...)` adds training texts (synthetic sonnets)

    @abstractmethod
    def load(self, folder: Path, split: str, tok: Tokenizer, max_len: int, limit: int | None = None,
             extra_texts: Sequence[str] = (), seed: int = 0) -> tuple[list[Example], list[Malformed]]:
        """Encoded examples of one split (`train`, `dev`, `test`) and the malformed rows skipped. `limit`: a
        seeded random subset of that many rows (`sample_indices`). `extra_texts` are added to the training set by
        tasks that take them (`takes_extra_texts`), on top of the limit."""

    @abstractmethod
    def build(self, gpt: GPT2) -> TaskModel:
        """This task's module around the body (LoRA and quantization, if any, already in place)."""

    def predict(self, module: TaskModel, examples: list[Example], how: PredictSettings, tok: Tokenizer,
                device: torch.device) -> list[Any]:
        """Predictions for examples, in their order."""
        return predict_classes(module, examples, how.batch_size, device, how.autocast_dtype)

    def loss_examples(self, examples: list[Example]) -> list[Example]:
        """The examples the dev loss is computed on (by default the dev examples themselves)."""
        return examples

    @abstractmethod
    def score(self, examples: list[Example], predictions: list[Any]) -> dict[str, float]:
        """The dev metric(s) of predictions."""


class ClassificationTask(Task):
    """A task whose predictions are one class id per example, scored by accuracy. Its rows are read the same
    way for every such task (`load`): the columns, label column and label values its `format` declares, a
    seeded subset stratified by label, then `encode`, the one thing each task says itself."""

    format: LabelFormat
    files: LabelledFiles

    @abstractmethod
    def encode(self, texts: list[tuple[str, ...]], tok: Tokenizer, max_len: int) -> list[list[int]]:
        """The token ids (at most `max_len`) of each row, given its text columns (the format's `text_columns`
        after the id, each through `clean_text`), in order."""

    def load(self, folder: Path, split: str, tok: Tokenizer, max_len: int, limit: int | None = None,
             extra_texts: Sequence[str] = (), seed: int = 0) -> tuple[list[Example], list[Malformed]]:
        if extra_texts:
            raise DataError(f"task {self.name!r} takes no extra training texts")
        fmt = self.format
        labelled = split != "test"  # the course keeps the test labels in another file
        label = fmt.label_column if labelled else None
        table = read_table(folder / self.files.split(split), fmt.text_columns, label=label,
                           label_values=fmt.label_values)
        # Rows are chosen before they are encoded, so a subset costs only its own tokenization.
        rows = [table.rows[i] for i in sample_indices(
            [int(r[label]) if label else None for r in table.rows], limit, seed, split)]
        columns = [c for c in fmt.text_columns if c != "id"]
        encoded = self.encode([tuple(clean_text(r[c]) for c in columns) for r in rows], tok, max_len)
        return ([Example(r["id"], ids, int(r[label]) if label else None) for r, ids in zip(rows, encoded)],
                table.malformed)

    def score(self, examples: list[Example], predictions: list[int]) -> dict[str, float]:
        from minigpt2.metrics import accuracy

        return {"accuracy": accuracy(predictions, [e.label for e in examples])}


class HeldoutNLL(NamedTuple):
    """One true continuation's held-out likelihood (`GenerativeTask.heldout_nll`)."""
    nll: float  # summed over the scored tokens, nats
    tokens: int  # tokens scored
    continuation: int  # tokens of the continuation, <|endoftext|> included
    in_view: int  # tokens scored with the whole prompt in the model's context (the first window)


class GenerativeTask(Task):
    """A task whose predictions are sampled texts (the sonnet task): several draws per prompt
    (`predict_samples`, `--eval-samples K`), and what only learning earns beside the sampled score: the
    teacher-forced likelihood of the true held-out texts (`heldout_nll`) and, against its training texts
    (`train_texts`), how much of what was written was copied. `predict` is the first draw."""

    def predict(self, module: TaskModel, examples: list[Example], how: PredictSettings, tok: Tokenizer,
                device: torch.device) -> list[str]:
        return self.predict_samples(module, examples, how, tok, device, samples=1)[0]

    @abstractmethod
    def predict_samples(self, module: TaskModel, examples: list[Example], how: PredictSettings, tok: Tokenizer,
                        device: torch.device, samples: int) -> list[list[str]]:
        """`samples` texts per prompt: a list per sample, each in the examples' order; sample 0 is what
        `predict` returns, every other seeded apart from it (`how.sampling`)."""

    @abstractmethod
    def heldout_nll(self, module: TaskModel, examples: list[Example], references: dict[str, str],
                    how: PredictSettings, tok: Tokenizer, device: torch.device) -> dict[str, HeldoutNLL]:
        """id -> `HeldoutNLL` of the true text `references[id]` after the example's prompt, teacher-forced,
        deterministic; examples without a reference are left out."""

    @abstractmethod
    def train_texts(self, folder: Path) -> tuple[list[str], list[Malformed]]:
        """The real training set as plain texts (what copied words are looked up in), and its malformed rows."""


def eval_batches(module: nn.Module, examples: Sequence[Example], batch_size: int, device: torch.device,
                 autocast_dtype: torch.dtype | None, step: Callable[[dict[str, torch.Tensor]], Any],
                 lm_targets: bool = False, by_length: bool = False) -> list[tuple[list[int], Any]]:
    """The evaluation loop: `step(batch)` on each batch of `examples` in eval mode, without gradients, under
    autocast in `autocast_dtype` (None: fp32); the mode is given back after. Returns (indices of the batch's
    examples, what `step` returned) per batch. `by_length`: batches of length-sorted examples (less padding),
    else in the examples' order."""
    order = list(range(len(examples)))
    if by_length:
        order.sort(key=lambda i: len(examples[i].input_ids))
    out: list[tuple[list[int], Any]] = []
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                batch = collate([examples[i] for i in idx], lm_targets=lm_targets)
                batch = {k: v.to(device) for k, v in batch.items()}
                with autocast(device, autocast_dtype):
                    out.append((idx, step(batch)))
    finally:
        module.train(was_training)
    return out


def predict_classes(module: TaskModel, examples: list[Example], batch_size: int, device: torch.device,
                    autocast_dtype: torch.dtype | None = None) -> list[int]:
    """Run `module.predict` over examples in length-sorted batches (less padding); results in input order.
    `autocast_dtype`: the dtype the forward runs in under autocast (None: fp32)."""
    out: list[int] = [0] * len(examples)
    for idx, preds in eval_batches(module, examples, batch_size, device, autocast_dtype,
                                   lambda batch: module.predict(batch).tolist(), by_length=True):
        for i, p in zip(idx, preds):
            out[i] = p
    return out

