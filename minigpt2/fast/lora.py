"""A speed piece for LoRA training: the adapter layer as one hand-written autograd node, its frozen base cast once.

    use_fused_lora(model)   every `LoRALinear` of `model` becomes a `FusedLoRALinear`, in place

Switched on by `minigpt2.fast.for_training` (called by the application); the layer a reader meets in
`minigpt2.lora` is the plain `base(x) + scaling · B A x`. `tests/minigpt2/fast/test_lora_fused.py` holds the two together.

Why: the plain composition allocates a fresh (N, out) output for the adapter's product and, in backward, adds two
(N, in) input gradients into a third; the fused node adds both in place. Under autocast every step would cast the
frozen base weights again (autocast caches casts only within one autocast region, and only of trainable leaves):
`FusedLoRALinear` casts them once and keeps the copy while they are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..lora import LoRALinear
from ..surgery import replace_module, take_over


class FusedLoRALinear(LoRALinear):
    """A `LoRALinear` whose training forward is `fused_lora_linear` where that applies (see `fusable`).

    Made from a `LoRALinear`, whose base and adapters it takes over (same parameters and state-dict keys).
    """

    def __init__(self, layer: LoRALinear) -> None:
        take_over(self, layer)  # not LoRALinear.__init__, which would make new adapters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fusable:
            return super().forward(x)
        weight, bias = self._frozen_base_as(_compute_dtype(x))
        return fused_lora_linear(x, weight, bias, self.lora_A, self.lora_B, self.scaling)

    def _frozen_base_as(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The frozen base weight and bias in `dtype`, cast once and kept while they are unchanged.

        Under autocast every step would cast the frozen weights again (autocast caches casts only within one
        autocast region, and only of trainable leaves); the cast values are the same each time. The copy is
        dropped when the weight is replaced or changed in place (its version counter moves, e.g. `merge`).
        """
        weight, bias = self.base.weight, self.base.bias
        if weight.dtype == dtype:
            return weight, bias
        key = (weight.data_ptr(), weight._version, None if bias is None else (bias.data_ptr(), bias._version), dtype)
        cached = getattr(self, "_cast_cache", None)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, weight.to(dtype), None if bias is None else bias.to(dtype))
            self._cast_cache = cached
        return cached[1], cached[2]

    @property
    def fusable(self) -> bool:
        """True when forward can take `fused_lora_linear`: a frozen plain `nn.Linear` base, no adapter dropout,
        not merged, adapters training. Otherwise forward is `LoRALinear.forward`."""
        return (not self.merged and isinstance(self.dropout, nn.Identity) and self.mergeable
                and not self.base.weight.requires_grad
                and (self.base.bias is None or not self.base.bias.requires_grad)
                and torch.is_grad_enabled() and self.lora_A.requires_grad and self.lora_B.requires_grad)


def fused_lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_A: torch.Tensor,
                      lora_B: torch.Tensor, scaling: float) -> torch.Tensor:
    """`F.linear(x, weight, bias) + scaling * (x A^T) B^T` for a frozen weight and bias, as one autograd node.

    The same products as the plain composition, with fewer full-size tensors: the adapter's product is added into
    the base output in place (the plain sum allocates a fresh (N, out) output), and backward adds the
    adapter's input gradient into the base's in place (autograd would add two (N, in) gradients into a third).
    Under autocast every operand is cast to the autocast dtype, as autocast does for `linear` and `addmm`.
    """
    return _FusedLoRALinear.apply(x, weight, bias, lora_A, lora_B, scaling, _compute_dtype(x))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a linear layer computes in: autocast's where it is on, else the input's."""
    device_type = x.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype


class _FusedLoRALinear(torch.autograd.Function):
    """Forward and backward of `fused_lora_linear`; gradients for x, A and B only (the base is frozen)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_A: torch.Tensor,
                lora_B: torch.Tensor, scaling: float, dtype: torch.dtype) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):  # operands cast explicitly, like autocast would
            x2 = x.reshape(-1, x.size(-1)).to(dtype)
            w, a, b = weight.to(dtype), lora_A.to(dtype), lora_B.to(dtype)
            y = F.linear(x2, w, None if bias is None else bias.to(dtype))
            xa = x2 @ a.t()  # (N, r)
            y.addmm_(xa, b.t(), alpha=scaling)
        ctx.save_for_backward(x2, xa, w, a, b)
        ctx.scaling, ctx.shape, ctx.dtypes = scaling, x.shape, (x.dtype, lora_A.dtype, lora_B.dtype)
        return y.view(*x.shape[:-1], y.size(-1))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x2, xa, w, a, b = ctx.saved_tensors
        g = grad.reshape(-1, grad.size(-1)).to(w.dtype)
        with torch.autocast(g.device.type, enabled=False):
            grad_B = (g.t() @ xa).mul_(ctx.scaling) if ctx.needs_input_grad[4] else None  # (out, r)
            g_xa = (g @ b).mul_(ctx.scaling)  # (N, r): the gradient reaching x A^T
            grad_A = g_xa.t() @ x2 if ctx.needs_input_grad[3] else None  # (r, in)
            grad_x = None
            if ctx.needs_input_grad[0]:
                grad_x = (g @ w).addmm_(g_xa, a).view(ctx.shape).to(ctx.dtypes[0])
        return (grad_x, None, None, None if grad_A is None else grad_A.to(ctx.dtypes[1]),
                None if grad_B is None else grad_B.to(ctx.dtypes[2]), None, None)


def use_fused_lora(model: nn.Module) -> int:
    """Replace every plain `LoRALinear` of `model` by a `FusedLoRALinear`, in place; returns how many.

    Calling it again changes nothing; the outputs and gradients are those of the plain layers.
    """
    plain = [name for name, m in model.named_modules() if type(m) is LoRALinear]
    for name in plain:
        replace_module(model, name, FusedLoRALinear(model.get_submodule(name)))
    return len(plain)
