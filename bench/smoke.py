"""A smoke test of the paths a GPU user takes: every task at tiny and 124M shapes, full / LoRA / int8 QAFT, under
autocast and `--compile`, one training step and one evaluation each, each reported as PASSED or FAILED.

    python -m bench.smoke --device cuda            # about a minute on a GPU; exit code 1 if any path failed
    python -m bench.smoke --device cpu --tiny-only # the same paths on CPU (bf16 autocast where the CPU has it)

The models are random-init (no download): this checks that the code runs (dtypes, devices, compiled graphs,
fused AdamW, the chunked loss at the real vocabulary), not what it learns. A path passes when its training loss is
finite, its gradients reached the weights, and its evaluation (classes, or sampled sonnet tokens) ran.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
import traceback
from dataclasses import dataclass

import torch

from minigpt2.config import GPT2Config
from minigpt2.device import AUTOCAST_MODES, AutocastUnavailable, autocast_dtype, autocast_for, fused_adamw
from minigpt2.generation import generate
from minigpt2.lora import LoRAConfig, apply_lora
from minigpt2.model import GPT2
from minigpt2.fast.compiled import CompiledBlocks
from quant.config import QuantConfig
from quant.qaft import apply_precision
from tasks import Example, collate, get_task

TASKS = ("sst", "cfimdb", "quora", "sonnet")
SHAPES = {"tiny": "tiny", "124M": "gpt2"}  # shape label -> GPT2Config preset


@dataclass
class SmokePath:
    """One smoke path: a task at a model shape with a training method."""

    task: str
    shape: str
    method: str  # full | lora | int8-qaft

    @property
    def name(self) -> str:
        return f"{self.task:<6} {self.shape:<4} {self.method}"


def paths(tiny_only: bool) -> list[SmokePath]:
    """Every task with full fine-tuning and LoRA at each shape, plus int8 QAFT on the sonnet task (the LM loss)."""
    out = []
    for shape in (["tiny"] if tiny_only else list(SHAPES)):
        out += [SmokePath(task, shape, method) for task in TASKS for method in ("full", "lora")]
        out.append(SmokePath("sonnet", shape, "int8-qaft"))
    return out


def examples(task: str, n: int, length: int, seed: int) -> list[Example]:
    """Random token rows with labels the task accepts (the sentiment classes, quora's yes/no)."""
    g = torch.Generator().manual_seed(seed)
    classes = {"sst": 5, "cfimdb": 2, "quora": 2}.get(task)
    return [Example(str(i), torch.randint(0, 50000, (length - i,), generator=g).tolist(),
                    None if classes is None else i % classes) for i in range(n)]


def run_path(p: SmokePath, device: torch.device, autocast: str, compile: bool) -> str:
    """Train one step and evaluate once; returns a short summary, raises on any failure."""
    torch.manual_seed(0)
    task = get_task(p.task)
    module = task.build(GPT2(GPT2Config.from_name(SHAPES[p.shape])))
    if p.method == "int8-qaft":
        apply_precision(module.gpt, "int8", QuantConfig.for_precision("int8"))
    if p.method == "lora":
        heads = [n for n, m in module.named_children() if n != "gpt" and any(True for _ in m.parameters())]
        apply_lora(module, LoRAConfig(rank=8, targets="attn+mlp", trainable=tuple(heads)))
    module.to(device).train()
    trainable = [q for q in module.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4, **({"fused": True} if fused_adamw(device) else {}))
    batch = collate(examples(p.task, 4, 64, 1), lm_targets=task.lm_targets)
    batch = {k: v.to(device) for k, v in batch.items()}
    compiled = CompiledBlocks(module) if compile else None
    with compiled.active() if compiled else contextlib.nullcontext():
        with autocast_for(autocast, device):
            loss = module(batch)
        loss.backward()
    if not math.isfinite(loss.item()):
        raise RuntimeError(f"training loss is {loss.item()}")
    if not any(q.grad is not None and q.grad.abs().sum().item() > 0 for q in trainable):
        raise RuntimeError("no gradient reached the trainable weights")
    opt.step()
    module.eval()
    with torch.no_grad(), autocast_for(autocast, device):
        if task.lm_targets:
            new = generate(module.gpt, [batch["input_ids"][0, :8].tolist()], max_new_tokens=8, temperature=1.0,
                           top_p=0.9, seed=0)
            evaluated = f"sampled {len(new[0])} tokens"
        else:
            evaluated = f"predicted classes {module.predict(batch).tolist()}"
    return f"loss {loss.item():.3f}, {evaluated}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.smoke", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:1, cpu")
    p.add_argument("--tiny-only", action="store_true", help="only the tiny shape (fast; the CPU check)")
    p.add_argument("--autocast", choices=AUTOCAST_MODES, default="auto",
                   help="auto: bf16 on CUDA with bf16, and on CPUs with native bf16 (smoke tests the bf16 path); "
                        "off: fp32")
    p.add_argument("--no-compile", action="store_true", help="run the blocks eager instead of torch.compile'd")
    args = p.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        print(f"error: --device {args.device!r}: {e}", file=sys.stderr)
        return 1
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {args.device}: no CUDA device is available (use --device cpu --tiny-only)",
              file=sys.stderr)
        return 1
    mode = args.autocast
    if mode == "auto":  # the smoke test exercises bf16 wherever it is native, on CPU too
        try:
            mode = "bf16" if autocast_dtype("bf16", device) else "off"
        except AutocastUnavailable:
            mode = "off"
    try:
        autocast_dtype(mode, device)
    except AutocastUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    compile = not args.no_compile
    print(f"smoke on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, autocast {mode}, compile {'on' if compile else 'off'}")
    failed = 0
    for path in paths(args.tiny_only):
        t0 = time.time()
        try:
            summary = run_path(path, device, mode, compile)
            print(f"PASSED  {path.name:<24} {time.time() - t0:6.1f} s  {summary}", flush=True)
        except Exception as e:  # every path is reported, whatever breaks
            failed += 1
            where = traceback.extract_tb(e.__traceback__)[-1]
            print(f"FAILED  {path.name:<24} {time.time() - t0:6.1f} s  {type(e).__name__}: {e} "
                  f"({where.filename}:{where.lineno})", flush=True)
    total = len(paths(args.tiny_only))
    print(f"{total - failed} of {total} paths passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
