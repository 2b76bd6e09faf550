"""A task-agnostic training loop: it sees a module whose `forward(batch)` returns a loss, and examples to batch.

    for epoch:  length-bucketed batches ─► [accumulate grads over k micro-batches] ─► clip ─► AdamW ─► LR schedule
                evaluate (rank 0) ─► keep the best checkpoint ─► save the resume state (model, optimizer, schedule,
                RNG, epoch) ─► metrics.json

What it does not know: tasks, heads, LoRA, quantization. Those arrive already inside `module`.
Multi-GPU: launch with `torchrun --nproc_per_node N`; each rank takes every N-th batch and DDP averages the
gradients. The forward runs under the autocast `cfg.autocast` asks for (`minigpt2.device`: bf16 on CUDA by
default, on CPUs with native bf16 when asked); AdamW is fused on CUDA. Weights and AdamW moments stay fp32.
The resume state of an epoch is one safetensors file (tensors; everything else as JSON in its metadata), replaced
atomically; nothing is pickled.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from .atomic import atomic_path, atomic_write_json
from .checkpoint import read_safetensors
from .cpu_dropout import use_cpu_dropout
from .device import AUTOCAST_MODES, autocast, autocast_dtype, distributed_backend, fused_adamw, parse_device
from .errors import UserError, require
from .model import Block
from .recompute import recompute_gelu_in_backward

DEFAULT_SEED = 11711  # the course's seed


class TrainingDiverged(UserError, FloatingPointError):
    """The training loss became NaN or infinite; nothing after that step can be trusted."""


MAX_SEED = 2**63  # torch takes 64-bit seeds, and epochs, ranks and batch offsets are added to the seed
SCHEDULES = ("linear", "cosine", "constant")


def _doc(text: str, **extra: Any) -> dict[str, Any]:
    """A field's help text (read by command-line builders; the library names no flag)."""
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
    compile: bool = field(default=False, metadata=_doc("torch.compile the model for training"))
    autocast: str = field(default="auto", metadata=_doc(
        "auto: bf16 autocast on CUDA, fp32 on CPU; bf16: bf16 autocast on CUDA or on a CPU with native bf16 (an "
        "error elsewhere); off: fp32 everywhere. Weights stay fp32", choices=AUTOCAST_MODES))
    bucket: int = 50  # length bucketing: sort within chunks of bucket*batch_size shuffled examples
    stop_after_epoch: int | None = field(default=None, metadata=_doc(
        "debug: stop after this epoch as if interrupted (to test resuming)"))
    progress: bool = field(default=True, metadata=_doc("show the progress bars", help_off="hide the progress bars"))

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


@dataclass
class Dist:
    """Where this process sits: rank, world size, its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> Dist:
    """Join the process group when launched by torchrun (NCCL on GPUs, gloo on CPU); pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = parse_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend=distributed_backend(dev))
    return Dist(rank, world, local_rank, dev)


class FetchWaitError(UserError, TimeoutError):
    """A rank waited too long for the rank fetching the run's inputs, or that rank failed."""


def fetch_once(fetch: Callable[[], None], d: Dist, timeout: float, store: Any = None, what: str = "inputs") -> None:
    """Run `fetch` (download whatever is missing; a no-op when all is there) once per machine, not once per rank.

    Global rank 0 fetches first while every other rank waits. Then local rank 0 of each other node calls `fetch`
    too: on a folder every node shares it finds everything there and fetches nothing; on node-local storage it
    fetches that node's copy. The other ranks of a node wait for their local rank 0. A wait longer than `timeout`
    seconds, or a failed fetch on the rank waited for, is a `FetchWaitError` naming who was waited for. The
    handshake goes through the process group's key-value store (`store`, default: torchrun's), so it works the same
    under gloo and NCCL."""
    if d.world == 1:
        fetch()
        return
    if store is None:
        store = dist.distributed_c10d._get_default_store()  # the rendezvous store every rank already shares
    node = os.environ.get("GROUP_RANK", "0")  # torchrun's node rank
    prefix = f"minigpt2/fetch/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"  # a restart fetches afresh
    first, mine = f"{prefix}/global", f"{prefix}/node{node}"
    if d.rank == 0:
        _publish(store, first, fetch)
        store.set(mine, "ok")  # rank 0's node is served by rank 0's fetch
        return
    _wait(store, first, "global rank 0", what, timeout, d)
    if d.local_rank == 0:
        _publish(store, mine, fetch)
    else:
        _wait(store, mine, f"local rank 0 of node {node}", what, timeout, d)


def leave_together(d: Dist, timeout: float = 120.0) -> None:
    """End a DDP run: every rank leaves the process group, and global rank 0 leaves last. Under torchrun the
    key-value store lives with node 0's agent, which goes once rank 0 exits; a rank still tearing down would then
    read a store that is gone and abort. So each other rank says on the store that it has left, and rank 0 waits for
    them (at most `timeout` seconds: a rank that died has said why itself)."""
    if d.world == 1:
        return
    import datetime

    dist.barrier()
    store = dist.distributed_c10d._get_default_store()
    dist.destroy_process_group()
    prefix = f"minigpt2/left/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    if d.rank != 0:
        store.set(f"{prefix}/{d.rank}", "1")
        return
    try:
        store.wait([f"{prefix}/{r}" for r in range(1, d.world)], datetime.timedelta(seconds=timeout))
    except RuntimeError:
        pass  # a rank that never said so ended on its own error, which it printed


def _publish(store: Any, key: str, fetch: Callable[[], None]) -> None:
    """Fetch, then tell the waiting ranks how it went (a failure too, so that they stop at once)."""
    try:
        fetch()
    except BaseException as e:
        store.set(key, f"failed: {type(e).__name__}: {e}")
        raise
    store.set(key, "ok")


def _wait(store: Any, key: str, who: str, what: str, timeout: float, d: Dist) -> None:
    import datetime

    try:
        store.wait([key], datetime.timedelta(seconds=timeout))
    except RuntimeError:  # the store's own timeout error (DistStoreError is a RuntimeError)
        raise FetchWaitError(f"rank {d.rank} waited {timeout:g} s (--fetch-timeout) for {who} to fetch the run's "
                             f"{what}, in vain; see that rank's output, or raise --fetch-timeout for a slow "
                             "download") from None
    answer = store.get(key).decode()
    if answer != "ok":
        raise FetchWaitError(f"rank {d.rank}: {who} could not fetch the run's {what} ({answer})")


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


class CompiledBlocks:
    """`torch.compile` (inductor) for the transformer blocks of `module`, switched on only while training.

    The blocks hold nearly all the work and have static shapes and control flow; one compiled `Block.forward`
    serves every block (their weights are its inputs). What surrounds them stays eager on purpose: GPT2.forward
    inspects the attention mask's values (is it right-padded?) to pick SDPA's causal path, which would break a
    whole-model graph at every batch, and the chunked LM loss is already a hand-fused autograd function with
    data-dependent row selection. Evaluation and generation (KV cache, changing lengths) run eager.
    """

    def __init__(self, module: nn.Module) -> None:
        self.blocks = [m for m in module.modules() if isinstance(m, Block)]
        self.forward = torch.compile(Block.forward)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        for block in self.blocks:  # an instance attribute shadows the class's forward; deleting it restores it
            block.forward = functools.partial(self.forward, block)
        try:
            yield
        finally:
            for block in self.blocks:
                del block.forward


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------- resume state

STATE_FILE = "state.safetensors"  # one file: a kill leaves the previous epoch's state or this one, never a mix


def save_resume_state(folder: Path, module: nn.Module, optimizer: torch.optim.Optimizer,
                      scheduler: torch.optim.lr_scheduler.LRScheduler, epoch: int, extra: dict[str, Any]) -> None:
    """Everything needed to continue after `epoch`: trainable weights, AdamW moments and step, the schedule,
    RNG states. The tensors and (in the file's metadata, as JSON) the rest go into one file, swapped in atomically."""
    tensors = {f"model.{n}": p.detach().contiguous().cpu() for n, p in module.named_parameters() if p.requires_grad}
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).contiguous().cpu()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    py_state = random.getstate()
    np_state = np.random.get_state()
    trainer = {
        "epoch": epoch,
        "param_groups": opt["param_groups"],
        "scheduler": scheduler.state_dict(),
        "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
        "rng_numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        **extra,
    }
    with atomic_path(folder / STATE_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"trainer": json.dumps(trainer, allow_nan=False)})


def has_resume_state(folder: Path) -> bool:
    return (folder / STATE_FILE).is_file()


class ResumeStateError(UserError, ValueError):
    """A resume state that does not fit the run being resumed."""


def load_resume_state(folder: Path, module: nn.Module, optimizer: torch.optim.Optimizer,
                      scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """Restore what `save_resume_state` wrote; returns the JSON part (epoch, history, ...)."""
    path = folder / STATE_FILE
    tensors, meta = read_safetensors(path)
    trainer = _trainer_state(path, meta)
    params = dict(module.named_parameters())
    for name, p in params.items():
        if p.requires_grad:
            key = f"model.{name}"
            if key not in tensors:
                raise ResumeStateError(f"{path}: no tensor {key!r}; was the run started with "
                                       "other settings (mode, LoRA, ...)?")
            with torch.no_grad():
                p.copy_(tensors[key])
    try:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": trainer["param_groups"]})
        scheduler.load_state_dict(trainer["scheduler"])
        torch.set_rng_state(tensors["rng.torch"])
        cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states[:torch.cuda.device_count()])
        v, s, g = trainer["rng_python"]
        random.setstate((v, tuple(s), g))
        kind, keys, pos, has_gauss, cached = trainer["rng_numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
        if not (isinstance(trainer["epoch"], int) and isinstance(trainer["history"], list)
                and isinstance(trainer["wall_s"], (int, float))):
            raise TypeError("epoch, history or wall_s of the wrong type")
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # a state that parses but does not fit
        raise ResumeStateError(f"{path}: the saved optimizer, schedule or random state does not fit this run "
                               f"({type(e).__name__}: {e}); start the run again with --overwrite") from None
    return trainer


_TRAINER_KEYS = frozenset({"epoch", "param_groups", "scheduler", "rng_python", "rng_numpy", "history", "best",
                           "wall_s"})


def _trainer_state(path: Path, meta: dict[str, str]) -> dict[str, Any]:
    """The JSON part of a resume state, or a ResumeStateError naming the file."""
    if "trainer" not in meta:
        raise ResumeStateError(f"{path}: no trainer state in its metadata (written by an older "
                               "version?); start the run again with --overwrite")
    try:
        trainer = json.loads(meta["trainer"])
    except ValueError as e:
        raise ResumeStateError(f"{path}: its trainer state is not valid JSON ({e}); the file is damaged: start the "
                               "run again with --overwrite") from None
    if not isinstance(trainer, dict) or not _TRAINER_KEYS <= set(trainer):
        raise ResumeStateError(f"{path}: its trainer state is not an object with {', '.join(sorted(_TRAINER_KEYS))}"
                               "; the file is damaged: start the run again with --overwrite")
    return trainer


def check_resume_state(folder: Path) -> None:
    """Refuse a damaged resume state in `folder` before a resumed run writes anything (its metadata only: the
    tensors are read, and checked, when the state is loaded)."""
    path = folder / STATE_FILE
    if not path.is_file():
        return
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ResumeStateError(f"{path}: not a readable resume state ({e}); start the run again with --overwrite"
                               ) from None
    _trainer_state(path, meta)


# ----------------------------------------------------------------------------------------------- the loop

def _all_reduce_sum(values: list[float], d: Dist) -> list[float]:
    if d.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return t.tolist()


class TrainingSetTooSmall(UserError, ValueError):
    """Fewer training batches than processes."""


def use_training_speed_pieces(module: nn.Module) -> None:
    """Switch in, in place, the pieces every training run uses (bench/ does the same for its minigpt2 side).

    `minigpt2.recompute`: each MLP recomputes its GELU output in backward instead of keeping it (identical
    numbers, less memory). `minigpt2.cpu_dropout`: on CPU, dropout masks drawn without torch's per-element
    `bernoulli_` (the same distribution up to p rounded to a multiple of 2^-15). Parameters and keys stay.
    """
    recompute_gelu_in_backward(module)
    use_cpu_dropout(module)


def train(module: nn.Module, examples: Sequence[Any], collate: Callable[[list[Any]], dict[str, torch.Tensor]],
          cfg: TrainConfig, run_dir: str | os.PathLike, evaluate: Callable[[nn.Module], dict[str, float]],
          metric: str, save_best: Callable[[nn.Module, Path], None], d: Dist | None = None,
          resume: bool = False, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `module` (its `forward(batch)` returns the loss) on `examples`; returns the metrics dict.

    `evaluate(module)` (rank 0 only) returns dev figures including `metric` (higher is better);
    `save_best(module, folder)` writes the best epoch's weights. `metrics.json` in `run_dir` is rewritten after
    every epoch; `run_dir/last/` holds the resume state.
    """
    d = d or Dist()
    run_dir = Path(run_dir)
    module.to(d.device)
    seed_everything(cfg.seed + d.rank)
    lengths = [len(e.input_ids) for e in examples]
    n_batches = len(bucketed_batches(lengths, cfg.batch_size, torch.Generator().manual_seed(0), cfg.bucket))
    per_rank = n_batches // d.world
    if per_rank == 0:
        raise TrainingSetTooSmall(f"{len(examples)} training examples make {n_batches} batches of {cfg.batch_size}: "
                         f"fewer than the {d.world} processes")
    steps_per_epoch = math.ceil(per_rank / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs

    amp = autocast_dtype(cfg.autocast, d.device)  # before any work: an unsupported `bf16` is refused here
    optimizer = torch.optim.AdamW(param_groups(module, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999),
                                  **({"fused": True} if fused_adamw(d.device) else {}))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, cfg.warmup, cfg.schedule))
    trainable = [p for p in module.parameters() if p.requires_grad]

    metrics: dict[str, Any] = {"metric": metric, "epochs": [], "best": None, **(info or {}),
                               "trainable_params": count_trainable(module),
                               "total_params": sum(p.numel() for p in module.parameters()),
                               "world_size": d.world, "optimizer_steps_per_epoch": steps_per_epoch,
                               "autocast_used": "bf16" if amp == torch.bfloat16 else "off",
                               "train_config": asdict(cfg)}
    start_epoch, wall_before = 1, 0.0
    last_dir = run_dir / "last"
    if resume and has_resume_state(last_dir):
        trainer = load_resume_state(last_dir, module, optimizer, scheduler)
        if d.rank != 0:  # every rank restores rank 0's RNG, then makes it its own again
            seed_everything(cfg.seed + d.rank + 1000 * trainer["epoch"])
        start_epoch = trainer["epoch"] + 1
        metrics["epochs"], metrics["best"] = trainer["history"], trainer["best"]
        wall_before = trainer["wall_s"]
        metrics["resumed_from_epoch"] = trainer["epoch"]
    elif resume and d.main:
        print(f"--resume: no saved state in {last_dir}; starting from epoch 1")

    use_training_speed_pieces(module)
    wrapped: nn.Module = module
    if d.world > 1:
        wrapped = nn.parallel.DistributedDataParallel(
            module, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    compiled = CompiledBlocks(module) if cfg.compile else None
    t_start = time.time()

    for epoch in range(start_epoch, cfg.epochs + 1):
        module.train()
        batches = bucketed_batches(lengths, cfg.batch_size, torch.Generator().manual_seed(cfg.seed + epoch),
                                   cfg.bucket)[:per_rank * d.world][d.rank::d.world]
        loss_sum = torch.zeros((), dtype=torch.float64, device=d.device)  # summed on device: no sync per step
        n_loss, tokens = 0, 0
        t0 = time.time()
        bar = tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs}", disable=not (cfg.progress and d.main),
                   dynamic_ncols=True)
        with compiled.active() if compiled else contextlib.nullcontext():  # eager again for evaluation
            for i, idx in enumerate(bar):
                group_start = i - i % cfg.grad_accum
                group_size = min(cfg.grad_accum, len(batches) - group_start)
                sync = i == group_start + group_size - 1
                batch = {k: v.to(d.device, non_blocking=True) for k, v in collate([examples[j] for j in idx]).items()}
                no_sync = wrapped.no_sync() if (d.world > 1 and not sync) else contextlib.nullcontext()
                with no_sync:
                    with autocast(d.device, amp):
                        loss = wrapped(batch)
                    (loss / group_size).backward()
                loss_sum += loss.detach()
                n_loss += 1
                tokens += sum(len(examples[j].input_ids) for j in idx)
                if sync:
                    if not math.isfinite(loss_sum.item()):  # one check per optimizer step, before the update
                        raise TrainingDiverged(
                            f"the training loss is {loss_sum.item()} at epoch {epoch}, step {i // cfg.grad_accum + 1} "
                            f"(lr {scheduler.get_last_lr()[0]:.3g}): training diverged; try a lower --lr")
                    if cfg.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                if d.main and cfg.progress and (i % 10 == 0 or i == len(batches) - 1):
                    bar.set_postfix(loss=f"{loss_sum.item() / n_loss:.4f}",
                                    tok_s=f"{tokens / max(1e-9, time.time() - t0):.0f}")
        train_s = time.time() - t0
        loss_sum, n_loss, tokens = _all_reduce_sum([loss_sum.item(), n_loss, tokens], d)
        row: dict[str, Any] = {"epoch": epoch, "train_loss": loss_sum / n_loss, "tokens_per_s": tokens / train_s,
                               "train_s": train_s, "lr": scheduler.get_last_lr()[0]}
        if d.main:
            t1 = time.time()
            row.update(evaluate(module))
            bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
            if bad:  # a NaN dev loss or metric would pick a "best" epoch by nothing
                raise TrainingDiverged(f"epoch {epoch}: {', '.join(f'{k} = {row[k]}' for k in bad)}; the model "
                                       "diverged; try a lower --lr")
            row["eval_s"] = time.time() - t1
            best = metrics["best"]
            if best is None or row[metric] > best[metric]:
                save_best(module, run_dir / "best")
                metrics["best"] = {"epoch": epoch, metric: row[metric],
                                   **{k: v for k, v in row.items() if k.startswith("dev_")}}
            metrics["epochs"].append(row)
            metrics["wall_s"] = wall_before + time.time() - t_start
            save_resume_state(last_dir, module, optimizer, scheduler, epoch,
                              {"history": metrics["epochs"], "best": metrics["best"], "wall_s": metrics["wall_s"]})
            atomic_write_json(run_dir / "metrics.json", metrics)
            print(f"epoch {epoch}: train loss {row['train_loss']:.4f}, dev {metric} {row[metric]:.4f}, "
                  f"{row['tokens_per_s']:.0f} tok/s")
        if d.world > 1:
            dist.barrier()
        if cfg.stop_after_epoch is not None and epoch >= cfg.stop_after_epoch and epoch < cfg.epochs:
            metrics["stopped_after_epoch"] = epoch
            break
    metrics["wall_s"] = wall_before + time.time() - t_start
    if d.world > 1:
        metrics["param_checksums"] = _param_checksums(module, d)
    return metrics


def _param_checksums(module: nn.Module, d: Dist) -> list[float]:
    """A fingerprint of the trainable weights on every rank: DDP keeps them equal."""
    local = torch.tensor([sum(p.detach().double().sum().item() for p in module.parameters() if p.requires_grad)],
                         dtype=torch.float64, device=d.device)
    gathered = [torch.zeros_like(local) for _ in range(d.world)]
    dist.all_gather(gathered, local)
    return [float(t.item()) for t in gathered]


