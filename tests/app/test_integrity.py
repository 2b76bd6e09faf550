"""What a study page's numbers rest on: every file a run scored or scored against is hashed in its metrics.json and
re-checked by a report rebuild (one `error:` line, nothing written); each run records the commit it ran under, and
the page lists the runs' commits, flagging a mixed study."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

from app import finetune, runfolder
from course.formats import label_format
from experiments import __main__ as cli
from experiments import report
from experiments.sweeps import TINY_DATA_DIR
from minigpt2.metrics import MIN_INTERVAL_N
from tests.app.test_finetune import finetune_args
from tests.minigpt2.test_train import one_thread  # noqa: F401  (autouse fixture: one torch thread)

ZERO_SHOT_JSON = "eval-quora-zero-shot-dev.json"
ZERO_SHOT_PREDICTIONS = "zero-shot-para-dev-output.csv"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def study(tmp_path, tiny_sweep):
    """A copy of the finished tiny precision sweep (sonnet runs with the zero-shot Quora check, an SST run) whose
    runs read a copy of the data folder; `argv` rebuilds its report into a results folder not yet made."""
    runs, data = tmp_path / "runs", tmp_path / "data"
    shutil.copytree(tiny_sweep("precision").runs, runs)
    shutil.copytree(TINY_DATA_DIR, data)
    for config_file in (runs / "precision").glob("*/config.json"):
        config = json.loads(config_file.read_text())
        config["settings"]["paths"]["data_dir"] = str(data)  # the data moved: the report finds the reference files there
        config_file.write_text(json.dumps(config))
    out = tmp_path / "results"
    argv = ["precision", "--tiny", "--runs-dir", str(runs), "--out", str(out), "--no-progress", "--bootstrap", "50",
            "--report-only"]
    return runs / "precision", data, out, argv


def run_named(root: Path, prefix: str) -> Path:
    return next(p for p in sorted(root.iterdir()) if p.name.startswith(prefix))


def test_a_run_records_every_file_it_scored_and_scored_against(tiny_sweep):
    root = tiny_sweep("precision").runs / "precision"
    sonnet, sst = run_named(root, "fp32-"), run_named(root, "sst-int8-qaft-")
    metrics = json.loads((sonnet / "metrics.json").read_text())
    scored = metrics["files_sha256"]
    assert len(metrics["dev_samples"]) > 1  # every sample file, not only the course file
    expected = metrics["dev_samples"] + metrics["test_samples"] + [ZERO_SHOT_PREDICTIONS, ZERO_SHOT_JSON]
    assert sorted(scored) == sorted(expected)
    assert all(scored[name] == sha(sonnet / name) for name in expected)
    refs = metrics["references_sha256"]
    assert {k: (v["task"], v["split"], Path(v["file"]).name, v["sha256"]) for k, v in refs.items()} == {
        "dev": ("sonnet", "dev", "TRUE_sonnets_held_out_dev.txt", sha(TINY_DATA_DIR / "TRUE_sonnets_held_out_dev.txt")),
        "test": ("sonnet", "test", "TRUE_sonnets_held_out.txt", sha(TINY_DATA_DIR / "TRUE_sonnets_held_out.txt")),
        ZERO_SHOT_JSON: ("quora", "dev", "quora-dev.csv", sha(TINY_DATA_DIR / "quora-dev.csv"))}
    refs = json.loads((sst / "metrics.json").read_text())["references_sha256"]
    assert {k: (Path(v["file"]).name, v["sha256"]) for k, v in refs.items() if k != ZERO_SHOT_JSON} == {
        "dev": ("ids-sst-dev.csv", sha(TINY_DATA_DIR / "ids-sst-dev.csv")),
        "test": ("ids-sst-test-labels.csv", sha(TINY_DATA_DIR / "ids-sst-test-labels.csv"))}


FLIP = {"8505": "3919", "3919": "8505", "0.0": "1.0", "1.0": "0.0", "0": "1", "1": "0", "2": "0", "3": "0",
        "4": "0"}


def _flip_first_label(path: Path) -> None:
    """The first row's last value (a label, or an answer token id) changed to another valid one."""
    lines = path.read_text().split("\n")
    row = lines[1].rstrip()
    value = row.split()[-1]
    lines[1] = row[:len(row) - len(value)] + FLIP[value]
    path.write_text("\n".join(lines))


def _edit_text(path: Path) -> None:
    path.write_text(path.read_text().replace("\n", "\nO\n", 1))


# (which run, the edited file: in the run folder or in the data folder)
EDITS = {
    "zero-shot predictions": ("fp32-", "run", ZERO_SHOT_PREDICTIONS, _flip_first_label),
    "zero-shot result": ("fp32-", "run", ZERO_SHOT_JSON, lambda p: p.write_text(p.read_text().replace(
        '"accuracy": ', '"accuracy": 0.5, "was": ', 1))),
    "generated sonnets sample": ("fp32-", "run", "generated_sonnets_dev.sample2.txt", _edit_text),
    "test truth": ("base-fp32-", "data", "TRUE_sonnets_held_out.txt", _edit_text),
    "dev truth": ("base-fp32-", "data", "TRUE_sonnets_held_out_dev.txt", _edit_text),
    "test labels": ("sst-fp32-", "data", "ids-sst-test-labels.csv", _flip_first_label),
    "zero-shot labels": ("base-fp32-", "data", "quora-dev.csv", _flip_first_label),
}


@pytest.mark.parametrize("kind", sorted(EDITS))
def test_a_rebuild_refuses_an_edited_hashed_file_and_writes_nothing(kind, study):
    root, data, out, argv = study
    prefix, where, name, edit = EDITS[kind]
    run = run_named(root, prefix)  # the first run (in sweep order) that reads the file
    path = (run if where == "run" else data) / name
    assert path.is_file()
    edit(path)
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    message = str(e.value)
    assert message.startswith(f"error: {path}: changed since its run scored") and "\n" not in message, message
    assert f"{run / 'metrics.json'}" in message and f"run {run} again" in message
    assert not out.exists()  # nothing written: no CSV, table, plot or page


def test_all_sweeps_are_checked_before_any_report_is_written(study, tmp_path):
    root, data, out, argv = study
    _edit_text(run_named(root, "int8-qaft-") / "generated_sonnets.txt")
    with pytest.raises(SystemExit, match=r"^error: .*generated_sonnets\.txt: changed since its run scored it"):
        cli.main(["all"] + argv[1:])
    assert not out.exists()  # baseline (the first sweep, no runs here) was not written either


def test_the_zero_shot_point_and_interval_come_from_one_file(study):
    """An eval result whose figure disagrees with its predictions file (a run that recorded no hashes): the row's
    point is the file's accuracy, as its interval is."""
    root, data, out, argv = study
    run = run_named(root, "fp32-")
    result = json.loads((run / ZERO_SHOT_JSON).read_text())
    (run / ZERO_SHOT_JSON).write_text(json.dumps({**result, "accuracy": 0.987}))
    predicted = label_format("quora").read_predictions(run / ZERO_SHOT_PREDICTIONS)
    truth = {}
    for line in (data / "quora-dev.csv").read_text().splitlines()[1:]:  # tab-separated, the label last
        cells = line.split("\t")
        if cells[-1].strip():
            truth[cells[1]] = int(float(cells[-1]))
    scored = [k for k in predicted if k in truth]
    expected = sum(predicted[k] == truth[k] for k in scored) / len(scored)
    row = report.zero_shot_row(run, ZERO_SHOT_JSON, samples=50)
    assert row["zero_shot_accuracy"] == pytest.approx(expected) and expected != 0.987
    assert row["zero_shot_n"] == len(scored)
    if len(scored) < MIN_INTERVAL_N:  # the tiny data's few Quora rows: the point alone, no interval
        assert math.isnan(row["zero_shot_low"]) and math.isnan(row["zero_shot_high"])
    else:
        assert row["zero_shot_low"] <= row["zero_shot_accuracy"] <= row["zero_shot_high"]


def _set_code(run: Path, code: dict | None) -> None:
    config = json.loads((run / "config.json").read_text())
    if code is None:
        config["fingerprint"].pop("code", None)  # a run from before the record
    else:
        config["fingerprint"]["code"] = code
    (run / "config.json").write_text(json.dumps(config))


A, B = "a" * 40, "b" * 40


def test_the_page_lists_the_runs_commits_and_flags_a_mixed_study(study):
    root, data, out, argv = study
    runs = sorted(p for p in root.iterdir() if (p / "config.json").is_file())
    assert len(runs) == 7
    for run in runs:
        _set_code(run, {"package": "0.1.0", "git_commit": A, "git_dirty": False})
    assert cli.main(argv) == 0
    page, table = (out / "index.html").read_text(), (out / "precision.md").read_text()
    assert f"<td>commit {A} (7 runs)</td>" in page and "Mixed study" not in page
    assert f"Code of the runs: commit {A} (7 runs).\n" in table and "mixed code" not in table

    _set_code(runs[0], {"package": "0.1.0", "git_commit": B, "git_dirty": True})
    _set_code(runs[1], {"package": "0.1.0", "git_commit": B, "git_dirty": False})
    _set_code(runs[2], None)
    _set_code(runs[3], {"package": "0.2.0", "git_commit": None, "git_dirty": None})
    assert cli.main(argv) == 0
    page, table = (out / "index.html").read_text(), (out / "precision.md").read_text()
    listed = (f"commit {A} (3 runs)<br>commit {B} (1 run)<br>commit {B}, work tree with uncommitted changes (1 run)"
              f"<br>package 0.2.0 (no git checkout) (1 run)<br>{report.UNKNOWN_CODE} (1 run)")
    assert f"<th>code of the runs</th><td>{listed}</td>" in page
    assert '<p class="note warning"><strong>Mixed study:</strong>' in page
    assert "Code of the runs: " + listed.replace("<br>", "; ") + ".\n" in table
    assert "**Warning:** mixed code" in table and '<p class="note warning"><strong>Warning:</strong> mixed code' in page
    with open(out / "precision.csv", newline="") as f:
        codes = {r["run"]: r["code"] for r in csv.DictReader(f)}
    assert codes[runs[0].name] == f"commit {B}, work tree with uncommitted changes"


@pytest.mark.parametrize("labels, mixed", [
    ([f"commit {A}"] * 3, False),
    ([f"commit {A}", f"commit {A}, work tree with uncommitted changes"], True),
    ([f"commit {A}, work tree with uncommitted changes"], True),
    ([f"commit {A}", report.UNKNOWN_CODE], True),
    ([f"commit {A}", f"commit {B}", f"commit {B}"], True),
])
def test_code_summary_counts_each_version_and_says_when_a_study_is_mixed(labels, mixed):
    ranked, is_mixed = report.code_summary(labels)
    assert is_mixed is mixed
    assert sum(n for _, n in ranked) == len(labels) and {label for label, _ in ranked} == set(labels)
    assert ranked[0][1] == max(labels.count(label) for label in labels)


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=folder, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    folder = tmp_path / "repo"
    folder.mkdir()
    _git(folder, "init", "-q")
    (folder / "code.py").write_text("x = 1\n")
    _git(folder, "add", "code.py")
    _git(folder, "commit", "-q", "-m", "one")
    return folder


def test_git_state_is_the_commit_and_whether_a_tracked_file_changed(repo, tmp_path):
    head = _git(repo, "rev-parse", "HEAD")
    assert runfolder.git_state(repo) == {"git_commit": head, "git_dirty": False}
    (repo / "notes.txt").write_text("untracked\n")  # not the code that ran: not dirty
    assert runfolder.git_state(repo) == {"git_commit": head, "git_dirty": False}
    (repo / "code.py").write_text("x = 2\n")
    assert runfolder.git_state(repo) == {"git_commit": head, "git_dirty": True}
    plain = tmp_path / "plain"
    plain.mkdir()
    assert runfolder.git_state(plain) == {"git_commit": None, "git_dirty": None}


def test_a_run_records_the_commit_of_the_code_it_ran(repo, tmp_path, monkeypatch):
    monkeypatch.setattr(runfolder, "CODE_FOLDER", repo)
    runfolder.code_version.cache_clear()
    (repo / "code.py").write_text("x = 3\n")  # a tracked file changed before the run
    try:
        finetune.main(finetune_args("sst", tmp_path / "run", "--epochs", "1", "--max-eval", "4", "--max-train", "8"))
    finally:
        runfolder.code_version.cache_clear()
    code = json.loads((tmp_path / "run" / "config.json").read_text())["fingerprint"]["code"]
    assert code["git_commit"] == _git(repo, "rev-parse", "HEAD") and code["git_dirty"] is True
    assert code["package"] is not None
