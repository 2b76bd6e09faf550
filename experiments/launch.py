"""Where a sweep's runs run: `Local` (this machine) and `Ray` (a cluster), behind one interface (`Launcher`), each
run `runner.execute` into its folder (docs/study.md, 'Beyond one machine')."""

from __future__ import annotations

import functools
import heapq
import json
import os
import socket
import subprocess
import threading
import time
import traceback
import uuid
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Protocol, Sequence

from tqdm import tqdm

from minigpt2.device import cpu_count
from minigpt2.errors import UserError

from .estimate import Workers, run_workload
from .runner import (Executor, Placement, SweepResult, evaluation_done, execute, in_subprocess, is_finished,
                     prepare_run)
from .sweeps import Run

FORWARDED_ENV = ("MINIGPT2_", "HF_")  # environment variables a Ray task gets from the driver
LAUNCH_FILE = "launch.json"  # written by a Ray task into its run folder when the run starts (who runs it, where)


class LaunchError(UserError, ValueError):
    """Launcher settings that cannot work: --jobs below 1, a device that is not there, Ray missing, folders the
    cluster does not share."""


class Launcher(Protocol):
    capacity: int  # runs at once

    def launch(self, runs: Sequence[Run], root: Path) -> SweepResult:
        """Bring every unfinished run into `root/<run name>/`; a failed run is listed, the others go on."""

    def workers(self, device: str) -> Workers:
        """What a dry run spreads the runs over; `device`: the one the runs' settings name, resolved here."""


def threads_per_run(jobs: int, threads: int | None = None) -> int:
    """A run's CPU threads: `threads` when given, else this machine's cores split evenly between the jobs."""
    return threads if threads is not None else max(1, cpu_count() // jobs)


def _training_tokens(run: Run) -> int:
    try:
        return run_workload(run).train_tokens
    except (OSError, ValueError, RuntimeError, UserError):  # its data is not there yet
        return 0


def longest_first(runs: Sequence[Run], cost: Callable[[Run], float] = _training_tokens) -> list[Run]:
    """The runs in the order to start them: the most costly first (ties keep the sweep's order)."""
    return sorted(runs, key=lambda r: -cost(r))


def default_devices() -> list[str]:
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(n)] or ["cpu"]


class Progress:
    """Runs queued / running / done / failed, shown as a bar and one line per change of a run's state."""

    def __init__(self, name: str, total: int, show: bool) -> None:
        self.counts = {"queued": total, "running": 0, "done": 0, "failed": 0}
        self.bar = tqdm(total=total, desc=f"sweep {name}", unit="run", disable=not show, dynamic_ncols=True)
        self.lock = threading.Lock()
        self.bar.set_postfix_str(self.line())

    def line(self) -> str:
        return ", ".join(f"{k} {self.counts[k]}" for k in ("queued", "running", "done", "failed"))

    def change(self, name: str, state: str, note: str = "") -> None:
        """A run started ('start', `note`: where), or ended: 'done', 'failed', or 'stopped' with the sweep."""
        with self.lock:
            c = self.counts
            if state == "start":
                c["queued"], c["running"] = c["queued"] - 1, c["running"] + 1
                event = f"start {name} on {note}"
            else:
                c["running"] -= 1
                c[state] = c.get(state, 0) + 1
                self.bar.update(1)
                event = f"{'FAILED' if state == 'failed' else state} {name}" + (f": {note}" if note else "")
            self.bar.set_postfix_str(self.line())
            tqdm.write(f"[{self.line()}] {event}")

    def close(self) -> None:
        self.bar.close()


def split_finished(runs: Sequence[Run], root: Path, result: SweepResult) -> list[Run]:
    """The checks every launcher makes before starting anything (a folder of other settings or inputs stops the
    sweep now, not midway); the runs with nothing left to do go to `result.skipped`."""
    todo = []
    for run in runs:
        if prepare_run(run, root) and all(evaluation_done(root / run.name, ev) for ev in run.evaluations):
            result.skipped.append(run.name)
        else:
            todo.append(run)
    return todo


# ---------------------------------------------------------------------------------------------- one machine

class Local:
    """Up to `jobs` runs at once here, the run in slot k on `devices[k % len(devices)]` (None: the device its
    settings name) with `threads` CPU threads (default: the cores / jobs). One job runs the runs in the sweep's
    order in this thread through `executor`; more run longest first, each a subprocess logging to its run.log."""

    def __init__(self, executor: Executor = in_subprocess, jobs: int = 1, devices: Sequence[str | None] = (None,),
                 threads: int | None = None, progress: bool = True) -> None:
        self.executor, self.capacity, self.devices = executor, jobs, list(devices)
        self.threads, self.progress = threads_per_run(jobs, threads), progress

    def workers(self, device: str) -> Workers:
        gpu = all((d or device).startswith("cuda") for d in self.devices)
        return Workers(self.capacity, gpu, self.threads, None if gpu else cpu_count())

    def launch(self, runs: Sequence[Run], root: Path) -> SweepResult:
        root, result, jobs = Path(root), SweepResult(), self.capacity
        todo = split_finished(runs, root, result)
        todo = longest_first(todo) if jobs > 1 else todo
        slots, lock, stopping, live = list(range(jobs)), threading.Lock(), threading.Event(), set()  # slots: a heap
        bar = Progress(root.name, len(todo), self.progress)
        quiet = jobs > 1 and self.executor is in_subprocess
        start = functools.partial(in_subprocess, echo=False, live=live) if quiet else self.executor

        def run_step(step, log: Path) -> None:
            if stopping.is_set():  # no new child (say, a follow-up evaluation) once the sweep is stopping
                raise RuntimeError("the sweep was stopped")
            start(step, log)

        def work(run: Run) -> None:
            if stopping.is_set():
                result.interrupted.append(run.name)
                return
            with lock:
                slot = heapq.heappop(slots)  # the lowest free slot
            where = Placement(self.devices[slot % len(self.devices)], self.threads)
            bar.change(run.name, "start", f"{where}" + (f"; log {root / run.name / 'run.log'}" if jobs > 1 else ""))
            try:
                execute(run, root, run_step, where, result)
                bar.change(run.name, "done")
            except Exception as e:
                if stopping.is_set():
                    result.interrupted.append(run.name)
                    bar.change(run.name, "stopped")
                else:
                    result.failed[run.name] = f"{type(e).__name__}: {e}"
                    bar.change(run.name, "failed", str(e))
                    if not isinstance(e, RuntimeError):  # a bug here, not a failed run
                        tqdm.write(traceback.format_exc(limit=3))
            finally:
                if run.name not in result.started:
                    result.skipped.append(run.name)
                with lock:
                    heapq.heappush(slots, slot)

        try:
            if jobs == 1:  # here, not in a worker thread: an in-process run gets Ctrl-C and the signals
                for i, run in enumerate(todo):
                    try:
                        work(run)
                    except KeyboardInterrupt:
                        result.interrupted += [r.name for r in todo[i:]]
                        raise
            else:
                self._side_by_side(todo, work, stopping, live, result)
        finally:
            bar.close()
        return result

    def _side_by_side(self, todo: list[Run], work: Callable[[Run], None], stopping: threading.Event,
                      live: set[subprocess.Popen], result: SweepResult) -> None:
        pool = ThreadPoolExecutor(max_workers=self.capacity, thread_name_prefix="sweep")
        futures: list[Future] = []
        try:
            # Submitted inside the try: a Ctrl-C while the first runs already start must stop them too.
            for run in todo:  # started in this order: longest first
                futures.append(pool.submit(work, run))
            for future in as_completed(futures):
                future.result()
        except KeyboardInterrupt:
            stopping.set()
            pool.shutdown(wait=False, cancel_futures=True)  # the queued runs never start
            while not all(f.done() for f in futures):  # until every run ended: a child started just now is stopped too
                for proc in list(live):
                    if proc.poll() is None:
                        proc.terminate()
                time.sleep(0.1)
            result.interrupted += [r.name for r, f in zip(todo, futures) if f.cancelled()]
            result.interrupted += [r.name for r in todo[len(futures):]]  # never submitted
            raise
        finally:
            pool.shutdown(wait=True)


# ---------------------------------------------------------------------------------------------- Ray

def require_ray():
    """The `ray` module, or one `error:` line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise LaunchError('--launcher ray needs Ray, which is not installed here; install it with: pip install -e '
                          '".[cluster]"') from None
    return ray


def _write_probe(path: str, token: str) -> str:
    """On a worker node: write `token` to `path`; returns the node's host name."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(token, encoding="utf-8")
    return socket.gethostname()


def check_shared_storage(ray, root: Path) -> None:
    """A task on every alive node writes a probe file into `root`; this process must read each back, else the
    run folders are not shared storage and the sweep refuses to start."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe, token = ray.remote(num_cpus=0)(_write_probe), uuid.uuid4().hex
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    paths = [root / f".storage-probe-{n['NodeID'][:12]}-{token[:8]}" for n in nodes]
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(str(path), token) for n, path in zip(nodes, paths)]
    shared = "the run folders (--runs-dir) must be on storage every node mounts at the same path"
    try:
        for node, path, ref in zip(nodes, paths, refs):
            ip = node.get("NodeManagerAddress", "?")
            try:
                host = ray.get(ref, timeout=300)
            except Exception as e:
                raise LaunchError(f"--launcher ray: node {ip} cannot write into {root} ({type(e).__name__}: "
                                  f"{str(e).splitlines()[-1] if str(e) else ''}); {shared}") from None
            if not path.is_file() or path.read_text(encoding="utf-8") != token:
                raise LaunchError(f"--launcher ray: node {host} ({ip}) wrote {path}, but this machine does not see "
                                  f"it; {shared} (NFS, a cluster file system), or the results stay on the workers")
    finally:
        for path in paths:
            try:
                path.unlink(missing_ok=True)
            except OSError:  # the folder itself is the problem, reported above
                pass


def _ray_task(run: Run, root: str, where: Placement, pass_id: str) -> str | None:
    """On a worker: mark the run folder as started by this pass, then `execute` the run as a local sweep does;
    the error text if it failed (the result itself is only in the run folder)."""
    run_dir = Path(root) / run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LAUNCH_FILE).write_text(json.dumps({"pass": pass_id, "host": socket.gethostname(),
                                                   "device": where.device, "threads": where.threads,
                                                   "started": time.time()}) + "\n")
    try:
        execute(run, Path(root), functools.partial(in_subprocess, echo=False), where)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def _launched_by(run_dir: Path, pass_id: str) -> str | None:
    try:
        record = json.loads((run_dir / LAUNCH_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record.get("host") if record.get("pass") == pass_id else None


def connect(ray, address: str | None) -> None:
    """Join the cluster at `address` ('auto': the one this machine belongs to), else start a local one."""
    if not ray.is_initialized():
        ray.init(log_to_driver=False, **({"address": address} if address else {"include_dashboard": False}))


class Ray:
    """Every unfinished run as a Ray task (one GPU each, or `cpus_per_run` CPUs with `threads` threads, default
    that many), longest first, on the cluster at `address` or a local one; `jobs`: the workers a dry run plans for
    (default: what the cluster holds)."""

    def __init__(self, address: str | None = None, cpus_per_run: int | None = None, threads: int | None = None,
                 jobs: int | None = None, progress: bool = True, poll_s: float = 2.0) -> None:
        self.address, self.cpus_per_run, self.jobs, self.progress, self.poll_s = \
            address, cpus_per_run, jobs, progress, poll_s
        self.where = Placement("cpu", threads or cpus_per_run) if cpus_per_run else Placement("cuda", threads)

    @functools.cached_property
    def capacity(self) -> int:
        """How many runs the cluster holds at once: its GPUs, or its CPUs / --cpus-per-run (at least one)."""
        if self.jobs is not None:
            return self.jobs
        ray = require_ray()
        connect(ray, self.address)
        return max(1, self._held(ray))

    def _held(self, ray) -> int:
        resources = ray.cluster_resources()
        if self.cpus_per_run:
            return int(resources.get("CPU", 0)) // self.cpus_per_run
        return int(resources.get("GPU", 0))

    def workers(self, device: str) -> Workers:
        return Workers(self.capacity, self.cpus_per_run is None, self.where.threads or 1, None)

    def launch(self, runs: Sequence[Run], root: Path) -> SweepResult:
        ray = require_ray()
        root, result = Path(root), SweepResult()
        todo = longest_first(split_finished(runs, root, result))
        if not todo:
            return result
        root.mkdir(parents=True, exist_ok=True)
        started_ray = not ray.is_initialized()
        connect(ray, self.address)
        try:
            if not self.cpus_per_run and not self._held(ray):
                raise LaunchError("--launcher ray: the cluster has no GPU; pass --cpus-per-run N to run each run on "
                                  "N CPUs instead")
            check_shared_storage(ray, root)
            # The runs' settings were resolved against this machine's environment (data and tokenizer folders, the
            # hub): the workers get the same, whatever environment their node was started with.
            env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
            # Ray sets CUDA_VISIBLE_DEVICES to a GPU task's GPU: finetune sees one device
            resources = {"num_cpus": self.cpus_per_run, "num_gpus": 0} if self.cpus_per_run else \
                {"num_cpus": 1, "num_gpus": 1}
            task = ray.remote(_ray_task).options(**resources, max_retries=0, runtime_env={"env_vars": env})
            pass_id = uuid.uuid4().hex
            refs = {task.remote(run, str(root), self.where, pass_id): run for run in todo}
            result.started += [run.name for run in todo]
            self._follow(ray, refs, root, pass_id, result)
        finally:
            if started_ray:
                ray.shutdown()
        return result

    def _follow(self, ray, refs: dict, root: Path, pass_id: str, result: SweepResult) -> None:
        """Wait for the tasks, showing queued / running / done / failed from the run folders."""
        bar = Progress(root.name, len(refs), self.progress)
        pending, seen = dict(refs), set()
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=self.poll_s)
                for ref, run in list(pending.items()):
                    host = _launched_by(root / run.name, pass_id)
                    if (host or ref in ready) and run.name not in seen:
                        seen.add(run.name)
                        bar.change(run.name, "start", host or "a worker")
                for ref in ready:
                    run = pending.pop(ref)
                    try:
                        error = ray.get(ref)
                    except Exception as e:  # the task itself died (its worker or node was lost)
                        error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                    run_dir = root / run.name
                    if is_finished(run_dir) and all(evaluation_done(run_dir, ev) for ev in run.evaluations):
                        bar.change(run.name, "done")
                    else:
                        result.failed[run.name] = error or f"the task ended but {run_dir} holds no finished run"
                        bar.change(run.name, "failed", result.failed[run.name])
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref)
            result.interrupted += [run.name for run in pending.values()]
            raise
        finally:
            bar.close()
