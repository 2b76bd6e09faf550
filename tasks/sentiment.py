"""Sentiment classification (SST-5: 5 classes, CFIMDB: 2): the last real token's hidden state -> a linear layer.

Two modes, as in the course: `last-linear-layer` trains only the classifier on a frozen GPT-2;
`full-model` trains everything. Predictions are written as the course's classifier writes them
(`course.formats.SentimentFormat`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from course.formats import label_format
from minigpt2.model import GPT2
from minigpt2.tokenizer import Tokenizer

from .base import ClassificationTask, TaskModel


class SentimentClassifier(TaskModel):
    """GPT-2 body; dropout + Linear(C, num_labels) on the hidden state of each row's last real token."""

    def __init__(self, gpt: GPT2, num_labels: int) -> None:
        super().__init__(gpt)
        self.dropout = nn.Dropout(gpt.config.dropout)
        self.classifier = nn.Linear(gpt.config.n_embd, num_labels)

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        last = self.last_hidden(batch)  # (B, C): never (B, T, vocab)
        return self.classifier(self.dropout(last)).float()  # (B, num_labels)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(self.logits(batch), batch["labels"])

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.logits(batch).argmax(dim=-1)


class SentimentTask(ClassificationTask):
    metric = "accuracy"

    def __init__(self, name: str, num_labels: int) -> None:
        self.name = name
        self.num_labels = num_labels
        self.format = label_format(name)  # the course package owns the file names and formats
        self.files = self.format.files

    def encode(self, texts: list[tuple[str, ...]], tok: Tokenizer, max_len: int) -> list[list[int]]:
        # A review longer than the model's window keeps its beginning.
        return [(ids or [tok.eot_id])[:max_len] for ids in tok.encode_batch([sentence for sentence, in texts])]

    def build(self, gpt: GPT2) -> TaskModel:
        return SentimentClassifier(gpt, self.num_labels)
