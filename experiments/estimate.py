"""What a sweep costs before it starts: each run's work counted in tokens from the data it names (`run_workload`),
priced on a CPU (a measured `probe`, or STATED_CPU), on one GPU on paper, in process start-ups (`price`) and in
Gemini requests (`gemini_bill`). Every figure is an estimate and is printed as one (docs/study.md, 'What the study
costs')."""

from __future__ import annotations

import functools
import heapq
import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from app.settings import SyntheticSettings
from distill.summary import requests_needed, teacher_rates
from minigpt2.config import PRESETS, GPT2Config
from minigpt2.errors import UserError
from tasks import get_task  # app.settings imports tasks already
from tasks.base import GenerativeTask

from .runner import data_folder
from .sweeps import Run
from .tables import pipe_table

if TYPE_CHECKING:
    from app.settings import RunSettings
    from tasks.base import Task

PROBE_BATCH, PROBE_SEQ = 8, 64
# Untimed warm-up steps allocate activations, gradients and AdamW's moments. Steps spread wider than
# PROBE_SPREAD_WARN (slowest / fastest) mean the machine was busy: the dry run warns.
PROBE_WARMUP, PROBE_STEPS, PROBE_SPREAD_WARN = 1, 5, 1.5
# Tokens per Gemini request (one sonnet each) for files not generated yet; a file's summary says what it billed.
GEMINI_ASSUMPTIONS: dict[str, Any] = {
    "prompt": 100, "output": 250,
    "thinking": {"gemini-2.5-flash-lite": 0, "gemini-2.5-flash": 1000, "gemini-2.5-pro": 1500},
}
# One GPU on paper: kernel launches (per layer, outside the layers) of a training step, a forward batch and a
# decode step, each ~10 us when the GPU waits on the host.
GPU_ASSUMPTIONS: dict[str, Any] = {
    "gpu": "one H100 (bf16 dense peak 989 TFLOP/s)", "peak_flops": 989e12, "mfu": 0.35, "launch_s": 10e-6,
    "launches": {"train": (45, 40), "forward": (15, 10), "decode": (15, 20)},
}
# Stated, not measured: interpreter + imports (about 3 s for `import app.finetune` on 2 cores) and a CUDA context.
STARTUP_ASSUMPTIONS = {"imports_s": 3.0, "cuda_context_s": 2.0}
# --stated-rates: GPT-2 124M on an idle 2-vCPU EPYC (docs/performance.md: 212.8 tokens/s for a step of 8 x 128,
# 0.35 s of it the AdamW update), scaled by parameter count for other shapes. Deterministic, unlike the probe.
STATED_CPU = {"train_s_per_token": 4.35e-3, "optimizer_s_per_step": 0.35, "model_build_s": 1.5,
              "n_params": 124_439_808, "threads": 2}
DECODE_PER_TRAIN_TOKEN = 1.0  # CPU: one sampled token (batch ~12) costs about one trained token
FORWARD_PER_TRAIN_TOKEN = 1 / 3  # a forward pass is a third of forward + backward


@dataclass(frozen=True)
class Probe:
    """Measured full fine-tuning steps of one model shape on one device at `threads` threads: each step's forward +
    backward and its AdamW step (seconds), the model's build time, the 1-minute load average and the cores."""

    model: str
    device: str
    threads: int
    tokens_per_step: int
    step_seconds: tuple[float, ...]
    optimizer_seconds: tuple[float, ...]
    build_seconds: float = 0.0
    load: float | None = None
    cores: int = 1


@functools.lru_cache(maxsize=4)
def probe(model: str = "gpt2", device: str = "cpu", steps: int = PROBE_STEPS, threads: int | None = None) -> Probe:
    """Time `steps` training steps of `model`'s shape at batch 8 x 64 after PROBE_WARMUP untimed ones, at `threads`
    CPU threads (default: torch's, which this process gets back)."""
    from minigpt2.device import cpu_count
    from minigpt2.fast.chunked_loss import chunked_lm_loss
    from minigpt2.model import GPT2

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    try:
        torch.manual_seed(0)
        start = time.perf_counter()
        net = GPT2(model_config(model)).to(device)
        build = time.perf_counter() - start
        opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
        seq = min(PROBE_SEQ, net.config.n_positions)

        def step() -> tuple[float, float]:
            ids = torch.randint(0, net.config.vocab_size, (PROBE_BATCH, seq), device=device)
            sync()
            t0 = time.perf_counter()
            chunked_lm_loss(net(ids)[:, :-1], net.wte.weight, ids[:, 1:]).backward()
            sync()
            t1 = time.perf_counter()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()
            return t1 - t0, time.perf_counter() - t1

        for _ in range(PROBE_WARMUP):
            step()
        times = [step() for _ in range(steps)]
        try:
            load: float | None = os.getloadavg()[0]
        except (AttributeError, OSError):  # not a Unix
            load = None
        return Probe(model, device, torch.get_num_threads(), PROBE_BATCH * seq, tuple(t for t, _ in times),
                     tuple(o for _, o in times), build, load, cpu_count())
    finally:
        torch.set_num_threads(before)


def model_config(model: str) -> GPT2Config:
    """The shape `--model` names: a preset, or the config.json of a model folder (or beside a weights file);
    GPT-2 124M's when neither can be read (such a run fails its preconditions anyway)."""
    if model in PRESETS:
        return GPT2Config.from_name(model)
    path = Path(model)
    config = path / "config.json" if path.is_dir() else path.with_name("config.json")
    try:
        return GPT2Config.from_hf_dict(json.loads(config.read_text(encoding="utf-8")), str(config))
    except (OSError, ValueError):
        return GPT2Config.from_name("gpt2")


def n_params(model: str) -> tuple[int, int]:
    """(parameters, layers) of the model's shape, the tied embedding counted once."""
    c = model_config(model)
    C, L = c.n_embd, c.n_layer
    return (c.vocab_size + c.n_positions) * C + L * (12 * C * C + 13 * C) + 2 * C, L


@dataclass(frozen=True)
class SplitCounts:
    """One split as finetune loads it: its examples' input lengths, the loss examples' tokens, and for sonnets each
    prompt's expected continuation (None where the true sonnet is unknown) and the true sonnets' tokens."""

    lengths: tuple[int, ...]
    loss_tokens: int = 0
    continuations: tuple[int | None, ...] = ()
    truth_tokens: int = 0


@functools.lru_cache(maxsize=256)
def _counts(task_name: str, folder: str, tokenizer_dir: str | None, max_len: int, limit: int | None, seed: int,
            split: str, synthetic: SyntheticSettings | None = None) -> SplitCounts:
    from app.synthetic import synthetic_texts
    from minigpt2.tokenizer import Tokenizer

    task, tok = get_task(task_name), Tokenizer(tokenizer_dir)
    examples, _ = task.load(Path(folder), split, tok, max_len, limit, extra_texts=synthetic_texts(synthetic),
                            seed=seed)
    if synthetic is not None and synthetic.only:
        examples = [e for e in examples if e.meta.get("source") == "synthetic"]
    lengths = tuple(len(e.input_ids) for e in examples)
    if split == "train" or not isinstance(task, GenerativeTask):
        return SplitCounts(lengths, sum(lengths))
    truths = {}
    if split == "test" and task.format.references_file(Path(folder), "test") is not None:
        truths = {n: min(max_len, len(tok.encode(t)) + 1)  # as the dev references: cut at max_len
                  for n, t in (task.format.references_by_id(Path(folder), "test") or {}).items()}
    conts, truth = [], 0
    for e in examples:
        full = len(e.meta["reference_ids"]) if "reference_ids" in e.meta else truths.get(e.id)
        conts.append(None if full is None else max(1, full - len(e.input_ids)))
        truth += full or 0
    loss = sum(len(x.input_ids) for x in task.loss_examples(examples))
    return SplitCounts(lengths, loss, tuple(conts), truth)


@dataclass
class Generation:
    """Sonnet sampling work: left-padded prompt tokens, rows x decode steps computed, new tokens expected."""

    prompts: int = 0
    prefill_tokens: int = 0
    prefill_batches: int = 0
    decoded_tokens: int = 0
    decode_steps: int = 0
    new_tokens: int = 0

    def add(self, lengths: Sequence[int], conts: Sequence[int], batch: int, cap: int, positions: int,
            times: int = 1) -> None:
        """`times` passes over prompts of `lengths` continuing `conts` tokens, cut at `cap` new tokens and at the
        model's `positions` as `minigpt2.generate` cuts them; a batch decodes until its longest row ends."""
        for start in range(0, len(lengths), batch):
            rows = list(lengths[start:start + batch])
            budget = max(0, min(cap, positions - max(rows)))
            steps = min(budget, max(conts[start:start + batch]))
            self.prefill_tokens += times * len(rows) * max(rows)
            self.prefill_batches += times
            self.decoded_tokens += times * len(rows) * steps
            self.decode_steps += times * steps
            self.new_tokens += times * sum(min(budget, c) for c in conts[start:start + batch])
        self.prompts += times * len(lengths)


@dataclass
class Workload:
    """What one run computes, counted from its settings and the data they name."""

    name: str
    model: str
    n_params: int
    n_layer: int
    epochs: int
    train_tokens: int = 0  # all epochs
    train_steps: int = 0  # micro-batches, all epochs
    full_optimizer: bool = True  # AdamW updates every weight (not LoRA)
    eval_tokens: int = 0  # forward only: classifier predictions, dev losses, follow-up checks, held-out NLL
    eval_batches: int = 0
    generation: Generation = field(default_factory=Generation)
    processes: int = 1  # fresh interpreters (subprocess isolation)
    model_loads: int = 1
    assumed: list[str] = field(default_factory=list)


def run_workload(run: Run, isolation: str = "subprocess") -> Workload:
    """One run's training, evaluation and sonnet generation in tokens, and its process start-ups. Raises OSError,
    ValueError or a UserError when its data cannot be read."""
    s = run.settings
    task = get_task(s.data.task)
    n, layers = n_params(s.model.model)
    positions = model_config(s.model.model).n_positions
    max_len = min(s.data.max_length or positions, positions)
    src = (str(data_folder(s)), s.paths.tokenizer_dir)  # the data and the tokenizer, read here only
    w = Workload(run.name, s.model.model, n, layers, s.optim.epochs, full_optimizer=s.model.lora is None)
    _count_training(w, s, task.name, src, max_len)
    _count_evaluation(w, s, task, src, max_len, positions)
    for ev in run.evaluations:  # e.g. the zero-shot Quora check: a forward pass over that task's dev rows
        other = _counts(ev.task or task.name, *src, max_len, s.data.max_eval, s.optim.seed, "dev")
        w.eval_tokens += sum(other.lengths)
        w.eval_batches += math.ceil(len(other.lengths) / s.eval.batch_size)
    w.model_loads = 1 + len(run.evaluations)
    w.processes = w.model_loads if isolation == "subprocess" else 0
    return w


def _count_training(w: Workload, s: RunSettings, task: str, src: tuple[str, str | None], max_len: int) -> None:
    """Training tokens and micro-batches, all epochs. A synthetic file not made yet counts as that many sonnets of
    the real training sonnets' mean length."""
    synthetic, seed = s.data.synthetic, s.optim.seed
    if synthetic is not None and not Path(synthetic.path).is_file():
        real = SplitCounts(()) if synthetic.only else _counts(task, *src, max_len, s.data.max_train, seed, "train")
        sonnets = _counts("sonnet", *src, max_len, None, 0, "train").lengths
        mean, extra = sum(sonnets) / max(1, len(sonnets)), synthetic.n or 0
        examples, tokens = len(real.lengths) + extra, real.loss_tokens + round(extra * mean)
        w.assumed.append(f"{synthetic.path} not made yet: its sonnets counted at {mean:.0f} tokens each (the "
                         "real training sonnets' mean)")
    else:
        train = _counts(task, *src, max_len, s.data.max_train, seed, "train", synthetic)
        examples, tokens = len(train.lengths), train.loss_tokens
    w.train_tokens = tokens * s.optim.epochs
    w.train_steps = math.ceil(examples / s.optim.batch_size) * s.optim.epochs


def _count_evaluation(w: Workload, s: RunSettings, task: Task, src: tuple[str, str | None], max_len: int,
                      positions: int) -> None:
    """Forward tokens and sonnet generation: dev after every epoch (once for --epochs 0), dev and test at the end
    (--eval-samples times for sonnets, with the held-out NLL of the true sonnets before and after training)."""
    seed, batch = s.optim.seed, s.eval.batch_size
    dev = _counts(task.name, *src, max_len, s.data.max_eval, seed, "dev")
    test = _counts(task.name, *src, max_len, s.data.max_eval, seed, "test")
    passes = max(1, s.optim.epochs)
    w.eval_tokens += passes * dev.loss_tokens
    w.eval_batches += passes * math.ceil(len(dev.lengths) / batch)
    if not isinstance(task, GenerativeTask):
        w.eval_tokens += (passes + 1) * sum(dev.lengths) + sum(test.lengths)
        w.eval_batches += (passes + 1) * math.ceil(len(dev.lengths) / batch) + math.ceil(len(test.lengths) / batch)
        return
    cap = s.eval.sampling.max_new_tokens
    known = [c for c in dev.continuations + test.continuations if c is not None]
    mean = round(sum(known) / len(known)) if known else cap
    dev_c, test_c = ([mean if c is None else c for c in x.continuations] for x in (dev, test))
    if None in test.continuations:
        w.assumed.append(f"test continuations: the true sonnets' mean, {mean} tokens")
    for lengths, conts, times in ((dev.lengths, dev_c, passes), (dev.lengths, dev_c, s.eval.samples),
                                  (test.lengths, test_c, s.eval.samples)):
        w.generation.add(lengths, conts, batch, cap, positions, times)
    w.eval_tokens += 2 * (dev.truth_tokens + test.truth_tokens)  # held-out NLL: before training and after
    w.eval_batches += 2 * (math.ceil(len(dev.lengths) / batch) + (math.ceil(len(test.lengths) / batch)
                                                                  if test.truth_tokens else 0))


def format_hours(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" + (f" ({seconds / 86400:.1f} days)" if seconds >= 2 * 86400 else "")


# ---------------------------------------------------------------------------------------------- pricing

@dataclass(frozen=True)
class Rates:
    """Seconds of work on the runs' device for a model of `n_params` parameters (other shapes scale by parameter
    count) at `threads` CPU threads; `warning`: the line saying why a measured price may be off."""

    device: str
    train_s_per_token: float
    optimizer_s_per_step: float
    model_build_s: float
    n_params: int
    source: str
    threads: int = 1
    warning: str | None = None


def measured_rates(model: str, device: str, threads: int | None = None) -> Rates:
    """A probe's rates: priced at its fastest step (load only adds time, so it is the closest to an idle machine),
    the median and the slowest beside it; a `warning:` line when the steps spread wide or the CPU was busy."""
    p = probe(model, device, PROBE_STEPS, threads)
    fast, median, slow = (f(p.step_seconds) / p.tokens_per_step for f in (min, statistics.median, max))
    spread, why = max(p.step_seconds) / min(p.step_seconds), []
    if spread > PROBE_SPREAD_WARN:
        why.append(f"the probe's {len(p.step_seconds)} steps took {fast * 1e3:.3f} to {slow * 1e3:.3f} ms/token "
                   f"({spread:.1f}x apart, over {PROBE_SPREAD_WARN}x)")
    if p.device == "cpu" and p.load is not None and p.load > p.cores:
        why.append(f"the load average was {p.load:.1f} on {p.cores} cores")
    warning = ("warning: " + "; ".join(why) + ": the machine was busy. The estimate prices the fastest step (the "
               "closest to an idle machine); runs on a machine that stays this busy take longer. Probe again when "
               "it is quieter, or price with --stated-rates") if why else None
    at = f", {p.threads} thread(s)" if device == "cpu" else ""
    return Rates(device, fast, min(p.optimizer_seconds), p.build_seconds, n_params(model)[0],
                 f"probe: the fastest of {len(p.step_seconds)} steps of {model} at batch {PROBE_BATCH} x {PROBE_SEQ} "
                 f"on {device}{at} after {PROBE_WARMUP} warm-up, {fast * 1e3:.3f} ms/token (median "
                 f"{median * 1e3:.3f}, slowest {slow * 1e3:.3f}) + {min(p.optimizer_seconds):.2f} s AdamW step",
                 p.threads, warning)


def stated_rates() -> Rates:
    c = STATED_CPU
    return Rates("cpu", c["train_s_per_token"], c["optimizer_s_per_step"], c["model_build_s"], c["n_params"],
                 f"stated: GPT-2 124M on an idle 2-vCPU EPYC at {c['threads']} threads, "
                 f"{c['train_s_per_token'] * 1e3:.2f} ms/token + {c['optimizer_s_per_step']:.2f} s AdamW step, by "
                 "parameter count for other shapes", c["threads"])


@dataclass
class Cost:
    """A sweep's (or the study's) work and its estimated seconds, summed over runs (`+`)."""

    runs: int = 0
    processes: int = 0
    train_tokens: int = 0
    train_steps: int = 0
    eval_tokens: int = 0
    prompts: int = 0
    prefill_tokens: int = 0
    decoded_tokens: int = 0
    new_tokens: int = 0
    decode_steps: int = 0
    train_flop: float = 0.0
    eval_flop: float = 0.0
    gen_flop: float = 0.0
    cpu_train_s: float = 0.0
    cpu_eval_s: float = 0.0
    cpu_gen_s: float = 0.0
    startup_s: float = 0.0  # on the rates' device
    gpu_flop_s: tuple[float, float, float] = (0.0, 0.0, 0.0)  # training, evaluation, generation
    gpu_launch_s: tuple[float, float, float] = (0.0, 0.0, 0.0)
    gpu_startup_s: float = 0.0
    epochs: set[int] = field(default_factory=set)
    run_cpu_s: list[float] = field(default_factory=list)  # per priced run, for the wall time (summing concatenates)
    run_gpu_s: list[float] = field(default_factory=list)
    run_startup_s: list[float] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    assumed: list[str] = field(default_factory=list)

    def __add__(self, other: Cost) -> Cost:
        out = Cost()
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            setattr(out, f.name, tuple(x + y for x, y in zip(a, b)) if isinstance(a, tuple) else
                    a | b if isinstance(a, set) else a + b)
        return out

    @property
    def cpu_s(self) -> float:
        return self.cpu_train_s + self.cpu_eval_s + self.cpu_gen_s + self.startup_s

    @property
    def gpu_s(self) -> float:
        """Per phase the larger of the FLOP-bound and launch-bound times, plus the start-ups."""
        return sum(max(f, n) for f, n in zip(self.gpu_flop_s, self.gpu_launch_s)) + self.gpu_startup_s


def price(w: Workload, rates: Rates) -> Cost:
    """One run's seconds on the rates' device and on one GPU: 6 N FLOP a trained token and 2 N a forward or decoded
    one at the GPU's MFU, or its kernel launches, whichever is longer; a process start-up per model load."""
    scale, g, gpu = w.n_params / rates.n_params, w.generation, GPU_ASSUMPTIONS
    c = Cost(runs=1, processes=w.processes, train_tokens=w.train_tokens, train_steps=w.train_steps,
             eval_tokens=w.eval_tokens, prompts=g.prompts, prefill_tokens=g.prefill_tokens,
             decoded_tokens=g.decoded_tokens, new_tokens=g.new_tokens, decode_steps=g.decode_steps,
             epochs={w.epochs}, assumed=list(w.assumed))
    c.train_flop = 6 * w.n_params * w.train_tokens
    c.eval_flop = 2 * w.n_params * (w.eval_tokens + g.prefill_tokens)
    c.gen_flop = 2 * w.n_params * g.decoded_tokens
    t = rates.train_s_per_token * scale
    c.cpu_train_s = w.train_tokens * t + (w.train_steps * rates.optimizer_s_per_step * scale
                                          if w.full_optimizer else 0.0)
    c.cpu_eval_s = (w.eval_tokens + g.prefill_tokens) * t * FORWARD_PER_TRAIN_TOKEN
    c.cpu_gen_s = g.decoded_tokens * t * DECODE_PER_TRAIN_TOKEN
    build, imports = rates.model_build_s * scale, STARTUP_ASSUMPTIONS["imports_s"]
    c.startup_s = w.processes * imports + w.model_loads * build
    speed = gpu["mfu"] * gpu["peak_flops"]
    c.gpu_flop_s = (c.train_flop / speed, c.eval_flop / speed, c.gen_flop / speed)
    (tl, to), (fl, fo), (dl, do) = (gpu["launches"][k] for k in ("train", "forward", "decode"))
    launch = gpu["launch_s"]
    c.gpu_launch_s = (w.train_steps * (w.n_layer * tl + to) * launch,
                      (w.eval_batches + g.prefill_batches) * (w.n_layer * fl + fo) * launch,
                      g.decode_steps * (w.n_layer * dl + do) * launch)
    c.gpu_startup_s = w.processes * (imports + STARTUP_ASSUMPTIONS["cuda_context_s"]) + w.model_loads * build
    c.run_cpu_s, c.run_gpu_s, c.run_startup_s = [c.cpu_s], [c.gpu_s], [c.startup_s]
    return c


def sweep_cost(runs: Sequence[Run], rates: Rates, isolation: str = "subprocess") -> Cost:
    """The summed cost of a sweep's runs; runs whose data cannot be read are listed in `unknown`."""
    total = Cost()
    for run in runs:
        try:
            total = total + price(run_workload(run, isolation), rates)
        except (OSError, ValueError, RuntimeError, UserError) as e:  # data or tokenizer not there: say so
            total = total + Cost(runs=1, unknown=[f"{run.name} ({e})"])
    return total


def cost_lines(cost: Cost, rates: Rates) -> list[str]:
    """The printed estimate: runs and tokens, the CPU (probe or stated), one GPU both ways, the start-ups."""
    h, s, gpu = format_hours, STARTUP_ASSUMPTIONS, GPU_ASSUMPTIONS
    epochs = "/".join(map(str, sorted(cost.epochs))) or "?"
    lines = [
        f"{cost.runs} runs, epochs {epochs}, {cost.train_tokens:,} training tokens; ~{h(cost.cpu_s)} "
        f"in all on {rates.device} (estimate; {rates.source})",
        f"  training: {cost.train_tokens:,} tokens in {cost.train_steps:,} steps, {cost.train_flop:.1e} FLOP "
        f"(6 N per token)",
        f"  evaluation: {cost.eval_tokens + cost.prefill_tokens:,} forward tokens (dev every epoch, dev and test "
        f"at the end, follow-up checks, sonnet prompts), {cost.eval_flop:.1e} FLOP",
        f"  sonnet generation: {cost.prompts:,} prompts, ~{cost.new_tokens:,} new tokens expected (the true "
        f"continuations' lengths), {cost.decoded_tokens:,} decoded in {cost.decode_steps:,} decode steps, "
        f"{cost.gen_flop:.1e} FLOP",
        f"  CPU estimate ({rates.device}): training ~{h(cost.cpu_train_s)}, evaluation ~{h(cost.cpu_eval_s)}, "
        f"generation ~{h(cost.cpu_gen_s)}, start-ups ~{h(cost.startup_s)}: ~{h(cost.cpu_s)}",
        f"  GPU estimate, FLOP-bound ({gpu['gpu']} at MFU {gpu['mfu']:.2f}): training ~{h(cost.gpu_flop_s[0])}, "
        f"evaluation ~{h(cost.gpu_flop_s[1])}, generation ~{h(cost.gpu_flop_s[2])}",
        f"  GPU estimate, launch-bound (~{gpu['launch_s'] * 1e6:.0f} us a kernel launch): training "
        f"~{h(cost.gpu_launch_s[0])}, evaluation ~{h(cost.gpu_launch_s[1])}, generation "
        f"~{h(cost.gpu_launch_s[2])} ({cost.decode_steps:,} decode steps)",
        f"  start-ups: {cost.processes} processes x (~{s['imports_s']:.0f} s interpreter + imports, stated) + model "
        f"builds: ~{h(cost.startup_s)} on {rates.device}, ~{h(cost.gpu_startup_s)} on the GPU "
        f"(+{s['cuda_context_s']:.0f} s CUDA context each)",
        f"  GPU estimate in all (per phase the larger bound, plus start-ups): ~{h(cost.gpu_s)}",
    ]
    if cost.unknown:
        lines.append(f"  no token count for {len(cost.unknown)} run(s): " + "; ".join(cost.unknown[:2]))
    assumed = sorted(set(cost.assumed))
    if assumed:
        lines.append("  assumed: " + "; ".join(assumed[:3]) + (f"; ... ({len(assumed)} in all)"
                                                                 if len(assumed) > 3 else ""))
    return ["  " + line for line in lines]


# ---------------------------------------------------------------------------------------------- Gemini

def synthetic_needs(runs: Sequence[Run], intended: Sequence[tuple[str, str, int]] = ()
                    ) -> dict[Path, dict[str, int]]:
    """file -> {"perfect": n, "all": n}: the most sonnets any run asks of it with each filter, or any arm of
    `intended` ((file, filter, n), `Sweep.synthetic_needs`: also the arms a file cannot fill yet)."""
    needs: dict[Path, dict[str, int]] = {}
    asked = [(s.path, s.filter, s.n or 0) for s in (r.settings.data.synthetic for r in runs) if s is not None]
    for path, filt, n in [*intended, *asked]:
        slot = needs.setdefault(Path(path), {"perfect": 0, "all": 0})
        slot[filt] = max(slot[filt], n)
    return needs


def gemini_bill(runs: Sequence[Run], intended: Sequence[tuple[str, str, int]] = ()) -> tuple[list[str], float]:
    """Lines pricing the Gemini requests the runs (and the `intended` arms) need per teacher file, and the total
    USD: what its summary says it billed, plus the requests for its largest arms at its perfect rate, priced at
    the file's mean tokens per request or else GEMINI_ASSUMPTIONS."""
    from distill.prices import PRICES_DATE, estimate_cost
    from distill.summary import made_summary

    needs = synthetic_needs(runs, intended)
    if not needs:
        return ["  Gemini: none (no run trains on synthetic sonnets)"], 0.0
    lines, total, a = [], 0.0, GEMINI_ASSUMPTIONS
    for path, need in sorted(needs.items()):
        teacher = path.stem
        summary = made_summary(path)
        done = int(summary["requests"]) if summary else 0
        billed = float(summary.get("cost_usd") or 0.0) if summary else 0.0
        want = requests_needed(teacher, path, need["perfect"], need["all"])
        more = max(0, want - done)
        if summary and summary.get("requests") and (summary.get("tokens") or {}).get("total"):
            t, n = summary["tokens"], summary["requests"]
            prompt, output, thinking, how = t["input"] / n, t["output"] / n, t["thinking"] / n, \
                "the file's mean per request"
        else:
            prompt, output, thinking = a["prompt"], a["output"], a["thinking"].get(teacher, 0)
            how = f"assumed per request: {prompt} prompt, {output} output, {thinking} thinking tokens"
        cost = estimate_cost(teacher, round(more * prompt), round(more * output), round(more * thinking))
        _, _, rate_from = teacher_rates(teacher, path)
        have = f"{path}: {done:,} requests made, ${billed:.2f} billed (its summary); " if summary else \
            f"{path} not made yet; "
        lines.append(f"  Gemini {teacher}: {have}{want:,} requests for {need['perfect']:,} perfect sonnets "
                     f"({rate_from}) and {need['all']:,} kept: {more:,} more, ~{more * prompt:,.0f} prompt + "
                     f"{more * output:,.0f} output + {more * thinking:,.0f} thinking tokens ({how}), "
                     + (f"~${cost:.2f}" if cost is not None else "price unknown")
                     + f" at the prices of {PRICES_DATE}")
        total += billed + (cost or 0.0)
    lines.append(f"  Gemini total: ~${total:.2f} (billed + still to request; an estimate)")
    return lines, total


# ---------------------------------------------------------------------------------------------- wall time

def schedule_seconds(seconds: Sequence[float], workers: int) -> float:
    """Wall time of runs taking `seconds` each on `workers` workers, longest first, each to the first worker free
    (greedy longest-processing-time: within 4/3 of the best)."""
    free_at = [0.0] * max(1, min(workers, len(seconds)))
    for s in sorted(seconds, reverse=True):
        heapq.heappush(free_at, heapq.heappop(free_at) + s)
    return max(free_at) if seconds else 0.0


@dataclass(frozen=True)
class Workers:
    """`n` runs at once: on GPUs a device each; on a CPU `threads` threads each, sharing `cores` cores (None: CPUs
    of its own, as a Ray task with --cpus-per-run)."""

    n: int
    gpu: bool = False
    threads: int = 1
    cores: int | None = None


def wall_estimate(cost: Cost, rates: Rates, workers: Workers) -> tuple[list[str], float]:
    """Lines with the wall time of the priced runs on `workers`, longest first, and that time in seconds. On a CPU
    a run's work is inversely proportional to its cores (its threads, at most cores / runs at once), so N runs at
    once are no faster in all than one on every core; start-ups take one core each."""
    if workers.gpu:
        per_run, note = list(cost.run_gpu_s), []
    else:
        active = max(1, min(workers.n, len(cost.run_cpu_s)))
        speed = workers.threads if workers.cores is None else min(workers.threads, workers.cores / active)
        scale, start = rates.threads / speed, 1.0 if workers.cores is None else max(1.0, active / workers.cores)
        per_run = [(s - u) * scale + u * start for s, u in zip(cost.run_cpu_s, cost.run_startup_s)]
        share = (f"on CPUs of its own (--cpus-per-run), so {speed:.3g} core(s)" if workers.cores is None else
                 f"{active} run(s) at once sharing {workers.cores} cores, so min({workers.threads}, "
                 f"{workers.cores} / {active}) = {speed:.3g} core(s) each")
        note = [f"    each run: {workers.threads} thread(s), {share}; its work taken as inversely proportional to "
                f"its cores (linear in threads): x{scale:.3g} its CPU estimate at {rates.threads} thread(s), its "
                f"start-ups (one core) x{start:.3g}"
                + (": runs side by side on one CPU divide its cores, their work no faster in all than one run on "
                   "every core; only the start-ups overlap" if workers.cores is not None else "")]
    wall = schedule_seconds(per_run, workers.n)
    line = (f"  on {workers.n} workers ({'GPU' if workers.gpu else 'CPU'} estimate), longest runs first: "
            f"~{format_hours(wall)} wall time"
            + (f" (the longest run alone: ~{format_hours(max(per_run))})" if per_run else ""))
    return [line] + note, wall


def markdown_table(rows: Sequence[tuple[str, Cost, float]], rates: Rates) -> str:
    """docs/study.md's cost table: one row per (sweep, cost, Gemini USD), a last row "all" in bold. Runs that could
    not be counted are said so in their row, and the first reason under the table: the figures are then too low."""
    heads = ["sweep", "runs", "training tokens (all epochs)", "training FLOP", "evaluation + generation tokens",
             f"CPU ({rates.source.split(':')[0]}, {rates.device})", "GPU FLOP-bound", "GPU launch-bound",
             "GPU with start-ups", "Gemini"]
    lines = []
    for i, (name, c, usd) in enumerate(rows):
        bold = (lambda x: f"**{x}**") if i == len(rows) - 1 and name == "all" else (lambda x: x)
        runs = f"{c.runs} ({len(c.unknown)} not counted)" if c.unknown else f"{c.runs}"
        cells = [name, runs, f"{c.train_tokens:,}", f"{c.train_flop:.1e}",
                 f"{c.eval_tokens + c.prefill_tokens + c.decoded_tokens:,}", format_hours(c.cpu_s),
                 format_hours(sum(c.gpu_flop_s)), format_hours(sum(c.gpu_launch_s)), format_hours(c.gpu_s),
                 f"${usd:.2f}" if usd else "—"]
        lines.append([bold(x) for x in cells])
    missing = [u for name, c, _ in rows if name != "all" for u in c.unknown]
    return pipe_table(heads, lines) + (f"\n{len(missing)} run(s) not counted, their cost missing from the figures: "
                                       f"{missing[0]}\n" if missing else "")
