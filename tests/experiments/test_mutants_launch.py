"""The launchers' behaviours that `tools/mutate.py --auto experiments/launch.py` found untested (docs/testing.md,
"Automated mutants"), with fakes: no training, no Ray cluster."""

from __future__ import annotations

import signal
import sys
import threading
import types

import pytest

from experiments import launch, runner
from experiments.sweeps import Run
from tests.experiments.test_experiments import FakeFinetune, sst, three_runs
from tests.experiments.test_launch_plumbing import Child, Recorded, out_lines


def test_a_run_a_worker_picked_up_as_the_sweep_stopped_is_listed_by_name(tmp_path, monkeypatch, capsys):
    """Two jobs, three runs (9, 8 and 1 tokens: r0 and r1 first, r2 queued). r1 ends at once and its worker picks
    up r2, but is slow to start it (held at the start of the worker's call until the stop is over). Ctrl-C comes
    while r0 runs: r0 is stopped, r2, no longer queued and so not cancelled, never starts; both are listed by name
    as interrupted, r1 is done."""
    monkeypatch.setattr(launch, "SweepResult", Recorded)
    monkeypatch.setattr(launch, "run_workload", lambda run: types.SimpleNamespace(
        train_tokens={"r0": 9, "r1": 8, "r2": 1}[run.name]))
    fake = FakeFinetune()
    r2_picked, stop_over, fired = threading.Event(), threading.Event(), []

    def ctrl_c_once(signum, frame):  # Ctrl-C the first time; a signal sent again only wakes the main thread
        if not fired:
            fired.append(signum)
            raise KeyboardInterrupt

    def slow_start(frame, event, arg):  # the trace function of the sweep's worker threads
        if event == "call" and frame.f_code.co_name == "work" and getattr(frame.f_locals.get("run"), "name",
                                                                          None) == "r2":
            r2_picked.set()
            assert stop_over.wait(30)
        return None

    def child(step, log, echo=True, live=None):
        if log.parent.name != "r0":
            fake(step, log)
            return
        proc = Child()
        live.add(proc)
        assert r2_picked.wait(30), "r2 was not picked up"
        for _ in range(30):  # Ctrl-C reaches the main thread (again, should it come just before the main thread
            signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)  # went back to its wait: one stop)
            if proc.stopped.wait(1):
                break
        assert proc.stopped.is_set(), "the child was not terminated"
        live.discard(proc)
        stop_over.set()
        raise runner.RunFailed("terminated")
    monkeypatch.setattr(launch, "in_subprocess", child)
    runs = [Run(f"r{i}", sst(optim__seed=i)) for i in range(3)]
    previous = signal.signal(signal.SIGUSR1, ctrl_c_once)
    threading.settrace(slow_start)
    try:
        with pytest.raises(KeyboardInterrupt):
            launch.Local(child, jobs=2, devices=["cpu"], threads=1, progress=False).launch(runs, tmp_path)
    finally:
        threading.settrace(None)
        signal.signal(signal.SIGUSR1, previous)
        stop_over.set()
    result = Recorded.last
    assert result.interrupted in (["r0", "r2"], ["r2", "r0"]) and sorted(result.started) == ["r0", "r1"]
    assert not result.failed and not result.skipped and fake.started() == ["r1"]
    lines = out_lines(capsys)
    assert "[queued 1, running 0, done 1, failed 0] stopped r0" in lines and not any("r2" in x for x in lines)


def test_the_bar_follows_the_terminal_s_width_as_it_changes(tmp_path, monkeypatch, capsys):
    """A terminal 120 columns wide, narrowed to 50 while the second run runs: the bar drawn at the start fills the
    120 columns, every state drawn after the change fits in 50."""
    import tqdm.std

    width = [120]
    monkeypatch.setattr(tqdm.std, "_screen_shape_wrapper", lambda: lambda fp: (width[0], 20))
    fake = FakeFinetune()

    def narrowed_in_r1(step, log):
        if log.parent.name == "r1":
            width[0] = 50
        fake(step, log)
    launch.Local(narrowed_in_r1, progress=True).launch(three_runs(), tmp_path / "sweep-x")
    states = [s for s in capsys.readouterr().err.replace("\n", "\r").split("\r") if s]
    assert len(states[0]) == 120 and states[0].startswith("sweep sweep-x:   0%|")
    assert states[-1].startswith("sweep sweep-x: 100%|") and all(len(s) <= 50 for s in states[-2:])
