"""Autoregressive generation with a KV cache: greedy, temperature, top-k and top-p sampling, batched prompts.

Prompts of different lengths are left-padded so that every row's next token sits in the last column; each row's
positions count from its own first real token, so padding changes nothing but the batch shape.

`python -m minigpt2.generate` is the command line (`app/generate.py`): sources, prompts, streaming, `--sonnet`.
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


@torch.no_grad()
def generate(model: GPT2, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, eos_id: int | None = EOT_ID,
             stop: Callable[[list[int]], bool] | None = None, seed: int | None = None,
             on_token: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """Continue each prompt; returns only the new tokens of each (EOS included when generated).

    A row stops at `eos_id`, when `stop(new_tokens)` says so, or after `max_new_tokens`; the loop ends once
    every row has stopped. `seed` makes sampling reproducible. `on_token(row, token_id)` is called for each new
    token as soon as it is sampled (e.g. to stream text to a terminal), in the order they are appended.
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
    # A bf16 or fp16 model on CPU keeps fp32 keys and values, and attends in fp32: torch's CPU attention kernel is
    # several times slower in bf16 at decoding shapes (docs/performance.md), and fp32 rounds nothing away.
    dtype = model.wte.weight.dtype
    cache_dtype = torch.float32 if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16) else dtype
    cache = KVCache(model.config, B, longest + max_new_tokens, device=device, dtype=cache_dtype)
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
            if on_token is not None:
                on_token(i, t)
            if t == eos_id or (stop is not None and stop(out[i])):
                done[i] = True
        if all(done) or step == max_new_tokens - 1:
            break
        mask[:, longest + step] = 1
        hidden = model(token[:, None], attention_mask=mask[:, :longest + step + 1] if padded else None,
                       position_ids=next_pos + step, cache=cache)
    model.train(model_was_training)
    return out


if __name__ == "__main__":
    # `python -m minigpt2.generate`: the command lives in the application; the library only points at it.
    from app.generate import main

    main()
