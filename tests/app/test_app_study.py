"""What the study needs from the application: test scores where labels exist, `--epochs 0` (the base model
scored and saved as the run's best), `--synthetic-only`, and honest `--max-train`/`--max-eval` subsets."""
import json
import shutil
from pathlib import Path

import pytest

from app import evaluate, finetune, subsets
from course.readers import DataError
from experiments.sweeps import TINY_DATA
from tasks import get_task
from tasks.base import sample_indices
from tests import ROOT
from tests.app.test_finetune import DATA, finetune_args, one_thread  # noqa: F401 (one_thread: autouse)

SYNTHETIC = ROOT / "experiments" / "tiny_data" / "synthetic" / "gemini-2.5-flash.jsonl"


def write_preds(task_name: str, path: Path, ids: list[str], value: int) -> None:
    task = get_task(task_name)
    task.format.write_predictions(path, ids, [value] * len(ids))


@pytest.mark.parametrize("name", ["sst", "cfimdb", "quora"])
def test_split_pairs_read_test_labels_beside_the_data_and_none_without(name, tmp_path):
    task = get_task(name)
    labels = task.format.split_labels(DATA, "test")
    assert labels and task.format.references_file(DATA, "test") == DATA / task.files.test_references
    write_preds(name, tmp_path / "test.csv", list(labels), 1)
    preds, refs = task.format.split_pairs(tmp_path / "test.csv", DATA, "test")
    assert preds == [1] * len(labels) and refs == list(labels.values())
    assert task.format.split_scores(tmp_path / "test.csv", DATA, "test") == {
        "accuracy": sum(r == 1 for r in refs) / len(refs)}
    bare = tmp_path / "data"
    shutil.copytree(DATA, bare)
    (bare / task.files.test_references).unlink()
    assert task.format.split_pairs(tmp_path / "test.csv", bare, "test") is None
    write_preds(name, tmp_path / "other.csv", ["not-an-id"], 1)
    with pytest.raises(DataError, match="not-an-id"):
        task.format.split_pairs(tmp_path / "other.csv", DATA, "test")


def test_sonnet_split_pairs_read_the_true_test_sonnets(tmp_path):
    task = get_task("sonnet")
    truths = task.format.split_references(DATA, "test")
    assert sorted(truths) == [145, 146] and all(len(t.splitlines()) == 14 for t in truths.values())
    from course.formats import write_sonnets

    write_sonnets(tmp_path / "gen.txt", [(n, "\n".join(t.splitlines()[:3])) for n, t in truths.items()])
    hyps, refs = task.format.split_pairs(tmp_path / "gen.txt", DATA, "test")
    assert refs == list(truths.values()) and 0 < task.format.score_pairs(hyps, refs)["chrf"] < 100
    perfect = task.format.score_pairs(refs, refs)["chrf"]
    assert perfect == pytest.approx(100.0)


def test_finetune_records_test_scores_and_majority_and_evaluate_scores_test(tmp_path, capsys):
    out = tmp_path / "run"
    finetune.main(finetune_args("sst", out, "--epochs", "1", "--lr", "1e-3"))
    m = json.loads((out / "metrics.json").read_text())
    task = get_task("sst")
    preds, refs = task.format.split_pairs(out / m["test_predictions"], DATA, "test")
    assert m["test"] == {"accuracy": sum(p == r for p, r in zip(preds, refs)) / len(refs)}
    assert m["majority"]["test"] == task.format.majority_accuracy(refs) == 0.5  # labels 2, 3, 4, 3
    dev = list(task.format.dev_labels(DATA).values())
    assert m["majority"]["dev"] == max(dev.count(v) for v in set(dev)) / len(dev)
    assert f"test accuracy {m['test']['accuracy']:.4f}" in capsys.readouterr().out
    scored = evaluate.evaluate_run(out, "test")
    assert scored["accuracy"] == m["test"]["accuracy"] and scored["majority_accuracy"] == 0.5
    # --test-references: another labels file gives the score against those labels
    ids = list(task.format.split_labels(DATA, "test"))
    other = tmp_path / "labels.csv"
    other.write_text("id\tsentiment\n" + "".join(f"{i}\t{p}\n" for i, p in zip(ids, preds)))
    assert evaluate.evaluate_run(out, "test", test_references=str(other))["accuracy"] == 1.0


def test_evaluate_test_without_labels_writes_predictions_and_says_so(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(DATA, data)
    (data / "quora-test-labels.csv").unlink()
    out = tmp_path / "run"
    finetune.main(finetune_args("quora", out, "--epochs", "0") + ["--data-dir", str(data)])
    m = json.loads((out / "metrics.json").read_text())
    assert "test" not in m and "test" not in m["majority"]
    result = evaluate.evaluate_run(out, "test")
    assert "accuracy" not in result and "not scored" in result["note"]


@pytest.mark.parametrize("extra", [[], ["--precision", "int8"], ["--precision", "int8", "--qaft"]])
def test_zero_epochs_scores_and_saves_the_base_model(tmp_path, extra):
    """--epochs 0: no training step; the base model (at the run's precision) is the run's best, scored on dev
    and test, and re-evaluating it gives the same figures."""
    out = tmp_path / "run"
    finetune.main(finetune_args("quora", out, "--epochs", "0", *extra))
    m = json.loads((out / "metrics.json").read_text())
    assert m["best"]["epoch"] == 0 and m["trainable_params"] == 0 and len(m["epochs"]) == 1
    assert "accuracy" in m["test"] and not (out / "last").exists()
    assert evaluate.evaluate_run(out, "dev")["accuracy"] == m["dev"]["accuracy"]
    assert evaluate.evaluate_run(out, "test")["accuracy"] == m["test"]["accuracy"]
    # the saved body is the untrained one: a second run from the same seed saves the same weights
    again = tmp_path / "again"
    finetune.main(finetune_args("quora", again, "--epochs", "0", *extra))
    assert (out / "best" / "model.safetensors").read_bytes() == (again / "best" / "model.safetensors").read_bytes()


def test_zero_epoch_runs_of_the_precision_sweep_pass_epochs_0():
    from experiments.sweeps import SweepOptions, build_sweep

    sweep = build_sweep("precision", SweepOptions(tiny=True))
    runs = [r for r in sweep.runs if sweep.knob_values(r)["stage"] == "base"]
    assert [sweep.knob_values(r)["precision"] for r in runs] == ["fp32", "int8"]
    assert all(r.settings.optim.epochs == 0 for r in runs)


def test_synthetic_only_trains_on_synthetic_sonnets_alone(tmp_path):
    out = tmp_path / "run"
    finetune.main(finetune_args("sonnet", out, "--epochs", "1", "--max-new-tokens", "4", "--synthetic",
                                str(SYNTHETIC), "--synthetic-only"))
    m = json.loads((out / "metrics.json").read_text())
    assert m["data"]["train_real"] == 0 and m["data"]["train_synthetic"] == m["data"]["train"] > 0
    assert m["data"]["dev"] > 0 and "chrf" in m["test"]  # dev and test stay real
    mixed = tmp_path / "mixed"
    finetune.main(finetune_args("sonnet", mixed, "--epochs", "1", "--max-new-tokens", "4", "--synthetic",
                                str(SYNTHETIC)))
    assert json.loads((mixed / "metrics.json").read_text())["data"]["train_real"] > 0


def test_subsets_are_seeded_stratified_and_in_file_order():
    labels = [0 if i < 60 else (1 if i < 90 else 2) for i in range(100)]  # the first rows: one class only
    chosen = sample_indices(labels, 10, seed=1, split="dev")
    picked = [labels[i] for i in chosen]
    assert (picked.count(0), picked.count(1), picked.count(2)) == (6, 3, 1)  # each class keeps its share
    assert chosen == sorted(chosen) and len(set(chosen)) == 10
    assert sample_indices(labels, 10, seed=1, split="dev") == chosen  # seeded
    assert sample_indices(labels, 10, seed=2, split="dev") != chosen
    assert sample_indices(labels, 10, seed=1, split="train") != chosen  # one stream per split
    assert sample_indices(labels, None, 1, "dev") == list(range(100)) == sample_indices(labels, 500, 1, "dev")
    unlabelled = sample_indices([None] * 50, 5, seed=1, split="test")
    assert len(unlabelled) == 5 and unlabelled != list(range(5))


def test_tasks_load_the_seeded_subset():
    from minigpt2.tokenizer import Tokenizer

    tok, task = Tokenizer(TINY_DATA / "gpt2"), get_task("sst")
    all_dev, _ = task.load(DATA, "dev", tok, 64)
    some, _ = task.load(DATA, "dev", tok, 64, limit=4, seed=5)
    keep = sample_indices([e.label for e in all_dev], 4, 5, "dev")
    assert [e.id for e in some] == [all_dev[i].id for i in keep]
    assert [e.input_ids for e in some] == [all_dev[i].input_ids for i in keep]


def test_run_records_its_subsets_and_evaluate_rescoring_uses_the_same_rows(tmp_path):
    out = tmp_path / "run"
    finetune.main(finetune_args("sst", out, "--epochs", "1", "--lr", "1e-3", "--max-train", "4", "--max-eval", "3"))
    record = json.loads((out / "subsets.json").read_text())
    config = json.loads((out / "config.json").read_text())
    dev_ids = record["splits"]["dev"]["ids"]
    assert len(dev_ids) == 3 and record["seed"] == config["settings"]["optim"]["seed"]
    assert config["fingerprint"]["subsets"]["dev"] == {"n": 3, "sha256": subsets.ids_sha256(dev_ids)}
    m = json.loads((out / "metrics.json").read_text())
    assert list(get_task("sst").format.read_predictions(out / m["dev_predictions"])) == dev_ids
    assert dev_ids != list(get_task("sst").format.dev_labels(DATA))[:3]  # not the first rows
    assert evaluate.evaluate_run(out, "dev")["accuracy"] == m["dev"]["accuracy"]


def test_test_references_that_miss_test_rows_are_refused_before_training(tmp_path, capsys):
    wrong = tmp_path / "labels.csv"
    wrong.write_text("id\tsentiment\nsome-other-id\t1\n")
    with pytest.raises(SystemExit) as e:
        finetune.main(finetune_args("sst", tmp_path / "run", "--epochs", "1", "--test-references", str(wrong)))
    assert e.value.code.startswith("error: ") and "no reference for test id(s)" in e.value.code
    assert str(wrong) in e.value.code and not (tmp_path / "run" / "metrics.json").exists()
