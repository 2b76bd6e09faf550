"""The language-model loss, plain: logits under the tied head, then cross-entropy.

    logits = hidden @ wteᵀ   (..., V)   ─►   mean over kept positions of  -log softmax(logits)[target]

Positions whose target is `ignore_index` (padding, prompt tokens) carry no loss. This builds the whole
(..., 50257) logits tensor. `LMLoss` is the same as a module, so that a task holds its loss where the speed pieces
can reach it: `minigpt2.fast.for_training` puts `minigpt2.fast.chunked_loss.ChunkedLMLoss` in its place, which
computes the same value and gradients a chunk of rows at a time (see docs/performance.md).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def lm_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
            ) -> torch.Tensor:
    """Mean next-token cross-entropy of hidden states under the (tied) LM head `weight`.

    hidden: (..., C) hidden states; weight: (V, C), e.g. `model.wte.weight`; targets: (...) token ids, with
    `ignore_index` where no loss is wanted.
    """
    logits = F.linear(hidden.reshape(-1, hidden.size(-1)), weight)
    return F.cross_entropy(logits, targets.reshape(-1), ignore_index=ignore_index)


class LMLoss(nn.Module):
    """`lm_loss` as a module without parameters (a task's loss slot; no state-dict keys)."""

    def forward(self, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return lm_loss(hidden, weight, targets)
