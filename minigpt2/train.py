"""A task-agnostic training loop: it sees a module whose `forward(batch)` returns a loss, and examples to batch.

    train:      set up AdamW, the LR schedule, the resume state ─► for each epoch: run_epoch, end_epoch
    run_epoch:  length-bucketed batches ─► [accumulate grads over k micro-batches] ─► clip ─► AdamW ─► LR schedule
    end_epoch:  evaluate (rank 0) ─► note the best epoch ─► the callbacks: the caller's best checkpoint, the resume
                state (`keep_resume_state`), metrics.json

What it does not know: tasks, heads, LoRA, quantization, run folders. Those arrive already inside `module`, or in
the callbacks. Multi-GPU: launch with `torchrun --nproc_per_node N` (`minigpt2.distributed`); each rank takes
every N-th batch and DDP averages the gradients. The forward runs under autocast in the dtype the caller passes
(`autocast_dtype`, None: fp32), resolved once from the run's `--autocast` mode by the application
(`minigpt2.device.autocast_dtype`); AdamW is fused on CUDA. Weights and AdamW moments stay fp32. The resume state
is `minigpt2.resume`'s.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from .device import AUTOCAST_MODES, autocast, fused_adamw
from .distributed import Dist, all_reduce_sum, param_checksums
from .errors import UserError, require
from .resume import has_resume_state, load_resume_state, save_resume_state

DEFAULT_SEED = 11711  # the course's seed


class TrainingDiverged(UserError, FloatingPointError):
    """The training loss became NaN or infinite; nothing after that step can be trusted."""


MAX_SEED = 2**63  # torch takes 64-bit seeds, and epochs, ranks and batch offsets are added to the seed
SCHEDULES = ("linear", "cosine", "constant")


def _doc(text: str, **extra: Any) -> dict[str, Any]:
    """A field's help text and, for what does not change the result, its role ("runs": how it runs, "watch": how
    it is watched), read by command-line builders and run folders (the library names no flag)."""
    return {"help": text, **extra}


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of a run, checked when built (a bad value is a `FieldError` naming the field)."""

    epochs: int = field(default=10, metadata=_doc(
        "passes over the training set; 0: no training, the base model (at the run's precision) is scored on dev "
        "and test and saved as the run's best (the zero-shot reference)"))
    batch_size: int = field(default=8, metadata=_doc("examples per micro-batch (per process)"))
    grad_accum: int = field(default=1, metadata=_doc("micro-batches per optimizer step"))
    lr: float = field(default=1e-5, metadata=_doc("peak learning rate"))
    weight_decay: float = field(default=0.01, metadata=_doc("AdamW weight decay of 2+-dim tensors"))
    warmup: float = field(default=0.05, metadata=_doc("fraction of optimizer steps of linear LR warmup"))
    schedule: str = field(default="linear", metadata=_doc("LR decay after warmup", choices=SCHEDULES))
    grad_clip: float = field(default=1.0, metadata=_doc("clip the global gradient norm (0: off)"))
    seed: int = field(default=DEFAULT_SEED, metadata=_doc("seed of everything random (the course's)"))
    # The run's request; the caller switches the compiled blocks in (`minigpt2.fast.compiled`) and hands `train`
    # the context its steps run in (`step_context`).
    compile: bool = field(default=False, metadata=_doc("torch.compile the model for training", role="runs"))
    # The run's request, kept with its settings; `train` reads only the dtype the caller resolved from it
    # (`minigpt2.device.autocast_dtype`), its `autocast_dtype` argument.
    autocast: str = field(default="auto", metadata=_doc(
        "auto: bf16 autocast on CUDA, fp32 on CPU; bf16: bf16 autocast on CUDA or on a CPU with native bf16 (an "
        "error elsewhere); off: fp32 everywhere. Weights stay fp32", choices=AUTOCAST_MODES))
    bucket: int = 50  # length bucketing: sort within chunks of bucket*batch_size shuffled examples
    stop_after_epoch: int | None = field(default=None, metadata=_doc(
        "debug: stop after this epoch as if interrupted (to test resuming)", role="watch"))
    progress: bool = field(default=True, metadata=_doc("show the progress bars", help_off="hide the progress bars",
                                                       role="watch"))

    def __post_init__(self) -> None:
        finite = math.isfinite
        require(self.epochs >= 0, "epochs", self.epochs, "an integer >= 0")
        for name in ("batch_size", "grad_accum", "bucket"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "an integer >= 1")
        require(finite(self.lr) and self.lr > 0, "lr", self.lr, "a finite number > 0")
        require(finite(self.weight_decay) and self.weight_decay >= 0, "weight_decay", self.weight_decay,
                "a finite number >= 0")
        require(0 <= self.warmup < 1, "warmup", self.warmup, "a fraction in [0, 1)")
        require(self.schedule in SCHEDULES, "schedule", self.schedule, f"one of {', '.join(SCHEDULES)}")
        require(finite(self.grad_clip) and self.grad_clip >= 0, "grad_clip", self.grad_clip,
                "a finite number >= 0 (0: off)")
        require(0 <= self.seed < MAX_SEED, "seed", self.seed, "an integer in [0, 2**63)")
        require(self.autocast in AUTOCAST_MODES, "autocast", self.autocast, f"one of {', '.join(AUTOCAST_MODES)}")
        if self.stop_after_epoch is not None:
            require(self.stop_after_epoch >= 1, "stop_after_epoch", self.stop_after_epoch, "an integer >= 1")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def bucketed_batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator, bucket: int = 50
                     ) -> list[list[int]]:
    """Shuffled batches of similar-length examples: shuffle, sort each chunk of `bucket` batches by length, cut
    into batches, shuffle the batches. Padding drops without giving up randomness."""
    perm = torch.randperm(len(lengths), generator=generator).tolist()
    chunk = batch_size * bucket
    batches: list[list[int]] = []
    for start in range(0, len(perm), chunk):
        part = sorted(perm[start:start + chunk], key=lambda i: lengths[i])
        batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: matrices and embeddings (2+ dims) decay; biases and LayerNorm gains do not."""
    params = [p for p in module.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def lr_lambda(total_steps: int, warmup: float, schedule: str) -> Callable[[int], float]:
    """LR multiplier at an optimizer step: linear warmup, then linear or cosine decay to 0, or constant."""
    warm = int(round(warmup * total_steps))
    if schedule not in ("linear", "cosine", "constant"):
        raise ValueError(f"unknown schedule {schedule!r}; expected linear, cosine or constant")

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------------------- the loop

class TrainingSetTooSmall(UserError, ValueError):
    """Fewer training batches than processes."""


@dataclass
class EpochEnd:
    """What an end-of-epoch callback sees: on rank 0, after the dev evaluation, in the order the callbacks come."""

    epoch: int
    row: dict[str, Any]  # this epoch: train_loss, tokens_per_s, train_s, lr, the dev figures, eval_s
    metrics: dict[str, Any]  # the run so far: "epochs" (every row), "best", "wall_s", ...
    improved: bool  # this epoch is the best so far by the run's metric
    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


Callback = Callable[[EpochEnd], None]


def keep_resume_state(folder: Path) -> Callback:
    """A callback that saves the resume state after every epoch; `train(..., resume_from=folder)` continues it."""
    def save(end: EpochEnd) -> None:
        save_resume_state(folder, end.module, end.optimizer, end.scheduler, end.epoch,
                          {"history": end.metrics["epochs"], "best": end.metrics["best"],
                           "wall_s": end.metrics["wall_s"]})
    return save


@dataclass
class Loop:
    """What `train` sets up once and every epoch uses."""

    module: nn.Module
    wrapped: nn.Module  # `module`, or its DDP wrapper when there are several processes
    examples: Sequence[Any]
    collate: Callable[[list[Any]], dict[str, torch.Tensor]]
    cfg: TrainConfig
    d: Dist
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    amp: torch.dtype | None  # the autocast dtype, None for fp32
    per_rank: int  # batches per process and epoch
    step_context: Callable[[], ContextManager] | None  # the context the training steps run in, or None
    evaluate: Callable[[nn.Module], dict[str, float]]
    callbacks: Sequence[Callback]


def new_metrics(module: nn.Module, cfg: TrainConfig, metric: str, d: Dist, steps_per_epoch: int,
                autocast_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """The metrics record of a run before its first epoch: what it trains, how (`autocast_dtype`: the dtype its
    forward runs in, None: fp32), and where the epochs will go."""
    return {"metric": metric, "epochs": [], "best": None, "trainable_params": count_trainable(module),
            "total_params": sum(p.numel() for p in module.parameters()), "world_size": d.world,
            "optimizer_steps_per_epoch": steps_per_epoch,
            "autocast_used": "bf16" if autocast_dtype == torch.bfloat16 else "off", "train_config": asdict(cfg)}


def record_epoch(metrics: dict[str, Any], row: dict[str, Any]) -> bool:
    """Add an evaluated epoch to `metrics`; True if it is the best so far (a higher `metrics["metric"]`), which
    then becomes `metrics["best"]` with its dev figures."""
    metric, best = metrics["metric"], metrics["best"]
    improved = best is None or row[metric] > best[metric]
    if improved:
        metrics["best"] = {"epoch": row["epoch"], metric: row[metric],
                           **{k: v for k, v in row.items() if k.startswith("dev_")}}
    metrics["epochs"].append(row)
    return improved


def train(module: nn.Module, examples: Sequence[Any], collate: Callable[[list[Any]], dict[str, torch.Tensor]],
          cfg: TrainConfig, evaluate: Callable[[nn.Module], dict[str, float]], metric: str,
          callbacks: Sequence[Callback] = (), d: Dist | None = None, resume_from: Path | None = None,
          autocast_dtype: torch.dtype | None = None, step_context: Callable[[], ContextManager] | None = None
          ) -> dict[str, Any]:
    """Train `module` (its `forward(batch)` returns the loss) on `examples`; returns the run's metrics.

    After every epoch rank 0 calls `evaluate(module)` for the dev figures, which include `metric` (higher is
    better), then each of `callbacks` with an `EpochEnd`: that is where the caller saves the best weights, the
    resume state (`keep_resume_state`) and the metrics. `resume_from`: a folder with a resume state to continue.
    `autocast_dtype`: the dtype the forward runs in under autocast (None: fp32), as the caller resolved the run's
    `--autocast` mode on `d.device` (`minigpt2.device.autocast_dtype`). `step_context`: a context each epoch's
    training steps run in, left before the dev evaluation (`--compile`: `minigpt2.fast.compiled.CompiledBlocks`'s).
    """
    d = d or Dist()
    module.to(d.device)
    seed_everything(cfg.seed + d.rank)
    lengths = [len(e.input_ids) for e in examples]
    n_batches = len(bucketed_batches(lengths, cfg.batch_size, torch.Generator().manual_seed(0), cfg.bucket))
    per_rank = n_batches // d.world
    if per_rank == 0:
        raise TrainingSetTooSmall(f"{len(examples)} training examples make {n_batches} batches of {cfg.batch_size}: "
                                  f"fewer than the {d.world} processes")
    steps_per_epoch = math.ceil(per_rank / cfg.grad_accum)
    optimizer = torch.optim.AdamW(param_groups(module, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999),
                                  **({"fused": True} if fused_adamw(d.device) else {}))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(steps_per_epoch * cfg.epochs, cfg.warmup, cfg.schedule))
    metrics = new_metrics(module, cfg, metric, d, steps_per_epoch, autocast_dtype)
    start_epoch, wall_before = restore(resume_from, module, optimizer, scheduler, metrics, cfg, d)
    wrapped = module if d.world == 1 else nn.parallel.DistributedDataParallel(
        module, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    loop = Loop(module, wrapped, examples, collate, cfg, d, optimizer, scheduler, autocast_dtype, per_rank,
                step_context, evaluate, callbacks)
    t_start = time.time()
    for epoch in range(start_epoch, cfg.epochs + 1):
        row = run_epoch(loop, epoch)
        if d.main:
            end_epoch(loop, row, metrics, started=t_start - wall_before)
        if d.world > 1:
            dist.barrier()
        if cfg.stop_after_epoch is not None and epoch >= cfg.stop_after_epoch and epoch < cfg.epochs:
            metrics["stopped_after_epoch"] = epoch
            break
    metrics["wall_s"] = wall_before + time.time() - t_start
    if d.world > 1:
        metrics["param_checksums"] = param_checksums(module, d)
    return metrics


def restore(folder: Path | None, module: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler, metrics: dict[str, Any], cfg: TrainConfig, d: Dist
            ) -> tuple[int, float]:
    """Continue from the resume state in `folder`, if there is one: restores the weights, optimizer, schedule and
    RNG, and the history into `metrics`. Returns the first epoch to run and the wall time already spent."""
    if folder is None:
        return 1, 0.0
    if not has_resume_state(folder):
        if d.main:
            print(f"resume: no saved state in {folder}; starting from epoch 1")
        return 1, 0.0
    trainer = load_resume_state(folder, module, optimizer, scheduler)
    if d.rank != 0:  # every rank restores rank 0's RNG, then makes it its own again
        seed_everything(cfg.seed + d.rank + 1000 * trainer["epoch"])
    start_epoch = trainer["epoch"] + 1
    metrics["epochs"], metrics["best"] = trainer["history"], trainer["best"]
    metrics["resumed_from_epoch"] = trainer["epoch"]
    return start_epoch, trainer["wall_s"]


def run_epoch(loop: Loop, epoch: int) -> dict[str, Any]:
    """One pass over this rank's share of the batches: forward, backward, and an optimizer step every
    `cfg.grad_accum` micro-batches. Returns the epoch's training figures, summed over the ranks."""
    cfg, d, examples = loop.cfg, loop.d, loop.examples
    loop.module.train()
    lengths = [len(e.input_ids) for e in examples]
    batches = bucketed_batches(lengths, cfg.batch_size, torch.Generator().manual_seed(cfg.seed + epoch),
                               cfg.bucket)[:loop.per_rank * d.world][d.rank::d.world]
    loss_sum = torch.zeros((), dtype=torch.float64, device=d.device)  # summed on device: no sync per step
    n_loss, tokens = 0, 0
    t0 = time.time()
    bar = tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs}", disable=not (cfg.progress and d.main),
               dynamic_ncols=True)
    with loop.step_context() if loop.step_context else contextlib.nullcontext():  # left before evaluation
        for i, idx in enumerate(bar):
            group_start = i - i % cfg.grad_accum
            group_size = min(cfg.grad_accum, len(batches) - group_start)
            sync = i == group_start + group_size - 1
            loss = forward_backward(loop, [examples[j] for j in idx], group_size, sync)
            loss_sum += loss
            n_loss += 1
            tokens += sum(len(examples[j].input_ids) for j in idx)
            if sync:
                if not math.isfinite(loss_sum.item()):  # one check per optimizer step, before the update
                    raise TrainingDiverged(
                        f"the training loss is {loss_sum.item()} at epoch {epoch}, step {i // cfg.grad_accum + 1} "
                        f"(lr {loop.scheduler.get_last_lr()[0]:.3g}): training diverged; try a lower learning "
                        "rate (lr)")
                optimizer_step(loop)
            if d.main and cfg.progress and (i % 10 == 0 or i == len(batches) - 1):
                bar.set_postfix(loss=f"{loss_sum.item() / n_loss:.4f}",
                                tok_s=f"{tokens / max(1e-9, time.time() - t0):.0f}")
    train_s = time.time() - t0
    loss_total, n_loss, tokens = all_reduce_sum([loss_sum.item(), n_loss, tokens], d)
    return {"epoch": epoch, "train_loss": loss_total / n_loss, "tokens_per_s": tokens / train_s, "train_s": train_s,
            "lr": loop.scheduler.get_last_lr()[0]}


def forward_backward(loop: Loop, chunk: list[Any], group_size: int, sync: bool) -> torch.Tensor:
    """The loss of one micro-batch, its gradient (divided by the micro-batches of its optimizer step) added to
    the parameters' `.grad`. DDP averages the gradients over the ranks only on the last micro-batch (`sync`)."""
    d = loop.d
    batch = {k: v.to(d.device, non_blocking=True) for k, v in loop.collate(chunk).items()}
    no_sync = loop.wrapped.no_sync() if (d.world > 1 and not sync) else contextlib.nullcontext()
    with no_sync:
        with autocast(d.device, loop.amp):
            loss = loop.wrapped(batch)
        (loss / group_size).backward()
    return loss.detach()


def optimizer_step(loop: Loop) -> None:
    """Clip the global gradient norm, step AdamW and the LR schedule, drop the gradients."""
    if loop.cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for p in loop.module.parameters() if p.requires_grad], loop.cfg.grad_clip)
    loop.optimizer.step()
    loop.scheduler.step()
    loop.optimizer.zero_grad(set_to_none=True)


def end_epoch(loop: Loop, row: dict[str, Any], metrics: dict[str, Any], started: float) -> None:
    """Rank 0 after an epoch: the dev figures into `row`, the best epoch and the history into `metrics`, then
    the callbacks. A non-finite dev figure stops the run before any callback writes anything."""
    t1 = time.time()
    row.update(loop.evaluate(loop.module))
    bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:  # a NaN dev loss or metric would pick a "best" epoch by nothing
        raise TrainingDiverged(f"epoch {row['epoch']}: {', '.join(f'{k} = {row[k]}' for k in bad)}; the model "
                               "diverged; try a lower learning rate (lr)")
    row["eval_s"] = time.time() - t1
    improved = record_epoch(metrics, row)
    metrics["wall_s"] = time.time() - started
    for callback in loop.callbacks:
        callback(EpochEnd(row["epoch"], row, metrics, improved, loop.module, loop.optimizer, loop.scheduler))
    metric = metrics["metric"]
    print(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, dev {metric} {row[metric]:.4f}, "
          f"{row['tokens_per_s']:.0f} tok/s")
