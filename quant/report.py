"""Size table of the packed checkpoint at every precision: `python -m quant.report [--model gpt2]`.

Sizes come from tensor shapes (the model is built on the meta device: nothing is allocated or written); `--write DIR`
also writes the real files from random weights and reports their sizes on disk.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from minigpt2.config import PRESETS, GPT2Config
from minigpt2.errors import exits_on_user_error
from minigpt2.model import GPT2

from .config import DEFAULT_GROUP_SIZE, PRECISIONS, QuantConfig
from .formats import check_group_size_fits
from .export import PARTS, SizeReport, export_packed, size_report


def reports(config: GPT2Config, group_size: int = DEFAULT_GROUP_SIZE, embeddings: bool = True
            ) -> list[SizeReport]:
    """One SizeReport per precision, fp64 to int4."""
    out = []
    for p in PRECISIONS:
        cfg = None if p in ("fp64", "fp32", "bf16") else QuantConfig.for_precision(
            p, group_size=group_size, embeddings=embeddings)
        out.append(size_report(config, p, cfg))
    return out


def format_table(rows: list[SizeReport]) -> str:
    fp32 = next(r for r in rows if r.precision == "fp32").file_bytes
    head = f"{'precision':<9} {'file MB':>9} {'x fp32':>7} " + " ".join(f"{p + ' MB':>14}" for p in PARTS) + \
        f" {'scales MB':>10}  quantized"
    lines = [head, "-" * len(head)]
    for r in rows:
        parts = " ".join(f"{r.parts[p] / 1e6:14.2f}" for p in PARTS)
        lines.append(f"{r.precision:<9} {r.file_bytes / 1e6:9.2f} {r.file_bytes / fp32:7.3f} {parts} "
                     f"{r.extra['scale_bytes'] / 1e6:10.2f}  {r.quantized}")
    return "\n".join(lines)


@exits_on_user_error
def main(argv: list[str] | None = None) -> None:
    """`python -m quant.report`: a bad flag (e.g. a group size that does not divide the layers) is one line."""
    _main(argv)


def _main(argv: list[str] | None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt2", choices=sorted(PRESETS), help="model size preset (default gpt2 = 124M)")
    ap.add_argument("--group-size", type=int, default=DEFAULT_GROUP_SIZE, help="INT4 group size along the inputs")
    ap.add_argument("--no-embeddings", action="store_true",
                    help="keep wte (the tied LM head) and wpe in fp32 instead of quantizing them")
    ap.add_argument("--write", type=Path, default=None,
                    help="also write the real packed files (random weights) into this folder and check their sizes")
    ap.add_argument("--json", type=Path, default=None, help="write the table as JSON to this file")
    args = ap.parse_args(argv)

    if args.group_size < 1:
        ap.error(f"--group-size must be >= 1, got {args.group_size}")
    config = GPT2Config.from_name(args.model)
    check_group_size_fits(config, args.group_size)
    rows = reports(config, args.group_size, not args.no_embeddings)
    print(format_table(rows))
    if args.write is not None:
        torch.manual_seed(0)
        model = GPT2(config).eval()
        for r in rows:
            cfg = None if r.precision in ("fp64", "fp32", "bf16") else QuantConfig.for_precision(
                r.precision, group_size=args.group_size, embeddings=not args.no_embeddings)
            path = export_packed(model, args.write, r.precision, cfg)
            size = path.stat().st_size
            status = "matches" if size == r.file_bytes else f"DIFFERS from the computed {r.file_bytes}"
            print(f"wrote {path}: {size} bytes ({status})")
    if args.json is not None:
        args.json.write_text(json.dumps([{"precision": r.precision, "file_bytes": r.file_bytes, "parts": r.parts,
                                          "scale_bytes": r.extra["scale_bytes"], "quantised": r.quantized}
                                         for r in rows], indent=2) + "\n")


if __name__ == "__main__":
    main()
