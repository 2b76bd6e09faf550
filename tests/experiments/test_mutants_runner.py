"""`runner.in_subprocess` as a run's steps meet it, with a small child (tests/experiments/child_stand_in.py) in
place of finetune: what reaches the log and the console, the child's PYTHONPATH and parent-death signal, the set a
stop reads, and a child stopped when its parent gives up on it; then the run folder's checks: when a folder counts
as finished, the inputs compared before a finished run is reused (`check_inputs`), the settings compared
(`prepare_run`), and what `execute` hands on and notes. Found untested by
`tools/mutate.py --auto experiments/runner.py` (docs/testing.md, "Automated mutants"). Hashes are worked out here
with hashlib, not with the code's own fingerprint."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys

import pytest

from app import runmodel
from app.cli import settings_of
from experiments import runner
from experiments.sweeps import REPO, ZERO_SHOT_QUORA, Evaluation, Run
from minigpt2.errors import UserError
from tests.experiments.test_experiments import sst

CHILD = "tests.experiments.child_stand_in"
LINUX = sys.platform.startswith("linux")


class Seen(set):
    """A `live` set that remembers what was added."""

    def __init__(self) -> None:
        super().__init__()
        self.added: list = []

    def add(self, item) -> None:
        self.added.append(item)
        super().add(item)


def test_a_child_s_output_goes_to_its_log_and_the_console_as_printed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    log = tmp_path / "a" / "b" / "run.log"  # its folders made as needed
    live = Seen()
    runner.in_subprocess(runner.Step(CHILD, ("ok", "0"), print), log, live=live)
    child_lines = ["to stdout", "  padded  ", "value X", "to stderr",  # stderr in the same stream, in order
                   f"PYTHONPATH={REPO}{os.pathsep}/elsewhere"] + (["PDEATHSIG=15"] if LINUX else [])
    assert log.read_text(encoding="utf-8").splitlines() == [f"$ {sys.executable} -m {CHILD} ok 0"] + child_lines
    assert capsys.readouterr().out.splitlines() == child_lines  # echoed by default, each line once, as printed
    assert len(live.added) == 1 and isinstance(live.added[0], subprocess.Popen) and not live  # held while it ran


def test_a_failed_child_is_a_failed_run_and_a_quiet_one_echoes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PYTHONPATH", raising=False)
    log = tmp_path / "run.log"
    with pytest.raises(runner.RunFailed, match=f"^{CHILD} exited with code 3; see {log}$"):
        runner.in_subprocess(runner.Step(CHILD, ("ok", "3"), print), log, echo=False)
    assert capsys.readouterr().out == ""
    assert f"PYTHONPATH={REPO}" in log.read_text(encoding="utf-8").splitlines()  # only the repository


def test_a_child_is_stopped_when_its_parent_gives_up_on_it(tmp_path, monkeypatch):
    """Ctrl-C while the child's output is read (here: as its first line is echoed): the child, which would wait a
    minute, is terminated before the interrupt goes on, and no longer held."""
    def interrupted(line):
        raise KeyboardInterrupt
    monkeypatch.setattr(runner.tqdm, "write", interrupted)
    live = Seen()
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.in_subprocess(runner.Step(CHILD, ("wait", "0"), print), tmp_path / "run.log", live=live)
        proc = live.added[0]
        assert proc.poll() == -signal.SIGTERM and not live
    finally:
        for proc in live.added:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_the_plan_names_each_missing_follow_up_in_order(tmp_path):
    """Two follow-ups on a run not started: ' + a + b'; once b's output is there, a only; both there, nothing."""
    a = Evaluation("a", ZERO_SHOT_QUORA.settings, "a.json")
    b = Evaluation("b", ZERO_SHOT_QUORA.settings, "b.json")
    run = Run("r0", sst(), (a, b))
    assert runner.plan([run], tmp_path) == [(run, "run + a + b")]
    (tmp_path / "r0").mkdir()
    (tmp_path / "r0" / "b.json").write_text("{}")
    assert runner.plan([run], tmp_path) == [(run, "run + a")]
    (tmp_path / "r0" / "a.json").write_text("{}")
    assert runner.plan([run], tmp_path) == [(run, "run")]


# ---------------------------------------------------------------------------------------------- the run folder

def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_finished(run_dir, metrics=None, config=True, files=("dev.csv", "test.csv")):
    """The files a finished finetune leaves, as far as `is_finished` looks (each part can be left out)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if config:
        (run_dir / "config.json").write_text(json.dumps({"settings": {}}))
    for name in files:
        (run_dir / name).write_text("id\n")
    m = {"dev": {"accuracy": 0.5}, "dev_predictions": "dev.csv", "test_predictions": "test.csv"}
    (run_dir / "metrics.json").write_text(json.dumps(m if metrics is None else metrics))


def test_a_run_is_finished_only_with_its_final_metrics_its_config_and_both_prediction_files(tmp_path):
    ok = {"dev": {"accuracy": 0.5}, "dev_predictions": "dev.csv", "test_predictions": "test.csv"}
    write_finished(tmp_path / "whole")
    assert runner.is_finished(tmp_path / "whole") and runner.is_finished(str(tmp_path / "whole"))  # str too
    cases = {
        "nothing": None,
        "stopped": dict(ok, stopped_after_epoch=1),  # stopped midway, dev figures and files there
        "no-dev": {k: v for k, v in ok.items() if k != "dev"},
        "no-config": "config",
        "no-dev-file": ("test.csv",),
        "no-test-file": ("dev.csv",),
        "a-number": dict(ok, test_predictions=3),
    }
    for name, case in cases.items():
        run_dir = tmp_path / name
        if case is None:
            run_dir.mkdir()
        elif case == "config":
            write_finished(run_dir, config=False)
        elif isinstance(case, tuple):
            write_finished(run_dir, files=case)
        else:
            write_finished(run_dir, metrics=case)
        assert not runner.is_finished(run_dir), name
    (tmp_path / "whole" / "config.json").write_text("[1]")  # not a JSON object: not finetune's
    assert not runner.is_finished(tmp_path / "whole")
    assert runner.read_metrics(tmp_path / "no-dev") == {k: v for k, v in ok.items() if k != "dev"}
    assert runner.read_metrics(tmp_path / "nothing") is None


def test_a_placement_reads_as_its_device_and_threads_or_the_runs_own():
    assert str(runner.Placement()) == "its device, its thread(s)"
    assert str(runner.Placement("cuda:1", 4)) == "cuda:1, 4 thread(s)"


def test_the_data_folder_is_the_runs_own_else_the_environments_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINIGPT2_DATA_DIR", str(tmp_path / "env"))
    assert runner.data_folder(settings_of({"data.task": "sst", "paths.data_dir": "mine"})) == tmp_path / "mine"
    assert runner.data_folder(settings_of({"data.task": "sst"})) == tmp_path / "env"


class Weights:
    """`base_weights_file` as check_inputs calls it: records (model, offline); returns `path`, or raises."""

    def __init__(self, path):
        self.path, self.calls = path, []

    def __call__(self, model, offline=False):
        self.calls.append((model, offline))
        if self.path is None:
            raise UserError(f"{model}: not found offline")
        return self.path


def fingerprinted(run_dir, weights: bytes | None, data: dict[str, bytes], weights_file=None):
    """A finished run's config.json whose fingerprint records these bytes (hashed here)."""
    base = None if weights is None else {"file": str(weights_file), "sha256": sha(weights)}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps({"settings": {}, "fingerprint": {
        "settings": {}, "base_weights": base, "data": {k: sha(v) for k, v in data.items()}, "code": "x"}}))


SST = {"ids-sst-dev.csv": b"dev\n", "ids-sst-test-student.csv": b"test\n", "ids-sst-train.csv": b"train\n"}


def sst_inputs(tmp_path, monkeypatch, weights_present=True):
    data = tmp_path / "data"
    data.mkdir()
    for name, content in SST.items():
        (data / name).write_bytes(content)
    w = tmp_path / "base" / "model.safetensors"
    w.parent.mkdir()
    w.write_bytes(b"w1")
    fake = Weights(w if weights_present else None)
    monkeypatch.setattr(runmodel, "base_weights_file", fake)
    run = Run("r0", settings_of({"data.task": "sst", "paths.data_dir": str(data), "model.model": "gpt2"}))
    return data, w, fake, run


def test_a_finished_run_is_reused_only_on_the_inputs_it_recorded(tmp_path, monkeypatch):
    data, w, fake, run = sst_inputs(tmp_path, monkeypatch)
    run_dir = tmp_path / "runs" / "r0"
    fingerprinted(run_dir, b"w1", SST, w)
    runner.check_inputs(run_dir, run)  # the same bytes: reused
    assert fake.calls == [("gpt2", True)]  # never fetched: looked up offline

    (data / "ids-sst-dev.csv").write_bytes(b"dev 2\n")
    with pytest.raises(runner.RunFolderConflict) as e:
        runner.check_inputs(run_dir, run)
    assert str(e.value) == (f"--resume {run_dir}: the run's inputs changed: data ids-sst-dev.csv: "
                            f"{sha(b'dev' + bytes([10]))!r} -> {sha(b'dev 2' + bytes([10]))!r}\n"
                            f"Delete {run_dir} to run it again on the new inputs, or restore them.")
    (data / "ids-sst-dev.csv").write_bytes(SST["ids-sst-dev.csv"])
    (data / "ids-sst-train.csv").unlink()  # no longer on this machine: not compared
    runner.check_inputs(run_dir, run)

    w.write_bytes(b"w2")  # other base weights under the same name
    with pytest.raises(runner.RunFolderConflict) as e:
        runner.check_inputs(run_dir, run)
    assert str(e.value).startswith(f"--resume {run_dir}: the run's inputs changed: base weights {w} sha256 "
                                   f"{sha(b'w1')} -> {w} sha256 {sha(b'w2')}\nDelete {run_dir} ")


def test_a_fingerprint_without_data_entries_names_every_data_file_as_new(tmp_path, monkeypatch):
    """A config.json edited by hand (its fingerprint's "data" gone): a conflict line, not a crash."""
    data, w, fake, run = sst_inputs(tmp_path, monkeypatch)
    run_dir = tmp_path / "runs" / "r0"
    fingerprinted(run_dir, b"w1", SST, w)
    config = json.loads((run_dir / "config.json").read_text())
    del config["fingerprint"]["data"]
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(runner.RunFolderConflict) as e:
        runner.check_inputs(run_dir, run)
    assert str(e.value).startswith(f"--resume {run_dir}: the run's inputs changed: " + "; ".join(
        f"data {name}: None -> {sha(content)!r}" for name, content in SST.items()) + "\n")


def test_base_weights_no_longer_here_are_not_compared_nor_is_a_run_without_a_fingerprint(tmp_path, monkeypatch):
    data, w, fake, run = sst_inputs(tmp_path, monkeypatch, weights_present=False)
    run_dir = tmp_path / "runs" / "r0"
    fingerprinted(run_dir, b"some other weights", SST, w)
    runner.check_inputs(run_dir, run)  # the weights cannot be found offline: the recorded ones stand
    (data / "ids-sst-dev.csv").write_bytes(b"changed")
    with pytest.raises(runner.RunFolderConflict, match=r"inputs changed: data ids-sst-dev\.csv: "):
        runner.check_inputs(run_dir, run)  # the data still is compared
    (run_dir / "config.json").write_text(json.dumps({"settings": {}}))  # a run made before fingerprints
    runner.check_inputs(run_dir, run)
    (run_dir / "config.json").unlink()  # none at all
    runner.check_inputs(run_dir, run)


def test_a_synthetic_file_is_compared_while_it_is_here(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    sonnet = {"TRUE_sonnets_held_out_dev.txt": b"a", "sonnets.txt": b"b", "sonnets_held_out.txt": b"c",
              "sonnets_held_out_dev.txt": b"d"}
    for name, content in sonnet.items():
        (data / name).write_bytes(content)
    synthetic = tmp_path / "flash.jsonl"
    synthetic.write_bytes(b"s1")
    monkeypatch.setattr(runmodel, "base_weights_file", Weights(None))
    run = Run("r0", settings_of({"data.task": "sonnet", "paths.data_dir": str(data),
                                 "data.synthetic.path": str(synthetic)}))
    run_dir = tmp_path / "r0"
    fingerprinted(run_dir, None, {**sonnet, "flash.jsonl": b"s1"})
    runner.check_inputs(run_dir, run)
    synthetic.write_bytes(b"s2")
    with pytest.raises(runner.RunFolderConflict, match=rf"inputs changed: data flash\.jsonl: '{sha(b's1')}' -> "
                                                       rf"'{sha(b's2')}'\nDelete "):
        runner.check_inputs(run_dir, run)
    synthetic.unlink()  # gone: not compared
    runner.check_inputs(run_dir, run)


def test_a_folder_of_other_settings_is_named_with_every_difference_and_a_finished_one_is_checked(tmp_path,
                                                                                                  monkeypatch):
    s = sst(optim__seed=0, optim__epochs=3)
    run_dir = tmp_path / "r0"
    assert runner.prepare_run(Run("r0", s), tmp_path) is False  # nothing there
    run_dir.mkdir()
    (run_dir / "experiment.json").write_text(json.dumps({"name": "r0", **runner.runfolder.settings_record(s)}))
    assert runner.prepare_run(Run("r0", s), tmp_path) is False  # its own, not finished
    other = Run("r0", sst(optim__seed=0, optim__epochs=2, optim__lr=0.1))
    with pytest.raises(runner.RunFolderConflict) as e:
        runner.prepare_run(other, tmp_path)
    assert str(e.value) == (f"{run_dir} holds a run made with other settings:\n  optim.epochs: 3 -> 2\n"
                            "  optim.lr: 1e-05 -> 0.1\nDelete that folder or choose another --runs-dir.")
    write_finished(run_dir)
    assert runner.prepare_run(Run("r0", s), tmp_path) is True  # finished, no fingerprint to compare
    seen = []
    monkeypatch.setattr(runner, "check_inputs", lambda d, r: seen.append((d, r)))
    runner.prepare_run(Run("r0", s), tmp_path)
    assert seen == [(run_dir, Run("r0", s))]  # the finished folder's inputs are checked for this run


def test_execute_makes_the_folders_notes_what_it_did_and_hands_on_each_step(tmp_path):
    """A run under a runs folder not made yet: started, its follow-up evaluated, both noted in the result given;
    run again, nothing (and no result given: none needed)."""
    calls = []

    def executor(step, log):
        calls.append((step.module, step.argv, log))
        run_dir = tmp_path / "a" / "b" / "r0"
        if step.module == "minigpt2.finetune":
            write_finished(run_dir)
        else:
            (run_dir / ZERO_SHOT_QUORA.output).write_text("{}")

    root = tmp_path / "a" / "b"
    result = runner.SweepResult()
    runner.execute(Run("r0", sst(), (ZERO_SHOT_QUORA,)), root, executor, result=result)
    assert (result.started, result.evaluated) == (["r0"], ["r0:zero_shot_quora"])
    log = root / "r0" / "run.log"
    assert calls == [("minigpt2.finetune", ("--settings", str(root / "r0" / "settings.json")), log),
                     ("minigpt2.evaluate", ("--settings", str(root / "r0" / "zero_shot_quora.settings.json")), log)]
    record = json.loads((root / "r0" / "experiment.json").read_text())
    assert (record["name"], record["data_dir"]) == ("r0", str(runner.data_folder(sst())))
    runner.execute(Run("r0", sst(), (ZERO_SHOT_QUORA,)), root, executor)
    assert len(calls) == 2
