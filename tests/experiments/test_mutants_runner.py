"""`runner.in_subprocess` as a run's steps meet it, with a small child (tests/experiments/child_stand_in.py) in
place of finetune: what reaches the log and the console, the child's PYTHONPATH and parent-death signal, the set a
stop reads, and a child stopped when its parent gives up on it. Found untested by
`tools/mutate.py --auto experiments/runner.py` (docs/testing.md, "Automated mutants")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from experiments import runner
from experiments.sweeps import REPO, ZERO_SHOT_QUORA, Evaluation, Run
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
