"""`app/finetune.py`: what a run writes and prints, worked out apart from the run. metrics.json's own part (the
task, the parameter count of the tiny model counted by hand, the rows of each split counted in the files), the dev
loss as the mean of each example's loss, the scores recomputed from the prediction files and the labels, the
majority class counted by hand, every file's sha256 by hashlib, the timings on a scripted clock, config.json, the
last line printed, and the refusals before long work starts, word for word.

Written against mutmut's survivors (`python tools/mutate.py --auto app/finetune.py`, docs/testing.md). Fast: the
tiny model, the tiny data, epochs of a few rows (about a second a run)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import re
import types
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch

from app import finetune, runfolder
from app.runmodel import load_run_model
from app.settings import SettingsError
from course.formats import label_format
from course.readers import DataError, read_table
from experiments.sweeps import TINY_DATA
from minigpt2.config import GPT2Config
from minigpt2.model import GPT2
from minigpt2.tokenizer import Tokenizer
from tasks import get_task
from tasks.base import collate
from tests.minigpt2.test_train import one_thread  # noqa: F401  (autouse fixture: one torch thread)

DATA = TINY_DATA / "tasks"
SST_DEV, SST_TEST = DATA / "ids-sst-dev.csv", DATA / "ids-sst-test-labels.csv"
# The tiny GPT-2 (n_embd 32, 2 blocks, 128 positions) by hand: wte 50257 x 32, wpe 128 x 32; a block: two norms
# (64 each), c_attn 32 x 96 + 96, attn c_proj 32 x 32 + 32, c_fc 32 x 128 + 128, mlp c_proj 128 x 32 + 32; ln_f 64.
BODY = 50257 * 32 + 128 * 32 + 2 * (64 + 3168 + 1056 + 64 + 4224 + 4128) + 64
SST_HEAD = 32 * 5 + 5


def sst_copy(folder: Path) -> Path:
    """The tiny SST files in `folder`, to be spoiled by a test."""
    folder.mkdir()
    for f in DATA.glob("ids-sst-*"):
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def sst_without_test_labels(folder: Path) -> Path:
    """`folder` holding the tiny SST files but the test labels (a course release without them)."""
    sst_copy(folder)
    (folder / SST_TEST.name).unlink()
    return folder


def splits_of(folder: Path, *extra: str):
    """`load_splits` of the SST files in `folder` for a tiny offline run with these flags: (splits, notes, chosen)."""
    argv = ["--task", "sst", "--model", "tiny", "--data-dir", str(folder), "--offline", "--device", "cpu", *extra]
    return finetune.load_splits(get_task("sst"), finetune.parse_settings(argv), Tokenizer(TINY_DATA / "gpt2"), 128)


def args(task: str, out: Path | None, *extra: str) -> list[str]:
    return ["--task", task, "--model", "tiny", "--data-dir", str(DATA), "--tokenizer-dir", str(TINY_DATA / "gpt2"),
            *(["--out-dir", str(out)] if out is not None else []), "--no-progress", "--device", "cpu", "--offline",
            *extra]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Clock:
    """`time.time` for app.finetune only: each call the next scripted reading."""

    def __init__(self, *readings: float) -> None:
        self.readings = list(readings)

    def time(self) -> float:
        return self.readings.pop(0)


def finetune_run(argv: list[str], clock: Clock | None = None) -> tuple[str, str]:
    """finetune.main(argv): its stdout and stderr. With `clock`, app.finetune's time.time reads it."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        if clock is not None:
            mp.setattr(finetune, "time", types.SimpleNamespace(time=clock.time))
        finetune.main(argv)
    assert clock is None or not clock.readings  # every reading taken, none more
    return out.getvalue(), err.getvalue()


def labels(path: Path, column: str) -> dict[str, int]:
    return {r["id"]: int(r[column]) for r in read_table(path, ["id", column]).rows}


def accuracy(preds: dict[str, int], gold: dict[str, int]) -> float:
    assert list(preds) == list(gold)  # every row, in the file's order
    return sum(preds[i] == gold[i] for i in gold) / len(gold)


def majority(gold: dict[str, int]) -> float:
    return Counter(gold.values()).most_common(1)[0][1] / len(gold)


def per_example_dev_loss(run: Path, examples) -> float:
    """The mean over examples of each one's loss alone (a batch of one) with the run's best weights."""
    task = get_task("sst")
    module = task.build(GPT2(GPT2Config.from_name("tiny", dropout=0.0)))
    load_run_model(module, run / "best")
    module.eval()
    with torch.no_grad():
        losses = [module(collate([e], lm_targets=task.lm_targets)).item() for e in task.loss_examples(examples)]
    return sum(losses) / len(losses)


def dev_examples(limit: int | None = None, seed: int = 11711):
    task = get_task("sst")
    return task.load(DATA, "dev", Tokenizer(TINY_DATA / "gpt2"), 128, limit, (), seed=seed)[0]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """`--epochs 0` on sst (the base model scored as epoch 0), a clock of four readings: the base model's scoring
    takes 3.5 s, the predictions 7.25 s. Batches of 3 over 8 dev rows: 3, 3, 2. --max-length above the model's."""
    run = tmp_path_factory.mktemp("base") / "run"
    t0 = datetime.now(timezone.utc).replace(microsecond=0)
    out, err = finetune_run(args("sst", run, "--epochs", "0", "--batch-size", "3", "--max-length", "500"),
                            Clock(100.0, 103.5, 200.0, 207.25))
    return {"run": run, "out": out, "err": err, "t0": t0, "t1": datetime.now(timezone.utc),
            "metrics": json.loads((run / "metrics.json").read_text(encoding="utf-8")),
            "config": json.loads((run / "config.json").read_text(encoding="utf-8"))}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One epoch on 5 of the 9 training rows, 3 rows of dev and of test, at most 40 tokens; predictions 2.5 s."""
    run = tmp_path_factory.mktemp("trained") / "run"
    out, err = finetune_run(args("sst", run, "--epochs", "1", "--lr", "1e-3", "--batch-size", "2", "--max-train",
                                 "5", "--max-eval", "3", "--max-length", "40"), Clock(10.0, 12.5))
    return {"run": run, "out": out, "err": err,
            "metrics": json.loads((run / "metrics.json").read_text(encoding="utf-8")),
            "config": json.loads((run / "config.json").read_text(encoding="utf-8")),
            "subsets": json.loads((run / "subsets.json").read_text(encoding="utf-8"))}


def test_metrics_of_the_base_model_scored_as_epoch_zero(base):
    run, m = base["run"], base["metrics"]
    read = label_format("sst").read_predictions
    dev_acc = accuracy(read(run / "full-model-sst-dev-out.csv"), labels(SST_DEV, "sentiment"))
    test_acc = accuracy(read(run / "full-model-sst-test-out.csv"), labels(SST_TEST, "sentiment"))
    loss = per_example_dev_loss(run, dev_examples())
    assert m["epochs"] == [{"epoch": 0, "accuracy": dev_acc, "dev_loss": pytest.approx(loss, rel=1e-5)}]
    assert m["best"] == m["epochs"][0]
    assert m["trainable_params"] == 0 and m["optimizer_steps_per_epoch"] == 0
    assert (m["wall_s"], m["predict_s"]) == (3.5 + 7.25, 7.25)
    # the run's own part: what was trained on which data (rows counted in the files: 9, 8 and 4)
    assert {k: m[k] for k in ("task", "model", "mode", "method", "total_params", "data", "malformed_rows")} == {
        "task": "sst", "model": "tiny", "mode": "full-model", "method": "full", "total_params": BODY + SST_HEAD,
        "data": {"train": 9, "dev": 8, "test": 4, "train_real": 9, "train_synthetic": 0}, "malformed_rows": []}
    # the scores of the files written, and the majority class of each split's labels (sst: 3 of 8 dev, 2 of 4 test)
    assert m["dev"] == {"accuracy": dev_acc} and m["test"] == {"accuracy": test_acc}
    assert m["majority"] == {"dev": majority(labels(SST_DEV, "sentiment")),
                             "test": majority(labels(SST_TEST, "sentiment"))} == {"dev": 3 / 8, "test": 2 / 4}
    assert (m["dev_predictions"], m["test_predictions"]) == ("full-model-sst-dev-out.csv",
                                                             "full-model-sst-test-out.csv")
    assert m["files_sha256"] == {n: sha(run / n) for n in ("full-model-sst-dev-out.csv",
                                                             "full-model-sst-test-out.csv")}
    assert m["test_references"] == str(SST_TEST)
    assert m["references_sha256"] == {
        "dev": {"task": "sst", "split": "dev", "file": str(SST_DEV.resolve()), "exact": False, "sha256": sha(SST_DEV)},
        "test": {"task": "sst", "split": "test", "file": str(SST_TEST.resolve()), "exact": False,
                 "sha256": sha(SST_TEST)}}
    for key in ("dev_samples", "test_samples", "form", "copying", "heldout_nll", "heldout_nll_base", "quantization",
                "stopped_after_epoch"):
        assert key not in m, key
    # the one line printed: the best epoch, its dev score, the test score, the folder
    assert base["out"] == f"best epoch 0: dev accuracy {dev_acc:.4f}, test accuracy {test_acc:.4f}; run folder {run}\n"


def test_config_json_of_a_run(base):
    c, run = base["config"], base["run"]
    assert (c["run_dir"], c["world_size"], c["device"], c["torch"]) == (str(run), 1, "cpu", torch.__version__)
    assert c["max_length"] == 128  # --max-length 500: cut to the model's 128 positions
    assert c["settings"]["data"]["task"] == "sst" and c["schema"] == 2
    started = datetime.fromisoformat(c["started"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", c["started"])  # UTC, to the second
    assert base["t0"] <= started <= base["t1"]
    chosen = json.loads((run / "subsets.json").read_text(encoding="utf-8"))
    assert chosen["seed"] == 11711
    ids = {s: [r["id"] for r in read_table(p, ["id"]).rows]
           for s, p in (("train", DATA / "ids-sst-train.csv"), ("dev", SST_DEV), ("test", DATA / "ids-sst-test-student.csv"))}
    assert {s: v["ids"] for s, v in chosen["splits"].items()} == ids
    assert c["fingerprint"]["subsets"] == {
        s: {"n": len(v), "sha256": hashlib.sha256("\n".join(v).encode()).hexdigest()}
        for s, v in ids.items()}


def test_metrics_of_a_trained_epoch_on_subsets(trained):
    run, m = trained["run"], trained["metrics"]
    assert m["data"] == {"train": 5, "dev": 3, "test": 3, "train_real": 5, "train_synthetic": 0}  # --max-eval: both
    assert {s: v["n"] for s, v in trained["subsets"]["splits"].items()} == {"train": 5, "dev": 3, "test": 3}
    assert trained["config"]["max_length"] == 40
    dev_ids = trained["subsets"]["splits"]["dev"]["ids"]
    gold = {i: v for i, v in labels(SST_DEV, "sentiment").items() if i in dev_ids}
    read = label_format("sst").read_predictions
    dev_acc = accuracy(read(run / "full-model-sst-dev-out.csv"), {i: gold[i] for i in dev_ids})
    (epoch,) = m["epochs"]
    assert epoch["epoch"] == 1 and epoch["accuracy"] == dev_acc == m["dev"]["accuracy"]
    examples = [e for e in dev_examples() if e.id in dev_ids]
    assert len(examples) == 3
    # batches of 2 over 3 rows: 2 and 1; the run's dev loss weighs each example alike
    assert epoch["dev_loss"] == pytest.approx(per_example_dev_loss(run, examples), rel=1e-5)
    assert m["best"]["epoch"] == 1 and m["trainable_params"] == BODY + SST_HEAD == m["total_params"]
    assert m["predict_s"] == 2.5
    assert m["wall_s"] - m["predict_s"] >= epoch["train_s"] + epoch["eval_s"] > 0  # training's wall time, then 2.5 s
    test = m["test"]["accuracy"]
    assert trained["out"].splitlines(keepends=True)[-1] == f"best epoch 1: dev accuracy {dev_acc:.4f}, test accuracy {test:.4f}; run folder {run}\n"


def test_a_run_stopped_after_an_epoch_writes_metrics_and_no_predictions(tmp_path):
    run = tmp_path / "run"
    out, _ = finetune_run(args("sst", run, "--epochs", "2", "--batch-size", "4", "--stop-after-epoch", "1"))
    assert out.startswith("epoch 1: ") and "best epoch" not in out  # no last line: the run is not finished
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert m["stopped_after_epoch"] == 1 and [e["epoch"] for e in m["epochs"]] == [1]
    assert m["task"] == "sst" and m["data"]["train"] == 9 and m["total_params"] == BODY + SST_HEAD
    for key in ("dev", "test", "files_sha256", "predict_s", "majority"):
        assert key not in m, key
    assert not list(run.glob("*-out.csv"))
    assert (run / "best" / "model.safetensors").is_file() and (run / "last" / "state.safetensors").is_file()


def fast_bodies(monkeypatch) -> list[bool]:
    """Each body made for the fast path (`minigpt2.fast.for_inference`), recorded."""
    from app import speed

    made, real = [], speed.fast.for_inference
    monkeypatch.setattr(speed.fast, "for_inference", lambda *a, **k: made.append(True) or real(*a, **k))
    return made


def test_a_sonnet_run_writes_and_scores_every_sample(tmp_path, monkeypatch):
    run = tmp_path / "run"
    made = fast_bodies(monkeypatch)
    out, _ = finetune_run(args("sonnet", run, "--epochs", "0", "--max-eval", "2", "--max-new-tokens", "4",
                               "--eval-samples", "2"))
    # the sonnets are written on the fast path: once for the epoch's dev score, once for the files of dev and test
    assert len(made) == 2
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    dev = ["generated_sonnets_dev.txt", "generated_sonnets_dev.sample2.txt"]
    test = ["generated_sonnets.txt", "generated_sonnets.sample2.txt"]
    assert m["total_params"] == BODY and m["data"]["dev"] == 2 and m["data"]["test"] == 2
    assert (m["dev_predictions"], m["dev_samples"], m["test_predictions"], m["test_samples"]) == (dev[0], dev, test[0],
                                                                                                  test)
    assert m["files_sha256"] == {n: sha(run / n) for n in dev + test}
    for split in ("dev", "test"):
        scores = m[split]["chrf_samples"]
        assert len(scores) == 2 and m[split]["chrf"] == pytest.approx(sum(scores) / 2)
        assert m["form"][split]["samples"] == 2 and m["copying"][split]["samples"] == 2
    assert m["best"]["chrf"] == m["dev"]["chrf_samples"][0]  # the first sample is the epoch's dev score
    assert "majority" not in m
    true_test = DATA / "TRUE_sonnets_held_out.txt"
    assert m["test_references"] == str(true_test)
    assert m["references_sha256"]["test"]["sha256"] == sha(true_test)
    assert m["references_sha256"]["dev"]["sha256"] == sha(DATA / "TRUE_sonnets_held_out_dev.txt")
    # the base model's held-out likelihood, kept beside the run; at epoch 0 the scored model is that same model
    base = json.loads((run / runfolder.HELDOUT_BASE_FILE).read_text(encoding="utf-8"))
    assert m["heldout_nll_base"] == base == m["heldout_nll"] and set(base) == {"dev", "test"}
    assert out.startswith(f"best epoch 0: dev chrf {m['best']['chrf']:.4f}, test chrf {m['test']['chrf']:.4f}; ")


def test_test_references_of_other_rows_are_refused_before_training(tmp_path):
    refs = tmp_path / "labels.csv"
    lines = SST_TEST.read_text(encoding="utf-8").splitlines()
    refs.write_text("\n".join(lines[:2]) + "\n", encoding="utf-8")  # the first test row's label only
    missing = [r["id"] for r in read_table(DATA / "ids-sst-test-student.csv", ["id"]).rows][1:]
    with pytest.raises(DataError) as e:
        finetune.run(finetune.parse_settings(args("sst", tmp_path / "run", "--test-references", str(refs))))
    assert str(e.value) == (f"{refs}: no reference for test id(s) {missing} of {DATA / 'ids-sst-test-student.csv'} "
                            "(3 in all); expected the labels of these very test rows")
    assert not (tmp_path / "run" / "config.json").exists()


def test_an_empty_dev_split_is_refused_and_an_empty_test_split_is_not(tmp_path):
    data = sst_copy(tmp_path / "data")
    for name in ("ids-sst-test-student.csv", "ids-sst-test-labels.csv"):
        text = (data / name).read_text(encoding="utf-8")
        (data / name).write_text(text.splitlines()[0] + "\n", encoding="utf-8")
    splits, notes, chosen = splits_of(data)
    assert [len(splits[s]) for s in ("train", "dev", "test")] == [9, 8, 0] and notes == []
    assert chosen["test"]["n"] == 0
    dev = data / "ids-sst-dev.csv"
    dev.write_text(dev.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        splits_of(data)
    assert str(e.value) == (f"{dev}: no usable dev examples (0 malformed row(s) skipped); the run needs at least "
                            "one")


def test_lora_rank_up_to_the_layer_width_and_not_above():
    tiny = lambda *extra: finetune.parse_settings(args("sst", None, "--method", "lora", *extra))  # noqa: E731
    module = finetune.build_model(tiny("--lora-rank", "32"), get_task("sst"))
    assert any(p.requires_grad for p in module.parameters())
    with pytest.raises(SettingsError) as e:
        finetune.build_model(tiny("--lora-rank", "33"), get_task("sst"))
    assert str(e.value) == ("--lora-rank 33: larger than the model's layer width (n_embd 32); expected at most 32, a "
                            "low rank")


def test_last_linear_layer_freezes_the_body_only():
    module = finetune.build_model(finetune.parse_settings(args("sst", None, "--mode", "last-linear-layer")),
                                  get_task("sst"))
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.weight", "classifier.bias"}
    module = finetune.build_model(finetune.parse_settings(args("sst", None)), get_task("sst"))
    assert all(p.requires_grad for p in module.parameters())


@pytest.fixture
def far_east(monkeypatch):
    """The local time zone 9 hours ahead of UTC (Tokyo), for the test's duration."""
    import time

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_the_default_run_folder_is_named_by_task_and_name_or_time(far_east):
    named = finetune.parse_settings(args("quora", None, "--name", "first"))
    assert finetune.default_run_dir(named) == Path("checkpoints") / "runs" / "quora-first"
    before = datetime.now(timezone.utc).replace(microsecond=0)
    path = finetune.default_run_dir(finetune.parse_settings(args("sst", None)))
    after = datetime.now(timezone.utc)
    assert path.parent == Path("checkpoints") / "runs"
    stamp = re.fullmatch(r"sst-(\d{8}-\d{6})", path.name).group(1)  # UTC, whatever the local time zone
    assert before <= datetime.strptime(stamp, "%Y%m%d-%H%M%S").replace(tzinfo=timezone.utc) <= after


def test_dev_loss_of_no_examples_is_zero():
    task = get_task("sst")
    module = task.build(GPT2(GPT2Config.from_name("tiny", dropout=0.0)))
    assert finetune.dev_loss(module, [], task, 2, torch.device("cpu"), None) == 0.0


def test_scored_references_name_test_only_when_it_was_scored(tmp_path):
    task = get_task("sst")
    dev = {"task": "sst", "split": "dev", "file": str(SST_DEV.resolve()), "exact": False, "sha256": sha(SST_DEV)}
    assert finetune.scored_references(task, DATA, None, False) == {"dev": dev}
    refs = tmp_path / "labels.csv"
    refs.write_bytes(SST_TEST.read_bytes())
    assert finetune.scored_references(task, DATA, refs, True) == {"dev": dev, "test": {
        "task": "sst", "split": "test", "file": str(refs.resolve()), "exact": True, "sha256": sha(SST_TEST)}}


@pytest.mark.parametrize("finished", [True, False])
def test_ctrl_c_says_how_to_go_on_and_exits_130(base, tmp_path, monkeypatch, capsys, finished):
    run = base["run"] if finished else tmp_path / "none"

    def interrupted(settings):
        raise finetune.Interrupted(run)
    monkeypatch.setattr(finetune, "run", interrupted)
    with pytest.raises(SystemExit) as e:
        finetune.main(args("sst", run))
    assert e.value.code == 130
    assert capsys.readouterr().err == (f"interrupted; continue with --resume --out-dir {run}\n" if finished else
                                       f"interrupted before the run started; nothing was saved in {run}\n")


def test_a_run_without_test_labels_scores_dev_only_and_says_so(tmp_path):
    data = sst_without_test_labels(tmp_path / "data")
    run = tmp_path / "run"
    out, _ = finetune_run(["--task", "sst", "--model", "tiny", "--data-dir", str(data), "--tokenizer-dir",
                           str(TINY_DATA / "gpt2"), "--out-dir", str(run), "--no-progress", "--device", "cpu",
                           "--offline", "--epochs", "0"])
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    dev_acc = accuracy(label_format("sst").read_predictions(run / "full-model-sst-dev-out.csv"),
                       labels(data / "ids-sst-dev.csv", "sentiment"))
    assert m["dev"] == {"accuracy": dev_acc} and m["majority"] == {"dev": 3 / 8}
    for key in ("test", "test_references"):
        assert key not in m, key
    assert set(m["references_sha256"]) == {"dev"}
    assert m["test_predictions"] == "full-model-sst-test-out.csv"  # written all the same, and hashed
    assert set(m["files_sha256"]) == {"full-model-sst-dev-out.csv", "full-model-sst-test-out.csv"}
    assert out == f"best epoch 0: dev accuracy {dev_acc:.4f}; run folder {run}\n"


SYNTHETIC = TINY_DATA / "synthetic" / "gemini-2.5-flash.jsonl"  # 5 generated sonnets


@pytest.mark.parametrize("only", [False, True])
def test_synthetic_sonnets_are_counted_apart_and_left_out_of_the_subsets(only):
    task, tok = get_task("sonnet"), Tokenizer(TINY_DATA / "gpt2")
    settings = finetune.parse_settings(args("sonnet", None, "--synthetic", str(SYNTHETIC), "--synthetic-n", "3",
                                            *(["--synthetic-only"] if only else [])))
    splits, notes, chosen = finetune.load_splits(task, settings, tok, 128)
    real = 0 if only else 6  # sonnets.txt: 6 training sonnets
    assert [e.meta.get("source") == "synthetic" for e in splits["train"]].count(True) == 3
    assert len(splits["train"]) == real + 3 and (len(splits["dev"]), len(splits["test"])) == (3, 2)
    assert chosen["train"]["n"] == real and (chosen["dev"]["n"], chosen["test"]["n"]) == (3, 2)
    module = task.build(GPT2(GPT2Config.from_name("tiny", dropout=0.0)))
    info = finetune.run_info(task, settings, module, splits, notes)
    assert info["data"] == {"train": real + 3, "dev": 3, "test": 2, "train_real": real, "train_synthetic": 3}
    assert (info["task"], info["total_params"]) == ("sonnet", BODY)


def test_config_json_of_a_resumed_run_keeps_its_start(tmp_path):
    from minigpt2.distributed import Dist

    settings = finetune.parse_settings(args("sst", tmp_path))
    fingerprint = {"subsets": {"train": {"n": 1, "sha256": "0"}}}
    finetune.write_run_config(tmp_path, settings, Dist(), fingerprint, 64, {"started": "2001-02-03T04:05:06+00:00"})
    c = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    assert (c["started"], c["max_length"], c["fingerprint"], c["world_size"]) == (
        "2001-02-03T04:05:06+00:00", 64, fingerprint, 1)
    for recorded in (None, {}, {"started": None}):
        before = datetime.now(timezone.utc).replace(microsecond=0)
        finetune.write_run_config(tmp_path, settings, Dist(world=2), fingerprint, 64, recorded)
        c = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
        assert before <= datetime.fromisoformat(c["started"]) <= datetime.now(timezone.utc) and c["world_size"] == 2


def test_dev_loss_of_one_example_is_its_loss(base):
    (example,) = dev_examples()[:1]
    task = get_task("sst")
    module = task.build(GPT2(GPT2Config.from_name("tiny", dropout=0.0)))
    load_run_model(module, base["run"] / "best")
    loss = finetune.dev_loss(module, [example], task, 4, torch.device("cpu"), None)
    assert loss == pytest.approx(per_example_dev_loss(base["run"], [example]), rel=1e-6)


def test_test_references_given_are_the_file_scored_against(tmp_path):
    refs = tmp_path / "my-labels.csv"
    lines = SST_TEST.read_text(encoding="utf-8").splitlines()
    flipped = [lines[0]] + [f"{ln.split(chr(9))[0]}\t{(int(ln.split(chr(9))[1]) + 1) % 5}" for ln in lines[1:]]
    refs.write_text("\n".join(flipped) + "\n", encoding="utf-8")  # other labels: another score
    run = tmp_path / "run"
    out, _ = finetune_run(args("sst", run, "--epochs", "0", "--test-references", str(refs)))
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    gold = {ln.split("\t")[0]: int(ln.split("\t")[1]) for ln in flipped[1:]}
    test_acc = accuracy(label_format("sst").read_predictions(run / "full-model-sst-test-out.csv"), gold)
    assert m["test"] == {"accuracy": test_acc} and m["majority"]["test"] == majority(gold)
    assert m["test_references"] == str(refs)
    assert m["references_sha256"]["test"] == {"task": "sst", "split": "test", "file": str(refs.resolve()),
                                              "exact": True, "sha256": sha(refs)}
    assert out.endswith(f", test accuracy {test_acc:.4f}; run folder {run}\n")


def test_bf16_autocast_scores_the_base_model_under_bf16(tmp_path):
    run = tmp_path / "run"
    finetune_run(args("sst", run, "--epochs", "0", "--autocast", "bf16", "--batch-size", "8"))
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert m["autocast_used"] == "bf16"
    task = get_task("sst")
    module = task.build(GPT2(GPT2Config.from_name("tiny", dropout=0.0)))
    load_run_model(module, run / "best")
    module.eval()
    batch = collate(dev_examples())  # the 8 dev rows: one batch of 8
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = module(batch).item()
        fp32 = module(batch).item()
    assert abs(bf16 - fp32) > 1e-4 * fp32  # 2e-4 apart, 200 times the tolerance below: the test tells them apart
    assert m["epochs"][0]["dev_loss"] == pytest.approx(bf16, rel=1e-6)


def test_plain_sonnet_runs_write_with_the_model_itself(tmp_path, monkeypatch):
    made = fast_bodies(monkeypatch)
    finetune_run(args("sonnet", tmp_path / "run", "--epochs", "0", "--max-eval", "1", "--max-new-tokens", "2",
                      "--plain"))
    assert made == []  # --plain: no fast-path copy of the body, ever
    assert (tmp_path / "run" / "generated_sonnets.txt").is_file()


def test_sonnet_test_references_given_are_the_held_out_sonnets_copying_looks_in(tmp_path):
    true_test = (DATA / "TRUE_sonnets_held_out.txt").read_text(encoding="utf-8")
    dev_132 = (DATA / "TRUE_sonnets_held_out_dev.txt").read_text(encoding="utf-8").split("\n132\n")[1].split("\n133\n")[0]
    refs = tmp_path / "true-test.txt"
    # sonnet 146 without its last line, and a sonnet 147 (132's text)
    shortened = true_test.rstrip("\n").rsplit("\n", 1)[0]
    refs.write_text(shortened + "\n\n147\n" + dev_132.rstrip("\n") + "\n", encoding="utf-8")
    run = tmp_path / "run"
    finetune_run(args("sonnet", run, "--epochs", "0", "--max-eval", "2", "--max-new-tokens", "2",
                      "--test-references", str(refs)))
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    # the held-out likelihood of the test rows (145, 146) is that of the file given: a line fewer than the data
    # folder's 238 tokens, before training and after
    for nll in (m["heldout_nll"]["test"], m["heldout_nll_base"]["test"]):
        assert sorted(nll["per_sonnet"]) == ["145", "146"] and nll["tokens"] < 238
    # held out: the 3 true dev sonnets (132-134) and the 3 of the file given (145, 146 and 147), not the 2 of the
    # data folder's test file
    assert m["copying"]["test"]["held_out_sonnets"] == m["copying"]["dev"]["held_out_sonnets"] == 6
    assert m["test_references"] == str(refs) and m["references_sha256"]["test"]["exact"] is True


# ---------------------------------------------------------------- build_model, epoch_callbacks, run_fingerprint
# Written against mutmut's survivors of these three (docs/testing.md, "app/finetune.py: the model, the epoch's
# files, the fingerprint").

def build(*extra: str, task: str = "sst") -> torch.nn.Module:
    """The model `build_model` makes for a tiny run of `task` with these flags."""
    return finetune.build_model(finetune.parse_settings(args(task, None, *extra)), get_task(task))


def test_qaft_fake_quantizes_the_body_and_a_dtype_precision_casts_the_whole_model():
    kinds = lambda module: {type(m).__name__ for m in module.modules()}  # noqa: E731
    qaft = build("--precision", "int8", "--qaft")
    assert {"FakeQuantLinear", "FakeQuantEmbedding"} <= kinds(qaft.gpt)
    assert type(qaft.classifier) is torch.nn.Linear  # the head is not quantized
    ptq = build("--precision", "int8")  # without --qaft the run trains in fp32 and quantizes afterwards
    assert not {"FakeQuantLinear", "FakeQuantEmbedding"} & kinds(ptq)
    for precision, dtype in (("bf16", torch.bfloat16), ("fp64", torch.float64)):
        assert {p.dtype for p in build("--precision", precision, "--qaft").parameters()} == {dtype}  # head too


def test_an_int4_group_size_that_cannot_fit_the_model_is_refused_before_training_with_or_without_qaft():
    from app.precision import PrecisionError

    for extra in ((), ("--qaft",)):
        with pytest.raises(PrecisionError) as e:
            build("--precision", "int4", "--group-size", "24", *extra)
        assert str(e.value) == ("--group-size 24: 32-wide inputs (attention, mlp.c_fc, embeddings): INT4 "
                                "group_size=24 does not divide in_features=32; pick a divisor of 32")


def test_lora_trains_the_adapters_and_the_head_and_says_so_on_stderr(capsys):
    module = build("--method", "lora")
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= trainable
    assert all(n.startswith("classifier.") or n.endswith(("lora_A", "lora_B")) for n in trainable)
    # 12 adapted layers (4 attention, 2 MLP a block) at rank 8: 2 x (4 x 8 x 64 + 2 x 8 x 160) = 9,216; the head
    # 165; all parameters BODY + 165 + 9,216 = 1,647,173; 9,381 / 1,647,173 = 0.57%
    assert capsys.readouterr().err == ("LoRA on 12 modules: 9,381 trainable of 1,647,173 parameters (0.57%; "
                                       "adapters 9,216)\n")
    assert BODY + SST_HEAD + 9216 == 1647173


def test_a_model_left_with_nothing_to_train_is_refused_in_one_line(monkeypatch):
    from minigpt2.errors import UserError

    task = get_task("sst")
    real = task.build
    monkeypatch.setattr(task, "build", lambda gpt: real(gpt).requires_grad_(False))
    with pytest.raises(UserError) as e:
        finetune.build_model(finetune.parse_settings(args("sst", None)), task)
    assert str(e.value) == "the model has no trainable parameter with these settings"


def test_metrics_json_after_an_epoch_is_the_run_s_info_with_the_training_figures_over_it(tmp_path):
    settings = finetune.parse_settings(args("sst", tmp_path))
    info = {"task": "sst", "best": "from info", "total_params": 7}
    callbacks = finetune.epoch_callbacks(settings, tmp_path, info)
    end = types.SimpleNamespace(epoch=0, row={}, metrics={"best": {"epoch": 0}, "wall_s": 1.5}, improved=False,
                                module=None, optimizer=None, scheduler=None)
    (tmp_path / runfolder.CONFIG_FILE).write_text("{}")  # the run's folder, still there
    callbacks[0](end)
    callbacks[-1](end)
    assert json.loads((tmp_path / runfolder.METRICS_FILE).read_text()) == {
        "task": "sst", "best": {"epoch": 0}, "total_params": 7, "wall_s": 1.5}
    (tmp_path / runfolder.CONFIG_FILE).unlink()
    with pytest.raises(runfolder.RunFolderError):
        callbacks[0](end)


def test_the_fingerprint_holds_the_base_weights_file_and_each_subset_s_count_and_hash(tmp_path):
    from minigpt2.checkpoint import save_model

    torch.manual_seed(0)
    folder = save_model(GPT2(GPT2Config.from_name("tiny")), tmp_path / "base")
    weights = folder / "model.safetensors"
    settings = finetune.parse_settings([*args("sst", None), "--model", str(folder)])
    chosen = {"train": {"n": 3, "sha256": "a" * 64, "ids": ["x", "y", "z"]}, "dev": {"n": 0, "sha256": "b" * 64}}
    got = finetune.run_fingerprint(settings, get_task("sst"), chosen)
    assert got["base_weights"] == {"file": str(weights), "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert got["subsets"] == {"train": {"n": 3, "sha256": "a" * 64}, "dev": {"n": 0, "sha256": "b" * 64}}
    assert set(got) == {"settings", "base_weights", "data", "code", "subsets"}
    assert finetune.run_fingerprint(finetune.parse_settings(args("sst", None)), get_task("sst"), {})[
        "base_weights"] is None  # the tiny model: random weights, no file


def test_the_fingerprint_looks_for_a_preset_s_weights_offline_when_the_run_is_offline(tmp_path, monkeypatch):
    """An --offline run must not reach for the network to hash its base weights: the preset is looked up offline
    (a stand-in for the lookup records how it was asked and hands back a local folder)."""
    from app import runmodel
    from minigpt2.checkpoint import save_model

    folder = save_model(GPT2(GPT2Config.from_name("tiny")), tmp_path / "gpt2")
    asked = []
    monkeypatch.setattr(runmodel, "resolve_model", lambda name, offline: asked.append((name, offline)) or folder)
    for offline in (True, False):
        argv = [*args("sst", None), "--model", "gpt2"]
        settings = finetune.parse_settings(argv if offline else [a for a in argv if a != "--offline"])
        got = finetune.run_fingerprint(settings, get_task("sst"), {})
        assert got["base_weights"]["file"] == str(folder / "model.safetensors")
    assert asked == [("gpt2", True), ("gpt2", False)]


# ---------------------------------------------------------------- load_splits
# Written against mutmut's survivors of `load_splits` (docs/testing.md, "app/finetune.py: the model, the epoch's
# files, the fingerprint, the splits").

def test_the_splits_are_fetched_offline_as_the_run_is_and_a_missing_file_names_its_task(tmp_path, monkeypatch):
    from course.readers import MissingDataError

    asked = []
    monkeypatch.setattr(finetune, "ensure_task_data", lambda name, folder, offline: asked.append((name, offline)))
    folder = sst_copy(tmp_path / "data")
    settings = lambda *extra: finetune.parse_settings(args("sst", None, *extra))  # noqa: E731
    tok = Tokenizer(TINY_DATA / "gpt2")
    finetune.load_splits(get_task("sst"), settings(), tok, 128)
    finetune.load_splits(get_task("sst"), finetune.parse_settings([a for a in args("sst", None) if a != "--offline"]),
                         tok, 128)
    assert asked == [("sst", True), ("sst", False)]
    (folder / "ids-sst-dev.csv").unlink()
    with pytest.raises(MissingDataError) as e:
        splits_of(folder)
    assert str(e.value).startswith(f"missing data file(s) for task 'sst': {folder / 'ids-sst-dev.csv'}. Get them "
                                   "with `python -m course fetch --task sst`")


def test_a_subset_is_drawn_with_the_run_s_seed():
    def chosen_ids(*extra: str) -> list[str]:
        splits, _, _ = splits_of(DATA, "--max-train", "4", *extra)
        return [e.id for e in splits["train"]]

    task, tok = get_task("sst"), Tokenizer(TINY_DATA / "gpt2")
    for seed in (0, 3, 11):
        want, _ = task.load(DATA, "train", tok, 128, 4, seed=seed)
        assert chosen_ids("--seed", str(seed)) == [e.id for e in want]
    assert chosen_ids("--seed", "3") != chosen_ids("--seed", "11")  # the seed chooses: not the same rows


def _spoil(path: Path, line: int, column: str, value: str) -> str:
    """Set `column` of the data row on file line `line` (1-based, the header is line 1) to `value`; its id."""
    rows = path.read_text(encoding="utf-8").splitlines()
    header = rows[0].split("\t")
    cells = rows[line - 1].split("\t")
    cells[header.index(column)] = value
    rows[line - 1] = "\t".join(cells)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return cells[header.index("id")]


def test_every_malformed_row_of_every_split_and_every_unlabelled_test_row_is_kept_in_order(tmp_path):
    folder = sst_copy(tmp_path / "data")
    _spoil(folder / "ids-sst-train.csv", 3, "sentiment", "9")
    _spoil(folder / "ids-sst-dev.csv", 4, "sentiment", "x")
    unlabelled = _spoil(folder / "ids-sst-test-labels.csv", 2, "sentiment", "")
    splits, notes, _ = splits_of(folder)
    assert [(Path(m.file).name, m.line) for m in notes] == [
        ("ids-sst-train.csv", 3), ("ids-sst-dev.csv", 4), ("ids-sst-test-labels.csv", 2)]
    assert notes[2].id == unlabelled and [len(splits[s]) for s in ("train", "dev", "test")] == [8, 7, 4]
    # the same row unlabelled in a references file given instead: the warning names that file, not the default one
    refs = tmp_path / "refs.csv"
    refs.write_bytes(DATA.joinpath("ids-sst-test-labels.csv").read_bytes())
    _spoil(refs, 3, "sentiment", "")
    splits, notes, _ = splits_of(folder, "--test-references", str(refs))
    assert [(Path(m.file).name, m.line) for m in notes] == [
        ("ids-sst-train.csv", 3), ("ids-sst-dev.csv", 4), ("refs.csv", 3)]


def test_test_labels_beside_the_data_that_miss_test_rows_are_refused_naming_that_file(tmp_path):
    folder = sst_copy(tmp_path / "data")
    labels = folder / "ids-sst-test-labels.csv"
    lines = labels.read_text(encoding="utf-8").splitlines()
    labels.write_text(lines[0] + "\n", encoding="utf-8")  # a labels file of no rows: all four test rows missing
    ids = [r["id"] for r in read_table(DATA / "ids-sst-test-student.csv", ["id"]).rows]
    with pytest.raises(DataError) as e:
        splits_of(folder)
    assert str(e.value) == (f"{labels}: no reference for test id(s) {ids[:3]} of {folder / 'ids-sst-test-student.csv'} "
                            "(4 in all); expected the labels of these very test rows")


# ---------------------------------------------------------------- parse_settings
def test_the_settings_of_a_settings_file_of_a_resumed_run_and_of_the_process_s_own_argv(tmp_path, monkeypatch):
    """`--settings FILE` gives the settings saved there; `--resume --out-dir RUN` the run's saved settings with the
    flags a resume may change; no argv given: the process's own (sys.argv after the program name)."""
    import dataclasses
    import sys

    run = tmp_path / "run"
    finetune_run(args("sst", run, "--epochs", "1", "--batch-size", "4", "--max-train", "5", "--max-eval", "3",
                      "--max-length", "40"))
    saved = runfolder.saved_settings(run)
    assert finetune.parse_settings(["--settings", str(run / "config.json")]) == saved
    resumed = finetune.parse_settings(["--resume", "--out-dir", str(run), "--eval-batch-size", "2"])
    assert resumed.eval == dataclasses.replace(saved.eval, batch_size=2) and saved.eval.batch_size != 2
    assert (resumed.run.out_dir, resumed.run.resume) == (str(run), True)
    assert all(getattr(resumed, f.name) == getattr(saved, f.name) for f in dataclasses.fields(saved)
               if f.name not in ("eval", "run"))
    monkeypatch.setattr(sys, "argv", ["finetune", "--resume", "--out-dir", str(run), "--eval-batch-size", "2"])
    assert finetune.parse_settings() == resumed


def test_fetching_a_run_s_inputs_asks_offline_as_the_run_is(monkeypatch):
    asked = []
    monkeypatch.setattr(finetune, "Tokenizer", lambda folder: asked.append(("tokenizer", folder)))
    monkeypatch.setattr(finetune, "base_weights_file", lambda model, offline: asked.append(("weights", model, offline)))
    monkeypatch.setattr(finetune, "ensure_task_data",
                        lambda name, folder, offline: asked.append(("data", name, folder, offline)))
    for argv in (args("sst", None), [a for a in args("sst", None) if a != "--offline"]):
        finetune.fetch_inputs(finetune.parse_settings(argv), get_task("sst"))
    tok = str(TINY_DATA / "gpt2")
    assert asked == [("tokenizer", tok), ("weights", "tiny", True), ("data", "sst", DATA, True),
                     ("tokenizer", tok), ("weights", "tiny", False), ("data", "sst", DATA, False)]


# `_run`, the run's assembly: the tests below came from mutmut's survivors of `_run` (docs/testing.md).

def test_a_run_fetches_its_inputs_once_per_machine_with_its_timeout(tmp_path, monkeypatch):
    waits, fetched = [], []
    real = finetune.fetch_inputs
    monkeypatch.setattr(finetune, "fetch_inputs", lambda settings, task: fetched.append(
        (task.name, settings.model.model, settings.paths.offline)) or real(settings, task))

    def fetch_once(fetch, d, timeout, what="inputs"):  # minigpt2.distributed.fetch_once of one process
        waits.append((d.world, timeout, what))
        fetch()
    monkeypatch.setattr(finetune, "fetch_once", fetch_once)
    finetune_run(args("sst", tmp_path / "run", "--epochs", "0", "--fetch-timeout", "123"))
    assert waits == [(1, 123.0, "sst data, tokenizer and tiny weights")]
    assert fetched == [("sst", "tiny", True)]


def test_a_resumed_run_trains_only_what_is_left_ends_as_the_run_never_stopped_and_keeps_its_start(tmp_path):
    """Two epochs, stopped after the first and resumed, against two epochs in one go: the resumed run trains the
    second epoch only (a run started over would end the same, every draw being seeded), the same epochs' scores and
    losses, the same best weights, and config.json keeps the run's first start (set back here to tell it apart)."""
    data = sst_copy(tmp_path / "data")
    flags = ["--data-dir", str(data), "--epochs", "2", "--lr", "1e-3", "--batch-size", "4", "--max-length", "40"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    finetune_run(args("sst", whole, *flags))
    first, _ = finetune_run(args("sst", parts, *flags, "--stop-after-epoch", "1"))
    config = json.loads((parts / "config.json").read_text(encoding="utf-8"))
    (parts / "config.json").write_text(json.dumps({**config, "started": "2001-02-03T04:05:06+00:00"}),
                                       encoding="utf-8")
    out, _ = finetune_run(args("sst", parts, *flags, "--resume"))
    assert [line.split(":")[0] for line in first.splitlines() + out.splitlines() if line.startswith("epoch ")] == [
        "epoch 1", "epoch 2"]
    got, want = (json.loads((r / "metrics.json").read_text(encoding="utf-8")) for r in (parts, whole))
    scores = lambda m: [(e["epoch"], e["accuracy"], e["dev_loss"]) for e in m["epochs"]]  # noqa: E731
    assert scores(got) == scores(want) and [e for e, *_ in scores(got)] == [1, 2]
    assert (got["dev"], got["test"]) == (want["dev"], want["test"])
    assert sha(parts / "best" / "model.safetensors") == sha(whole / "best" / "model.safetensors")
    assert json.loads((parts / "config.json").read_text(encoding="utf-8"))["started"] == "2001-02-03T04:05:06+00:00"
    assert out.splitlines()[-1].startswith(f"best epoch {want['best']['epoch']}: ")


def test_a_resumed_run_whose_data_changed_is_refused_naming_the_file(tmp_path):
    data = sst_copy(tmp_path / "data")
    flags = ["--data-dir", str(data), "--epochs", "2", "--batch-size", "4", "--max-length", "40"]
    run = tmp_path / "run"
    finetune_run(args("sst", run, *flags, "--stop-after-epoch", "1"))
    train = data / "ids-sst-train.csv"
    train.write_text(train.read_text(encoding="utf-8").replace("The Rock", "The Stone"), encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        finetune_run(args("sst", run, *flags, "--resume"))
    assert str(e.value.code).startswith(f"error: --resume {run}: the run's inputs changed: data ids-sst-train.csv")
    assert [x["epoch"] for x in json.loads((run / "metrics.json").read_text(encoding="utf-8"))["epochs"]] == [1]


def test_a_run_folder_without_a_fingerprint_is_not_resumed(tmp_path):
    """A config.json without the inputs' fingerprint (edited, or written by hand) cannot show that the inputs are
    unchanged: one error line saying so, not a traceback nor a list of every file as "changed"."""
    flags = ["--epochs", "2", "--batch-size", "4", "--max-length", "40"]
    run = tmp_path / "run"
    finetune_run(args("sst", run, *flags, "--stop-after-epoch", "1"))
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    del config["fingerprint"]
    (run / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        finetune_run(args("sst", run, *flags, "--resume"))
    assert str(e.value.code) == (
        f"error: --resume {run}: its config.json records no fingerprint of the run's inputs (base weights, data "
        "files), so they cannot be checked against today's; start the run afresh with --overwrite or in another "
        "--out-dir")
    assert [x["epoch"] for x in json.loads((run / "metrics.json").read_text(encoding="utf-8"))["epochs"]] == [1]


def test_malformed_rows_are_warned_on_stderr_one_line_each(tmp_path):
    data = sst_copy(tmp_path / "data")
    dev = data / "ids-sst-dev.csv"
    dev.write_text(dev.read_text(encoding="utf-8") + "no-tabs-here\nx\ty\t9\t\n", encoding="utf-8")
    notes = splits_of(data)[1]
    assert len(notes) == 2
    _, err = finetune_run(args("sst", tmp_path / "run", "--data-dir", str(data), "--epochs", "0"))
    assert [line for line in err.splitlines() if line.startswith("warning:")] == [
        f"warning: skipped/irregular row: {n}" for n in notes]


def test_a_classification_run_folder_holds_only_its_files(base):
    """No held-out likelihood of the base model (a generative task's) nor anything else beside the run's files."""
    assert sorted(p.name for p in base["run"].iterdir()) == [
        "best", "config.json", "full-model-sst-dev-out.csv", "full-model-sst-test-out.csv", "metrics.json",
        "subsets.json"]


@pytest.mark.parametrize("flags, plain, compile", [((), False, False), (("--plain",), True, False),
                                                    (("--compile",), False, True)])
def test_the_training_steps_run_in_what_the_speed_switch_returns(tmp_path, monkeypatch, flags, plain, compile):
    """`app.speed.for_training` gets the run's --plain and --compile, and each epoch's steps run inside the context
    it returns (here one that counts; the compiled blocks themselves are tested in test_compile.py)."""
    from app import speed

    seen, entered = [], []

    @contextlib.contextmanager
    def counted():
        entered.append(1)
        yield

    monkeypatch.setattr(speed, "for_training", lambda module, device, plain, compile=False: seen.append(
        (type(module).__name__, str(device), plain, compile)) or counted)
    finetune_run(args("sst", tmp_path / "run", "--epochs", "2", "--batch-size", "4", "--max-train", "8",
                      "--max-eval", "2", *flags))
    assert seen == [("SentimentClassifier", "cpu", plain, compile)]
    assert len(entered) == 2  # once an epoch, around its steps (left for the evaluation)


def test_bf16_autocast_trains_under_bf16(tmp_path, monkeypatch, emulated_bf16):
    from tasks.sentiment import SentimentClassifier

    dtypes = []
    real = SentimentClassifier.forward

    def forward(self, batch):
        if torch.is_grad_enabled():  # a training step (evaluation runs under no_grad)
            dtypes.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return real(self, batch)
    monkeypatch.setattr(SentimentClassifier, "forward", forward)
    finetune_run(args("sst", tmp_path / "run", "--epochs", "1", "--batch-size", "4", "--max-train", "8",
                      "--max-eval", "2", "--autocast", "bf16"))
    assert dtypes == [torch.bfloat16, torch.bfloat16]


def test_a_sonnet_run_trains_on_next_token_targets_and_scores_its_samples(tmp_path):
    run = tmp_path / "run"
    out, _ = finetune_run(args("sonnet", run, "--epochs", "1", "--batch-size", "2", "--max-train", "2",
                               "--max-eval", "1", "--max-new-tokens", "4", "--max-length", "64"))
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    (epoch,) = m["epochs"]
    assert epoch["epoch"] == 1 and math.isfinite(epoch["dev_loss"]) and 0 <= epoch["chrf"] <= 100
    assert m["optimizer_steps_per_epoch"] == 1 and m["best"]["epoch"] == 1
    assert out.startswith("epoch 1: ") and f"best epoch 1: dev chrf {m['best']['chrf']:.4f}" in out


def test_every_rank_writes_to_the_folder_rank_0_chose(tmp_path, monkeypatch):
    """Under torchrun each rank names the run folder (without --out-dir, by the time: ranks may differ by a second)
    and rank 0's name is broadcast to all; one process broadcasts nothing. The group is a stand-in here (the real
    collectives are tested in tests/minigpt2/test_mutants_distributed.py)."""
    from minigpt2.distributed import Dist

    told = []

    def broadcast(objects, src=None, group=None, device=None):
        told.append((list(objects), src))
        objects[0] = "/runs/of-rank-0"
    monkeypatch.setattr(finetune.dist, "broadcast_object_list", broadcast)
    named = finetune.parse_settings(args("sst", tmp_path / "mine"))
    assert finetune._shared_run_dir(named, Dist(rank=1, world=2)) == Path("/runs/of-rank-0")
    assert told == [([str(tmp_path / "mine")], 0)]
    told.clear()
    assert finetune._shared_run_dir(named, Dist()) == tmp_path / "mine" and told == []
    timed = finetune.parse_settings(args("sst", None))
    assert finetune._shared_run_dir(timed, Dist(rank=3, world=4)) == Path("/runs/of-rank-0")
    ((offered,), src), = told
    assert src == 0 and Path(offered).name.startswith("sst-")
