"""Sweeps beyond one run at a time: `--jobs N` on this machine gives the rows a sequential sweep gives, a SIGTERM
stops it cleanly and the sweep resumes to the same rows; the launcher flags' errors; the longest-first plan.
The Ray launcher is in test_experiments_ray.py."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import __main__ as cli
from experiments import launch, runner
from experiments.estimate import schedule_seconds
from experiments.sweeps import TINY_TOKENIZER_DIR
from app.runfolder import read_settings_file
from tests import ROOT
from tests.experiments.test_experiments import FakeFinetune, sweep, three_runs

SWEEP = "lora-targets"  # two runs under --tiny
# What differs between two sweeps of the same runs by design: where the folders are, how long they took, and
# how each run executed (its device and thread count, recorded in its config.json).
HOW = {"run_dir", "arg_out_dir", "wall_s", "arg_threads", "arg_device"}


def tiny_argv(tmp: Path, *extra: str) -> list[str]:
    """The tiny sweep, every run on one thread: a run's results depend on its thread count (the order of its
    float sums), never on how many runs go beside it, so sweeps compared here all use one."""
    return [SWEEP, "--tiny", "--runs-dir", str(tmp / "runs"), "--out", str(tmp / "results"), "--no-progress",
            "--bootstrap", "50", "--threads", "1", *extra]


def rows(tmp: Path) -> list[dict[str, str]]:
    with open(tmp / "results" / f"{SWEEP}.csv", newline="") as f:
        return list(csv.DictReader(f))


def results(tmp: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k not in HOW} for row in rows(tmp)]


@pytest.fixture(scope="module")
def sequential(tmp_path_factory) -> list[dict[str, str]]:
    """The reference: the tiny sweep run one after the other, in this process (--tiny's default)."""
    tmp = tmp_path_factory.mktemp("sequential")
    with pytest.MonkeyPatch.context() as mp:  # as conftest's autouse fixture sets it for every test
        mp.setenv("MINIGPT2_TOKENIZER_DIR", os.environ.get("MINIGPT2_TOKENIZER_DIR", str(TINY_TOKENIZER_DIR)))
        assert cli.main(tiny_argv(tmp)) == 0
    got = results(tmp)
    assert [r["status"] for r in got] == ["done", "done"]
    return got


def test_two_jobs_give_the_sequential_rows(sequential, tmp_path):
    assert cli.main(tiny_argv(tmp_path, "--jobs", "2", "--devices", "cpu")) == 0
    got = results(tmp_path)
    assert got == sequential, [{k: (x.get(k), y.get(k)) for k in {*x, *y} if x.get(k) != y.get(k)}
                               for x, y in zip(got, sequential)]
    for row in rows(tmp_path):  # each ran on one of the two cores, and says so
        assert row["arg_threads"] == "1" and row["arg_device"] == "cpu"
        log = Path(row["run_dir"]) / "run.log"
        assert f"-m minigpt2.finetune --settings {row['run_dir']}/settings.json" in log.read_text()
        handed = read_settings_file(Path(row["run_dir"]) / "settings.json").hardware
        assert (handed.device, handed.threads) == ("cpu", 1)


def finetune_children(runs: Path) -> list[int]:
    """Processes (of anyone) whose command line names the sweep's run folders: the finetune children."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(runs) in cmd and "minigpt2.finetune" in cmd:
            pids.append(int(proc.name))
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to find the children")
def test_a_stopped_parallel_sweep_stops_its_runs_and_resumes_to_the_same_rows(sequential, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    driver = subprocess.Popen([sys.executable, "-m", "experiments", *tiny_argv(tmp_path, "--jobs", "2")],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    runs = tmp_path / "runs" / SWEEP
    deadline = time.time() + 120
    while not list(runs.glob("*/config.json")) and driver.poll() is None and time.time() < deadline:
        time.sleep(0.1)  # both children are up once one has written its config.json
    assert driver.poll() is None, driver.communicate()[0][-3000:]
    driver.send_signal(signal.SIGTERM)
    out = driver.communicate(timeout=60)[0]
    assert driver.returncode == 130, out[-3000:]
    assert "sweep stopped: finished runs are kept" in out and "Traceback" not in out.split("sweep stopped")[1]
    assert finetune_children(tmp_path / "runs") == []  # no run goes on writing after the sweep stopped
    assert not all(runner.is_finished(d) for d in runs.iterdir())
    assert cli.main(tiny_argv(tmp_path)) == 0  # the same sweep again (one at a time here) picks up what is left
    assert results(tmp_path) == sequential


def test_a_failed_run_is_reported_and_the_others_finish(tmp_path):
    fake = FakeFinetune(fail={"r1"})
    result = launch.Local(fake, jobs=2, devices=["cpu"], threads=1, progress=False).launch(three_runs(), tmp_path)
    assert list(result.failed) == ["r1"] and "out of memory" in result.failed["r1"]
    assert sorted(result.started) == ["r0", "r1", "r2"]
    assert runner.is_finished(tmp_path / "r0") and runner.is_finished(tmp_path / "r2")
    assert {(s.hardware.device, s.hardware.threads) for s in fake.handed.values()} == {("cpu", 1)}
    again = launch.Local(FakeFinetune(), jobs=2, devices=["cpu"], threads=1, progress=False).launch(three_runs(),
                                                                                                   tmp_path)
    assert again.started == ["r1"] and sorted(again.skipped) == ["r0", "r2"]


def test_two_runs_go_at_once_each_on_its_own_device(tmp_path):
    import threading

    both_started = threading.Barrier(2, timeout=30)  # each run waits until the other has started too
    fake = FakeFinetune()

    def side_by_side(step, log):
        both_started.wait()
        fake(step, log)
    launch.Local(side_by_side, jobs=2, devices=["cpu", "cpu:1"], threads=1, progress=False).launch(three_runs()[:2],
                                                                                                  tmp_path)
    devices = sorted(s.hardware.device for s in fake.handed.values())
    assert devices == ["cpu", "cpu:1"]  # two slots at once: one on each device, round-robin


def test_runs_start_longest_first_and_the_schedule_estimate():
    runs = three_runs()
    cost = {"r0": 1.0, "r1": 5.0, "r2": 3.0}
    assert [r.name for r in launch.longest_first(runs, lambda r: cost[r.name])] == ["r1", "r2", "r0"]
    assert schedule_seconds([5, 3, 1], 1) == 9
    assert schedule_seconds([5, 3, 1], 2) == 5  # 5 | 3 + 1
    assert schedule_seconds([3, 3, 2, 2, 2], 2) == 7  # the greedy plan (3+2+2 | 3+2); the best is 6
    assert schedule_seconds([4, 1], 8) == 4 and schedule_seconds([], 4) == 0


def test_dry_run_with_jobs_prints_the_wall_time_for_that_many_workers(capsys):
    assert cli.main([SWEEP, "--tiny", "--dry-run", "--jobs", "4"]) == 0
    out = capsys.readouterr().out
    assert "on 4 workers (CPU estimate), longest runs first: ~" in out and "the longest run alone" in out


@pytest.mark.parametrize("argv, message", [
    (["--jobs", "0"], r"--jobs 0: expected an integer >= 1"),
    (["--jobs", "2", "--isolation", "in-process"], r"--jobs 2 runs each run in its own subprocess"),
    (["--devices", "cuda:7"], r"--devices cuda:7: "),
    (["--address", "10.0.0.1:6379"], r"--address is a --launcher ray setting; add --launcher ray"),
    (["--launcher", "ray", "--devices", "cpu"], r"--devices is for --launcher local"),
])
def test_launcher_flags_are_checked_first(argv, message, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "make_launcher", lambda *a: pytest.fail("a sweep started"))
    monkeypatch.setitem(sys.modules, "ray", object())  # the Ray checks come after the flag checks
    with pytest.raises(SystemExit, match=f"^error: {message}"):
        cli.main(tiny_argv(tmp_path, *argv))


def test_ray_launcher_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: `import ray` raises ImportError
    with pytest.raises(SystemExit, match=r'^error: --launcher ray needs Ray, .*pip install -e "\.\[cluster\]"$'):
        cli.main(tiny_argv(tmp_path, "--launcher", "ray"))
    assert not (tmp_path / "runs").exists()


def test_a_run_that_died_before_its_first_epoch_is_resumed_from_its_start(tmp_path):
    """Its folder holds finetune's config.json but no saved epoch: finetune is asked to continue it (`--resume`
    then starts at epoch 1), never to overwrite it."""
    run = three_runs()[0]
    (tmp_path / run.name).mkdir()
    (tmp_path / run.name / "config.json").write_text(json.dumps({"settings": {}, "args": {}}))
    fake = FakeFinetune()
    assert sweep([run], tmp_path, fake).started == ["r0"]
    assert fake.handed["r0"].run.resume and not fake.handed["r0"].run.overwrite
