"""What a sweep costs before it starts: training tokens, an estimated wall time from a measured probe, and the
Gemini bill of the synthetic sonnets.

    training tokens   each run's training examples as finetune loads them (same tokenizer, --max-train,
                      synthetic sonnets mixed in), summed, times its epochs
    probe             a few full fine-tuning steps (forward, LM loss, backward, AdamW) of the runs' model shape
                      at batch 8 x 128 tokens on the chosen device, random weights; seconds per training token
    wall time         training tokens x seconds per token: training only (evaluation and sonnet generation come
                      on top), at the full fine-tuning rate (LoRA runs backpropagate less, fake-quant ones more)
    Gemini            distill.prices list prices: the summary's own cost where a file was generated, else
                      GEMINI_ASSUMPTIONS tokens per request (an assumption, printed as such)
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from app.settings import SyntheticSettings

from .sweeps import TEACHERS, Run

PROBE_BATCH, PROBE_SEQ = 8, 128
# Per generated sonnet (one request each): prompt, output and thinking tokens. An assumption for pricing files
# not yet generated; a generated file's summary replaces it with what was billed.
GEMINI_ASSUMPTIONS = {"prompt": 100, "output": 250,
                      "thinking": {"gemini-2.5-flash-lite": 0, "gemini-2.5-flash": 1000, "gemini-2.5-pro": 1500}}


@dataclass(frozen=True)
class Probe:
    """Measured full fine-tuning speed of one model shape on one device."""

    model: str
    device: str
    seconds_per_token: float
    steps: int


@functools.lru_cache(maxsize=4)
def probe(model: str = "gpt2", device: str = "cpu", steps: int = 2) -> Probe:
    """Time `steps` training steps (after one warm-up step) of `model`'s shape at batch 8 x 128."""
    from minigpt2.config import PRESETS, GPT2Config
    from minigpt2.chunked_loss import chunked_lm_loss
    from minigpt2.model import GPT2

    torch.manual_seed(0)
    net = GPT2(GPT2Config(**PRESETS[model])).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
    seq = min(PROBE_SEQ, net.config.n_positions)
    ids = torch.randint(0, net.config.vocab_size, (PROBE_BATCH, seq), device=device)

    def step() -> None:
        loss = chunked_lm_loss(net(ids)[:, :-1], net.wte.weight, ids[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return Probe(model, device, (time.perf_counter() - start) / (steps * PROBE_BATCH * seq), steps)


def chosen_device(finetune_args: Sequence[str]) -> str:
    """The device the runs will use: their --device, else CUDA where there is one, else the CPU."""
    args = list(finetune_args)
    if "--device" in args and args[args.index("--device") + 1] != "auto":
        return args[args.index("--device") + 1]
    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.lru_cache(maxsize=256)
def _train_tokens(task: str, folder: str, tokenizer_dir: str | None, max_train: int | None, max_len: int,
                  synthetic: SyntheticSettings | None) -> int:
    from app.synthetic import synthetic_texts
    from minigpt2.tokenizer import Tokenizer
    from tasks import get_task

    examples, _ = get_task(task).load(Path(folder), "train", Tokenizer(tokenizer_dir), max_len, max_train,
                                      extra_texts=synthetic_texts(synthetic))
    return sum(len(e.input_ids) for e in examples)


def run_tokens(run: Run) -> tuple[int, int]:
    """(training tokens of one epoch, epochs) of a run, from its finetune flags and the data they name."""
    from app.finetune import parse_settings
    from minigpt2.config import PRESETS
    from tasks.readers import data_dir

    s = parse_settings([*run.args, "--out-dir", "unused"])
    positions = PRESETS.get(s.model.model, {}).get("n_positions", 1024)
    max_len = min(s.data.max_length or positions, positions)
    tokens = _train_tokens(s.data.task, str(data_dir(s.data.data_dir)), s.data.tokenizer_dir, s.data.max_train,
                           max_len, s.data.synthetic)
    return tokens, s.optim.epochs


def format_hours(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" + (f" ({seconds / 86400:.1f} days)" if seconds >= 2 * 86400 else "")


def gemini_cost(folder: Path | None, sonnets: int = 1000) -> list[str]:
    """Lines pricing each teacher's file: its summary's billed cost if generated, else an estimate of making
    `sonnets` of them under GEMINI_ASSUMPTIONS."""
    from distill.prices import PRICES_DATE, estimate_cost

    from distill.summary import read_summary

    lines, total = [], 0.0
    for teacher in TEACHERS:
        path = folder / f"{teacher}.jsonl" if folder else None
        summary = read_summary(path) if path and path.is_file() else None
        cost = summary.get("cost_usd") if summary else None
        if cost is not None:
            lines.append(f"  Gemini {teacher}: ${cost:.2f} billed for {path} (its summary)")
        else:
            a = GEMINI_ASSUMPTIONS
            cost = estimate_cost(teacher, sonnets * a["prompt"], sonnets * a["output"],
                                 sonnets * a["thinking"][teacher]) or 0.0
            lines.append(f"  Gemini {teacher}: ~${cost:.2f} to generate {sonnets} sonnets (assumed per request: "
                         f"{a['prompt']} prompt, {a['output']} output, {a['thinking'][teacher]} thinking tokens; "
                         f"prices of {PRICES_DATE})")
        total += cost
    lines.append(f"  Gemini total: ~${total:.2f}")
    return lines


def schedule_seconds(seconds: Sequence[float], workers: int) -> float:
    """Wall time of runs taking `seconds` each on `workers` identical workers that start the longest runs first
    and give each next run to the first worker free (greedy longest-processing-time: within 4/3 of the best)."""
    import heapq

    free_at = [0.0] * max(1, min(workers, len(seconds)))
    for s in sorted(seconds, reverse=True):
        heapq.heappush(free_at, heapq.heappop(free_at) + s)
    return max(free_at) if seconds else 0.0


def sweep_estimate(runs: Sequence[Run], model: str, device: str) -> tuple[list[str], float]:
    """Lines describing a sweep's cost and its estimated training seconds."""
    p = probe(model, device, 2 if model != "tiny" else 3)
    total_tokens, epochs, unknown = 0, set(), []
    for run in runs:
        try:
            tokens, n_epochs = run_tokens(run)
        except (OSError, ValueError, RuntimeError) as e:  # data or tokenizer not there: say so, estimate the rest
            unknown.append(f"{run.name} ({e})")
            continue
        total_tokens += tokens * n_epochs
        epochs.add(n_epochs)
    seconds = total_tokens * p.seconds_per_token
    lines = [f"  {len(runs)} runs, epochs {'/'.join(map(str, sorted(epochs))) or '?'}, "
             f"{total_tokens:,} training tokens; ~{format_hours(seconds)} of training on {device} "
             f"(probe: {p.steps} steps of {model} at batch {PROBE_BATCH} x {PROBE_SEQ}, "
             f"{p.seconds_per_token * 1e3:.3f} ms/token)"]
    if unknown:
        lines.append(f"  no token count for {len(unknown)} run(s): " + "; ".join(unknown[:2]))
    return lines, seconds
