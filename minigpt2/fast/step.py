"""The one-token decoding step with nothing but the weight products and the few ops around them.

A batch-1 decoding step of GPT-2 124M reads about 500 MB of fp32 weights; at 20-30 GB/s that is 15-25 ms, and
everything that is not a weight product is time added to the bound. `GPT2.forward` is written for any T: per
block it goes through five module calls, views and transposes the heads in and out, slices the cache through
`KVCache.update`, and calls dropout modules that do nothing at inference; a few hundred small ops per token
(docs/performance.md, "Decoding against the bandwidth bound", has the profile). For T = 1 most of that is not
needed: the heads of one position are a view, not a transpose; the new key and value are written straight into
the preallocated cache (`minigpt2.model.KVCache`, written in place); LayerNorm, GELU and the residual adds are
called as functions. On the fp32 copies' layers (`prepack.PackedLinear`, `prepack.SlabLinear`) the MLP's
GELU runs with the product: a oneDNN post-op, or in place right after MKL's.

    fast = with_one_token_step(model)   # a `GPT2` (or subclass: prepacked, int8) whose forward takes this path
                                        # for one new token on a KV cache, and `GPT2.forward`'s otherwise

`minigpt2.fast.for_inference` switches it in; `minigpt2.generation.generate` runs it unchanged. It computes what
`GPT2.forward` computes: the same ops on the same numbers, except where oneDNN fuses the GELU into a product. tests/minigpt2/fast/test_decode_step.py holds it to the plain path.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model import GPT2, MLP, Block, CausalSelfAttention, KVCache, attention_mask_for, gelu
from .prepack import PackedLinear, SlabLinear
from .recompute import RecomputeGELUMLP

# MLP classes whose inference forward is the plain MLP's: the recomputed GELU changes only the backward. A model
# that went through `for_training` must take the same step as the same weights loaded fresh, or a run's own
# predictions and their re-scoring by `evaluate` would differ.
_PLAIN_MLPS = (MLP, RecomputeGELUMLP)
# Layers whose `forward_gelu` is `gelu(forward(x))` with the GELU inside or right after the product.
_GELU_FUSED = (PackedLinear, SlabLinear)


class OneTokenStep:
    """Mixin for a `GPT2` class: `forward` of one token per row on a KV cache takes `one_token_forward`."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: KVCache | None = None,
                at: torch.Tensor | None = None) -> torch.Tensor:
        if cache is not None and input_ids.size(1) == 1 and not self.training and at is None:
            return one_token_forward(self, input_ids, attention_mask, position_ids, cache)
        return super().forward(input_ids, attention_mask, position_ids, cache, at)


_CLASSES: dict[type, type] = {}


def with_one_token_step(model: GPT2) -> GPT2:
    """`model` itself, its class made a subclass with `OneTokenStep` (once per class), where its blocks are the
    plain `Block` layout (any attention subclass and linear layers); otherwise `model` unchanged. In place: pass a
    copy (`for_inference` does)."""
    if isinstance(model, OneTokenStep) or not supports(model):
        return model
    cls = type(model)
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"OneTokenStep{cls.__name__}", (OneTokenStep, cls),
                             {"__module__": __name__, "__doc__": f"A `{cls.__name__}` with `OneTokenStep`."})
    model.__class__ = _CLASSES[cls]
    return model


def supports(model: nn.Module) -> bool:
    """True for a `GPT2` whose blocks are plain `Block`s of a `CausalSelfAttention` (or subclass) and a plain
    `MLP` (or the recomputed-GELU one), with plain `LayerNorm`s and embeddings: the layout `one_token_forward`
    walks."""
    if not isinstance(model, GPT2) or type(model.wte) is not nn.Embedding or type(model.wpe) is not nn.Embedding:
        return False
    return type(model.ln_f) is nn.LayerNorm and all(
        type(b) is Block and isinstance(b.attn, CausalSelfAttention) and type(b.mlp) in _PLAIN_MLPS
        and type(b.ln_1) is nn.LayerNorm and type(b.ln_2) is nn.LayerNorm for b in model.h)


def _layer_norm(x: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    return torch.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


# The step calls its layers' `forward` directly: `nn.Module.__call__` (hook checks) is a few microseconds a call,
# 73 calls a token; the layers of an inference copy carry no hooks.
def _linear_gelu(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if type(layer) in _GELU_FUSED:
        return layer.forward_gelu(x)
    return gelu(layer.forward(x))


def _linear_add(layer: nn.Module, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    # Not oneDNN's binary-add post-op: per call it measured 14% slower than the product and a separate add (the
    # GELU post-op 12% faster), 1 thread, 768 x 3072, docs/performance.md.
    return residual + layer.forward(x)


@torch.no_grad()
def one_token_forward(model: GPT2, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      position_ids: torch.Tensor | None, cache: KVCache) -> torch.Tensor:
    """`GPT2.forward` of (B, 1) `input_ids` on `cache` (written at `cache.length`, which then grows by one):
    the hidden states (B, 1, C) after the final LayerNorm. Inference only (no dropout, no gradients)."""
    B = input_ids.size(0)
    start = cache.length
    if start + 1 > model.config.n_positions:
        raise ValueError(f"sequence of {start + 1} tokens exceeds n_positions={model.config.n_positions}")
    if start + 1 > cache.max_len:
        raise ValueError(f"KV cache full: {start + 1} positions requested, {cache.max_len} allocated")
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None  # no padding: one query may see every cached position, no mask needed
    wpe = model.wpe.weight[start] if position_ids is None else F.embedding(position_ids, model.wpe.weight)
    x = F.embedding(input_ids, model.wte.weight) + wpe  # (B, 1, C)
    mask, _ = attention_mask_for(attention_mask, 1, start, x.device)  # None unless padded
    end = start + 1
    for i, block in enumerate(model.h):
        attn = block.attn
        nh = attn.n_head
        q, k, v = attn.project_qkv(_layer_norm(x, block.ln_1))  # (B, 1, C) each
        # One position: (B, 1, C) -> (B, nh, 1, hs) is a view; the cache slot takes the new key and value as they
        # are, in its own dtype.
        cache.k[i][:, :, start] = k.view(B, nh, -1)
        cache.v[i][:, :, start] = v.view(B, nh, -1)
        y = attn.attention(q.view(B, nh, 1, -1), cache.k[i][:, :, :end], cache.v[i][:, :, :end], mask, False)
        x = _linear_add(attn.c_proj, y.reshape(B, 1, -1), x)
        x = _linear_add(block.mlp.c_proj, _linear_gelu(block.mlp.c_fc, _layer_norm(x, block.ln_2)), x)
    cache.length = end
    return _layer_norm(x, model.ln_f)
