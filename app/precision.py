"""The precision knob of `finetune` and `evaluate`: flags, training-time wrapping (QAFT), post-training
quantization of the finished model, and the packed checkpoint + size report of a run.

    --precision fp32            the default: nothing changes
    --precision int8 --qaft     fake-quant wraps the body before training (QAFT); the trained model is evaluated
    --precision int8            trained in fp32, quantised afterwards (PTQ) and evaluated the same way
    --precision bf16|fp64       a real dtype cast of the whole task model: before training with --qaft, after without

Fake-quant formats quantise the GPT-2 body (its linear layers, and wte/wpe unless --no-quant-embeddings); a task's
classifier head stays fp32. Non-fp32 precisions run without autocast, so that what is simulated is what runs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from minigpt2.atomic import atomic_write_json
from minigpt2.config import GPT2Config
from minigpt2.errors import UserError
from quant.config import DEFAULT_GROUP_SIZE, DTYPE_PRECISIONS, PRECISION_FORMAT, PRECISIONS, QuantConfig
from quant.export import export_packed, size_report
from quant.formats import check_group_size_fits
from quant.qaft import apply_precision


class PrecisionError(UserError, ValueError):
    """Precision flags that do not fit together or do not fit the model."""


@dataclass(frozen=True)
class PrecisionSettings:
    """The numeric precision of a run (see the module docstring)."""

    precision: str = "fp32"
    qaft: bool = False
    group_size: int = DEFAULT_GROUP_SIZE
    quant_activations: bool = False
    quant_embeddings: bool = True

    @property
    def fake_quant(self) -> bool:
        return self.precision in PRECISION_FORMAT

    def quant_config(self) -> QuantConfig | None:
        """The QuantConfig of a fake-quant precision, or None for fp64/fp32/bf16."""
        if self.precision in DTYPE_PRECISIONS:
            return None
        return QuantConfig.for_precision(self.precision, group_size=self.group_size,
                                         activations=self.quant_activations, embeddings=self.quant_embeddings)

    def check_model(self, config: GPT2Config) -> None:
        """An INT4 group size must tile every quantised layer of the chosen model: checked before training."""
        if self.precision == "int4":
            try:
                check_group_size_fits(config, self.group_size)
            except ValueError as e:
                raise PrecisionError(f"--group-size {self.group_size}: {e}") from None


def add_precision_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("precision (quantization)")
    g.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="numeric precision of the model: fp64/fp32/bf16 are dtype casts, fp8 (E4M3)/int8/int4 are "
                        "fake-quantised weights (packed into a real checkpoint at the end)")
    g.add_argument("--qaft", action="store_true",
                   help="quantization-aware fine-tuning: train through the quantiser (or in the dtype); without "
                        "it the finished model is quantised after training (PTQ)")
    g.add_argument("--group-size", type=int, default=None,
                   help=f"INT4 group size along each layer's inputs (must divide n_embd; default "
                        f"{DEFAULT_GROUP_SIZE}); only with --precision int4")
    g.add_argument("--quant-activations", action="store_true",
                   help="also fake-quantise linear-layer inputs per token (7-bit asymmetric, as the int8 CPU "
                        "decode path runs them)")
    g.add_argument("--no-quant-embeddings", action="store_true",
                   help="keep wte (the tied LM head) and wpe in fp32")


def precision_from_args(a: argparse.Namespace) -> PrecisionSettings:
    """Reject inconsistent precision flags; the typed settings."""
    if a.qaft and a.precision == "fp32":
        raise PrecisionError("--qaft needs a --precision other than fp32 (fp32 training is the default)")
    if (a.quant_activations or a.no_quant_embeddings) and a.precision not in PRECISION_FORMAT:
        raise PrecisionError("--quant-activations / --no-quant-embeddings apply to --precision fp8, int8 or int4")
    if a.group_size is not None and a.precision != "int4":
        raise PrecisionError(f"--group-size applies to --precision int4, not {a.precision}")
    settings = PrecisionSettings(precision=a.precision, qaft=a.qaft,
                                 group_size=DEFAULT_GROUP_SIZE if a.group_size is None else a.group_size,
                                 quant_activations=a.quant_activations, quant_embeddings=not a.no_quant_embeddings)
    try:
        settings.quant_config()
    except ValueError as e:
        raise PrecisionError(f"--precision {a.precision}: {e}") from None
    return settings


def apply_run_precision(module: nn.Module, gpt: nn.Module, settings: PrecisionSettings) -> None:
    """Put a task model at the run's precision, in place: cast `module`, or fake-quantise its body `gpt`."""
    if settings.precision in DTYPE_PRECISIONS:
        module.to(DTYPE_PRECISIONS[settings.precision])
        return
    try:
        apply_precision(gpt, settings.precision, settings.quant_config())
    except ValueError as e:  # e.g. a group size that does not divide the model's width
        raise PrecisionError(f"--precision {settings.precision}: {e}") from e


def write_quantized(gpt: nn.Module, settings: PrecisionSettings, run_dir: Path) -> dict[str, Any]:
    """The run's body as a packed checkpoint (`run_dir/quantized/model-<precision>.safetensors`) and its size
    report (`run_dir/quantized/size_report.json`); returns the report."""
    precision = settings.precision
    cfg = settings.quant_config()
    path = export_packed(gpt, run_dir / "quantized", precision)
    report = size_report(gpt.config, precision, cfg)
    out = {"precision": precision, "qaft": settings.qaft, "file": str(path.relative_to(run_dir)),
           "file_bytes": path.stat().st_size, "computed_file_bytes": report.file_bytes,
           "param_bytes_by_part": report.parts, "scale_bytes": report.extra["scale_bytes"],
           "quantised": report.quantized, "quant_config": None if cfg is None else cfg.to_dict()}
    atomic_write_json(run_dir / "quantized" / "size_report.json", out)
    return out
