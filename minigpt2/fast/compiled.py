"""`torch.compile` (inductor) of the transformer blocks, for the training steps only (`finetune --compile`).

The application switches it in (`app.speed.for_training`) and hands `CompiledBlocks(module).active` to
`minigpt2.train.train` as the context its training steps run in; evaluation and generation run eager.
tests/minigpt2/fast/test_compile.py holds the compiled blocks to eager's logits and training step.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import os
import tempfile
from typing import Iterator

import torch
import torch.nn as nn

from ..model import Block


def separate_inductor_cache() -> None:
    """Where `ATEN_CPU_CAPABILITY` caps the instruction set and no `TORCHINDUCTOR_CACHE_DIR` is chosen, point inductor
    at a cache folder of that capability's own: `<tmp>/torchinductor_<user>-<capability>`.

    torch 2.13's on-disk inductor cache does not tell CPU kernels built for one vector ISA from another's: after a
    process capped at AVX2 compiled a graph, an uncapped (AVX-512) process on the same machine loaded its kernel
    and computed wrong numbers or aborted, and the other way round (docs/performance.md, "Fifth round"). Call it
    before the first compilation of a process: inductor fixes its folder then.
    """
    capability = os.environ.get("ATEN_CPU_CAPABILITY")
    if not capability or "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (containers)
        user = f"uid_{getattr(os, 'getuid', lambda: 'unknown')()}"
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tempfile.gettempdir(),
                                                         f"torchinductor_{user}-{capability.lower()}")


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
        separate_inductor_cache()
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
