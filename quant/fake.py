"""Fake-quant layers: each keeps its full-precision weights and computes with their quantized copy.

    FakeQuantLinear(linear, cfg)        an nn.Linear computing F.linear(fq_act(x), fq(W), b)
    FakeQuantEmbedding(embedding, cfg)  an nn.Embedding whose table is quantized per row
    FakeQuantLayerNorm(norm, cfg)       an nn.LayerNorm whose output is quantized per token (the head's input)

Each is a subclass of the layer it replaces and takes over that layer's parameters (shared, not copied), so a
fake-quantized model has exactly the plain model's state-dict keys and parameter objects: checkpoints save, load
and export without unwrapping or renaming, and an optimizer built before `quantize_model` still holds the right
tensors. `to_plain()` gives the plain layer back (same parameters), and `enabled = False` makes the layer compute
exactly what the plain one does. Gradients reach the full-precision weights through the straight-through
estimator, which is what quantization-aware fine-tuning (QAFT) trains.

LoRA composes on top: `LoRALinear(FakeQuantLinear(...))` is a quantized frozen base plus a high-precision adapter
(apply fake-quant first, then LoRA); the adapter only needs `in_features` / `out_features` from its base.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import QuantConfig
from .formats import check_group_size, fake_quantize, fake_quantize_activations


class FakeQuantLinear(nn.Linear):
    """`F.linear(fq_act(x), fq(W), b)` with the full-precision W and b of the `nn.Linear` it was made from."""

    def __init__(self, linear: nn.Linear, cfg: QuantConfig, name: str = "linear") -> None:
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{name}: FakeQuantLinear is made from an nn.Linear, got {type(linear).__name__}")
        if cfg.weight is not None:
            check_group_size(linear.in_features, cfg.weight, cfg.group_size, where=name)
        # Built on the meta device (nothing allocated), then given the layer's own parameters.
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        self.weight, self.bias = linear.weight, linear.bias
        self.cfg = cfg
        self.enabled = True

    def to_plain(self) -> nn.Linear:
        """An `nn.Linear` holding this layer's full-precision parameters (with whatever QAFT trained into them)."""
        plain = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        plain.weight, plain.bias = self.weight, self.bias
        return plain

    def quantized_weight(self) -> torch.Tensor:
        """The weight this layer computes with: fake-quantized (STE gradient) or, if disabled / weight=None, W."""
        if not self.enabled or self.cfg.weight is None:
            return self.weight
        return fake_quantize(self.weight, self.cfg.weight, self.cfg.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.enabled and self.cfg.activations:
            x = fake_quantize_activations(x)
        return F.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.cfg}, enabled={self.enabled}"


class FakeQuantEmbedding(nn.Embedding):
    """An `nn.Embedding` whose table is quantized per row (per token vector).

    `.weight` is the table the model computes with: the fake-quantized one. GPT-2's LM head is tied to the token
    embedding and reads `wte.weight` (`model.lm_head`, `lm_loss(h, model.wte.weight)`), so it computes with the
    quantized matrix too, without knowing about quantization. The trained full-precision table is
    `latent_weight`; it is the registered parameter, so the state dict stores it under the plain key `weight`.
    A lookup quantizes only the rows it gathers: rows are quantized independently, so that equals gathering from
    the quantized table.
    """

    def __init__(self, embedding: nn.Embedding, cfg: QuantConfig, name: str = "embedding") -> None:
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(f"{name}: FakeQuantEmbedding is made from an nn.Embedding, "
                            f"got {type(embedding).__name__}")
        if cfg.weight is None:
            raise ValueError(f"{name}: embedding quantization needs a weight format, got weight=None")
        check_group_size(embedding.embedding_dim, cfg.weight, cfg.group_size, where=name)
        shape = (embedding.num_embeddings, embedding.embedding_dim)
        super().__init__(*shape, _weight=torch.empty(shape, device="meta"))  # a placeholder: nothing allocated
        self.cfg = cfg
        self.enabled = True
        self.register_parameter("weight", embedding.weight)

    @property
    def latent_weight(self) -> nn.Parameter:
        """The full-precision table (the parameter that trains and is saved)."""
        if "weight" not in self._parameters:  # only while nn.Embedding.__init__ registers it
            raise AttributeError("weight")
        return self._parameters["weight"]

    @property
    def weight(self) -> torch.Tensor:
        if not self.enabled:
            return self.latent_weight
        return fake_quantize(self.latent_weight, self.cfg.weight, self.cfg.group_size)

    def to_plain(self) -> nn.Embedding:
        """An `nn.Embedding` holding the full-precision table."""
        plain = nn.Embedding(self.num_embeddings, self.embedding_dim, device="meta")
        plain.weight = self.latent_weight
        return plain

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.latent_weight)
        if not self.enabled:
            return rows
        flat = rows.reshape(-1, self.embedding_dim)
        return fake_quantize(flat, self.cfg.weight, self.cfg.group_size).reshape(rows.shape)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.cfg}, enabled={self.enabled}"


class FakeQuantLayerNorm(nn.LayerNorm):
    """An `nn.LayerNorm` whose output is fake-quantized per token, as activations are: used for `ln_f`.

    The tied LM head is `F.linear(hidden, wte.weight)` inside `GPT2.lm_head`, not a linear layer that could quantize
    its own input; quantizing the final hidden states where they are made gives the head the same quantized input
    every other linear layer gets, which is what the int8 decoder's head computes.
    """

    def __init__(self, norm: nn.LayerNorm, cfg: QuantConfig, name: str = "layernorm") -> None:
        if not isinstance(norm, nn.LayerNorm):
            raise TypeError(f"{name}: FakeQuantLayerNorm is made from an nn.LayerNorm, got {type(norm).__name__}")
        super().__init__(norm.normalized_shape, eps=norm.eps, elementwise_affine=norm.elementwise_affine,
                         bias=norm.bias is not None, device="meta")
        self.weight, self.bias = norm.weight, norm.bias
        self.cfg = cfg
        self.enabled = True

    def to_plain(self) -> nn.LayerNorm:
        """An `nn.LayerNorm` holding the same parameters."""
        plain = nn.LayerNorm(self.normalized_shape, eps=self.eps, elementwise_affine=self.elementwise_affine,
                             bias=self.bias is not None, device="meta")
        plain.weight, plain.bias = self.weight, self.bias
        return plain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return fake_quantize_activations(y) if self.enabled else y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.cfg}, enabled={self.enabled}"
