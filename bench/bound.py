"""The memory-bandwidth bound of batch-1 decoding: bytes read per token, the machine's read bandwidth, the CPU.

A batch-1 decoding step reads every weight once (the LM head included) and the KV cache of every earlier
position, and does about two FLOPs per weight read: it is bound by how fast memory streams, not by arithmetic.
So the fastest a model can decode on a machine is `read bandwidth / bytes per token` tokens/s, and the fraction of
that a decoder reaches says how much is left to gain, on any CPU. Bytes are counted for what each of the bench's
decoders really reads per token (see `PRECISIONS`); the bandwidth is measured in the same run, by `ReadBandwidth`.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from minigpt2.config import GPT2Config


@dataclass(frozen=True)
class Storage:
    """How one decoder stores what a token reads, in bytes: each weight-matrix value (`matrix`), each
    output row's extras besides its values (`row`), each bias / LayerNorm value (`vector`), each value of the
    token- and position-embedding rows looked up (`wte_row`, `wpe_row`) and each cached key or value (`kv`)."""

    matrix: float
    row: int
    vector: int
    wte_row: float
    wpe_row: int
    kv: int


# fp32: minigpt2's oneDNN-prepacked fp32 copy, fp32 KV cache.
# bf16: the bf16 prepacked copy (weights, biases, LayerNorm and embeddings all bf16), its KV cache fp32 on CPU.
# fp16: the fp16-weight copy (`prepacked(model, torch.float16)`): fbgemm's fp16 matrices, the head an fp16 copy
#   of the table; biases, LayerNorms, embedding tables and the KV cache fp32.
# int8: `quant.int8_linear.to_int8_decoder`: fbgemm's packed int8 weights and, per output row, an fp32 scale, an
#   int32 zero point and an int32 column sum (for the activations' zero point), fp32 biases; fp32 LayerNorm and
#   embedding tables, an int8 copy of the table as the LM head; fp32 KV cache.
# gguf-*: llama.cpp on a `quant.gguf` file of that type (1-D tensors and the position table f32; q8_0 keeps one
#   fp16 scale per 32 values: 34 bytes per 32), with an f32 KV cache as bench_llama asks for.
PRECISIONS: dict[str, Storage] = {
    "fp32": Storage(matrix=4, row=0, vector=4, wte_row=4, wpe_row=4, kv=4),
    "bf16": Storage(matrix=2, row=0, vector=2, wte_row=2, wpe_row=2, kv=4),
    "fp16": Storage(matrix=2, row=0, vector=4, wte_row=4, wpe_row=4, kv=4),
    "int8": Storage(matrix=1, row=12, vector=4, wte_row=4, wpe_row=4, kv=4),
    "gguf-f32": Storage(matrix=4, row=0, vector=4, wte_row=4, wpe_row=4, kv=4),
    "gguf-f16": Storage(matrix=2, row=0, vector=4, wte_row=2, wpe_row=4, kv=4),
    "gguf-q8_0": Storage(matrix=34 / 32, row=0, vector=4, wte_row=34 / 32, wpe_row=4, kv=4),
}


def weight_bytes(config: GPT2Config, precision: str) -> float:
    """Bytes of weights one decoding step reads: every block's matrices (q, k, v, attention output, MLP up and
    down: 12 C^2 values over 9 C output rows), their 9 C biases, the two LayerNorms' 4 C parameters, the final
    LayerNorm, the whole tied LM head (V rows of C) and the one looked-up row of each embedding table."""
    s = PRECISIONS[precision]
    C, L, V = config.n_embd, config.n_layer, config.vocab_size
    block = 12 * C * C * s.matrix + 9 * C * s.row + (9 * C + 4 * C) * s.vector
    head = V * C * s.matrix + V * s.row
    return L * block + 2 * C * s.vector + head + C * (s.wte_row + s.wpe_row)


def kv_positions(prompt: int, new: int) -> float:
    """Positions whose keys and values a token's step reads, on average over a greedy decode of `new` tokens
    after `prompt`: the prompt's forward (up to `prompt` positions) gives the first token, then the steps of the
    others read prompt + 1, ..., prompt + new - 1; the mean of these `new` counts is prompt + (new - 1) / 2."""
    return prompt + (new - 1) / 2


def kv_bytes(config: GPT2Config, precision: str, positions: float) -> float:
    """Bytes of keys and values a step reads with `positions` cached: 2 x layers x positions x C values."""
    return 2 * config.n_layer * positions * config.n_embd * PRECISIONS[precision].kv


def decode_bytes_per_token(config: GPT2Config, precision: str, prompt: int, new: int) -> float:
    """Bytes one batch-1 decoding step reads: the weights and the KV cache at the decode's average position."""
    return weight_bytes(config, precision) + kv_bytes(config, precision, kv_positions(prompt, new))


class ReadBandwidth:
    """The machine's read bandwidth: `torch.amax` over an fp32 array of `mib` MiB (far beyond any cache), timed on
    every call, with torch's current threads. Call it in the same turns as the decoders (`compare_time`), so
    that a busy spell hits both. `bytes_per_s` is the best read: what the memory can stream. `median_bytes_per_s`
    is the median read, the counterpart of a decoder's median time: on a host whose memory speed moves within
    a minute, one fast read lifts the best well above what the decoders' turns saw."""

    def __init__(self, mib: int = 512) -> None:
        self.buf = torch.ones(mib * 2 ** 20 // 4)  # written once: its pages are resident before any timing
        self.seconds: list[float] = []

    def __call__(self) -> None:
        t0 = time.perf_counter()
        self.buf.amax()
        self.seconds.append(time.perf_counter() - t0)

    @property
    def bytes_per_s(self) -> float:
        return self._rate(min)

    @property
    def median_bytes_per_s(self) -> float:
        return self._rate(statistics.median)

    def _rate(self, pick: Callable[[list[float]], float]) -> float:
        """Bytes per second of the read whose time `pick` chooses among the reads timed."""
        if not self.seconds:
            raise RuntimeError("ReadBandwidth: no read timed yet")
        return self.buf.nbytes / pick(self.seconds)

    def info(self) -> dict[str, Any]:
        return {"read_bytes_per_s": self.bytes_per_s, "median_read_bytes_per_s": self.median_bytes_per_s,
                "read_seconds": list(self.seconds), "array_mib": self.buf.nbytes / 2 ** 20,
                "reads": len(self.seconds), "threads": torch.get_num_threads()}


def bound(config: GPT2Config, precision: str, prompt: int, new: int, tokens_per_s: float,
          bandwidth: float, median_bandwidth: float | None = None) -> dict[str, Any]:
    """A decode line's bound, for its JSON extras: bytes per token, the bound in tokens/s at `bandwidth`
    (bytes/s: the best read), and the fraction of it that `tokens_per_s` reaches; with `median_bandwidth` (the
    median read) also the fraction of the bound at that bandwidth (`fraction_of_median_read`)."""
    per_token = decode_bytes_per_token(config, precision, prompt, new)
    limit = bandwidth / per_token
    out = {"precision": precision, "bytes_per_token": per_token, "read_bytes_per_s": bandwidth,
           "bound_tokens_per_s": limit, "tokens_per_s": tokens_per_s, "fraction": tokens_per_s / limit}
    if median_bandwidth is not None:
        out.update(median_read_bytes_per_s=median_bandwidth,
                   fraction_of_median_read=tokens_per_s * per_token / median_bandwidth)
    return out


def print_bounds(rows: list) -> None:
    """The bound of every row that carries one (`extra["bound"]`, and `extra["peer_bound"]` for its peer)."""
    lines = [(r.line.strip(), side, r.extra[key]) for r in rows
             for key, side in (("bound", "minigpt2"), ("peer_bound", r.peer_name or "peer")) if key in r.extra]
    if not lines:
        return
    print("\nbandwidth bound of batch-1 decoding (the best read of memory in the same run / bytes read per token; "
          "'of median': the fraction at the median read)")
    header = f"{'line':<48} {'side':<20} {'precision':<10} {'MB/token':>9} {'GB/s':>6} {'bound':>8} " \
             f"{'tokens/s':>9} {'fraction':>8} {'of median':>9}"
    print(header)
    print("-" * len(header))
    for line, side, b in lines:
        of_median = f"{b['fraction_of_median_read']:9.2f}" if "fraction_of_median_read" in b else f"{'-':>9}"
        print(f"{line[:48]:<48} {side[:20]:<20} {b['precision']:<10} {b['bytes_per_token'] / 1e6:9.2f} "
              f"{b['read_bytes_per_s'] / 1e9:6.1f} {b['bound_tokens_per_s']:8.1f} {b['tokens_per_s']:9.1f} "
              f"{b['fraction']:8.2f} {of_median}")


# The vector extensions that decide which kernels run (x86 flags, Arm Features), for telling machines apart.
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",
                "asimd", "asimddp", "sve", "sve2", "bf16", "i8mm")


# Environment variables that cap the instruction set torch's kernels, oneDNN, MKL and fbgemm (the int8 and fp16
# products) use: set, they make this CPU behave as an older one (e.g. AVX2 only on an AVX-512 machine), and a run
# must say so.
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
              "MKL_DEBUG_CPU_TYPE", "FBGEMM_ENABLE_INSTRUCTIONS")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """The CPU's vector extensions: those of `VECTOR_FLAGS` in /proc/cpuinfo (empty where it is missing),
    torch's own reading (`torch.backends.cpu.get_cpu_capability()`, e.g. "AVX512") and the `ISA_LIMITS`
    variables set in the environment (`isa_limits`, empty when none is)."""
    present: set[str] = set()
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                present |= set(value.split())
                break
    except OSError:
        pass
    return {"vector_extensions": [f for f in VECTOR_FLAGS if f in present],
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "isa_limits": {name: os.environ[name] for name in ISA_LIMITS if name in os.environ}}
