"""The straight-through estimator (STE): round in the forward pass, pretend it was the identity in the backward.

Rounding has zero gradient almost everywhere, so quantization-aware training passes the gradient straight through
the rounding — but only where the clamp did not act: a weight or activation the clamp cut off does not change the
output when nudged, so its gradient is zero. "Inside" is decided on the rounded value, round(x / scale) in [lo, hi]:
the absmax weight divides to 7.0000005 rather than 7 in floating point, and a mask on the unrounded value would
silently zero the gradient of the very largest weights (torchao's QAT hit that bug). The boundary counts as inside.
"""

from __future__ import annotations

import math

import torch


def round_to_grid(y: torch.Tensor, grid: torch.dtype | None) -> torch.Tensor:
    """Round to the nearest integer (grid None; ties to even) or to the nearest value of a float8 dtype."""
    if grid is None:
        return torch.round(y)
    return y.to(grid).to(y.dtype)


def past_grid(y: torch.Tensor, grid: torch.dtype) -> torch.Tensor:
    """Where rounding y to the nearest value of a float8 dtype goes past its largest finite value.

    A cast cannot say: torch saturates float8_e4m3fn casts at +-448 (so 1e6 "rounds" to 448). The top binade's
    spacing is 2^floor(log2 max) * eps; halfway past the largest value lies the edge (E4M3: 448 + 32 / 2 = 464, a
    tie that rounds to the even 448, so only beyond it). float8_e5m2 overflows to +-inf instead (its tie at
    61440 included), which the comparisons with lo and hi already count as outside.
    """
    fi = torch.finfo(grid)
    step = 2.0 ** math.floor(math.log2(fi.max)) * fi.eps
    return y.abs() > fi.max + step / 2


class FakeQuantSTE(torch.autograd.Function):
    """forward: round(clamp(x / scale, lo, hi)) · scale;  backward: dx = dy where lo <= round(x / scale) <= hi, else 0.

    `scale`, `lo` and `hi` broadcast against `x` (per channel, per group, per token) and get no gradient: scales
    come from the data (absmax) and are recomputed every step.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, lo: torch.Tensor | float, hi: torch.Tensor | float,
                grid: torch.dtype | None) -> torch.Tensor:
        y = x / scale
        r = round_to_grid(y, grid)  # NaN compares False, so outside
        inside = (r >= lo) & (r <= hi)
        if grid is not None:  # beyond the float8 range is outside, though an E4M3 cast saturates onto its edge
            inside &= ~past_grid(y, grid)
        ctx.save_for_backward(inside)
        return round_to_grid(torch.clamp(y, lo, hi), grid) * scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def fake_quant_ste(x: torch.Tensor, scale: torch.Tensor, lo: torch.Tensor | float, hi: torch.Tensor | float,
                   grid: torch.dtype | None = None) -> torch.Tensor:
    """round(clamp(x / scale, lo, hi)) · scale, differentiable in `x` through the straight-through estimator."""
    return FakeQuantSTE.apply(x, scale, lo, hi, grid)
