"""Bring one run of a sweep to finished in <runs-dir>/<sweep>/<run name>/: finetune's run folder plus
experiment.json (the settings it belongs to, checked on every re-run), settings.json (what finetune was handed),
<evaluation>.settings.json (what each follow-up evaluation was handed) and run.log. `execute` hands each `Step` to
an executor: `in_subprocess` (a crash cannot take the sweep down) or `in_process` (no interpreter start-up per
run)."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm import tqdm

from app import cli, runfolder
from app.settings import EvaluateSettings, RunSettings, defining
from minigpt2.atomic import atomic_write_json
from course.readers import data_dir
from minigpt2.errors import UserError
from tasks import get_task

from .sweeps import REPO, Evaluation, Run

RECORD = "experiment.json"


class RunFolderConflict(RuntimeError):
    """A run folder holds a run made with other settings than the sweep now asks for."""


class RunFailed(RuntimeError):
    """A finetune (or follow-up) command failed; its own output already says why."""


@dataclass(frozen=True)
class Step:
    """One command of a run: `python -m <module> <argv>` in a subprocess, or `call()` in this process."""

    module: str
    argv: tuple[str, ...]
    call: Callable[[], Any]


Executor = Callable[[Step, Path], None]  # runs a step, its output to the log file; raises if it fails


@dataclass(frozen=True)
class Placement:
    """Where a run executes: its device and CPU threads (None: what its settings say). Neither changes what it
    computes (`app.settings.defining` leaves both out)."""

    device: str | None = None
    threads: int | None = None

    def __str__(self) -> str:
        return f"{self.device or 'its device'}, {self.threads or 'its'} thread(s)"


def in_process(step: Step, log: Path) -> None:
    """`step.call()` here; a UserError (the one line the command would print) is a failed run. The run's threads
    apply to the run only: this process gets its thread count back."""
    import torch

    threads = torch.get_num_threads()
    try:
        step.call()
    except UserError as e:
        raise RunFailed(f"{step.module} exited: error: {e}") from None
    finally:
        torch.set_num_threads(threads)


def in_subprocess(step: Step, log: Path, echo: bool = True, live: set | None = None) -> None:
    """`python -m <module> <argv>` in a fresh interpreter, its output to `log` (and the console when `echo`). The
    child is stopped when this returns or dies, so no run goes on writing into its folder unseen; `live` holds it
    while it runs (a launcher running several at once stops them all on Ctrl-C)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {sys.executable} -m {step.module} {' '.join(step.argv)}\n")
        f.flush()
        proc = subprocess.Popen([sys.executable, "-m", step.module, *step.argv], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env, preexec_fn=_die_with_parent)
        live = live if live is not None else set()
        live.add(proc)
        try:
            assert proc.stdout is not None  # internal invariant: stdout=PIPE always gives a stream
            for line in proc.stdout:
                f.write(line)
                f.flush()
                if echo:
                    tqdm.write(line.rstrip("\n"))
            code = proc.wait()
        finally:
            if proc.poll() is None:  # SIGTERM is safe at any moment: finetune replaces its files atomically
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            live.discard(proc)
    if code != 0:
        raise RunFailed(f"{step.module} exited with code {code}; see {log}")


def _die_with_parent() -> None:
    """In the child, before exec (Linux): SIGTERM when the sweep's process dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass  # no libc by that name: the child just lives on, as it would elsewhere


def _finetune(settings: RunSettings) -> None:
    """A finetune run here, as `python -m minigpt2.finetune --settings FILE` runs it; Ctrl-C stops the sweep too."""
    from app.finetune import Interrupted, run

    cli.check_environment(settings)
    try:
        run(settings)
    except Interrupted:
        raise KeyboardInterrupt from None


def _evaluate(settings: EvaluateSettings) -> None:
    """A follow-up evaluation here, as `python -m minigpt2.evaluate --settings FILE` runs it."""
    from app import evaluate

    evaluate.run(settings)


# ---------------------------------------------------------------------------------------------- the run folder

def _json(path: Path) -> dict | None:
    try:
        return runfolder.read_json(path)
    except runfolder.RunFolderError:  # none there, or not a JSON object
        return None


def read_metrics(run_dir: Path) -> dict | None:
    """The run's metrics.json, or None when there is none (or it is unreadable)."""
    return _json(run_dir / runfolder.METRICS_FILE)


def is_finished(run_dir: str | os.PathLike) -> bool:
    """True when finetune completed in `run_dir` and the folder is whole: its config.json, the final metrics.json
    (no `stopped_after_epoch`) and the prediction files it names (a folder deleted midway and partly recreated by a
    run's last writes is not finished)."""
    run_dir = Path(run_dir)
    m = read_metrics(run_dir)
    if m is None or "stopped_after_epoch" in m or "dev" not in m or _json(run_dir / runfolder.CONFIG_FILE) is None:
        return False
    return all(isinstance(m.get(k), str) and (run_dir / m[k]).is_file()
               for k in ("dev_predictions", "test_predictions"))


def is_started(run_dir: Path) -> bool:
    """True when `run_dir` holds a run finetune began (its config.json): resumed from its last saved epoch."""
    return runfolder.is_run_config(run_dir / runfolder.CONFIG_FILE)


def evaluation_done(run_dir: Path, ev: Evaluation) -> bool:
    return (run_dir / ev.output).is_file()


def evaluation_settings_file(run_dir: Path, ev: Evaluation) -> Path:
    """Where a follow-up evaluation's settings are handed over (`python -m minigpt2.evaluate --settings FILE`)."""
    return run_dir / f"{ev.name}.settings.json"


def recorded_settings(run_dir: Path) -> RunSettings | None:
    """The settings the folder's experiment.json says it belongs to; None without one. A record written before
    settings records (finetune flags, "args") is read through the CLI builder, as finetune would read them now."""
    path = run_dir / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if "schema" not in record and isinstance(record.get("args"), list):
            return cli.settings_of(cli.options_from_argv(record["args"]))
        return RunSettings.from_dict(record["settings"])
    except (ValueError, KeyError, TypeError, UserError, SystemExit) as e:
        raise RunFolderConflict(f"{path}: not a record this version can read ({type(e).__name__}: {e}); delete "
                                f"{run_dir} or choose another --runs-dir") from None


def data_folder(settings: RunSettings) -> Path:
    """The data folder a run reads, absolute: its data_dir, else finetune's (MINIGPT2_DATA_DIR or its default)."""
    return Path(data_dir(settings.paths.data_dir)).resolve()


def check_inputs(run_dir: Path, run: Run) -> None:
    """Refuse to reuse a finished run whose base weights, data files or synthetic file now hash differently from
    what its config.json recorded; the difference is shown, nothing deleted. An input no longer on this machine
    is not compared: the run's results still stand for what it was."""
    from app.finetune import data_files
    from app.runmodel import base_weights_file

    recorded = (_json(run_dir / runfolder.CONFIG_FILE) or {}).get("fingerprint")
    if not recorded:  # a run made before fingerprints: nothing to compare
        return
    s = run.settings
    try:
        weights = base_weights_file(s.model.model, offline=True)
    except UserError:
        weights = None
    files = [f for f in data_files(get_task(s.data.task), data_folder(s)) if f.is_file()]
    if s.data.synthetic and not Path(s.data.synthetic.path).is_file():
        s = dataclasses.replace(s, data=dataclasses.replace(s.data, synthetic=None))
    now = runfolder.fingerprint(s, weights, files)
    if weights is None:
        now["base_weights"] = recorded.get("base_weights")
    now["data"] = {**recorded.get("data", {}), **now["data"]}
    try:
        runfolder.check_inputs(run_dir, recorded, now)
    except runfolder.RunFolderError as e:
        raise RunFolderConflict(f"{e}\nDelete {run_dir} to run it again on the new inputs, or restore them.") from None


def prepare_run(run: Run, root: Path) -> bool:
    """The checks before a run starts, made by whoever launches it: the folder must belong to these settings (where
    and how it runs not compared) and, if finished, to these inputs (`RunFolderConflict` otherwise). True when the
    run is finished."""
    run_dir = root / run.name
    old = recorded_settings(run_dir)
    was, now = (defining(old), defining(run.settings)) if old is not None else ({}, {})
    changes = [f"{k}: {was.get(k)!r} -> {now.get(k)!r}" for k in sorted({*was, *now}) if was.get(k) != now.get(k)]
    if changes:
        raise RunFolderConflict(f"{run_dir} holds a run made with other settings:\n  " + "\n  ".join(changes)
                                + "\nDelete that folder or choose another --runs-dir.")
    if is_finished(run_dir):
        check_inputs(run_dir, run)
        return True
    return False


# ---------------------------------------------------------------------------------------------- one run

@dataclass
class SweepResult:
    """What one pass over a sweep did: run names started (finetune invoked), skipped as finished, failed, the
    follow-up evaluations run, and the runs Ctrl-C or SIGTERM stopped (resumable)."""

    started: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    evaluated: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)


def plan(runs: Sequence[Run], root: Path) -> list[tuple[Run, str]]:
    """(run, what would happen): 'done', 'resume', 'run', and ' + <evaluation>' for missing follow-ups."""
    out = []
    for run in runs:
        run_dir = root / run.name
        state = "done" if is_finished(run_dir) else "resume" if is_started(run_dir) else "run"
        todo = [ev.name for ev in run.evaluations if not evaluation_done(run_dir, ev)]
        out.append((run, state + "".join(f" + {name}" for name in todo)))
    return out


def execute(run: Run, root: Path, executor: Executor, where: Placement = Placement(),
            result: SweepResult | None = None) -> None:
    """Bring one run to finished, the one way every launcher runs a run: finetune into `root/<run name>/` (a
    started one resumed) on `where`'s device and threads, then its missing follow-up evaluations, each a `Step` for
    `executor`. Raises on failure, after noting in `result` (when given) what it started and evaluated."""
    run_dir, s = root / run.name, run.settings
    result = result if result is not None else SweepResult()
    log = run_dir / "run.log"
    if not prepare_run(run, root):
        placed = {k: v for k, v in dataclasses.asdict(where).items() if v is not None}
        run_part = dataclasses.replace(s.run, out_dir=str(run_dir), resume=is_started(run_dir))
        settings = dataclasses.replace(s, run=run_part, hardware=dataclasses.replace(s.hardware, **placed))
        run_dir.mkdir(parents=True, exist_ok=True)
        # the data folder too: a later report finds the data without the environment
        atomic_write_json(run_dir / RECORD, {"name": run.name, **runfolder.settings_record(s),
                                             "data_dir": str(data_folder(s))})
        atomic_write_json(run_dir / runfolder.SETTINGS_FILE, runfolder.settings_record(settings))
        result.started.append(run.name)
        executor(Step("minigpt2.finetune", ("--settings", str(run_dir / runfolder.SETTINGS_FILE)),
                      functools.partial(_finetune, settings)), log)
        if not is_finished(run_dir):
            raise RuntimeError(f"finetune returned but {run_dir} holds no final metrics.json")
    for ev in run.evaluations:
        if not evaluation_done(run_dir, ev):
            ev_settings, path = ev.settings_for(run_dir, where.device), evaluation_settings_file(run_dir, ev)
            atomic_write_json(path, runfolder.settings_record(ev_settings))
            executor(Step(ev.module, ("--settings", str(path)), functools.partial(_evaluate, ev_settings)), log)
            if not evaluation_done(run_dir, ev):
                raise RuntimeError(f"{ev.module} returned but wrote no {run_dir / ev.output}")
            result.evaluated.append(f"{run.name}:{ev.name}")
