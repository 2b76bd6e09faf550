"""The main job: fine-tune GPT-2 on one of the course's tasks and write a run folder.

    python -m minigpt2.finetune --task {sst,cfimdb,quora,sonnet} [--model gpt2] [--data-dir data] ...
    torchrun --nproc_per_node 4 -m minigpt2.finetune --task quora ...      # several GPUs (DDP)

The flags become one typed, validated `RunSettings` (app.settings) before any work starts. A run folder
(`--out-dir`, default `checkpoints/runs/<task>-<time>`) is described in `app.runfolder`: config.json (the settings
and the run's fingerprint), metrics.json (per epoch and best), best/ (model.safetensors + config.json in the HF
layout, head.safetensors for a classifier head), last/ (the resume state), and the dev/test predictions.

Where the study's knobs plug in: `build_model` (wrap the GPT-2 body: quantization first, then LoRA),
`app.runmodel` (how the best weights are stored and loaded), and `app.synthetic` (synthetic sonnets handed to the
sonnet task's training set). What a run writes after each epoch is `epoch_callbacks`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from course.fetch import ensure_task_data
from course.readers import DataError, Malformed, data_dir, require_files
from minigpt2.atomic import atomic_write_json
from minigpt2.device import torch_threads
from minigpt2.distributed import Dist, fetch_once, leave_together, setup_distributed
from minigpt2.errors import UserError, exits_on_user_error
from minigpt2.lora import apply_lora, without_lora
from minigpt2.tokenizer import Tokenizer
from minigpt2.train import (Callback, EpochEnd, keep_resume_state, new_metrics, record_epoch,
                            seed_everything, train)
from tasks import get_task
from tasks.base import Example, GenerativeTask, PredictSettings, Task, TaskModel, collate, eval_batches

from . import cli, runfolder, speed, subsets
from .cli import GROUP, checked, finetune_settings
from .measures import (copying_corpora, copying_record, form_record, heldout_measures, mean_scores,
                       sample_file_name)
from .precision import apply_run_precision, write_quantized
from .runmodel import base_weights_file, head_modules, load_base_model, load_run_model, save_run_model
from .settings import RunSettings, SettingsError
from .synthetic import synthetic_texts



def parse_settings(argv: list[str] | None = None) -> RunSettings:
    """The command line as validated, typed settings (a bad flag is a UserError naming it). With `--resume`, the
    settings saved in the run folder's config.json (this layout or the one before), with the flags given beside it
    (`cli.resumed_settings`: those a resume may change; any other must repeat the saved value)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    path = cli.settings_file(argv)
    if path is not None:
        settings = runfolder.read_settings_file(Path(path))
        cli.check_environment(settings)
        return settings
    options = cli.resume_options(argv)
    if options is None:
        return finetune_settings(argv)
    # --out-dir given, and not with --overwrite: checked before the folder is read
    run = cli.build(GROUP["run"], {p.partition(".")[2]: v for p, v in options.items() if p.startswith("run.")})
    run_dir = Path(run.out_dir)
    runfolder.check_resumable(run_dir)
    return cli.resumed_settings(runfolder.saved_settings(run_dir), options)


# ---------------------------------------------------------------------------------------------- the model

def build_model(settings: RunSettings, task: Task) -> TaskModel:
    """The model of a run. The study's knobs wrap the body here, before the task head is attached and before
    the trainable set is decided:

    1. quantization (`--precision ... --qaft`): fake-quant layers in place of the body's linear layers;
    2. LoRA (`--method lora ...`): adapters around the (possibly fake-quant) projections, base frozen.
    """
    gpt = load_base_model(settings)
    settings.precision.check_model(gpt.config)  # PTQ too: an INT4 group size that cannot fit fails now
    lora = settings.model.lora
    if lora is not None and lora.rank > gpt.config.n_embd:  # every target is at least n_embd wide on both sides
        raise SettingsError(f"--lora-rank {lora.rank}: larger than the model's layer width (n_embd "
                            f"{gpt.config.n_embd}); expected at most {gpt.config.n_embd}, a low rank")
    module = task.build(gpt)
    if settings.precision.qaft:  # train at the target precision; without --qaft, `run` quantizes afterwards (PTQ)
        apply_run_precision(module, module.gpt, settings.precision)
    if lora is not None:  # after fake-quant: a quantized frozen base + fp32 adapters
        report = apply_lora(module, dataclasses.replace(lora, trainable=tuple(head_modules(module))))
        print(report, file=sys.stderr)
    if settings.model.mode == "last-linear-layer":
        module.gpt.requires_grad_(False)
    if not any(p.requires_grad for p in module.parameters()):
        raise UserError("the model has no trainable parameter with these settings")
    return module


# ---------------------------------------------------------------------------------------------- data

def data_files(task: Task, folder: Path) -> list[Path]:
    return [folder / f for f in sorted(set(task.files.inputs()))]


def load_splits(task: Task, settings: RunSettings, tok: Tokenizer, max_len: int
                ) -> tuple[dict[str, list[Example]], list[Malformed], dict[str, Any]]:
    """Encoded train/dev/test examples, every malformed row met (reported, not fatal) and the record of the
    subsets `--max-train` / `--max-eval` chose (drawn by the task, recorded by app.subsets); an empty train or dev
    split is an error."""
    data = settings.data
    folder = data_dir(settings.paths.data_dir)
    ensure_task_data(task.name, folder, offline=settings.paths.offline)  # fetches missing files from the public sources
    require_files(folder, sorted(set(task.files.inputs())), task.name)
    extra = synthetic_texts(data.synthetic)
    splits, notes = {}, []
    for split in ("train", "dev", "test"):
        # --max-train / --max-eval: a seeded random subset of the real rows; synthetic sonnets come on top.
        limit = data.max_train if split == "train" else data.max_eval
        splits[split], bad = task.load(folder, split, tok, max_len, limit, extra if split == "train" else (),
                                       seed=settings.optim.seed)
        notes += bad
        if split == "train" and data.synthetic is not None and data.synthetic.only:  # dev and test stay real
            splits[split] = [e for e in splits[split] if e.meta.get("source") == "synthetic"]
        if split != "test" and not splits[split]:
            raise DataError(f"{folder / task.files.split(split)}: no usable {split} examples ({len(bad)} malformed "
                            "row(s) skipped); the run needs at least one")
    # Test references that do not cover the test rows would fail at the end of training: refuse them now.
    refs = Path(data.test_references) if data.test_references else None
    have = task.format.reference_ids(folder, "test", refs)
    notes += task.format.unlabelled_rows(folder, "test", refs)  # listed but unlabelled: warned about, not scored
    if have is not None:
        missing = [e.id for e in splits["test"] if e.id not in have]
        if missing:
            raise DataError(f"{refs or task.format.references_file(folder, 'test')}: no reference for test id(s) "
                            f"{missing[:3]} of {folder / task.files.test} ({len(missing)} in all); expected the "
                            "labels of these very test rows")
    chosen = {s: [e for e in v if e.meta.get("source") != "synthetic"] for s, v in splits.items()}
    return splits, notes, subsets.describe(chosen)


def dev_loss(module: TaskModel, examples: list[Example], task: Task, batch_size: int, device: torch.device,
             autocast_dtype: torch.dtype | None) -> float:
    """Mean loss over examples, batched in their order (`tasks.base.eval_batches`: eval mode, no grad)."""
    losses = eval_batches(module, examples, batch_size, device, autocast_dtype, lambda batch: module(batch).item(),
                          lm_targets=task.lm_targets)
    total, n = 0.0, 0
    for idx, loss in losses:
        total += loss * len(idx)
        n += len(idx)
    return total / max(1, n)


def make_evaluate(task: Task, dev: list[Example], settings: RunSettings, how: PredictSettings, tok: Tokenizer,
                  device: torch.device) -> Callable[[TaskModel], dict[str, float]]:
    """The per-epoch dev evaluation: the task's metric and the dev loss."""
    loss_examples = task.loss_examples(dev)

    def evaluate(module: TaskModel) -> dict[str, float]:
        preds = task.predict(speed.predicting(module, task, device, how, settings.hardware.plain), dev,
                             how, tok, device)
        out = dict(task.score(dev, preds))
        out["dev_loss"] = dev_loss(module, loss_examples, task, how.batch_size, device, how.autocast_dtype)
        return out
    return evaluate


def write_split_predictions(task: Task, module: TaskModel, splits: dict[str, list[Example]],
                            settings: RunSettings, how: PredictSettings, tok: Tokenizer, device: torch.device,
                            run_dir: Path) -> dict[str, Any]:
    """Predict dev and test with `module`, write the course-format files (and, with --eval-samples K, the other
    K-1 samples beside them), score dev, and test where its labels (or true sonnets) exist, averaged over the
    samples; the sha256 of every file scored and scored against; for classification tasks the majority-class
    accuracy of the scored rows; for generative tasks the form of what was written and the held-out likelihood
    (`app.measures`)."""
    result: dict[str, Any] = {"files_sha256": {}}
    folder = data_dir(settings.paths.data_dir)
    test_refs = Path(settings.data.test_references) if settings.data.test_references else None
    predictor = speed.predicting(module, task, device, how, settings.hardware.plain)
    corpora = copying_corpora(task, folder, test_refs) if isinstance(task, GenerativeTask) else None
    for split in ("dev", "test"):
        examples = splits[split]
        draws = (task.predict_samples(predictor, examples, how, tok, device, settings.eval.samples)
                 if isinstance(task, GenerativeTask)
                 else [task.predict(predictor, examples, how, tok, device)])
        name = task.format.output_name(split, settings.model.mode)
        names = [name] + [sample_file_name(name, k) for k in range(1, len(draws))]
        for file_name, preds in zip(names, draws):
            task.format.write_predictions(run_dir / file_name, [e.id for e in examples], preds)
            result["files_sha256"][file_name] = runfolder.sha256_file(run_dir / file_name)
        result[f"{split}_predictions"] = name
        if len(names) > 1:
            result[f"{split}_samples"] = names
        if isinstance(task, GenerativeTask):
            result.setdefault("form", {})[split] = form_record([e.id for e in examples], draws)
            result.setdefault("copying", {})[split] = copying_record(
                [e.id for e in examples], draws, [len(e.meta["prompt_lines"]) for e in examples], *corpora)
        if split == "dev":
            result["dev"] = mean_scores([task.score(examples, preds) for preds in draws])
            majority = task.format.majority_accuracy([e.label for e in examples])
        else:
            pairs = [task.format.split_pairs(run_dir / n, folder, "test", test_refs) for n in names]
            if pairs[0] is None:
                continue
            result["test"] = mean_scores([task.format.score_pairs(*pair) for pair in pairs if pair is not None])
            result["test_references"] = str(test_refs or task.format.references_file(folder, "test"))
            majority = task.format.majority_accuracy(pairs[0][1])
        if majority is not None:
            result.setdefault("majority", {})[split] = majority
    result["references_sha256"] = scored_references(task, folder, test_refs, "test" in result)
    nll = heldout_measures(task, module, splits, how, tok, device, folder, test_refs)
    if nll:
        result["heldout_nll"] = nll
    return result


def scored_references(task: Task, folder: Path, test_refs: Path | None, test: bool) -> dict[str, Any]:
    """metrics.json's "references_sha256" (`runfolder.references_sha256`): the dev reference file (a label task's
    dev file, the true dev sonnets) and, when test was scored, the test labels or true test sonnets."""
    files = {"dev": (task.name, "dev", task.format.references_file(folder, "dev"), False)}
    if test:
        files["test"] = (task.name, "test", test_refs or task.format.references_file(folder, "test"),
                         test_refs is not None)
    return runfolder.references_sha256(files)


def base_heldout_measures(task: Task, module: TaskModel, splits: dict[str, list[Example]], settings: RunSettings,
                          how: PredictSettings, tok: Tokenizer, device: torch.device, run_dir: Path
                          ) -> dict[str, Any]:
    """The held-out likelihood of the model before any training step (the reference a fine-tuned model must
    beat), kept in RUN_DIR/heldout-nll-base.json so that a resumed run reports the same figure."""
    path = run_dir / runfolder.HELDOUT_BASE_FILE
    if settings.run.resume and path.is_file():
        return runfolder.read_json(path)
    module.to(device)
    test_refs = Path(settings.data.test_references) if settings.data.test_references else None
    base = heldout_measures(task, module, splits, how, tok, device,
                            data_dir(settings.paths.data_dir), test_refs)
    atomic_write_json(path, base)
    return base


def score_base_model(module: TaskModel, task: Task, splits: dict[str, list[Example]], settings: RunSettings,
                     how: PredictSettings, tok: Tokenizer, d: Dist, run_dir: Path) -> dict[str, Any]:
    """`--epochs 0`: no training. The base model (fake-quantized already under --qaft) is scored on dev and saved
    as the run's best, so that the rest of the run (PTQ, predictions, test scores) treats it as any best epoch."""
    t0 = time.time()
    module.to(d.device)
    metrics = new_metrics(module, settings.train_config(), task.metric, d, steps_per_epoch=0,
                          autocast_dtype=how.autocast_dtype)
    metrics["trainable_params"] = 0  # nothing is trained
    record_epoch(metrics, {"epoch": 0, **make_evaluate(task, splits["dev"], settings, how, tok, d.device)(module)})
    if d.main:
        save_run_model(module, run_dir / "best", settings)
    metrics["wall_s"] = time.time() - t0
    return metrics


def epoch_callbacks(settings: RunSettings, run_dir: Path, info: dict[str, Any]) -> list[Callback]:
    """What a run writes after every epoch, in this order: the best weights (when the epoch is the best so far),
    the resume state, metrics.json (the run's `info` and the training figures)."""
    def check_folder(end: EpochEnd) -> None:
        runfolder.check_still_there(run_dir)  # before this epoch's files: never into a recreated folder

    def save_best(end: EpochEnd) -> None:
        if end.improved:
            save_run_model(end.module, run_dir / "best", settings)

    def write_metrics(end: EpochEnd) -> None:
        atomic_write_json(run_dir / runfolder.METRICS_FILE, {**info, **end.metrics})

    return [check_folder, save_best, keep_resume_state(run_dir / "last"), write_metrics]


# ---------------------------------------------------------------------------------------------- main

def default_run_dir(settings: RunSettings) -> Path:
    stamp = settings.run.name or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("checkpoints") / "runs" / f"{settings.data.task}-{stamp}"


def fetch_inputs(settings: RunSettings, task: Task) -> None:
    """Download whatever the run reads and is missing: the task's data files, the tokenizer files, the base
    weights (in the order the run itself would meet them). Each step is a no-op when its files are there."""
    Tokenizer(settings.paths.tokenizer_dir)
    base_weights_file(settings.model.model, offline=settings.paths.offline)
    ensure_task_data(task.name, data_dir(settings.paths.data_dir), offline=settings.paths.offline)


def _shared_run_dir(settings: RunSettings, d: Dist) -> Path:
    """Every rank must write to the folder rank 0 chose (a timestamp could differ by a second)."""
    chosen = [str(Path(settings.run.out_dir) if settings.run.out_dir else default_run_dir(settings))]
    if d.world > 1:
        dist.broadcast_object_list(chosen, src=0)
    return Path(chosen[0])


class Interrupted(Exception):
    """Ctrl-C during a run: what finished is saved; `main` says how to continue and exits with 130."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(str(run_dir))
        self.run_dir = run_dir


def run(settings: RunSettings) -> dict[str, Any]:
    """Fine-tune as `settings` say; returns the final metrics (also in RUN_DIR/metrics.json). The run's --threads
    hold while it runs; the caller's thread count is back after."""
    with torch_threads(settings.hardware.threads):  # before any work: the thread count is one of its settings
        return _run_with_threads(settings)


def _run_with_threads(settings: RunSettings) -> dict[str, Any]:
    d = setup_distributed(settings.hardware.device)
    # The run's --autocast mode resolved to its dtype, once: everything that trains or predicts takes `how`'s.
    how = checked(lambda: settings.predict_settings(d.device), GROUP["optim"])  # an unsupported bf16: refused now
    run_dir = _shared_run_dir(settings, d)
    try:
        recorded = runfolder.check_resume(run_dir, settings) if settings.run.resume else None
        # One process writes a run folder at a time (rank 0 holds the lock for the group).
        with runfolder.locked(run_dir) if d.main else contextlib.nullcontext():
            return _run(settings, d, run_dir, recorded, how)
    except KeyboardInterrupt:
        raise Interrupted(run_dir) from None


def _run(settings: RunSettings, d: Dist, run_dir: Path, recorded: dict[str, Any] | None, how: PredictSettings
         ) -> dict[str, Any]:
    """Set the run up, train (or score the base model), then predict and score with the best weights."""
    if d.main:
        runfolder.check_fresh(run_dir, settings)
    task = get_task(settings.data.task)
    # torchrun: one rank per machine downloads what is missing while the others wait (no race on one folder)
    fetch_once(lambda: fetch_inputs(settings, task), d, settings.hardware.fetch_timeout,
               what=f"{task.name} data, tokenizer and {settings.model.model} weights")
    seed_everything(settings.optim.seed)
    tok = Tokenizer(settings.paths.tokenizer_dir)
    module = build_model(settings, task)
    max_len = min(settings.data.max_length or module.gpt.config.n_positions, module.gpt.config.n_positions)
    splits, notes, chosen = load_splits(task, settings, tok, max_len)
    fingerprint = run_fingerprint(settings, task, chosen)
    if recorded is not None:
        runfolder.check_inputs(run_dir, recorded.get("fingerprint", {}), fingerprint)
    if d.main:
        runfolder.prepare(run_dir, settings)  # after every check: a refused run replaces nothing
        for note in notes:
            print(f"warning: skipped/irregular row: {note}", file=sys.stderr)
        write_run_config(run_dir, settings, d, fingerprint, max_len, recorded)
        atomic_write_json(run_dir / subsets.SUBSETS_FILE, {"seed": settings.optim.seed, "splits": chosen})
    info = run_info(task, settings, module, splits, notes)
    base_nll = (base_heldout_measures(task, module, splits, settings, how, tok, d.device, run_dir)
                if d.main and isinstance(task, GenerativeTask) else {})
    if settings.optim.epochs == 0:
        metrics = {**info, **score_base_model(module, task, splits, settings, how, tok, d, run_dir)}
    else:
        steps = speed.for_training(module, d.device, settings.hardware.plain, settings.optim.compile)
        metrics = {**info, **train(module, splits["train"], lambda ex: collate(ex, lm_targets=task.lm_targets),
                                   settings.train_config(), make_evaluate(task, splits["dev"], settings, how, tok,
                                                                          d.device),
                                   task.metric, epoch_callbacks(settings, run_dir, info), d=d,
                                   resume_from=run_dir / "last" if settings.run.resume else None,
                                   autocast_dtype=how.autocast_dtype, step_context=steps)}
    if d.main and "stopped_after_epoch" not in metrics:
        if base_nll:
            metrics["heldout_nll_base"] = base_nll
        finish_run(module, task, splits, settings, how, tok, d.device, run_dir, metrics)
    elif d.main:
        atomic_write_json(run_dir / runfolder.METRICS_FILE, metrics)
    leave_together(d)
    return metrics


def run_fingerprint(settings: RunSettings, task: Task, chosen: dict[str, Any]) -> dict[str, Any]:
    """What defines the run's results (`runfolder.fingerprint`) and which rows the seeded subsets hold (a count
    and a hash here, the ids in subsets.json)."""
    fingerprint = runfolder.fingerprint(settings, base_weights_file(settings.model.model, settings.paths.offline),
                                        data_files(task, data_dir(settings.paths.data_dir)))
    fingerprint["subsets"] = {s: {k: v[k] for k in ("n", "sha256")} for s, v in chosen.items()}
    return fingerprint


def write_run_config(run_dir: Path, settings: RunSettings, d: Dist, fingerprint: dict[str, Any], max_len: int,
                     recorded: dict[str, Any] | None) -> None:
    """RUN_DIR/config.json: the settings, the fingerprint, where the run ran; a resumed run keeps its start."""
    config = {**runfolder.settings_record(settings), "fingerprint": fingerprint,
              "run_dir": str(run_dir), "world_size": d.world, "device": str(d.device), "max_length": max_len,
              "torch": torch.__version__,
              "started": (recorded or {}).get("started") or datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(run_dir / runfolder.CONFIG_FILE, config)


def run_info(task: Task, settings: RunSettings, module: TaskModel, splits: dict[str, list[Example]],
             notes: list[Malformed]) -> dict[str, Any]:
    """The run's own part of metrics.json: what was trained on which data."""
    n_synthetic = sum(e.meta.get("source") == "synthetic" for e in splits["train"])
    data = {s: len(v) for s, v in splits.items()}
    data.update(train_real=len(splits["train"]) - n_synthetic, train_synthetic=n_synthetic)
    return {"task": task.name, "model": settings.model.model, "mode": settings.model.mode,
            "method": settings.model.method, "total_params": sum(p.numel() for p in module.parameters()),
            "data": data, "malformed_rows": [str(n) for n in notes]}


def finish_run(module: TaskModel, task: Task, splits: dict[str, list[Example]], settings: RunSettings,
               how: PredictSettings, tok: Tokenizer, device: torch.device, run_dir: Path, metrics: dict[str, Any]
               ) -> None:
    """Rank 0 after training: load the best weights (quantized after training for PTQ), write and score the dev
    and test predictions, the packed quantized model, and the final metrics.json."""
    runfolder.check_still_there(run_dir)
    t1 = time.time()
    load_run_model(module, run_dir / "best")
    precision = settings.precision
    if precision.format != "fp32" and not precision.qaft:  # post-training quantization, evaluated the same
        apply_run_precision(module, module.gpt, precision)
    metrics.update(write_split_predictions(task, module, splits, settings, how, tok, device, run_dir))
    if precision.format != "fp32":
        with without_lora(module.gpt):  # the packed base; a LoRA run's adapter is best/adapter.safetensors
            metrics["quantization"] = write_quantized(module.gpt, precision, run_dir)
    metrics["predict_s"] = time.time() - t1
    metrics["wall_s"] += metrics["predict_s"]
    runfolder.check_still_there(run_dir)
    atomic_write_json(run_dir / runfolder.METRICS_FILE, metrics)
    best = metrics["best"]
    test = (metrics.get("test") or {}).get(task.metric)
    print(f"best epoch {best['epoch']}: dev {task.metric} {best[task.metric]:.4f}"
          + (f", test {task.metric} {test:.4f}" if test is not None else "") + f"; run folder {run_dir}")


@exits_on_user_error
def main(argv: list[str] | None = None) -> None:
    """`python -m minigpt2.finetune`: a UserError is one `error:` line and exit code 1, never a traceback."""
    try:
        run(parse_settings(argv))
    except Interrupted as e:  # Ctrl-C: every finished epoch is saved; 130 is the shell's code for SIGINT
        if runfolder.is_run_config(e.run_dir / runfolder.CONFIG_FILE):
            print(f"interrupted; continue with --resume --out-dir {e.run_dir}", file=sys.stderr)
        else:
            print(f"interrupted before the run started; nothing was saved in {e.run_dir}", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
