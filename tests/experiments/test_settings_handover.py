"""How a sweep hands a run and its follow-up evaluation their settings (experiments/runner.py), without data or a
model: each step travels as `python -m <module> --settings RUN_DIR/<file>` and, in this process, as a call given
the very settings that file holds; both steps log to RUN_DIR/run.log; experiment.json records the run's name and
settings; a record that is not one, or an evaluation that wrote nothing, is said in words naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app import evaluate, finetune
from app.cli import settings_of
from app.runfolder import read_settings_file
from app.settings import EvaluateSettings, HardwareSettings, RunSettings
from experiments import runner
from experiments.sweeps import ZERO_SHOT_QUORA, Run


def finish(run_dir: Path, settings: RunSettings) -> None:
    """What a finished finetune leaves in `run_dir` (as far as `runner.is_finished` looks)."""
    (run_dir / "config.json").write_text(json.dumps({"settings": settings.to_dict()}))
    for name in ("dev.csv", "test.csv"):
        (run_dir / name).write_text("id \t Predicted_Sentiment \n")
    (run_dir / "metrics.json").write_text(json.dumps({"dev": {"accuracy": 0.5}, "dev_predictions": "dev.csv",
                                                      "test_predictions": "test.csv"}))


@pytest.fixture
def in_process(monkeypatch):
    """Every step called here (`Step.call`), finetune's and evaluate's run replaced by recorders that write the
    files a finished step leaves; yields (the steps as (module, argv, log), the settings each call was given)."""
    steps, given = [], []

    def fake_finetune(settings):
        given.append(settings)
        finish(Path(settings.run.out_dir), settings)

    def fake_evaluate(settings):
        given.append(settings)
        Path(settings.run_dir, ZERO_SHOT_QUORA.output).write_text("{}")

    monkeypatch.setattr(finetune, "run", fake_finetune)
    monkeypatch.setattr(evaluate, "run", fake_evaluate)

    def executor(step: runner.Step, log: Path) -> None:
        steps.append((step.module, step.argv, log))
        step.call()
    yield executor, steps, given


def test_each_step_is_called_with_the_settings_its_file_hands_over_and_logs_to_the_run_log(tmp_path, in_process):
    executor, steps, given = in_process
    s = settings_of({"data.task": "sst", "optim.seed": 5})
    runner.execute(Run("r0", s, (ZERO_SHOT_QUORA,)), tmp_path, executor, runner.Placement(device="cpu", threads=2))
    run_dir = tmp_path / "r0"
    assert [(m, a) for m, a, _ in steps] == [
        ("minigpt2.finetune", ("--settings", str(run_dir / "settings.json"))),
        ("minigpt2.evaluate", ("--settings", str(run_dir / "zero_shot_quora.settings.json")))]
    assert [log for *_, log in steps] == [run_dir / "run.log"] * 2
    # in this process, each call gets exactly what `python -m <module> --settings FILE` would read
    assert given == [read_settings_file(run_dir / "settings.json"),
                     read_settings_file(run_dir / "zero_shot_quora.settings.json", EvaluateSettings)]
    assert given[0].run.out_dir == str(run_dir) and not given[0].run.resume
    assert (given[0].hardware.device, given[0].hardware.threads, given[0].optim.seed) == ("cpu", 2, 5)
    assert given[1] == EvaluateSettings(run_dir=str(run_dir), task="quora", zero_shot=True,
                                        hardware=HardwareSettings(device="cpu"))
    record = json.loads((run_dir / "experiment.json").read_text())
    assert (record["name"], record["schema"]) == ("r0", 2)
    assert RunSettings.from_dict(record["settings"]) == s  # the sweep's settings, not where it was placed


def test_finetune_in_process_checks_the_environment_first_and_ctrl_c_stops_the_sweep(tmp_path, monkeypatch):
    s = settings_of({"data.task": "sst", "data.test_references": str(tmp_path / "gone.csv")})
    monkeypatch.setattr(finetune, "run", lambda settings: pytest.fail("ran without its test references"))
    with pytest.raises(runner.RunFailed, match=r"^minigpt2.finetune exited: error: --test-references .*gone.csv: "
                                               "file not found"):
        runner.in_process(runner.Step("minigpt2.finetune", (), lambda: runner._finetune(s)), tmp_path / "log")

    def interrupted(settings):
        raise finetune.Interrupted(tmp_path)
    monkeypatch.setattr(finetune, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner._finetune(settings_of({"data.task": "sst"}))


def test_an_evaluation_that_writes_nothing_is_a_failure_naming_the_missing_file(tmp_path, in_process):
    executor, steps, _ = in_process
    runner.execute(Run("r0", settings_of({"data.task": "sst"})), tmp_path, executor)

    def silent(step, log):
        steps.append((step.module, step.argv, log))
    with pytest.raises(RuntimeError) as e:
        runner.execute(Run("r0", settings_of({"data.task": "sst"}), (ZERO_SHOT_QUORA,)), tmp_path, silent)
    assert str(e.value) == (f"minigpt2.evaluate returned but wrote no {tmp_path / 'r0' / ZERO_SHOT_QUORA.output}")


def test_a_settings_record_is_read_by_its_schema_and_a_bad_one_is_named(tmp_path):
    run_dir = tmp_path / "r0"
    run_dir.mkdir()
    s = settings_of({"data.task": "sst", "optim.seed": 3})
    record = run_dir / "experiment.json"
    # a record of this version: its settings count, whatever else it holds
    record.write_text(json.dumps({"name": "r0", "schema": 2, "settings": s.to_dict(), "args": ["--task", "quora"]}))
    assert runner.recorded_settings(run_dir) == s
    record.write_text(json.dumps({"name": "r0", "args": ["--task", "quora", "--seed", "4"]}))  # before records
    assert runner.recorded_settings(run_dir).data.task == "quora"
    for content, why in (("{", "JSONDecodeError: Expecting property name"), ('{"name": "r0"}', "KeyError: 'settings'")):
        record.write_text(content)
        with pytest.raises(runner.RunFolderConflict) as e:
            runner.recorded_settings(run_dir)
        assert str(e.value).startswith(f"{record}: not a record this version can read ({why}")
        assert str(e.value).endswith(f"); delete {run_dir} or choose another --runs-dir")
