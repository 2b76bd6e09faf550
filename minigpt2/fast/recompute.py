"""A memory saving for training: the MLP's GELU output is recomputed in backward instead of kept.

    recompute_gelu_in_backward(model)   every plain `MLP` of `model` becomes a `RecomputeGELUMLP`, in place

Switched on by `minigpt2.fast.for_training` (called by the application); the model a reader meets in
`minigpt2.model` is the plain `c_proj(gelu(c_fc(x)))`, and `tests/minigpt2/test_model.py` checks that both give identical
gradients.

Why it saves memory: the GELU output (N, 4C) is saved by autograd for the weight gradient of `c_proj` (or of its
LoRA adapter), while its input, which GELU's own backward keeps anyway, is the same size. Recomputing the GELU
from that input in backward costs one elementwise pass and frees one (N, 4C) tensor per layer.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn as nn

from ..model import MLP, gelu
from ..surgery import replace_module


class RecomputeGELUMLP(MLP):
    """An `MLP` computing the same numbers whose backward recomputes the GELU output instead of keeping it.

    Made from an `MLP`, whose layers it takes over (same parameters and state-dict keys). Without gradients (eval,
    generation) and under `torch.compile` (which makes such choices itself) it runs the plain `MLP.forward`.
    """

    def __init__(self, mlp: MLP) -> None:
        nn.Module.__init__(self)  # not MLP.__init__, which would build new layers: this one takes over `mlp`'s
        self.c_fc, self.c_proj, self.dropout = mlp.c_fc, mlp.c_proj, mlp.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() or torch.compiler.is_compiling():
            return super().forward(x)
        h = self.c_fc(x)
        a = gelu(h)
        with recompute_in_backward(a, lambda: gelu(h)):
            return self.dropout(self.c_proj(a))


def recompute_gelu_in_backward(model: nn.Module) -> int:
    """Replace every plain `MLP` in `model` by a `RecomputeGELUMLP`, in place; returns how many were replaced.

    Calling it again changes nothing. The outputs and gradients are those of the plain model.
    """
    plain = [name for name, m in model.named_modules() if type(m) is MLP]
    for name in plain:
        replace_module(model, name, RecomputeGELUMLP(model.get_submodule(name)))
    return len(plain)


@contextmanager
def recompute_in_backward(tensor: torch.Tensor, recompute: Callable[[], torch.Tensor]) -> Iterator[None]:
    """Inside the block, whatever autograd would save of `tensor` is recomputed in backward instead.

    `recompute()` must return a tensor laid out like `tensor`, with the same values. Saved tensors are told apart
    by their storage: `tensor` itself or any view of it (e.g. reshaped to 2-D by a linear layer) is replaced by its
    size, stride and offset, and rebuilt from `recompute()` when backward asks for it.
    """
    storage = tensor.untyped_storage().data_ptr()

    def pack(saved: torch.Tensor):
        if saved.untyped_storage().data_ptr() == storage:
            return saved.size(), saved.stride(), saved.storage_offset()
        return saved

    def unpack(packed):
        if isinstance(packed, torch.Tensor):
            return packed
        return recompute().as_strided(*packed)

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield
