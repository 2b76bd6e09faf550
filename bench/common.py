"""Measuring helpers shared by every benchmark: fixed threads, median timings, peak memory, one result table."""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch


class ModuleSkipped(Exception):
    """A bench module that cannot run on this machine (an optional peer not installed); the message says why."""


def set_threads(n: int | None = None) -> int:
    """Fix torch's intra-op threads (default: all cores) so both sides of a comparison get the same."""
    n = n or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def bf16_unavailable(device: str) -> str | None:
    """Why bf16 lines cannot be measured fairly on `device` (no native bf16: it would be emulated), or None."""
    from minigpt2.device import AutocastUnavailable, autocast_dtype

    try:
        autocast_dtype("bf16", device)
    except AutocastUnavailable as e:
        return str(e)
    return None


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def compare_time(fns: dict[str, Callable[[], Any]], warmup: int = 2, iters: int = 5) -> dict[str, float]:
    """Median wall time in seconds of each of several functions, timed turn by turn.

    The calls are interleaved (a, b, a, b, ...) so that a slow spell of a shared machine hits every side alike,
    instead of whichever happened to be timed at that moment. `warmup` untimed calls of each come first.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def proc_status_bytes(key: str) -> int:
    """A memory figure of this process from /proc/self/status, e.g. "VmRSS" (now) or "VmHWM" (peak), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not found in /proc/self/status")


def peak_memory(fn: Callable[[], Any]) -> int:
    """Peak memory in bytes while `fn()` runs: CUDA's allocator peak on GPU, else the process's peak RSS.

    On Linux, writing 5 to /proc/self/clear_refs resets the RSS high-water mark, so the peak is this call's own
    (it includes what was resident before the call, e.g. the weights, as a real run would).
    """
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    fn()
    return proc_status_bytes("VmHWM")


@dataclass
class Row:
    """One benchmark line: our figure, the peer's, their ratio, and the goal it is judged by. `minigpt2` is None
    on a line that shows a peer alone (nothing on our side to pair with it yet)."""

    line: str
    unit: str
    minigpt2: float | None
    peer_name: str | None = None
    peer: float | None = None
    higher_is_better: bool = True
    goal: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """How many times better minigpt2 is (>1 means ahead), whichever direction is better."""
        if self.peer is None or self.minigpt2 is None or self.peer == 0 or self.minigpt2 == 0:
            return None
        return self.minigpt2 / self.peer if self.higher_is_better else self.peer / self.minigpt2

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def print_table(rows: list[Row]) -> None:
    header = f"{'line':<48} {'unit':<10} {'minigpt2':>12} {'peer':>12}  {'ratio':>6}  goal"
    print(header)
    print("-" * len(header))
    for r in rows:
        peer = f"{r.peer:12.4g}" if r.peer is not None else f"{'-':>12}"
        ratio = f"{r.ratio:6.2f}" if r.ratio is not None else f"{'-':>6}"
        ours = f"{r.minigpt2:12.4g}" if r.minigpt2 is not None else f"{'-':>12}"
        print(f"{r.line:<48} {r.unit:<10} {ours} {peer}  {ratio}  {r.goal}")


def write_json(rows: list[Row], path: str | os.PathLike, meta: dict[str, Any] | None = None) -> None:
    """The rows and meta as one JSON file, written atomically (a reader never sees half a file)."""
    from minigpt2.atomic import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta or {}, "rows": [r.to_dict() for r in rows]}
    atomic_write(path, json.dumps(payload, indent=2) + "\n")
