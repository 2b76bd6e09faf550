"""Run a sweep's finetune commands, each into its own folder, skipping what is already finished.

    <runs-dir>/<sweep>/<run name>/    the finetune run folder (config.json, metrics.json, best/, predictions)
                      experiment.json the command line this folder belongs to (checked on every re-run)
                      run.log         the run's output (subprocess mode)

A run is finished when its folder is complete: the run's config.json and the final metrics.json, which names
the dev and test prediction files (only written after training ends and the best model has predicted dev
and test), both there, and no `stopped_after_epoch`. Any other folder holding a started run (its config.json) is
continued with finetune's `--resume`: from its last saved epoch, or from epoch 1 when it died in its first. A run
that fails is reported and the sweep goes on with the next one.

Two ways to execute a run: a subprocess per run (the default: a crash or a CUDA out-of-memory error cannot take
the sweep down, and every run starts with empty GPU memory) or in this process (`--in-process`, the default
under --tiny: no interpreter start-up per run, which dominates a tiny run's time on a CPU). `execute` is the one
way to run one run; `run_sweep` calls it for each run in turn, `experiments.launch` from worker threads (`--jobs`)
or Ray tasks (`--launcher ray`).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from .sweeps import REPO, Evaluation, Run

# An executor runs `python -m <module> <argv>` and raises if it fails.
Executor = Callable[[str, Sequence[str], Path], None]

# Settings that change how a run executes but not what it computes: a re-run with other values is the same run.
NEUTRAL = ("paths.tokenizer_dir", "hardware.device", "optim.progress", "eval.batch_size", "optim.compile",
           "paths.offline", "hardware.threads", "hardware.fetch_timeout")
RECORD = "experiment.json"


class RunFolderConflict(RuntimeError):
    """A run folder holds a run made with other settings than the sweep now asks for."""


class RunFailed(RuntimeError):
    """A finetune (or follow-up) command exited with an error; its own output already says why."""


def in_process(module: str, argv: Sequence[str], log: Path) -> None:
    """Call `<module>.main(argv)` here; a `SystemExit` with a non-zero code is a failure. The run's --threads
    applies to the run only: this process gets its thread count back."""
    import torch

    threads = torch.get_num_threads()
    try:
        importlib.import_module(module).main(list(argv))
    except SystemExit as e:
        if e.code == 130:  # finetune's answer to Ctrl-C: the sweep stops too, as it does around a subprocess
            raise KeyboardInterrupt from None
        if e.code not in (None, 0):
            raise RunFailed(f"{module} exited: {e.code}") from None
    finally:
        torch.set_num_threads(threads)


def in_subprocess(module: str, argv: Sequence[str], log: Path, echo: bool = True,
                  live: set | None = None) -> None:
    """Run `python -m <module> argv` in a fresh interpreter; its output goes to `log` (and the console when
    `echo`). Interrupted here (Ctrl-C, a cancelled Ray task), the child is stopped before this returns; it also
    gets SIGTERM if this process dies, so no run goes on writing into its folder unseen. `live`, when given, holds
    the child while it runs (a launcher running several at once stops them all on Ctrl-C)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {sys.executable} -m {module} {' '.join(argv)}\n")
        f.flush()
        proc = subprocess.Popen([sys.executable, "-m", module, *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env, preexec_fn=_die_with_parent)
        if live is not None:
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
            stop(proc)
            if live is not None:
                live.discard(proc)
    if code != 0:
        raise RunFailed(f"{module} exited with code {code}; see {log}")


def stop(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """End a child that is still running: SIGTERM (finetune's files are replaced atomically, so any moment is a
    safe one), then SIGKILL after `grace` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _die_with_parent() -> None:
    """In the child, before exec (Linux): SIGTERM when the sweep's process dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass  # no libc by that name: the child just lives on, as it would elsewhere


def read_metrics(run_dir: Path) -> dict | None:
    """The run's metrics.json, or None when there is none (or it is unreadable)."""
    try:
        return json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_finished(run_dir: str | os.PathLike) -> bool:
    """True when finetune completed in `run_dir` and the folder is whole: its config.json (a JSON object), the
    final metrics.json and the prediction files it names are there (a folder deleted midway and partly recreated
    by a run's last writes is not finished)."""
    run_dir = Path(run_dir)
    m = read_metrics(run_dir)
    if not isinstance(m, dict) or "stopped_after_epoch" in m or "dev" not in m or "test_predictions" not in m:
        return False
    try:
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and all(isinstance(m.get(k), str) and (run_dir / m[k]).is_file()
                                            for k in ("dev_predictions", "test_predictions"))


def is_started(run_dir: Path) -> bool:
    """True when `run_dir` holds a run finetune began (its config.json): `--resume` continues it, from its last
    saved epoch or, if it died in its first, from epoch 1."""
    from app import runfolder

    return runfolder.is_run_config(run_dir / runfolder.CONFIG_FILE)


def evaluation_done(run_dir: Path, ev: Evaluation) -> bool:
    return (run_dir / ev.output).is_file()


def comparable(args: Sequence[str]) -> list[str]:
    """`args` without the settings that do not change a run's results (see NEUTRAL), as sorted flags (a flag
    list finetune cannot read compares as itself)."""
    from app import cli
    from minigpt2.errors import UserError

    try:
        options = cli.options_from_argv(args)
    except (SystemExit, UserError):
        return list(args)
    return cli.argv_of(dict(sorted((k, v) for k, v in options.items() if k not in NEUTRAL)))


def check_record(run_dir: Path, run: Run) -> None:
    """Refuse to reuse a folder that belongs to another command line (e.g. the sweep changed its model)."""
    path = run_dir / RECORD
    if not path.is_file():
        return
    old = json.loads(path.read_text(encoding="utf-8")).get("args", [])
    if comparable(old) != comparable(run.args):
        raise RunFolderConflict(
            f"{run_dir} holds a run made with other arguments:\n  was: {' '.join(comparable(old))}\n"
            f"  now: {' '.join(comparable(run.args))}\nDelete that folder or choose another --runs-dir.")


def check_inputs(run_dir: Path, run: Run) -> None:
    """Refuse to reuse a finished run whose inputs changed since it ran: the base weights, the data files or the
    synthetic file now hash differently from what its config.json recorded (say, a regenerated synthetic file
    under the same name). The difference is shown; nothing is deleted. An input that is no longer on this
    machine is not compared: the run's results still stand for what it was."""
    from app import runfolder
    from app.finetune import data_files
    from app.runmodel import base_weights_file
    from minigpt2.errors import UserError
    from course.readers import data_dir
    from tasks import get_task

    try:
        recorded = json.loads((run_dir / runfolder.CONFIG_FILE).read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, ValueError):
        recorded = None
    if not recorded:  # a run made before fingerprints: nothing to compare
        return
    s = run.run_settings({"run.out_dir": str(run_dir)})
    try:
        weights = base_weights_file(s.model.model, offline=True)
    except UserError:
        weights = None
    files = [f for f in data_files(get_task(s.data.task), data_dir(s.paths.data_dir)) if f.is_file()]
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


def resolved_data_dir(run: Run) -> str:
    """The data folder a run will read, as an absolute path: its --data-dir, else what finetune resolves from
    MINIGPT2_DATA_DIR or its default now (recorded, so a later report finds the data without the environment)."""
    from course.readers import data_dir

    return str(Path(data_dir(run.options.get("paths.data_dir"))).resolve())


@dataclass
class SweepResult:
    """What one pass over a sweep did: run names started (finetune invoked), skipped as finished, failed."""

    started: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    evaluated: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)  # stopped by Ctrl-C / SIGTERM: resumable


def plan(runs: Sequence[Run], root: Path) -> list[tuple[Run, str]]:
    """(run, what would happen): 'done', 'resume', 'run', and ' + <evaluation>' for missing follow-ups."""
    out = []
    for run in runs:
        run_dir = root / run.name
        if is_finished(run_dir):
            state = "done"
        elif is_started(run_dir):
            state = "resume"
        else:
            state = "run"
        todo = [ev.name for ev in run.evaluations if not evaluation_done(run_dir, ev)]
        out.append((run, state + "".join(f" + {name}" for name in todo)))
    return out


@dataclass
class Outcome:
    """What `execute` did with one run: started finetune (or found it finished), and which evaluations it ran."""

    started: bool
    evaluated: list[str] = field(default_factory=list)


def prepare_run(run: Run, root: Path) -> bool:
    """The checks before a run starts, made by whoever launches it: the folder must belong to this command line
    and, if finished, to these inputs (`RunFolderConflict` otherwise). True when the run is finished."""
    run_dir = root / run.name
    check_record(run_dir, run)
    if is_finished(run_dir):
        check_inputs(run_dir, run)
        return True
    return False


def execute(run: Run, root: Path, executor: Executor, exec_flags: Sequence[str] = (),
            outcome: Outcome | None = None) -> Outcome:
    """Bring one run to finished: finetune into `root/<run name>/` (a started one resumed), then its missing
    follow-up evaluations. The one way every launcher runs a run (in this process, a subprocess, a worker thread's
    subprocess or a Ray task's). `exec_flags` are finetune flags
    that say where and how it executes (`--device`, `--threads`; neutral, see NEUTRAL). Raises on failure,
    after filling in `outcome` (when given) with what it got to do."""
    run_dir = root / run.name
    outcome = outcome if outcome is not None else Outcome(started=False)
    if not prepare_run(run, root):
        resume = is_started(run_dir)  # --resume goes on from its last epoch, or from epoch 1 if it died in its first
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RECORD).write_text(json.dumps({"name": run.name, "args": list(run.args),
                                                  "settings": run.knobs,
                                                  "data_dir": resolved_data_dir(run)}, indent=2) + "\n")
        argv = [*run.args, "--out-dir", str(run_dir), *exec_flags] + (["--resume"] if resume else [])
        outcome.started = True
        executor("minigpt2.finetune", argv, run_dir / "run.log")
        if not is_finished(run_dir):
            raise RuntimeError(f"finetune returned but {run_dir} holds no final metrics.json")
    flags = list(exec_flags)
    device = flags[flags.index("--device"):][:2] if "--device" in flags else []  # evaluate takes --device too
    for ev in run.evaluations:
        if not evaluation_done(run_dir, ev):
            argv = [str(run_dir) if a == "RUN_DIR" else a for a in ev.argv] + device
            executor(ev.module, argv, run_dir / "run.log")
            if not evaluation_done(run_dir, ev):
                raise RuntimeError(f"{ev.module} returned but wrote no {run_dir / ev.output}")
            outcome.evaluated.append(f"{run.name}:{ev.name}")
    return outcome


def run_sweep(runs: Sequence[Run], root: str | os.PathLike, executor: Executor = in_subprocess,
              progress: bool = True, exec_flags: Sequence[str] = ()) -> SweepResult:
    """Execute every unfinished run of a sweep into `root/<run name>/`, one after the other, then its follow-up
    evaluations."""
    root = Path(root)
    result = SweepResult()
    bar = tqdm(runs, desc=f"sweep {root.name}", unit="run", disable=not progress, dynamic_ncols=True)
    for run in bar:
        bar.set_postfix_str(run.name)
        outcome = Outcome(started=False)
        try:
            execute(run, root, executor, exec_flags, outcome)
        except RunFolderConflict:
            raise
        except Exception as e:  # one failed run must not stop the sweep; it is listed at the end
            result.failed[run.name] = f"{type(e).__name__}: {e}"
            # A command that exited with an error said why itself; anything else is a bug here: its traceback.
            tqdm.write(f"run {run.name} FAILED: {e}" + ("" if isinstance(e, RunFailed)
                                                        else f"\n{traceback.format_exc(limit=3)}"))
        finally:
            (result.started if outcome.started else result.skipped).append(run.name)
            result.evaluated += outcome.evaluated
    return result
