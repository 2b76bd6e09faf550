"""`torch.compile` (inductor) of the transformer blocks, for the training steps only (`finetune --compile`).

The application switches it in (`app.speed.for_training`) and hands `CompiledBlocks(module).active` to
`minigpt2.train.train` as the context its training steps run in; evaluation and generation run eager.
tests/minigpt2/fast/test_compile.py holds the compiled blocks to eager's logits and training step.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import torch
import torch.nn as nn

from ..model import Block


class CompiledBlocks:
    """`torch.compile` (inductor) for the transformer blocks of `module`, switched on only inside `active()`.

    The blocks hold nearly all the work and have static shapes and control flow; one compiled `Block.forward`
    serves every block (their weights are its inputs). What surrounds them stays eager on purpose: GPT2.forward
    inspects the attention mask's values (is it right-padded?) to pick SDPA's causal path, which would break a
    whole-model graph at every batch, and the chunked LM loss is already a hand-fused autograd function with
    data-dependent row selection. Evaluation and generation (KV cache, changing lengths) run eager.
    """

    def __init__(self, module: nn.Module) -> None:
        self.blocks = [m for m in module.modules() if isinstance(m, Block)]
        self.forward = torch.compile(Block.forward)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The blocks run compiled inside this context and eager again after it."""
        for block in self.blocks:  # an instance attribute shadows the class's forward; deleting it restores it
            block.forward = functools.partial(self.forward, block)
        try:
            yield
        finally:
            for block in self.blocks:
                del block.forward
