"""Losses that read the LM head only where they need it."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lm_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
            ) -> torch.Tensor:
    """Mean next-token cross-entropy of hidden states under the (tied) LM head `weight`.

    hidden: (..., C) hidden states; weight: (V, C), e.g. `model.wte.weight`; targets: (...) token ids, with
    `ignore_index` where no loss is wanted (padding, prompt tokens). Equal to
    `F.cross_entropy(hidden @ weight.T, targets, ignore_index=ignore_index)`.
    """
    hidden = hidden.reshape(-1, hidden.size(-1))
    targets = targets.reshape(-1)
    return F.cross_entropy(F.linear(hidden, weight), targets, ignore_index=ignore_index)
