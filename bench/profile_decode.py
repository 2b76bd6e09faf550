"""Where a batch-1 decoding step spends its time: torch.profiler (CPU) over fp32 and int8 decoding steps.

    python -m bench.profile_decode [--config gpt2] [--threads N] [--tokens 1] [--json out.json]

Random `config` weights (bench_quant's: seed 0), a 16-token prompt in the KV cache and a few untimed steps, then
`--tokens` steps profiled, as `generate` runs them (forward of one token on the cache, the LM head, the argmax),
for minigpt2's fp32 decoder (`minigpt2.fast.for_inference`: oneDNN-prepacked) and its int8 one
(`quant.int8_linear.to_int8_decoder`). The summary: the ops by self CPU time, and the share of op time in the
weight products (matmul/linear) against everything else; the weights' bytes per token (`bench.bound`) over the
time in the products says how fast the products stream them, to set beside the read bandwidth of
`bench.bound.ReadBandwidth`, measured here too.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from typing import Any

import torch

from minigpt2 import fast as speed
from minigpt2.config import GPT2Config
from minigpt2.fast.prepack import fp16_available
from minigpt2.model import GPT2, KVCache
from quant import ptq
from quant.int8_linear import int8_decoder_config, to_int8_decoder

from .bound import ReadBandwidth, cpu_flags, weight_bytes
from .common import set_threads

# The kernels that multiply by a weight matrix, by their profiler names (the fp32 copy's batched product over
# slabs, oneDNN's packed one, fbgemm's int8 and fp16, plain F.linear's BLAS call); attention's products over the KV
# cache (inside SDPA) are not among them.
MATMUL_OPS = frozenset({"aten::baddbmm", "aten::bmm", "mkldnn::_linear_pointwise", "mkldnn::_linear_pointwise.binary",
                        "quantized::linear_dynamic", "quantized::linear_dynamic_fp16", "aten::linear", "aten::addmm",
                        "aten::mm", "aten::matmul", "aten::_weight_int8pack_mm"})


def summarize(ops: list[tuple[str, float, int]], tokens: int, wall_s: float, weights: float, top: int = 8
              ) -> dict[str, Any]:
    """The summary of a profile: `ops` as (name, self CPU microseconds, calls) over `tokens` steps that took
    `wall_s` seconds; `weights` the bytes of weights a step reads. Times are per token, in ms."""
    total = sum(us for _, us, _ in ops)
    matmul = sum(us for name, us, _ in ops if name in MATMUL_OPS)
    ranked = sorted(ops, key=lambda op: -op[1])[:top]
    return {
        "tokens": tokens,
        "wall_ms": wall_s * 1e3 / tokens,
        "ops_ms": total / 1e3 / tokens,
        "matmul_ms": matmul / 1e3 / tokens,
        "other_ms": (total - matmul) / 1e3 / tokens,
        "matmul_share": matmul / total,
        "weights_bytes": weights,
        "matmul_bytes_per_s": weights / (matmul / 1e6 / tokens) if matmul else None,
        "top": [{"op": name, "calls_per_token": calls / tokens, "ms": us / 1e3 / tokens, "share": us / total}
                for name, us, calls in ranked],
    }


def decoders(config: str) -> dict[str, tuple[GPT2, str]]:
    """{name: (decoder, precision for `bench.bound`)}: minigpt2's fp32 and int8 decoders of one random model, and
    its fp16-weight one where fbgemm's fp16 linear runs; each `minigpt2.fast.for_inference`'s copy."""
    torch.manual_seed(0)
    model = GPT2(GPT2Config.from_name(config, dropout=0.0)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        int8 = speed.for_inference(to_int8_decoder(ptq(model, int8_decoder_config())), torch.device("cpu"))
    out = {"fp32 (slabs)": (speed.for_inference(model, torch.device("cpu")), "fp32"),
           "int8 (fbgemm)": (int8, "int8")}
    if fp16_available():
        out["fp16 weights (fbgemm)"] = (speed.for_inference(model, torch.device("cpu"), torch.float16), "fp16")
    return out


@torch.no_grad()
def profile(model: GPT2, precision: str, tokens: int = 1, prompt: int = 16, warmup: int = 3, top: int = 8
            ) -> dict[str, Any]:
    """Profile `tokens` greedy steps of `model` after a `prompt`-token prefill and `warmup` untimed steps."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    ids = torch.randint(0, model.config.vocab_size, (1, prompt), generator=torch.Generator().manual_seed(4))
    dtype = getattr(model, "kv_cache_dtype", model.wte.weight.dtype)
    cache = KVCache(model.config, 1, prompt + warmup + tokens + 1, dtype=dtype)
    hidden = model(ids, cache=cache)

    def step() -> None:
        nonlocal hidden
        token = model.lm_head(hidden[:, -1]).argmax(dim=-1)
        hidden = model(token[:, None], cache=cache)

    for _ in range(warmup):
        step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(tokens):
            step()
        wall = time.perf_counter() - t0
    ops = [(e.key, e.self_cpu_time_total, e.count) for e in prof.key_averages()]
    return summarize(ops, tokens, wall, weight_bytes(model.config, precision), top)


def print_summary(name: str, s: dict[str, Any]) -> None:
    print(f"{name}: {s['tokens']} token(s); wall {s['wall_ms']:.1f} ms/token (profiler on), in torch ops "
          f"{s['ops_ms']:.1f} ms")
    print(f"  matmul/linear {s['matmul_ms']:.1f} ms ({s['matmul_share']:.1%} of op time), everything else "
          f"{s['other_ms']:.1f} ms")
    if s["matmul_bytes_per_s"]:
        print(f"  weights {s['weights_bytes'] / 1e6:.1f} MB/token over the time in the products: "
              f"{s['matmul_bytes_per_s'] / 1e9:.1f} GB/s")
    for op in s["top"]:
        print(f"    {op['op']:<50} {op['calls_per_token']:6.1f} calls {op['ms']:8.3f} ms {op['share']:6.1%}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="profile batch-1 decoding steps of minigpt2's fp32 and int8 decoders")
    p.add_argument("--config", default="gpt2", help="model preset (default gpt2, 124M; tiny for a quick check)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--tokens", type=int, default=1, help="decoding steps profiled (default 1)")
    p.add_argument("--top", type=int, default=8, help="ops listed per decoder")
    p.add_argument("--stream-mib", type=int, default=512, help="MiB read to time the read bandwidth")
    p.add_argument("--json", default=None, help="also write the summaries as JSON here")
    args = p.parse_args(argv)
    threads = set_threads(args.threads)
    read = ReadBandwidth(args.stream_mib)
    for _ in range(5):
        read()
    out: dict[str, Any] = {"config": args.config, "threads": threads, **cpu_flags(), "bandwidth": read.info()}
    print(f"{args.config}, {threads} thread(s), torch {torch.__version__}, {out['torch_cpu_capability']}; "
          f"read bandwidth {read.bytes_per_s / 1e9:.1f} GB/s (best of 5 reads of {args.stream_mib} MiB)")
    for name, (model, precision) in decoders(args.config).items():
        out[name] = profile(model, precision, args.tokens, top=args.top)
        print_summary(name, out[name])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
