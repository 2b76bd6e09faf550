"""A speed piece for training on CPU: dropout masks drawn several times faster than torch draws them.

    use_cpu_dropout(model)   every `nn.Dropout` and `CausalSelfAttention` of `model` switches, in place

Switched on by `minigpt2.fast.for_training` (called by the application, on CPU); the model a reader meets in
`minigpt2.model` uses plain `nn.Dropout` and SDPA's `dropout_p`. `tests/minigpt2/fast/test_cpu_dropout.py` holds the pieces to
the plain ones.

Why it exists: GPT-2 fine-tunes with dropout 0.1 in 37 places (embeddings, every attention's probabilities, both
residual branches of every block). torch draws each mask with `bernoulli_`, which on CPU fills one element at a
time, on one thread, with a Mersenne twister draw per element (torch takes MKL's vectorised generator only on
Intel CPUs). On the 2-core AMD EPYC of docs/performance.md that was 8% of a 124M bf16 training step. Here one
64-bit random integer is cut into four 15-bit lanes, one per element: a quarter of the draws, and the comparison
runs vectorised.

What changes: an element is dropped when its lane is below round(p * 2^15), so the drop probability is p rounded
to a multiple of 2^-15 (0.1 becomes 0.1000061); kept values are scaled by 1 / (1 - that probability), so every
output's expectation is its input, as with `nn.Dropout`. The mask is kept for backward as one byte per element.
Masks come from torch's default CPU generator, so `torch.manual_seed` makes them repeat.

Attention's dropout sits inside SDPA, which on CPU with dropout runs its unfused math path anyway; training
attention is therefore written out here (scores, mask, softmax, dropout, values) with the cheap mask. At GPT-2's
training shapes this was also faster than SDPA (docs/performance.md). Everywhere else (CUDA, where dropout is
fused into the kernels; eval; `torch.compile`, which makes its own masks) the plain modules run.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model import CausalSelfAttention
from ..surgery import replace_module, take_over

LANES = 1 << 15  # each random lane is uniform over 0 .. 2^15 - 1


def _threshold(p: float) -> int:
    return round(p * LANES)


def _applies(x: torch.Tensor, p: float, training: bool = True) -> bool:
    """Whether the cheap mask runs: training on CPU, eager, and p not rounded to 0 or 1 (those go to torch)."""
    return (training and x.device.type == "cpu" and not torch.compiler.is_compiling()
            and 0 < _threshold(p) < LANES)


def dropout_mask(shape: torch.Size, p: float, device: torch.device | str = "cpu") -> tuple[torch.Tensor, float]:
    """A bool keep-mask of `shape` and the scale for kept values, for a drop probability p in (0, 1).

    The drop probability is p rounded to a multiple of 2^-15; the scale 1 / (1 - that) keeps expectations.
    """
    t = _threshold(p)
    if not 0 < t < LANES:
        raise ValueError(f"dropout_mask: p={p} rounds to {t}/{LANES}; expected a drop probability in (0, 1) that "
                         "does not round to 0 or 1 (cpu_dropout hands those to F.dropout)")
    n = math.prod(shape)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_()  # 63 random bits each
    lanes = bits.view(torch.int16)[:n].view(shape)  # four 16-bit lanes per draw; the top one has 15 random bits
    keep = lanes.bitwise_and_(LANES - 1) >= t
    return keep, LANES / (LANES - t)


class _MaskedDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep, scale = dropout_mask(x.shape, p, x.device)
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x.mul(keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None


def cpu_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`F.dropout(x, p, training)`, with the cheap mask where it applies (see the module docstring)."""
    if not _applies(x, p, training):
        return F.dropout(x, p, training)
    return _MaskedDropout.apply(x, p)


def attention_with_cpu_dropout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
                               is_causal: bool = False) -> torch.Tensor:
    """`F.scaled_dot_product_attention` of (B, nh, T, hs) tensors written out, its dropout by `cpu_dropout`.

    attn_mask: bool, True where a query may attend (broadcast to (B, nh, T, S)); is_causal: the causal mask.
    """
    if not _applies(q, dropout_p):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal)
    T, S = q.size(-2), k.size(-2)
    scores = (q * (1.0 / math.sqrt(q.size(-1)))) @ k.transpose(-2, -1)  # (B, nh, T, S)
    if is_causal:
        scores = scores.masked_fill_(torch.ones(T, S, dtype=torch.bool, device=q.device).triu_(1), float("-inf"))
    elif attn_mask is not None:
        scores = scores.masked_fill_(~attn_mask, float("-inf"))
    return cpu_dropout(scores.softmax(dim=-1), dropout_p) @ v


class CPUDropout(nn.Dropout):
    """An `nn.Dropout` drawing its mask with `cpu_dropout`: same p, same (absent) parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cpu_dropout(x, self.p, self.training)


class CPUDropoutAttention(CausalSelfAttention):
    """A `CausalSelfAttention` whose training attention is `attention_with_cpu_dropout`.

    Made from a `CausalSelfAttention`, whose layers it takes over (same parameters and state-dict keys).
    """

    def __init__(self, attn: CausalSelfAttention) -> None:
        take_over(self, attn)  # not CausalSelfAttention.__init__, which would build new layers

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                  is_causal: bool) -> torch.Tensor:
        if not _applies(q, self.dropout, self.training):
            return super().attention(q, k, v, mask, is_causal)
        return attention_with_cpu_dropout(q, k, v, attn_mask=mask, dropout_p=self.dropout, is_causal=is_causal)


def use_cpu_dropout(model: nn.Module) -> int:
    """Switch every plain `nn.Dropout` and `CausalSelfAttention` of `model` to the cheap-mask ones, in place.

    Returns how many modules were replaced; calling it again changes nothing. No parameter or state-dict key
    changes, and off the CPU, in eval and under `torch.compile` the plain forward runs.
    """
    plain = [(name, m) for name, m in model.named_modules()
             if type(m) is nn.Dropout or type(m) is CausalSelfAttention]
    for name, m in plain:
        new = CPUDropout(m.p) if type(m) is nn.Dropout else CPUDropoutAttention(m)
        new.train(m.training)
        replace_module(model, name, new)
    return len(plain)
