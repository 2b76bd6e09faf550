"""What to simulate: one validated, frozen dataclass. How is in `formats.py`, where in `fake.py` / `qaft.py`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from minigpt2.errors import FieldError, UserError

# Weight formats that are simulated by fake-quant (and packed by `export`).
WEIGHT_FORMATS = ("fp8_e4m3", "fp8_e5m2", "int8", "int4")
# The study's precisions: the first three are real dtype casts of the whole model, the rest fake-quant formats.
DTYPE_PRECISIONS: dict[str, torch.dtype] = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16}
PRECISIONS = ("fp64", "fp32", "bf16", "fp8", "int8", "int4")
# `--precision fp8` means E4M3: more mantissa, the usual choice for weights; E5M2 is available by name.
PRECISION_FORMAT = {"fp8": "fp8_e4m3", "int8": "int8", "int4": "int4"}

# INT4 groups of 128 input features (as GPTQ/AWQ use): 768 and 3072 split evenly, scales cost 4/128 byte/value.
DEFAULT_GROUP_SIZE = 128


class QuantSettingsError(UserError, ValueError):
    """Quantization settings that cannot work (format, group size), naming the setting."""


class QuantFieldError(FieldError, QuantSettingsError):
    """One QuantConfig field outside what it can be: `group_size 7: expected an even integer >= 2 ...`."""


@dataclass(frozen=True)
class QuantConfig:
    """What fake-quant simulates.

    weight: the weight format (`WEIGHT_FORMATS`), or None to leave weights in full precision (activations only).
    group_size: INT4 group width along the input features; must divide every quantized layer's input width.
    activations: dynamic per-token activation fake-quant on the input of every linear layer: asymmetric, with a
        per-token scale and zero point on 127 steps (uint8 with fbgemm's `reduce_range`), exactly the scheme of
        PyTorch's x86 dynamic int8 linear (the fast CPU decode path, `quant.int8_linear`), so what QAFT trains
        is what runs.
    embeddings: also quantize the token embedding `wte` (which is the tied LM head) and the position embedding
        `wpe`, per row (per token / position vector), in the same weight format.
    """

    weight: str | None = "int8"
    group_size: int = field(default=DEFAULT_GROUP_SIZE, metadata={"help": (
        "INT4 group size along each layer's inputs (must divide n_embd)")})
    activations: bool = field(default=False, metadata={"help": (
        "also fake-quantize linear-layer inputs per token (7-bit asymmetric, as the int8 CPU decode path runs "
        "them)")})
    embeddings: bool = field(default=True, metadata={"help": "quantize wte (the tied LM head) and wpe too",
                                                     "help_off": "keep wte (the tied LM head) and wpe in fp32"})

    def __post_init__(self) -> None:
        if self.weight is not None and self.weight not in WEIGHT_FORMATS:
            raise QuantFieldError("weight", repr(self.weight), f"one of {WEIGHT_FORMATS} or None")
        if not isinstance(self.group_size, int) or isinstance(self.group_size, bool) or self.group_size < 2 \
                or self.group_size % 2:
            raise QuantFieldError("group_size", repr(self.group_size),
                                  "an even integer >= 2 (two INT4 values share a byte)")
        for name in ("activations", "embeddings"):  # a file's "false" would read as True
            if not isinstance(getattr(self, name), bool):
                raise QuantFieldError(name, repr(getattr(self, name)), "true or false")
        if self.weight is None and not self.activations:
            raise QuantSettingsError("QuantConfig simulates nothing: weight=None and activations=False")

    @classmethod
    def for_precision(cls, precision: str, **overrides: Any) -> "QuantConfig":
        """The config of a fake-quant precision name: 'fp8' (E4M3), 'int8' or 'int4'."""
        if precision not in PRECISION_FORMAT:
            raise QuantSettingsError(f"precision {precision!r} is not a fake-quant format: expected one of "
                             f"{sorted(PRECISION_FORMAT)} (fp64/fp32/bf16 are plain dtype casts)")
        return cls(weight=PRECISION_FORMAT[precision], **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "QuantConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise QuantSettingsError(f"{source}: unknown quantization key(s) {sorted(unknown)}; "
                             f"expected {sorted(cls.__dataclass_fields__)}")
        try:
            return cls(**d)
        except QuantSettingsError as e:  # a value out of range: say which file (or settings group) holds it
            raise QuantSettingsError(f"{source}: {e}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **kw: Any) -> "QuantConfig":
        return replace(self, **kw)
