"""LoRA training step: minigpt2 LoRA vs `transformers` + `peft` LoRA (and minigpt2 full fine-tuning), in one run.

    python -m bench.bench_lora [--quick] [--json out.json]

Work: one optimizer step of next-token loss on a batch of 8 × 128 random tokens, GPT-2 124M at random init (no
download), GPT-2's dropout 0.1 on both sides, LoRA on attention + MLP (alpha 16, no adapter dropout) at rank 8 and
at rank 256, each in fp32 and under CPU/CUDA bf16 autocast (the same autocast on both sides), fused AdamW on the
trainable parameters on both sides (torch's fused kernel runs on CPU too). peft targets HF's modules `c_attn`,
`c_proj`, `c_fc`, the usual way to put LoRA on GPT-2 with peft; its fused `c_attn` adapter has fewer parameters
than minigpt2's three per-projection ones (37.7M vs 42.5M trainable), so the comparison gives peft slightly less
work.

How it is measured: each variant lives in its own fresh worker process, so peak memory is that variant's alone
(in-process RSS high-water marks would carry over from the previous variant, and freed memory is not always
returned to the OS). The workers wait on a pipe and run steps only when told, one worker at a time and in turns
(A, B, C, A, B, C, ...): all see the same threads and any background load alike. Warm-up steps are excluded;
the figure is the median. Peak memory is the process's peak RSS during a step (CUDA: the allocator's peak) minus
its RSS before the model was built (imports excluded, since peft's import alone is larger than minigpt2's): the
weights, gradients, optimizer state and activations of training.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from bench.common import Row, bf16_unavailable, print_table, proc_status_bytes, set_threads, sync, write_json

BATCH, SEQ, ALPHA, VOCAB = 8, 128, 16.0, 50257
VARIANTS = ("minigpt2-lora", "peft-lora", "minigpt2-full")
# (rank, bf16 autocast, variants timed in turns): one group of worker processes at a time, so that memory holds
# two or three models, not twelve. Full fine-tuning (rank unused) is timed with the fp32 rank-256 pair.
GROUPS: tuple[tuple[int, bool, tuple[str, ...]], ...] = (
    (8, False, ("minigpt2-lora", "peft-lora")),
    (256, False, ("minigpt2-lora", "peft-lora", "minigpt2-full")),
    (8, True, ("minigpt2-lora", "peft-lora")),
    (256, True, ("minigpt2-lora", "peft-lora")),
)
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ one variant

def _optimizer(params: list[torch.nn.Parameter], device: torch.device) -> torch.optim.Optimizer:
    # One fused kernel over all the adapters' small tensors, the same on both sides.
    return torch.optim.AdamW(params, lr=1e-4, fused=True)


def build_step(variant: str, device: torch.device, rank: int, bf16: bool, config: str = "gpt2"
               ) -> tuple[Callable[[], None], int]:
    """A closure running one training step of `variant`, and its number of trainable parameters.

    config: the minigpt2 preset both sides are built at (the tests use "tiny")."""
    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    if variant.startswith("minigpt2"):
        model, loss_fn = _minigpt2_model(variant, device, rank, config, ids)
    elif variant == "peft-lora":
        model, loss_fn = _peft_model(device, rank, config, ids)
    else:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")

    params = [p for p in model.parameters() if p.requires_grad]
    opt = _optimizer(params, device)

    def step() -> None:
        with amp:
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step, sum(p.numel() for p in params)


def _minigpt2_model(variant: str, device: torch.device, rank: int, config: str, ids: torch.Tensor
                    ) -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
    """Our GPT-2 as a training run builds it (with LoRA for "minigpt2-lora"), and its LM loss on `ids`."""
    from minigpt2 import GPT2, GPT2Config
    from minigpt2 import fast as speed
    from minigpt2.fast.chunked_loss import chunked_lm_loss

    model = GPT2(GPT2Config.from_name(config)).to(device).train()
    if variant == "minigpt2-lora":
        from minigpt2.lora import LoRAConfig, apply_lora

        apply_lora(model, LoRAConfig(rank=rank, alpha=ALPHA, targets="attn+mlp"))
    speed.for_training(model, device)  # as the application does for every training run

    def loss_fn() -> torch.Tensor:
        return chunked_lm_loss(model(ids)[:, :-1], model.wte.weight, ids[:, 1:])
    return model, loss_fn


def _peft_model(device: torch.device, rank: int, config: str, ids: torch.Tensor
                ) -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
    """The transformers GPT-2 with peft LoRA on the same projections, and its LM loss on `ids`."""
    import peft
    import transformers

    from minigpt2 import GPT2Config

    transformers.logging.set_verbosity_error()
    hf_config = transformers.GPT2Config(**GPT2Config.from_name(config).to_hf_dict(),
                                        attn_implementation="sdpa")  # GPT-2's dropout 0.1, like ours
    model = transformers.GPT2LMHeadModel(hf_config).to(device).train()
    model = peft.get_peft_model(model, peft.LoraConfig(
        r=rank, lora_alpha=ALPHA, target_modules=["c_attn", "c_proj", "c_fc"], lora_dropout=0.0,
        fan_in_fan_out=True))

    def loss_fn() -> torch.Tensor:
        return model(input_ids=ids, labels=ids).loss
    return model, loss_fn


def worker(variant: str, device_name: str, threads: int, rank: int, bf16: bool, config: str = "gpt2") -> None:
    """Serve steps over stdin/stdout: each input line runs one step and answers {seconds, peak_bytes}."""
    set_threads(threads)
    device = torch.device(device_name)
    gc.collect()
    baseline = 0 if device.type == "cuda" else proc_status_bytes("VmRSS")
    step, trainable = build_step(variant, device, rank, bf16, config)
    print(json.dumps({"ready": True, "trainable": trainable}), flush=True)
    for _ in sys.stdin:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the RSS high-water mark to the current RSS
        t0 = time.perf_counter()
        step()
        sync()
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else proc_status_bytes("VmHWM")
        print(json.dumps({"seconds": seconds, "peak_bytes": peak - baseline, "peak_abs": peak}), flush=True)


# ------------------------------------------------------------------------------------------ the comparison

class Worker:
    def __init__(self, variant: str, device: str, threads: int, rank: int, bf16: bool, config: str) -> None:
        self.variant = variant
        self.err = tempfile.TemporaryFile(mode="w+")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, "-m", "bench.bench_lora", "--worker", variant, "--device", device, "--threads",
               str(threads), "--rank", str(rank), "--config", config] + (["--bf16"] if bf16 else [])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.err, text=True, cwd=ROOT, env=env)
        self.trainable = 0

    def read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            self.err.seek(0)
            raise RuntimeError(f"benchmark worker {self.variant} died:\n{self.err.read()[-3000:]}")
        return json.loads(line)

    def step(self) -> dict[str, Any]:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        self.err.close()


def measure(quick: bool, device: str, threads: int, rank: int, bf16: bool,
            variants: tuple[str, ...] = VARIANTS, config: str = "gpt2") -> dict[str, dict[str, Any]]:
    """Median step time and peak memory of each variant, steps taken in turns across the worker processes."""
    warmup, iters = (1, 3) if quick else (2, 7)
    workers = [Worker(v, device, threads, rank, bf16, config) for v in variants]
    try:
        for w in workers:  # they build at the same time, then sit idle until told to step
            w.trainable = w.read()["trainable"]
        results: dict[str, list[dict[str, Any]]] = {w.variant: [] for w in workers}
        for i in range(warmup + iters):
            for w in workers:
                r = w.step()
                if i >= warmup:
                    results[w.variant].append(r)
    finally:
        for w in workers:
            w.close()
    out = {}
    for w in workers:
        rs = results[w.variant]
        seconds = statistics.median(r["seconds"] for r in rs)
        out[w.variant] = {"seconds": seconds, "tokens_per_s": BATCH * SEQ / seconds,
                          "peak_mib": max(r["peak_bytes"] for r in rs) / 2**20,
                          "peak_abs_mib": max(r["peak_abs"] for r in rs) / 2**20,
                          "step_seconds": [round(r["seconds"], 3) for r in rs], "trainable": w.trainable}
    out["_meta"] = {"config": config, "device": device, "threads": threads, "warmup": warmup, "iters": iters,
                    "batch": BATCH, "seq": SEQ, "rank": rank, "alpha": ALPHA, "precision": "bf16 autocast" if bf16 else "fp32",
                    "torch": torch.__version__}
    return out


def run(quick: bool, device: str, threads: int) -> list[Row]:
    """The rows: minigpt2 LoRA against peft LoRA (speed and memory: the goals) at each rank and precision, and
    against minigpt2 full fine-tuning (context)."""
    rows: list[Row] = []
    peer = "transformers+peft LoRA"
    why_not = bf16_unavailable(device)
    if why_not:
        print(f"[bench] lora: bf16 lines left out: {why_not}", file=sys.stderr)
    for rank, bf16, variants in GROUPS:
        if bf16 and why_not:
            continue
        m = measure(quick, device, threads, rank, bf16, variants)
        ours, peft_ = m["minigpt2-lora"], m["peft-lora"]
        extra = {"meta": m["_meta"], "variants": {k: v for k, v in m.items() if not k.startswith("_")},
                 "precision": m["_meta"]["precision"]}
        what = f"r{rank} attn+mlp, {BATCH}x{SEQ}" + (", bf16 autocast" if bf16 else "")
        rows += [Row(f"LoRA train step ({what})", "tokens/s", ours["tokens_per_s"], peer, peft_["tokens_per_s"],
                     True, ">= 1.15x", extra),
                 Row(f"LoRA train step peak memory ({what})", "MiB", ours["peak_mib"], peer, peft_["peak_mib"],
                     False, "<= 0.7x (ratio >= 1.43)", {"precision": extra["precision"]})]
        if "minigpt2-full" in m:
            full = m["minigpt2-full"]
            rows += [Row(f"LoRA r{rank} vs full fine-tuning step ({BATCH}x{SEQ})", "tokens/s",
                         ours["tokens_per_s"], "minigpt2 full FT", full["tokens_per_s"], True, "info",
                         {"precision": extra["precision"]}),
                     Row(f"LoRA r{rank} vs full fine-tuning peak memory", "MiB", ours["peak_mib"],
                         "minigpt2 full FT", full["peak_mib"], False, "info", {"precision": extra["precision"]})]
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_lora", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 warm-up + 3 timed steps per variant instead of 2 + 7")
    p.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    p.add_argument("--worker", choices=VARIANTS, default=None, help=argparse.SUPPRESS)  # internal: one variant
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=8, help=argparse.SUPPRESS)  # internal (--worker)
    p.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)  # internal (--worker)
    p.add_argument("--config", default="gpt2", help=argparse.SUPPRESS)  # internal (--worker)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.device, args.threads or set_threads(), args.rank, args.bf16, args.config)
        return
    rows = run(args.quick, "cuda" if torch.cuda.is_available() else "cpu", set_threads())
    print_table(rows)
    payload = {"meta": rows[0].extra["meta"], "rows": [r.to_dict() for r in rows]}
    print(json.dumps(payload, indent=2))
    if args.json:
        write_json(rows, args.json, meta=payload["meta"])


if __name__ == "__main__":
    main()
