"""Re-score a saved run: load its best checkpoint, predict a split, rewrite the course-format file, report.

    python -m minigpt2.evaluate checkpoints/runs/sst-20260101-120000 [--split dev|test]
    python -m minigpt2.evaluate checkpoints/runs/sonnet-... --task quora --zero-shot   # another task, no training

The run's own settings (task, mode, sampling) come from its config.json; `--data-dir`, `--tokenizer-dir` and
`--device` may point elsewhere than at training time. Dev is scored (accuracy or chrF); test is scored where its labels (or
true sonnets) lie beside the data as `python -m course fetch` writes them, or in `--test-references FILE`; without
them only its prediction file is written. Results go to stdout and to RUN_DIR/eval-<split>.json. The model runs at the
run's precision (`--precision`: the same PTQ or QAFT quantization as at the end of training).

`--task T --zero-shot` scores task T with the run's body as it is (e.g. the Quora cloze on a model fine-tuned on
sonnets): only tasks that need no trained head (quora, sonnet) can be scored so. Results go to
RUN_DIR/eval-<task>-zero-shot-<split>.json, predictions to RUN_DIR/zero-shot-<course file name>.

`--settings FILE` evaluates exactly the settings in FILE (`{"schema": 2, "settings": {...}}`, as a sweep writes a
follow-up evaluation's into the run folder); no other flag goes with it.

What an evaluation writes, and the reference file it scored against, is added to the run's metrics.json
("files_sha256", "references_sha256" under the name of its eval-*.json), so that a report re-checks them.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch

from course.readers import data_dir, require_files
from minigpt2.device import parse_device, torch_threads
from minigpt2.errors import exits_on_user_error
from minigpt2.tokenizer import Tokenizer
from minigpt2.atomic import atomic_write_json
from minigpt2.distributed import setup_distributed
from minigpt2.train import seed_everything
from tasks import get_task
from tasks.base import Example, GenerativeTask, PredictSettings, Task, TaskModel

from . import runfolder, speed
from .cli import GROUP, checked, evaluate_settings, settings_file
from .measures import copying_corpora, copying_record, form_record, mean_scores, nll_record, sample_file_name
from .precision import apply_run_precision
from .runmodel import load_run_body, load_run_model
from .settings import EvaluateSettings, RunSettings


def evaluate_run(run_dir: str | Path, split: str = "dev", data: str | None = None, tokenizer_dir: str | None = None,
                 device: str = "auto", task_name: str | None = None, zero_shot: bool = False,
                 test_references: str | None = None, plain: bool = False, offline: bool = False) -> dict[str, Any]:
    """Predict `split` with the run's best checkpoint; returns (and saves) the figures.

    task_name + zero_shot: score another task with the run's body (no head, no training for that task).
    plain: none of `minigpt2.fast` (also when the run was trained with `--plain`).
    """
    run_dir = Path(run_dir)
    if test_references is not None and not Path(test_references).is_file():
        raise runfolder.RunFolderError(f"--test-references {test_references}: file not found")
    config = runfolder.read_config(run_dir)
    checked(lambda: parse_device(device), GROUP["hardware"])
    settings = _settings_here(RunSettings.from_dict(config["settings"]), data, tokenizer_dir, device, plain, offline)
    run_task = settings.data.task
    task = _task_to_score(run_dir, run_task, task_name, zero_shot)
    d = setup_distributed(device)
    module = _best_model(run_dir, config, settings, task, zero_shot).to(d.device)
    tok = Tokenizer(settings.paths.tokenizer_dir)
    folder = data_dir(settings.paths.data_dir)
    needed = list(task.files.inputs(split))
    require_files(folder, needed, task.name)
    changed = [] if zero_shot else changed_data(config, folder, needed)
    for name in changed:  # scored all the same: new data may be the point, but never without saying so
        print(f"warning: {folder / name}: its sha256 differs from the one in the run's fingerprint "
              f"({run_dir / runfolder.CONFIG_FILE}); the data changed since training", file=sys.stderr)
    max_len = min(settings.data.max_length or module.gpt.config.n_positions, module.gpt.config.n_positions)
    # The same seeded subset as at training time, so re-scored figures are of the same rows.
    examples, notes = task.load(folder, split, tok, max_len, settings.data.max_eval, seed=settings.optim.seed)
    if split == "test":  # rows of the test labels without a usable label: warned about, not scored (as dev's)
        notes += task.format.unlabelled_rows(folder, split, Path(test_references) if test_references else None)
    for note in notes:
        print(f"warning: skipped/irregular row: {note}", file=sys.stderr)
    how = settings.predict_settings(d.device)
    first = ("zero-shot-" if zero_shot else "") + task.format.output_name(split, settings.model.mode)
    draws, names = _predict_and_write(task, module, examples, settings, how, tok, d.device, run_dir, first)
    result: dict[str, Any] = {"run_dir": str(run_dir), "task": task.name, "split": split, "examples": len(examples),
                              "predictions": names[0], "malformed_rows": [str(n) for n in notes],
                              "precision": settings.precision.format, "zero_shot": zero_shot,
                              "fine_tuned_on": run_task, "data_changed": changed}
    if len(names) > 1:
        result["samples"] = names
    result.update(_scores(task, split, examples, draws, [run_dir / n for n in names], folder, test_references))
    # What only learning earns: the form of what was written, the held-out likelihood.
    if isinstance(task, GenerativeTask):
        result["form"] = form_record([e.id for e in examples], draws)
        result["copying"] = copying_record([e.id for e in examples], draws,
                                           [len(e.meta["prompt_lines"]) for e in examples],
                                           *copying_corpora(task, folder, Path(test_references) if test_references
                                                            else None))
        refs = task.format.references_by_id(folder, split, Path(test_references) if test_references else None)
        per = task.heldout_nll(module, examples, refs, how, tok, d.device) if refs else None
        if per:
            result["heldout_nll"] = nll_record(per)
    output = f"eval-{task.name}-zero-shot-{split}.json" if zero_shot else f"eval-{split}.json"
    atomic_write_json(run_dir / output, result)
    own = data_dir(RunSettings.from_dict(config["settings"]).paths.data_dir).resolve() == folder.resolve()
    record_evaluation(run_dir, output, names, task, split, folder, test_references, own)
    return result


def record_evaluation(run_dir: Path, output: str, names: list[str], task: Task, split: str, folder: Path,
                      test_references: str | None, own_folder: bool) -> None:
    """Add what this evaluation wrote (its predictions and `output`) and the file it scored against to the run's
    metrics.json (`runfolder.record_scored`), keyed by `output`; that file is recorded as exact unless it is the
    task's own in the run's data folder (`own_folder`). A record that cannot be written takes `output` with it, so
    that the evaluation counts as not done (and a sweep runs it again)."""
    given = Path(test_references) if test_references and split == "test" else None
    refs = runfolder.references_sha256({output: (task.name, split, given or task.format.references_file(folder, split),
                                                 given is not None or not own_folder)})
    try:
        runfolder.record_scored(run_dir, names + [output], refs)
    except BaseException:
        (run_dir / output).unlink(missing_ok=True)
        raise


def _settings_here(settings: RunSettings, data: str | None, tokenizer_dir: str | None, device: str, plain: bool,
                   offline: bool) -> RunSettings:
    """The run's settings with this machine's folders and device; plain if asked now or when it was trained,
    offline if asked now or when it ran offline."""
    return dataclasses.replace(
        settings, paths=dataclasses.replace(settings.paths, data_dir=data or settings.paths.data_dir,
                                            tokenizer_dir=tokenizer_dir or settings.paths.tokenizer_dir,
                                            offline=offline or settings.paths.offline),
        hardware=dataclasses.replace(settings.hardware, device=device, plain=plain or settings.hardware.plain))


def _best_model(run_dir: Path, config: dict[str, Any], settings: RunSettings, task: Task, zero_shot: bool
                ) -> TaskModel:
    """The run's best model for `task`, at the run's precision; with --zero-shot, the run's body in `task`'s
    module, nothing of that task trained."""
    seed_everything(settings.optim.seed)  # a LoRA run on `--model tiny` rebuilds its random base from the seed
    base = (config.get("fingerprint") or {}).get("base_weights")
    module = task.build(load_run_body(run_dir / "best", settings, base))
    if not zero_shot:
        load_run_model(module, run_dir / "best")
    apply_run_precision(module, module.gpt, settings.precision)
    return module


def _task_to_score(run_dir: Path, run_task: str, task_name: str | None, zero_shot: bool) -> Task:
    """The task `evaluate` scores: the run's own, or with --zero-shot another one that reads the LM head."""
    if task_name not in (None, run_task) and not zero_shot:
        raise runfolder.RunFolderError(f"{run_dir} was fine-tuned on {run_task!r}; scoring {task_name!r} with it "
                                       "needs --zero-shot")
    if zero_shot and task_name is None:
        raise runfolder.RunFolderError("--zero-shot needs --task: which task to score")
    task = get_task(task_name or run_task)
    if zero_shot and task.has_head:
        raise runfolder.RunFolderError(f"task {task.name!r} needs a trained classifier head; --zero-shot scores only "
                                       "tasks that read the LM head (quora, sonnet)")
    return task


def _scores(task: Task, split: str, examples: list[Example], draws: list[list[Any]], files: list[Path],
            folder: Path, test_references: str | None) -> dict[str, Any]:
    """The split's scores averaged over the sampled files (test: where its labels or true sonnets exist, beside
    the data or named by --test-references), and the majority-class accuracy of a classification task."""
    result: dict[str, Any] = {}
    if split == "dev":
        result.update(mean_scores([task.score(examples, preds) for preds in draws]))
        majority = task.format.majority_accuracy([e.label for e in examples])
    else:
        refs = Path(test_references) if test_references else None
        pairs = [task.format.split_pairs(f, folder, split, refs) for f in files]
        majority = None
        if pairs[0] is None:
            result["note"] = (f"no test references in {folder} ({task.files.test_references}): predictions written, "
                              "not scored; pass --test-references FILE")
        else:
            result.update(mean_scores([task.format.score_pairs(*pair) for pair in pairs if pair is not None]))
            result["references"] = str(refs or task.format.references_file(folder, split))
            majority = task.format.majority_accuracy(pairs[0][1])
    if majority is not None:
        result["majority_accuracy"] = majority
    return result


def _predict_and_write(task: Task, module: TaskModel, examples: list[Example], settings: RunSettings,
                       how: PredictSettings, tok: Tokenizer, device: torch.device, run_dir: Path, first: str
                       ) -> tuple[list[list[Any]], list[str]]:
    """Predict `examples` (a generative task: the run's --eval-samples draws per prompt, as many as its own figures
    averaged over) and write each draw's file; the draws and the names of the files written."""
    predictor = speed.predicting(module, task, device, how, settings.hardware.plain)
    draws = (task.predict_samples(predictor, examples, how, tok, device, settings.eval.samples)
             if isinstance(task, GenerativeTask)
             else [task.predict(predictor, examples, how, tok, device)])
    names = [_write_beside_scored(task, run_dir, n, examples, preds)
             for n, preds in zip([first] + [sample_file_name(first, k) for k in range(1, len(draws))], draws)]
    return draws, names


def _write_beside_scored(task: Any, run_dir: Path, name: str, examples: list, preds: list) -> str:
    """Write the predictions as `name`, unless the run scored a file of that name (metrics.json's sha256) and these
    differ from it: then as `rescored-<name>` beside it (with a warning), so the file behind the run's own figures
    stays what they were computed from. Returns the name written."""
    metrics_file = run_dir / runfolder.METRICS_FILE
    scored = runfolder.read_json(metrics_file).get("files_sha256") if metrics_file.is_file() else None
    recorded = (scored or {}).get(name)
    if recorded is None:
        task.format.write_predictions(run_dir / name, [e.id for e in examples], preds)
        return name
    other = f"rescored-{name}"
    task.format.write_predictions(run_dir / other, [e.id for e in examples], preds)
    if runfolder.sha256_file(run_dir / other) == recorded:
        (run_dir / other).unlink()  # the same file the run scored
        return name
    print(f"warning: {run_dir / name} is the file the run scored; these predictions differ from it and went to "
          f"{run_dir / other}", file=sys.stderr)
    return other


def changed_data(config: dict[str, Any], folder: Path, names: list[str]) -> list[str]:
    """The data files among `names` whose sha256 differs from the run's fingerprint (files it did not record are
    not compared)."""
    recorded = (config.get("fingerprint") or {}).get("data") or {}
    return [n for n in names if n in recorded and (folder / n).is_file()
            and runfolder.sha256_file(folder / n) != recorded[n]]


def parse_settings(argv: list[str] | None = None) -> EvaluateSettings:
    """The evaluation a command line asks for: its flags, or exactly the settings of `--settings FILE` (as a sweep
    hands over a follow-up evaluation; no other flag goes with it)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    path = settings_file(argv, "evaluation")
    if path is None:
        return evaluate_settings(argv, __doc__.split("\n\n")[0])
    settings = runfolder.read_settings_file(Path(path), EvaluateSettings)
    if settings.run_dir is None:
        raise runfolder.RunFolderError(f"{path}: its settings name no run_dir (the run folder to evaluate)")
    return settings


@exits_on_user_error
def main(argv: list[str] | None = None) -> None:
    """`python -m minigpt2.evaluate`: a UserError is one `error:` line and exit code 1."""
    print(json.dumps(run(parse_settings(argv)), indent=2))


def run(settings: EvaluateSettings) -> dict[str, Any]:
    """The command: score the run as `settings` say (in this process; a sweep's follow-up calls it too)."""
    hw, paths = settings.hardware, settings.paths
    with torch_threads(hw.threads):  # the caller's thread count is back after
        return evaluate_run(settings.run_dir, settings.split, paths.data_dir, paths.tokenizer_dir, hw.device,
                            settings.task, settings.zero_shot, settings.test_references, hw.plain, paths.offline)


if __name__ == "__main__":
    main()
