"""A speed piece: the LM loss computed a chunk of rows at a time, with its gradients fused into the forward.

`chunked_lm_loss` equals `minigpt2.losses.lm_loss` (full logits, then `F.cross_entropy`) in value and gradients;
tests/minigpt2/test_losses.py compares them in fp32 and under bf16 autocast. `minigpt2.fast.for_training` puts
`ChunkedLMLoss` in the place of every `minigpt2.losses.LMLoss` (the sonnet task's loss), and bench/bench_core.py's
minigpt2 side uses it. Why it exists: the LM loss makes the
largest tensors of a training step. For 8 x 128 tokens the logits over GPT-2's 50,257 words take 206 MB,
`F.cross_entropy` keeps a same-sized log-softmax for backward, and backward builds same-sized gradients.
`chunked_lm_loss` never holds more than one chunk of rows of logits:

    for each chunk of rows:   logits = h @ Wᵀ ─► loss += logsumexp(logits) - logits[target]
                              dlogits = (softmax(logits) - onehot(target)) / n      (the CE gradient, in place)
                              dh = dlogits @ W,   dW += dlogitsᵀ @ h

The chunk's softmax is built in the chunk's own storage (max, subtract, exp, sum: no second vocabulary-sized
tensor, unlike `torch.logsumexp`), 32 rows at a time so that its passes run in cache, and its normalisation
1 / sum is applied to the (rows, C) operands of the two products rather than to the (rows, V) chunk.

Both gradients are computed in the forward pass, while the chunk's logits are at hand, and handed to autograd in
the backward pass (the trick of Liger-Kernel's fused linear cross-entropy). Rows whose target is `ignore_index`
(padding, prompt tokens) are dropped before the head, so they cost nothing.

Under autocast (bf16 on CUDA or CPU) the three vocabulary-sized products run in the autocast dtype, as
`F.linear` would under autocast, while the softmax statistics (max, exp, sum, log), the loss sum and the
gradient accumulators stay fp32: each block of bf16 logits is taken to fp32, and its gradient written back in
bf16. The function switches autocast off inside and casts explicitly, so every operand's dtype is chosen here
rather than by autocast's per-op rules (which mixed bf16 and fp32 in `addmm_`).
"""

from __future__ import annotations

import torch

from ..losses import LMLoss

# Rows per chunk are chosen so one chunk of fp32 logits holds about this many elements (128 MB for 32M, i.e. 667
# rows of GPT-2's vocabulary). Every chunk reads and writes the whole (V, C) weight gradient once, so smaller
# chunks save little memory and cost time (docs/performance.md has the measurement).
CHUNK_ELEMENTS = 32 * 1024 * 1024
# The softmax statistics of a chunk are taken this many rows at a time (6.4 MB of fp32 logits at GPT-2's
# vocabulary), so that the passes over them run in cache (docs/performance.md).
BLOCK_ROWS = 32


def chunked_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                    chunk_rows: int | None = None) -> torch.Tensor:
    """`minigpt2.losses.lm_loss`, computed `chunk_rows` rows of logits at a time (default: `CHUNK_ELEMENTS` / V).

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
        chunk_rows = max(1, CHUNK_ELEMENTS // weight.size(0))
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
        # One function on purpose: the dtypes chosen here, the buffers shared across chunks and the three products
        # of each chunk are checked against each other line by line; split apart, they would be harder to check.
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
        # Later chunks reuse the first chunk's storage: a fresh tensor this large would be new pages from the
        # operating system each time, and faulting them in costs about as much as a pass over them.
        logits_buf = product_buf = None
        for s in range(0, n, chunk_rows):
            h_c, t_c = h32[s:s + chunk_rows], t[s:s + chunk_rows]
            # (rows, V), in the product's dtype: the chunk's only vocabulary-sized tensor
            h_rows = h_logits[s:s + chunk_rows]
            if logits_buf is None:
                logits = logits_buf = h_rows @ w_logits.t()
            else:
                logits = torch.mm(h_rows, w_logits.t(), out=logits_buf[:h_rows.size(0)])
            grads = want_dh or want_dw
            # With gradients, `e` holds exp(logits - max) - sumexp * onehot(target) in the products' dtype: the CE
            # gradient e / sumexp - onehot(target) times sumexp; the row scale inv = 1 / sumexp is applied to the
            # (rows, C) operands of the products instead of the (rows, V) chunk. The mean's 1 / n is applied in
            # backward. `e` is the chunk itself when its dtype is the products' (fp32, or bf16 under autocast).
            e = logits if logits.dtype == mm or not grads else torch.empty_like(logits, dtype=mm)
            inv = torch.empty(logits.size(0), 1, device=logits.device)
            for b in range(0, logits.size(0), BLOCK_ROWS):
                rows = slice(b, b + BLOCK_ROWS)
                total += _ce_block(logits[rows], t_c[rows], e[rows] if grads else None, inv[rows])
            if not grads:
                continue
            if want_dh:
                grad_h[s:s + chunk_rows] = (e @ w_mm).float().mul_(inv)
            if want_dw:
                scaled = (h_c * inv).to(mm)
                if grad_w is None:
                    grad_w = (e.t() @ scaled).float()
                elif mm == torch.float32:
                    grad_w.addmm_(e.t(), scaled)
                else:  # each chunk's product in bf16, their sum in fp32
                    product_buf = torch.mm(e.t(), scaled, out=product_buf)
                    grad_w += product_buf
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


def _ce_block(logits: torch.Tensor, targets: torch.Tensor, e: torch.Tensor | None, inv: torch.Tensor
              ) -> torch.Tensor:
    """Sum over a block of rows of logsumexp(logits) - logits[target], in fp32.

    With `e` (the block's rows of the gradient tensor, any dtype), write exp(logits - max) - sumexp at the target
    into it, and 1 / sumexp into `inv`. A block is small enough to stay in cache, so the max, exp and sum passes
    below do not stream the whole chunk from memory, and a bf16 chunk needs no fp32 copy of itself.
    """
    x = logits.float()  # the block itself in fp32 (its storage is overwritten), else a small fp32 copy
    shift = x.amax(dim=-1, keepdim=True)
    target = x.gather(1, targets[:, None])
    x = x.sub_(shift).exp_()  # exp(logits - max): the softmax before normalisation
    sumexp = x.sum(dim=-1, keepdim=True)
    loss = (sumexp.log() + shift - target).sum()
    if e is not None:
        x[torch.arange(x.size(0), device=x.device), targets] -= sumexp.squeeze(1)
        torch.reciprocal(sumexp, out=inv)
        if x.data_ptr() != e.data_ptr():
            e.copy_(x)
    return loss


class ChunkedLMLoss(LMLoss):
    """An `LMLoss` computed by `chunked_lm_loss`: the same value and gradients."""

    def forward(self, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return chunked_lm_loss(hidden, weight, targets)
