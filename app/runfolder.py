"""Run folders as a contract: what a run folder holds, what defines the run in it, and who may write into it.

    RUN_DIR/config.json        the settings (typed, and flat as "args"), the run's fingerprint, where it ran
    RUN_DIR/metrics.json       per epoch and best (strict JSON), rewritten after every epoch and at the end
    RUN_DIR/last/state.safetensors   the resume state of the last finished epoch: one file, replaced atomically
    RUN_DIR/best/              the best epoch's weights (model + config, head, or a LoRA adapter)
    RUN_DIR/<course files>     dev/test predictions

Every file is written atomically (temp, fsync, rename). The fingerprint records what defines the run: the settings
that change results, the sha256 of the base weights, of the data files and of any synthetic file, and the code
version. `--resume` with other run-defining settings or other inputs is refused with a one-line diff; a fresh run
into a folder that holds a run is refused unless `--overwrite`.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

from minigpt2.download import sha256_file
from minigpt2.errors import UserError

from .settings import RESUME_MAY_CHANGE, RunSettings, defining

CONFIG_FILE, METRICS_FILE = "config.json", "metrics.json"
HELDOUT_BASE_FILE = "heldout-nll-base.json"  # the held-out likelihood before training (generative tasks)
# What a run writes at the top of its folder besides prediction files: removed by --overwrite.
RUN_PARTS = ("best", "last", "quantized", CONFIG_FILE, METRICS_FILE, "subsets.json", HELDOUT_BASE_FILE)


class RunFolderError(UserError, ValueError):
    """A run folder that does not hold what the command needs, or holds a run it must not touch."""


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """The package version and, in a git checkout, the commit and whether the work tree has changes."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        out: dict[str, Any] = {"package": version("minigpt2")}
    except PackageNotFoundError:
        out = {"package": None}
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=10)
            out.update(git_commit=commit.stdout.strip(), git_dirty=bool(status.stdout.strip()))
    except (OSError, subprocess.SubprocessError):
        pass  # no git here: the package version is all there is
    return out


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
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RunFolderError(f"{path}: not readable as JSON ({e})") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_config(run_dir: Path) -> dict[str, Any]:
    import json

    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunFolderError(f"{path}: not found; is {run_dir} a run folder written by finetune?")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise RunFolderError(f"{path}: not valid JSON ({e})") from None
    if "settings" not in config:
        if (run_dir.parent / CONFIG_FILE).is_file() and run_dir.name in ("best", "last"):
            raise RunFolderError(f"{run_dir} is the {run_dir.name} checkpoint inside a run folder; pass the run "
                                 f"folder itself: {run_dir.parent}")
        raise RunFolderError(f"{path}: no typed settings; {run_dir} is not a run folder of this version of "
                             "finetune (a model checkpoint, or a run of an older version?)")
    return config


def _diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def check_resume(run_dir: Path, settings: RunSettings, print_: Any = print) -> dict[str, Any] | None:
    """The recorded config of the run to continue (None when the folder holds no run yet); refused when the
    run-defining settings or inputs differ."""
    if not (run_dir / CONFIG_FILE).is_file():
        return None
    config = read_config(run_dir)
    old = RunSettings.from_dict(config["settings"])
    changes = _diff(defining(old), defining(settings))
    if changes:
        raise RunFolderError(f"--resume {run_dir}: run-defining settings differ: {'; '.join(changes)}. Only "
                             f"{', '.join(RESUME_MAY_CHANGE)} may change on resume")
    return config


def check_inputs(run_dir: Path, recorded: dict[str, Any], now: dict[str, Any]) -> None:
    """Refuse to resume when the base weights or the data files changed since the run started."""
    changes = []
    rb, nb = recorded.get("base_weights"), now.get("base_weights")
    if (rb or {}).get("sha256") != (nb or {}).get("sha256"):
        changes.append(f"base weights {(rb or {}).get('file')} sha256 {(rb or {}).get('sha256')} -> "
                       f"{(nb or {}).get('file')} sha256 {(nb or {}).get('sha256')}")
    changes += [f"data {c}" for c in _diff(recorded.get("data", {}), now.get("data", {}))]
    if changes:
        raise RunFolderError(f"--resume {run_dir}: the run's inputs changed: {'; '.join(changes)}")


def prepare(run_dir: Path, settings: RunSettings) -> None:
    """A fresh run may not write into a folder that holds a run, unless --overwrite (which removes it first)."""
    if settings.run.resume or not holds_run(run_dir):
        return
    if not settings.run.overwrite:
        raise RunFolderError(f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to "
                             "replace it, or choose another --out-dir")
    for part in RUN_PARTS:
        path = run_dir / part
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
