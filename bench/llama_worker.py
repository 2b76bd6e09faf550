"""One side of a llama.cpp line in its own fresh process: load, decode untimed, time greedy decodes, print JSON.

    python -m bench.llama_worker SIDE --folder DIR --prompt 464,3616,286 --new 128 --threads 2 --reps 3

SIDE is one of `SIDES`: minigpt2's fp32 (prepacked), fp16-weight or int8 decoder (each `minigpt2.fast.for_inference`'s
copy, as the application generates with) on the HF checkpoint in DIR/hf, or llama.cpp
(llama-cpp-python) on DIR/model-TYPE.gguf. The last line of stdout is {"side", "seconds": [...], "tokens": [...]}:
each timed decode's wall time (prompt included, as `generate` does it) and the new tokens of the last one; a
llama.cpp side adds "build": its version and the instruction sets it was compiled for (`llama_print_system_info`),
which can differ from the CPU's (a build without AVX-512 on an AVX-512 machine).

Imports are made inside the side that needs them, so a llama.cpp process loads no torch: each runtime keeps a
pool of spinning threads, and two pools in one process would starve each other (bench_llama's reason for
separate processes).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

SIDES = ("minigpt2-fp32", "minigpt2-fp16", "minigpt2-int8", "llama.cpp-f32", "llama.cpp-f16", "llama.cpp-q8_0")
Decoder = Callable[[list[int], int], list[int]]


def minigpt2_decoder(side: str, folder: Path, threads: int) -> Decoder:
    """Greedy decoding with minigpt2: `minigpt2.fast.for_inference`'s copy of the model (fp32 prepacked), of the
    model with fp16 weights, or of the int8 decoder (as bench_quant's)."""
    import torch

    from bench.common import set_threads
    from minigpt2 import fast
    from minigpt2.checkpoint import load_model
    from minigpt2.generation import generate

    set_threads(threads)
    model = load_model(folder / "hf")
    if side == "minigpt2-int8":
        from quant import ptq
        from quant.int8_linear import int8_decoder_config, to_int8_decoder

        decoder = fast.for_inference(to_int8_decoder(ptq(model, int8_decoder_config())), torch.device("cpu"))
    elif side == "minigpt2-fp16":
        decoder = fast.for_inference(model, torch.device("cpu"), torch.float16)
    else:
        decoder = fast.for_inference(model, torch.device("cpu"))
    return lambda prompt, new: generate(decoder, [prompt], new, temperature=0.0, eos_id=None)[0]


def llama_decoder(side: str, folder: Path, threads: int, n_ctx: int) -> Decoder:
    """Greedy decoding with llama.cpp, one token at a time on its KV cache (f32 keys and values, as ours), the
    argmax taken over the last token's logits as `generate` does."""
    import llama_cpp
    import numpy as np

    type_ = side.removeprefix("llama.cpp-")
    llm = llama_cpp.Llama(model_path=str(folder / f"model-{type_}.gguf"), n_ctx=n_ctx, n_batch=n_ctx,
                          n_threads=threads, n_threads_batch=threads, type_k=0, type_v=0, logits_all=False,
                          verbose=False, seed=0)
    vocab = llm.n_vocab()

    def decode(prompt: list[int], new: int) -> list[int]:
        llm.reset()  # the next eval drops every cached position
        llm.eval(prompt)
        out: list[int] = []
        while True:
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))
            out.append(int(logits.argmax()))
            if len(out) == new:
                return out
            llm.eval(out[-1:])

    return decode


def llama_build() -> dict[str, str]:
    """The llama.cpp this process loads: llama-cpp-python's version and the instruction sets of its CPU backend."""
    import llama_cpp

    return {"version": llama_cpp.__version__, "system_info": llama_cpp.llama_print_system_info().decode().strip()}


def measure(side: str, folder: Path, prompt: list[int], new: int, threads: int, reps: int, warmup: int
            ) -> dict:
    """`warmup` untimed decodes, then `reps` timed ones, of `new` tokens after `prompt`."""
    if side not in SIDES:
        raise ValueError(f"llama_worker: side must be one of {', '.join(SIDES)}, got {side!r}")
    if side.startswith("minigpt2"):
        decode = minigpt2_decoder(side, folder, threads)
    else:
        decode = llama_decoder(side, folder, threads, len(prompt) + new)
    for _ in range(warmup):
        decode(prompt, new)
    seconds, tokens = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        tokens = decode(prompt, new)
        seconds.append(time.perf_counter() - t0)
    result = {"side": side, "seconds": seconds, "tokens": tokens}
    return result if side.startswith("minigpt2") else {**result, "build": llama_build()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="internal: one side of bench_llama's lines, in its own process")
    p.add_argument("side", choices=SIDES)
    p.add_argument("--folder", required=True, help="holds hf/ (the checkpoint) and model-TYPE.gguf")
    p.add_argument("--prompt", required=True, help="token ids, comma-separated")
    p.add_argument("--new", type=int, required=True, help="new tokens per decode")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--reps", type=int, default=3, help="timed decodes")
    p.add_argument("--warmup", type=int, default=1, help="untimed decodes first")
    a = p.parse_args(argv)
    prompt = [int(x) for x in a.prompt.split(",")]
    print(json.dumps(measure(a.side, Path(a.folder), prompt, a.new, a.threads, a.reps, a.warmup)))


if __name__ == "__main__":
    main()
