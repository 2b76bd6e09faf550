"""Autoregressive generation with a KV cache: greedy, temperature, top-k and top-p sampling, batched prompts.

Prompts of different lengths are left-padded so that every row's next token sits in the last column; each row's
positions count from its own first real token, so padding changes nothing but the batch shape.

This is the library; `python -m minigpt2.generate` is the command (`app.generate`: sources, prompts, streaming,
`--sonnet`). `minigpt2.fast.for_inference` makes an inference copy that samples the same distribution faster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .model import GPT2, KVCache
from .tokenizer import EOT_ID

# The course's sampling settings for the sonnet task (the finetune command line's defaults).
TEMPERATURE, TOP_P, MAX_NEW_TOKENS = 1.2, 0.9, 400


@dataclass(frozen=True)
class Sampling:
    """How a task samples with `generate`: temperature (0: greedy), nucleus mass, token budget, base seed. A run's
    config.json holds it as a JSON object of these four fields (`dataclasses.asdict`)."""

    temperature: float = TEMPERATURE
    top_p: float = TOP_P
    max_new_tokens: int = MAX_NEW_TOKENS
    seed: int = 0


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of (B, V) logits; temperature 0 means greedy (argmax).

    top_k keeps the k most likely tokens; top_p the most likely tokens that together hold top_p of the
    probability (the nucleus, Holtzman et al., 2019); with both, top-p applies to what top-k kept.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    probs, ids = torch.sort(probs, dim=-1, descending=True)  # (B, V), most likely first
    if top_k is not None:
        probs[:, top_k:] = 0.0
        probs = probs / probs.sum(dim=-1, keepdim=True)
    if top_p is not None and top_p < 1.0:
        # drop a token when the tokens ranked above it already hold top_p (the most likely one always stays)
        probs[(probs.cumsum(dim=-1) - probs) >= top_p] = 0.0
    choice = torch.multinomial(probs, 1, generator=generator)  # (B, 1): a rank; multinomial renormalises
    return ids.gather(-1, choice).squeeze(-1)


def _longest(prompts: list[list[int]]) -> int:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt, and every prompt at least one token")
    return max(len(p) for p in prompts)


def left_pad(prompts: list[list[int]], pad: int, max_new_tokens: int, device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The prompts as one left-padded (B, T) batch: token ids, an attention mask with room for the new tokens
    (B, T + max_new_tokens; 1 = real), and each row's positions counted from its own first real token."""
    B, longest = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, longest), pad, dtype=torch.long, device=device)
    mask = torch.zeros((B, longest + max_new_tokens), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p):] = torch.tensor(p, device=device)
        mask[i, longest - len(p):] = 1
    position_ids = (mask[:, :longest].cumsum(-1) - 1).clamp(min=0)
    return ids, mask, position_ids


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
    device = model.wte.weight.device
    B, longest = len(prompts), _longest(prompts)
    max_new_tokens = min(max_new_tokens, model.config.n_positions - longest)
    if max_new_tokens <= 0:
        raise ValueError(f"prompt of {longest} tokens leaves no room within n_positions={model.config.n_positions}")
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None

    ids, mask, position_ids = left_pad(prompts, eos_id if eos_id is not None else 0, max_new_tokens, device)
    padded = bool((mask[:, :longest] == 0).any())
    next_pos = position_ids[:, -1:] + 1

    model_was_training = model.training
    model.eval()
    # An inference copy of `minigpt2.fast.for_inference` carries its own sampler and KV-cache dtype.
    sample = getattr(model, "sample_next", sample_next)
    cache_dtype = getattr(model, "kv_cache_dtype", model.wte.weight.dtype)
    cache = KVCache(model.config, B, longest + max_new_tokens, device=device, dtype=cache_dtype)
    hidden = model(ids, attention_mask=mask[:, :longest] if padded else None,
                   position_ids=position_ids, cache=cache)
    out: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    for step in range(max_new_tokens):
        logits = model.lm_head(hidden[:, -1])  # (B, V): only the last position is ever needed
        token = sample(logits, temperature, top_k, top_p, generator)
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

