"""llama.cpp as the peer of batch-1 greedy decoding: the same weights, threads, prompt and number of new tokens.

    python -m bench.bench_llama [--quick] [--threads N] [--json out.json]

The bench's checkpoint (random 124M weights saved by transformers, as bench_core makes them) is loaded by minigpt2
and exported with `quant.gguf` as f32, f16 and q8_0 files, which llama.cpp (llama-cpp-python, the `peers` extra)
runs. The lines, each a ratio of tokens/s, ours over llama.cpp's:

- minigpt2 fp32 (the oneDNN-prepacked copy) against llama.cpp f32; their greedy tokens are compared too;
- minigpt2 int8 (`to_int8_decoder`: per-row int8 weights, activations quantized per token) against llama.cpp
  q8_0 (one fp16 scale per 32 weights, activations quantized to q8_0 blocks): two 8-bit formats, not one;
- minigpt2 fp16 (`for_inference(model, cpu, torch.float16)`: fp16 weights on fbgemm, fp32 activations, norms and
  KV cache) against llama.cpp f16; where fbgemm's fp16 linear is missing, llama.cpp f16 alone.

Each side runs in its own fresh process (`bench.llama_worker`): both runtimes keep their threads spinning after
work, and two pools in one process starve each other. The processes alternate (ours, llama.cpp, ours, ...) for
`rounds` rounds; each decodes once untimed, then `reps` times timed, and a side's figure is new tokens over the
median of all its timed decodes. The read bandwidth for the bound (`bench.bound`) is timed here, after each
round, while no worker runs. Without llama-cpp-python the module is skipped, saying so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minigpt2.checkpoint import load_model
from minigpt2.config import GPT2Config
from quant.gguf import export_gguf

from .bench_core import make_checkpoint, random_ids
from .bound import ReadBandwidth, bound, print_bounds
from .common import ModuleSkipped, Row, print_table, set_threads, write_json

# (our side, llama.cpp's side, the precision of each for the bound); None: no minigpt2 side to pair.
PAIRS: list[tuple[str | None, str, str | None, str]] = [
    ("minigpt2-fp32", "llama.cpp-f32", "fp32", "gguf-f32"),
    ("minigpt2-int8", "llama.cpp-q8_0", "int8", "gguf-q8_0"),
    ("minigpt2-fp16", "llama.cpp-f16", "fp16", "gguf-f16"),
]


def pairs() -> list[tuple[str | None, str, str | None, str]]:
    """`PAIRS` as this machine runs them: llama.cpp f16 alone where minigpt2's fp16 weights (fbgemm) cannot run."""
    from minigpt2.fast.prepack import fp16_available

    return [(None, peer, None, pp) if ours == "minigpt2-fp16" and not fp16_available() else (ours, peer, op, pp)
            for ours, peer, op, pp in PAIRS]


@dataclass(frozen=True)
class Sizes:
    config: str = "gpt2"
    prompt: int = 16  # bench_core's greedy-decode prompt (the same ids: seed 4)
    new: int = 128
    rounds: int = 3  # fresh processes per side, alternating
    reps: int = 3  # timed decodes per process
    warmup: int = 1
    stream_mib: int = 512


FULL = Sizes()
QUICK = Sizes(new=32, rounds=2, reps=2)
TINY = Sizes(config="tiny", prompt=4, new=8, rounds=1, reps=1, stream_mib=4)


def llama_unavailable() -> str | None:
    """Why llama.cpp lines cannot run here, or None."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as e:
        return f"llama-cpp-python is not importable ({e}); pip install 'minigpt2[peers]' for the llama.cpp lines"
    return None


def export_files(folder: Path, config: str) -> GPT2Config:
    """The bench checkpoint in folder/hf and its GGUF files folder/model-{f32,f16,q8_0}.gguf; returns its config."""
    make_checkpoint(config, folder / "hf")
    model = load_model(folder / "hf")
    for type_ in ("f32", "f16", "q8_0"):
        export_gguf(model, folder / f"model-{type_}.gguf", type_, name=f"minigpt2-bench-{config}")
    return model.config


def worker(side: str, folder: Path, prompt: list[int], s: Sizes, threads: int) -> dict[str, Any]:
    """One side's timed decodes, in a fresh process."""
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "bench.llama_worker", side, "--folder", str(folder), "--prompt",
           ",".join(map(str, prompt)), "--new", str(s.new), "--threads", str(threads), "--reps", str(s.reps),
           "--warmup", str(s.warmup)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
    if out.returncode != 0:
        raise RuntimeError(f"llama worker ({side}) failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first position where two token lists differ (a shorter one differs where it ends), or None."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def measure(s: Sizes, threads: int) -> list[Row]:
    """The llama.cpp lines at sizes `s` (the tests use `TINY`), `threads` on both sides."""
    why = llama_unavailable()
    if why:
        raise ModuleSkipped(why)
    set_threads(threads)
    read = ReadBandwidth(s.stream_mib)
    sides = [x for ours, peer, _, _ in pairs() for x in (ours, peer) if x]
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = export_files(folder, s.config)
        prompt = random_ids(1, s.prompt, config.vocab_size, "cpu", seed=4)[0].tolist()
        for _ in range(s.rounds):
            for side in sides:
                runs[side].append(worker(side, folder, prompt, s, threads))
            for _ in range(3):
                read()
    return rows_of(runs, config, s, read)


def rows_of(runs: dict[str, list[dict[str, Any]]], config: GPT2Config, s: Sizes, read: ReadBandwidth
            ) -> list[Row]:
    """One row per pair: tokens/s of each side (new tokens over the median timed decode), bounds, tokens, and the
    llama.cpp build that ran (its version and compiled instruction sets)."""
    def speed(side: str) -> float:
        return s.new / statistics.median(t for r in runs[side] for t in r["seconds"])

    rows = []
    for ours, peer, ours_precision, peer_precision in pairs():
        theirs = speed(peer)
        extra: dict[str, Any] = {
            "peer_bound": bound(config, peer_precision, s.prompt, s.new, theirs, read.bytes_per_s,
                                read.median_bytes_per_s),
            "bandwidth": read.info(), "processes_per_side": s.rounds, "timed_decodes_per_process": s.reps,
            "seconds": {side: [r["seconds"] for r in runs[side]] for side in (ours, peer) if side},
            "llama_cpp": runs[peer][-1]["build"]}
        name = peer.removeprefix("llama.cpp-")
        if ours is None:
            rows.append(Row(f"greedy b=1, {s.new} tokens, llama.cpp {name} alone", "tokens/s", None,
                            f"llama.cpp {name}", theirs, goal="(no fbgemm fp16 here)", extra=extra))
            continue
        mine = speed(ours)
        a, b = runs[ours][-1]["tokens"], runs[peer][-1]["tokens"]
        diff = first_difference(a, b)
        extra.update(bound=bound(config, ours_precision, s.prompt, s.new, mine, read.bytes_per_s,
                                 read.median_bytes_per_s),
                     greedy_tokens_equal=diff is None, first_differing_position=diff,
                     tokens={ours: a, peer: b})
        rows.append(Row(f"greedy b=1, {s.new} tokens, {ours_precision} vs llama.cpp {name}", "tokens/s",
                        mine, f"llama.cpp {name}", theirs, goal=">= 1.0x", extra=extra))
    return rows


def run(quick: bool, device: str, threads: int) -> list[Row]:
    """The bench modules' shared entry point; llama.cpp runs on the CPU whatever `device` says."""
    return measure(QUICK if quick else FULL, threads)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="minigpt2 against llama.cpp: batch-1 greedy decoding, same weights")
    p.add_argument("--quick", action="store_true", help="32 new tokens, 2 processes a side")
    p.add_argument("--threads", type=int, default=None, help="threads on both sides (default: all cores)")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    threads = set_threads(args.threads)
    try:
        rows = run(args.quick, "cpu", threads)
    except ModuleSkipped as e:
        raise SystemExit(f"error: {e}") from None
    print_table(rows)
    print_bounds(rows)
    for r in rows:
        if "greedy_tokens_equal" in r.extra:
            diff = r.extra["first_differing_position"]
            print(f"{r.line.strip()}: greedy tokens " + ("equal" if diff is None else f"differ from position {diff}"))
    if args.json:
        write_json(rows, args.json, {"command": "python -m bench.bench_llama " + " ".join(argv or sys.argv[1:]),
                                     "threads": threads})


if __name__ == "__main__":
    main()
