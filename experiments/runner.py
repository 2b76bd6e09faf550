"""Run a sweep's finetune commands, each into its own folder, skipping what is already finished.

    <runs-dir>/<sweep>/<run name>/    the finetune run folder (config.json, metrics.json, best/, predictions)
                      experiment.json the command line this folder belongs to (checked on every re-run)
                      run.log         the run's output (subprocess mode)

A run is finished when finetune has written its final metrics.json: it names the test predictions file (only
written after training ends and the best model has predicted dev and test) and has no `stopped_after_epoch`.
A run that stopped midway with a saved epoch is continued with finetune's `--resume`; one that died before its
first epoch ends is started again. A run that fails is reported and the sweep goes on with the next one.

Two ways to execute a run: a subprocess per run (the default: a crash or a CUDA out-of-memory error cannot take
the sweep down, and every run starts with empty GPU memory) or in this process (`--in-process`, the default
under --tiny: no interpreter start-up per run, which dominates a tiny run's time on a CPU).
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

from minigpt2.train import has_resume_state

from .sweeps import REPO, Evaluation, Run

# An executor runs `python -m <module> <argv>` and raises if it fails.
Executor = Callable[[str, Sequence[str], Path], None]

# Flags that change how a run executes but not what it computes: a re-run with other values is the same run.
NEUTRAL_FLAGS = {"--tokenizer-dir": 1, "--device": 1, "--no-progress": 0, "--eval-batch-size": 1, "--compile": 0,
                "--offline": 0}
RECORD = "experiment.json"


class RunFolderConflict(RuntimeError):
    """A run folder holds a run made with other settings than the sweep now asks for."""


class RunFailed(RuntimeError):
    """A finetune (or follow-up) command exited with an error; its own output already says why."""


def in_process(module: str, argv: Sequence[str], log: Path) -> None:
    """Call `<module>.main(argv)` here; a `SystemExit` with a non-zero code is a failure."""
    try:
        importlib.import_module(module).main(list(argv))
    except SystemExit as e:
        if e.code not in (None, 0):
            raise RunFailed(f"{module} exited: {e.code}") from None


def in_subprocess(module: str, argv: Sequence[str], log: Path) -> None:
    """Run `python -m <module> argv` in a fresh interpreter; its output goes to the console and to `log`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {sys.executable} -m {module} {' '.join(argv)}\n")
        f.flush()
        proc = subprocess.Popen([sys.executable, "-m", module, *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env)
        assert proc.stdout is not None  # internal invariant: stdout=PIPE always gives a stream
        for line in proc.stdout:
            f.write(line)
            tqdm.write(line.rstrip("\n"))
        code = proc.wait()
    if code != 0:
        raise RunFailed(f"{module} exited with code {code}; see {log}")


def read_metrics(run_dir: Path) -> dict | None:
    """The run's metrics.json, or None when there is none (or it is unreadable)."""
    try:
        return json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_finished(run_dir: str | os.PathLike) -> bool:
    """True when finetune completed in `run_dir`: final metrics.json and its prediction files are there."""
    run_dir = Path(run_dir)
    m = read_metrics(run_dir)
    if not m or "stopped_after_epoch" in m or "dev" not in m or "test_predictions" not in m:
        return False
    return all((run_dir / m[k]).is_file() for k in ("dev_predictions", "test_predictions"))


def evaluation_done(run_dir: Path, ev: Evaluation) -> bool:
    return (run_dir / ev.output).is_file()


def comparable(args: Sequence[str]) -> list[str]:
    """`args` without the flags that do not change a run's results (see NEUTRAL_FLAGS)."""
    out, skip = [], 0
    for a in args:
        if skip:
            skip -= 1
        elif a in NEUTRAL_FLAGS:
            skip = NEUTRAL_FLAGS[a]
        else:
            out.append(a)
    return out


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
    from app.finetune import base_weights_file, data_files, parse_settings
    from minigpt2.errors import UserError
    from tasks import get_task
    from tasks.readers import data_dir

    try:
        recorded = json.loads((run_dir / runfolder.CONFIG_FILE).read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, ValueError):
        recorded = None
    if not recorded:  # a run made before fingerprints: nothing to compare
        return
    s = parse_settings([*run.args, "--out-dir", str(run_dir)])
    try:
        weights = base_weights_file(s.model.model, offline=True)
    except UserError:
        weights = None
    files = [f for f in data_files(get_task(s.data.task), data_dir(s.data.data_dir)) if f.is_file()]
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


def resolved_data_dir(args: Sequence[str]) -> str:
    """The data folder a run will read, as an absolute path: its --data-dir, else what finetune resolves from
    MINIGPT2_DATA_DIR or its default now (recorded, so a later report finds the data without the environment)."""
    from tasks.readers import data_dir

    given = args[list(args).index("--data-dir") + 1] if "--data-dir" in args else None
    return str(Path(data_dir(given)).resolve())


def missing_flags(runs: Sequence[Run]) -> list[str]:
    """Flags the runs pass that `minigpt2.finetune` does not know (a knob this checkout does not have)."""
    from app.finetune import build_parser

    known = {s for action in build_parser()._actions for s in action.option_strings}
    return sorted({a for run in runs for a in run.args if a.startswith("--")} - known)


@dataclass
class SweepResult:
    """What one pass over a sweep did: run names started (finetune invoked), skipped as finished, failed."""

    started: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    evaluated: list[str] = field(default_factory=list)


def plan(runs: Sequence[Run], root: Path) -> list[tuple[Run, str]]:
    """(run, what would happen): 'done', 'resume', 'run', and ' + <evaluation>' for missing follow-ups."""
    out = []
    for run in runs:
        run_dir = root / run.name
        if is_finished(run_dir):
            state = "done"
        elif has_resume_state(run_dir / "last"):
            state = "resume"
        else:
            state = "run"
        todo = [ev.name for ev in run.evaluations if not evaluation_done(run_dir, ev)]
        out.append((run, state + "".join(f" + {name}" for name in todo)))
    return out


def run_sweep(runs: Sequence[Run], root: str | os.PathLike, executor: Executor = in_subprocess,
              progress: bool = True) -> SweepResult:
    """Execute every unfinished run of a sweep into `root/<run name>/`, then its follow-up evaluations."""
    root = Path(root)
    result = SweepResult()
    bar = tqdm(runs, desc=f"sweep {root.name}", unit="run", disable=not progress, dynamic_ncols=True)
    for run in bar:
        run_dir = root / run.name
        bar.set_postfix_str(run.name)
        try:
            check_record(run_dir, run)
            if is_finished(run_dir):
                check_inputs(run_dir, run)
                result.skipped.append(run.name)
            else:
                resume = has_resume_state(run_dir / "last")
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / RECORD).write_text(json.dumps({"name": run.name, "args": list(run.args),
                                                          "settings": run.settings,
                                                          "data_dir": resolved_data_dir(run.args)}, indent=2) + "\n")
                argv = [*run.args, "--out-dir", str(run_dir)] + (["--resume"] if resume else [])
                result.started.append(run.name)
                executor("minigpt2.finetune", argv, run_dir / "run.log")
                if not is_finished(run_dir):
                    raise RuntimeError(f"finetune returned but {run_dir} holds no final metrics.json")
            for ev in run.evaluations:
                if not evaluation_done(run_dir, ev):
                    argv = [str(run_dir) if a == "RUN_DIR" else a for a in ev.argv]
                    executor(ev.module, argv, run_dir / "run.log")
                    if not evaluation_done(run_dir, ev):
                        raise RuntimeError(f"{ev.module} returned but wrote no {run_dir / ev.output}")
                    result.evaluated.append(f"{run.name}:{ev.name}")
        except RunFolderConflict:
            raise
        except Exception as e:  # one failed run must not stop the sweep; it is listed at the end
            result.failed[run.name] = f"{type(e).__name__}: {e}"
            # A command that exited with an error said why itself; anything else is a bug here: its traceback.
            tqdm.write(f"run {run.name} FAILED: {e}" + ("" if isinstance(e, RunFailed)
                                                        else f"\n{traceback.format_exc(limit=3)}"))
    return result
