"""The launchers' plumbing with fakes, in seconds: which run goes where (device, threads), in which order, what is
printed as runs start and end, what a stop leaves behind, what comes back from a Ray task (a fake `ray` module:
no cluster), which runs a second pass skips; the dry run's figures handed on to the estimate, and the launcher
flags' error lines. The real subprocesses and the real Ray cluster are in test_experiments_parallel.py and
test_experiments_ray.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from experiments import __main__ as cli
from experiments import launch, runner
from experiments.estimate import Workers
from experiments.runner import Placement
from minigpt2.errors import UserError
from experiments.sweeps import ZERO_SHOT_QUORA, Run
from tests.experiments.test_experiments import FakeFinetune, sst, three_runs


def out_lines(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


def finish(root: Path, *names: str) -> None:
    """Run these of `three_runs()` to finished in `root` (a first pass), so that a second pass finds them."""
    runs = [r for r in three_runs() if r.name in names]
    assert launch.Local(FakeFinetune(), progress=False).launch(runs, root).started == list(names)


# ---------------------------------------------------------------------------------------------- one machine

def test_a_sequential_pass_prints_each_change_with_the_counts_and_skips_the_finished(tmp_path, capsys):
    finish(tmp_path, "r0")
    capsys.readouterr()
    fake = FakeFinetune(fail={"r1"})
    result = launch.Local(fake, devices=["cpu"], threads=2, progress=False).launch(three_runs(), tmp_path)
    assert result.skipped == ["r0"] and result.started == ["r1", "r2"] and list(result.failed) == ["r1"]
    assert result.failed["r1"] == "RuntimeError: CUDA out of memory (fake)" and not result.interrupted
    assert out_lines(capsys) == [
        "[queued 1, running 1, done 0, failed 0] start r1 on cpu, 2 thread(s)",
        "[queued 1, running 0, done 0, failed 1] FAILED r1: CUDA out of memory (fake)",
        "[queued 0, running 1, done 0, failed 1] start r2 on cpu, 2 thread(s)",
        "[queued 0, running 0, done 1, failed 1] done r2"]


def test_one_job_keeps_the_sweep_s_order_and_more_start_the_longest_first(tmp_path, monkeypatch):
    """Three runs of 1, 5 and 3 tokens. One job: r0, r1, r2 as declared. Two jobs: the two longest (r1, r2) go
    first, both at once, and the shortest waits for a free slot."""
    tokens = {"r0": 1, "r1": 5, "r2": 3}
    monkeypatch.setattr(launch, "run_workload", lambda run: types.SimpleNamespace(train_tokens=tokens[run.name]))
    order: list[str] = []
    fake = FakeFinetune()

    def record(step, log):
        order.append(log.parent.name)
        fake(step, log)
    launch.Local(record, progress=False).launch(three_runs(), tmp_path / "one")
    assert order == ["r0", "r1", "r2"]

    order.clear()
    first_two = threading.Barrier(2, timeout=30)

    def two_at_once(step, log):
        with lock:
            order.append(log.parent.name)
            first = len(order) <= 2
        if first:
            first_two.wait()
        fake(step, log)
    lock = threading.Lock()
    launch.Local(two_at_once, jobs=2, devices=["cpu"], threads=1, progress=False).launch(three_runs(),
                                                                                        tmp_path / "two")
    assert sorted(order[:2]) == ["r1", "r2"] and order[2] == "r0"


def test_a_run_whose_size_cannot_be_counted_goes_last_among_equals(monkeypatch):
    """Its data not there yet: it counts 0 tokens, as a run of no tokens does, and the tie keeps the sweep's order."""
    def workload(run):
        if run.name == "r1":
            raise OSError("no data yet")
        return types.SimpleNamespace(train_tokens={"r0": 0, "r2": 7}[run.name])
    monkeypatch.setattr(launch, "run_workload", workload)
    assert [r.name for r in launch.longest_first(three_runs())] == ["r2", "r0", "r1"]
    assert [r.name for r in launch.longest_first(three_runs()[:2])] == ["r0", "r1"]


def test_the_run_in_slot_k_goes_to_device_k_mod_n_with_the_cores_split(tmp_path, monkeypatch):
    """Three jobs over two devices, all three at once: slots 0, 1, 2 on cpu, cpu:1, cpu; 7 cores / 3 jobs: 2
    threads each. The log of each run is named in its start line."""
    monkeypatch.setattr(launch, "cpu_count", lambda: 7)
    all_three = threading.Barrier(3, timeout=30)
    fake = FakeFinetune()

    def together(step, log):
        all_three.wait()
        fake(step, log)
    local = launch.Local(together, jobs=3, devices=["cpu", "cpu:1"], progress=False)
    assert local.capacity == 3 and local.threads == 2
    local.launch(three_runs(), tmp_path)
    placed = sorted((s.hardware.device, s.hardware.threads) for s in fake.handed.values())
    assert placed == [("cpu", 2), ("cpu", 2), ("cpu:1", 2)]


def test_start_lines_of_side_by_side_runs_name_their_logs(tmp_path, capsys):
    launch.Local(FakeFinetune(), jobs=2, devices=["cpu"], threads=1, progress=False).launch(three_runs()[:1],
                                                                                           tmp_path)
    assert out_lines(capsys) == [
        f"[queued 0, running 1, done 0, failed 0] start r0 on cpu, 1 thread(s); log {tmp_path / 'r0' / 'run.log'}",
        "[queued 0, running 0, done 1, failed 0] done r0"]


def test_no_device_named_leaves_the_run_s_own(tmp_path, capsys):
    local = launch.Local(FakeFinetune(), progress=False)
    assert local.devices == [None]
    local.launch(three_runs()[:1], tmp_path)
    assert out_lines(capsys)[0] == f"[queued 0, running 1, done 0, failed 0] start r0 on its device, " \
                                   f"{launch.cpu_count()} thread(s)"


def test_side_by_side_subprocesses_are_quiet_and_held_for_a_stop(tmp_path, monkeypatch):
    """Two jobs of the subprocess executor: each child is started with echo off (no interleaved output) and
    registered in the set a stop terminates; one job echoes its run's output as it always did."""
    calls = []
    fake = FakeFinetune()

    def subprocess_stand_in(step, log, echo=True, live=None):
        calls.append((echo, type(live).__name__))
        fake(step, log)
    monkeypatch.setattr(launch, "in_subprocess", subprocess_stand_in)
    launch.Local(subprocess_stand_in, jobs=2, devices=["cpu"], threads=1, progress=False).launch(three_runs()[:2],
                                                                                                tmp_path / "a")
    assert calls == [(False, "set"), (False, "set")]
    calls.clear()
    launch.Local(subprocess_stand_in, jobs=1, progress=False).launch(three_runs()[:1], tmp_path / "b")
    assert calls == [(True, "NoneType")]


def test_another_executor_is_called_as_given_even_side_by_side(tmp_path):
    calls = []
    fake = FakeFinetune()

    def executor(step, log, **kwargs):
        calls.append(kwargs)
        fake(step, log)
    launch.Local(executor, jobs=2, devices=["cpu"], threads=1, progress=False).launch(three_runs()[:2], tmp_path)
    assert calls == [{}, {}]


class Child:
    """Stands in for a finetune child process: runs until terminated."""

    def __init__(self) -> None:
        self.stopped = threading.Event()

    def poll(self):
        return 0 if self.stopped.is_set() else None

    def terminate(self) -> None:
        self.stopped.set()


class Recorded(runner.SweepResult):
    """A SweepResult that keeps itself where a test can read it after the launch raised."""

    last: "Recorded | None" = None

    def __init__(self) -> None:
        super().__init__()
        Recorded.last = self


def ctrl_c(signum, frame):
    raise KeyboardInterrupt


def test_ctrl_c_on_side_by_side_runs_stops_them_and_cancels_the_queued(tmp_path, monkeypatch, capsys):
    """Two of four runs at once; Ctrl-C while they run: both children are terminated, the two queued runs never
    start, and all four are listed as interrupted. r1 finished just as it was stopped: its follow-up evaluation is
    not started (no new child once the sweep is stopping)."""
    monkeypatch.setattr(launch, "SweepResult", Recorded)
    monkeypatch.setattr(launch, "run_workload", lambda run: types.SimpleNamespace(
        train_tokens={"r0": 9, "r1": 8, "r2": 2, "r3": 1}[run.name]))
    fake = FakeFinetune()
    both = threading.Barrier(2, timeout=30)

    def child(step, log, echo=True, live=None):
        assert echo is False and live is not None
        if step.module != "minigpt2.finetune":
            fake(step, log)
            return
        proc = Child()
        live.add(proc)
        both.wait()
        if log.parent.name == "r0":  # Ctrl-C reaches the main thread, waiting on the runs
            signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
        assert proc.stopped.wait(30), "the child was not terminated"
        live.discard(proc)
        if log.parent.name == "r1":  # it had just finished
            fake(step, log)
            return
        raise runner.RunFailed("terminated")
    monkeypatch.setattr(launch, "in_subprocess", child)
    runs = [Run(f"r{i}", sst(optim__seed=i), (ZERO_SHOT_QUORA,)) for i in range(4)]
    previous = signal.signal(signal.SIGUSR1, ctrl_c)
    try:
        with pytest.raises(KeyboardInterrupt):
            launch.Local(child, jobs=2, devices=["cpu"], threads=1, progress=False).launch(runs, tmp_path)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    result = Recorded.last
    assert sorted(result.interrupted) == ["r0", "r1", "r2", "r3"] and result.interrupted[2:] == ["r2", "r3"]
    assert sorted(result.started) == ["r0", "r1"] and not result.failed and not result.evaluated
    assert not result.skipped
    assert [m for m, _ in fake.calls] == ["minigpt2.finetune"]  # r1's finetune only; no evaluation
    lines = out_lines(capsys)
    assert sorted(x.split("] ")[1] for x in lines if "stopped" in x) == ["stopped r0", "stopped r1"]
    assert lines[-1] == "[queued 2, running 0, done 0, failed 0] stopped " + lines[-1].rsplit(" ", 1)[1]


def test_ctrl_c_while_the_runs_are_handed_to_the_pool_stops_the_started_ones(tmp_path, monkeypatch):
    """The Ctrl-C lands while the third of four runs is being handed to the worker threads, the first two already
    running (on a loaded machine the main thread can be that slow): both children are terminated, no worker thread
    is left, the last two never start, and all four are listed as interrupted. Before, the handing-out stood outside
    the `try` that stops the runs: nothing was stopped or recorded (a flaky CI failure of the test above)."""
    monkeypatch.setattr(launch, "SweepResult", Recorded)
    monkeypatch.setattr(launch, "run_workload", lambda run: types.SimpleNamespace(
        train_tokens={"r0": 9, "r1": 8, "r2": 2, "r3": 1}[run.name]))
    running = threading.Barrier(3, timeout=30)  # the two children and the main thread
    children = []

    def child(step, log, echo=True, live=None):
        proc = Child()
        live.add(proc)
        children.append(proc)
        running.wait()
        assert proc.stopped.wait(30), "the child was not terminated"
        live.discard(proc)
        raise runner.RunFailed("terminated")
    monkeypatch.setattr(launch, "in_subprocess", child)

    class CtrlCAtTheThirdRun(launch.ThreadPoolExecutor):
        handed = 0

        def submit(self, fn, /, *args, **kwargs):
            CtrlCAtTheThirdRun.handed += 1
            if CtrlCAtTheThirdRun.handed == 3:
                running.wait()
                raise KeyboardInterrupt
            return super().submit(fn, *args, **kwargs)
    monkeypatch.setattr(launch, "ThreadPoolExecutor", CtrlCAtTheThirdRun)
    runs = [Run(f"r{i}", sst(optim__seed=i), (ZERO_SHOT_QUORA,)) for i in range(4)]
    with pytest.raises(KeyboardInterrupt):
        launch.Local(child, jobs=2, devices=["cpu"], threads=1, progress=False).launch(runs, tmp_path)
    result = Recorded.last
    assert sorted(result.interrupted[:2]) == ["r0", "r1"] and result.interrupted[2:] == ["r2", "r3"]
    assert sorted(result.started) == ["r0", "r1"] and not result.failed
    assert len(children) == 2 and all(c.stopped.is_set() for c in children)
    assert not [t for t in threading.enumerate() if t.name.startswith("sweep_")]


def test_ctrl_c_on_a_sequential_pass_lists_the_run_and_the_rest_as_interrupted(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "SweepResult", Recorded)
    fake = FakeFinetune()

    def stop_at_r1(step, log):
        if log.parent.name == "r1":
            raise KeyboardInterrupt
        fake(step, log)
    with pytest.raises(KeyboardInterrupt):
        launch.Local(stop_at_r1, progress=False).launch(three_runs(), tmp_path)
    assert Recorded.last.interrupted == ["r1", "r2"] and Recorded.last.started == ["r0", "r1"]


def test_a_finished_run_missing_only_its_evaluation_gets_the_evaluation(tmp_path):
    runs = [Run(r.name, r.settings, (ZERO_SHOT_QUORA,)) for r in three_runs()]
    launch.Local(FakeFinetune(), progress=False).launch(runs, tmp_path)
    (tmp_path / "r1" / ZERO_SHOT_QUORA.output).unlink()
    fake = FakeFinetune()
    again = launch.Local(fake, progress=False).launch(runs, tmp_path)
    assert again.started == [] and again.evaluated == ["r1:zero_shot_quora"] and again.skipped == ["r0", "r2", "r1"]
    assert fake.calls == [("minigpt2.evaluate", ["--settings", str(tmp_path / "r1" / "zero_shot_quora.settings.json")])]


@pytest.mark.parametrize("devices, device, gpu", [
    (["cuda:0", "cuda:1"], "cpu", True),
    ([None], "cuda:0", True),  # no device named: the one the runs' settings name
    ([None], "cpu", False),
    (["cuda:0", "cpu"], "cuda:0", False),  # one CPU slot: the runs share the cores
])
def test_local_workers_for_the_dry_run(devices, device, gpu, monkeypatch):
    monkeypatch.setattr(launch, "cpu_count", lambda: 12)
    local = launch.Local(jobs=3, devices=devices)
    assert local.workers(device) == Workers(3, gpu, 4, None if gpu else 12)
    assert launch.Local(jobs=3, devices=devices, threads=5).workers(device).threads == 5


def test_default_devices_are_every_cuda_device_else_the_cpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert launch.default_devices() == ["cuda:0", "cuda:1", "cuda:2"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert launch.default_devices() == ["cpu"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)  # not to be asked without CUDA
    assert launch.default_devices() == ["cpu"]


def test_threads_per_run_given_or_the_cores_split(monkeypatch):
    monkeypatch.setattr(launch, "cpu_count", lambda: 14)
    assert launch.threads_per_run(3) == 4 and launch.threads_per_run(1) == 14 and launch.threads_per_run(20) == 1
    assert launch.threads_per_run(3, 5) == 5 and launch.threads_per_run(1, 1) == 1


# ---------------------------------------------------------------------------------------------- Ray, faked

class FakeRef:
    """A task's result: a task runs when submitted, here."""

    def __init__(self, fn, args, options) -> None:
        self.options = options
        try:
            self.value, self.error = fn(*args), None
        except Exception as e:  # noqa: BLE001 - the task died: `ray.get` raises it
            self.value, self.error = None, e


class FakeTask:
    def __init__(self, ray: "FakeRay", fn, options: dict) -> None:
        self.ray, self.fn, self.opts = ray, fn, options

    def options(self, **kwargs) -> "FakeTask":
        return FakeTask(self.ray, self.fn, {**self.opts, **kwargs})

    def remote(self, *args) -> FakeRef:
        ref = FakeRef(self.fn, args, self.opts)
        self.ray.submitted.append((self.fn.__name__, args, self.opts))
        return ref


class FakeRay:
    """The part of the `ray` module the launcher uses: a cluster of `resources` whose tasks run at once, here;
    `ready_per_wait` tasks come back per `wait`; `interrupt_at`: the wait that gets Ctrl-C."""

    def __init__(self, resources: dict, initialized: bool = False, nodes: list | None = None,
                 ready_per_wait: int = 100, interrupt_at: int | None = None) -> None:
        self.resources, self.initialized, self.node_list = resources, initialized, nodes or []
        self.ready_per_wait, self.interrupt_at = ready_per_wait, interrupt_at
        self.inits: list[dict] = []
        self.submitted: list[tuple] = []
        self.waits: list[tuple] = []
        self.cancelled: list[FakeRef] = []
        self.gets: list[tuple] = []
        self.shutdowns = 0

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, **kwargs) -> None:
        self.inits.append(kwargs)
        self.initialized = True

    def shutdown(self) -> None:
        self.shutdowns += 1
        self.initialized = False

    def cluster_resources(self) -> dict:
        return dict(self.resources)

    def nodes(self) -> list:
        return list(self.node_list)

    def remote(self, fn=None, **options):
        if fn is None:
            return lambda f: FakeTask(self, f, options)
        return FakeTask(self, fn, {})

    def wait(self, refs, num_returns, timeout):
        self.waits.append((len(refs), num_returns, timeout))
        if self.interrupt_at == len(self.waits):
            raise KeyboardInterrupt
        return refs[:self.ready_per_wait], refs[self.ready_per_wait:]

    def get(self, ref, timeout=None):
        self.gets.append((ref, timeout))
        if ref.error is not None:
            raise ref.error
        return ref.value

    def cancel(self, ref) -> None:
        self.cancelled.append(ref)


@pytest.fixture
def fake_ray(monkeypatch):
    """Install a FakeRay as the `ray` module (made with `make(...)`); the storage probe is checked on its own below."""
    def make(resources: dict, **kwargs) -> FakeRay:
        ray = FakeRay(resources, **kwargs)
        monkeypatch.setitem(sys.modules, "ray", ray)
        return ray
    return make


def ray_steps(monkeypatch, fake: FakeFinetune) -> None:
    """A Ray task's steps go to `fake` (the task starts them quietly, as subprocesses)."""
    def quiet(step, log, echo=True, live=None):
        assert echo is False
        fake(step, log)
    monkeypatch.setattr(launch, "in_subprocess", quiet)


def test_ray_runs_each_unfinished_run_as_one_task_on_n_cpus(tmp_path, fake_ray, monkeypatch, capsys):
    finish(tmp_path, "r0")
    capsys.readouterr()
    ray = fake_ray({"CPU": 8.0, "GPU": 0.0})
    probes = []
    monkeypatch.setattr(launch, "check_shared_storage", lambda r, root: probes.append((r, root)))
    monkeypatch.setattr(launch, "run_workload", lambda run: types.SimpleNamespace(
        train_tokens={"r0": 1, "r1": 2, "r2": 3}[run.name]))
    for name, value in (("MINIGPT2_DATA_DIR", "/data"), ("HF_HUB_OFFLINE", "1"), ("OTHER_SETTING", "x")):
        monkeypatch.setenv(name, value)
    fake = FakeFinetune(fail={"r1"})
    ray_steps(monkeypatch, fake)
    result = launch.Ray(cpus_per_run=3, progress=False, poll_s=0.5).launch(three_runs(), tmp_path)
    assert result.skipped == ["r0"] and result.started == ["r2", "r1"]  # the longest first
    assert result.failed == {"r1": "RuntimeError: CUDA out of memory (fake)"}
    assert ray.inits == [{"log_to_driver": False, "include_dashboard": False}] and ray.shutdowns == 1
    assert probes == [(ray, tmp_path)]
    env = {k: v for k, v in os.environ.items() if k.startswith(("MINIGPT2_", "HF_"))}
    assert "OTHER_SETTING" not in env and env["HF_HUB_OFFLINE"] == "1"
    assert [name for name, _, _ in ray.submitted] == ["_ray_task", "_ray_task"]
    for (_, (run, root, where, pass_id), options), name in zip(ray.submitted, ["r2", "r1"]):
        assert run.name == name and root == str(tmp_path) and where == Placement("cpu", 3)
        assert options == {"num_cpus": 3, "num_gpus": 0, "max_retries": 0, "runtime_env": {"env_vars": env}}
        record = json.loads((tmp_path / name / launch.LAUNCH_FILE).read_text())
        assert (record["pass"], record["host"], record["device"], record["threads"]) == (
            pass_id, socket.gethostname(), "cpu", 3)
        assert abs(record["started"] - time.time()) < 60
    assert len({args[3] for _, args, _ in ray.submitted}) == 1  # one pass, one id
    assert {(s.hardware.device, s.hardware.threads) for s in fake.handed.values()} == {("cpu", 3)}
    assert ray.waits[0] == (2, 2, 0.5)
    host = socket.gethostname()
    assert out_lines(capsys) == [
        f"[queued 1, running 1, done 0, failed 0] start r2 on {host}",
        f"[queued 0, running 2, done 0, failed 0] start r1 on {host}",
        "[queued 0, running 1, done 1, failed 0] done r2",
        "[queued 0, running 0, done 1, failed 1] FAILED r1: RuntimeError: CUDA out of memory (fake)"]


def test_ray_on_gpus_asks_one_gpu_per_run_and_joins_the_cluster_named(tmp_path, fake_ray, monkeypatch):
    ray = fake_ray({"CPU": 8.0, "GPU": 2.0})
    monkeypatch.setattr(launch, "check_shared_storage", lambda r, root: None)
    fake = FakeFinetune()
    ray_steps(monkeypatch, fake)
    result = launch.Ray("head:6379", threads=4, progress=False).launch(three_runs()[:1], tmp_path)
    assert result.started == ["r0"] and not result.failed
    assert ray.inits == [{"log_to_driver": False, "address": "head:6379"}]
    assert ray.submitted[0][1][2] == Placement("cuda", 4)
    assert {k: ray.submitted[0][2][k] for k in ("num_cpus", "num_gpus", "max_retries")} == {
        "num_cpus": 1, "num_gpus": 1, "max_retries": 0}
    assert (fake.handed["r0"].hardware.device, fake.handed["r0"].hardware.threads) == ("cuda", 4)


def test_ray_leaves_a_cluster_it_joined_already_as_it_was(tmp_path, fake_ray, monkeypatch):
    ray = fake_ray({"GPU": 1.0}, initialized=True)
    monkeypatch.setattr(launch, "check_shared_storage", lambda r, root: None)
    ray_steps(monkeypatch, FakeFinetune())
    assert launch.Ray(progress=False).launch(three_runs()[:1], tmp_path).started == ["r0"]
    assert ray.inits == [] and ray.shutdowns == 0 and ray.is_initialized()


def test_ray_with_nothing_to_do_connects_to_nothing(tmp_path, fake_ray, capsys):
    finish(tmp_path, "r0", "r1")
    capsys.readouterr()
    ray = fake_ray({"GPU": 1.0})
    result = launch.Ray(progress=False).launch(three_runs()[:2], tmp_path)
    assert result.skipped == ["r0", "r1"] and not result.started
    assert ray.inits == [] and ray.submitted == [] and out_lines(capsys) == []


def test_ray_without_gpus_asks_for_cpus_per_run_and_leaves_no_cluster(tmp_path, fake_ray, monkeypatch):
    ray = fake_ray({"CPU": 8.0})
    monkeypatch.setattr(launch, "check_shared_storage", lambda r, root: pytest.fail("probed"))
    with pytest.raises(launch.LaunchError, match=r"^--launcher ray: the cluster has no GPU; pass --cpus-per-run N to "
                                                 r"run each run on N CPUs instead$"):
        launch.Ray(progress=False).launch(three_runs()[:1], tmp_path)
    assert ray.submitted == [] and ray.shutdowns == 1 and not ray.is_initialized()


def test_ray_reports_a_lost_task_and_a_task_that_left_no_finished_run(tmp_path, fake_ray, monkeypatch, capsys):
    """r0's task died (its node was lost): the first line of Ray's error; r1's task returned without error but its
    folder holds no finished run; r2's evaluation is missing. One task comes back per wait."""
    ray = fake_ray({"CPU": 4.0}, ready_per_wait=1)
    monkeypatch.setattr(launch, "check_shared_storage", lambda r, root: None)
    monkeypatch.setattr(launch, "run_workload", lambda run: types.SimpleNamespace(train_tokens=1))

    def task(run, root, where, pass_id):
        if run.name == "r0":
            raise ConnectionError("node 10.0.0.2 died\nlong Ray traceback")
        (Path(root) / run.name).mkdir(parents=True)
        if run.name == "r2":  # finished, its evaluation not
            (Path(root) / run.name / launch.LAUNCH_FILE).write_text(json.dumps({"pass": pass_id, "host": "node-b"}))
            FakeFinetune()(runner.Step("minigpt2.finetune", ("--settings", str(Path(root) / "r2.json")), None),
                           Path(root) / "r2" / "run.log")
        return None
    monkeypatch.setattr(launch, "_ray_task", task)
    runs = three_runs()
    runs[2] = Run("r2", runs[2].settings, (ZERO_SHOT_QUORA,))
    (tmp_path / "r2.json").write_text(json.dumps(runner.runfolder.settings_record(
        runner.dataclasses.replace(runs[2].settings, run=runner.dataclasses.replace(
            runs[2].settings.run, out_dir=str(tmp_path / "r2"))))))
    result = launch.Ray(cpus_per_run=1, progress=False, poll_s=0.1).launch(runs, tmp_path)
    assert result.started == ["r0", "r1", "r2"]
    assert result.failed == {"r0": "ConnectionError: node 10.0.0.2 died",
                             "r1": f"the task ended but {tmp_path / 'r1'} holds no finished run",
                             "r2": f"the task ended but {tmp_path / 'r2'} holds no finished run"}
    assert [w[:2] for w in ray.waits] == [(3, 3), (2, 2), (1, 1)]
    no_run = "the task ended but {} holds no finished run"
    assert out_lines(capsys) == [
        "[queued 2, running 1, done 0, failed 0] start r0 on a worker",  # back, no record: a worker
        "[queued 1, running 2, done 0, failed 0] start r2 on node-b",  # not back, its record names its host
        "[queued 1, running 1, done 0, failed 1] FAILED r0: ConnectionError: node 10.0.0.2 died",
        "[queued 0, running 2, done 0, failed 1] start r1 on a worker",
        f"[queued 0, running 1, done 0, failed 2] FAILED r1: {no_run.format(tmp_path / 'r1')}",
        f"[queued 0, running 0, done 0, failed 3] FAILED r2: {no_run.format(tmp_path / 'r2')}"]


def test_ctrl_c_while_following_ray_tasks_cancels_those_still_out(tmp_path, fake_ray, monkeypatch, capsys):
    monkeypatch.setattr(launch, "SweepResult", Recorded)
    ray = fake_ray({"CPU": 4.0}, ready_per_wait=1, interrupt_at=2)
    monkeypatch.setattr(launch, "check_shared_storage", lambda r, root: None)
    monkeypatch.setattr(launch, "run_workload", lambda run: types.SimpleNamespace(train_tokens=1))
    ray_steps(monkeypatch, FakeFinetune())
    with pytest.raises(KeyboardInterrupt):
        launch.Ray(cpus_per_run=1, progress=False).launch(three_runs(), tmp_path)
    assert Recorded.last.interrupted == ["r1", "r2"] and Recorded.last.started == ["r0", "r1", "r2"]
    assert [ref.options["num_cpus"] for ref in ray.cancelled] == [1, 1] and len(ray.cancelled) == 2
    assert ray.shutdowns == 1
    assert out_lines(capsys)[-1] == "[queued 0, running 2, done 1, failed 0] done r0"


@pytest.mark.parametrize("resources, per_run, held", [
    ({"CPU": 7.0, "GPU": 2.0}, 3, 2),  # 7 // 3
    ({"CPU": 7.0, "GPU": 2.0}, None, 2),  # its GPUs
    ({"CPU": 2.0}, 3, 1),  # at least one
    ({"CPU": 9.0, "GPU": 3.0}, None, 3),
    ({"CPU": 9.0}, 1, 9),
])
def test_ray_capacity_is_what_the_cluster_holds(resources, per_run, held, fake_ray):
    ray = fake_ray(resources)
    r = launch.Ray("head:1", cpus_per_run=per_run)
    assert r.capacity == held and ray.inits == [{"log_to_driver": False, "address": "head:1"}]
    assert launch.Ray(cpus_per_run=per_run, jobs=5).capacity == 5 and len(ray.inits) == 1  # --jobs: not asked


def test_ray_workers_for_the_dry_run():
    assert launch.Ray(cpus_per_run=5, jobs=3).workers("cpu") == Workers(3, False, 5, None)
    assert launch.Ray(cpus_per_run=5, threads=2, jobs=3).workers("cpu") == Workers(3, False, 2, None)
    assert launch.Ray(jobs=4).workers("cuda") == Workers(4, True, 1, None)
    assert launch.Ray(threads=6, jobs=4).workers("cuda") == Workers(4, True, 6, None)
    assert launch.Ray(cpus_per_run=5).where == Placement("cpu", 5)
    assert launch.Ray().where == Placement("cuda", None)


def test_a_ray_task_records_its_pass_and_runs_the_run_quietly(tmp_path, monkeypatch):
    fake = FakeFinetune(fail={"r1"})
    ray_steps(monkeypatch, fake)
    run0, run1 = three_runs()[:2]
    assert launch._ray_task(run0, str(tmp_path / "sub"), Placement("cpu", 2), "pass-a") is None
    assert runner.is_finished(tmp_path / "sub" / "r0")
    assert launch._launched_by(tmp_path / "sub" / "r0", "pass-a") == socket.gethostname()
    assert launch._launched_by(tmp_path / "sub" / "r0", "pass-b") is None  # another pass's record
    assert launch._launched_by(tmp_path / "sub" / "r9", "pass-a") is None  # none
    assert launch._ray_task(run1, str(tmp_path / "sub"), Placement("cpu", 2), "p") == \
        "RuntimeError: CUDA out of memory (fake)"
    (tmp_path / "sub" / "r1" / launch.LAUNCH_FILE).write_text("{torn")
    assert launch._launched_by(tmp_path / "sub" / "r1", "p") is None


def probe_module(monkeypatch) -> list:
    """`ray.util.scheduling_strategies` as a module recording each node-affinity strategy made."""
    made = []

    def strategy(node_id, soft):
        made.append((node_id, soft))
        return ("affinity", node_id)
    mod = types.ModuleType("ray.util.scheduling_strategies")
    mod.NodeAffinitySchedulingStrategy = strategy
    monkeypatch.setitem(sys.modules, "ray.util", types.ModuleType("ray.util"))
    monkeypatch.setitem(sys.modules, "ray.util.scheduling_strategies", mod)
    return made


NODES = [{"Alive": True, "NodeID": "a" * 20, "NodeManagerAddress": "10.0.0.1"},
         {"Alive": False, "NodeID": "b" * 20, "NodeManagerAddress": "10.0.0.2"},
         {"Alive": True, "NodeID": "c" * 20, "NodeManagerAddress": "10.0.0.3"}]


def test_the_storage_probe_asks_every_alive_node_and_cleans_up(tmp_path, monkeypatch):
    made = probe_module(monkeypatch)
    ray = FakeRay({}, nodes=NODES)
    launch.check_shared_storage(ray, tmp_path / "sweep")
    assert made == [("a" * 20, False), ("c" * 20, False)]
    assert [(name, opts) for name, _, opts in ray.submitted] == [
        ("_write_probe", {"num_cpus": 0, "scheduling_strategy": ("affinity", "a" * 20)}),
        ("_write_probe", {"num_cpus": 0, "scheduling_strategy": ("affinity", "c" * 20)})]
    paths = [Path(args[0]) for _, args, _ in ray.submitted]
    token = ray.submitted[0][1][1]
    assert [p.name for p in paths] == [f".storage-probe-{'a' * 12}-{token[:8]}", f".storage-probe-{'c' * 12}-{token[:8]}"]
    assert all(p.parent == tmp_path / "sweep" for p in paths) and len(token) == 32
    assert [t for _, t in ray.gets] == [300, 300]
    assert list((tmp_path / "sweep").iterdir()) == []


def test_the_storage_probe_refuses_folders_a_node_cannot_write_or_this_machine_cannot_see(tmp_path, monkeypatch):
    probe_module(monkeypatch)
    ray = FakeRay({}, nodes=NODES)
    real = launch._write_probe

    def elsewhere(path, token):  # the node wrote its own disk: this machine does not see it
        real(str(tmp_path / "node-disk" / Path(path).name), token)
        return "node-c"
    monkeypatch.setattr(launch, "_write_probe", lambda path, token: real(path, token) if "aaaa" in path
                        else elsewhere(path, token))
    with pytest.raises(launch.LaunchError, match=r"^--launcher ray: node node-c \(10\.0\.0\.3\) wrote .*/sweep/"
                                                 r"\.storage-probe-cccccccccccc-\w{8}, but this machine does not "
                                                 r"see it; the run folders \(--runs-dir\) must be on storage every "
                                                 r"node mounts at the same path \(NFS"):
        launch.check_shared_storage(ray, tmp_path / "sweep")
    assert list((tmp_path / "sweep").iterdir()) == []  # node a's probe removed too

    def fails(path, token):
        raise PermissionError("Traceback ...\nPermissionError: [Errno 13] denied")
    monkeypatch.setattr(launch, "_write_probe", fails)
    with pytest.raises(launch.LaunchError, match=r"^--launcher ray: node 10\.0\.0\.1 cannot write into "
                                                 rf"{tmp_path}/sweep \(PermissionError: PermissionError: \[Errno 13\] "
                                                 r"denied\); the run folders"):
        launch.check_shared_storage(ray, tmp_path / "sweep")


def test_the_probe_writes_its_token_where_asked(tmp_path):
    assert launch._write_probe(str(tmp_path / "a" / "b" / "probe"), "tok") == socket.gethostname()
    assert (tmp_path / "a" / "b" / "probe").read_text() == "tok"


def test_connect_starts_a_local_cluster_or_joins_the_one_named_once():
    ray = FakeRay({})
    launch.connect(ray, None)
    launch.connect(ray, "auto")  # already connected: nothing more
    assert ray.inits == [{"log_to_driver": False, "include_dashboard": False}]
    ray = FakeRay({})
    launch.connect(ray, "auto")
    assert ray.inits == [{"log_to_driver": False, "address": "auto"}]


# ---------------------------------------------------------------------------------------------- the command line

@pytest.mark.parametrize("argv, message", [
    (["--threads", "0"], r"--threads 0: expected an integer >= 1"),
    (["--jobs", "-2"], r"--jobs -2: expected an integer >= 1"),
    (["--launcher", "ray", "--cpus-per-run", "0"], r"--cpus-per-run 0: expected an integer >= 1"),
    (["--devices", " , "], r"--devices: expected a comma-separated list such as cuda:0,cuda:1$"),
    (["--devices", "cpu,tpu"], r"--devices tpu: expected auto, cpu, cuda or cuda:N$"),
    (["--devices", "cpu,auto"], r"--devices auto: name the devices \(cpu, cuda:0, cuda:1, \.\.\.\)$"),
    (["--launcher", "ray", "--devices", "cpu"], r"--devices is for --launcher local; on Ray each run asks for one "
                                               r"GPU \(or --cpus-per-run CPUs\) and Ray picks which$"),
    (["--cpus-per-run", "2"], r"--cpus-per-run is a --launcher ray setting; add --launcher ray$"),
    (["--jobs", "3", "--isolation", "in-process"], r"--jobs 3 runs each run in its own subprocess; --isolation "
                                                   r"in-process runs them one at a time in this process: choose one$"),
])
def test_each_bad_launcher_flag_is_one_error_line_naming_it(argv, message, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", types.ModuleType("ray"))  # installed
    with pytest.raises(launch.LaunchError, match=f"^{message}"):
        cli.check_settings(cli.parse_args(["baseline", *argv]))


@pytest.mark.parametrize("argv", [
    ["--jobs", "1", "--threads", "1", "--isolation", "in-process"],  # 1 is a count, and one job may run in-process
    ["--isolation", "in-process"],  # no --jobs: one
    ["--devices", "cpu, cpu:1,", "--jobs", "2"],
    ["--launcher", "ray", "--cpus-per-run", "1", "--jobs", "4", "--isolation", "in-process", "--address", "h:1"],
])
def test_good_launcher_flags_pass(argv, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", types.ModuleType("ray"))
    cli.check_settings(cli.parse_args(["baseline", *argv]))


def test_ray_is_needed_unless_a_dry_run_names_the_workers(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # not installed
    cli.check_settings(cli.parse_args(["baseline", "--launcher", "ray", "--dry-run", "--jobs", "3"]))
    for argv in (["--dry-run"], ["--jobs", "3"], []):
        with pytest.raises(launch.LaunchError, match=r"^--launcher ray needs Ray"):
            cli.check_settings(cli.parse_args(["baseline", "--launcher", "ray", *argv]))


@pytest.mark.parametrize("argv, mode", [
    ([], "subprocess"),
    (["--tiny"], "in-process"),
    (["--tiny", "--isolation", "subprocess"], "subprocess"),
    (["--isolation", "in-process"], "in-process"),
    (["--tiny", "--jobs", "2"], "subprocess"),
    (["--tiny", "--jobs", "1"], "in-process"),
    (["--tiny", "--launcher", "ray"], "subprocess"),
])
def test_isolation(argv, mode):
    assert cli.isolation(cli.parse_args(["baseline", *argv])) == mode


def test_make_launcher_builds_each_launcher_from_its_flags(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(launch, "cpu_count", lambda: 8)

    def local(*argv: str) -> launch.Local:
        made = cli.make_launcher(cli.parse_args(["baseline", *argv]))
        assert isinstance(made, launch.Local)
        return made
    one = local()
    assert (one.executor, one.capacity, one.devices, one.threads, one.progress) == (
        runner.in_subprocess, 1, [None], 8, True)
    assert local("--tiny", "--no-progress").executor is runner.in_process and not local("--no-progress").progress
    assert local("--devices", "cpu:1,cpu").devices == ["cpu:1"]  # one job: the first device
    three = local("--jobs", "3", "--devices", "cpu,cpu:1", "--threads", "3")
    assert (three.executor, three.capacity, three.devices, three.threads) == (runner.in_subprocess, 3,
                                                                               ["cpu", "cpu:1"], 3)
    assert local("--jobs", "2").devices == ["cuda:0", "cuda:1"] and local("--jobs", "2").threads == 4
    ray = cli.make_launcher(cli.parse_args(["baseline", "--launcher", "ray", "--address", "h:1", "--cpus-per-run",
                                            "4", "--threads", "2", "--jobs", "3", "--no-progress"]))
    assert isinstance(ray, launch.Ray)
    assert (ray.address, ray.cpus_per_run, ray.where, ray.jobs, ray.progress) == ("h:1", 4, Placement("cpu", 2), 3,
                                                                                  False)


def test_device_list_strips_and_drops_empty_names():
    assert cli.parse_args(["baseline", "--devices", " cuda:0, ,cuda:1 "]).launch.device_list == ["cuda:0", "cuda:1"]
    assert cli.parse_args(["baseline"]).launch.device_list is None


class WorkersOnce:
    """A launcher for the dry run: counts how often it is asked for its workers."""

    def __init__(self, workers: Workers) -> None:
        self.given, self.asked = workers, []

    def workers(self, device: str) -> Workers:
        self.asked.append(device)
        return self.given


@pytest.fixture
def priced(monkeypatch):
    """The estimate's functions replaced by recorders that print what they were handed (the pricing itself is
    test_experiments_cost.py's)."""
    from experiments.estimate import Cost, stated_rates

    calls: dict[str, list] = {"measured": [], "wall": [], "table": []}

    def measured(model, device, threads):
        calls["measured"].append((model, device, threads))
        return stated_rates()
    monkeypatch.setattr(cli, "measured_rates", measured)
    monkeypatch.setattr(cli, "sweep_cost", lambda runs, rates, isolation: Cost(runs=len(runs), cpu_train_s=3600.0 * len(runs)))
    monkeypatch.setattr(cli, "cost_lines", lambda cost, rates: [f"  COST {cost.runs} runs", "  COST END"])
    monkeypatch.setattr(cli, "gemini_bill", lambda runs, needs: ([f"  BILL {len(runs)}"], 0.5 * len(runs)))

    def wall(cost, rates, workers):
        calls["wall"].append((cost.runs, workers))
        return [f"  WALL {cost.runs} on {workers.n}", "  WALL END"], 1800.0 * cost.runs
    monkeypatch.setattr(cli, "wall_estimate", wall)
    monkeypatch.setattr(cli, "markdown_table", lambda rows, rates: calls["table"].append(
        [(n, c.runs, u) for n, c, u in rows] + [rates == stated_rates()]) or "TABLE\n")
    return calls


def two_sweeps():
    """A sweep that waits for a file and has no runs, and two with two and three runs."""
    from experiments.sweeps import Sweep

    runs = three_runs()
    return [Sweep("a", runs[:2], note="two only"), Sweep("b", [], waits=("b.jsonl is missing",)),
            Sweep("c", [Run(f"c{i}", r.settings) for i, r in enumerate(runs)], waits=("c's last arm waits",))]


def test_the_dry_run_lists_each_sweep_and_hands_the_workers_to_the_estimate(priced, tmp_path, capsys):
    args = cli.parse_args(["all", "--dry-run", "--jobs", "3", "--threads", "2", "--runs-dir", str(tmp_path)])
    launcher = WorkersOnce(Workers(3, False, 2, 8))
    cli.dry_run(two_sweeps(), args, launcher)
    out = capsys.readouterr().out.splitlines()
    assert [x for x in out if not x.startswith("  [")] == [
        f"sweep a: 2 runs into {tmp_path / 'a'}/  (two only)", "  COST 2 runs", "  COST END", "  BILL 2",
        "  WALL 2 on 3", "  WALL END",
        "sweep b waits: b.jsonl is missing",
        "sweep c waits: c's last arm waits", f"sweep c: 3 runs into {tmp_path / 'c'}/", "  COST 3 runs", "  COST END",
        "  BILL 3", "  WALL 3 on 3", "  WALL END",
        "all sweeps (2 with runs):", "  COST 5 runs", "  COST END",
        "  Gemini in all: ~$2.50 (see the teachers sweep above)",
        "  ~2.5 h wall time on 3 workers (sweeps one after the other)"]
    shown = "data.task=sst model.method=full optim.seed={0} eval.sampling.seed={0}".format
    assert [x for x in out if x.startswith("  [")] == [f"  [run] r0: {shown(0)}", f"  [run] r1: {shown(1)}",
                                                        f"  [run] c0: {shown(0)}", f"  [run] c1: {shown(1)}",
                                                        f"  [run] c2: {shown(2)}"]
    assert launcher.asked == ["cpu"]  # once, on the device the runs' settings name, resolved
    assert priced["measured"] == [("gpt2", "cpu", 2)]  # once, at the threads a run gets alone
    assert [w for _, w in priced["wall"]] == [Workers(3, False, 2, 8)] * 2


def test_a_dry_run_without_jobs_has_no_wall_time_and_one_sweep_no_total(priced, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(launch, "cpu_count", lambda: 6)
    finish(tmp_path / "a", "r0")
    capsys.readouterr()
    cli.dry_run(two_sweeps()[:1], cli.parse_args(["all", "--dry-run", "--runs-dir", str(tmp_path)]),
                WorkersOnce(Workers(1)))
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"sweep a: 2 runs into {tmp_path / 'a'}/  (two only)"
    assert out[1].startswith("  [done] r0: ") and out[2].startswith("  [run] r1: ")
    assert out[3:] == ["  COST 2 runs", "  COST END", "  BILL 2"]
    assert priced["wall"] == [] and priced["measured"] == [("gpt2", "cpu", 6)]  # every core: one run at a time


def test_a_dry_run_probes_the_model_of_the_first_run(priced, tmp_path, capsys):
    from experiments.sweeps import Sweep

    sweep = Sweep("m", [Run("x", settings(data__task="sst", model__model="tiny")), three_runs()[0]])
    cli.dry_run([sweep], cli.parse_args(["all", "--dry-run", "--runs-dir", str(tmp_path)]), WorkersOnce(Workers(1)))
    assert [model for model, _, _ in priced["measured"]] == ["tiny"]


def test_a_dry_run_probes_the_first_device_named(priced, tmp_path, capsys):
    cli.dry_run(two_sweeps()[:1], cli.parse_args(["all", "--dry-run", "--devices", "cpu:1,cpu", "--threads", "5",
                                                  "--runs-dir", str(tmp_path)]), WorkersOnce(Workers(1)))
    assert priced["measured"] == [("gpt2", "cpu:1", 5)]


def test_a_ray_dry_run_spreads_the_runs_over_the_cluster_s_workers(priced, tmp_path, capsys):
    launcher = WorkersOnce(Workers(4, True))
    cli.dry_run(two_sweeps()[:1], cli.parse_args(["all", "--dry-run", "--launcher", "ray", "--stated-rates",
                                                  "--runs-dir", str(tmp_path)]), launcher)
    assert priced["wall"] == [(2, Workers(4, True))] and priced["measured"] == []  # stated: nothing probed
    assert "  WALL 2 on 4" in capsys.readouterr().out


def test_the_markdown_dry_run_prints_the_table_only(priced, tmp_path, capsys):
    args = cli.parse_args(["all", "--dry-run", "--stated-rates", "--markdown", "--runs-dir", str(tmp_path)])
    cli.dry_run(two_sweeps(), args, WorkersOnce(Workers(1)))
    assert capsys.readouterr().out == "TABLE\n"
    assert priced["table"] == [[("a", 2, 1.0), ("c", 3, 1.5), ("all", 5, 2.5), True]]
    cli.dry_run(two_sweeps()[:1], args, WorkersOnce(Workers(1)))
    assert priced["table"][1] == [("a", 2, 1.0), True] and capsys.readouterr().out == "TABLE\n"  # one sweep: no "all"
    cli.dry_run(two_sweeps()[1:2], args, WorkersOnce(Workers(1)))
    assert capsys.readouterr().out == "" and len(priced["table"]) == 2  # no runs: no table, the waits unprinted


def test_a_probe_warning_goes_to_stderr_once(priced, tmp_path, capsys, monkeypatch):
    from dataclasses import replace

    from experiments.estimate import stated_rates

    monkeypatch.setattr(cli, "measured_rates", lambda *a: replace(stated_rates(), warning="warning: busy machine"))
    cli.dry_run(two_sweeps(), cli.parse_args(["all", "--dry-run", "--runs-dir", str(tmp_path)]),
                WorkersOnce(Workers(1)))
    assert capsys.readouterr().err == "warning: busy machine\n"


class FixedLauncher:
    """Returns `result` for every sweep, recording what it was asked to launch."""

    def __init__(self, result: runner.SweepResult | Exception) -> None:
        self.result, self.launched = result, []

    def launch(self, runs, root):
        self.launched.append(([r.name for r in runs], root))
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


@pytest.fixture
def reports(monkeypatch, tmp_path):
    written = []

    def write_report(sweep, root, out, samples, failed):
        written.append((sweep.name, root, out, samples, dict(failed)))
        md = tmp_path / f"{sweep.name}.md"
        md.write_text(f"TABLE {sweep.name}\n")
        return {"csv": tmp_path / f"{sweep.name}.csv", "md": md}
    monkeypatch.setattr(cli, "write_report", write_report)
    return written


def test_run_one_prints_what_the_pass_did_and_fails_on_a_failed_run(reports, tmp_path, capsys):
    from experiments.sweeps import Sweep

    result = runner.SweepResult(started=["r1", "r2"], skipped=["r0"], failed={"r2": "RunFailed: exited 1"})
    launcher = FixedLauncher(result)
    args = cli.parse_args(["baseline", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
                           "--bootstrap", "30"])
    sweep = Sweep("s", three_runs(), waits=("a file",))
    assert cli.run_one(sweep, args, launcher) is False
    out, err = capsys.readouterr()
    assert out.splitlines() == ["sweep s waits: a file", "sweep s: 2 run(s) started, 1 already finished, 1 failed",
                                "TABLE s", "", f"wrote {tmp_path / 's.csv'}, {tmp_path / 's.md'}"]
    assert err == "  FAILED r2: RunFailed: exited 1\n"
    assert launcher.launched == [(["r0", "r1", "r2"], tmp_path / "runs" / "s")]
    assert reports == [("s", tmp_path / "runs" / "s", tmp_path / "out", 30, {"r2": "RunFailed: exited 1"})]
    assert cli.run_one(sweep, args, FixedLauncher(runner.SweepResult(skipped=["r0", "r1", "r2"]))) is True
    assert "sweep s: 0 run(s) started, 3 already finished, 0 failed" in capsys.readouterr().out


def test_run_one_without_runs_or_with_report_only_launches_nothing(reports, tmp_path, capsys):
    from experiments.sweeps import Sweep

    launcher = FixedLauncher(AssertionError("launched"))
    args = cli.parse_args(["baseline", "--report-only", "--runs-dir", str(tmp_path), "--out", str(tmp_path)])
    assert cli.run_one(Sweep("s", three_runs()), args, launcher) is True and launcher.launched == []
    assert reports[0][4] == {} and capsys.readouterr().out.splitlines()[0] == "TABLE s"
    assert cli.run_one(Sweep("w", [], waits=("x",)), args, launcher) is True and len(reports) == 1
    assert capsys.readouterr().out == "sweep w waits: x\n"


def test_run_one_turns_a_folder_conflict_into_an_error_line(reports, tmp_path):
    from experiments.sweeps import Sweep

    launcher = FixedLauncher(runner.RunFolderConflict("r0 holds a run made with other settings"))
    with pytest.raises(SystemExit, match=r"^error: r0 holds a run made with other settings$"):
        cli.run_one(Sweep("s", three_runs()), cli.parse_args(["baseline", "--runs-dir", str(tmp_path)]), launcher)
    assert reports == []


def test_runs_root_and_out_dir_defaults():
    assert cli.runs_root(cli.parse_args(["baseline"]), "s") == Path("checkpoints/experiments/s")
    assert cli.runs_root(cli.parse_args(["baseline", "--tiny"]), "s") == Path("checkpoints/experiments-tiny/s")
    assert cli.runs_root(cli.parse_args(["baseline", "--tiny", "--runs-dir", "r"]), "s") == Path("r/s")
    assert cli.out_dir(cli.parse_args(["baseline"])) == Path("results")
    assert cli.out_dir(cli.parse_args(["baseline", "--tiny"])) == Path("results/tiny")
    assert cli.out_dir(cli.parse_args(["baseline", "--tiny", "--out", "o"])) == Path("o")


def test_shown_lists_the_task_method_and_what_differs_from_the_defaults():
    assert cli.shown(sst()) == "data.task=sst model.method=full"
    assert cli.shown(sst(optim__lr=0.1, hardware__device="cpu")) == "data.task=sst model.method=full optim.lr=0.1"


def test_attach_values_joins_a_dash_value_to_its_flag():
    assert cli.attach_values(["all", "--finetune-args", "--offline", "--seeds", "2"]) == [
        "all", "--finetune-args=--offline", "--seeds", "2"]
    assert cli.attach_values(["all", "--", "--finetune-args", "x"]) == ["all", "--", "--finetune-args", "x"]
    assert cli.attach_values(["all", "--finetune-args"]) == ["all", "--finetune-args"]  # argparse says it


# ---------------------------------------------------------------------------------------------- the bar, the leftovers

def bar_states(err: str) -> list[str]:
    """The states a tqdm bar drew on stderr, last drawn last."""
    return [s for s in err.replace("\n", "\r").split("\r") if s]


def test_the_bar_counts_runs_of_the_sweep_and_shows_the_states(tmp_path, capsys):
    finish(tmp_path / "sweep-x", "r0")
    capsys.readouterr()
    launch.Local(FakeFinetune(), progress=True).launch(three_runs(), tmp_path / "sweep-x")
    states = bar_states(capsys.readouterr().err)
    assert states[0].startswith("sweep sweep-x:   0%|") and " 0/2 [" in states[0]
    assert any(s.endswith(", queued 2, running 0, done 0, failed 0]") for s in states)  # before any run starts
    assert states[-1].startswith("sweep sweep-x: 100%|") and " 2/2 [" in states[-1] and "run/s" in states[-1]
    assert states[-1].endswith(", queued 0, running 0, done 2, failed 0]")
    launch.Local(FakeFinetune(), progress=False).launch(three_runs(), tmp_path / "other")
    assert capsys.readouterr().err == ""  # --no-progress: no bar
    assert launch.Local(FakeFinetune()).progress is True and launch.Ray().progress is True  # shown by default


def test_the_ray_bar_counts_the_tasks(tmp_path, fake_ray, monkeypatch, capsys):
    fake_ray({"GPU": 1.0})
    monkeypatch.setattr(launch, "check_shared_storage", lambda r, root: None)
    ray_steps(monkeypatch, FakeFinetune())
    launch.Ray(progress=True).launch(three_runs()[:2], tmp_path / "sweep-y")
    states = bar_states(capsys.readouterr().err)
    assert states[0].startswith("sweep sweep-y:   0%|") and " 0/2 [" in states[0]
    assert states[-1].startswith("sweep sweep-y: 100%|") and states[-1].endswith(", done 2, failed 0]")
    assert launch.Ray().poll_s == 2.0


def test_side_by_side_runs_go_on_named_worker_threads_that_end_with_the_launch(tmp_path):
    names = []
    fake = FakeFinetune()

    def record(step, log):
        names.append(threading.current_thread().name)
        fake(step, log)
    launch.Local(record, jobs=2, devices=["cpu"], threads=1, progress=False).launch(three_runs(), tmp_path)
    assert len(names) == 3 and all(n.startswith("sweep_") for n in names)
    assert not [t for t in threading.enumerate() if t.name.startswith("sweep_")]  # none left behind


def test_a_bug_in_a_run_shows_the_top_of_its_traceback(tmp_path, capsys):
    def deep(n):
        if n == 0:
            raise KeyError("bug")
        deep(n - 1)

    def breaks(step, log):
        deep(3)
    result = launch.Local(breaks, progress=False).launch(three_runs()[:1], tmp_path)
    assert result.failed == {"r0": "KeyError: 'bug'"}
    out = capsys.readouterr().out
    assert out.count('  File "') == 3 and "in deep" not in out and out.endswith("KeyError: 'bug'\n\n")


def test_a_ray_task_resumes_into_the_run_s_existing_folder(tmp_path, monkeypatch):
    fake = FakeFinetune(stop_after={"r0"})
    ray_steps(monkeypatch, fake)
    run = three_runs()[0]
    assert launch._ray_task(run, str(tmp_path), Placement("cpu", 1), "p1") == \
        f"RuntimeError: finetune returned but {tmp_path / 'r0'} holds no final metrics.json"
    fake.stop_after = set()
    assert launch._ray_task(run, str(tmp_path), Placement("cpu", 1), "p2") is None  # the folder is there now
    assert fake.handed["r0"].run.resume and runner.is_finished(tmp_path / "r0")


def test_ray_makes_the_sweep_s_folder_and_gives_each_pass_its_own_id(tmp_path, fake_ray, monkeypatch):
    ray = fake_ray({"GPU": 1.0})
    seen = []
    monkeypatch.setattr(launch, "check_shared_storage", lambda r, root: seen.append(root.is_dir()))
    ray_steps(monkeypatch, FakeFinetune(fail={"r0"}))
    root = tmp_path / "runs" / "sweep"  # neither there yet
    launch.Ray(progress=False).launch(three_runs()[:1], root)
    launch.Ray(progress=False).launch(three_runs()[:1], root)
    ids = [args[3] for _, args, _ in ray.submitted]
    assert seen == [True, True] and len(ids) == 2 and ids[0] != ids[1]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_a_lost_ray_task_without_a_message_still_names_its_error(tmp_path, fake_ray, monkeypatch):
    fake_ray({"GPU": 1.0})
    monkeypatch.setattr(launch, "check_shared_storage", lambda r, root: None)

    def dies(run, root, where, pass_id):
        raise ConnectionError()
    monkeypatch.setattr(launch, "_ray_task", dies)
    assert launch.Ray(progress=False).launch(three_runs()[:1], tmp_path).failed == {"r0": "ConnectionError: "}


def test_ray_capacity_of_a_cluster_without_cpus_is_one_run(fake_ray):
    fake_ray({"GPU": 1.0})
    assert launch.Ray(cpus_per_run=2).capacity == 1


def test_the_storage_probe_names_a_node_without_an_address_and_an_error_without_a_message(tmp_path, monkeypatch):
    probe_module(monkeypatch)
    ray = FakeRay({}, nodes=[{"Alive": True, "NodeID": "d" * 20}])

    def fails(path, token):
        raise OSError()
    monkeypatch.setattr(launch, "_write_probe", fails)
    with pytest.raises(launch.LaunchError, match=rf"^--launcher ray: node \? cannot write into {tmp_path} "
                                                 r"\(OSError: \); the run folders"):
        launch.check_shared_storage(ray, tmp_path)

    def three_lines(path, token):
        raise OSError("one\ntwo\nthree: the cause")
    monkeypatch.setattr(launch, "_write_probe", three_lines)
    with pytest.raises(launch.LaunchError, match=r"\(OSError: three: the cause\); "):
        launch.check_shared_storage(ray, tmp_path)


# ---------------------------------------------------------------------------------------------- the inputs, up front

@pytest.fixture
def inputs(monkeypatch):
    """Each input check replaced by a recorder: (what, arguments) in the order asked; `refuse` names a check
    that fails with a UserError."""
    import app.runmodel
    import course.fetch
    import course.readers
    import distill.synthetic
    import minigpt2.tokenizer
    from minigpt2.errors import UserError

    log: list[tuple] = []
    refuse: set[str] = set()
    sizes = {"a.jsonl": 3, "b.jsonl": 1}

    def record(what, *args):
        log.append((what, *args))
        if what in refuse:
            raise UserError(f"{what} refused")
    monkeypatch.setattr(app.runmodel, "base_weights_file", lambda model, offline: record("weights", model, offline))
    monkeypatch.setattr(course.fetch, "ensure_task_data", lambda name, folder, offline: record(
        "fetch", name, str(folder), offline))
    monkeypatch.setattr(course.readers, "require_files", lambda folder, names, task: record(
        "files", str(folder), tuple(names), task))
    monkeypatch.setattr(minigpt2.tokenizer, "Tokenizer", lambda d: record("tokenizer", d))
    monkeypatch.setattr(distill.synthetic, "load_synthetic", lambda path, filter: record("read", path, filter) or
                        [None] * sizes[Path(path).name])
    return log, refuse


def settings(**values):
    from app.cli import settings_of

    return settings_of({k.replace("__", "."): v for k, v in values.items()})


def test_each_shared_input_is_checked_once(inputs, tmp_path):
    from experiments.preflight import check_preconditions
    from tasks import get_task

    log, _ = inputs
    (tmp_path / "a.jsonl").write_text("")
    a = str(tmp_path / "a.jsonl")
    d1, d2 = str(tmp_path / "d1"), str(tmp_path / "d2")
    runs = [Run("r0", settings(data__task="sst", paths__data_dir=d1)),
            Run("r1", settings(data__task="sst", paths__data_dir=d1, optim__seed=2)),  # nothing new
            Run("r2", settings(data__task="sst", paths__data_dir=d1, paths__offline=True)),  # offline: asked again
            Run("r3", settings(data__task="sst", paths__data_dir=d2, model__model="tiny",  # no weights to check
                               paths__tokenizer_dir=str(tmp_path / "tok")), (ZERO_SHOT_QUORA,)),
            Run("r4", settings(data__task="sonnet", paths__data_dir=d2, data__synthetic__path=a,
                               data__synthetic__n=3)),
            Run("r5", settings(data__task="sonnet", paths__data_dir=d2, data__synthetic__path=a,
                               data__synthetic__n=2))]  # another n, the file read once
    check_preconditions("s", runs)
    files = {t: tuple(sorted(set(get_task(t).files.inputs()))) for t in ("sst", "quora", "sonnet")}
    assert log == [
        ("weights", "gpt2", False), ("fetch", "sst", d1, False), ("files", d1, files["sst"], "sst"),
        ("tokenizer", None),
        ("weights", "gpt2", True), ("fetch", "sst", d1, True), ("files", d1, files["sst"], "sst"),
        ("fetch", "sst", d2, False), ("files", d2, files["sst"], "sst"),
        ("fetch", "quora", d2, False), ("files", d2, files["quora"], "quora"),  # its evaluation's task
        ("tokenizer", str(tmp_path / "tok")),
        ("fetch", "sonnet", d2, False), ("files", d2, files["sonnet"], "sonnet"), ("read", a, "all")]


@pytest.mark.parametrize("refused, message", [
    ("weights", "sweep s cannot start: --model gpt2: weights refused"),
    ("fetch", "sweep s cannot start: the sst data: fetch refused"),
    ("files", "sweep s cannot start: the sst data: files refused"),
    ("tokenizer", "sweep s cannot start: GPT-2's tokenizer: tokenizer refused"),
])
def test_the_first_input_that_fails_is_one_line_naming_the_sweep_and_the_input(refused, message, inputs):
    from experiments.preflight import PreconditionError, check_preconditions

    log, refuse = inputs
    refuse.add(refused)
    with pytest.raises(PreconditionError, match=f"^{message}$"):
        check_preconditions("s", [Run("r0", settings(data__task="sst"))])
    assert log[-1][0] == refused


def test_a_synthetic_file_is_there_and_holds_the_sonnets_asked_for(inputs, tmp_path):
    from experiments.preflight import PreconditionError, check_preconditions

    log, _ = inputs
    b = tmp_path / "b.jsonl"
    run = lambda n, path=b: Run("r", settings(data__task="sonnet", model__model="tiny", data__synthetic__path=str(path),  # noqa: E731
                                              data__synthetic__n=n, data__synthetic__filter="perfect"))
    with pytest.raises(PreconditionError, match=rf"^sweep s cannot start: --synthetic {b}: {b}: no such file; make "
                                                rf"it with `python -m distill.generate --teacher b --n 1000 --out {b}`$"):
        check_preconditions("s", [run(1)])
    b.write_text("")
    check_preconditions("s", [run(1)])  # as many as it holds
    check_preconditions("s", [run(None)])  # all of them
    with pytest.raises(PreconditionError, match=rf"^sweep s cannot start: --synthetic {b}: {b}: asked for 2 "
                                                rf"synthetic sonnets \(filter=perfect\) but it has only 1$"):
        check_preconditions("s", [run(2)])
    assert [x for x in log if x[0] == "read"] == [("read", str(b), "perfect")] * 3  # once per check_preconditions


# ---------------------------------------------------------------------------------------------- the command

@pytest.fixture
def command(monkeypatch, reports, tmp_path):
    """`python -m experiments` with its sweeps, launcher, input checks and page replaced by recorders."""
    from experiments.sweeps import Sweep

    calls: dict = {"built": [], "checked": [], "files": [], "index": [], "launchers": [], "waiting": set()}
    result = runner.SweepResult()

    def build(name, opts):  # a sweep in calls["waiting"] has no runs: it waits for w.jsonl
        calls["built"].append((name, opts.tiny, opts.seeds))
        if name in calls["waiting"]:
            return Sweep(name, [], waits=("w.jsonl", "v.jsonl"))
        return Sweep(name, [Run(f"{name}-r{i}", r.settings) for i, r in enumerate(three_runs())])
    monkeypatch.setattr(cli, "build_sweep", build)
    monkeypatch.setattr(cli, "check_preconditions", lambda name, runs: calls["checked"].append(
        (name, [r.name for r in runs])))
    monkeypatch.setattr(cli, "check_sweep_files", lambda sweep, root: calls["files"].append((sweep.name, root)))
    monkeypatch.setattr(cli, "write_index", lambda out: calls["index"].append(out) or Path(out) / "index.html")

    def make(args):
        launcher = FixedLauncher(result)
        calls["launchers"].append(launcher)
        return launcher
    monkeypatch.setattr(cli, "make_launcher", make)
    calls["result"] = result
    return calls


def test_a_pass_checks_the_unfinished_runs_inputs_then_launches_every_sweep(command, tmp_path, monkeypatch, capsys):
    from experiments.sweeps import SWEEPS

    root = tmp_path / "runs"
    for name in sorted(SWEEPS)[:1]:  # the first sweep's first run is finished
        launch.Local(FakeFinetune(), progress=False).launch([Run(f"{name}-r0", three_runs()[0].settings)],
                                                          root / name)
    assert cli.main(["all", "--runs-dir", str(root), "--out", str(tmp_path / "out"), "--seeds", "2"]) == 0
    names = sorted(SWEEPS)
    assert command["built"] == [(n, False, 2) for n in names]
    assert command["checked"] == [(names[0], [f"{names[0]}-r1", f"{names[0]}-r2"])] + [
        (n, [f"{n}-r0", f"{n}-r1", f"{n}-r2"]) for n in names[1:]]
    assert len(command["launchers"]) == 1  # one launcher for every sweep
    assert [root for _, root in command["launchers"][0].launched] == [root / n for n in names]
    assert command["index"] == [tmp_path / "out"] and command["files"] == []
    assert capsys.readouterr().out.endswith(f"wrote {tmp_path / 'out' / 'index.html'}\n")


def test_a_failed_run_makes_the_command_fail_after_every_sweep(command, tmp_path):
    command["result"].failed["x"] = "RunFailed: exited 1"
    assert cli.main(["baseline", "--runs-dir", str(tmp_path)]) == 1
    assert command["index"] == [Path("results")]


def test_a_dry_run_checks_and_runs_nothing(command, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "dry_run", lambda sweeps, args, launcher: command["files"].append(
        ("dry", [s.name for s in sweeps], launcher)))
    assert cli.main(["baseline", "--dry-run", "--tiny", "--runs-dir", str(tmp_path)]) == 0
    assert command["built"] == [("baseline", True, 1)] and command["checked"] == [] and command["index"] == []
    assert command["files"] == [("dry", ["baseline"], command["launchers"][0])]
    assert command["launchers"][0].launched == []


def test_report_only_checks_every_sweep_s_files_first_and_launches_nothing(command, tmp_path, reports):
    assert cli.main(["all", "--report-only", "--runs-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 0
    from experiments.sweeps import SWEEPS

    assert command["files"] == [(n, tmp_path / n) for n in sorted(SWEEPS)] and command["checked"] == []
    assert command["launchers"][0].launched == [] and [r[0] for r in reports] == sorted(SWEEPS)


def test_a_sweep_named_alone_that_waits_for_everything_is_an_error(command, tmp_path, monkeypatch):
    command["waiting"].update({"teachers", min(cli.SWEEPS)})  # `all` starts with a sweep that waits too
    with pytest.raises(SystemExit, match=r"^error: sweep teachers cannot start; it waits for: w\.jsonl; v\.jsonl$"):
        cli.main(["teachers", "--runs-dir", str(tmp_path)])
    assert command["launchers"] == []
    assert cli.main(["teachers", "--report-only", "--runs-dir", str(tmp_path)]) == 0  # its report may be rebuilt
    monkeypatch.setattr(cli, "dry_run", lambda sweeps, args, launcher: command["files"].append(len(sweeps)))
    assert cli.main(["all", "--dry-run", "--runs-dir", str(tmp_path)]) == 0  # `all`: the others go on
    assert command["files"][-1] == len(cli.SWEEPS)


def test_sigterm_stops_the_sweep_as_ctrl_c_does_and_the_handler_is_given_back(monkeypatch, capsys):
    seen = []

    def stopped(argv):
        seen.append(signal.getsignal(signal.SIGTERM))
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # the signal arrives
    monkeypatch.setattr(cli, "_main", stopped)
    mine = lambda signum, frame: None  # noqa: E731
    previous = signal.signal(signal.SIGTERM, mine)
    try:
        assert cli.main(["baseline"]) == 130
        assert seen == [cli._interrupt] and signal.getsignal(signal.SIGTERM) is mine
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        assert cli.main(["baseline"]) == 130 and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert capsys.readouterr().err == 2 * ("\nsweep stopped: finished runs are kept and unfinished ones resume from "
                                           "their last epoch when the same command is run again\n")


def test_main_from_another_thread_leaves_the_signals_alone(monkeypatch):
    monkeypatch.setattr(cli, "_main", lambda argv: 0)
    before = signal.getsignal(signal.SIGTERM)
    errors = []

    def call():
        try:
            errors.append(cli.main(["baseline"]))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
    t = threading.Thread(target=call)
    t.start()
    t.join(30)
    assert errors == [0] and signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("flag", ["--markdown", "--stated-rates"])
def test_the_estimate_flags_need_a_dry_run(flag):
    with pytest.raises(UserError, match=r"^--markdown and --stated-rates shape a cost estimate; they need --dry-run$"):
        cli.check_settings(cli.parse_args(["baseline", flag]))
    cli.check_settings(cli.parse_args(["baseline", flag, "--dry-run"]))


def test_the_help_is_the_module_s_doc_with_its_examples_as_written(capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse_args(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage: python -m experiments [-h] ")
    assert "\n\nThe study's experiments, one command each:\n\n" in out  # the description: the first paragraph
    assert out.index("--cpus-per-run") < out.index(  # the examples after the flags, their columns kept
        "\n    python -m experiments lora-ranks --seeds 3          # sonnets: LoRA ranks 1..256 vs full fine-tuning\n")
    assert out.endswith("\nRun folders go to <runs-dir>/<sweep>/<run>/; finished runs are skipped, interrupted ones "
                        "resumed. Results go to\n<out>/<sweep>.csv, <out>/<sweep>.md and <out>/<sweep>.png, and "
                        "every command ends with <out>/index.html (the whole\nstudy on one self-contained page). "
                        "`all` runs every sweep whose inputs exist and says what the others wait for.\n")


def test_the_command_line_is_read_from_sys_argv_by_default(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["python -m experiments", "lora-ranks", "--seeds", "2"])
    args = cli.parse_args()
    assert (args.sweep, args.seeds) == ("lora-ranks", 2)
