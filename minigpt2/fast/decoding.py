"""Speed pieces for decoding: a sampler that never sorts the whole vocabulary, and fp32 attention for a bf16 model
on CPU.

`minigpt2.fast.for_inference` puts both on its inference copy (`model.sample_next`, `model.kv_cache_dtype`, and
`Fp32CacheAttention` in each block), where `minigpt2.generation.generate` picks them up; the sampler a reader meets
there is the plain sort-based one. `tests/minigpt2/fast/test_generate_fast.py` holds the two samplers to each other.

Why the sampler: top-k and top-p only ever keep the best-ranked tokens, so sampling can work on a short sorted
list of candidates instead of sorting all 50,257 probabilities at every step; and `multinomial` then draws among
the kept columns only (after a full sort it would draw a random number for all 50,257). It samples the same
distribution as the plain `sample_next`, though not the same tokens for a given seed (other random draws).

Why the fp32 cache: torch's CPU attention kernel is several times slower in bf16 at decoding shapes
(docs/performance.md); a bf16 or fp16 model on CPU therefore keeps fp32 keys and values and attends in fp32,
which rounds nothing away.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..model import CausalSelfAttention
from ..surgery import replace_module, take_over


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """`minigpt2.generation.sample_next`'s distribution without a full sort (see the module docstring)."""
    if temperature == 0:
        return logits.float().argmax(dim=-1)  # the same token; torch's argmax is faster over fp32
    logits = logits.float() / temperature
    # Top-k and top-p only ever keep the best-ranked tokens, so sampling works on a short sorted list of
    # candidates instead of sorting all 50,257 probabilities at every step.
    if top_k is not None and top_k < logits.size(-1):
        values, ids = torch.topk(logits, top_k, dim=-1)  # (B, k), best first
        probs = torch.softmax(values, dim=-1)  # = softmax of the logits with all but the top k at -inf
    elif top_p is not None and top_p < 1.0:
        probs, ids = nucleus_candidates(torch.softmax(logits, dim=-1), top_p)
    else:
        return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)
    if top_p is not None and top_p < 1.0:
        # drop a token when the tokens ranked above it already hold top_p of the mass (keeps at least one)
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        probs = probs.masked_fill(drop, 0.0)
        # Dropped tokens form the tail of each sorted row: sample among the columns that some row still keeps
        # (after a full sort, `multinomial` would otherwise draw a random number for all 50,257 of them).
        kept = int((~drop).sum(dim=-1).max())
        probs, ids = probs[:, :kept], ids[:, :kept]
    choice = torch.multinomial(probs, 1, generator=generator)  # (B, 1), an index into the candidates
    return ids.gather(-1, choice).squeeze(-1)


def nucleus_candidates(probs: torch.Tensor, top_p: float, first_try: int = 256
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The best-ranked tokens of each row of (B, V) `probs`, sorted, that surely include its top-p nucleus.

    Usually a few hundred tokens hold top_p of the mass; when every row's `first_try` best do, tokens beyond
    them would be dropped anyway, so the full sort is skipped. Returns (probabilities, token ids), both (B, n).
    """
    k = min(first_try, probs.size(-1))
    values, ids = torch.topk(probs, k, dim=-1)
    if k == probs.size(-1) or bool((values.sum(dim=-1) >= top_p).all()):
        return values, ids
    return torch.sort(probs, dim=-1, descending=True)


def kv_cache_dtype(weight_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype of the KV cache of a model with `weight_dtype` weights on `device`: fp32 for bf16/fp16 on CPU."""
    if device.type == "cpu" and weight_dtype in (torch.bfloat16, torch.float16):
        return torch.float32
    return weight_dtype


class Fp32CacheAttention(CausalSelfAttention):
    """A `CausalSelfAttention` that attends in the cache's dtype (fp32 keys and values for a bf16 model on CPU).

    Made from a `CausalSelfAttention`, whose layers it takes over (same parameters and state-dict keys).
    """

    def __init__(self, attn: CausalSelfAttention) -> None:
        take_over(self, attn)  # not CausalSelfAttention.__init__, which would build new layers

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                  is_causal: bool) -> torch.Tensor:
        return super().attention(q.to(k.dtype), k, v, mask, is_causal).to(q.dtype)


def attend_in_cache_dtype(model: nn.Module) -> int:
    """Replace every plain `CausalSelfAttention` of `model` by a `Fp32CacheAttention`, in place; returns how many.

    The CPU-dropout attention of a model switched for training counts as plain (its own part, the dropout, is off
    at inference); other subclasses (the int8 decoder's fused attention) keep their own forward.
    """
    from .cpu_dropout import CPUDropoutAttention

    plain = [name for name, m in model.named_modules() if type(m) in (CausalSelfAttention, CPUDropoutAttention)]
    for name in plain:
        new = Fp32CacheAttention(model.get_submodule(name))
        new.train(model.get_submodule(name).training)
        replace_module(model, name, new)
    return len(plain)
