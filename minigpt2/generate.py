"""Autoregressive generation with a KV cache: greedy, temperature, top-k and top-p sampling, batched prompts.

Prompts of different lengths are left-padded so that every row's next token sits in the last column; each row's
positions count from its own first real token, so padding changes nothing but the batch shape.
"""

from __future__ import annotations

from typing import Callable

import torch

from .model import GPT2, KVCache
from .tokenizer import EOT_ID


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of (B, V) logits; temperature 0 means greedy (argmax)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        # drop a token when the tokens ranked above it already hold top_p of the mass (keeps at least one)
        drop = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        choice = torch.multinomial(sorted_probs, 1, generator=generator)
        return order.gather(-1, choice).squeeze(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: GPT2, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, eos_id: int | None = EOT_ID,
             stop: Callable[[list[int]], bool] | None = None, seed: int | None = None) -> list[list[int]]:
    """Continue each prompt; returns only the new tokens of each (EOS included when generated).

    A row stops at `eos_id`, when `stop(new_tokens)` says so, or after `max_new_tokens`; the loop ends once
    every row has stopped. `seed` makes sampling reproducible.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt, and every prompt at least one token")
    device = model.wte.weight.device
    B, longest = len(prompts), max(len(p) for p in prompts)
    max_new_tokens = min(max_new_tokens, model.config.n_positions - longest)
    if max_new_tokens <= 0:
        raise ValueError(f"prompt of {longest} tokens leaves no room within n_positions={model.config.n_positions}")
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)

    pad = eos_id if eos_id is not None else 0
    ids = torch.full((B, longest), pad, dtype=torch.long, device=device)
    mask = torch.zeros((B, longest + max_new_tokens), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p):] = torch.tensor(p, device=device)
        mask[i, longest - len(p):] = 1
    padded = bool((mask[:, :longest] == 0).any())
    position_ids = (mask[:, :longest].cumsum(-1) - 1).clamp(min=0)
    next_pos = position_ids[:, -1:] + 1

    model_was_training = model.training
    model.eval()
    cache = KVCache(model.config, B, longest + max_new_tokens, device=device, dtype=model.wte.weight.dtype)
    hidden = model(ids, attention_mask=mask[:, :longest] if padded else None,
                   position_ids=position_ids, cache=cache)
    out: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    for step in range(max_new_tokens):
        logits = model.lm_head(hidden[:, -1])  # (B, V): only the last position is ever needed
        token = sample_next(logits, temperature, top_k, top_p, generator)
        for i, t in enumerate(token.tolist()):
            if done[i]:
                continue
            out[i].append(t)
            if t == eos_id or (stop is not None and stop(out[i])):
                done[i] = True
        if all(done) or step == max_new_tokens - 1:
            break
        mask[:, longest + step] = 1
        hidden = model(token[:, None], attention_mask=mask[:, :longest + step + 1] if padded else None,
                       position_ids=next_pos + step, cache=cache)
    model.train(model_was_training)
    return out
