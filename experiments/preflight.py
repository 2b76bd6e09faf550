"""Fail once, up front: the inputs a sweep's runs share (base weights, data, tokenizer, synthetic files), each
checked once before the first run starts; the first that fails is one `error:` line naming the sweep, the input and
what to do, instead of every run failing the same way in turn."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from minigpt2.errors import UserError

from .runner import data_folder
from .sweeps import Run

if TYPE_CHECKING:
    from app.settings import SyntheticSettings


class PreconditionError(UserError, RuntimeError):
    """An input every run of a sweep needs is missing or unusable."""


def check_preconditions(sweep: str, runs: Sequence[Run]) -> None:
    """Check the inputs of `runs`, each once: the base weights (their header read: an empty or truncated file fails
    here) and the data (the run's task and its follow-up checks') fetched now when missing, GPT-2's tokenizer, the
    synthetic files' sonnets. Raises PreconditionError."""
    from course.fetch import ensure_task_data
    from course.readers import require_files
    from minigpt2.tokenizer import Tokenizer
    from tasks import get_task

    done: set[tuple] = set()
    counts: dict[tuple[str, str], int] = {}

    def once(key: tuple, what: str, check) -> None:  # type: ignore[no-untyped-def]
        if key in done:
            return
        done.add(key)
        try:
            check()
        except UserError as e:
            raise PreconditionError(f"sweep {sweep} cannot start: {what}: {e}") from None

    for run in runs:
        settings = run.settings
        offline = settings.paths.offline
        model = settings.model.model
        if model != "tiny":
            once(("model", model, offline), f"--model {model}", lambda: _check_weights(model, offline))
        folder = data_folder(settings)
        tasks = [settings.data.task] + [ev.task for ev in run.evaluations if ev.task]
        for name in tasks:
            task = get_task(name)

            def data(task=task) -> None:  # type: ignore[no-untyped-def]
                ensure_task_data(task.name, folder, offline=offline)
                require_files(folder, sorted(set(task.files.inputs())), task.name)
            once(("data", name, str(folder), offline), f"the {name} data", data)
        tokenizer_dir = settings.paths.tokenizer_dir
        once(("tokenizer", tokenizer_dir), "GPT-2's tokenizer", lambda: Tokenizer(tokenizer_dir))
        syn = settings.data.synthetic
        if syn is not None:
            once(("synthetic", syn.path, syn.n, syn.filter), f"--synthetic {syn.path}",
                 lambda syn=syn: _check_synthetic(syn, counts))


def _check_weights(model: str, offline: bool) -> None:
    """The weights --model names, downloaded if a missing preset, their safetensors header read (nothing loaded)."""
    from app.runmodel import base_weights_file
    from minigpt2.checkpoint import check_safetensors

    path = base_weights_file(model, offline)
    if path is not None:
        check_safetensors(path)


def _check_synthetic(syn: SyntheticSettings, counts: dict[tuple[str, str], int]) -> None:
    """A run's synthetic file exists and holds the sonnets it asks for; `counts`: each file's per filter, read once."""
    from distill.synthetic import load_synthetic

    if not Path(syn.path).is_file():
        raise PreconditionError(f"{syn.path}: no such file; make it with `python -m distill.generate "
                                f"--teacher {Path(syn.path).stem} --n 1000 --out {syn.path}`")
    key = (syn.path, syn.filter)
    if key not in counts:
        counts[key] = len(load_synthetic(syn.path, filter=syn.filter))
    if syn.n is not None and counts[key] < syn.n:
        raise PreconditionError(f"{syn.path}: asked for {syn.n} synthetic sonnets (filter={syn.filter}) but it has "
                                f"only {counts[key]}")
