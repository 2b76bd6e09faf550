"""What every task shares: encoded examples, padding, the task-model wrapper and the task interface.

A task turns course files into `Example`s, wraps the GPT-2 body in a `TaskModel` (body + head + loss), turns
model outputs into predictions, scores them and writes them in the course's file formats. The training loop in
`minigpt2.train` knows nothing else about tasks.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from minigpt2.atomic import atomic_write
from minigpt2.device import autocast_for
from minigpt2.model import GPT2
from minigpt2.tokenizer import EOT_ID, Tokenizer

from .readers import DataError, Malformed, Table, read_table


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


# The course's sampling settings for the sonnet task (the command line's defaults).
TEMPERATURE, TOP_P, MAX_NEW_TOKENS = 1.2, 0.9, 400


@dataclass(frozen=True)
class Sampling:
    """How a generative task samples: temperature (0: greedy), nucleus mass, token budget, base seed."""

    temperature: float = TEMPERATURE
    top_p: float = TOP_P
    max_new_tokens: int = MAX_NEW_TOKENS
    seed: int = 0


@dataclass(frozen=True)
class PredictSettings:
    """What a task's `predict` needs from the run: batch size, the `--autocast` mode, sampling."""

    batch_size: int = 32
    autocast: str = "off"
    sampling: Sampling = Sampling()


class Task(ABC):
    """The interface of a task; see `tasks.sentiment`, `tasks.paraphrase`, `tasks.sonnet`. Callers use only
    these methods and attributes, never the task's name."""

    name: str = ""
    metric: str = "accuracy"  # the dev metric that picks the best epoch (higher is better)
    files: dict[str, str] = {}  # split -> file name in the data folder (every one required)
    test_references: str = ""  # the test split's labels or true sonnets: optional, scored where present
    lm_targets: bool = False  # batches carry next-token targets (causal LM tasks)
    has_head: bool = True  # a trained head beside the body (False: the task reads the LM head, zero-shot works)
    takes_extra_texts: bool = False  # `load("train", extra_texts=...)` adds training texts (synthetic sonnets)
    generative: bool = False  # predictions are sampled texts: `predict_samples`, `heldout_nll`, `split_references`

    @abstractmethod
    def load(self, folder: Path, split: str, tok: Tokenizer, max_len: int, limit: int | None = None,
             extra_texts: Sequence[str] = (), seed: int = 0) -> tuple[list[Example], list[Malformed]]:
        """Encoded examples of one split (`train`, `dev`, `test`) and the malformed rows skipped. `limit`: a
        seeded random subset of that many rows (`sample_indices`). `extra_texts` are added to the training set by
        tasks that take them (`takes_extra_texts`), on top of the limit."""

    @abstractmethod
    def build(self, gpt: GPT2) -> TaskModel:
        """Wrap the (already knob-wrapped) body in this task's head."""

    def predict(self, module: TaskModel, examples: list[Example], how: PredictSettings, tok: Tokenizer,
                device: torch.device) -> list[Any]:
        """Predictions for examples, in their order."""
        return predict_classes(module, examples, how.batch_size, device, autocast=how.autocast)

    def loss_examples(self, examples: list[Example]) -> list[Example]:
        """The examples the dev loss is computed on (by default the dev examples themselves)."""
        return examples

    @abstractmethod
    def score(self, examples: list[Example], predictions: list[Any]) -> dict[str, float]:
        """The dev metric(s) of predictions."""

    @abstractmethod
    def output_name(self, split: str, mode: str) -> str:
        """File name of a split's predictions, as the course names it (`mode`: full-model, last-linear-layer)."""

    @abstractmethod
    def write_predictions(self, path: Path, examples: list[Example], predictions: list[Any]) -> None:
        """The course-format prediction file, written atomically."""

    @abstractmethod
    def score_pairs(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        """The metric(s) of predictions against references (as `split_pairs` returns them)."""

    @abstractmethod
    def references_file(self, folder: Path, split: str) -> Path | None:
        """Where the references of `split` lie in `folder` (the test labels, or true test sonnets, beside the data
        as `minigpt2.data fetch` writes them); None when that file is absent."""

    @abstractmethod
    def split_pairs(self, predictions_file: Path, folder: Path, split: str, references: Path | None = None
                    ) -> tuple[list[Any], list[Any]] | None:
        """(predictions, references) of a split's prediction file, matched by id against the references in
        `folder` (or the file `references` names); None where the split has no references (test without labels)."""

    @abstractmethod
    def reference_ids(self, folder: Path, split: str, references: Path | None = None) -> set[str] | None:
        """The ids that the references of `split` name (as `split_pairs` matches them; a row listed without a
        usable label counts: it is skipped, see `unlabelled_rows`); None where there are none."""

    def unlabelled_rows(self, folder: Path, split: str, references: Path | None = None) -> list[Malformed]:
        """Rows of the references of `split` that name an id but hold no usable label (an empty cell, say): their
        predictions are written but not scored, and the caller warns about each, as for the dev file's."""
        return []

    def majority_accuracy(self, references: list[Any]) -> float | None:
        """Accuracy of always answering the most frequent reference (classification tasks); None otherwise."""
        return None

    def split_scores(self, predictions_file: Path, folder: Path, split: str, references: Path | None = None
                     ) -> dict[str, float] | None:
        """The metric(s) of a split's prediction file; None where the split has no references."""
        pairs = self.split_pairs(predictions_file, folder, split, references)
        return None if pairs is None else self.score_pairs(*pairs)


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
        lines = [f"id \t {self.column} \n"] + [f"{e.id}, {self.file_value(p)} \n" for e, p in zip(examples, predictions)]
        atomic_write(path, "".join(lines))

    def read_predictions(self, path: str | Path) -> dict[str, int]:
        """id -> predicted label of a prediction file in the course's format."""
        return read_id_values(path, self.column)

    def score_pairs(self, predictions: list[int], references: list[int]) -> dict[str, float]:
        from minigpt2.metrics import accuracy

        return {"accuracy": accuracy(predictions, references)}

    @abstractmethod
    def dev_labels(self, folder: Path) -> dict[str, int]:
        """id -> true label of the dev split."""

    def majority_accuracy(self, references: list[int]) -> float | None:
        if not references:
            return None
        counts: dict[int, int] = {}
        for r in references:
            counts[int(r)] = counts.get(int(r), 0) + 1
        return max(counts.values()) / len(references)

    label_column: str = ""  # the label's column in the data and in the `*-test-labels.csv` file
    label_values: set[int] | None = None

    def references_file(self, folder: Path, split: str) -> Path | None:
        path = folder / (self.test_references if split == "test" else self.files[split])
        return path if path.is_file() else None

    def label_table(self, folder: Path, split: str, references: Path | None = None) -> Table | None:
        """The labels file of `split` read as a table (test: the `*-test-labels.csv` file beside the data, or
        `references`); None for dev without `references` (its labels are the dev file's) or absent test labels."""
        if split != "test" and references is None:
            return None
        path = references or self.references_file(folder, split)
        if path is None:
            return None
        if not Path(path).is_file():
            raise DataError(f"{path}: test labels file not found")
        return read_table(Path(path), ["id"], label=self.label_column, label_values=self.label_values)

    def split_labels(self, folder: Path, split: str, references: Path | None = None) -> dict[str, int] | None:
        """id -> true label of `split` (test: the `*-test-labels.csv` file beside the data, or `references`);
        None when the test labels are absent. Rows without a usable label are left out (`unlabelled_rows`)."""
        table = self.label_table(folder, split, references)
        if table is None:
            return self.dev_labels(folder) if split == "dev" and references is None else None
        return {r["id"]: int(float(r[self.label_column])) for r in table.rows}

    def unlabelled_rows(self, folder: Path, split: str, references: Path | None = None) -> list[Malformed]:
        table = self.label_table(folder, split, references)
        return [] if table is None else [m for m in table.malformed if m.id]

    def reference_ids(self, folder: Path, split: str, references: Path | None = None) -> set[str] | None:
        labels = self.split_labels(folder, split, references)
        if labels is None:
            return None
        return set(labels) | {m.id for m in self.unlabelled_rows(folder, split, references) if m.id}

    def split_pairs(self, predictions_file: Path, folder: Path, split: str, references: Path | None = None
                    ) -> tuple[list[int], list[int]] | None:
        """(predictions, labels) of the ids that have a label; a prediction whose row in the labels file has no
        usable label is skipped (the caller warns), one whose id is not there at all is an error."""
        labels = self.split_labels(folder, split, references)
        if labels is None:
            return None
        preds = self.read_predictions(predictions_file)
        unlabelled = {m.id for m in self.unlabelled_rows(folder, split, references)}
        missing = sorted(set(preds) - set(labels) - unlabelled)
        if missing:
            where = references or self.references_file(folder, split) or folder
            raise DataError(f"{predictions_file}: id(s) {missing[:3]} have no label in {where}")
        scored = [k for k in preds if k in labels]
        if preds and not scored:
            where = references or self.references_file(folder, split)
            raise DataError(f"{where}: none of the {len(preds)} predicted id(s) has a usable label; expected "
                            f"labels in its {self.label_column!r} column")
        return [preds[k] for k in scored], [labels[k] for k in scored]


def read_id_values(path: str | Path, column: str) -> dict[str, int]:
    """id -> integer of a course-format prediction file, with the line of anything unexpected."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or [c.strip() for c in lines[0].split("\t")] != ["id", column]:
        raise DataError(f"{path}:1: expected the header 'id \\t {column}', got {lines[:1]}")
    out = {}
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"{path}:{n}: expected '<id>, <integer>', got {line!r}")
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

