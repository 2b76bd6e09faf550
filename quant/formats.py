"""Number formats as pure functions: quantize to (values, scales), dequantize back, and the fake-quant round trip.

All formats are symmetric with a data-driven absmax scale, so the largest |w| of each scale block lands exactly on
the grid's edge and nothing saturates; the clamp is there for safety (and for the STE's zero-gradient rule).

| format    | grid (value / scale)                        | scale block                               |
|-----------|---------------------------------------------|-------------------------------------------|
| int8      | integers in [-127, 127] (-128 unused)       | one per output channel (row)              |
| int4      | integers in [-7, 7] (-8 unused; symmetric)  | one per `group_size` inputs of each row   |
| fp8_e4m3  | torch.float8_e4m3fn values in [-448, 448]   | one per output channel                    |
| fp8_e5m2  | torch.float8_e5m2 values in [-57344, 57344] | one per output channel                    |

`fake_quantize(w) == dequantize(*quantize(w))` bit for bit: the same scale and grid are used, which is what makes
the packed checkpoint (`quant.export`) reproduce the fake-quant model exactly.
"""

from __future__ import annotations

import torch

from minigpt2.config import GPT2Config

from .config import DEFAULT_GROUP_SIZE, QuantSettingsError
from .ste import fake_quant_ste, round_to_grid

INT8_MAX = 127
INT4_MAX = 7
FP8_DTYPES = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
_EPS = 1e-12  # an all-zero block gets a tiny scale instead of a division by zero


def qmax(fmt: str) -> float:
    """The largest grid value of a format: 127, 7, or the float8 dtype's max (448 for E4M3, 57344 for E5M2)."""
    if fmt == "int8":
        return INT8_MAX
    if fmt == "int4":
        return INT4_MAX
    if fmt in FP8_DTYPES:
        return float(torch.finfo(FP8_DTYPES[fmt]).max)
    raise ValueError(f"unknown weight format {fmt!r}: expected one of int8, int4, {', '.join(FP8_DTYPES)}")


def check_group_size(in_features: int, fmt: str, group_size: int, where: str = "layer") -> None:
    """Raise (at construction, never silently skip) when INT4 groups do not tile a layer's input width."""
    if fmt == "int4" and in_features % group_size:
        raise QuantSettingsError(f"{where}: INT4 group_size={group_size} does not divide in_features={in_features}; "
                         f"pick a divisor of {in_features}")


def check_group_size_fits(config: "GPT2Config", group_size: int, fmt: str = "int4") -> None:
    """Check INT4 groups against every quantized layer of a GPT-2 of `config`, before any model is built: the
    linear layers read n_embd or 4 * n_embd features, the embeddings n_embd."""
    if group_size < 2 or group_size % 2:
        raise QuantSettingsError(f"INT4 group_size={group_size}: expected an even integer >= 2 (two values share a "
                                 "byte)")
    for width, where in ((config.n_embd, f"{config.n_embd}-wide inputs (attention, mlp.c_fc, embeddings)"),
                         (4 * config.n_embd, f"mlp.c_proj's {4 * config.n_embd}-wide inputs")):
        check_group_size(width, fmt, group_size, where=where)


def _blocks(w: torch.Tensor, fmt: str, group_size: int) -> torch.Tensor:
    """(N, K) -> (N, K//g, g) for int4 groups, else (N, 1, K): one scale per last-dim block."""
    N, K = w.shape
    check_group_size(K, fmt, group_size, where=f"tensor of shape {tuple(w.shape)}")
    g = group_size if fmt == "int4" else K
    return w.reshape(N, K // g, g)


def _scale(blocks: torch.Tensor, fmt: str) -> torch.Tensor:
    return blocks.detach().abs().amax(dim=-1, keepdim=True).clamp(min=_EPS) / qmax(fmt)  # (N, nb, 1)


def _grid(fmt: str) -> torch.dtype | None:
    return FP8_DTYPES.get(fmt)


def quantize(w: torch.Tensor, fmt: str, group_size: int = DEFAULT_GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2-D weight (N, K) -> (values, scales).

    values: (N, K) int8 for int8/int4 (int4 values in [-7, 7], one per byte here; `pack_int4` halves that) or the
    float8 dtype; scales: (N, K // group_size) for int4, else (N, 1), in w's dtype.
    """
    blocks = _blocks(w, fmt, group_size)
    scale = _scale(blocks, fmt)
    m = qmax(fmt)
    y = round_to_grid(torch.clamp(blocks.detach() / scale, -m, m), _grid(fmt))
    q = y.to(FP8_DTYPES[fmt]) if fmt in FP8_DTYPES else y.to(torch.int8)
    return q.reshape(w.shape), scale.squeeze(-1)


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """values (N, K) and scales (N, nb) -> (N, K) weights in the scales' dtype (or `dtype`)."""
    N, K = q.shape
    nb = scale.shape[-1]
    w = q.reshape(N, nb, K // nb).to(scale.dtype) * scale[..., None]
    w = w.reshape(N, K)
    return w if dtype is None else w.to(dtype)


def fake_quantize(w: torch.Tensor, fmt: str, group_size: int = DEFAULT_GROUP_SIZE) -> torch.Tensor:
    """dequantize(quantize(w)) with a straight-through gradient: what the quantized layer really computes with."""
    blocks = _blocks(w, fmt, group_size)
    m = qmax(fmt)
    return fake_quant_ste(blocks, _scale(blocks, fmt), -m, m, _grid(fmt)).reshape(w.shape)


# fbgemm on AVX2 multiplies uint8 x int8 pairs into int16 with saturation (vpmaddubsw): 2 · 255 · 127 overflows,
# so PyTorch's x86 dynamic linear must run with `reduce_range=True`, i.e. activations on [0, 127], not [0, 255]
# (without it, per-channel int8 weights give visibly wrong outputs). The simulation uses the same 127 steps.
ACT_LEVELS = 127


def fake_quantize_activations(x: torch.Tensor, levels: int = ACT_LEVELS) -> torch.Tensor:
    """Dynamic per-token asymmetric activations (unsigned with a zero point), as fbgemm's dynamic linear does.

    Each token's range [min(x, 0), max(x, 0)] is split into `levels` steps; the zero point z = round(-min / scale)
    makes 0 exact. With q = round(x / scale) clamped to [-z, levels - z], the value is q · scale.
    """
    lo = x.detach().amin(dim=-1, keepdim=True).clamp(max=0)
    hi = x.detach().amax(dim=-1, keepdim=True).clamp(min=0)
    scale = ((hi - lo) / levels).clamp(min=_EPS)
    zero = torch.round(-lo / scale).clamp(0, levels)
    return fake_quant_ste(x, scale, -zero, levels - zero)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """(N, K) int8 values in [-7, 7] -> (N, K // 2) uint8: two values per byte, each stored as q + 8 in [1, 15]."""
    if q.shape[-1] % 2:
        raise ValueError(f"pack_int4: last dimension {q.shape[-1]} is odd; two values share a byte")
    if q.numel() and (q.min() < -INT4_MAX or q.max() > INT4_MAX):
        raise ValueError(f"pack_int4: values must lie in [-{INT4_MAX}, {INT4_MAX}]")
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack_int4`: (N, K // 2) uint8 -> (N, K) int8."""
    lo = (packed & 0x0F).to(torch.int8) - 8
    hi = (packed >> 4).to(torch.int8) - 8
    return torch.stack((lo, hi), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)
