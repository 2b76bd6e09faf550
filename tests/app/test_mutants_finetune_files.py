"""`app/finetune.py`'s writers called alone, on hand-built inputs (no training): what a run writes into
metrics.json, config.json and the prediction files, and the last line it prints. Each figure is worked out apart
from the run: predictions chosen by hand and scored by hand against the labels in the tiny data, the majority class
counted, files read back line by line and hashed with hashlib, the dev loss as the mean of each example's loss
alone, the timings on a scripted clock, the printed line written out whole.

Written against mutmut's mutants of `finish_run`, `run_info`, `write_run_config`, `scored_references`, `dev_loss`,
`base_heldout_measures` and `write_split_predictions` (`python tools/mutate.py --auto app/finetune.py`,
docs/testing.md, "The fine-tuning run's writers"). Fast: the tiny model untrained, a few seconds in all."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import re
import types
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch
from sacrebleu.metrics import CHRF

from app import finetune, runfolder
from app.measures import copying_corpora, copying_record, form_record, heldout_measures
from app.runmodel import save_run_model
from course.readers import Malformed, read_table
from experiments.sweeps import TINY_DATA
from minigpt2.atomic import atomic_write_json
from minigpt2.config import GPT2Config
from minigpt2.distributed import Dist
from minigpt2.model import GPT2
from minigpt2.tokenizer import Tokenizer
from tasks import get_task
from tasks.base import Example, TaskModel, collate
from tests.app.test_mutants_finetune import sst_without_test_labels
from tests.minigpt2.test_train import one_thread  # noqa: F401  (autouse fixture: one torch thread)

DATA = TINY_DATA / "tasks"
SST_DEV, SST_TEST = DATA / "ids-sst-dev.csv", DATA / "ids-sst-test-labels.csv"
CPU = torch.device("cpu")
# The tiny GPT-2 by hand (tests/app/test_mutants_finetune.py): the body, and the SST head (32 x 5 + 5)
BODY = 50257 * 32 + 128 * 32 + 2 * (64 + 3168 + 1056 + 64 + 4224 + 4128) + 64
SST_HEAD = 32 * 5 + 5


def settings_of(task: str, out: Path | None = None, *extra: str, data: Path = DATA):
    return finetune.parse_settings(
        ["--task", task, "--model", "tiny", "--data-dir", str(data), "--tokenizer-dir", str(TINY_DATA / "gpt2"),
         *(["--out-dir", str(out)] if out is not None else []), "--no-progress", "--device", "cpu", "--offline",
         *extra])


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tiny(task, seed: int = 0):
    torch.manual_seed(seed)
    return task.build(GPT2(GPT2Config.from_name("tiny", dropout=0.0)))


def gold(path: Path, column: str = "sentiment") -> dict[str, int]:
    return {r["id"]: int(r[column]) for r in read_table(path, ["id", column]).rows}


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(TINY_DATA / "gpt2")


@pytest.fixture(scope="module")
def sst(tok):
    """The sst task's three splits, every row (9 / 8 / 4), as a run loads them."""
    task = get_task("sst")
    return task, {s: task.load(DATA, s, tok, 128, None, (), seed=11711)[0] for s in ("train", "dev", "test")}


# ---------------------------------------------------------------------------------------------- dev_loss

def each_alone(module, task, examples) -> list[float]:
    """The loss of each example in a batch of one (no padding, no other example in view)."""
    module.eval()
    with torch.no_grad():
        return [module(collate([e], lm_targets=task.lm_targets)).item() for e in examples]


def test_dev_loss_is_the_mean_of_each_examples_loss(sst):
    task, splits = sst
    module = tiny(task)
    dev = splits["dev"][:5]
    alone = each_alone(module, task, dev)
    assert max(alone) - min(alone) > 1e-3  # the examples' losses differ: a slip in the weights shows
    # batches of 2 over 5 examples: 2, 2 and 1; the mean weighs each example alike (not each batch)
    assert finetune.dev_loss(module, dev, task, 2, CPU, None) == pytest.approx(sum(alone) / 5, rel=1e-5)
    # one example: its own loss (not halved, not doubled)
    assert finetune.dev_loss(module, dev[3:4], task, 2, CPU, None) == pytest.approx(alone[3], rel=1e-6)
    assert finetune.dev_loss(module, [], task, 2, CPU, None) == 0.0


def test_dev_loss_of_a_language_model_is_over_its_next_tokens(tok):
    task = get_task("sonnet")
    module = tiny(task)
    dev = task.loss_examples(task.load(DATA, "dev", tok, 128, None, (), seed=11711)[0])
    assert len(dev) == 3
    alone = each_alone(module, task, dev)
    assert finetune.dev_loss(module, dev, task, 2, CPU, None) == pytest.approx(sum(alone) / 3, rel=1e-5)


def test_dev_loss_under_bf16_autocast_is_the_bf16_loss(sst):
    task, splits = sst
    module = tiny(task)
    module.eval()
    with torch.no_grad():
        batch = collate(splits["dev"])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = module(batch).item()
        fp32 = module(batch).item()
    assert abs(bf16 - fp32) > 1e-4 * fp32
    assert finetune.dev_loss(module, splits["dev"], task, 8, CPU, torch.bfloat16) == pytest.approx(bf16, rel=1e-6)


# ---------------------------------------------------------------------------------------------- run_info

def test_run_info_counts_real_and_synthetic_rows_and_names_the_run(tmp_path, sst):
    task, _ = sst
    settings = settings_of("sst", None, "--mode", "last-linear-layer")
    train = [Example(f"t{i}", [1, 2], 0, {"source": "synthetic"} if i in (1, 3) else {}) for i in range(5)]
    splits = {"train": train, "dev": [Example("d0", [1], 0), Example("d1", [2], 1), Example("d2", [3], 2)],
              "test": []}
    notes = [Malformed("ids-sst-train.csv", 7, "empty sentence", "x1"), Malformed("labels.csv", 3, "label 'z'")]
    assert finetune.run_info(task, settings, tiny(task), splits, notes) == {
        "task": "sst", "model": "tiny", "mode": "last-linear-layer", "method": "full",
        "total_params": BODY + SST_HEAD,
        "data": {"train": 5, "dev": 3, "test": 0, "train_real": 3, "train_synthetic": 2},
        "malformed_rows": ["ids-sst-train.csv:7: empty sentence", "labels.csv:3: label 'z'"]}


# ---------------------------------------------------------------------------------------------- write_run_config

def test_config_json_holds_the_settings_fingerprint_and_where_it_ran(tmp_path):
    settings = settings_of("sst", tmp_path, "--epochs", "3")
    fingerprint = {"subsets": {"train": {"n": 2, "sha256": "ab"}}, "weights": "cd"}
    before = datetime.now(timezone.utc).replace(microsecond=0)
    finetune.write_run_config(tmp_path, settings, Dist(world=3), fingerprint, 77, None)
    after = datetime.now(timezone.utc)
    c = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    assert set(c) == {"schema", "settings", "fingerprint", "run_dir", "world_size", "device", "max_length", "torch",
                      "started"}
    assert (c["schema"], c["settings"]) == (2, settings.to_dict())
    assert c["settings"]["optim"]["epochs"] == 3 and c["settings"]["data"]["task"] == "sst"
    assert (c["fingerprint"], c["run_dir"], c["world_size"], c["device"], c["max_length"], c["torch"]) == (
        fingerprint, str(tmp_path), 3, "cpu", 77, torch.__version__)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", c["started"])  # UTC, to the second
    assert before <= datetime.fromisoformat(c["started"]) <= after
    recorded = {"started": "2001-02-03T04:05:06+00:00", "run_dir": "elsewhere"}
    finetune.write_run_config(tmp_path, settings, Dist(), fingerprint, 77, recorded)
    c = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    assert (c["started"], c["run_dir"], c["world_size"]) == ("2001-02-03T04:05:06+00:00", str(tmp_path), 1)


# ---------------------------------------------------------------------------------------------- scored_references

def test_scored_references_of_test_labels_beside_the_data(sst):
    task, _ = sst
    entry = lambda split, path: {"task": "sst", "split": split, "file": str(path.resolve()),  # noqa: E731
                                 "exact": False, "sha256": sha(path)}
    assert finetune.scored_references(task, DATA, None, True) == {"dev": entry("dev", SST_DEV),
                                                                  "test": entry("test", SST_TEST)}
    assert finetune.scored_references(task, DATA, None, False) == {"dev": entry("dev", SST_DEV)}


# ---------------------------------------------------------------------------------------------- write_split_predictions

# Predictions chosen by hand: dev rows 0-7 (labels in the tiny data), test rows 0-3.
DEV_PREDS = [4, 3, 4, 4, 0, 1, 1, 2]
TEST_PREDS = [2, 0, 0, 3]  # test labels 2, 3, 4, 3: rows 0 and 3 right, 2 of 4


def by_hand(monkeypatch, task, calls: list) -> None:
    """task.predict answers DEV_PREDS for the dev rows and TEST_PREDS for the test rows, and records its calls."""
    def predict(module, examples, how, tok, device):
        calls.append(len(examples))
        return DEV_PREDS if len(examples) == 8 else TEST_PREDS
    monkeypatch.setattr(task, "predict", predict)


def course_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_label_predictions_written_scored_and_hashed(tmp_path, monkeypatch, sst, tok):
    task, splits = sst
    calls: list = []
    by_hand(monkeypatch, task, calls)
    settings = settings_of("sst", tmp_path)
    result = finetune.write_split_predictions(task, tiny(task), splits, settings, settings.predict_settings(CPU),
                                              tok, CPU, tmp_path)
    assert calls == [8, 4]
    dev_ids, test_ids = [e.id for e in splits["dev"]], [e.id for e in splits["test"]]
    dev_gold, test_gold = gold(SST_DEV), gold(SST_TEST)
    assert list(dev_gold) == dev_ids and list(test_gold) == test_ids
    dev_file, test_file = tmp_path / "full-model-sst-dev-out.csv", tmp_path / "full-model-sst-test-out.csv"
    # the course's format, line by line: a header, then "id, label " per row in the data's order
    assert course_lines(dev_file) == ["id \t Predicted_Sentiment "] + [f"{i}, {p} " for i, p in zip(dev_ids,
                                                                                                     DEV_PREDS)]
    assert course_lines(test_file) == ["id \t Predicted_Sentiment "] + [f"{i}, {p} " for i, p in zip(test_ids,
                                                                                                       TEST_PREDS)]
    dev_right = sum(p == dev_gold[i] for i, p in zip(dev_ids, DEV_PREDS))
    assert [dev_gold[i] for i in dev_ids].count(4) == 3  # the majority class: 3 of 8
    assert result == {
        "files_sha256": {dev_file.name: sha(dev_file), test_file.name: sha(test_file)},
        "dev_predictions": dev_file.name, "test_predictions": test_file.name,
        "dev": {"accuracy": dev_right / 8}, "test": {"accuracy": 2 / 4},
        "majority": {"dev": 3 / 8, "test": 2 / 4},
        "test_references": str(SST_TEST),
        "references_sha256": finetune.scored_references(task, DATA, None, True)}
    assert dev_right not in (0, 3, 4, 8)  # neither the majority's score nor test's: a swapped figure shows


def test_label_predictions_against_test_references_given(tmp_path, monkeypatch, sst, tok):
    task, splits = sst
    by_hand(monkeypatch, task, [])
    refs = tmp_path / "refs.tsv"  # other labels for the same rows: 3 of 4 right, majority 2 of 4 (class 0)
    refs.write_text("id\tsentiment\n" + "".join(f"{e.id}\t{v}\n" for e, v in zip(splits["test"], (2, 0, 0, 1))),
                    encoding="utf-8")
    run = tmp_path / "run"
    run.mkdir()
    settings = settings_of("sst", run, "--test-references", str(refs))
    result = finetune.write_split_predictions(task, tiny(task), splits, settings, settings.predict_settings(CPU),
                                              tok, CPU, run)
    assert result["test"] == {"accuracy": 3 / 4} and result["majority"]["test"] == 2 / 4
    assert result["test_references"] == str(refs)
    assert result["references_sha256"]["test"] == {"task": "sst", "split": "test", "file": str(refs.resolve()),
                                                   "exact": True, "sha256": sha(refs)}


def test_label_predictions_without_test_labels_score_dev_only(tmp_path, monkeypatch, sst, tok):
    task, splits = sst
    by_hand(monkeypatch, task, [])
    data = sst_without_test_labels(tmp_path / "data")
    run = tmp_path / "run"
    run.mkdir()
    settings = settings_of("sst", run, data=data)
    result = finetune.write_split_predictions(task, tiny(task), splits, settings, settings.predict_settings(CPU),
                                              tok, CPU, run)
    test_file = run / "full-model-sst-test-out.csv"
    assert course_lines(test_file)[1:] == [f"{e.id}, {p} " for e, p in zip(splits["test"], TEST_PREDS)]
    assert set(result) == {"files_sha256", "dev_predictions", "test_predictions", "dev", "majority",
                           "references_sha256"}
    assert result["files_sha256"][test_file.name] == sha(test_file) and result["majority"] == {"dev": 3 / 8}
    assert set(result["references_sha256"]) == {"dev"}


SONNETS = {  # what each of two samples writes after the prompt's 3 lines, by hand
    0: "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate",
    1: "The rain in Spain stays mainly in the plain\nand nothing more",
}


@pytest.fixture(scope="module")
def sonnets(tok):
    """The sonnet task with one dev prompt (132) and one test prompt (145): the true sonnets beside the data."""
    task = get_task("sonnet")
    splits = {s: task.load(DATA, s, tok, 128, None, (), seed=11711)[0] for s in ("train", "dev", "test")}
    return task, {"train": splits["train"], "dev": splits["dev"][:1], "test": splits["test"][:1]}


def true_sonnet(path: Path, number: int) -> list[str]:
    """The lines of sonnet `number` in a file of numbered sonnets, read here apart from the course reader."""
    return path.read_text(encoding="utf-8").split(f"\n{number}\n")[1].split(f"\n{number + 1}\n")[0].strip(
        "\n").split("\n")


def test_sonnet_samples_written_scored_and_measured(tmp_path, monkeypatch, sonnets, tok):
    task, splits = sonnets
    asked = []

    def predict_samples(module, examples, how, tok, device, samples):
        asked.append(([e.id for e in examples], samples))
        return [["\n".join(e.meta["prompt_lines"]) + "\n" + SONNETS[k] for e in examples] for k in range(samples)]
    monkeypatch.setattr(task, "predict_samples", predict_samples)
    refs = tmp_path / "true-test.txt"  # sonnet 145's text as given: its first 5 lines only
    given = true_sonnet(DATA / "TRUE_sonnets_held_out.txt", 145)[:5]
    refs.write_text("145\n" + "\n".join(given) + "\n", encoding="utf-8")
    settings = settings_of("sonnet", tmp_path, "--plain", "--eval-samples", "2", "--test-references", str(refs))
    how = settings.predict_settings(CPU)
    module = tiny(task)
    result = finetune.write_split_predictions(task, module, splits, settings, how, tok, CPU, tmp_path)
    assert asked == [(["132"], 2), (["145"], 2)]
    dev, test = ["generated_sonnets_dev.txt", "generated_sonnets_dev.sample2.txt"], ["generated_sonnets.txt",
                                                                                       "generated_sonnets.sample2.txt"]
    prompts = {n: true_sonnet(f, int(n))[:3] for n, f in (("132", DATA / "TRUE_sonnets_held_out_dev.txt"),
                                                             ("145", DATA / "TRUE_sonnets_held_out.txt"))}
    texts = {n: ["\n".join(prompts[n]) + "\n" + SONNETS[k] for k in (0, 1)] for n in prompts}
    # each sample's own file: the prompt's number, the prompt, the sample's lines (sample 1 in the .sample2 file)
    for names, n in ((dev, "132"), (test, "145")):
        for k, name in enumerate(names):
            lines = (tmp_path / name).read_text(encoding="utf-8").strip("\n").split("\n")
            assert lines[-6:] == [n, *prompts[n], *SONNETS[k].split("\n")]
    assert result["files_sha256"] == {n: sha(tmp_path / n) for n in dev + test}
    assert (result["dev_predictions"], result["dev_samples"]) == (dev[0], dev)
    assert (result["test_predictions"], result["test_samples"]) == (test[0], test)
    # chrF of each sample against the true sonnet (dev: the data's; test: the file given), by sacrebleu; the
    # split's score is their mean
    chrf = lambda hyp, ref: CHRF().corpus_score([hyp], [[ref]]).score  # noqa: E731
    dev_ref = "\n".join(true_sonnet(DATA / "TRUE_sonnets_held_out_dev.txt", 132))
    dev_scores = [chrf(texts["132"][k], dev_ref) for k in (0, 1)]
    test_scores = [chrf(texts["145"][k], "\n".join(given)) for k in (0, 1)]
    assert dev_scores[0] != dev_scores[1] and test_scores[0] != test_scores[1] and dev_scores != test_scores
    assert result["dev"] == {"chrf": pytest.approx(sum(dev_scores) / 2), "chrf_samples": pytest.approx(dev_scores)}
    assert result["test"] == {"chrf": pytest.approx(sum(test_scores) / 2),
                              "chrf_samples": pytest.approx(test_scores)}
    assert result["test_references"] == str(refs)
    assert result["references_sha256"] == finetune.scored_references(task, DATA, refs, True)
    assert result["references_sha256"]["test"]["sha256"] == sha(refs)
    draws = {s: [[texts[n][k]] for k in (0, 1)] for s, n in (("dev", "132"), ("test", "145"))}
    assert result["form"] == {s: form_record([n], draws[s]) for s, n in (("dev", "132"), ("test", "145"))}
    corpora = copying_corpora(task, DATA, refs)
    assert result["copying"] == {s: copying_record([n], draws[s], [3], *corpora)
                                 for s, n in (("dev", "132"), ("test", "145"))}
    assert "majority" not in result
    # the held-out likelihood of the module as it is, the test sonnet as given (5 lines: fewer tokens)
    assert result["heldout_nll"] == heldout_measures(task, module, splits, how, tok, CPU, DATA, refs)
    assert result["heldout_nll"]["test"]["tokens"] < 60  # 5 lines of the 14 (sonnet 145: 163 tokens in all)
    assert set(result) == {"files_sha256", "dev_predictions", "dev_samples", "test_predictions", "test_samples",
                           "dev", "test", "test_references", "references_sha256", "form", "copying", "heldout_nll"}


# ---------------------------------------------------------------------------------------------- base_heldout_measures

def test_the_base_models_heldout_likelihood_is_kept_and_read_back_on_resume(tmp_path, sonnets, tok):
    task, splits = sonnets
    refs = tmp_path / "true-test.txt"
    true_test = (DATA / "TRUE_sonnets_held_out.txt").read_text(encoding="utf-8")
    refs.write_text("145\n" + "\n".join(true_test.split("\n145\n")[1].split("\n")[:4]) + "\n", encoding="utf-8")
    run = tmp_path / "run"
    run.mkdir()
    settings = settings_of("sonnet", run, "--test-references", str(refs))
    how = settings.predict_settings(CPU)
    module = tiny(task)
    kept = run / "heldout-nll-base.json"
    kept.write_text('{"dev": "an older run"}', encoding="utf-8")  # a fresh run (not --resume) measures anew
    expected = heldout_measures(task, module, splits, how, tok, CPU, DATA, refs)
    assert expected["test"]["tokens"] < 60  # 1 line and a bit of the 14: not the data folder's sonnet
    assert finetune.base_heldout_measures(task, module, splits, settings, how, tok, CPU, run) == expected
    assert json.loads(kept.read_text(encoding="utf-8")) == json.loads(json.dumps(expected))
    # --resume: the figure kept is given back as written, not measured again (another model: the same figure)
    resumed = dataclasses.replace(settings, run=dataclasses.replace(settings.run, resume=True))
    kept.write_text('{"dev": {"nll": 1.5}}', encoding="utf-8")
    assert finetune.base_heldout_measures(task, tiny(task, 1), splits, resumed, how, tok, CPU, run) == {
        "dev": {"nll": 1.5}}
    assert kept.read_text(encoding="utf-8") == '{"dev": {"nll": 1.5}}'
    kept.unlink()  # --resume without the file (a run stopped before it was written): measured and kept
    assert finetune.base_heldout_measures(task, module, splits, resumed, how, tok, CPU, run) == expected
    assert json.loads(kept.read_text(encoding="utf-8")) == json.loads(json.dumps(expected))
    # no --test-references: the true test sonnets beside the data (sonnet 145 whole)
    plain = tmp_path / "plain"
    plain.mkdir()
    whole = finetune.base_heldout_measures(task, module, splits, settings_of("sonnet", plain), how, tok, CPU, plain)
    assert whole == heldout_measures(task, module, splits, how, tok, CPU, DATA, None)
    assert whole["test"]["tokens"] > 100 and whole["dev"] == expected["dev"]


# ---------------------------------------------------------------------------------------------- finish_run

class Clock:
    def __init__(self, *readings: float) -> None:
        self.readings = list(readings)

    def time(self) -> float:
        return self.readings.pop(0)


def finish(run: Path, settings, splits, module, metrics: dict, tok, monkeypatch, task) -> str:
    """finish_run on `module` with the clock reading 100.0 then 107.25: its stdout."""
    out = io.StringIO()
    clock = Clock(100.0, 107.25)
    monkeypatch.setattr(finetune, "time", types.SimpleNamespace(time=clock.time))
    with contextlib.redirect_stdout(out):
        finetune.finish_run(module, task, splits, settings, settings.predict_settings(CPU), tok, CPU, run, metrics)
    assert not clock.readings
    return out.getvalue()


def best_and_other(task, run: Path, settings):
    """The best weights saved in run/best (class 2 for every row: its bias), and another model (class 0)."""
    atomic_write_json(run / "config.json", runfolder.settings_record(settings))  # a run folder's config.json
    best, other = tiny(task), tiny(task)
    with torch.no_grad():
        best.classifier.bias.copy_(torch.tensor([0.0, 0.0, 50.0, 0.0, 0.0]))
        other.classifier.bias.copy_(torch.tensor([50.0, 0.0, 0.0, 0.0, 0.0]))
    save_run_model(best, run / "best", settings)
    return other


def test_finish_run_scores_the_best_weights_writes_metrics_and_says_so(tmp_path, monkeypatch, sst, tok):
    task, splits = sst
    run = tmp_path / "run"
    run.mkdir()
    settings = settings_of("sst", run)
    other = best_and_other(task, run, settings)
    metrics = {"best": {"epoch": 2, "accuracy": 0.125, "dev_loss": 1.0}, "wall_s": 40.0, "task": "sst"}
    out = finish(run, settings, splits, other, metrics, tok, monkeypatch, task)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    # every row predicted 2 (the best weights, loaded into the model handed over): dev labels 2 twice of 8,
    # test labels 2, 3, 4, 3: 1 of 4
    assert course_lines(run / "full-model-sst-dev-out.csv")[1:] == [f"{e.id}, 2 " for e in splits["dev"]]
    assert sum(v == 2 for v in gold(SST_DEV).values()) == 2
    assert m["dev"] == {"accuracy": 2 / 8} and m["test"] == {"accuracy": 1 / 4}
    assert (m["predict_s"], m["wall_s"]) == (7.25, 47.25)
    assert m["majority"] == {"dev": 3 / 8, "test": 2 / 4} and m["best"] == metrics["best"] and m["task"] == "sst"
    assert m == json.loads(json.dumps(metrics))  # the dict handed over is the one written
    assert "quantization" not in m and not (run / "quantized").exists()
    assert out == f"best epoch 2: dev accuracy 0.1250, test accuracy 0.2500; run folder {run}\n"


def test_finish_run_without_test_labels_prints_the_dev_score_only(tmp_path, monkeypatch, sst, tok):
    task, splits = sst
    data = sst_without_test_labels(tmp_path / "data")
    run = tmp_path / "run"
    run.mkdir()
    settings = settings_of("sst", run, data=data)
    other = best_and_other(task, run, settings)
    out = finish(run, settings, splits, other, {"best": {"epoch": 1, "accuracy": 0.6875}, "wall_s": 0.5}, tok,
                 monkeypatch, task)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert "test" not in m and m["dev"] == {"accuracy": 2 / 8} and m["wall_s"] == 7.75
    assert out == f"best epoch 1: dev accuracy 0.6875; run folder {run}\n"


def finish_at_precision(tmp_path, monkeypatch, sst, tok, *flags: str) -> tuple[Path, TaskModel]:
    """finish_run of an SST run with `flags` on `best_and_other`'s other model: the run folder and that model."""
    task, splits = sst
    run = tmp_path / "run"
    run.mkdir()
    settings = settings_of("sst", run, *flags)
    other = best_and_other(task, run, settings)
    finish(run, settings, splits, other, {"best": {"epoch": 1, "accuracy": 0.5}, "wall_s": 1.0}, tok, monkeypatch,
           task)
    return run, other


def test_finish_run_quantizes_after_training_and_packs_the_body(tmp_path, monkeypatch, sst, tok):
    from quant.fake import FakeQuantLinear

    run, other = finish_at_precision(tmp_path, monkeypatch, sst, tok, "--precision", "int8")
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    # post-training quantization: the body's linear layers are fake-quant (int8) when the predictions are made
    linear = [x for x in other.gpt.modules() if isinstance(x, torch.nn.Linear)]
    assert len(linear) >= 2 * 4 and all(isinstance(x, FakeQuantLinear) for x in linear)
    assert not any(isinstance(x, FakeQuantLinear) for x in other.classifier.modules())
    report = json.loads((run / "quantized" / "size_report.json").read_text(encoding="utf-8"))
    assert m["quantization"] == report and report["precision"] == "int8" and report["qaft"] is False
    assert report["file_bytes"] == (run / report["file"]).stat().st_size
    assert m["dev"] == {"accuracy": 2 / 8}  # the bias still wins: the best weights were loaded first


def test_finish_run_after_quantization_aware_training_quantizes_once(tmp_path, monkeypatch, sst, tok):
    calls = []
    monkeypatch.setattr(finetune, "apply_run_precision", lambda *a: calls.append(a))
    run, _ = finish_at_precision(tmp_path, monkeypatch, sst, tok, "--precision", "int8", "--qaft")
    assert calls == []  # trained fake-quantized already (build_model): not quantized again
    assert json.loads((run / "metrics.json").read_text(encoding="utf-8"))["quantization"]["qaft"] is True


def test_finish_run_casts_the_whole_model_for_a_bf16_run(tmp_path, monkeypatch, sst, tok):
    run, other = finish_at_precision(tmp_path, monkeypatch, sst, tok, "--precision", "bf16")
    # the body and the head alike, after the best weights were loaded (post-training, as any other format)
    assert {p.dtype for p in other.parameters()} == {torch.bfloat16}
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert m["quantization"]["precision"] == "bf16" and m["dev"] == {"accuracy": 2 / 8}


def test_finish_run_of_a_sonnet_run_writes_with_the_tokenizer_and_prints_chrf(tmp_path, monkeypatch, sonnets, tok):
    task, splits = sonnets
    run = tmp_path / "run"
    run.mkdir()
    settings = settings_of("sonnet", run, "--plain", "--max-new-tokens", "3", "--eval-samples", "1")
    atomic_write_json(run / "config.json", runfolder.settings_record(settings))
    save_run_model(tiny(task), run / "best", settings)
    out = finish(run, settings, splits, tiny(task, 1), {"best": {"epoch": 3, "chrf": 12.34}, "wall_s": 2.0}, tok,
                 monkeypatch, task)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    # the test sonnet written (its prompt, then what the model wrote) against the true sonnet 145, by sacrebleu
    hyp, ref = task.format.split_pairs(run / "generated_sonnets.txt", DATA, "test")
    assert ref == ["\n".join(true_sonnet(DATA / "TRUE_sonnets_held_out.txt", 145))]
    assert hyp[0].split("\n")[:3] == true_sonnet(DATA / "TRUE_sonnets_held_out.txt", 145)[:3]
    assert m["test"] == {"chrf": pytest.approx(CHRF().corpus_score(hyp, [ref]).score)}
    assert set(m["heldout_nll"]) == {"dev", "test"} and m["predict_s"] == 7.25
    assert out == f"best epoch 3: dev chrf 12.3400, test chrf {m['test']['chrf']:.4f}; run folder {run}\n"
