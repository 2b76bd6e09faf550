"""Quantization benchmark: int8 vs fp32 greedy decoding of GPT-2 124M on CPU, the int8 kernels, checkpoint sizes.

    python -m bench.bench_quant [--quick] [--threads N]

Decoding: batch 1, a 16-token prompt, 128 new tokens (32 with --quick), random 124M weights, greedy; the models are
timed in turns so that a busy machine slows all alike. The goal row compares int8 with minigpt2's fastest fp32
decoding (`minigpt2.fast.for_inference`, oneDNN-prepacked weights); the next row with the fp32 model as loaded. The int8 model
is `to_int8_decoder` of the int8 fake-quant model that QAFT trains (`int8_decoder_config()`: int8 weights,
per-token activations, int8 tied head), in `minigpt2.fast.for_inference`'s copy as the application runs it. The read bandwidth is timed in the same turns, for the int8 line's
bound and its fp32 peer's (`bench.bound`: bytes read per token over the bandwidth, and the fraction reached).
"""

from __future__ import annotations

import argparse
import warnings

import torch
import torch.nn.functional as F

from bench.bound import ReadBandwidth, bound, print_bounds
from bench.common import Row, compare_time, print_table, set_threads
from minigpt2.config import GPT2Config
from minigpt2 import fast as speed
from minigpt2.generation import generate
from minigpt2.model import GPT2
from quant import ptq
from quant.formats import quantize
from quant.int8_linear import Int8Linear, int8_decoder_config, to_int8_decoder
from quant.report import reports


def decode_rows(quick: bool, config: str = "gpt2", prompt_len: int = 16, new: int | None = None,
                stream_mib: int = 512) -> list[Row]:
    """int8 against fp32 greedy decoding of a random `config` model, batch 1, with the read bandwidth timed in
    the same turns for the int8 line's bound (and its fp32 peer's)."""
    torch.manual_seed(0)
    model = GPT2(GPT2Config.from_name(config, dropout=0.0)).eval()
    # as the application generates with it: `for_inference`'s copy (the one-token step)
    int8 = speed.for_inference(to_int8_decoder(ptq(model, int8_decoder_config())), torch.device("cpu"))
    new = new or (32 if quick else 128)
    prompt = [torch.randint(0, model.config.vocab_size, (prompt_len,)).tolist()]
    outs = {}

    def run(name, m):
        return lambda: outs.__setitem__(name, generate(m, prompt, new, eos_id=None)[0])

    fast = speed.for_inference(model, torch.device("cpu"))  # minigpt2's fastest fp32 decoding: oneDNN-prepacked
    read = ReadBandwidth(stream_mib)
    t = compare_time({"fp32": run("fp32", model), "fp32 prepacked": run("fp32 prepacked", fast),
                      "int8": run("int8", int8), "read": read}, warmup=1, iters=3 if quick else 5)
    same = sum(a == b for a, b in zip(outs["fp32"], outs["int8"])) / new
    fastest = "fp32 prepacked" if fast.h[0].mlp.c_fc is not model.h[0].mlp.c_fc else "fp32"
    bounds = {"bound": bound(model.config, "int8", prompt_len, new, new / t["int8"], read.bytes_per_s,
                             read.median_bytes_per_s),
              "peer_bound": bound(model.config, "fp32", prompt_len, new, new / t[fastest], read.bytes_per_s,
                                  read.median_bytes_per_s),
              "bandwidth": read.info()}
    size = "124M" if config == "gpt2" else config
    return [Row(f"greedy decode {size} b=1, {new} tokens: int8", "tokens/s", new / t["int8"],
                f"minigpt2 {fastest}", new / t[fastest], True, ">= 2.5x",
                {"greedy_tokens_equal_to_fp32": same, **bounds}),
            Row("  same, against fp32 as loaded (not prepacked)", "tokens/s", new / t["int8"], "minigpt2 fp32",
                new / t["fp32"], True, "(context)")]


def kernel_rows(quick: bool) -> list[Row]:
    """One token through a 768x768 layer and the 50257x768 LM head: fp32 vs the int8 paths PyTorch ships."""
    rows = []
    for name, (n, k) in {"768x768 GEMV": (768, 768), "LM head 50257x768": (50257, 768)}.items():
        torch.manual_seed(0)
        w, x = torch.randn(n, k) * 0.02, torch.randn(1, k)
        q, scale = quantize(w, "int8")
        dyn = Int8Linear(q, scale, None)
        xb, sb = x.bfloat16(), scale.reshape(-1).bfloat16()
        fns = {
            "fp32": lambda: F.linear(x, w),
            "fbgemm dynamic int8": lambda: dyn(x),
            "weight-only int8 (bf16 act)": lambda: torch._weight_int8pack_mm(xb, q, sb),
            "weight-only int8 (fp32 act)": lambda: torch._weight_int8pack_mm(x, q, scale.reshape(-1)),
        }
        t = compare_time({k_: (lambda f=f: [f() for _ in range(10)]) for k_, f in fns.items()}, warmup=1,
                         iters=3 if quick else 9)
        for kind in list(fns)[1:]:
            rows.append(Row(f"{name}: {kind}", "us", t[kind] / 10 * 1e6, "fp32 F.linear", t["fp32"] / 10 * 1e6,
                            False, "fastest int8 path" if kind.startswith("fbgemm") else ""))
    return rows


def size_rows() -> list[Row]:
    table = reports(GPT2Config.from_name("gpt2"))
    fp32 = next(r for r in table if r.precision == "fp32").file_bytes / 1e6
    return [Row(f"packed checkpoint 124M: {r.precision}", "MB", r.file_bytes / 1e6, "fp32", fp32, False,
                "", {"quantised": r.quantized, "parts_bytes": r.parts}) for r in table]


def run(quick: bool, device: str, threads: int) -> list[Row]:
    """The benchmark rows, with `threads` for both sides. The int8 kernels are CPU ones, so this runs on the CPU
    whatever `device` says. On a machine whose cores other jobs hold, pass 1 thread: OpenMP barriers between
    threads then stall fbgemm's int8 kernels (a small GEMV becomes many times slower, and fp32 decoding is slower
    with 2 threads than with 1)."""
    set_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return decode_rows(quick) + kernel_rows(quick) + size_rows()


def main() -> None:
    ap = argparse.ArgumentParser(description="int8 vs fp32 decoding, int8 kernels, packed checkpoint sizes")
    ap.add_argument("--quick", action="store_true", help="32 new tokens and fewer timing rounds")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads for both sides (0, the default: all cores). Use 1 on a loaded machine: "
                         "more than one stalls fbgemm's OpenMP barriers when other processes hold the cores")
    args = ap.parse_args()
    rows = run(args.quick, "cpu", set_threads(args.threads or None))
    print_table(rows)
    print_bounds(rows)
    print(f"greedy tokens equal to fp32: {rows[0].extra['greedy_tokens_equal_to_fp32']:.0%}")


if __name__ == "__main__":
    main()
