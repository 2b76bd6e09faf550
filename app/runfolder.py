"""Run folders as a contract: what a run folder holds, what defines the run in it, and who may write into it.

    RUN_DIR/config.json        the settings ({"schema": 2, "settings": ...}; older layouts are upgraded on read),
                               the run's fingerprint, where it ran
    RUN_DIR/metrics.json       per epoch and best (strict JSON), rewritten after every epoch and at the end; at
                               the end also the sha256 of every file scored ("files_sha256": predictions, samples,
                               and later evaluate's outputs) and scored against ("references_sha256")
    RUN_DIR/last/state.safetensors   the resume state of the last finished epoch: one file, replaced atomically
    RUN_DIR/best/              the best epoch's weights (model + config, head, or a LoRA adapter)
    RUN_DIR/<course files>     dev/test predictions

Every file is written atomically (temp, fsync, rename). The fingerprint records what defines the run: the settings
that change results, the sha256 of the base weights, of the data files and of any synthetic file, and the code
version (the package version, the git commit and whether a tracked file had changes). `--resume` with other
run-defining settings or other inputs is refused with a one-line diff; a fresh run into a folder that holds a run is
refused unless `--overwrite`, which removes only what a run writes (the parts above, the prediction, evaluation
and zero-shot files) and only from a folder whose config.json is a run's: a model checkpoint folder
(config.json + model.safetensors) is refused, and nothing in it is touched.

One process at a time: `finetune` holds RUN_DIR/run.lock (its pid and host) while it runs; a second one on the
same folder is refused naming that pid, and a lock left by a process that no longer exists is taken over.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any, Iterator, TypeVar

from minigpt2.atomic import atomic_write_json
from minigpt2.download import sha256_file
from minigpt2.errors import UserError

from .settings import EvaluateSettings, RunSettings, defining

S = TypeVar("S", RunSettings, EvaluateSettings)

CONFIG_FILE, METRICS_FILE = "config.json", "metrics.json"
HELDOUT_BASE_FILE = "heldout-nll-base.json"  # the held-out likelihood before training (generative tasks)
# What a run writes at the top of its folder besides prediction files: removed by --overwrite.
RUN_PARTS = ("best", "last", "quantized", CONFIG_FILE, METRICS_FILE, "subsets.json", HELDOUT_BASE_FILE)
LOCK_FILE = "run.lock"
SETTINGS_FILE = "settings.json"  # what a sweep hands a run: its settings (`python -m minigpt2.finetune --settings`)
SETTINGS_SCHEMA = 2  # a settings record's layout (config.json, settings.json, an evaluation's): 2 has no flat "args"


class RunFolderError(UserError, ValueError):
    """A run folder that does not hold what the command needs, or holds a run it must not touch."""


# The folder whose git state a run records: the checkout this package was imported from.
CODE_FOLDER = Path(__file__).resolve().parent.parent


def git_state(folder: Path) -> dict[str, Any]:
    """The commit of the git checkout `folder` is in and whether a tracked file differs from it (`git rev-parse
    HEAD`, `git status --porcelain`); both None when `folder` is not in a git checkout (or git is missing)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                                    capture_output=True, text=True, timeout=10)
            if status.returncode == 0:
                return {"git_commit": commit.stdout.strip(), "git_dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        pass  # no git here: the package version is all there is
    return {"git_commit": None, "git_dirty": None}


@functools.lru_cache(maxsize=4)
def code_version(folder: Path | None = None) -> dict[str, Any]:
    """The package version and the git state (`git_state`) of the code a run runs: the checkout of this package
    (CODE_FOLDER) unless `folder` is given."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        out: dict[str, Any] = {"package": version("minigpt2")}
    except PackageNotFoundError:
        out = {"package": None}
    return {**out, **git_state(folder or CODE_FOLDER)}


def references_sha256(files: dict[str, tuple[str, str, Path | None, bool]]) -> dict[str, dict[str, Any]]:
    """The reference files a run scored against, for metrics.json's "references_sha256": key -> (task, split, file,
    exact) as {"task", "split", "file", "exact", "sha256"}. `exact`: that very file is meant (--test-references, or
    data outside the run's data folder); else it is the task's file of that split in the run's data folder, looked
    for there again (the folder may have moved) when a report re-checks it. Files that do not exist are left out:
    nothing was scored against them."""
    return {key: {"task": task, "split": split, "file": str(Path(path).resolve()), "exact": exact,
                  "sha256": sha256_file(path)}
            for key, (task, split, path, exact) in files.items() if path is not None and Path(path).is_file()}


def record_scored(run_dir: Path, files: list[str], references: dict[str, dict[str, Any]]) -> None:
    """Add files written into `run_dir` after the run finished (`minigpt2.evaluate`'s predictions and its eval-*.json)
    and the references they were scored against to the run's metrics.json, so that a report re-checks them too.
    Nothing when the run has no metrics.json (it never finished: nothing reads these files for it)."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return
    with locked(run_dir):  # never between the epochs' writes of a finetune still running in this folder
        metrics = read_json(path)
        metrics["files_sha256"] = {**(metrics.get("files_sha256") or {}),
                                   **{name: sha256_file(run_dir / name) for name in files}}
        metrics["references_sha256"] = {**(metrics.get("references_sha256") or {}), **references}
        atomic_write_json(path, metrics)


def fingerprint(settings: RunSettings, base_weights: Path | None, data_files: list[Path]) -> dict[str, Any]:
    """What defines a run: results-changing settings, sha256 of its inputs, the code version."""
    inputs = {str(p): sha256_file(p) for p in data_files}
    if settings.data.synthetic:
        inputs[settings.data.synthetic.path] = sha256_file(settings.data.synthetic.path)
    base = None if base_weights is None else {"file": str(base_weights), "sha256": sha256_file(base_weights)}
    return {"settings": defining(settings), "base_weights": base,
            "data": {Path(k).name: v for k, v in inputs.items()}, "code": code_version()}


def holds_run(run_dir: Path) -> bool:
    return any((run_dir / part).exists() for part in RUN_PARTS)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object the run wrote; one line naming the file when it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RunFolderError(f"{path}: not readable as JSON ({e})") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def written_files(run_dir: Path) -> list[Path]:
    """Everything in `run_dir` that a run (finetune, evaluate, --zero-shot) writes: RUN_PARTS, the prediction
    files of every task and mode (and their other samples, --eval-samples), their zero-shot and re-scored copies
    and the eval-*.json figures. Nothing else."""
    from tasks import TASKS, get_task

    from .measures import sample_file_name
    from .settings import MAX_EVAL_SAMPLES

    names = set(RUN_PARTS)
    for name in TASKS:
        task = get_task(name)
        for split in ("dev", "test"):
            outputs = {task.format.output_name(split, mode) for mode in ("full-model", "last-linear-layer")}
            outputs |= {sample_file_name(o, k) for o in outputs for k in range(1, MAX_EVAL_SAMPLES)}
            names |= outputs | {f"zero-shot-{o}" for o in outputs} | {f"rescored-{o}" for o in outputs}
            names |= {f"eval-{split}.json", f"eval-{name}-zero-shot-{split}.json"}
    return [run_dir / n for n in sorted(names) if (run_dir / n).exists() or (run_dir / n).is_symlink()]


def is_run_config(path: Path) -> bool:
    """True when `path` is a config.json that finetune wrote (a JSON object with the typed settings)."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(config, dict) and isinstance(config.get("settings"), dict)


def read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunFolderError(f"{path}: not found; is {run_dir} a run folder written by finetune?")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise RunFolderError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or "settings" not in config:
        if (run_dir.parent / CONFIG_FILE).is_file() and run_dir.name in ("best", "last"):
            raise RunFolderError(f"{run_dir} is the {run_dir.name} checkpoint inside a run folder; pass the run "
                                 f"folder itself: {run_dir.parent}")
        raise RunFolderError(f"{path}: no typed settings; {run_dir} is not a run folder of this version of "
                             "finetune (a model checkpoint, or a run of an older version?)")
    _check_schema(config, path)
    return config


def _check_schema(record: dict[str, Any], path: Path) -> None:
    """One line naming the file when its settings record is of a layout newer than this code reads (records
    older than the "schema" key have none, and are upgraded on read)."""
    schema = record.get("schema", 1)
    if isinstance(schema, bool) or not isinstance(schema, int) or schema > SETTINGS_SCHEMA:
        raise RunFolderError(f"{path}: settings schema {json.dumps(schema)}, expected an integer <= "
                             f"{SETTINGS_SCHEMA} (a file written by a newer version of minigpt2?)")


def settings_record(settings: RunSettings | EvaluateSettings) -> dict[str, Any]:
    """A command's settings as a file holds them, versioned: a run's (config.json, a sweep's settings.json) or an
    evaluation's (a sweep's RUN_DIR/<evaluation>.settings.json)."""
    return {"schema": SETTINGS_SCHEMA, "settings": settings.to_dict()}


# What a settings file holds, by the class read from it: the words of the line a file that holds none gets.
_RECORDS = {RunSettings: "the run's \"settings\" (as a run folder's config.json or settings.json holds them)",
            EvaluateSettings: "the evaluation's \"settings\" (as a sweep writes them into the run folder)"}


def read_settings_file(path: Path, cls: type[S] = RunSettings) -> S:
    """The `cls` settings (RunSettings or EvaluateSettings) in a `settings_record` file; one line naming the file
    when it is not one, or its settings do not fit this version of the code."""
    from .settings import SettingsError

    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise RunFolderError(f"{path}: cannot be read ({e.strerror or e})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise RunFolderError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise RunFolderError(f"{path}: expected a JSON object with {_RECORDS[cls]}")
    _check_schema(record, path)
    try:
        return cls.from_dict(record["settings"])
    except UserError as e:  # a group's own check (PrecisionError) too: every refusal names the file
        raise SettingsError(f"{path}: {e}") from None


def saved_settings(run_dir: Path) -> RunSettings:
    """The `RunSettings` a run folder recorded, read from its config.json and upgraded from an older layout; one
    line naming the file when they do not fit this version of the code."""
    from .settings import SettingsError

    config = read_config(run_dir)  # its own RunFolderError names the file already
    try:
        return RunSettings.from_dict(config["settings"])
    except UserError as e:  # a group's own check (PrecisionError) too: every refusal names the file
        raise SettingsError(f"{run_dir / CONFIG_FILE}: {e}") from None


def _diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def check_resume(run_dir: Path, settings: RunSettings, print_: Any = print) -> dict[str, Any]:
    """The recorded config of the run to continue; refused when there is no run to continue (`check_resumable`),
    when its config.json was edited by hand, or when the run-defining settings differ."""
    check_resumable(run_dir)
    config = read_config(run_dir)
    old = RunSettings.from_dict(config["settings"])
    recorded, now = (config.get("fingerprint") or {}).get("settings"), defining(old)
    # Keys in both only: a setting added to the code since the run started has no recorded value to compare.
    edited = [f"{k}: {recorded[k]!r} -> {now[k]!r}" for k in sorted(set(recorded) & set(now))
              if recorded[k] != now[k]] if isinstance(recorded, dict) else []
    if edited:  # the settings were changed after the run started: its state was made with the recorded ones
        raise RunFolderError(f"--resume {run_dir}: {run_dir / CONFIG_FILE} was edited: its settings differ from "
                             f"its fingerprint ({'; '.join(edited)}); a run cannot be changed by editing its "
                             "config.json: restore it, or start a new run")
    changes = _diff(defining(old), defining(settings))
    if changes:
        from .cli import may_change_on_resume

        raise RunFolderError(f"--resume {run_dir}: run-defining settings differ: {'; '.join(changes)}. Only "
                             f"{', '.join(may_change_on_resume())} may change on resume")
    return config


def check_inputs(run_dir: Path, recorded: dict[str, Any], now: dict[str, Any]) -> None:
    """Refuse to resume when the base weights or the data files changed since the run started, or when the run
    recorded no fingerprint of them (nothing to compare with)."""
    if not recorded:
        raise RunFolderError(f"--resume {run_dir}: its {CONFIG_FILE} records no fingerprint of the run's inputs (base "
                             "weights, data files), so they cannot be checked against today's; start the run afresh "
                             "with --overwrite or in another --out-dir")
    changes = []
    rb, nb = recorded.get("base_weights"), now.get("base_weights")
    if (rb or {}).get("sha256") != (nb or {}).get("sha256"):
        changes.append(f"base weights {(rb or {}).get('file')} sha256 {(rb or {}).get('sha256')} -> "
                       f"{(nb or {}).get('file')} sha256 {(nb or {}).get('sha256')}")
    changes += [f"data {c}" for c in _diff(recorded.get("data", {}), now.get("data", {}))]
    if changes:
        raise RunFolderError(f"--resume {run_dir}: the run's inputs changed: {'; '.join(changes)}")


def check_fresh(run_dir: Path, settings: RunSettings) -> None:
    """A fresh run may not write into a folder that holds a run, unless --overwrite; a folder whose config.json
    is not a run's is never overwritten."""
    if settings.run.resume or not holds_run(run_dir):
        return
    config = run_dir / CONFIG_FILE
    if config.exists() and not is_run_config(config):
        raise RunFolderError(f"{config}: not the config.json of a finetune run (a model checkpoint?); --out-dir "
                             f"{run_dir} is not a run folder, and nothing in it is replaced: choose another "
                             "--out-dir")
    if not settings.run.overwrite:
        raise RunFolderError(f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to "
                             "replace it, or choose another --out-dir")


def prepare(run_dir: Path, settings: RunSettings) -> None:
    """`check_fresh`, then (--overwrite) remove what the old run wrote, and nothing else."""
    check_fresh(run_dir, settings)
    if settings.run.resume or not settings.run.overwrite:
        return
    for path in written_files(run_dir):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def check_resumable(run_dir: Path) -> None:
    """`--resume` continues a run that exists: a missing folder (a mistyped --out-dir), a folder without a run, or
    a run that finished epochs but whose resume state is gone is refused instead of silently starting over. A run
    stopped before its first epoch ended has nothing to lose and starts from epoch 1."""
    from minigpt2.resume import check_resume_state, has_resume_state

    if not run_dir.is_dir():
        raise RunFolderError(f"--resume --out-dir {run_dir}: no such folder; check the path (a fresh run is "
                             "started without --resume)")
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunFolderError(f"--resume --out-dir {run_dir}: holds no run ({CONFIG_FILE} not found); check the "
                             "path, or start a fresh run without --resume")
    # metrics.json is written after the resume state of each epoch: with it and without the state, the state is lost.
    if not has_resume_state(run_dir / "last") and (run_dir / METRICS_FILE).exists():
        raise RunFolderError(f"--resume {run_dir}: its resume state {run_dir / 'last'} is missing although the run "
                             "finished an epoch; it cannot be continued: start it again with --overwrite")
    check_resume_state(run_dir / "last")  # a damaged state is refused before the run rewrites anything


def check_still_there(run_dir: Path) -> None:
    """Refuse to go on writing into a run folder whose config.json vanished (the folder was deleted or moved
    while the run was going): the files would make a folder that looks like a run and is not one."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunFolderError(f"{run_dir / CONFIG_FILE}: gone while the run was going (was {run_dir} deleted or "
                             "moved?); the run stops here without writing more: start it again")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold RUN_DIR/run.lock while a run writes into `run_dir` (creating the folder if needed, and removing it
    again if the run leaves it empty). A lock held by a live process is refused naming its pid; one left by a
    process that no longer exists (killed) is taken over."""
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunFolderError(f"--out-dir {run_dir}: is a file, not a folder; choose another --out-dir") from None
    except OSError as e:
        raise RunFolderError(f"--out-dir {run_dir}: cannot create the run folder ({e.strerror or e}); choose a "
                             "writable --out-dir") from None
    if not run_dir.is_dir():
        raise RunFolderError(f"--out-dir {run_dir}: is a file, not a folder; choose another --out-dir")
    path, host = run_dir / LOCK_FILE, socket.gethostname()
    record = json.dumps({"pid": os.getpid(), "host": host}).encode()
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text(encoding="utf-8"))
                pid, their_host = int(holder["pid"]), str(holder["host"])
            except (OSError, ValueError, KeyError, TypeError):
                pid, their_host = None, host  # unreadable: a lock cut short by a kill; taken over
            if pid is not None and (their_host != host or _pid_alive(pid)):
                where = "" if their_host == host else f" on host {their_host}"
                raise RunFolderError(f"{run_dir} is in use by another finetune (pid {pid}{where}, {path}); wait "
                                     "for it to end, or choose another --out-dir") from None
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        except OSError as e:
            raise RunFolderError(f"--out-dir {run_dir}: cannot write its lock file {path} ({e.strerror or e}); "
                                 "choose a writable --out-dir") from None
        with os.fdopen(fd, "wb") as f:
            f.write(record)
        break
    else:
        raise RunFolderError(f"{path}: could not take the run folder's lock; try again")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if path.read_bytes() == record:  # still ours (the folder may have been deleted or taken over)
                path.unlink()
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only when empty: a run that failed before writing anything leaves no folder
