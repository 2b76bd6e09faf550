"""Task readers held to the course's files: every field of every example (id, token ids, length, label, sonnet
prompt lines and references), for each task and split, against a reading of the same files written here from
the file formats (tab-separated with a header; the sonnet layout of a number line, then the lines).

Runs on the shipped tiny files, and on the real course files where MINIGPT2_DATA_DIR points to them (marked
shared_data; large splits are checked on a seeded subset, every field of every row in it).
"""
from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path

import pytest

from experiments.sweeps import TINY_DATA
from minigpt2.tokenizer import EOT_ID, Tokenizer
from tasks import get_task
from tasks.base import collate

from tests.conftest import BPE_DIR

FOLDERS = [pytest.param(TINY_DATA / "tasks", None, id="tiny")]
if os.environ.get("MINIGPT2_DATA_DIR"):
    FOLDERS.append(pytest.param(Path(os.environ["MINIGPT2_DATA_DIR"]), 60, id="course",
                                marks=pytest.mark.shared_data))

FILES = {"sst": ("ids-sst-train.csv", "ids-sst-dev.csv", "ids-sst-test-student.csv"),
         "cfimdb": ("ids-cfimdb-train.csv", "ids-cfimdb-dev.csv", "ids-cfimdb-test-student.csv"),
         "quora": ("quora-train.csv", "quora-dev.csv", "quora-test-student.csv")}
LABELS = {"sst": ("sentiment", range(5)), "cfimdb": ("sentiment", range(2)), "quora": ("is_duplicate", range(2))}
# The cloze prompt as paraphrase.py's docstring shows it
QUORA_PROMPT = 'Question 1: "{q1}"\nQuestion 2: "{q2}"\nAre these questions asking the same thing?\n'


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(str(BPE_DIR))


def rows(path: Path, label: str | None, allowed: range) -> dict[str, dict[str, str]]:
    """id -> row of a tab-separated course file; rows without a usable label are left out."""
    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if not any((v or "").strip() for v in row.values()) or None in row.values():
                continue
            if label:
                try:
                    value = float(row[label])
                except ValueError:
                    continue
                if not math.isfinite(value) or value not in allowed:
                    continue
            out[row["id"].strip()] = row
    return out


def clean(text: str) -> str:
    return " ".join(re.sub(r"<br\s*/?>", " ", text, flags=re.I).split())


def check_batch(examples) -> None:
    batch = collate(examples)
    assert batch["attention_mask"].sum(1).tolist() == [len(e.input_ids) for e in examples]
    for row, e in zip(batch["input_ids"].tolist(), examples):
        assert row == e.input_ids + [EOT_ID] * (len(row) - len(e.input_ids))
    if all(e.label is not None for e in examples):
        assert batch["labels"].tolist() == [e.label for e in examples]


@pytest.mark.parametrize("task", ["sst", "cfimdb"])
@pytest.mark.parametrize("split", ["train", "dev", "test"])
@pytest.mark.parametrize("folder,limit", FOLDERS)
def test_sentiment_examples(tok, task, split, folder, limit):
    label, allowed = LABELS[task]
    want = rows(folder / FILES[task][("train", "dev", "test").index(split)], None if split == "test" else label,
                allowed)
    max_len = 64
    got, _ = get_task(task).load(folder, split, tok, max_len, limit=limit)
    assert len(got) == (len(want) if limit is None else min(limit, len(want)))
    assert len({e.id for e in got}) == len(got)
    for e in got:
        row = want[e.id]
        assert e.input_ids == (tok.encode(clean(row["sentence"])) or [EOT_ID])[:max_len]
        assert e.label == (None if split == "test" else int(float(row[label])))
    if limit is None:
        assert [e.id for e in got] == list(want)  # all rows, in file order
    check_batch(got)


@pytest.mark.parametrize("split", ["train", "dev", "test"])
@pytest.mark.parametrize("folder,limit", FOLDERS)
def test_quora_examples(tok, split, folder, limit):
    label, allowed = LABELS["quora"]
    want = rows(folder / FILES["quora"][("train", "dev", "test").index(split)], None if split == "test" else label,
                allowed)
    got, malformed = get_task("quora").load(folder, split, tok, 512, limit=limit)
    assert len(got) == (len(want) if limit is None else min(limit, len(want)))
    for e in got:
        row = want[e.id]
        full = tok.encode(QUORA_PROMPT.format(q1=clean(row["sentence1"]), q2=clean(row["sentence2"])))
        assert e.input_ids == full if len(full) <= 512 else len(e.input_ids) <= 512
        assert e.label == (None if split == "test" else int(float(row[label])))
    if limit is None:
        assert [e.id for e in got] == list(want)
    check_batch(got)


def sonnets(path: Path) -> dict[int, list[str]]:
    """number -> its non-blank lines (right-stripped), from the course layout."""
    out: dict[int, list[str]] = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip().isdigit():
            current = int(line.strip())
            out[current] = []
        elif current is not None and line.strip():
            out[current].append(line.rstrip())
    return out


@pytest.mark.parametrize("folder,limit", FOLDERS)
def test_sonnet_examples(tok, folder, limit):
    task = get_task("sonnet")
    train = list(sonnets(folder / "sonnets.txt").values())
    got, _ = task.load(folder, "train", tok, 1024)
    assert [e.id for e in got] == [str(i) for i in range(len(train))]
    for e, lines in zip(got, train):
        assert e.input_ids == tok.encode("\n".join(lines)) + [EOT_ID] and e.label is None
    short, _ = task.load(folder, "train", tok, 20)
    assert all(s.input_ids == e.input_ids[:20] for s, e in zip(short, got))

    truths = sonnets(folder / "TRUE_sonnets_held_out_dev.txt")
    for split, file in (("dev", "sonnets_held_out_dev.txt"), ("test", "sonnets_held_out.txt")):
        prompts = sonnets(folder / file)
        got, _ = task.load(folder, split, tok, 1024)
        assert [e.id for e in got] == [str(n) for n in prompts]
        for e in got:
            lines = prompts[int(e.id)]
            assert e.input_ids == tok.encode("\n".join(lines) + "\n")
            assert list(e.meta["prompt_lines"]) == lines
            if split == "dev":
                true = "\n".join(truths[int(e.id)])
                assert e.meta["reference"] == true and true.startswith("\n".join(lines))
                assert e.meta["reference_ids"] == tok.encode(true) + [EOT_ID]
            else:
                assert "reference" not in e.meta


def test_a_subset_is_seeded_and_in_file_order(tok):
    folder = TINY_DATA / "tasks"
    task = get_task("sst")
    every, _ = task.load(folder, "train", tok, 64)
    a, _ = task.load(folder, "train", tok, 64, limit=5, seed=1)
    b, _ = task.load(folder, "train", tok, 64, limit=5, seed=1)
    order = [e.id for e in every]
    assert [e.id for e in a] == [e.id for e in b] and len(a) == 5
    assert [order.index(e.id) for e in a] == sorted(order.index(e.id) for e in a)
    seeds = {tuple(e.id for e in task.load(folder, "train", tok, 64, limit=5, seed=s)[0]) for s in range(6)}
    assert len(seeds) > 1  # the seed decides which rows
