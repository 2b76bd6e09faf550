"""Core benchmarks: minigpt2's `GPT2` against `transformers`' `GPT2LMHeadModel` on the same weights.

Both models hold the same random 124M weights (HF's initialisation, saved in the HF layout and loaded into
minigpt2), see the same batch, use the same threads, precision, dropout and train/eval mode, and use HF's SDPA
attention. Each figure is the median of several calls, timed turn by turn after untimed warm-up calls. minigpt2
generates with `minigpt2.fast.for_inference` (on CPU: weights prepacked for oneDNN, made once before timing,
as its sonnet evaluation does); the rows' extras give the time of that conversion and the unpacked model's speed.

The bf16 lines: training steps under the same bf16 autocast on both sides (fp32 master weights and AdamW
moments), the MFU against a bf16 matmul peak timed in the same turns; generation with minigpt2's bf16 prepacked
copy against transformers with bf16 weights (`model.to(torch.bfloat16)`), and for greedy decoding also against
transformers in fp32.

The batch-1 greedy lines on CPU time the machine's read bandwidth in the same turns and carry their bound
(`bench.bound`: bytes read per token at the line's precision, the bound in tokens/s, the fraction reached).

    python -m bench.bench_core [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from minigpt2.checkpoint import load_model
from minigpt2.config import GPT2Config
from minigpt2.device import autocast_dtype, autocast_for, parse_device
from minigpt2 import fast as speed
from minigpt2.fast.chunked_loss import chunked_lm_loss
from minigpt2.fast.prepack import Bf16Unsupported, fp16_available, native_bf16
from minigpt2.generation import generate
from minigpt2.model import GPT2, last_token_index

from .bound import ReadBandwidth, bound, cpu_flags, print_bounds
from .common import (Row, bf16_unavailable, compare_time, peak_memory, print_table, proc_status_bytes, set_threads,
                     write_json)

PEER = "transformers"
CLOZE_TOKENS = [8505, 3919]  # " yes", " no": the Quora cloze reads only these two logits


@dataclass(frozen=True)
class Sizes:
    """What every line runs: model size, batch shapes, decode lengths and how many timed calls."""

    config: str = "gpt2"
    batch: int = 8  # training / forward batch (the study's 8 x 128)
    seq: int = 128
    decode_prompt: int = 16
    decode_new: int = 128  # greedy decode, batch 1
    sonnet_prompts: int = 12
    sonnet_new: int = 128
    sonnet_batch: int = 8  # LM training step whose peak memory is measured: finetune's default --batch-size
    sonnet_seq: int = 256  # a sonnet is ~170-220 GPT-2 tokens
    warmup: int = 1
    iters: int = 5
    matmul: int = 2048
    stream_mib: int = 512  # the array whose read times the machine's bandwidth (`bench.bound.ReadBandwidth`)


FULL = Sizes()
QUICK = Sizes(batch=2, decode_new=32, sonnet_new=32, iters=3)  # the memory line keeps 8 x 256: two steps a side
TINY = Sizes(config="tiny", batch=2, seq=32, decode_prompt=4, decode_new=8, sonnet_prompts=3, sonnet_new=8,
             sonnet_batch=2, sonnet_seq=32, warmup=1, iters=1, matmul=256, stream_mib=4)


def bf16_autocast(device: str) -> AbstractContextManager:
    """bf16 autocast on `device` (CPU too): the bf16 lines run both sides under the same one."""
    return torch.autocast(device, dtype=torch.bfloat16)


def precision_of(device: str) -> str:
    """`--autocast auto`'s choice, as every line runs: bf16 on CUDA with bf16, fp32 on CPU (parity with the peer)."""
    return "bf16 autocast" if autocast_dtype("auto", device) is not None else "fp32"


def amp_for(device: str, bf16: bool) -> Callable[[], AbstractContextManager]:
    """The autocast a line runs under: bf16 autocast for the bf16 lines, else `autocast_for` (fp32 on CPU)."""
    return partial(bf16_autocast, device) if bf16 else partial(autocast_for, "auto", device)


def make_checkpoint(config_name: str, folder: str | os.PathLike, seed: int = 0) -> None:
    """Random-init `GPT2LMHeadModel` weights of a preset, saved by `transformers` in its own layout."""
    import transformers

    torch.manual_seed(seed)
    hf_config = transformers.GPT2Config(**GPT2Config.from_name(config_name).to_hf_dict())
    transformers.GPT2LMHeadModel(hf_config).save_pretrained(folder)


def load_pair(folder: str | os.PathLike, device: str) -> tuple[GPT2, Any]:
    """minigpt2 and transformers models on the same checkpoint, both in fp32 on `device`, HF with SDPA."""
    import transformers

    ours = load_model(folder, device=device)
    speed.for_training(ours, torch.device(device))  # as the application does for every training run
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder, attn_implementation="sdpa").to(device)
    assert hf.config._attn_implementation == "sdpa", hf.config._attn_implementation
    hf.generation_config.eos_token_id = None  # both sides generate exactly max_new_tokens
    hf.generation_config.pad_token_id = 50256
    return ours, hf


def train_step_flops(config: GPT2Config, batch: int, seq: int) -> float:
    """Model FLOPs of one training step (forward + backward), PaLM's convention.

    6 per token and matmul weight (the blocks' linears and the tied LM head) plus 12 * layers * C * T per token
    for attention scores and values; embeddings, norms and the optimizer are not counted.
    """
    C, L, V = config.n_embd, config.n_layer, config.vocab_size
    matmul_params = L * 12 * C * C + V * C
    return batch * seq * (6 * matmul_params + 12 * L * C * seq)


def _ours_lm_step(model: GPT2, opt: torch.optim.Optimizer, ids: torch.Tensor,
                  amp: Callable[[], AbstractContextManager]) -> None:
    with amp():
        hidden = model(ids)
        loss = chunked_lm_loss(hidden[:, :-1], model.wte.weight, ids[:, 1:])
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _hf_lm_step(model: Any, opt: torch.optim.Optimizer, ids: torch.Tensor,
                amp: Callable[[], AbstractContextManager]) -> None:
    with amp():
        loss = model(ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def adamw(model: torch.nn.Module, device: str) -> torch.optim.Optimizer:
    # The same optimizer on both sides: torch's fused AdamW, which is also transformers' Trainer default
    # ("adamw_torch_fused" for torch >= 2.8).
    return torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)


def random_ids(batch: int, seq: int, vocab: int, device: str, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq), generator=g).to(device)


def bench_forward(ours: GPT2, hf: Any, s: Sizes, device: str) -> list[Row]:
    ids = random_ids(s.batch, s.seq, ours.config.vocab_size, device)
    ours.eval(), hf.eval()

    @torch.no_grad()
    def run_ours():
        with autocast_for("auto", device):
            return ours.lm_head(ours(ids))

    @torch.no_grad()
    def run_hf():
        with autocast_for("auto", device):
            return hf(ids, use_cache=False).logits

    t = compare_time({"ours": run_ours, "hf": run_hf}, s.warmup, s.iters)
    n = s.batch * s.seq
    return [Row(f"forward {s.batch}x{s.seq}, full logits", "tokens/s", n / t["ours"], PEER, n / t["hf"],
                goal=">= 1.0x")]


def bench_train(ours: GPT2, hf: Any, s: Sizes, device: str, bf16: bool = False) -> list[Row]:
    """One LM training step (forward, loss, backward, fused AdamW) of each side, and the MFU of both.

    bf16: both sides under the same bf16 autocast (fp32 master weights and AdamW moments), and the MFU taken
    against a bf16 matmul peak.
    """
    ids = random_ids(s.batch, s.seq, ours.config.vocab_size, device)
    ours.train(), hf.train()
    opt_ours, opt_hf = adamw(ours, device), adamw(hf, device)
    amp = amp_for(device, bf16)
    # The matmul peak is timed in the same turns as the steps: this machine's speed drifts over minutes, and a
    # peak measured apart from the steps would skew the MFU.
    dtype = torch.bfloat16 if bf16 else torch.float32
    a = torch.randn(s.matmul, s.matmul, device=device, dtype=dtype)
    b = torch.randn(s.matmul, s.matmul, device=device, dtype=dtype)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # a true fp32 peak
    t = compare_time({"ours": lambda: _ours_lm_step(ours, opt_ours, ids, amp),
                      "hf": lambda: _hf_lm_step(hf, opt_hf, ids, amp),
                      "matmul": lambda: [a @ b for _ in range(3)]}, s.warmup, s.iters)
    del opt_ours, opt_hf, a, b
    ours.eval(), hf.eval()
    n = s.batch * s.seq
    peak = 3 * 2 * s.matmul ** 3 / t.pop("matmul")
    flops = train_step_flops(ours.config, s.batch, s.seq)
    kind = "bf16" if bf16 else "fp32"
    tag = ", bf16 autocast" if bf16 else ""
    extra = {"precision": "bf16 autocast"} if bf16 else {}
    return [
        Row(f"training step {s.batch}x{s.seq}, AdamW{tag}", "tokens/s", n / t["ours"], PEER, n / t["hf"],
            goal=">= 1.15x", extra={"seconds": t, **extra}),
        Row(f"{kind} matmul peak ({s.matmul}^3)", "GFLOP/s", peak / 1e9, goal="(measured)", extra=dict(extra)),
        Row(f"training step MFU{tag} (of {kind} peak)", "fraction", flops / t["ours"] / peak, PEER,
            flops / t["hf"] / peak, goal=">= 0.70" if bf16 else ">= 0.80", extra={"step_flops": flops, **extra}),
    ]


def bench_quora_cloze(ours: GPT2, hf: Any, s: Sizes, device: str, bf16: bool = False) -> list[Row]:
    """A yes/no cloze step, as each side's user writes it: we compute the last block and two logits at the last real
    token only (`tasks.paraphrase`); the peer computes every position and every logit.

    bf16: both sides under the same bf16 autocast."""
    V = ours.config.vocab_size
    ids = random_ids(s.batch, s.seq, V, device, seed=2)
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(s.seq // 2, s.seq + 1, (s.batch,), generator=g)
    mask = (torch.arange(s.seq)[None] < lengths[:, None]).long().to(device)  # right padding
    labels = torch.randint(0, 2, (s.batch,), generator=g).to(device)
    columns = torch.tensor(CLOZE_TOKENS, device=device)
    rows = torch.arange(s.batch, device=device)
    last = (lengths - 1).to(device)
    ours.train(), hf.train()
    opt_ours, opt_hf = adamw(ours, device), adamw(hf, device)
    amp = amp_for(device, bf16)

    def step_ours():
        with amp():
            hidden = ours(ids, attention_mask=mask, at=last_token_index(mask))  # as TaskModel.last_hidden
            loss = F.cross_entropy(ours.lm_head(hidden, token_ids=columns).float(), labels)
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def step_hf():
        with amp():
            logits = hf(ids, attention_mask=mask, use_cache=False).logits  # (B, T, V)
            loss = F.cross_entropy(logits[rows, last][:, columns].float(), labels)
        loss.backward()
        opt_hf.step()
        opt_hf.zero_grad(set_to_none=True)

    t = compare_time({"ours": step_ours, "hf": step_hf}, s.warmup, s.iters)
    ours.eval(), hf.eval()
    if bf16:
        return [Row(f"Quora cloze training step {s.batch}x{s.seq}, bf16 autocast", "steps/s", 1 / t["ours"],
                    f"{PEER} (full logits)", 1 / t["hf"], goal=">= 1.5x", extra={"precision": "bf16 autocast"})]
    return [Row(f"Quora cloze training step {s.batch}x{s.seq}", "steps/s", 1 / t["ours"],
                f"{PEER} (full logits)", 1 / t["hf"], goal=">= 1.6x")]


def generation_model(ours: GPT2, batch: int = 1) -> tuple[GPT2, dict[str, Any]]:
    """What minigpt2 generates `batch` sequences at once with: `minigpt2.fast.for_inference` (on CPU, linears and
    head prepacked for oneDNN, laid out for that many rows, as the application's sonnet evaluation makes it)."""
    t0 = time.perf_counter()
    fast = speed.for_inference(ours, ours.wte.weight.device, batch=batch)
    packed = fast.h[0].mlp.c_fc is not ours.h[0].mlp.c_fc
    info = {"model": "prepacked (minigpt2.fast.prepack)" if packed else "as loaded",
            "prepack_seconds": round(time.perf_counter() - t0, 3), **({"packed_for_batch": batch} if packed else {})}
    return fast, info


def cpu_read(s: Sizes, device: str) -> dict[str, ReadBandwidth]:
    """{"read": the read-bandwidth probe} to time in a decode line's turns on CPU; {} elsewhere (the bound of
    `bench.bound` is a CPU memory's)."""
    return {"read": ReadBandwidth(s.stream_mib)} if device == "cpu" else {}


def bound_extra(read: dict[str, ReadBandwidth], config: GPT2Config, precision: str, s: Sizes,
                tokens_per_s: float) -> dict[str, Any]:
    """A decode line's extras for its bound (`bench.bound.bound`) and the bandwidth measured; {} off the CPU."""
    if not read:
        return {}
    bw = read["read"]
    return {"bound": bound(config, precision, s.decode_prompt, s.decode_new, tokens_per_s, bw.bytes_per_s,
                           bw.median_bytes_per_s),
            "bandwidth": bw.info()}


def bench_greedy_decode(ours: GPT2, hf: Any, s: Sizes, device: str) -> list[Row]:
    """Greedy decode, batch 1, against transformers `generate` (fp32 both); on a CPU where fbgemm's fp16 linear runs,
    minigpt2's fp16-weight copy too, in the same turns, against the same fp32 transformers."""
    prompt = random_ids(1, s.decode_prompt, ours.config.vocab_size, device, seed=4)
    ours.eval(), hf.eval()
    fast, info = generation_model(ours)
    fp16 = speed.for_inference(ours, torch.device(device), torch.float16) if fp16_weights(device) else None

    def run(model):
        def go():
            with autocast_for("auto", device):
                return generate(model, prompt.tolist(), s.decode_new, temperature=0.0, eos_id=None)
        return go

    def run_hf():
        with autocast_for("auto", device):
            return hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=s.decode_new,
                               do_sample=False)

    read = cpu_read(s, device)
    fns = {"ours": run(fast), "plain": run(ours), "hf": run_hf, **read}
    if fp16 is not None:
        fns["fp16"] = run(fp16)
    t = compare_time(fns, s.warmup, s.iters)
    n = s.decode_new
    rows = [Row(f"greedy decode, batch 1, {n} new tokens", "tokens/s", n / t["ours"], f"{PEER} generate",
                n / t["hf"], goal=">= 1.5x", extra={**info, "unpacked_tokens_per_s": n / t["plain"],
                                                    **bound_extra(read, ours.config, "fp32", s, n / t["ours"])})]
    if fp16 is not None:
        rows.append(Row("  same, fp16 weights (fbgemm), against transformers fp32", "tokens/s", n / t["fp16"],
                        f"{PEER} generate", n / t["hf"], goal="(context)",
                        extra={"precision": "fp16 weights", "model": "fp16 weights (minigpt2.fast.prepack)",
                               **bound_extra(read, ours.config, "fp16", s, n / t["fp16"])}))
    return rows


def fp16_weights(device: str) -> bool:
    """Whether the greedy line times minigpt2's fp16-weight copy too: on a CPU with fbgemm's fp16 linear."""
    return device == "cpu" and fp16_available()


def sonnet_prompts(s: Sizes, vocab: int) -> list[list[int]]:
    """Prompts of different lengths (like a sonnet's opening lines), so the batch needs left padding."""
    g = torch.Generator().manual_seed(5)
    lengths = torch.randint(24, 49, (s.sonnet_prompts,), generator=g).tolist()
    if s.config == "tiny":
        lengths = [4 + i % 3 for i in range(s.sonnet_prompts)]
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def left_padded(prompts: list[list[int]], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts as one left-padded batch and its attention mask, as HF expects for batched generation."""
    longest = max(map(len, prompts))
    ids = torch.full((len(prompts), longest), 50256, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p):] = torch.tensor(p)
        mask[i, longest - len(p):] = 1
    return ids.to(device), mask.to(device)


SONNET_SAMPLING = dict(temperature=0.8, top_k=50, top_p=0.9)


def sonnet_batch(ours: GPT2, hf: Any, s: Sizes, device: str) -> tuple[list[list[int]], torch.Tensor, torch.Tensor]:
    """The 12 sonnet prompts as token lists (ours) and as one left-padded batch with its mask (the peer); both
    models in eval mode."""
    prompts = sonnet_prompts(s, ours.config.vocab_size)
    ours.eval(), hf.eval()
    return (prompts, *left_padded(prompts, device))


def bench_sonnet_generation(ours: GPT2, hf: Any, s: Sizes, device: str) -> list[Row]:
    prompts, ids, mask = sonnet_batch(ours, hf, s, device)
    sampling = SONNET_SAMPLING
    fast, info = generation_model(ours, batch=len(prompts))

    def run(model):
        def go():
            with autocast_for("auto", device):
                return generate(model, prompts, s.sonnet_new, eos_id=None, seed=0, **sampling)
        return go

    def run_hf():
        with autocast_for("auto", device):
            return hf.generate(ids, attention_mask=mask, max_new_tokens=s.sonnet_new, do_sample=True, **sampling)

    t = compare_time({"ours": run(fast), "plain": run(ours), "hf": run_hf}, s.warmup, s.iters)
    n = len(prompts) * s.sonnet_new
    return [Row(f"sonnet generation, {len(prompts)} prompts, sampling", "tokens/s", n / t["ours"],
                f"{PEER} generate", n / t["hf"], goal=">= 2x",
                extra={"new_tokens_per_prompt": s.sonnet_new, **sampling, **info,
                       "unpacked_tokens_per_s": n / t["plain"]})]


def bf16_generation_model(ours: GPT2, batch: int = 1) -> tuple[GPT2, dict[str, Any]]:
    """What minigpt2 generates `batch` sequences at once with in bf16: on CPU the bf16 oneDNN-prepacked copy of
    `minigpt2.fast.for_inference` (refused on a CPU without native bf16 rather than time an emulation), elsewhere a
    bf16 copy of the model."""
    t0 = time.perf_counter()
    device = ours.wte.weight.device
    if device.type == "cpu":
        if not native_bf16():
            raise Bf16Unsupported("bf16 inference needs a CPU with native bf16 arithmetic; this one would emulate it")
        fast, what = (speed.for_inference(ours, device, torch.bfloat16, batch=batch),
                      "bf16 prepacked (minigpt2.fast.prepack)")
    else:
        fast, what = speed.for_inference(copy.deepcopy(ours).to(torch.bfloat16).eval(), device), "bf16 copy"
    packed = {"packed_for_batch": batch} if device.type == "cpu" else {}
    return fast, {"model": what, "prepack_seconds": round(time.perf_counter() - t0, 3), **packed}


def hf_bf16(hf: Any) -> Any:
    """The peer with bf16 weights (`model.to(torch.bfloat16)`), the way transformers users run it in bf16."""
    return copy.deepcopy(hf).to(torch.bfloat16).eval()


def bench_greedy_decode_bf16(ours: GPT2, hf: Any, s: Sizes, device: str) -> list[Row]:
    """Greedy decode in bf16 against transformers `generate` with bf16 weights and with its fp32 weights."""
    prompt = random_ids(1, s.decode_prompt, ours.config.vocab_size, device, seed=4)
    ours.eval(), hf.eval()
    fast, info = bf16_generation_model(ours)
    hf16 = hf_bf16(hf)

    def run_ours():
        return generate(fast, prompt.tolist(), s.decode_new, temperature=0.0, eos_id=None)

    def run_hf(model):
        def go():
            return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=s.decode_new,
                                  do_sample=False)
        return go

    read = cpu_read(s, device)
    t = compare_time({"ours": run_ours, "hf bf16": run_hf(hf16), "hf fp32": run_hf(hf), **read}, s.warmup, s.iters)
    del fast, hf16
    n = s.decode_new
    extra = {"precision": "bf16", **info}
    b = bound_extra(read, ours.config, "bf16", s, n / t["ours"])
    return [Row(f"greedy decode, batch 1, {n} new tokens, bf16", "tokens/s", n / t["ours"],
                f"{PEER} generate bf16", n / t["hf bf16"], goal=">= 1.5x", extra={**extra, **b}),
            Row("  same, against transformers fp32", "tokens/s", n / t["ours"], f"{PEER} generate fp32",
                n / t["hf fp32"], goal=">= 2.5x", extra=dict(extra))]


def bench_sonnet_generation_bf16(ours: GPT2, hf: Any, s: Sizes, device: str) -> list[Row]:
    """Sampling 12 sonnet continuations in bf16 against transformers `generate` with bf16 weights."""
    prompts, ids, mask = sonnet_batch(ours, hf, s, device)
    sampling = SONNET_SAMPLING
    fast, info = bf16_generation_model(ours, batch=len(prompts))
    hf16 = hf_bf16(hf)

    def run_ours():
        return generate(fast, prompts, s.sonnet_new, eos_id=None, seed=0, **sampling)

    def run_hf():
        return hf16.generate(ids, attention_mask=mask, max_new_tokens=s.sonnet_new, do_sample=True, **sampling)

    t = compare_time({"ours": run_ours, "hf": run_hf}, s.warmup, s.iters)
    del fast, hf16
    n = len(prompts) * s.sonnet_new
    return [Row(f"sonnet generation, {len(prompts)} prompts, sampling, bf16", "tokens/s", n / t["ours"],
                f"{PEER} generate bf16", n / t["hf"], goal=">= 2x",
                extra={"precision": "bf16", "new_tokens_per_prompt": s.sonnet_new, **sampling, **info})]


def memory_probe(side: str, folder: str | os.PathLike, batch: int, seq: int, device: str) -> dict[str, int]:
    """Peak memory of one steady-state LM training step (forward, loss, backward, AdamW) of one side.

    Run it in a fresh process (see `bench_memory`) so that neither side's allocations colour the other's. A
    first, unmeasured step allocates AdamW's moments; the measured second step's peak includes the weights,
    moments and gradients, as a real run's would. `before` is what was resident when it started.
    """
    import gc

    import transformers

    if side == "ours":
        model = load_model(folder, device=device)
        speed.for_training(model, torch.device(device))  # as the application does for every training run
        step = _ours_lm_step
    elif side == "hf":
        model = transformers.GPT2LMHeadModel.from_pretrained(folder, attn_implementation="sdpa").to(device)
        step = _hf_lm_step
    else:
        raise ValueError(f"memory_probe: side must be 'ours' or 'hf', got {side!r}")
    with torch.no_grad():  # weights in ordinary resident memory on both sides (a loader may leave them mmap-ed)
        for p in model.parameters():
            p.data = p.data.clone()
    model.train()
    ids = random_ids(batch, seq, model.config.vocab_size, device, seed=6)
    opt = adamw(model, device)
    amp = amp_for(device, bf16=False)
    step(model, opt, ids, amp)
    gc.collect()
    _return_freed_memory()
    before = torch.cuda.memory_allocated() if device == "cuda" else proc_status_bytes("VmRSS")
    peak = peak_memory(lambda: step(model, opt, ids, amp))
    return {"peak": peak, "before": before}


def _return_freed_memory() -> None:
    """Hand memory that glibc keeps after `free` back to the OS, so the next peak counts only live memory."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def bench_memory(folder: str | os.PathLike, s: Sizes, device: str, threads: int, isolate: bool = True
                 ) -> list[Row]:
    """Peak memory of a sonnet LM training step, each side in its own fresh process (or here, for tests)."""
    result = {}
    for side in ("ours", "hf"):
        if isolate:
            cmd = [sys.executable, "-m", "bench.bench_core", "--memory-probe", side, "--folder", str(folder),
                   "--batch", str(s.sonnet_batch), "--seq", str(s.sonnet_seq), "--device", device,
                   "--threads", str(threads)]
            root = Path(__file__).resolve().parent.parent
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
            if out.returncode != 0:
                raise RuntimeError(f"memory probe ({side}) failed:\n{out.stderr[-2000:]}")
            result[side] = json.loads(out.stdout.strip().splitlines()[-1])
        else:
            result[side] = memory_probe(side, folder, s.sonnet_batch, s.sonnet_seq, device)
    mib = 2 ** 20
    what = "CUDA allocator peak" if device == "cuda" else "process peak RSS"
    ours, hf = result["ours"], result["hf"]
    return [
        Row(f"sonnet LM step {s.sonnet_batch}x{s.sonnet_seq}: peak memory", "MiB", ours["peak"] / mib, PEER,
            hf["peak"] / mib, higher_is_better=False, goal="<= 0.8x", extra={"measure": what}),
        Row("  same, above weights + AdamW state at start", "MiB", (ours["peak"] - ours["before"]) / mib, PEER,
            (hf["peak"] - hf["before"]) / mib, higher_is_better=False, goal="(context)"),
    ]


LINES: list[tuple[str, Callable[..., list[Row]]]] = [
    ("forward", bench_forward),
    ("training step", bench_train),
    ("Quora cloze step", bench_quora_cloze),
    ("greedy decode", bench_greedy_decode),
    ("sonnet generation", bench_sonnet_generation),
]
BF16_LINES: list[tuple[str, Callable[..., list[Row]]]] = [
    ("training step, bf16", partial(bench_train, bf16=True)),
    ("Quora cloze step, bf16", partial(bench_quora_cloze, bf16=True)),
    ("greedy decode, bf16", bench_greedy_decode_bf16),
    ("sonnet generation, bf16", bench_sonnet_generation_bf16),
]


def measure_decoding(s: Sizes, device: str) -> list[Row]:
    """Only the generation lines (greedy decode, sonnet sampling) at the sizes `s`: `python -m bench --only decode`,
    for a decoding change that need not wait for the training lines."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as folder:
        make_checkpoint(s.config, folder)
        ours, hf = load_pair(folder, device)
        for name, fn in LINES:
            if fn in (bench_greedy_decode, bench_sonnet_generation):
                print(f"[bench] decode: {name}", file=sys.stderr)
                rows += fn(ours, hf, s, device)
    for r in rows:
        r.extra.setdefault("precision", precision_of(device))
    return rows


def run_decoding(quick: bool, device: str, threads: int) -> list[Row]:
    """The bench modules' entry point for `decode`: core's generation lines only."""
    set_threads(threads)
    return measure_decoding(QUICK if quick else FULL, device)


def measure(s: Sizes, device: str, isolate_memory: bool = True) -> list[Row]:
    """Every core line at the sizes `s` (the tests use `TINY`), with the threads already set. The bf16 lines run
    where the device has native bf16 (elsewhere bf16 would be emulated, and the lines are left out, saying why)."""
    from tqdm import tqdm

    lines = LINES
    why_not = bf16_unavailable(device)
    if why_not:
        print(f"[bench] core: bf16 lines left out: {why_not}", file=sys.stderr)
    else:
        lines = LINES + BF16_LINES
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as folder:
        make_checkpoint(s.config, folder)
        ours, hf = load_pair(folder, device)
        bar = tqdm(lines + [("peak memory", None)], desc="bench core", unit="line", file=sys.stderr)
        for name, fn in bar:
            bar.set_postfix_str(name)
            if fn is None:
                del ours, hf
                rows += bench_memory(folder, s, device, torch.get_num_threads(), isolate=isolate_memory)
            else:
                rows += fn(ours, hf, s, device)
    for r in rows:
        r.extra.setdefault("precision", precision_of(device))
    return rows


def run(quick: bool, device: str, threads: int) -> list[Row]:
    """The bench modules' shared entry point: every core line at the quick or full sizes."""
    set_threads(threads)
    return measure(QUICK if quick else FULL, device)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="minigpt2 vs transformers: the core benchmark lines.")
    p.add_argument("--quick", action="store_true", help="smaller batches, shorter decodes, fewer timed calls")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    p.add_argument("--memory-probe", choices=["ours", "hf"], default=None,
                   help="internal: measure one side's training-step peak memory and print it as JSON")
    p.add_argument("--folder", default=None, help="internal (--memory-probe): the HF-layout checkpoint folder")
    p.add_argument("--batch", type=int, default=FULL.sonnet_batch, help="internal (--memory-probe): batch size")
    p.add_argument("--seq", type=int, default=FULL.sonnet_seq, help="internal (--memory-probe): sequence length")
    p.add_argument("--bf16-only", action="store_true", help="only the bf16 lines")
    p.add_argument("--iters", type=int, default=None, help="timed calls per side (default: the sizes' own)")
    p.add_argument("--json", default=None, help="also write the rows as JSON here (after each line with "
                   "--bf16-only)")
    args = p.parse_args(argv)
    device = str(parse_device(args.device or "auto"))
    if args.memory_probe:
        set_threads(args.threads)
        print(json.dumps(memory_probe(args.memory_probe, args.folder, args.batch, args.seq, device)))
        return
    if args.bf16_only:
        rows = bf16_lines(QUICK if args.quick else FULL, device, set_threads(args.threads), args.iters, args.json)
    else:
        rows = run(args.quick, device, set_threads(args.threads))
        if args.json:
            write_json(rows, args.json, {"command": "python -m bench.bench_core " + " ".join(argv or sys.argv[1:]),
                                         "device": device, "threads": torch.get_num_threads(), **cpu_flags()})
    print_table(rows)
    print_bounds(rows)


def bf16_lines(s: Sizes, device: str, threads: int, iters: int | None, out: str | None) -> list[Row]:
    """Only the bf16 lines (with `iters` timed calls if given), the JSON rewritten after each line."""
    if iters:
        s = dataclasses.replace(s, iters=iters)
    why_not = bf16_unavailable(device)
    if why_not:
        raise SystemExit(f"error: --bf16-only: {why_not}")
    rows: list[Row] = []
    meta = {"command": "python -m bench.bench_core " + " ".join(sys.argv[1:]), "device": device, "threads": threads,
            **cpu_flags(),
            "sizes": dataclasses.asdict(s), "torch": torch.__version__, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                              time.gmtime())}
    with tempfile.TemporaryDirectory() as folder:
        make_checkpoint(s.config, folder)
        ours, hf = load_pair(folder, device)
        for i, (name, fn) in enumerate(BF16_LINES):
            print(f"[bench] core: {name}", file=sys.stderr)
            rows += fn(ours, hf, s, device)
            if out:
                write_json(rows, out, {**meta, "finished": i == len(BF16_LINES) - 1})
    return rows


if __name__ == "__main__":
    main()
