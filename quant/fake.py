"""Fake-quant wrappers: the layer keeps full-precision weights and computes with their quantised copy.

`FakeQuantLinear.from_linear(linear, cfg)` wraps (the original stays as `.base`), `.to_linear()` unwraps, and
`enabled = False` makes the wrapper an exact identity. Gradients reach `.base.weight` through the
straight-through estimator, which is what quantization-aware fine-tuning (QAFT) trains.

LoRA composes on top: `LoRALinear(FakeQuantLinear(...))` is a quantised frozen base plus a high-precision adapter
(apply fake-quant first, then LoRA); the adapter only needs `in_features` / `out_features` from its base.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import QuantConfig
from .formats import check_group_size, fake_quantize, fake_quantize_activations


class FakeQuantLinear(nn.Module):
    """`F.linear(fq_act(x), fq(W), b)` around an `nn.Linear` kept as `.base`."""

    def __init__(self, base: nn.Linear, cfg: QuantConfig, name: str = "linear") -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"{name}: FakeQuantLinear wraps an nn.Linear, got {type(base).__name__}")
        if cfg.weight is not None:
            check_group_size(base.in_features, cfg.weight, cfg.group_size, where=name)
        self.base = base
        self.cfg = cfg
        self.enabled = True

    @classmethod
    def from_linear(cls, linear: nn.Linear, cfg: QuantConfig, name: str = "linear") -> "FakeQuantLinear":
        return cls(linear, cfg, name)

    def to_linear(self) -> nn.Linear:
        """The wrapped full-precision layer (with whatever QAFT trained into it)."""
        return self.base

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def quantized_weight(self) -> torch.Tensor:
        """The weight this layer computes with: fake-quantised (STE gradient) or, if disabled / weight=None, W."""
        if not self.enabled or self.cfg.weight is None:
            return self.base.weight
        return fake_quantize(self.base.weight, self.cfg.weight, self.cfg.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.base(x)
        if self.cfg.activations:
            x = fake_quantize_activations(x)
        return F.linear(x, self.quantized_weight(), self.base.bias)

    def extra_repr(self) -> str:
        return f"{self.cfg}, enabled={self.enabled}"


class FakeQuantEmbedding(nn.Module):
    """An `nn.Embedding` (kept as `.base`) whose table is quantised per row (per token vector).

    `.weight` is the fake-quantised table, so the tied LM head (`model.lm_head`, `lm_loss(h, model.wte.weight)`)
    computes with the quantised matrix too. A lookup quantises only the rows it gathers: rows are quantised
    independently, so that equals gathering from the quantised table.
    """

    def __init__(self, base: nn.Embedding, cfg: QuantConfig, name: str = "embedding") -> None:
        super().__init__()
        if not isinstance(base, nn.Embedding):
            raise TypeError(f"{name}: FakeQuantEmbedding wraps an nn.Embedding, got {type(base).__name__}")
        if cfg.weight is None:
            raise ValueError(f"{name}: embedding quantization needs a weight format, got weight=None")
        check_group_size(base.embedding_dim, cfg.weight, cfg.group_size, where=name)
        self.base = base
        self.cfg = cfg
        self.enabled = True

    @property
    def num_embeddings(self) -> int:
        return self.base.num_embeddings

    @property
    def embedding_dim(self) -> int:
        return self.base.embedding_dim

    @property
    def weight(self) -> torch.Tensor:
        if not self.enabled:
            return self.base.weight
        return fake_quantize(self.base.weight, self.cfg.weight, self.cfg.group_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.base.weight)
        if not self.enabled:
            return rows
        flat = rows.reshape(-1, self.embedding_dim)
        return fake_quantize(flat, self.cfg.weight, self.cfg.group_size).reshape(rows.shape)

    def extra_repr(self) -> str:
        return f"{self.cfg}, enabled={self.enabled}"


class FakeQuantActivation(nn.Module):
    """Per-token activation fake-quant of a module's output (kept as `.base`), e.g. of `ln_f`.

    The tied LM head is `F.linear(hidden, wte.weight)` inside `GPT2.lm_head`, out of a wrapper's reach; quantising
    the final hidden states where they are made gives the head the same quantised input every other linear layer
    gets, which is what the int8 decoder's head computes.
    """

    def __init__(self, base: nn.Module, cfg: QuantConfig) -> None:
        super().__init__()
        self.base = base
        self.cfg = cfg
        self.enabled = True

    def forward(self, *args, **kwargs) -> torch.Tensor:
        y = self.base(*args, **kwargs)
        return fake_quantize_activations(y) if self.enabled else y

    def extra_repr(self) -> str:
        return f"{self.cfg}, enabled={self.enabled}"
