"""The precision knob of `finetune` and `evaluate`: its settings, fake-quant layers in the body before training
(QAFT), post-training quantization of the finished model, and the packed checkpoint + size report of a run.

    --precision fp32            the default: nothing changes
    --precision int8 --qaft     fake-quant layers replace the body's before training (QAFT); the trained model is evaluated
    --precision int8            trained in fp32, quantized afterwards (PTQ) and evaluated the same way
    --precision bf16|fp64       a real dtype cast of the whole task model: before training with --qaft, after without

Fake-quant formats quantize the GPT-2 body (its linear layers, and wte/wpe unless --no-quant-embeddings); a task's
classifier head stays fp32. Non-fp32 precisions run without autocast, so that what is simulated is what runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn

from minigpt2.atomic import atomic_write_json
from minigpt2.config import GPT2Config
from minigpt2.errors import FieldError, UserError
from quant.config import DEFAULT_GROUP_SIZE, DTYPE_PRECISIONS, PRECISION_FORMAT, PRECISIONS, QuantConfig
from quant.export import export_packed, size_report
from quant.formats import check_group_size_fits
from quant.qaft import apply_precision


class PrecisionError(UserError, ValueError):
    """Precision flags that do not fit together or do not fit the model."""


@dataclass(frozen=True)
class PrecisionSettings:
    """The numeric precision of a run (see the module docstring): the format, QAFT or PTQ, and for the fake-quant
    formats the `QuantConfig` that says what is simulated (None for the dtype casts fp64/fp32/bf16)."""

    format: str = field(default="fp32", metadata={"help": (
        "numeric precision of the model: fp64/fp32/bf16 are dtype casts, fp8 (E4M3)/int8/int4 are fake-quantized "
        "weights (packed into a real checkpoint at the end)"), "choices": PRECISIONS})
    qaft: bool = field(default=False, metadata={"help": (
        "quantization-aware fine-tuning: train through the quantizer (or in the dtype); without it the finished "
        "model is quantized after training (PTQ)")})
    quant: QuantConfig | None = None

    def __post_init__(self) -> None:
        if self.format not in PRECISIONS:
            raise FieldError("format", self.format, f"one of {', '.join(PRECISIONS)}")
        if self.qaft and self.format == "fp32":
            raise PrecisionError("--qaft needs a --precision other than fp32 (fp32 training is the default)")
        if self.fake(self.format) != (self.quant is not None):
            raise PrecisionError(f"--precision {self.format}: a QuantConfig goes with exactly the fake-quant formats "
                                 f"{', '.join(PRECISION_FORMAT)}")
        if self.quant is not None and self.quant.weight != PRECISION_FORMAT[self.format]:
            raise PrecisionError(f"--precision {self.format}: its QuantConfig quantizes weights to "
                                 f"{self.quant.weight}, expected {PRECISION_FORMAT[self.format]}")

    @staticmethod
    def fake(fmt: str) -> bool:
        """True for the fake-quant formats (fp8, int8, int4), False for the dtype casts."""
        return fmt in PRECISION_FORMAT

    @staticmethod
    def quant_for(fmt: str, **overrides: Any) -> QuantConfig:
        """The QuantConfig of a fake-quant format."""
        return QuantConfig.for_precision(fmt, **overrides)

    @property
    def group_size(self) -> int:
        return self.quant.group_size if self.quant is not None else DEFAULT_GROUP_SIZE

    def check_model(self, config: GPT2Config) -> None:
        """An INT4 group size must tile every quantized layer of the chosen model: checked before training."""
        if self.format == "int4":
            try:
                check_group_size_fits(config, self.group_size)
            except ValueError as e:
                raise PrecisionError(f"--group-size {self.group_size}: {e}") from None


def apply_run_precision(module: nn.Module, gpt: nn.Module, settings: PrecisionSettings) -> None:
    """Put a task model at the run's precision, in place: cast `module`, or fake-quantize its body `gpt`."""
    if settings.format in DTYPE_PRECISIONS:
        module.to(DTYPE_PRECISIONS[settings.format])
        return
    try:
        apply_precision(gpt, settings.format, settings.quant)
    except ValueError as e:  # e.g. a group size that does not divide the model's width
        raise PrecisionError(f"--precision {settings.format}: {e}") from e


def write_quantized(gpt: nn.Module, settings: PrecisionSettings, run_dir: Path) -> dict[str, Any]:
    """The run's body as a packed checkpoint (`run_dir/quantized/model-<precision>.safetensors`) and its size
    report (`run_dir/quantized/size_report.json`); returns the report."""
    precision = settings.format
    cfg = settings.quant
    path = export_packed(gpt, run_dir / "quantized", precision)
    report = size_report(gpt.config, precision, cfg)
    out = {"precision": precision, "qaft": settings.qaft, "file": str(path.relative_to(run_dir)),
           "file_bytes": path.stat().st_size, "computed_file_bytes": report.file_bytes,
           "param_bytes_by_part": report.parts, "scale_bytes": report.extra["scale_bytes"],
           "quantised": report.quantized, "quant_config": None if cfg is None else cfg.to_dict()}
    atomic_write_json(run_dir / "quantized" / "size_report.json", out)
    return out
