"""`python -m minigpt2.finetune` end to end on every task (tiny model, fixtures), `--resume`, `evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app import evaluate, finetune
from course.formats import label_format, read_generated
from course.readers import read_table
from experiments.sweeps import TINY_DATA
from minigpt2.checkpoint import load_model, read_safetensors
from tests.minigpt2.test_train import one_thread  # noqa: F401  (autouse fixture: one torch thread)

read_para, read_sentiment = label_format("quora").read_predictions, label_format("sst").read_predictions
FIX = TINY_DATA  # the tiny model's data and GPT-2 tokenizer files (package data of experiments)
DATA = FIX / "tasks"


def finetune_args(task: str, out: Path, *extra: str) -> list[str]:
    return ["--task", task, "--model", "tiny", "--data-dir", str(DATA), "--tokenizer-dir", str(FIX / "gpt2"),
            "--out-dir", str(out), "--batch-size", "4", "--no-progress", "--device", "cpu", *extra]


RUNS = {  # task -> extra arguments; 1-2 short epochs each
    "sst": ["--epochs", "2", "--lr", "1e-3"],
    "cfimdb": ["--epochs", "1", "--mode", "last-linear-layer"],
    "quora": ["--epochs", "1", "--lr", "1e-3"],
    "sonnet": ["--epochs", "1", "--max-new-tokens", "24", "--max-eval", "2"],
}
PREDICTIONS = {
    "sst": ("full-model-sst-dev-out.csv", "full-model-sst-test-out.csv"),
    "cfimdb": ("last-linear-layer-cfimdb-dev-out.csv", "last-linear-layer-cfimdb-test-out.csv"),
    "quora": ("para-dev-output.csv", "para-test-output.csv"),
    "sonnet": ("generated_sonnets_dev.txt", "generated_sonnets.txt"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    for task, extra in RUNS.items():
        finetune.main(finetune_args(task, root / task, *extra))
    torch.set_num_threads(n)
    return {task: root / task for task in RUNS}


@pytest.mark.parametrize("task", sorted(RUNS))
def test_each_task_writes_every_file(task, runs):
    run = runs[task]
    for name in ("config.json", "metrics.json", "best/model.safetensors", "best/config.json",
                 "last/state.safetensors", *PREDICTIONS[task]):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["schema"] == 2 and "args" not in config  # the settings once, versioned
    assert config["settings"]["data"]["task"] == task and config["settings"]["model"]["model"] == "tiny"
    metrics = json.loads((run / "metrics.json").read_text())
    metric = "chrf" if task == "sonnet" else "accuracy"
    assert metrics["metric"] == metric and len(metrics["epochs"]) == int(RUNS[task][1])
    for row in metrics["epochs"]:
        assert {"train_loss", "dev_loss", metric, "tokens_per_s", "train_s"} <= set(row)
        assert row["tokens_per_s"] > 0
    assert metrics["best"][metric] == max(r[metric] for r in metrics["epochs"])
    # the files come from the best epoch: its score is the first sample's (sonnets average --eval-samples samples)
    first = metrics["dev"].get(f"{metric}_samples", [metrics["dev"][metric]])[0]
    assert first == pytest.approx(metrics["best"][metric])
    assert metrics["trainable_params"] > 0 and metrics["wall_s"] > 0
    load_model(run / "best")  # an HF-layout checkpoint our loader (and transformers) can read


def test_sentiment_files_hold_every_id(runs):
    for task in ("sst", "cfimdb"):
        prefix = f"ids-{task}"
        for split, name in zip(("dev", "test-student"), PREDICTIONS[task]):
            ids = [r["id"] for r in read_table(DATA / f"{prefix}-{split}.csv", ["id"]).rows]
            preds = read_sentiment(runs[task] / name)
            assert list(preds) == ids
            assert set(preds.values()) <= set(range(5 if task == "sst" else 2))
    head, _ = read_safetensors(runs["sst"] / "best" / "head.safetensors")
    assert set(head) == {"classifier.weight", "classifier.bias"} and head["classifier.weight"].shape == (5, 32)


def test_last_linear_layer_trains_only_the_head(runs):
    metrics = json.loads((runs["cfimdb"] / "metrics.json").read_text())
    assert metrics["trainable_params"] == 32 * 2 + 2
    state, _ = read_safetensors(runs["cfimdb"] / "last" / "state.safetensors")
    assert {k for k in state if k.startswith("model.")} == {"model.classifier.weight", "model.classifier.bias"}


def test_quora_file_skips_the_empty_label_row_and_reports_it(runs):
    metrics = json.loads((runs["quora"] / "metrics.json").read_text())
    assert {k: metrics["data"][k] for k in ("train", "dev", "test")} == {"train": 8, "dev": 8, "test": 4}
    assert len(metrics["malformed_rows"]) == 1 and "quora-dev.csv:10" in metrics["malformed_rows"][0]
    preds = read_para(runs["quora"] / "para-dev-output.csv")
    assert len(preds) == 8 and set(preds.values()) <= {0, 1}


def test_sonnet_files_hold_whole_sonnets_starting_with_the_prompt(runs):
    dev = read_generated(runs["sonnet"] / "generated_sonnets_dev.txt")
    test = read_generated(runs["sonnet"] / "generated_sonnets.txt")
    chosen = json.loads((runs["sonnet"] / "subsets.json").read_text())["splits"]
    assert [str(s.number) for s in dev] == chosen["dev"]["ids"]  # --max-eval 2: a seeded sample of the prompts
    assert [s.number for s in dev] == [132, 134] and [s.number for s in test] == [145, 146]
    assert dev[0].lines[:3] == ("Thine eyes I love, and they, as pitying me,",
                                "Knowing thy heart torment me with disdain,",
                                "Have put on black, and loving mourners be,")
    assert all(3 < len(s.lines) <= 14 for s in dev + test)


@pytest.mark.parametrize("task", ["sst", "quora", "sonnet"])
def test_evaluate_rescores_the_saved_run(task, runs):
    metrics = json.loads((runs[task] / "metrics.json").read_text())
    metric = metrics["metric"]
    result = evaluate.evaluate_run(runs[task], "dev", device="cpu")
    assert result[metric] == pytest.approx(metrics["dev"][metric])
    assert json.loads((runs[task] / "eval-dev.json").read_text())[metric] == result[metric]
    result = evaluate.evaluate_run(runs[task], "test", device="cpu")  # the fixtures hold test labels
    assert result["examples"] == (2 if task == "sonnet" else 4)
    assert result[metric] == pytest.approx(metrics["test"][metric])


def test_evaluate_settings_file_scores_as_the_same_flags(runs, tmp_path, capsys):
    """`evaluate --settings FILE` (a sweep's follow-up) prints and writes what the flags it stands for do."""
    import shutil

    from app import runfolder
    from app.settings import EvaluateSettings, HardwareSettings

    by_flags, by_file = tmp_path / "flags", tmp_path / "file"
    for run in (by_flags, by_file):
        shutil.copytree(runs["sonnet"], run)
    evaluate.main([str(by_flags), "--task", "quora", "--zero-shot", "--split", "test", "--device", "cpu"])
    printed = json.loads(capsys.readouterr().out)
    path = tmp_path / "zero_shot_quora.settings.json"
    path.write_text(json.dumps(runfolder.settings_record(EvaluateSettings(
        run_dir=str(by_file), task="quora", zero_shot=True, split="test", hardware=HardwareSettings(device="cpu")))))
    before = sorted(p.name for p in by_file.iterdir())
    with pytest.raises(SystemExit) as e:  # a flag beside the file: one line, and the run folder untouched
        evaluate.main(["--settings", str(path), "--split", "dev"])
    assert str(e.value.code).startswith("error: --settings ") and "--split dev cannot go with it" in str(e.value.code)
    assert sorted(p.name for p in by_file.iterdir()) == before
    evaluate.main(["--settings", str(path)])
    assert json.loads(capsys.readouterr().out) == {**printed, "run_dir": str(by_file)}
    written = json.loads((by_file / "eval-quora-zero-shot-test.json").read_text())  # quora, zero-shot, test
    assert written == {**json.loads((by_flags / "eval-quora-zero-shot-test.json").read_text()), "run_dir": str(by_file)}
    assert (by_file / "zero-shot-para-test-output.csv").read_text() == (by_flags / "zero-shot-para-test-output.csv"
                                                                         ).read_text()
    assert sorted(p.name for p in by_file.iterdir()) == sorted(p.name for p in by_flags.iterdir())


RESUME_ARGS = ["--epochs", "3", "--lr", "1e-3", "--seed", "7", "--threads", "1"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """A 3-epoch sst run, uninterrupted: what a resumed run must end as."""
    out = tmp_path_factory.mktemp("straight") / "run"
    n = torch.get_num_threads()
    finetune.main(finetune_args("sst", out, *RESUME_ARGS))
    torch.set_num_threads(n)
    return out


def stopped_run(out: Path) -> Path:
    """The same run stopped after its first epoch (as an interrupted one): resumable."""
    finetune.main(finetune_args("sst", out, *RESUME_ARGS, "--stop-after-epoch", "1"))
    partial = json.loads((out / "metrics.json").read_text())
    assert partial["stopped_after_epoch"] == 1 and len(partial["epochs"]) == 1
    assert not (out / "full-model-sst-dev-out.csv").exists()
    return out


def assert_same_run(a: Path, b: Path, approx: float = 0.0, resumed_from: int = 1) -> None:
    """Runs a and b (b resumed after epoch `resumed_from`) end alike: epochs, best and dev figures, the test
    predictions, and the last state's weights and AdamW moments; all equal, or with `approx` (another thread count
    sums in another order) the figures within that relative distance and the weights not compared: the attention key
    bias has a zero gradient in exact arithmetic (it adds the same score to every key of a row), so AdamW turns
    rounding noise into full steps there."""
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    assert mb["resumed_from_epoch"] == resumed_from and "resumed_from_epoch" not in ma
    keys = ("epoch", "train_loss", "dev_loss", "accuracy", "lr")
    ea, eb = ([{k: e[k] for k in keys} for e in m["epochs"]] for m in (ma, mb))
    near = (lambda x: pytest.approx(x, rel=approx)) if approx else (lambda x: x)
    assert eb == [near(e) for e in ea]
    assert mb["best"] == near(ma["best"]) and mb["dev"] == near(ma["dev"])
    assert (a / "full-model-sst-test-out.csv").read_text() == (b / "full-model-sst-test-out.csv").read_text()
    if not approx:
        wa, _ = read_safetensors(a / "last" / "state.safetensors")
        wb, _ = read_safetensors(b / "last" / "state.safetensors")
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resumed_run_ends_like_an_uninterrupted_one(straight, tmp_path):
    """The whole command line again, with --resume (what a sweep does)."""
    run = stopped_run(tmp_path / "resumed")
    finetune.main(finetune_args("sst", run, *RESUME_ARGS, "--resume"))
    assert_same_run(straight, run)


def older_layout(settings: dict) -> dict:
    """A config.json's "settings" as the previous version wrote them (compile, autocast, progress under
    "hardware", stop_after_epoch under "run", `precision.precision`, no eval samples)."""
    old = json.loads(json.dumps(settings))
    for key in ("compile", "autocast", "progress"):
        old["hardware"][key] = old["optim"].pop(key)
    old["run"]["stop_after_epoch"] = old["optim"].pop("stop_after_epoch")
    precision = old["precision"]
    assert precision.pop("quant") is None  # an fp32 run
    old["precision"] = {"precision": precision.pop("format"), **precision, "group_size": 128,
                        "quant_activations": False, "quant_embeddings": True}
    del old["eval"]["samples"]
    return old


@pytest.mark.parametrize("layout", ["current", "older"])
def test_resume_with_the_run_folder_alone_ends_like_an_uninterrupted_run(straight, tmp_path, layout):
    """`--resume --out-dir RUN`, as the Ctrl-C message says: the settings come from RUN/config.json, of this
    version or of the one before; the --stop-after-epoch that stopped it is not inherited."""
    run = stopped_run(tmp_path / "resumed")
    if layout == "older":
        config = json.loads((run / "config.json").read_text())
        config["settings"] = older_layout(config["settings"])
        (run / "config.json").write_text(json.dumps(config))
        from app.settings import RunSettings  # the older layout does read back as the run's settings
        assert RunSettings.from_dict(config["settings"]).optim.stop_after_epoch == 1
    finetune.main(["--resume", "--out-dir", str(run)])
    assert_same_run(straight, run)
    settings = json.loads((run / "config.json").read_text())["settings"]
    assert settings["optim"]["stop_after_epoch"] is None and settings["precision"]["format"] == "fp32"


def test_resume_on_another_thread_count_is_recorded_and_ends_alike(straight, tmp_path):
    """A setting a resume may change (--threads 2 where the run had 1), beside a defining one repeated: accepted,
    recorded in config.json, and the run ends as the uninterrupted one up to the order of float sums."""
    import subprocess
    import sys

    run = stopped_run(tmp_path / "resumed")
    proc = subprocess.run([sys.executable, "-m", "minigpt2.finetune", "--resume", "--out-dir", str(run), "--threads",
                           "2", "--epochs", "3"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["settings"]["hardware"]["threads"] == 2
    assert_same_run(straight, run, approx=1e-5)


def test_missing_data_is_a_clear_error(tmp_path):
    (tmp_path / "quora-train.csv").write_text("\tid\tsentence1\tsentence2\tis_duplicate\n")
    with pytest.raises(SystemExit) as e:
        finetune.main(finetune_args("quora", tmp_path / "run") + ["--data-dir", str(tmp_path), "--offline"])
    msg = str(e.value)
    assert "quora-dev.csv" in msg and "quora-test-student.csv" in msg and "quora-train.csv" not in msg
    assert "python -m course fetch --task quora" in msg


def test_help_lists_the_course_defaults(capsys):
    with pytest.raises(SystemExit):
        finetune.main(["--help"])
    out = capsys.readouterr().out
    assert "--temperature" in out and "1.2" in out and "--top-p" in out and "0.9" in out
    assert "--resume" in out and "--max-train" in out


def test_model_from_a_hugging_face_folder(tmp_path, tiny_hf_dir):
    """`--model FOLDER`: a checkpoint in the HF layout (written by transformers at random init) is the body."""
    transformers = pytest.importorskip("transformers")
    finetune.main(finetune_args("quora", tmp_path / "run", "--model", str(tiny_hf_dir), "--epochs", "1"))
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == str(tiny_hf_dir) and (run / "para-test-output.csv").is_file()
    saved, _ = read_safetensors(run / "best" / "model.safetensors")
    assert saved["transformer.wte.weight"].shape == (50257, 32)
    hf = transformers.GPT2LMHeadModel.from_pretrained(run / "best")  # the best checkpoint loads in transformers
    assert hf.config.n_layer == 2


def test_unreachable_tokenizer_is_a_clear_error(tmp_path, monkeypatch):
    import tiktoken

    from minigpt2 import tokenizer

    monkeypatch.delenv(tokenizer.ENV_VAR, raising=False)

    def no_network(name):
        raise ConnectionError("Failed to resolve 'openaipublic.blob.core.windows.net'")

    monkeypatch.setattr(tiktoken, "get_encoding", no_network)
    with pytest.raises(SystemExit, match=r"error: could not load GPT-2's tokenizer.*set tokenizer_dir to it"):
        finetune.main(["--task", "quora", "--model", "tiny", "--out-dir", str(tmp_path / "run"), "--offline"])
