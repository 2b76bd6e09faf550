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

import argparse
import contextlib
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
from minigpt2.device import AUTOCAST_MODES, autocast_dtype, autocast_for
from minigpt2.distributed import Dist, fetch_once, leave_together, setup_distributed
from minigpt2.errors import UserError
from minigpt2.lora import apply_lora, without_lora
from minigpt2.tokenizer import Tokenizer
from minigpt2.train import (DEFAULT_SEED, Callback, EpochEnd, keep_resume_state, new_metrics, record_epoch,
                            seed_everything, train)
from tasks import TASKS, get_task
from tasks.base import Example, Task, TaskModel, collate

from . import runfolder, speed, subsets
from .measures import form_record, heldout_measures, mean_scores, sample_file_name
from .precision import add_precision_args, apply_run_precision, write_quantized
from .runmodel import base_weights_file, head_modules, load_base_model, load_run_model, save_run_model
from .settings import (EVAL_SAMPLES, LORA_ALPHA, LORA_RANK, LORA_TARGETS, SYNTHETIC_FILTERS, RunSettings,
                       SettingsError, from_args)
from .synthetic import synthetic_texts

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m minigpt2.finetune", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("task and data")
    g.add_argument("--task", required=True, choices=sorted(TASKS), help="which course task to fine-tune on")
    g.add_argument("--data-dir", default=None,
                   help="folder with the course files (default: $MINIGPT2_DATA_DIR, else data/)")
    g.add_argument("--tokenizer-dir", default=None,
                   help="folder with GPT-2's encoder.json + vocab.bpe for offline use "
                        "(default: $MINIGPT2_TOKENIZER_DIR, else tiktoken's download)")
    g.add_argument("--offline", action="store_true",
                   help="never download: missing data files or weights are an error that says how to get them "
                        "(default: fetch what is missing; HF_HUB_OFFLINE=1 also turns downloads off)")
    g.add_argument("--max-train", type=int, default=None,
                   help="train on a seeded random subset of N examples (stratified by label for the classification "
                        "tasks; real sonnets for the sonnet task); the chosen ids go to RUN_DIR/subsets.json")
    g.add_argument("--max-eval", type=int, default=None,
                   help="score a seeded random subset of N dev and N test examples (stratified as --max-train)")
    g.add_argument("--test-references", default=None, metavar="FILE",
                   help="the test labels (*-test-labels.csv) or true test sonnets to score test with (default: the "
                        "file beside the data, as `python -m course fetch` writes it; test is not scored without one)")
    g.add_argument("--max-length", type=int, default=None,
                   help="truncate inputs to N tokens (default: the model's n_positions)")
    g = p.add_argument_group("synthetic data (sonnet task)")
    g.add_argument("--synthetic", default=None, metavar="FILE.jsonl",
                   help="add the kept sonnets of a distill.generate file to the training set (dev/test stay real)")
    g.add_argument("--synthetic-n", type=int, default=None,
                   help="add only the first N synthetic sonnets (an error if the file has fewer); default: all")
    g.add_argument("--synthetic-filter", choices=SYNTHETIC_FILTERS, default=None,
                   help="'perfect': only those passing distill.check (14 lines, ABAB CDCD EFEF GG); default all")
    g.add_argument("--synthetic-only", action="store_true",
                   help="train on the synthetic sonnets alone, no real training sonnet (dev and test stay real)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="gpt2",
                   help="a preset (gpt2, gpt2-medium, ...: downloaded once into checkpoints/<name>/), a folder or "
                        "file with model.safetensors, or 'tiny' for a random-init tiny model (smoke runs, tests)")
    g.add_argument("--mode", choices=["full-model", "last-linear-layer"], default="full-model",
                   help="train the whole model, or (sentiment) only the classifier on a frozen GPT-2")
    g = p.add_argument_group("LoRA")
    g.add_argument("--method", choices=["full", "lora"], default="full",
                   help="full: train the weights themselves (as --mode says); lora: freeze GPT-2 and train low-rank "
                        "adapters (plus the task head); the run's checkpoint is then the small adapter file")
    g.add_argument("--lora-rank", type=int, default=None, help=f"LoRA rank r (default {LORA_RANK})")
    g.add_argument("--lora-alpha", type=float, default=None,
                   help=f"LoRA alpha; the adapter output is scaled by alpha/r (default {LORA_ALPHA:g}: the study's)")
    g.add_argument("--lora-targets", default=None,
                   help="attn (query, key, value, output projection), attn+mlp (also mlp.c_fc, mlp.c_proj), or "
                        "comma-separated module names, e.g. attn.query,attn.value (default "
                        f"{LORA_TARGETS})")
    g.add_argument("--lora-dropout", type=float, default=None, help="dropout on the adapters' input (default 0)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=10,
                   help="passes over the training set; 0: no training, the base model (at the run's precision) is "
                        "scored on dev and test and saved as the run's best (the zero-shot reference)")
    g.add_argument("--batch-size", type=int, default=8, help="examples per micro-batch (per process)")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: 1e-3 for last-linear-layer, 1e-5 for full-model, 1e-2 for "
                        "--method lora, the best LoRA learning rate in the study)")
    g.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay of 2+-dim tensors")
    g.add_argument("--warmup", type=float, default=0.05, help="fraction of optimizer steps of linear LR warmup")
    g.add_argument("--schedule", choices=["linear", "cosine", "constant"], default="linear",
                   help="LR decay after warmup")
    g.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm (0: off)")
    g.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of everything random (the course's)")
    g = p.add_argument_group("hardware")
    g.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    g.add_argument("--autocast", choices=AUTOCAST_MODES, default="auto",
                   help="auto: bf16 autocast on CUDA, fp32 on CPU; bf16: bf16 autocast on CUDA or on a CPU with "
                        "native bf16 (an error elsewhere); off: fp32 everywhere. Weights stay fp32")
    g.add_argument("--compile", action="store_true", help="torch.compile the model for training")
    g.add_argument("--plain", action="store_true", help="run on the plain path, none of minigpt2.fast")
    g.add_argument("--threads", type=int, default=None,
                   help="CPU threads of this process (torch.set_num_threads; recorded in config.json); default: "
                        "torch's, one per core. Sweeps running several runs at once split the cores with it")
    g.add_argument("--fetch-timeout", type=float, default=3600.0,
                   help="torchrun: seconds the other ranks wait while one rank per node fetches missing data and "
                        "weights, before giving up with an error")
    g = p.add_argument_group("evaluation and generation")
    g.add_argument("--eval-batch-size", type=int, default=32, help="batch size of evaluation and generation")
    g.add_argument("--temperature", type=float, default=1.2, help="sonnet sampling temperature (the course's)")
    g.add_argument("--top-p", type=float, default=0.9, help="sonnet nucleus sampling mass (the course's)")
    g.add_argument("--max-new-tokens", type=int, default=400,
                   help="sonnet token budget; generation stops at <|endoftext|> or after the 14th line first")
    g.add_argument("--eval-samples", type=int, default=None,
                   help=f"sonnets drawn per prompt (seeded) for the final dev/test scores: chrF and the form rates "
                        f"are averaged over them (each epoch's dev score uses one); default {EVAL_SAMPLES} for "
                        "sonnets, 1 (deterministic predictions) for the other tasks")
    g = p.add_argument_group("run folder")
    g.add_argument("--out-dir", default=None, help="run folder (default: checkpoints/runs/<task>-<name or time>)")
    g.add_argument("--name", default=None, help="run name used in the default run folder")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out-dir from its last complete epoch")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out-dir (a fresh run into a folder that holds one is refused)")
    g.add_argument("--stop-after-epoch", type=int, default=None,
                   help="debug: stop after this epoch as if interrupted (to test --resume)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_precision_args(p)
    return p


def parse_settings(argv: list[str] | None = None) -> RunSettings:
    """The command line as validated, typed settings (a bad flag is a UserError naming it)."""
    return from_args(build_parser().parse_args(argv))


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
        report = apply_lora(module, rank=lora.rank, alpha=lora.alpha, targets=lora.targets, dropout=lora.dropout,
                            trainable=head_modules(module))
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
    d = settings.data
    folder = data_dir(d.data_dir)
    ensure_task_data(task.name, folder, offline=d.offline)  # fetches missing files from the public sources
    require_files(folder, sorted(set(task.files.inputs())), task.name)
    extra = synthetic_texts(d.synthetic)
    splits, notes = {}, []
    for split in ("train", "dev", "test"):
        # --max-train / --max-eval: a seeded random subset of the real rows; synthetic sonnets come on top.
        limit = d.max_train if split == "train" else d.max_eval
        splits[split], bad = task.load(folder, split, tok, max_len, limit, extra if split == "train" else (),
                                       seed=settings.optim.seed)
        notes += bad
        if split == "train" and d.synthetic is not None and d.synthetic.only:  # dev and test stay real
            splits[split] = [e for e in splits[split] if e.meta.get("source") == "synthetic"]
        if split != "test" and not splits[split]:
            raise DataError(f"{folder / task.files.split(split)}: no usable {split} examples ({len(bad)} malformed "
                            "row(s) skipped); the run needs at least one")
    # Test references that do not cover the test rows would fail at the end of training: refuse them now.
    refs = Path(d.test_references) if d.test_references else None
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
             autocast: str) -> float:
    """Mean loss over examples (eval mode, no grad)."""
    total, n = 0.0, 0
    was_training = module.training
    module.eval()
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            batch = {k: v.to(device) for k, v in collate(chunk, lm_targets=task.lm_targets).items()}
            with autocast_for(autocast, device):
                total += module(batch).item() * len(chunk)
            n += len(chunk)
    module.train(was_training)
    return total / max(1, n)


def make_evaluate(task: Task, dev: list[Example], settings: RunSettings, tok: Tokenizer, device: torch.device
                  ) -> Callable[[TaskModel], dict[str, float]]:
    """The per-epoch dev evaluation: the task's metric and the dev loss."""
    loss_examples = task.loss_examples(dev)
    how = settings.predict_settings()

    def evaluate(module: TaskModel) -> dict[str, float]:
        preds = task.predict(speed.predicting(module, task, device, how.autocast, settings.hardware.plain), dev, how,
                             tok, device)
        out = dict(task.score(dev, preds))
        out["dev_loss"] = dev_loss(module, loss_examples, task, how.batch_size, device, how.autocast)
        return out
    return evaluate


def write_split_predictions(task: Task, module: TaskModel, splits: dict[str, list[Example]],
                            settings: RunSettings, tok: Tokenizer, device: torch.device, run_dir: Path
                            ) -> dict[str, Any]:
    """Predict dev and test with `module`, write the course-format files (and, with --eval-samples K, the other
    K-1 samples beside them), score dev, and test where its labels (or true sonnets) exist, averaged over the
    samples; the sha256 of every file scored; for classification tasks the majority-class accuracy of the scored
    rows; for generative tasks the form of what was written and the held-out likelihood (`app.measures`)."""
    result: dict[str, Any] = {"files_sha256": {}}
    folder = data_dir(settings.data.data_dir)
    test_refs = Path(settings.data.test_references) if settings.data.test_references else None
    how = settings.predict_settings()
    predictor = speed.predicting(module, task, device, how.autocast, settings.hardware.plain)
    for split in ("dev", "test"):
        examples = splits[split]
        draws = (task.predict_samples(predictor, examples, how, tok, device, settings.eval.samples) if task.generative
                 else [task.predict(predictor, examples, how, tok, device)])
        name = task.format.output_name(split, settings.model.mode)
        names = [name] + [sample_file_name(name, k) for k in range(1, len(draws))]
        for file_name, preds in zip(names, draws):
            task.format.write_predictions(run_dir / file_name, [e.id for e in examples], preds)
            result["files_sha256"][file_name] = runfolder.sha256_file(run_dir / file_name)
        result[f"{split}_predictions"] = name
        if len(names) > 1:
            result[f"{split}_samples"] = names
        if task.generative:
            result.setdefault("form", {})[split] = form_record([e.id for e in examples], draws)
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
    nll = heldout_measures(task, module, splits, how, tok, device, folder, test_refs)
    if nll:
        result["heldout_nll"] = nll
    return result


def base_heldout_measures(task: Task, module: TaskModel, splits: dict[str, list[Example]], settings: RunSettings,
                          tok: Tokenizer, device: torch.device, run_dir: Path) -> dict[str, Any]:
    """The held-out likelihood of the model before any training step (the reference a fine-tuned model must
    beat), kept in RUN_DIR/heldout-nll-base.json so that a resumed run reports the same figure."""
    path = run_dir / runfolder.HELDOUT_BASE_FILE
    if settings.run.resume and path.is_file():
        return runfolder.read_json(path)
    module.to(device)
    test_refs = Path(settings.data.test_references) if settings.data.test_references else None
    base = heldout_measures(task, module, splits, settings.predict_settings(), tok, device,
                            data_dir(settings.data.data_dir), test_refs)
    atomic_write_json(path, base)
    return base


def score_base_model(module: TaskModel, task: Task, splits: dict[str, list[Example]], settings: RunSettings,
                     tok: Tokenizer, d: Dist, run_dir: Path) -> dict[str, Any]:
    """`--epochs 0`: no training. The base model (fake-quantized already under --qaft) is scored on dev and saved
    as the run's best, so that the rest of the run (PTQ, predictions, test scores) treats it as any best epoch."""
    t0 = time.time()
    module.to(d.device)
    metrics = new_metrics(module, settings.train_config(), task.metric, d, steps_per_epoch=0)
    metrics["trainable_params"] = 0  # nothing is trained
    record_epoch(metrics, {"epoch": 0, **make_evaluate(task, splits["dev"], settings, tok, d.device)(module)})
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
    Tokenizer(settings.data.tokenizer_dir)
    base_weights_file(settings.model.model, offline=settings.data.offline)
    ensure_task_data(task.name, data_dir(settings.data.data_dir), offline=settings.data.offline)


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
    """Fine-tune as `settings` say; returns the final metrics (also in RUN_DIR/metrics.json)."""
    if settings.hardware.threads is not None:  # before any work: a run's thread count is one of its settings
        torch.set_num_threads(settings.hardware.threads)
    d = setup_distributed(settings.hardware.device)
    autocast_dtype(settings.autocast, d.device)  # refuse an unsupported --autocast bf16 before any work
    run_dir = _shared_run_dir(settings, d)
    try:
        recorded = runfolder.check_resume(run_dir, settings) if settings.run.resume else None
        # One process writes a run folder at a time (rank 0 holds the lock for the group).
        with runfolder.locked(run_dir) if d.main else contextlib.nullcontext():
            return _run(settings, d, run_dir, recorded)
    except KeyboardInterrupt:
        raise Interrupted(run_dir) from None


def _run(settings: RunSettings, d: Dist, run_dir: Path, recorded: dict[str, Any] | None) -> dict[str, Any]:
    """Set the run up, train (or score the base model), then predict and score with the best weights."""
    if d.main:
        runfolder.check_fresh(run_dir, settings)
    task = get_task(settings.data.task)
    # torchrun: one rank per machine downloads what is missing while the others wait (no race on one folder)
    fetch_once(lambda: fetch_inputs(settings, task), d, settings.hardware.fetch_timeout,
               what=f"{task.name} data, tokenizer and {settings.model.model} weights")
    seed_everything(settings.optim.seed)
    tok = Tokenizer(settings.data.tokenizer_dir)
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
    base_nll = (base_heldout_measures(task, module, splits, settings, tok, d.device, run_dir)
                if d.main and task.generative else {})
    if settings.optim.epochs == 0:
        metrics = {**info, **score_base_model(module, task, splits, settings, tok, d, run_dir)}
    else:
        speed.for_training(module, d.device, settings.hardware.plain)
        metrics = {**info, **train(module, splits["train"], lambda ex: collate(ex, lm_targets=task.lm_targets),
                                   settings.train_config(), make_evaluate(task, splits["dev"], settings, tok, d.device),
                                   task.metric, epoch_callbacks(settings, run_dir, info), d=d,
                                   resume_from=run_dir / "last" if settings.run.resume else None)}
    if d.main and "stopped_after_epoch" not in metrics:
        if base_nll:
            metrics["heldout_nll_base"] = base_nll
        finish_run(module, task, splits, settings, tok, d.device, run_dir, metrics)
    elif d.main:
        atomic_write_json(run_dir / runfolder.METRICS_FILE, metrics)
    leave_together(d)
    return metrics


def run_fingerprint(settings: RunSettings, task: Task, chosen: dict[str, Any]) -> dict[str, Any]:
    """What defines the run's results (`runfolder.fingerprint`) and which rows the seeded subsets hold (a count
    and a hash here, the ids in subsets.json)."""
    fingerprint = runfolder.fingerprint(settings, base_weights_file(settings.model.model, settings.data.offline),
                                        data_files(task, data_dir(settings.data.data_dir)))
    fingerprint["subsets"] = {s: {k: v[k] for k in ("n", "sha256")} for s, v in chosen.items()}
    return fingerprint


def write_run_config(run_dir: Path, settings: RunSettings, d: Dist, fingerprint: dict[str, Any], max_len: int,
                     recorded: dict[str, Any] | None) -> None:
    """RUN_DIR/config.json: the settings, the fingerprint, where the run ran; a resumed run keeps its start."""
    config = {"settings": settings.to_dict(), "args": settings.flat(), "fingerprint": fingerprint,
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
               tok: Tokenizer, device: torch.device, run_dir: Path, metrics: dict[str, Any]) -> None:
    """Rank 0 after training: load the best weights (quantized after training for PTQ), write and score the dev
    and test predictions, the packed quantized model, and the final metrics.json."""
    runfolder.check_still_there(run_dir)
    t1 = time.time()
    load_run_model(module, run_dir / "best")
    precision = settings.precision
    if precision.precision != "fp32" and not precision.qaft:  # post-training quantization, evaluated the same
        apply_run_precision(module, module.gpt, precision)
    metrics.update(write_split_predictions(task, module, splits, settings, tok, device, run_dir))
    if precision.precision != "fp32":
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


def main(argv: list[str] | None = None) -> None:
    """`python -m minigpt2.finetune`: a UserError is one `error:` line and exit code 1, never a traceback."""
    try:
        run(parse_settings(argv))
    except UserError as e:  # SystemExit with a message: printed to stderr, exit code 1
        raise SystemExit(f"error: {e}") from None
    except Interrupted as e:  # Ctrl-C: every finished epoch is saved; 130 is the shell's code for SIGINT
        if runfolder.is_run_config(e.run_dir / runfolder.CONFIG_FILE):
            print(f"interrupted; continue with --resume --out-dir {e.run_dir}", file=sys.stderr)
        else:
            print(f"interrupted before the run started; nothing was saved in {e.run_dir}", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
