"""Quora as a cloze (tasks/paraphrase.py), pinned on values worked out here: the prompt text written out, the two
answer ids read from the shipped GPT-2 vocabulary, the two-column logits against the full LM head, the loss and
the predictions of given logits by hand, the cut of a long pair step by step, the accuracy of five predictions.

Written against mutmut's survivors (`python tools/mutate.py --auto tasks/paraphrase.py`, docs/testing.md)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from course.files import COURSE_FILES
from course.formats import label_format
from course.readers import DataError
from experiments.sweeps import TINY_DATA
from minigpt2.config import GPT2Config
from minigpt2.model import GPT2
from tasks import get_task
from tasks.base import Example
from tasks.paraphrase import ANSWER_IDS, PROMPT, ClozeParaphrase, ParaphraseTask, encode_pair
from tests.tasks.conftest import GPT2_BPE

QUESTION = '\nAre these questions asking the same thing?\n'


def prompt(q1: str, q2: str) -> str:
    return 'Question 1: "' + q1 + '"\nQuestion 2: "' + q2 + '"' + QUESTION


def test_the_prompt_is_the_documented_text(tok):
    assert PROMPT.format(q1="Q one?", q2="Q two?") == prompt("Q one?", "Q two?")
    ids = encode_pair(tok, "Is it raining?", "Does it rain?", 128)
    assert ids == tok.encode(prompt("Is it raining?", "Does it rain?"))
    task = get_task("quora")
    assert task.encode([("Is it raining?", "Does it rain?"), ("a", "b")], tok, 128) == [
        ids, tok.encode(prompt("a", "b"))]


def test_the_answer_ids_are_yes_and_no_of_the_shipped_vocabulary(tok):
    # The answer follows the prompt's last newline, so it is the word without GPT-2's leading space ("Ġ"):
    # encoder.json maps "yes" to 8505 and "no" to 3919 (" yes" would be 3763, " no" 645).
    vocab = json.loads((GPT2_BPE / "encoder.json").read_text(encoding="utf-8"))
    assert (vocab["yes"], vocab["no"], vocab["\u0120yes"], vocab["\u0120no"]) == (8505, 3919, 3763, 645)
    assert ANSWER_IDS == (8505, 3919)
    text = prompt("a", "b")
    assert tok.encode(text + "yes")[-1] == 8505 and tok.encode(text + "no")[-1] == 3919
    module = ClozeParaphrase(GPT2(GPT2Config.from_name("tiny")))
    assert module.answer_ids.tolist() == [8505, 3919] and module.answer_ids.dtype == torch.long
    assert "answer_ids" not in module.state_dict()  # not saved with the head: a constant of the task
    assert module.head_state() == {}


def right_padded(rows: list[list[int]]) -> dict[str, torch.Tensor]:
    T = max(map(len, rows))
    return {"input_ids": torch.tensor([r + [0] * (T - len(r)) for r in rows]),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])}


def test_logits_are_the_yes_and_no_columns_at_each_rows_last_real_token(tok, tiny):
    rows = [tok.encode(prompt("Is it raining?", "Does it rain?")), tok.encode(prompt("a", "b"))]
    assert len(rows[0]) != len(rows[1])
    module = ClozeParaphrase(tiny).eval()
    got = module.logits(right_padded(rows))
    # each row alone through the full (T, vocab) head, its last position, the two answer columns
    want = torch.stack([tiny.logits(torch.tensor([r]))[0, -1, [8505, 3919]] for r in rows])
    assert got.shape == (2, 2) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    bf16 = ClozeParaphrase(GPT2(GPT2Config.from_name("tiny", dropout=0.0)).to(torch.bfloat16)).eval()
    assert bf16.logits(right_padded(rows)).dtype == torch.float32  # the loss and argmax read fp32


def test_loss_and_predictions_of_given_logits_by_hand(tiny, monkeypatch):
    module = ClozeParaphrase(tiny)
    monkeypatch.setattr(module, "logits", lambda batch: torch.tensor([[2.0, 1.0], [0.0, 3.0]]))
    # row 0: yes 2 > no 1 -> a paraphrase (1); row 1: no 3 > yes 0 -> not one (0)
    assert module.predict({}).tolist() == [1, 0]
    # labels [1, 0]: classes [yes, no]; loss = mean(log(1 + e^(1-2)), log(1 + e^(0-3))) = (0.313262 + 0.048587) / 2
    loss = module({"labels": torch.tensor([1, 0])})
    assert loss.item() == pytest.approx((math.log1p(math.exp(-1)) + math.log1p(math.exp(-3))) / 2, abs=1e-6)
    assert loss.item() == pytest.approx(0.180925, abs=1e-6)
    # labels [0, 1]: classes [no, yes]: (log(1 + e^1) + log(1 + e^3)) / 2 = (1.313262 + 3.048587) / 2
    assert module({"labels": torch.tensor([0, 1])}).item() == pytest.approx(2.180925, abs=1e-6)


def test_a_long_pair_is_cut_a_few_tokens_at_a_time_to_the_longest_that_fits(tok):
    # " x" and " y" are one token each; with both questions non-empty the prompt is 21 tokens + the questions'.
    assert [len(tok.encode(prompt(" x" * a, " y" * b))) for a, b in ((1, 1), (10, 4), (10, 9))] == [23, 35, 40]
    # 10 + 4 tokens, at most 30: room starts at 10 (the longer question); 35 - 30 = 5 over: room 10 - 5 // 2 = 8
    # (33 tokens), then 3, 2, 1 over: room 7, 6, 5 (one token each) -> 30 tokens, the short question whole
    assert encode_pair(tok, " x" * 10, " y" * 4, 30) == tok.encode(prompt(" x" * 5, " y" * 4))
    # 10 + 9, at most 31: 9 over: room 10 - 4 = 6, both cut (33 tokens); 2 over: room 5 -> 31 tokens
    assert encode_pair(tok, " x" * 10, " y" * 9, 31) == tok.encode(prompt(" x" * 5, " y" * 5))
    # exactly at the limit: nothing is cut
    assert encode_pair(tok, " x" * 10, " y" * 9, 40) == tok.encode(prompt(" x" * 10, " y" * 9))
    assert encode_pair(tok, " x" * 10, " y" * 9, 39) == tok.encode(prompt(" x" * 9, " y" * 9))
    # 3 + 3 at most 22: 5 over, room 3 - 2 = 1 (23 tokens), 1 over, room 0: the empty questions (19 tokens)
    assert encode_pair(tok, " x" * 3, " y" * 3, 22) == tok.encode(prompt("", ""))
    # the prompt with empty questions is 19 tokens ('""' is one token): 19 fits, 18 does not. 3 + 3 tokens (27)
    # at most 19: 8 over, room 3 - 4 -> empty, not -1 (t[:-1] would keep 2 tokens of each: 25 tokens, refused)
    assert encode_pair(tok, " x" * 3, " y" * 3, 19) == tok.encode(prompt("", "")) == encode_pair(tok, "", "", 19)
    for q1, q2 in ((" x" * 3, " y" * 3), (" x" * 3, " y" * 2), ("", "")):
        with pytest.raises(DataError) as e:
            encode_pair(tok, q1, q2, 18)
        assert str(e.value) == "max_length 18 cannot hold the cloze prompt (19 tokens with empty questions)"


def test_the_task_is_quora_scored_by_accuracy_with_the_cloze_as_its_model(tok, tiny):
    task = ParaphraseTask()  # a fresh one: the registry's was made at import
    assert task.format is label_format("quora") and task.files == COURSE_FILES["quora"]
    assert task.files.split("dev") == "quora-dev.csv"
    examples, _ = task.load(TINY_DATA / "tasks", "dev", tok, 128, limit=2)
    assert len(examples) == 2 and {e.label for e in examples} <= {0, 1}
    assert (task.name, task.metric, task.has_head) == ("quora", "accuracy", False)
    assert type(task.build(tiny)) is ClozeParaphrase and task.build(tiny).gpt is tiny
    examples = [Example(str(i), [1], label) for i, label in enumerate([1, 0, 0, 1, 1])]
    # predictions 1 1 0 0 1 against labels 1 0 0 1 1: rows 0, 2 and 4 right -> 3 / 5
    assert task.score(examples, [1, 1, 0, 0, 1]) == {"accuracy": pytest.approx(0.6)}
