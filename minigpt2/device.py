"""Mixed precision in one place: the dtype autocast uses on a device, and the context that applies it.

    --autocast off    fp32 everywhere
    --autocast bf16   bf16 autocast on CUDA devices with bf16 support and on CPUs with native bf16 instructions
                      (x86 AVX512-BF16 or AMX, Arm's BF16 extension); an error elsewhere, where bf16 would be
                      emulated slowly
    --autocast auto   bf16 on CUDA with bf16 support; fp32 on CPU (the measured reason: docs/finetuning.md)

Weights, their gradients and the AdamW moments stay fp32 (the master copy): autocast only changes the dtype in
which matmuls run. `minigpt2.fast.chunked_loss.chunked_lm_loss` reads the autocast state itself and keeps its
softmax statistics and sums in fp32. A run's mode becomes a dtype here, once per command (`finetune`, `evaluate`:
`app.settings.RunSettings.predict_settings`; the smoke and bench commands); the training loop and the tasks'
evaluation take that dtype and apply it with `autocast`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from .errors import FieldError

AUTOCAST_MODES = ("auto", "bf16", "off")
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 /proc/cpuinfo "flags", Arm "Features"
# oneDNN instruction-set caps (ONEDNN_MAX_CPU_ISA) below its bf16 kernels: set, e.g. to AVX2 to make an AVX-512
# machine behave as an older one, oneDNN converts bf16 in software as on a CPU without the flags.
ONEDNN_CAPS_WITHOUT_BF16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"})


class AutocastUnavailable(FieldError):
    """The autocast mode bf16 on a device without native bf16 (or an unknown mode), naming the setting."""


def cpu_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True when the CPU has bf16 instructions (AVX512-BF16, AMX-BF16, or Arm BF16), read from /proc/cpuinfo.

    torch's own check (`torch.ops.mkldnn._is_mkldnn_bf16_supported`) also says yes on plain AVX-512, where
    oneDNN converts bf16 in software and a bf16 matmul is no faster than fp32; hence the flags. Without
    /proc/cpuinfo (macOS, Windows) the answer is no: bf16 can then be had only on CUDA. Nor with oneDNN capped
    below its bf16 kernels (`ONEDNN_CAPS_WITHOUT_BF16`, e.g. `ONEDNN_MAX_CPU_ISA=AVX2`).
    """
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    if cap.strip().upper() in ONEDNN_CAPS_WITHOUT_BF16:
        return False
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features") and CPU_BF16_FLAGS & set(value.split()):
            return True
    return False


def cuda_bf16() -> bool:
    """True when a CUDA device is present and runs bf16 natively (compute capability 8.0+, Ampere on).

    Older GPUs emulate bf16 (torch's default check counts that as support); they are treated like a CPU without
    bf16: fp32 under `auto`, an error under `bf16`.
    """
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def autocast_dtype(mode: str, device: torch.device | str) -> torch.dtype | None:
    """The dtype autocast runs in for `--autocast mode` on `device`, or None for fp32.

    Raises AutocastUnavailable for `bf16` where the device has no native bf16, naming the setting and the way out.
    """
    device = torch.device(device)
    if mode not in AUTOCAST_MODES:
        raise AutocastUnavailable("autocast", repr(mode), f"one of {', '.join(AUTOCAST_MODES)}")
    if mode == "off":
        return None
    if device.type == "cuda":
        native, what = cuda_bf16(), "this CUDA device has no bf16 support"
    elif device.type == "cpu":
        native, what = cpu_native_bf16(), "this CPU has no native bf16 (no avx512_bf16/amx_bf16/bf16 flag in " \
                                          "/proc/cpuinfo, or ONEDNN_MAX_CPU_ISA caps it below AVX512_CORE_BF16), " \
                                          "so bf16 would be emulated and slower than fp32"
    else:
        native, what = False, f"bf16 autocast is not supported here on {device.type}"
    if mode == "bf16":
        if not native:
            raise AutocastUnavailable("autocast", "bf16", f"a device that runs bf16 natively: {what}; use off")
        return torch.bfloat16
    # auto: bf16 where it is the device's normal training dtype (CUDA); fp32 on CPU, see the module docstring
    return torch.bfloat16 if device.type == "cuda" and native else None


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """The autocast context for `dtype` from `autocast_dtype` (None: a disabled one, i.e. fp32)."""
    device = torch.device(device)
    return torch.autocast(device_type=device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def autocast_for(mode: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """`autocast(device, autocast_dtype(mode, device))`: the context for an `--autocast` mode."""
    return autocast(device, autocast_dtype(mode, device))


def fused_adamw(device: torch.device | str) -> bool:
    """Use AdamW's fused kernel: on CUDA, where it is one kernel instead of several per parameter."""
    return torch.device(device).type == "cuda"


def distributed_backend(device: torch.device | str) -> str:
    """The process-group backend for a device: NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def parse_device(name: str) -> torch.device:
    """The device a `device` setting names: "auto" (the first CUDA device when there is one, else the CPU), "cpu",
    "cuda" or "cuda:N"; refused when this machine does not have it, before anything is loaded."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    expected = "auto, cpu, cuda or cuda:N"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise FieldError("device", name, expected) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FieldError("device", name, "a device this machine has: it has no CUDA device (use cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise FieldError("device", name, f"one of the {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type != "cpu":
        raise FieldError("device", name, expected)
    return dev


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """`n` torch intra-op threads inside (None: the count as it is), the caller's count again after, an error
    included. A command's --threads is its run's, not its caller's: a sweep running runs in-process, a notebook
    or a test suite calling `run` keeps its own count (left set, it made later work in that process run on it)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_count() -> int:
    """CPU cores this process may use (its affinity mask, which a container or `taskset` narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
