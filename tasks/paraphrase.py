"""Quora paraphrase detection as a cloze: GPT-2 reads both questions and answers "yes" or "no".

One prompt for train, dev and test (the course's starter used one for training and another for testing):

    Question 1: "<q1>"
    Question 2: "<q2>"
    Are these questions asking the same thing?
    <answer>

The LM head scores only the two answer tokens at the last real position — `lm_head(last, token_ids=[8505,
3919])`, a (B, 2) tensor instead of (B, T, 50257) — and the loss is the cross-entropy over those two. The
prediction file follows the course's: the header `id \t Predicted_Is_Paraphrase`, then `<id>, <token>` where
<token> is the answer's GPT-2 token id (8505 = "yes" = paraphrase, 3919 = "no"), as the course's argmax over the
vocabulary produced it (`course.formats.ParaphraseFormat`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from course.formats import NO_ID, YES_ID, label_format
from course.readers import DataError
from minigpt2.model import GPT2
from minigpt2.tokenizer import Tokenizer

from .base import ClassificationTask, TaskModel

PROMPT = 'Question 1: "{q1}"\nQuestion 2: "{q2}"\nAre these questions asking the same thing?\n'
ANSWER_IDS = (YES_ID, NO_ID)  # "yes", "no" in GPT-2's vocabulary: class 0 = yes (is a paraphrase), class 1 = no


class ClozeParaphrase(TaskModel):
    """Two-way cloze over the tied LM head: logits of "yes" and "no" after the prompt."""

    def __init__(self, gpt: GPT2) -> None:
        super().__init__(gpt)
        self.register_buffer("answer_ids", torch.tensor(ANSWER_IDS), persistent=False)

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        last = self.last_hidden(batch)  # (B, C)
        return self.gpt.lm_head(last, token_ids=self.answer_ids).float()  # (B, 2)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # label 1 (duplicate) -> class 0 ("yes")
        return F.cross_entropy(self.logits(batch), 1 - batch["labels"])

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """1 for a paraphrase, 0 otherwise (the dataset's `is_duplicate`)."""
        return 1 - self.logits(batch).argmax(dim=-1)


def encode_pair(tok: Tokenizer, q1: str, q2: str, max_len: int) -> list[int]:
    """Token ids of the prompt; when too long, both questions are cut (never the question asked at the end)."""
    ids = tok.encode(PROMPT.format(q1=q1, q2=q2))
    t1, t2 = tok.encode(q1), tok.encode(q2)
    room = max(len(t1), len(t2))
    while len(ids) > max_len and room > 0:
        # Cut the longer question first, a few tokens at a time; re-encoding can merge tokens at the cut. Never
        # below empty: a negative room would slice from the end (t[:-1]) and keep tokens.
        room = max(0, room - max(1, (len(ids) - max_len) // 2))
        ids = tok.encode(PROMPT.format(q1=tok.decode(t1[:room]), q2=tok.decode(t2[:room])))
    if len(ids) > max_len:
        raise DataError(f"max_length {max_len} cannot hold the cloze prompt ({len(ids)} tokens with empty questions)")
    return ids


class ParaphraseTask(ClassificationTask):
    name = "quora"
    metric = "accuracy"

    def __init__(self) -> None:
        self.format = label_format("quora")  # the course package owns the file names and formats
        self.files = self.format.files

    def encode(self, texts: list[tuple[str, ...]], tok: Tokenizer, max_len: int) -> list[list[int]]:
        return [encode_pair(tok, q1, q2, max_len) for q1, q2 in texts]

    has_head = False  # the cloze reads the tied LM head: any body can be scored zero-shot

    def build(self, gpt: GPT2) -> TaskModel:
        return ClozeParaphrase(gpt)
