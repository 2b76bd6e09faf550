"""Generate text from GPT-2 at the terminal, streamed token by token as it is sampled.

    python -m minigpt2.generate --model gpt2 --prompt "The meaning of life is"
    python -m minigpt2.generate --model checkpoints/runs/sonnet-lora --sonnet --prompt-file prompts.txt
    echo "Once upon a time" | python -m minigpt2.generate --model tiny --seed 1

`--model`: a preset (`gpt2`, ...: downloaded once into checkpoints/<name>/), `tiny` (random init, for trying the
command), a checkpoint folder or `model.safetensors` file (HF layout), or a finished run folder of
`python -m minigpt2.finetune` (full model, LoRA adapter or quantized run, rebuilt as the run's evaluation built it).

Prompts: `--prompt TEXT`, or `--prompt-file FILE` (UTF-8; prompts separated by blank lines, so one prompt may span
several lines), or the same format on stdin when neither is given. An empty prompt samples from
<|endoftext|>, i.e. unconditionally. `--sonnet` treats each prompt as the first lines of a sonnet, stops once 14
lines stand, and prints the perfect-sonnet verdict (`distill.check`) under each.

`--precision`: fp32; bf16, bf16 weights (on CPU only where it has native bf16; there the fast path runs the
oneDNN-prepacked bf16 copy, `minigpt2.fast.prepack`); int8, the CPU int8 decoder (`quant.int8_linear`). By
default the run's own precision: bf16 for a run trained in bf16 (`--precision bf16` or `--autocast bf16`) where
the device has it, else fp32, which for a quantized run is its fake-quant model, exactly as it was evaluated.
`--plain` runs the library's plain modules only (no prepacked copy, the plain sort-based sampler).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Callable, TextIO

import torch

from distill.check import check_sonnet
from minigpt2.checkpoint import load_model, resolve_model
from minigpt2.config import GPT2Config
from minigpt2 import device as hardware
from minigpt2 import fast
from minigpt2.device import parse_device, torch_threads
from minigpt2.errors import UserError, exits_on_user_error
from minigpt2.generation import generate
from minigpt2.lora import lora_modules
from minigpt2.model import GPT2
from minigpt2.tokenizer import Tokenizer
from minigpt2.train import seed_everything
from quant.qaft import bake, fake_quant_modules
from tasks import get_task
from tasks.sonnet import SONNET_LINES, finish_sonnet, sonnet_stop

from . import runfolder
from .precision import apply_run_precision
from .cli import GENERATE_GROUP, checked, generate_settings
from .runmodel import ADAPTER_NAME, load_run_body, load_run_model
from .settings import GenerateSettings, RunSettings



class GenerateError(UserError, ValueError):
    """Bad input to the generate command, reported as one `error:` line."""


def parse_settings(argv: list[str] | None = None) -> GenerateSettings:
    """The command line as checked settings (a bad flag is a UserError naming it)."""
    return generate_settings(argv, __doc__.split("\n\n")[0])


# ---------------------------------------------------------------------------------------------- prompts

def split_prompts(text: str) -> list[str]:
    """Blocks of `text` separated by blank lines, each with its lines joined by newlines."""
    prompts, block = [], []
    for line in text.splitlines():
        if line.strip():
            block.append(line.rstrip())
        elif block:
            prompts.append("\n".join(block))
            block = []
    if block:
        prompts.append("\n".join(block))
    return prompts


def read_prompts(args: GenerateSettings, stdin: TextIO) -> list[str]:
    """The prompts of --prompt, --prompt-file or stdin (trailing whitespace dropped: GPT-2's tokens carry their
    leading space)."""
    if args.prompt is not None:
        return [args.prompt.rstrip()]
    if args.prompt_file is not None:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise GenerateError(f"--prompt-file {path}: no such file")
        raw, where = path.read_bytes(), f"--prompt-file {path}"
    else:
        if stdin.isatty():
            print("reading prompts from stdin (blank lines separate them; end with Ctrl-D)", file=sys.stderr)
        raw, where = stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read().encode(), "stdin"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise GenerateError(f"{where}: not UTF-8 text (line {line}, byte {e.start}: {raw[e.start]:#04x}); "
                            "save it as UTF-8") from e
    prompts = split_prompts(text)
    if not prompts:
        raise GenerateError(f"{where}: no prompt found (expected text, prompts separated by blank lines)")
    return prompts


# ---------------------------------------------------------------------------------------------- the model

def load_source(name: str, offline: bool) -> tuple[GPT2, RunSettings | None]:
    """The GPT-2 named by --model, and the run's settings when it is a run folder (else None)."""
    path = Path(name)
    if path.is_dir() and (path / runfolder.CONFIG_FILE).is_file() and not (path / "model.safetensors").is_file():
        config = runfolder.read_config(path)
        settings = RunSettings.from_dict(config["settings"])
        if offline:
            settings = dataclasses.replace(settings, paths=dataclasses.replace(settings.paths, offline=True))
        return load_run(path, settings, config), settings
    if name == "tiny":
        torch.manual_seed(0)  # the same random tiny model every time: only the sampling seed varies
        return GPT2(GPT2Config.from_name("tiny")), None
    return load_model(checked(lambda: resolve_model(name, offline=offline), GENERATE_GROUP)), None


def load_run(folder: Path, settings: RunSettings, config: dict) -> GPT2:
    """The body of a finished finetune run at its precision, built as `minigpt2.evaluate` builds it."""
    best = folder / "best"
    if not ((best / "model.safetensors").is_file() or (best / ADAPTER_NAME).is_file()):
        raise GenerateError(f"--model {folder}: run folder without weights (expected {best / 'model.safetensors'} "
                            f"or {best / ADAPTER_NAME}); has the run finished an epoch?")
    seed_everything(settings.optim.seed)  # a LoRA run on `--model tiny` rebuilds its random base from the run's seed
    base = (config.get("fingerprint") or {}).get("base_weights")
    module = get_task(settings.data.task).build(load_run_body(best, settings, base))
    load_run_model(module, best)
    apply_run_precision(module, module.gpt, settings.precision)
    return module.gpt


def default_precision(settings: RunSettings | None, device: torch.device) -> str:
    """bf16 for a run trained in bf16 where the device computes bf16 natively, else fp32."""
    if settings is None:
        return "fp32"
    bf16_run = settings.precision.format == "bf16" or settings.autocast == "bf16"
    if not bf16_run:
        return "fp32"
    if device.type == "cuda" or hardware.cpu_native_bf16():
        return "bf16"
    print("note: the run trained in bf16, but this CPU has no native bf16: generating in fp32", file=sys.stderr)
    return "fp32"


BF16_EMULATED = ("bf16 inference needs a CPU with native bf16 arithmetic (AVX512-BF16 or AMX on x86, BF16 on ARM); "
                 "this one would emulate it, slower than fp32: use fp32")


@torch.no_grad()
def inference_model(gpt: GPT2, precision: str, device: torch.device, plain: bool = False) -> GPT2:
    """The model to sample with: LoRA adapters merged where exact, then at `precision` on `device`, then (unless
    `plain`) `minigpt2.fast.for_inference`'s copy of it.

    `gpt` itself is changed (adapters merged, fake-quant weights baked for bf16): pass a model loaded for this.
    """
    gpt.eval()
    for adapter in lora_modules(gpt).values():
        if adapter.mergeable:  # W + BA: one product per layer instead of three
            adapter.merge()
    if precision == "int8":
        from quant.int8_linear import to_int8_decoder

        try:
            model = to_int8_decoder(gpt)
        except ValueError as e:  # e.g. a model fake-quantized to int4: its weights are not int8
            raise GenerateError(f"--precision int8: {e}") from e
    elif precision == "bf16":
        if device.type == "cpu" and not hardware.cpu_native_bf16():
            raise GenerateError(f"--precision bf16: {BF16_EMULATED}")
        if any(True for _ in fake_quant_modules(gpt)):
            bake(gpt)  # the quantized weights as plain tensors, so that bf16 rounds what the run computed with
        model = gpt.to(device=device, dtype=torch.bfloat16)
    elif precision == "fp16" and device.type == "cpu":  # fp16 weights, fp32 activations: a speed piece on CPU
        from minigpt2.fast.prepack import fp16_available

        if plain or not fp16_available():
            raise GenerateError("--precision fp16 on a CPU reads fp16 weights through fbgemm's fp16 linear, a speed "
                                "piece: " + ("drop --plain" if plain else "this PyTorch build or CPU has none "
                                             "(it needs fbgemm and AVX2); use fp32 or int8"))
        if any(True for _ in fake_quant_modules(gpt)):
            bake(gpt)
        return fast.for_inference(gpt.float(), device, torch.float16)
    elif precision == "fp16":
        if any(True for _ in fake_quant_modules(gpt)):
            bake(gpt)
        model = gpt.to(device=device, dtype=torch.float16)
    else:
        model = gpt.float().to(device)
    return model if plain else fast.for_inference(model, device)


# ---------------------------------------------------------------------------------------------- streaming

class TextStream:
    """Writes the text of a growing list of token ids as it grows.

    GPT-2's tokens are bytes, and one character may span two tokens: text that ends in a partial character
    (decoded as U+FFFD) is held back until the next token completes it.
    """

    def __init__(self, tok: Tokenizer, out: TextIO, skip: set[int]) -> None:
        self.tok, self.out, self.skip = tok, out, skip
        self.ids: list[int] = []
        self.shown = 0

    def add(self, token: int) -> None:
        if token in self.skip:
            return
        self.ids.append(token)
        text = self.tok.decode(self.ids)
        if not text.endswith("\ufffd"):
            self._write(text)

    def finish(self) -> str:
        text = self.tok.decode(self.ids)
        self._write(text)
        return text

    def _write(self, text: str) -> None:
        self.out.write(text[self.shown:])
        self.out.flush()
        self.shown = len(text)


def verdict(text: str) -> str:
    """The perfect-sonnet verdict of `text` and, if it fails, its reasons, one per line."""
    check = check_sonnet(text)
    if check.perfect:
        return "verdict: a perfect sonnet (14 lines, ABAB CDCD EFEF GG)"
    lines = ["verdict: not a perfect sonnet"] + [f"  - {reason}" for reason in check.reasons]
    if check.unknown_words:
        lines.append(f"  (end words judged by spelling: {', '.join(check.unknown_words)})")
    return "\n".join(lines)


def sample_all(model: GPT2, tok: Tokenizer, prompts: list[str], args: GenerateSettings, out: TextIO,
               on_token: Callable[[int, int], None] | None = None) -> list[str]:
    """Sample every prompt `args.num_samples` times, streaming each sample to `out`; returns the texts written
    (prompt + continuation, or for --sonnet the finished sonnet)."""
    max_new = args.new_tokens
    n_positions = model.config.n_positions
    encoded = []
    for i, prompt in enumerate(prompts, 1):
        lines = tuple(line for line in prompt.splitlines() if line.strip())
        text = prompt + "\n" if args.sonnet and prompt else prompt
        ids = tok.encode(text) or [tok.eot_id]  # nothing to continue: sample from <|endoftext|>
        if len(ids) >= n_positions:
            raise GenerateError(f"prompt {i}: {len(ids)} tokens leave no room to generate within the model's "
                                f"context of {n_positions} tokens")
        if args.sonnet and len(lines) >= SONNET_LINES:
            raise GenerateError(f"prompt {i}: already {len(lines)} lines; --sonnet continues the first lines of a "
                                f"sonnet (fewer than {SONNET_LINES})")
        encoded.append((lines, text, ids))
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    several = len(prompts) * args.num_samples > 1
    results = []
    for i, (lines, text, ids) in enumerate(encoded):
        for j in range(args.num_samples):
            if several:
                out.write(("\n" if results else "") + f"=== prompt {i + 1}, sample {j + 1} ===\n")
            out.write(text)
            out.flush()
            stream = TextStream(tok, out, skip={tok.eot_id})

            def step(row: int, token: int) -> None:
                stream.add(token)
                if on_token is not None:
                    on_token(row, token)

            stop = sonnet_stop(tok, SONNET_LINES - len(lines)) if args.sonnet else None
            generate(model, [ids], max_new, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                     eos_id=tok.eot_id, stop=stop, seed=seed + i * args.num_samples + j, on_token=step)
            new_text = stream.finish()
            if not new_text.endswith("\n"):
                out.write("\n")
            if args.sonnet:
                sonnet = finish_sonnet(lines, new_text)
                out.write(verdict(sonnet) + "\n")
                results.append(sonnet)
            else:
                results.append(text + new_text)
            out.flush()
    return results


def run(args: GenerateSettings, stdin: TextIO | None = None, out: TextIO | None = None,
        on_token: Callable[[int, int], None] | None = None) -> list[str]:
    """The command: check the flags, read the prompts, load the model, sample; returns the texts written.

    `stdin` and `out` default to the `sys.stdin` and `sys.stdout` of the call, not of the import: a caller that
    redirects them (`contextlib.redirect_stdout`, a notebook, a test's capture) gets the text where it points.
    """
    stdin = sys.stdin if stdin is None else stdin
    out = sys.stdout if out is None else out
    hw, paths = args.hardware, args.paths
    device = parse_device(hw.device)  # checked with the flags
    if args.precision == "int8" and device.type != "cpu":
        raise GenerateError(f"--precision int8 runs PyTorch's CPU int8 kernels; use --device cpu, not {device}")
    with torch_threads(hw.threads):  # the caller's thread count is back after
        prompts = read_prompts(args, stdin)
        gpt, settings = load_source(args.model, paths.offline)
        precision = args.precision or default_precision(settings, device)
        tokenizer_dir = paths.tokenizer_dir or (settings.paths.tokenizer_dir if settings else None)
        tok = Tokenizer(tokenizer_dir)
        model = inference_model(gpt, precision, device, hw.plain)
        return sample_all(model, tok, prompts, args, out, on_token)


@exits_on_user_error
def main(argv: list[str] | None = None) -> None:
    """`python -m minigpt2.generate`: a UserError is one `error:` line and exit code 1."""
    try:
        run(parse_settings(argv))
        sys.stdout.flush()  # here, not at exit: a closed pipe must reach the handler below
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BrokenPipeError:  # `generate ... | head -1`: the reader has what it wanted; stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the flush at exit would raise again
        raise SystemExit(0) from None


if __name__ == "__main__":
    main()
