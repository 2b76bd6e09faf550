"""Write a GPT-2 as a GGUF file for llama.cpp (ollama, LM Studio): `python -m quant.gguf`.

    python -m quant.gguf checkpoints/runs/sonnet-lora --type q8_0 --out sonnet-q8_0.gguf
    python -m quant.gguf gpt2 --type f16 --out gpt2-f16.gguf

MODEL is what `python -m minigpt2.generate --model` accepts: a preset (`gpt2`, ... downloaded once), `tiny`, a
checkpoint folder or `model.safetensors` in the HF layout, or a finished finetune run folder (a LoRA run's adapters
merged into the base). A run fake-quantized for its weights only exports as f32, which holds its quantized values
exactly; one that also quantizes activations cannot be exported. The file holds GPT-2's tokenizer too (from
--tokenizer-dir, else the run's, else minigpt2's default, see `minigpt2.tokenizer`). Formats: `quant.gguf`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minigpt2.errors import exits_on_user_error
from minigpt2.lora import lora_modules
from quant.gguf import TYPES, GGUFError, check_exportable, export_gguf, require_gguf

from .generate import load_source


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m quant.gguf", description=__doc__.split("\n\n")[0])
    p.add_argument("model", metavar="MODEL", help="preset, tiny, HF checkpoint folder/file, or finetune run folder")
    p.add_argument("--type", default="f16", help=f"tensor type of the matrices: {', '.join(TYPES)} (default f16)")
    p.add_argument("--out", required=True, help="the .gguf file to write")
    p.add_argument("--tokenizer-dir", default=None, help="folder with GPT-2's encoder.json and vocab.bpe")
    p.add_argument("--offline", action="store_true", help="never download (a missing preset is an error)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> Path:
    """Check the flags, load the model (LoRA merged), refuse what GGUF cannot hold, write the file."""
    require_gguf()
    if args.type not in TYPES:  # before the model is loaded: a typo should not cost a download
        raise GGUFError(f"--type {args.type!r}: expected one of {', '.join(TYPES)}")
    out = Path(args.out)
    if out.is_dir():
        raise GGUFError(f"--out {out}: is a folder; expected a file name such as {out / 'model.gguf'}")
    gpt, settings = load_source(args.model, args.offline)
    gpt.eval()
    for adapter in lora_modules(gpt).values():
        if adapter.mergeable:
            adapter.merge()
    check_exportable(gpt, args.type)
    tokenizer_dir = args.tokenizer_dir or (settings.paths.tokenizer_dir if settings else None)
    name = Path(args.model).name if Path(args.model).exists() else args.model
    return export_gguf(gpt, out, args.type, name=name, bpe_dir=tokenizer_dir)


@exits_on_user_error
def main(argv: list[str] | None = None) -> None:
    """`python -m quant.gguf`: a UserError is one `error:` line and exit code 1."""
    path = run(parse_args(argv))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
