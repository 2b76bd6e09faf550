"""The main job: fine-tune GPT-2 on one of the course's tasks and write a run folder.

    python -m minigpt2.finetune --task {sst,cfimdb,quora,sonnet} [--model gpt2] [--data-dir data] ...
    torchrun --nproc_per_node 4 -m minigpt2.finetune --task quora ...      # several GPUs (DDP)

A run folder (`--out-dir`, default `checkpoints/runs/<task>-<time>`) holds config.json (every argument),
metrics.json (per epoch and best), best/ (model.safetensors + config.json in the HF layout, head.safetensors for a
classifier head), last/ (the resume state), and the dev/test predictions in the course's formats.

Where the study's knobs plug in: `build_model` (wrap the GPT-2 body: quantization first, then LoRA),
`save_run_model`/`load_run_model` (how the best weights are stored), and `tasks.sonnet.SonnetTask.synthetic_texts`
(the sonnet training set, where synthetic sonnets are mixed in).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from quant.qaft import unwrapped
from quant.run import add_precision_args, apply_run_precision, check_precision_args, write_quantized
from tasks import TASKS, get_task
from tasks.base import Example, Task, TaskModel, collate
from tasks.readers import DataError, Malformed, MissingDataError, data_dir, require_files

from .checkpoint import CheckpointError, hf_to_minigpt2, load_model, read_safetensors, resolve_model, save_model
from .config import GPT2Config
from .data import ensure_task_data
from .device import AUTOCAST_MODES, AutocastUnavailable, autocast_dtype, autocast_for
from .download import DownloadError
from .lora import apply_lora, load_adapter, save_adapter, without_lora
from .model import GPT2
from .tokenizer import Tokenizer, TokenizerUnavailable
from .train import Dist, TrainConfig, seed_everything, setup_distributed, train, write_json

# The course's learning rates: a frozen body lets the classifier learn fast; the full model needs a small LR.
DEFAULT_LR = {"last-linear-layer": 1e-3, "full-model": 1e-5}
LORA_LR = 1e-2  # the study's best learning rate for LoRA adapters (alpha 16)
ADAPTER_NAME = "adapter.safetensors"


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
    g.add_argument("--max-train", type=int, default=None, help="use only the first N training examples (smoke runs)")
    g.add_argument("--max-eval", type=int, default=None, help="use only the first N dev and test examples")
    g.add_argument("--max-length", type=int, default=None,
                   help="truncate inputs to N tokens (default: the model's n_positions)")
    g = p.add_argument_group("synthetic data (sonnet task)")
    g.add_argument("--synthetic", default=None, metavar="FILE.jsonl",
                   help="add the kept sonnets of a distill.generate file to the training set (dev/test stay real)")
    g.add_argument("--synthetic-n", type=int, default=None,
                   help="add only the first N synthetic sonnets (an error if the file has fewer); default: all")
    g.add_argument("--synthetic-filter", choices=["all", "perfect"], default="all",
                   help="'perfect': only those passing distill.check (14 lines, ABAB CDCD EFEF GG)")
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
    g.add_argument("--lora-rank", type=int, default=8, help="LoRA rank r")
    g.add_argument("--lora-alpha", type=float, default=16.0,
                   help="LoRA alpha; the adapter output is scaled by alpha/r (16: the study's default)")
    g.add_argument("--lora-targets", default="attn+mlp",
                   help="attn (query, key, value, output projection), attn+mlp (also mlp.c_fc, mlp.c_proj), or "
                        "comma-separated module names, e.g. attn.query,attn.value")
    g.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the adapters' input")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=10, help="passes over the training set")
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
    g.add_argument("--seed", type=int, default=11711, help="seed of everything random (the course's)")
    g = p.add_argument_group("hardware")
    g.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    g.add_argument("--autocast", choices=AUTOCAST_MODES, default="auto",
                   help="auto: bf16 autocast on CUDA, fp32 on CPU; bf16: bf16 autocast on CUDA or on a CPU with "
                        "native bf16 (an error elsewhere); off: fp32 everywhere. Weights stay fp32")
    g.add_argument("--compile", action="store_true", help="torch.compile the model for training")
    g = p.add_argument_group("evaluation and generation")
    g.add_argument("--eval-batch-size", type=int, default=32, help="batch size of evaluation and generation")
    g.add_argument("--temperature", type=float, default=1.2, help="sonnet sampling temperature (the course's)")
    g.add_argument("--top-p", type=float, default=0.9, help="sonnet nucleus sampling mass (the course's)")
    g.add_argument("--max-new-tokens", type=int, default=400,
                   help="sonnet token budget; generation stops at <|endoftext|> or after the 14th line first")
    g = p.add_argument_group("run folder")
    g.add_argument("--out-dir", default=None, help="run folder (default: checkpoints/runs/<task>-<name or time>)")
    g.add_argument("--name", default=None, help="run name used in the default run folder")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out-dir from its last complete epoch")
    g.add_argument("--stop-after-epoch", type=int, default=None,
                   help="debug: stop after this epoch as if interrupted (to test --resume)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_precision_args(p)
    return p


def finalize_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill defaults that depend on other arguments; reject inconsistent ones."""
    if args.method == "lora" and args.mode == "last-linear-layer":
        raise SystemExit("--method lora trains adapters inside GPT-2; it needs --mode full-model, not "
                         "last-linear-layer (which freezes GPT-2 and trains only the head)")
    if args.lr is None:
        args.lr = LORA_LR if args.method == "lora" else DEFAULT_LR[args.mode]
    if args.mode == "last-linear-layer" and args.task not in ("sst", "cfimdb"):
        raise SystemExit(f"--mode last-linear-layer trains only a classifier head; task {args.task!r} has none")
    if (args.synthetic or args.synthetic_n is not None) and args.task != "sonnet":
        raise SystemExit(f"--synthetic adds synthetic sonnets; task {args.task!r} is not the sonnet task")
    if args.synthetic_n is not None and not args.synthetic:
        raise SystemExit("--synthetic-n needs --synthetic FILE.jsonl")
    if args.resume and not args.out_dir:
        raise SystemExit("--resume needs --out-dir: the run folder to continue")
    check_precision_args(args)
    return args


# ---------------------------------------------------------------------------------------------- the model

def load_base_model(args: argparse.Namespace) -> GPT2:
    """The GPT-2 body named by --model: 'tiny' (random init), a preset name, or a path."""
    if args.model == "tiny":
        return GPT2(GPT2Config.from_name("tiny"))
    return load_model(resolve_model(args.model, offline=args.offline))


def build_model(args: argparse.Namespace, task: Task) -> TaskModel:
    """The model of a run, built from the parsed arguments. The study's knobs wrap the body here, before the
    task head is attached and before the trainable set is decided:

    1. quantization (`--precision ... --qaft`): fake-quant wrappers around the body's linear layers;
    2. LoRA (`--method lora ...`): adapters around the (possibly fake-quant) projections, base frozen.
    """
    gpt = load_base_model(args)
    module = task.build(gpt, args)
    if args.qaft:  # train at the target precision; without --qaft, `run` quantises the finished model (PTQ)
        apply_run_precision(module, module.gpt, args)
    if getattr(args, "method", "full") == "lora":  # after fake-quant: a quantised frozen base + fp32 adapters
        report = apply_lora(module, rank=args.lora_rank, alpha=args.lora_alpha, targets=args.lora_targets,
                            dropout=args.lora_dropout, trainable=head_modules(module))
        print(report, file=sys.stderr)
    if args.mode == "last-linear-layer":
        module.gpt.requires_grad_(False)
    if not any(p.requires_grad for p in module.parameters()):
        raise SystemExit("the model has no trainable parameter with these settings")
    return module


def head_modules(module: TaskModel) -> list[str]:
    """Names of the task head's modules (everything with parameters outside the GPT-2 body)."""
    return [n for n, m in module.named_children() if n != "gpt" and any(True for _ in m.parameters())]


def load_run_body(folder: Path, args: argparse.Namespace) -> GPT2:
    """The GPT-2 body a saved run starts from: the saved weights, or for a LoRA run (whose checkpoint holds only
    the adapter) the base model named by --model, rebuilt as the run built it."""
    if (folder / ADAPTER_NAME).is_file():
        return load_base_model(args)
    return load_model(folder)


def save_run_model(module: TaskModel, folder: Path, args: argparse.Namespace) -> None:
    """Best weights: the body as `model.safetensors` + `config.json` (HF layout, run settings under the key
    "minigpt2"), the head (if any) as `head.safetensors`. A LoRA run saves only `adapter.safetensors` (adapters
    + head, LoRA settings in its metadata) and a `config.json` naming the base model."""
    if getattr(args, "method", "full") == "lora":
        folder.mkdir(parents=True, exist_ok=True)
        save_adapter(module, folder / ADAPTER_NAME)
        cfg = module.gpt.config.to_hf_dict()
        cfg["minigpt2"] = {"task": args.task, "mode": args.mode, "base_model": args.model,
                           "lora": module.lora_config.to_dict(), "args": vars(args)}
        write_json(folder / "config.json", cfg)
        return
    with unwrapped(module.gpt):  # fake-quant wrappers keep the full-precision weights; those are saved
        save_model(module.gpt, folder, extra_config={"task": args.task, "mode": args.mode, "args": vars(args)})
    head = module.head_state()
    if head:
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous().cpu() for k, v in head.items()}, str(folder / "head.safetensors"))


def load_run_model(module: TaskModel, folder: Path) -> TaskModel:
    """Load what `save_run_model` wrote into a module of the same shape."""
    if (folder / ADAPTER_NAME).is_file():
        load_adapter(module, folder / ADAPTER_NAME)  # adds the adapters first if the module has none yet
        return module
    hf, _ = read_safetensors(folder / "model.safetensors")
    state = hf_to_minigpt2(hf, module.gpt.config, source=str(folder / "model.safetensors"))
    with unwrapped(module.gpt):
        module.gpt.load_state_dict(state, strict=True)
    if (folder / "head.safetensors").is_file():
        head, _ = read_safetensors(folder / "head.safetensors")
        missing, unexpected = module.load_state_dict(head, strict=False)
        if unexpected or any(not k.startswith("gpt.") for k in missing):
            raise RuntimeError(f"{folder / 'head.safetensors'}: head does not fit this task "
                               f"(unexpected {unexpected}, missing {[k for k in missing if 'gpt.' not in k]})")
    return module


# ---------------------------------------------------------------------------------------------- data

def load_splits(task: Task, args: argparse.Namespace, tok: Tokenizer, max_len: int
                ) -> tuple[dict[str, list[Example]], list[Malformed]]:
    """Encoded train/dev/test examples and every malformed row met (reported, not fatal)."""
    folder = data_dir(args.data_dir)
    ensure_task_data(task.name, folder, offline=args.offline)  # fetches missing files from the public sources
    require_files(folder, sorted(set(task.files.values())), task.name)
    splits, notes = {}, []
    for split in ("train", "dev", "test"):
        limit = args.max_train if split == "train" else args.max_eval
        splits[split], bad = task.load(folder, split, tok, max_len, limit, args)
        notes += bad
    return splits, notes


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


def make_evaluate(task: Task, dev: list[Example], args: argparse.Namespace, tok: Tokenizer, device: torch.device
                  ) -> Callable[[TaskModel], dict[str, float]]:
    """The per-epoch dev evaluation: the task's metric and the dev loss."""
    loss_examples = task.loss_examples(dev) if hasattr(task, "loss_examples") else dev

    def evaluate(module: TaskModel) -> dict[str, float]:
        preds = task.predict(module, dev, args, tok, device)
        out = dict(task.score(dev, preds))
        out["dev_loss"] = dev_loss(module, loss_examples, task, args.eval_batch_size, device, args.autocast)
        return out
    return evaluate


def write_split_predictions(task: Task, module: TaskModel, splits: dict[str, list[Example]],
                            args: argparse.Namespace, tok: Tokenizer, device: torch.device, run_dir: Path
                            ) -> dict[str, Any]:
    """Predict dev and test with `module`, write the course-format files, score dev."""
    result: dict[str, Any] = {}
    for split in ("dev", "test"):
        preds = task.predict(module, splits[split], args, tok, device)
        name = task.output_name(split, args)
        task.write_predictions(run_dir / name, splits[split], preds)
        result[f"{split}_predictions"] = name
        if split == "dev":
            result["dev"] = task.score(splits[split], preds)
    return result


# ---------------------------------------------------------------------------------------------- main

def default_run_dir(args: argparse.Namespace) -> Path:
    stamp = args.name or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("checkpoints") / "runs" / f"{args.task}-{stamp}"


def _shared_run_dir(args: argparse.Namespace, d: Dist) -> Path:
    """Every rank must write to the folder rank 0 chose (a timestamp could differ by a second)."""
    chosen = [str(Path(args.out_dir) if args.out_dir else default_run_dir(args))]
    if d.world > 1:
        dist.broadcast_object_list(chosen, src=0)
    return Path(chosen[0])


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune as `args` say; returns the final metrics (also in RUN_DIR/metrics.json)."""
    args = finalize_args(args)
    d = setup_distributed(args.device)
    autocast_dtype(args.autocast, d.device)  # refuse an unsupported --autocast bf16 before any work
    run_dir = _shared_run_dir(args, d)
    task = get_task(args.task)
    seed_everything(args.seed)
    tok = Tokenizer(args.tokenizer_dir)
    module = build_model(args, task)
    max_len = min(args.max_length or module.gpt.config.n_positions, module.gpt.config.n_positions)
    splits, notes = load_splits(task, args, tok, max_len)
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for note in notes:
            print(f"warning: skipped/irregular row: {note}", file=sys.stderr)
        config = {"args": vars(args), "run_dir": str(run_dir), "world_size": d.world, "device": str(d.device),
                  "max_length": max_len, "torch": torch.__version__,
                  "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_json(run_dir / "config.json", config)

    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                      warmup=args.warmup, schedule=args.schedule, grad_clip=args.grad_clip,
                      grad_accum=args.grad_accum, seed=args.seed, compile=args.compile, autocast=args.autocast,
                      stop_after_epoch=args.stop_after_epoch, progress=not args.no_progress)
    info = {"task": task.name, "model": args.model, "mode": args.mode, "method": args.method,
            "total_params": sum(p.numel() for p in module.parameters()),
            "data": {s: len(v) for s, v in splits.items()}, "malformed_rows": [str(n) for n in notes]}
    n_synthetic = sum(e.meta.get("source") == "synthetic" for e in splits["train"])
    info["data"].update(train_real=len(splits["train"]) - n_synthetic, train_synthetic=n_synthetic)
    metrics = train(module, splits["train"], lambda ex: collate(ex, lm_targets=task.lm_targets), cfg, run_dir,
                    make_evaluate(task, splits["dev"], args, tok, d.device), task.metric,
                    lambda m, folder: save_run_model(m, folder, args), d=d, resume=args.resume, info=info)
    if d.main and "stopped_after_epoch" not in metrics:
        t1 = time.time()
        load_run_model(module, run_dir / "best")
        if args.precision != "fp32" and not args.qaft:  # post-training quantization, evaluated the same way
            apply_run_precision(module, module.gpt, args)
        metrics.update(write_split_predictions(task, module, splits, args, tok, d.device, run_dir))
        if args.precision != "fp32":
            with without_lora(module.gpt):  # the packed base; a LoRA run's adapter is best/adapter.safetensors
                metrics["quantization"] = write_quantized(module.gpt, args, run_dir)
        metrics["predict_s"] = time.time() - t1
        metrics["wall_s"] += metrics["predict_s"]
        write_json(run_dir / "metrics.json", metrics)
        best = metrics["best"]
        print(f"best epoch {best['epoch']}: dev {task.metric} {best[task.metric]:.4f}; run folder {run_dir}")
    elif d.main:
        write_json(run_dir / "metrics.json", metrics)
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return metrics


# Bad input or an unreachable download: reported as one message, not a traceback.
USER_ERRORS = (MissingDataError, DataError, CheckpointError, DownloadError, TokenizerUnavailable,
               AutocastUnavailable)


def main(argv: list[str] | None = None) -> None:
    try:
        run(build_parser().parse_args(argv))
    except USER_ERRORS as e:
        raise SystemExit(f"error: {e}") from e


if __name__ == "__main__":
    main()
