"""How fast each of torch's CPU kernels streams a weight through a one-row product, against a plain read.

    python -m bench.gemv [--config gpt2] [--threads N] [--rounds 5] [--inductor] [--json out.json]

A batch-1 decoding step is a chain of one-row products (GEMVs), one per weight matrix, and each must read its
whole weight: at the memory's speed, the decoder is at its bound (`bench.bound`). This measures, per weight
shape of the model (`config`'s q/k/v stacked, attention output, MLP up and down, the tied LM head), how many
bytes of weights per second each kernel reads, and sets beside it what `torch.amax` reads from the same fp32
tables (a plain streaming read with the same threads: what the kernel could reach at best). The kernels:

| kernel | what runs | weight bytes |
|---|---|---|
| `slabs` | `prepack.SlabLinear`: the fp32 copy's layer (one batched product over a slab per thread) | 4 |
| `oneDNN packed` | `prepack.PackedLinear`: the layer of copies for several rows (bf16, batched sampling) | 4 |
| `F.linear` | the plain model's layer (BLAS on the (out, in) table) | 4 |
| `inductor` | `torch.compile` of `(W * x).sum(-1) + b` (`--inductor`: a few seconds to compile each shape) | 4 |
| `fbgemm fp16` | `prepack.Fp16Linear`: the fp16-weight copy's layer (x86 with AVX2) | 2 |
| `fbgemm int8` | `quant.int8_linear.Int8Linear`: the int8 decoder's layer, activations quantized per call | 1 |

Each shape gets enough distinct copies of its weight to exceed `--cache-mib` (so every call reads from memory, as
a decoding step does), with one random input row; each kernel's output is first checked against the float64
product (the tolerance of its precision), so a kernel is timed only where it computes the layer. Then rounds:
in each, every kernel once over all the copies, and the read, in turn (a busy spell hits all of them); a
kernel's figure is its median round. `fraction` = kernel GB/s / read GB/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from minigpt2.config import PRESETS, GPT2Config
from minigpt2.fast.compiled import separate_inductor_cache
from minigpt2.fast.prepack import Fp16Linear, PackedLinear, SlabLinear, available, fp16_available
from quant.int8_linear import Int8Linear

from .bound import cpu_flags
from .common import set_threads


class KernelMismatch(RuntimeError):
    """A kernel's product differs from the float64 one beyond its precision's tolerance: it is not timed."""


@dataclass(frozen=True)
class Kernel:
    """A way to multiply one row by a weight: `make(linear)` builds the layer once, its result is called on x."""

    name: str
    weight_bytes: int  # per weight value, as the kernel stores it
    make: Callable[[nn.Linear], Callable[[torch.Tensor], torch.Tensor]]
    tolerance: float  # largest |y - y_float64| / max|y_float64| accepted


def _inductor(linear: nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
    w, b = linear.weight.detach(), linear.bias.detach()
    separate_inductor_cache()  # an ISA-capped run must not load another ISA's kernels
    gemv = torch.compile(lambda x, w, b: (w * x).sum(-1) + b, dynamic=False)
    return lambda x: gemv(x, w, b)


def kernels(inductor: bool = False) -> list[Kernel]:
    """The kernels that run on this machine and build (`--inductor` adds the compiled one)."""
    out = [Kernel("slabs", 4, lambda lin: SlabLinear(lin).forward, 1e-5)]
    out += [Kernel("oneDNN packed", 4, lambda lin: PackedLinear(lin).forward, 1e-5)] if available() else []
    out.append(Kernel("F.linear", 4, lambda lin: lambda x: F.linear(x, lin.weight, lin.bias), 1e-5))
    if inductor:
        out.append(Kernel("inductor", 4, _inductor, 1e-5))
    if fp16_available():
        out.append(Kernel("fbgemm fp16", 2, lambda lin: Fp16Linear(lin).forward, 2e-3))
    if "fbgemm" in torch.backends.quantized.supported_engines:
        out.append(Kernel("fbgemm int8", 1, lambda lin: Int8Linear.from_linear(lin).forward, 5e-2))
    return out


def shapes(config: GPT2Config) -> dict[str, tuple[int, int]]:
    """{layer: (out_features, in_features)} of the weights a decoding step multiplies by."""
    C = config.n_embd
    return {"q, k, v stacked": (3 * C, C), "attention output": (C, C), "MLP up": (4 * C, C),
            "MLP down": (C, 4 * C), "LM head": (config.vocab_size, C)}


def relative_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    """max |y - reference| over max |reference| (1.0 for a zero reference that y misses)."""
    scale = reference.abs().max().item()
    err = (y.double() - reference).abs().max().item()
    return err / scale if scale else float(err != 0)


@torch.no_grad()
def measure_shape(out_features: int, in_features: int, kinds: list[Kernel], rounds: int, cache_mib: int,
                  seed: int = 0) -> dict[str, Any]:
    """GB/s of weights for each kernel on `copies` distinct (out, in) layers, and of the plain read of their fp32
    tables; a kernel whose output misses the float64 product by more than its tolerance raises."""
    g = torch.Generator().manual_seed(seed)
    size = out_features * in_features * 4
    copies = max(1, -(-cache_mib * 2 ** 20 // size))
    linears = []
    for _ in range(copies):
        lin = nn.Linear(in_features, out_features)
        lin.weight.copy_(torch.randn(out_features, in_features, generator=g) * 0.02)
        lin.bias.copy_(torch.randn(out_features, generator=g) * 0.02)
        linears.append(lin)
    x = torch.randn(1, in_features, generator=g)
    reference = F.linear(x.double(), linears[0].weight.double(), linears[0].bias.double())
    calls: dict[str, list[Callable[[torch.Tensor], torch.Tensor]]] = {}
    errors: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized-tensor constructors' deprecation notes
        for k in kinds:
            calls[k.name] = [k.make(lin) for lin in linears]
            errors[k.name] = relative_error(calls[k.name][0](x), reference)
            if errors[k.name] > k.tolerance:
                raise KernelMismatch(f"{k.name} on {out_features} x {in_features}: relative error "
                                     f"{errors[k.name]:.2e} > {k.tolerance:.0e}")
    tables = [lin.weight for lin in linears]
    seconds: dict[str, list[float]] = {name: [] for name in [*calls, "read"]}
    for name, fns in calls.items():  # one untimed pass: packing and first-call costs out of the timing
        for fn in fns:
            fn(x)
    for _ in range(rounds):
        for name, fns in calls.items():
            t0 = time.perf_counter()
            for fn in fns:
                fn(x)
            seconds[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for w in tables:
            w.amax()
        seconds["read"].append(time.perf_counter() - t0)
    weight_values = copies * out_features * in_features
    per_value = {k.name: k.weight_bytes for k in kinds} | {"read": 4}
    gbps = {name: per_value[name] * weight_values / statistics.median(s) / 1e9 for name, s in seconds.items()}
    return {"out_features": out_features, "in_features": in_features, "copies": copies, "rounds": rounds,
            "gb_per_s": gbps, "fraction_of_read": {n: v / gbps["read"] for n, v in gbps.items() if n != "read"},
            "relative_error": errors}


def print_table(results: dict[str, dict[str, Any]], names: list[str]) -> None:
    head = f"{'layer':<18} {'out x in':>12} {'read':>6} " + " ".join(f"{n:>16}" for n in names)
    print(head)
    print("-" * len(head))
    for layer, r in results.items():
        cells = " ".join(f"{r['gb_per_s'][n]:6.1f} ({r['fraction_of_read'][n]:.2f})".rjust(16) for n in names)
        print(f"{layer:<18} {r['out_features']:>5} x {r['in_features']:<5} {r['gb_per_s']['read']:6.1f} {cells}")
    print("GB/s of weight bytes as each kernel stores them (fraction of the plain read of the same fp32 tables)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="GB/s each CPU kernel streams weights at in a one-row product, "
                                            "against a plain read of the same tables")
    p.add_argument("--config", default="gpt2", choices=sorted(PRESETS),
                   help="model preset whose weight shapes are measured (default gpt2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per shape; the median is reported")
    p.add_argument("--cache-mib", type=int, default=256, help="copies of each weight to exceed this many MiB")
    p.add_argument("--inductor", action="store_true", help="also time torch.compile's generated product")
    p.add_argument("--json", default=None, help="also write the figures as JSON here")
    args = p.parse_args(argv)
    for flag in ("threads", "rounds", "cache_mib"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    threads = set_threads(args.threads)
    kinds = kernels(args.inductor)
    meta = {"command": " ".join(["python -m bench.gemv", *(sys.argv[1:] if argv is None else argv)]),
            "config": args.config, "threads": threads, "torch": torch.__version__, **cpu_flags(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(f"{args.config}, {threads} thread(s), torch {torch.__version__}, {meta['torch_cpu_capability']}, "
          f"copies past {args.cache_mib} MiB, median of {args.rounds} rounds")
    try:
        results = {layer: measure_shape(o, i, kinds, args.rounds, args.cache_mib)
                   for layer, (o, i) in shapes(GPT2Config.from_name(args.config)).items()}
    except KernelMismatch as e:
        p.exit(1, f"error: {e}; no figures written\n")
    print_table(results, [k.name for k in kinds])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "shapes": results}, f, indent=2)


if __name__ == "__main__":
    main()
