"""Losses that read the LM head only where they need it.

The language-model loss makes the largest tensors of a training step: for 8 x 128 tokens the logits over GPT-2's
50,257 words take 206 MB, `F.cross_entropy` keeps a same-sized log-softmax for backward, and backward builds
same-sized gradients. `lm_loss` never holds more than one chunk of rows of logits:

    for each chunk of rows:   logits = h @ Wᵀ ─► loss += logsumexp(logits) - logits[target]
                              dlogits = (softmax(logits) - onehot(target)) / n      (the CE gradient, in place)
                              dh = dlogits @ W,   dW += dlogitsᵀ @ h

The chunk's softmax is built in the chunk's own storage (max, subtract, exp, sum: no second vocabulary-sized
tensor, unlike `torch.logsumexp`), and its normalisation 1 / sum is applied to the (rows, C) operands of the two
products rather than to the (rows, V) chunk.

Both gradients are computed in the forward pass, while the chunk's logits are at hand, and handed to autograd in
the backward pass (the trick of Liger-Kernel's fused linear cross-entropy). Rows whose target is `ignore_index`
(padding, prompt tokens) are dropped before the head, so they cost nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Rows per chunk are chosen so one chunk of fp32 logits holds about this many elements (128 MB for 32M, i.e. 667
# rows of GPT-2's vocabulary). Every chunk reads and writes the whole (V, C) weight gradient once, so smaller
# chunks save little memory and cost time: on 2 CPU cores, loss + backward over 8 x 127 rows took 0.96x the
# reference's time in chunks of 667 rows, but 1.15x in chunks of 166.
CHUNK_ELEMENTS = 32 * 1024 * 1024


def lm_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
            ) -> torch.Tensor:
    """Mean next-token cross-entropy of hidden states under the (tied) LM head `weight`.

    hidden: (..., C) hidden states; weight: (V, C), e.g. `model.wte.weight`; targets: (...) token ids, with
    `ignore_index` where no loss is wanted (padding, prompt tokens). Equal to
    `F.cross_entropy(hidden @ weight.T, targets, ignore_index=ignore_index)` (see `lm_loss_reference`), but the
    logits are computed chunk by chunk and never stored whole.
    """
    chunk_rows = max(1, CHUNK_ELEMENTS // weight.size(0))
    return chunked_lm_loss(hidden, weight, targets, ignore_index, chunk_rows)


def lm_loss_reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
                      ) -> torch.Tensor:
    """The plain version of `lm_loss`: full logits, then `F.cross_entropy` (the tests' referee)."""
    hidden = hidden.reshape(-1, hidden.size(-1))
    return F.cross_entropy(F.linear(hidden, weight), targets.reshape(-1), ignore_index=ignore_index)


def chunked_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                    chunk_rows: int = 256) -> torch.Tensor:
    """`lm_loss` with an explicit number of rows per chunk of logits."""
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"lm_loss: hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} disagree; "
                         "expected hidden (..., C) and targets (...)")
    if weight.dim() != 2 or weight.size(1) != hidden.size(-1):
        raise ValueError(f"lm_loss: weight {tuple(weight.shape)} must be (V, C) with C = {hidden.size(-1)}")
    if chunk_rows < 1:
        raise ValueError(f"lm_loss: chunk_rows must be >= 1, got {chunk_rows}")
    hidden = hidden.reshape(-1, hidden.size(-1))
    targets = targets.reshape(-1)
    # under no_grad (evaluation) the gradients are not computed at all
    return _ChunkedCrossEntropy.apply(hidden, weight, targets, ignore_index, chunk_rows, torch.is_grad_enabled())


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Mean CE of `hidden @ weight.T` against `targets`, with its gradients computed chunk by chunk up front."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int,
                chunk_rows: int, grad_enabled: bool) -> torch.Tensor:
        keep = (targets != ignore_index).nonzero().squeeze(1)  # rows that carry a loss
        h, t = hidden.index_select(0, keep), targets.index_select(0, keep)
        n = h.size(0)
        want_dh, want_dw = grad_enabled and ctx.needs_input_grad[0], grad_enabled and ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h, dtype=torch.float32) if want_dh else None
        grad_w = None
        total = torch.zeros((), device=hidden.device, dtype=torch.float32)
        w32, h32 = weight.float(), h.float()  # no copies in fp32; gradients are accumulated in fp32
        for s in range(0, n, chunk_rows):
            h_c, t_c = h32[s:s + chunk_rows], t[s:s + chunk_rows]
            logits = F.linear(h[s:s + chunk_rows], weight).float()  # (rows, V): the only vocabulary-sized tensor
            # Every step below works in the chunk's own storage: no second (rows, V) tensor is ever allocated.
            shift = logits.amax(dim=-1, keepdim=True)
            target = logits.gather(1, t_c[:, None])
            e = logits.sub_(shift).exp_()  # exp(logits - max): softmax before normalisation
            sumexp = e.sum(dim=-1, keepdim=True)
            total += (sumexp.log() + shift - target).sum()  # logsumexp - target logit, per row
            if not (want_dh or want_dw):
                continue
            # d CE / d logits = e / sumexp - onehot(target). Subtracting sumexp at the target makes that
            # (e - sumexp * onehot) / sumexp, and the row scale 1 / sumexp is applied to the (rows, C) operands of
            # the products instead of the (rows, V) chunk. The mean's 1 / n is applied in backward.
            e[torch.arange(e.size(0), device=e.device), t_c] -= sumexp.squeeze(1)
            inv = sumexp.reciprocal_()
            if want_dh:
                grad_h[s:s + chunk_rows] = (e @ w32).mul_(inv)
            if want_dw:
                scaled = h_c * inv
                grad_w = e.t() @ scaled if grad_w is None else grad_w.addmm_(e.t(), scaled)
        if want_dh and n != hidden.size(0):
            grad_h = torch.zeros_like(hidden, dtype=torch.float32).index_copy_(0, keep, grad_h)
        if want_dw and grad_w is None:
            grad_w = torch.zeros_like(weight, dtype=torch.float32)  # every target ignored
        ctx.n = n
        ctx.grads = (grad_h, grad_w)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total / n  # 0/0 = nan when every target is ignored, as F.cross_entropy gives

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_h, grad_w = ctx.grads
        ctx.grads = None  # free them as soon as autograd has them
        scale = grad_loss / max(ctx.n, 1)  # no rows: zero gradients (the loss itself is nan)
        if grad_h is not None:
            grad_h = grad_h.mul_(scale).to(ctx.dtypes[0])
        if grad_w is not None:
            grad_w = grad_w.mul_(scale).to(ctx.dtypes[1])
        return grad_h, grad_w, None, None, None, None
