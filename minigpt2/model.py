"""GPT-2, as in "Language Models are Unsupervised Multitask Learners" (Radford et al., 2019).

    tokens ─► wte + wpe ─► N × Block ─► ln_f ─► hidden states ─► (LM head = wteᵀ, only where asked)

    Block:  x = x + attn(ln_1(x))        causal multi-head self-attention
            x = x + mlp(ln_2(x))         Linear(C, 4C) ─► GELU (tanh) ─► Linear(4C, C)

Parameter names follow the Hugging Face checkpoint (`wte`, `h.0.ln_1`, `mlp.c_fc`, ...). The one difference:
HF stores the query, key and value projections fused in one `c_attn` Conv1D; here they are three `nn.Linear`
layers (`attn.query`, `attn.key`, `attn.value`) so that LoRA and quantization can wrap each one separately.
`minigpt2.checkpoint` converts between the two layouts.

The model returns hidden states, not logits: a classifier needs one vector per sequence and the Quora cloze two
vocabulary columns, so `lm_head` is applied by the caller only where logits are really needed. For the same
reason `forward(..., at=positions)` returns one hidden state per row, and its last block computes only those (its
keys and values are needed everywhere, its attention output, projection and MLP at one position).

This file is the plain version. The speed pieces (`minigpt2.fast`) and the int8 decoder (`quant.int8_linear`)
put subclasses of these modules in their place from outside; this file knows nothing of them.
"""

from __future__ import annotations

import math
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import GPT2Config


class KVCache:
    """Pre-allocated keys and values of every layer, for incremental decoding.

    Buffers are (B, nh, max_len, hs); `length` counts the positions already written. Writing in place avoids the
    `torch.cat` per step and per layer that a growing cache would cost.
    """

    def __init__(self, config: GPT2Config, batch_size: int, max_len: int, device=None, dtype=None) -> None:
        if max_len > config.n_positions:
            raise ValueError(f"KV cache of {max_len} positions exceeds n_positions={config.n_positions}")
        shape = (batch_size, config.n_head, max_len, config.head_dim)
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new (B, nh, T, hs) keys/values after the cached ones; return all of them so far."""
        end = self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions requested, {self.max_len} allocated")
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: each of the n_head heads attends with its own C / n_head slice."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.query = nn.Linear(config.n_embd, config.n_embd)
        self.key = nn.Linear(config.n_embd, config.n_embd)
        self.value = nn.Linear(config.n_embd, config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)  # output projection
        self.dropout = config.dropout  # on the attention probabilities
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, is_causal: bool,
                cache: KVCache | None = None, layer: int = 0, at: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); with `at` (B,), the output (B, 1, C) of one query per row, at[b]."""
        B, T, C = x.shape
        q, k, v = self.project_qkv(x)  # (B, T, C) each
        if at is not None:
            q = rows_at(q, at)  # (B, 1, C): the one query wanted per row
        q, k, v = (t.view(B, t.size(1), self.n_head, -1).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nh, S, hs), S = cached + T
        y = self.attention(q, k, v, mask, is_causal)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, -1, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.query(x), self.key(x), self.value(x)  # (B, T, C) each

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                  is_causal: bool) -> torch.Tensor:
        """softmax(q kᵀ / √hs + mask) v per head, with dropout on the probabilities while training."""
        dropout_p = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)


def gelu(x: torch.Tensor) -> torch.Tensor:
    # GPT-2 uses the tanh approximation of GELU ("gelu_new" in HF); exact erf GELU would not match its logits.
    return F.gelu(x, approximate="tanh")


class MLP(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, is_causal: bool,
                cache: KVCache | None = None, layer: int = 0, at: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); with `at` (B,), only each row's output at position at[b], (B, 1, C)."""
        y = self.attn(self.ln_1(x), mask, is_causal, cache, layer, at)
        x = (x if at is None else rows_at(x, at)) + y
        x = x + self.mlp(self.ln_2(x))
        return x


def rows_at(x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """(B, T, C) -> (B, 1, C): each row's vector at its own position at[b]."""
    return x[torch.arange(x.size(0), device=x.device), at, None]


def attention_mask_for(attention_mask: torch.Tensor | None, T: int, start: int, device: torch.device,
                       at: torch.Tensor | None = None) -> tuple[torch.Tensor | None, bool]:
    """The SDPA mask for T new queries at positions start..start+T-1: causal AND not padding.

    Returns (mask, is_causal). Without padding the mask is left to SDPA's built-in causal path (`is_causal`),
    which is faster; a single new query with no padding needs no mask at all. With `at` (B,), the mask
    (B, 1, 1, S) of one query per row, at position start + at[b].
    """
    S = start + T
    if attention_mask is None and at is None:
        if start == 0:
            return None, T > 1
        if T == 1:
            return None, False
    if at is None:
        q_pos = torch.arange(start, S, device=device).view(1, 1, T, 1)
    else:
        q_pos = (start + at).view(-1, 1, 1, 1)
    k_pos = torch.arange(S, device=device)
    mask = k_pos <= q_pos  # (1, 1, T, S), or (B, 1, 1, S) with `at`
    if attention_mask is not None:
        keep = attention_mask[:, None, None, :S].to(device=device, dtype=torch.bool)  # (B, 1, 1, S)
        # A padding query would attend to nothing (softmax of all -inf = NaN): let it see itself. Its output is
        # never used, but NaNs would leak into gradients.
        mask = (mask & keep) | (k_pos == q_pos)
    return mask, False


class GPT2(nn.Module):
    """The GPT-2 transformer. `forward` returns the final hidden states; `lm_head` turns them into logits."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embedding, also the LM head
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)  # learned position embedding
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.apply(self._init_weights)
        # GPT-2 scales the init of the projections that write into the residual stream by 1/sqrt(2 * n_layer).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: KVCache | None = None,
                at: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (B, T, C) after the final LayerNorm; with `at`, only one per row, (B, C).

        input_ids: (B, T) token ids. attention_mask: (B, S) with 1 for real tokens and 0 for padding, where S
        counts the cached positions too. position_ids: (B, T); by default 0..T-1 after the cached positions,
        as in Hugging Face (so left-padded batches must pass their own, see `generate`). Hidden states at padding
        positions are unspecified. at: (B,) one index into T per row (a classifier's `last_token_index`): the
        hidden state there is all that is returned, and the last block computes no other.
        """
        B, T = input_ids.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.n_positions:
            raise ValueError(f"sequence of {start + T} tokens exceeds n_positions={self.config.n_positions}")
        if attention_mask is not None and cache is None and is_right_padded(attention_mask):
            # Causal attention never looks to the right, so right padding cannot reach a real token: SDPA's fast
            # causal path gives the same outputs at every real position (those at padding positions are unused).
            attention_mask = None
        elif attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # no padding at all
        if position_ids is None:
            position_ids = torch.arange(start, start + T, device=input_ids.device)[None]
        x = self.drop(self.wte(input_ids) + self.wpe(position_ids))  # (B, T, C)
        mask, is_causal = attention_mask_for(attention_mask, T, start, x.device)
        *body, last = self.h
        for i, block in enumerate(body):
            x = block(x, mask, is_causal, cache, i)
        if at is not None:  # one query per row in the last block
            mask, is_causal = attention_mask_for(attention_mask, T, start, x.device, at)
        x = last(x, mask, is_causal, cache, len(body), at)
        if cache is not None:
            cache.length += T
        return self.ln_f(x) if at is None else self.ln_f(x[:, 0])

    def lm_head(self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits over the vocabulary (tied to `wte`), or only over the columns `token_ids`.

        hidden: (..., C). Returns (..., vocab_size), or (..., len(token_ids)) when token_ids is given.
        """
        weight = self.wte.weight if token_ids is None else self.wte.weight[token_ids]
        return F.linear(hidden, weight)  # weight tying: the token-embedding table read backwards

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Full (B, T, vocab) logits of every position, as a language model's output is usually given.

        Large (B·T·50257 numbers): task code calls `lm_head` only on the positions and columns it needs.
        """
        return self.lm_head(self.forward(input_ids, attention_mask))

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def is_right_padded(attention_mask: torch.Tensor) -> bool:
    """True when every row of a (B, T) mask is ones followed by zeros (padding only at the end)."""
    return bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row of a (B, T) mask, right- or left-padded (the last 1 of the row;
    argmax takes the first of equal values, here the first 1 from the right)."""
    return attention_mask.size(1) - 1 - attention_mask.long().flip(1).argmax(dim=1)


def gather_last(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The hidden state (B, C) of the last real token of each sequence, right- or left-padded."""
    if attention_mask is None:
        return hidden[:, -1]
    idx = last_token_index(attention_mask)
    return hidden[torch.arange(hidden.size(0), device=hidden.device), idx]
