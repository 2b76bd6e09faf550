"""The precision knob of `python -m minigpt2.finetune` and `minigpt2.evaluate`: flags, training-time wrapping
(QAFT), post-training quantization of the finished model, and the packed checkpoint + size report of a run.

    --precision fp32            the default: nothing changes
    --precision int8 --qaft     fake-quant wraps the body before training (QAFT); the trained model is evaluated
    --precision int8            trained in fp32, quantised afterwards (PTQ) and evaluated the same way
    --precision bf16|fp64       a real dtype cast of the whole task model: before training with --qaft, after without

Fake-quant formats quantise the GPT-2 body (its linear layers, and wte/wpe unless --no-quant-embeddings); a task's
classifier head stays fp32. Non-fp32 precisions run without autocast under `--autocast auto`, so that what is
simulated is what runs; an explicit `--autocast bf16` runs them under bf16 autocast (the fake-quantised weights'
matmuls then run in bf16, as they would on a GPU).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch.nn as nn

from .config import DEFAULT_GROUP_SIZE, DTYPE_PRECISIONS, PRECISIONS, QuantConfig
from .export import export_packed, size_report


def add_precision_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("precision (quantization)")
    g.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="numeric precision of the model: fp64/fp32/bf16 are dtype casts, fp8 (E4M3)/int8/int4 are "
                        "fake-quantised weights (packed into a real checkpoint at the end)")
    g.add_argument("--qaft", action="store_true",
                   help="quantization-aware fine-tuning: train through the quantiser (or in the dtype); without "
                        "it the finished model is quantised after training (PTQ)")
    g.add_argument("--group-size", type=int, default=DEFAULT_GROUP_SIZE,
                   help="INT4 group size along each layer's inputs (must divide n_embd)")
    g.add_argument("--quant-activations", action="store_true",
                   help="also fake-quantise linear-layer inputs per token (7-bit asymmetric, as the int8 CPU "
                        "decode path runs them)")
    g.add_argument("--no-quant-embeddings", action="store_true",
                   help="keep wte (the tied LM head) and wpe in fp32")


def check_precision_args(args: argparse.Namespace) -> None:
    """Reject inconsistent flags; `--autocast auto` turns autocast off for non-fp32 precisions (it would change
    what runs); an explicit `--autocast bf16` is kept, except with fp64, which it would contradict."""
    precision = getattr(args, "precision", "fp32")
    if args.qaft and precision == "fp32":
        raise SystemExit("--qaft needs a --precision other than fp32 (fp32 training is the default)")
    if (args.quant_activations or args.no_quant_embeddings) and precision not in ("fp8", "int8", "int4"):
        raise SystemExit("--quant-activations / --no-quant-embeddings apply to --precision fp8, int8 or int4")
    autocast = getattr(args, "autocast", "auto")
    if precision == "fp64" and autocast == "bf16":
        raise SystemExit("error: --autocast bf16 would run the fp64 model's matmuls in bf16; use --autocast off")
    if precision != "fp32" and autocast == "auto":
        args.autocast = "off"


def quant_config(args: argparse.Namespace) -> QuantConfig | None:
    """The run's QuantConfig, or None for fp64/fp32/bf16 (and runs made before the flag existed)."""
    precision = getattr(args, "precision", "fp32")
    if precision in DTYPE_PRECISIONS:
        return None
    try:
        return QuantConfig.for_precision(precision, group_size=args.group_size, activations=args.quant_activations,
                                         embeddings=not args.no_quant_embeddings)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e


def apply_run_precision(module: nn.Module, gpt: nn.Module, args: argparse.Namespace) -> None:
    """Put a task model at the run's precision, in place: cast `module`, or fake-quantise its body `gpt`."""
    from .qaft import apply_precision

    precision = getattr(args, "precision", "fp32")
    if precision in DTYPE_PRECISIONS:
        module.to(DTYPE_PRECISIONS[precision])
        return
    try:
        apply_precision(gpt, precision, quant_config(args))
    except ValueError as e:  # e.g. a group size that does not divide the model's width
        raise SystemExit(f"error: --precision {precision}: {e}") from e


def write_quantized(gpt: nn.Module, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """The run's body as a packed checkpoint (`run_dir/quantized/model-<precision>.safetensors`) and its size
    report (`run_dir/quantized/size_report.json`); returns the report."""
    precision = args.precision
    cfg = quant_config(args)
    path = export_packed(gpt, run_dir / "quantized", precision)
    report = size_report(gpt.config, precision, cfg)
    out = {"precision": precision, "qaft": bool(args.qaft), "file": str(path.relative_to(run_dir)),
           "file_bytes": path.stat().st_size, "computed_file_bytes": report.file_bytes,
           "param_bytes_by_part": report.parts, "scale_bytes": report.extra["scale_bytes"],
           "quantised": report.quantised, "quant_config": None if cfg is None else cfg.to_dict()}
    (run_dir / "quantized" / "size_report.json").write_text(json.dumps(out, indent=2) + "\n")
    return out
