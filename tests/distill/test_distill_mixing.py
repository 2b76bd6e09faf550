"""Mixing synthetic sonnets into `finetune --task sonnet`: real + N synthetic training examples, real dev/test."""
import json
from pathlib import Path

import pytest

from distill.check import check_sonnet
from distill.synthetic import to_course_layout
from app.finetune import parse_settings, run
from app.settings import SettingsError, SyntheticSettings
from app.synthetic import synthetic_texts
from experiments.sweeps import TINY_DATA
from minigpt2.tokenizer import Tokenizer
from tasks import get_task
from tasks.base import sample_indices
from tests.fakegemini import make_sonnet

FIX = TINY_DATA  # the tiny model's data and GPT-2 tokenizer files (package data of experiments)
DATA = FIX / "tasks"  # 6 real training sonnets


@pytest.fixture
def synth(tmp_path) -> Path:
    rows = [{"id": f"{i:06d}", "status": "kept", "text": make_sonnet(i, perfect=i != 2)} for i in range(1, 6)]
    rows.append({"id": "000006", "status": "rejected", "reason": "leak", "text": make_sonnet(6)})
    path = tmp_path / "synth.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_course_layout_indents_the_couplet():
    text = to_course_layout(make_sonnet(1).replace("\n", "\n\n", 4))
    lines = text.split("\n")
    assert len(lines) == 14 and lines[12].startswith("  ") and not lines[11].startswith(" ")
    assert check_sonnet(text).perfect


def test_train_split_is_real_plus_synthetic_and_dev_stays_real(synth):
    task, tok = get_task("sonnet"), Tokenizer(FIX / "gpt2")
    extra = synthetic_texts(SyntheticSettings(str(synth)))
    train, _ = task.load(DATA, "train", tok, 1024, limit=2, extra_texts=extra)  # --max-train: the real ones only
    n_real = len(task.train_texts(DATA)[0])
    real = [str(i) for i in sample_indices([None] * n_real, 2, 0, "train")]  # a seeded sample of the real sonnets
    assert [e.id for e in train] == real + [f"synthetic-{i}" for i in range(5)]
    assert tok.decode(train[2].input_ids[:-1]) == to_course_layout(make_sonnet(1))
    extra = synthetic_texts(SyntheticSettings(str(synth), n=3, filter="perfect"))
    train, _ = task.load(DATA, "train", tok, 1024, extra_texts=extra)
    assert sum(e.meta.get("source") == "synthetic" for e in train) == 3 and len(train) == 9
    no_synth, _ = task.load(DATA, "dev", tok, 1024)
    dev, _ = task.load(DATA, "dev", tok, 1024, extra_texts=extra)
    assert [e.input_ids for e in dev] == [e.input_ids for e in no_synth]


def test_finetune_counts_real_and_synthetic_in_metrics(synth, tmp_path):
    out = tmp_path / "run"
    settings = parse_settings([
        "--task", "sonnet", "--model", "tiny", "--data-dir", str(DATA), "--tokenizer-dir", str(FIX / "gpt2"),
        "--epochs", "1", "--batch-size", "8", "--max-train", "3", "--max-length", "64", "--max-eval", "1",
        "--max-new-tokens", "4", "--out-dir", str(out), "--no-progress", "--device", "cpu",
        "--synthetic", str(synth), "--synthetic-n", "3", "--synthetic-filter", "perfect"])
    metrics = run(settings)
    written = json.loads((out / "metrics.json").read_text())
    assert metrics["data"] == written["data"] == {"train": 6, "dev": 1, "test": 1, "train_real": 3,
                                                   "train_synthetic": 3}
    assert json.loads((out / "config.json").read_text())["settings"]["data"]["synthetic"]["path"] == str(synth)


def test_synthetic_flags_are_checked(synth):
    with pytest.raises(SettingsError, match="task 'sst' is not the sonnet task"):
        parse_settings(["--task", "sst", "--synthetic", str(synth)])
    with pytest.raises(SettingsError, match="--synthetic-n needs --synthetic"):
        parse_settings(["--task", "sonnet", "--synthetic-n", "5"])
    with pytest.raises(ValueError, match="asked for 50 synthetic sonnets"):
        synthetic_texts(SyntheticSettings(str(synth), n=50))
