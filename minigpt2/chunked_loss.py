"""A speed piece: the LM loss computed a chunk of rows at a time, with its gradients fused into the forward.

`chunked_lm_loss` equals `minigpt2.losses.lm_loss` (full logits, then `F.cross_entropy`) in value and gradients;
tests/test_losses.py compares them in fp32 and under bf16 autocast. The sonnet task trains with it
(`tasks.sonnet.SonnetLM`), and bench/bench_core.py's minigpt2 side uses it. Why it exists: the LM loss makes the
largest tensors of a training step. For 8 x 128 tokens the logits over GPT-2's 50,257 words take 206 MB,
`F.cross_entropy` keeps a same-sized log-softmax for backward, and backward builds same-sized gradients.
`chunked_lm_loss` never holds more than one chunk of rows of logits:

    for each chunk of rows:   logits = h @ Wᵀ ─► loss += logsumexp(logits) - logits[target]
                              dlogits = (softmax(logits) - onehot(target)) / n      (the CE gradient, in place)
                              dh = dlogits @ W,   dW += dlogitsᵀ @ h

The chunk's softmax is built in the chunk's own storage (max, subtract, exp, sum: no second vocabulary-sized
tensor, unlike `torch.logsumexp`), and its normalisation 1 / sum is applied to the (rows, C) operands of the two
products rather than to the (rows, V) chunk.

Both gradients are computed in the forward pass, while the chunk's logits are at hand, and handed to autograd in
the backward pass (the trick of Liger-Kernel's fused linear cross-entropy). Rows whose target is `ignore_index`
(padding, prompt tokens) are dropped before the head, so they cost nothing.

Under autocast (bf16 on CUDA or CPU) the three vocabulary-sized products run in the autocast dtype, as
`F.linear` would under autocast, while the softmax statistics (max, exp, sum, log), the loss sum and the
gradient accumulators stay fp32. The function switches autocast off inside and casts explicitly, so every
operand's dtype is chosen here rather than by autocast's per-op rules (which mixed bf16 and fp32 in `addmm_`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Rows per chunk are chosen so one chunk of fp32 logits holds about this many elements (128 MB for 32M, i.e. 667
# rows of GPT-2's vocabulary). Every chunk reads and writes the whole (V, C) weight gradient once, so smaller
# chunks save little memory and cost time (docs/performance.md has the measurement).
CHUNK_ELEMENTS = 32 * 1024 * 1024
# Under autocast with a frozen head (LoRA, evaluation) chunks are a quarter of that: a bf16 chunk holds bf16 copies
# beside its fp32 logits, and with no weight gradient to accumulate, 167-row bf16 chunks took no longer than
# 667-row ones (docs/performance.md). In fp32, small chunks are slower even then, so they keep the full size.
FROZEN_AUTOCAST_DIVISOR = 4


def chunked_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                    chunk_rows: int | None = None) -> torch.Tensor:
    """`minigpt2.losses.lm_loss`, computed `chunk_rows` rows of logits at a time (default: `CHUNK_ELEMENTS` / V,
    a quarter of that under autocast when `weight` gets no gradient).

    hidden: (..., C) hidden states; weight: (V, C), e.g. `model.wte.weight`; targets: (...) token ids, with
    `ignore_index` where no loss is wanted (padding, prompt tokens).
    """
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"chunked_lm_loss: hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} disagree; "
                         "expected hidden (..., C) and targets (...)")
    if weight.dim() != 2 or weight.size(1) != hidden.size(-1):
        raise ValueError(f"chunked_lm_loss: weight {tuple(weight.shape)} must be (V, C) with C = {hidden.size(-1)}")
    device_type = hidden.device.type
    amp_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    if chunk_rows is None:
        elements = CHUNK_ELEMENTS
        if amp_dtype is not None and not (weight.requires_grad and torch.is_grad_enabled()):
            elements //= FROZEN_AUTOCAST_DIVISOR
        chunk_rows = max(1, elements // weight.size(0))
    if chunk_rows < 1:
        raise ValueError(f"chunked_lm_loss: chunk_rows must be >= 1, got {chunk_rows}")
    hidden = hidden.reshape(-1, hidden.size(-1))
    targets = targets.reshape(-1)
    # under no_grad (evaluation) the gradients are not computed at all
    return _ChunkedCrossEntropy.apply(hidden, weight, targets, ignore_index, chunk_rows, torch.is_grad_enabled(),
                                      amp_dtype)


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Mean CE of `hidden @ weight.T` against `targets`, with its gradients computed chunk by chunk up front."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int,
                chunk_rows: int, grad_enabled: bool, amp_dtype: torch.dtype | None) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):  # dtypes are chosen explicitly below
            return _ChunkedCrossEntropy._forward(ctx, hidden, weight, targets, ignore_index, chunk_rows,
                                                 grad_enabled, amp_dtype)

    @staticmethod
    def _forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int,
                 chunk_rows: int, grad_enabled: bool, amp_dtype: torch.dtype | None) -> torch.Tensor:
        keep = (targets != ignore_index).nonzero().squeeze(1)  # rows that carry a loss
        h, t = hidden.index_select(0, keep), targets.index_select(0, keep)
        n = h.size(0)
        want_dh, want_dw = grad_enabled and ctx.needs_input_grad[0], grad_enabled and ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h, dtype=torch.float32) if want_dh else None
        grad_w = None
        total = torch.zeros((), device=hidden.device, dtype=torch.float32)
        h32 = h.float()  # no copy in fp32
        # `mm` is the dtype of the two gradient products: the autocast dtype, else fp32 (gradients of a bf16 model
        # are then computed from fp32 copies). The logits product runs in the autocast dtype, else in the inputs'.
        mm = amp_dtype or torch.float32
        w_mm, h_mm = weight.to(mm), h.to(mm)  # no copies when the dtype already matches
        w_logits, h_logits = (w_mm, h_mm) if amp_dtype is not None else (weight, h)
        for s in range(0, n, chunk_rows):
            h_c, t_c = h32[s:s + chunk_rows], t[s:s + chunk_rows]
            # (rows, V): the only vocabulary-sized fp32 tensor; the softmax statistics below are taken in fp32
            logits = F.linear(h_logits[s:s + chunk_rows], w_logits).float()
            # Every step below works in the chunk's own storage: no second fp32 (rows, V) tensor is allocated.
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
            e_mm = e.to(mm)  # a bf16 copy under autocast; the chunk itself in fp32
            if want_dh:
                grad_h[s:s + chunk_rows] = (e_mm @ w_mm).float().mul_(inv)
            if want_dw:
                scaled = (h_c * inv).to(mm)
                if grad_w is None:
                    grad_w = (e_mm.t() @ scaled).float()
                elif mm == torch.float32:
                    grad_w.addmm_(e_mm.t(), scaled)
                else:  # each chunk's product in bf16, their sum in fp32
                    grad_w += e_mm.t() @ scaled
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
        return grad_h, grad_w, None, None, None, None, None
