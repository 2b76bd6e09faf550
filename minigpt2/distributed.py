"""Several processes, one run: where this process sits (`Dist`), joining torchrun's process group, fetching a
run's inputs once per machine, summing figures over the ranks, and leaving together.

Launch with `torchrun --nproc_per_node N`; a single process (no torchrun) is a world of one, and every function
here is then a no-op or its plain single-process meaning.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from .device import distributed_backend, parse_device
from .errors import UserError


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
    try:
        store.wait([key], datetime.timedelta(seconds=timeout))
    except RuntimeError:  # the store's own timeout error (DistStoreError is a RuntimeError)
        raise FetchWaitError(f"rank {d.rank} waited {timeout:g} s (fetch_timeout) for {who} to fetch the run's "
                             f"{what}, in vain; see that rank's output, or raise fetch_timeout for a slow "
                             "download") from None
    answer = store.get(key).decode()
    if answer != "ok":
        raise FetchWaitError(f"rank {d.rank}: {who} could not fetch the run's {what} ({answer})")


def all_reduce_sum(values: list[float], d: Dist) -> list[float]:
    """The sum of `values` over every rank (the values themselves in a world of one)."""
    if d.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return t.tolist()


def param_checksums(module: nn.Module, d: Dist) -> list[float]:
    """A fingerprint of the trainable weights on every rank: DDP keeps them equal."""
    local = torch.tensor([sum(p.detach().double().sum().item() for p in module.parameters() if p.requires_grad)],
                         dtype=torch.float64, device=d.device)
    gathered = [torch.zeros_like(local) for _ in range(d.world)]
    dist.all_gather(gathered, local)
    return [float(t.item()) for t in gathered]
