"""Packed checkpoints: the quantized model as it would ship, one safetensors file per precision, and its size.

File layout (minigpt2 parameter names; `safetensors` metadata holds the model config, the precision and the
QuantConfig, so the file is self-describing):

    fp64 / fp32 / bf16   every tensor cast to that dtype
    int8                 <layer>.weight.q  int8 (N, K)           + <layer>.weight.scale  fp32 (N, 1)
    int4                 <layer>.weight.q  uint8 (N, K/2), two values per byte (q + 8 in each nibble)
                                                                 + <layer>.weight.scale  fp32 (N, K/group)
    fp8                  <layer>.weight.q  float8_e4m3fn (or e5m2) (N, K) + <layer>.weight.scale fp32 (N, 1)

What is quantized (fp8/int8/int4): the weight of every linear layer (attention query/key/value/c_proj, MLP
c_fc/c_proj) and, with `QuantConfig.embeddings` (the default), the token embedding `wte` — which is also the tied
LM head — and the position embedding `wpe`, per row. Biases and LayerNorm parameters stay fp32.

`load_packed` dequantizes into a plain `GPT2` (plus run-time activation fake-quant when the config asks for it),
whose outputs equal the fake-quant model's bit for bit: both compute with `q · scale` of the same q and scale.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from minigpt2.atomic import atomic_path
from minigpt2.checkpoint import CheckpointError, model_from_state, read_safetensors
from minigpt2.config import GPT2Config
from minigpt2.model import GPT2
from minigpt2.surgery import unwrap_compiled

from .config import DTYPE_PRECISIONS, PRECISIONS, QuantConfig
from .formats import FP8_DTYPES, dequantize, pack_int4, quantize, unpack_int4
from .qaft import WeightQuantModule, fake_quant_modules, ptq, quant_config_of, quantize_model

FORMAT_TAG = "minigpt2-packed"
PARTS = ("embeddings", "linear", "norms")


def packed_name(precision: str) -> str:
    return f"model-{precision}.safetensors"


def part_of(key: str) -> str:
    """Which part of the model a parameter belongs to: embeddings, linear layers or norms."""
    if key.startswith(("wte.", "wpe.")):
        return "embeddings"
    if ".ln_" in key or key.startswith("ln_f."):
        return "norms"
    return "linear"


def _precision_of(cfg: QuantConfig) -> str:
    return "fp8" if cfg.weight in FP8_DTYPES else str(cfg.weight)


# ---- the layout, from the config alone (sizes without building or writing anything) ----

@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * self.dtype.itemsize


def _quantized_specs(shape: tuple[int, int], cfg: QuantConfig) -> dict[str, TensorSpec]:
    N, K = shape
    if cfg.weight == "int4":
        return {"q": TensorSpec((N, K // 2), torch.uint8), "scale": TensorSpec((N, K // cfg.group_size), torch.float32)}
    dtype = torch.int8 if cfg.weight == "int8" else FP8_DTYPES[cfg.weight]
    return {"q": TensorSpec((N, K), dtype), "scale": TensorSpec((N, 1), torch.float32)}


def packed_layout(config: GPT2Config, precision: str, cfg: QuantConfig | None = None) -> dict[str, TensorSpec]:
    """Every tensor of the packed file for `config` at `precision`: name -> shape and dtype. Nothing is allocated."""
    with torch.device("meta"):
        model = GPT2(config)
    state = {k: (tuple(v.shape), v) for k, v in model.state_dict().items()}
    if precision in DTYPE_PRECISIONS:
        return {k: TensorSpec(s, DTYPE_PRECISIONS[precision]) for k, (s, _) in state.items()}
    cfg = cfg or QuantConfig.for_precision(precision)
    quantize_model(model, cfg)  # the group-size check, and which layers get fake-quantized
    quantized = {f"{n}.weight" for n, m in fake_quant_modules(model) if isinstance(m, WeightQuantModule)}
    out: dict[str, TensorSpec] = {}
    for k, (shape, _) in state.items():
        if k in quantized:
            out.update({f"{k}.{s}": spec for s, spec in _quantized_specs(shape, cfg).items()})
        else:
            out[k] = TensorSpec(shape, torch.float32)
    return out


# ---- packing a real model ----

def _plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters: fake-quant layers keep the plain GPT2 names, so this is the state dict as it is."""
    state = model.state_dict()
    extra = [k for k in state if "lora_" in k]
    if extra:
        raise ValueError(f"cannot pack a model with LoRA adapters ({extra[0]}, ...): the adapter is full precision "
                         "and not part of the packed base; save it with minigpt2.lora.save_adapter")
    return state


def pack_model(model: GPT2, precision: str | None = None, cfg: QuantConfig | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of the packed file.

    model: a plain GPT2 (quantized here at `precision`, with `cfg` or that precision's defaults) or one
    fake-quantized by `quantize_model` (its own config is used; precision may be omitted).
    """
    model = unwrap_compiled(model)
    own = quant_config_of(model)
    if own is not None:
        if cfg is not None and cfg != own:
            raise ValueError(f"model is fake-quantized with {own}, but cfg={cfg} was given")
        cfg = own
        if precision is not None and precision != _precision_of(own):
            raise ValueError(f"model is fake-quantized as {_precision_of(own)!r}, cannot pack it as {precision!r}")
        precision = _precision_of(own)
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {PRECISIONS}")
    meta = {"format": FORMAT_TAG, "precision": precision, "config": json.dumps(model.config.to_hf_dict())}
    if precision in DTYPE_PRECISIONS:
        dtype = DTYPE_PRECISIONS[precision]
        return {k: v.detach().to(dtype).contiguous().cpu() for k, v in _plain_state(model).items()}, meta

    if own is None:
        cfg = cfg or QuantConfig.for_precision(precision)
        model = ptq(model, cfg)
    if any(not m.enabled for _, m in fake_quant_modules(model)):
        raise ValueError("cannot pack a model whose fake-quant layers are disabled; enable them first")
    meta["quant"] = cfg.to_json()
    quantized = {f"{n}.weight" for n, m in fake_quant_modules(model)
               if isinstance(m, WeightQuantModule) and m.cfg.weight is not None}
    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for k, v in _plain_state(model).items():
            v = v.detach().float().cpu()
            if k not in quantized:
                tensors[k] = v.contiguous()
                continue
            q, scale = quantize(v, cfg.weight, cfg.group_size)
            tensors[f"{k}.q"] = pack_int4(q) if cfg.weight == "int4" else q.contiguous()
            tensors[f"{k}.scale"] = scale.contiguous()
    return tensors, meta


def export_packed(model: GPT2, path: str | os.PathLike, precision: str | None = None,
                  cfg: QuantConfig | None = None) -> Path:
    """Write the packed checkpoint (a file path, or a folder that gets `model-<precision>.safetensors`)."""
    tensors, meta = pack_model(model, precision, cfg)
    path = Path(path)
    if path.suffix != ".safetensors":
        path.mkdir(parents=True, exist_ok=True)
        path = path / packed_name(meta["precision"])
    with atomic_path(path) as tmp:  # never a half-written checkpoint under the real name
        save_file(tensors, str(tmp), metadata=meta)
    return path


def _metadata_object(meta: dict[str, str], key: str, path: str | os.PathLike) -> dict:
    """The JSON object a packed file's metadata holds under `key`, or one CheckpointError line naming the key."""
    if key not in meta:
        raise CheckpointError(f"{path}: metadata key {key!r} missing; a packed checkpoint names its model there")
    try:
        d = json.loads(meta[key])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: metadata {key!r} is not JSON ({e})") from e
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: metadata {key!r} is not a JSON object")
    return d


def load_packed(path: str | os.PathLike) -> GPT2:
    """A GPT2 from a packed file, computing exactly what the fake-quant model computed."""
    tensors, meta = read_safetensors(path)
    if meta.get("format") != FORMAT_TAG:
        raise CheckpointError(f"{path}: not a minigpt2 packed checkpoint (metadata format={meta.get('format')!r}, "
                              f"expected {FORMAT_TAG!r}); use minigpt2.checkpoint.load_model for HF files")
    precision = meta.get("precision")
    if precision not in PRECISIONS:
        raise CheckpointError(f"{path}: metadata precision={precision!r}, expected one of {PRECISIONS}")
    config_dict = _metadata_object(meta, "config", path)
    quant_dict = _metadata_object(meta, "quant", path) if "quant" in meta else None
    source = f"{path}: metadata"
    try:
        config = GPT2Config.from_hf_dict(config_dict, source=f"{source} 'config'")
        cfg = None if quant_dict is None else QuantConfig.from_dict(quant_dict, source=f"{source} 'quant'")
    except (ValueError, TypeError) as e:  # most lines name the file already; GPT2Config's own checks do not
        raise CheckpointError(str(e) if str(e).startswith(source) else f"{source} 'config': {e}") from e

    state: dict[str, torch.Tensor] = {}
    for k, v in tensors.items():
        if k.endswith(".scale"):
            continue
        if k.endswith(".q"):
            name = k[:-2]
            if cfg is None or f"{name}.scale" not in tensors:
                raise CheckpointError(f"{path}: key {k!r} has no matching {name}.scale or no quant config")
            q = unpack_int4(v) if cfg.weight == "int4" else v
            state[name] = dequantize(q, tensors[f"{name}.scale"])
        else:
            state[k] = v
    model = model_from_state(config, state, str(path))
    if cfg is not None and cfg.activations:
        # weights are already the quantized values; what remains is the run-time activation quantization
        quantize_model(model, QuantConfig(weight=None, activations=True, embeddings=False))
    return model


# ---- sizes ----

@dataclass
class SizeReport:
    """Parameter bytes by part, the safetensors header, and the file size, for one precision."""

    precision: str
    parts: dict[str, int]
    header_bytes: int
    quantized: str
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def param_bytes(self) -> int:
        return sum(self.parts.values())

    @property
    def file_bytes(self) -> int:
        return 8 + self.header_bytes + self.param_bytes


def _dtype_tag(dtype: torch.dtype) -> str:
    return {torch.float64: "F64", torch.float32: "F32", torch.bfloat16: "BF16", torch.int8: "I8",
            torch.uint8: "U8", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}[dtype]


def header_size(layout: dict[str, TensorSpec], metadata: dict[str, str]) -> int:
    """The safetensors JSON header length for this layout: compact JSON, tensors ordered by alignment then name,
    padded with spaces to a multiple of 8 (the format's rule)."""
    order = sorted(layout, key=lambda k: (-layout[k].dtype.itemsize, k))
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for k in order:
        spec = layout[k]
        header[k] = {"dtype": _dtype_tag(spec.dtype), "shape": list(spec.shape),
                     "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    n = len(json.dumps(header, separators=(",", ":")).encode())
    return n + (-n) % 8


def describe(precision: str, cfg: QuantConfig | None) -> str:
    if precision in DTYPE_PRECISIONS:
        return f"every tensor stored as {precision}"
    what = "linear weights" + (" + wte (tied LM head) + wpe" if cfg.embeddings else "")
    scales = f"fp32 scale per {cfg.group_size} inputs" if cfg.weight == "int4" else "fp32 scale per row"
    return f"{what} as {cfg.weight} ({scales}); biases, LayerNorm and the rest fp32"


def size_report(config: GPT2Config, precision: str, cfg: QuantConfig | None = None) -> SizeReport:
    """Sizes of the packed checkpoint of `config` at `precision`, computed from shapes (no allocation, no write)."""
    if precision not in DTYPE_PRECISIONS:
        cfg = cfg or QuantConfig.for_precision(precision)
    layout = packed_layout(config, precision, cfg)
    parts = {p: 0 for p in PARTS}
    scales = 0
    for k, spec in layout.items():
        parts[part_of(k)] += spec.nbytes
        scales += spec.nbytes if k.endswith(".scale") else 0
    meta = {"format": FORMAT_TAG, "precision": precision, "config": json.dumps(config.to_hf_dict())}
    if cfg is not None and precision not in DTYPE_PRECISIONS:
        meta["quant"] = cfg.to_json()
    return SizeReport(precision, parts, header_size(layout, meta), describe(precision, cfg),
                      extra={"scale_bytes": scales})
