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

import sys
from pathlib import Path

from minigpt2.errors import exits_on_user_error
from minigpt2.lora import lora_modules
from quant.gguf import TYPES, GGUFError, check_exportable, export_gguf, require_gguf

from .cli import gguf_settings
from .generate import load_source
from .settings import GGUFSettings


def run(args: GGUFSettings) -> Path:
    """Check the flags, load the model (LoRA merged), refuse what GGUF cannot hold, write the file."""
    require_gguf()
    if args.type not in TYPES:  # before the model is loaded: a typo should not cost a download
        raise GGUFError(f"--type {args.type!r}: expected one of {', '.join(TYPES)}")
    out = Path(args.out)
    if out.is_dir():
        raise GGUFError(f"--out {out}: is a folder; expected a file name such as {out / 'model.gguf'}")
    gpt, settings = load_source(args.model, args.paths.offline)
    gpt.eval()
    for adapter in lora_modules(gpt).values():
        if adapter.mergeable:
            adapter.merge()
    check_exportable(gpt, args.type)
    tokenizer_dir = args.paths.tokenizer_dir or (settings.paths.tokenizer_dir if settings else None)
    name = Path(args.model).name if Path(args.model).exists() else args.model
    return export_gguf(gpt, out, args.type, name=name, bpe_dir=tokenizer_dir)


@exits_on_user_error
def main(argv: list[str] | None = None) -> None:
    """`python -m quant.gguf`: a UserError is one `error:` line and exit code 1."""
    path = run(gguf_settings(argv, __doc__.split("\n\n")[0]))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
