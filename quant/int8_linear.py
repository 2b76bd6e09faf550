"""Fast int8 decoding on CPU: PyTorch's fbgemm dynamic int8 linear, swapped in for the model's linear layers.

`Int8Linear` stores the int8 per-channel weight prepacked for fbgemm; at run time each token's activations are
quantized to [0, 127] (uint8 with `reduce_range`, see `formats.ACT_LEVELS` for why) with their own scale and zero
point, multiplied in int8 x uint8 -> int32, and rescaled to fp32.
This is what `QuantConfig(weight="int8", activations=True)` simulates, so a QAFT-trained model runs as trained.

Why this kernel: at batch 1 decoding reads every weight once per token, so it is memory-bound, and int8 weights are
4x fewer bytes. Of the int8 paths PyTorch offers on CPU, fbgemm's dynamic linear was the fastest for the 50257 x 768
LM head; `torch._weight_int8pack_mm` (weight-only) is fast only with bf16 activations, and `torch._int_mm` has no
fast CPU path for a single row. `python -m bench.bench_quant` measures the int8 decoder against fp32.

    to_int8_decoder(model)   a copy of a GPT2 (plain, or fake-quantized int8) whose linear layers and tied LM head
                             run on int8 kernels; `minigpt2.generation.generate` uses it unchanged.

The copy is an `Int8GPT2` (a `GPT2` whose `lm_head` runs the int8 head) with int8 modules in its layers' places;
the model's code does not know about int8.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from minigpt2.model import GPT2, CausalSelfAttention
from minigpt2.surgery import replace_module, unwrap_compiled

from .config import QuantConfig
from .fake import FakeQuantEmbedding, FakeQuantLayerNorm, FakeQuantLinear
from .formats import fake_quantize_activations, quantize


def _prepack(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
    """fbgemm's packed form of int8 values (N, K) with fp32 per-row scales (N,)."""
    N = q.size(0)
    with warnings.catch_warnings():  # quantized-tensor constructors warn that they are deprecated (torch >= 2.10)
        warnings.simplefilter("ignore")
        # Private but exact: the public torch.quantize_per_channel is deprecated alike and would re-round q * scale.
        qw = torch._make_per_channel_quantized_tensor(q, scale.double(), torch.zeros(N, dtype=torch.long), 0)
        return torch.ops.quantized.linear_prepack(qw, None if bias is None else bias.detach().float())


class Int8Linear(nn.Module):
    """y = dequant(int8(x) @ W_int8^T) + b on fbgemm, with x quantized per token at run time."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        if q.dtype != torch.int8 or q.dim() != 2:
            raise ValueError(f"Int8Linear needs a 2-D int8 weight, got {q.dtype} of shape {tuple(q.shape)}")
        self.out_features, self.in_features = q.shape
        self._packed = _prepack(q, scale.reshape(-1).float(), bias)

    @staticmethod
    def quantized_parts(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The int8 weight (N, K), per-row scales (N, 1) and bias of an `nn.Linear` or an int8 `FakeQuantLinear`."""
        if isinstance(layer, FakeQuantLinear):
            if layer.cfg.weight != "int8" or not layer.enabled:
                raise ValueError(f"Int8Linear runs int8 weights; this layer simulates {layer.cfg.weight!r} "
                                 f"(enabled={layer.enabled})")
        q, scale = quantize(layer.weight.detach().float(), "int8")
        return q, scale, layer.bias

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        """Quantize a full-precision layer (int8, absmax per output channel) and pack it."""
        return cls(*cls.quantized_parts(linear))

    @classmethod
    def from_fake_quant(cls, layer: FakeQuantLinear) -> "Int8Linear":
        """The fast version of an int8 fake-quant layer: the same int8 weights and scales."""
        return cls(*cls.quantized_parts(layer))

    @classmethod
    def stacked(cls, layers: list[nn.Module]) -> "Int8Linear":
        """One layer computing `torch.cat([layer(x) for layer in layers], -1)` of int8 layers sharing an input."""
        parts = [cls.quantized_parts(layer) for layer in layers]
        bias = None
        if any(b is not None for _, _, b in parts):  # a layer without bias adds zeros
            bias = torch.cat([b.detach().float() if b is not None else torch.zeros(q.size(0)) for q, _, b in parts])
        return cls(torch.cat([q for q, _, _ in parts]), torch.cat([s for _, s, _ in parts]), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fbgemm picks one scale for the whole input; one row at a time makes that per token, as QAFT simulates.
        # Decoding feeds one row, which goes straight to the kernel (it takes any leading shape): the reshapes
        # around 49 calls a token cost 4% of an int8 token (docs/performance.md, "Sixth round").
        if x.dim() > 1 and x.numel() == self.in_features:
            return torch.ops.quantized.linear_dynamic(x.float(), self._packed, True)
        rows = x.reshape(-1, self.in_features).float()
        y = torch.cat([torch.ops.quantized.linear_dynamic(row, self._packed, True) for row in rows.split(1)])
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 fbgemm dynamic"


class Int8FusedQKVAttention(CausalSelfAttention):
    """Inference attention whose query, key and value projections run as one int8 product, `self.qkv`, of width 3C.

    Made from a `CausalSelfAttention` (its `c_proj` taken over as it is); the attention itself is the model's.
    Stacking the three int8 weights (and their per-row scales) changes no number: the three products share their
    input, so its per-token quantization is the same, and each output column has its own weight row and scale. One
    kernel call instead of three matters at batch 1, where each call costs about as much as its arithmetic.
    """

    def __init__(self, attn: CausalSelfAttention) -> None:
        nn.Module.__init__(self)  # not CausalSelfAttention.__init__, which would build new layers
        self.n_head, self.dropout = attn.n_head, 0.0  # inference: no dropout
        self.qkv = Int8Linear.stacked([attn.query, attn.key, attn.value])
        self.c_proj, self.resid_dropout = attn.c_proj, nn.Identity()

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv(x).split(self.qkv.out_features // 3, dim=-1)
        return q, k, v


class Int8GPT2(GPT2):
    """A `GPT2` whose LM head is an `Int8Linear` over the int8 copy of the `wte` table (`self.int8_head`).

    Made by `to_int8_decoder`. A call with `token_ids` (a few columns) takes the float path over the model's table,
    with the hidden states quantized per token as the int8 head would (so both paths agree).
    """

    int8_head: Int8Linear

    def lm_head(self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        if token_ids is None:
            return self.int8_head(hidden)
        return F.linear(fake_quantize_activations(hidden), self.wte.weight[token_ids])


def int8_head(table: torch.Tensor) -> Int8Linear:
    """The tied LM head as an `Int8Linear`: the `wte` table quantized to int8 per row."""
    q, scale = quantize(table.detach().float(), "int8")  # already on the int8 grid if wte was fake-quantized
    return Int8Linear(q, scale, None)


def _int8_layer(name: str, module: nn.Module) -> nn.Module | None:
    """The int8-decoder version of one layer, or None where it stays as it is."""
    if isinstance(module, FakeQuantLinear):
        return Int8Linear.from_fake_quant(module)
    if isinstance(module, nn.Linear):
        return Int8Linear.from_linear(module)
    if isinstance(module, FakeQuantEmbedding):
        if module.cfg.weight != "int8":
            raise ValueError(f"{name}: embedding simulates {module.cfg.weight!r}, not int8")
        plain = module.to_plain()
        plain.weight.copy_(module.weight)  # the fake-quant table, as a plain embedding
        return plain
    if isinstance(module, FakeQuantLayerNorm):
        return module.to_plain()  # the int8 head quantizes its input itself
    return None


@torch.no_grad()
def to_int8_decoder(model: GPT2) -> GPT2:
    """An inference copy of `model` on int8 kernels: every linear layer and the tied LM head.

    Each block's query, key and value layers become one stacked `Int8Linear` (`Int8FusedQKVAttention`), and the
    LM head an `Int8Linear` (the copy is an `Int8GPT2`).

    model: a plain fp32 GPT2 (quantized here: int8 per channel) or one fake-quantized with int8 weights (its
    trained weights are used). The token and position embeddings keep their (fake-quant, if so) values as fp32
    tables: a lookup reads one row, so their size does not slow decoding.
    """
    model = copy.deepcopy(unwrap_compiled(model)).float().eval()
    for block in model.h:
        attn = block.attn
        if all(isinstance(layer, nn.Linear) for layer in (attn.query, attn.key, attn.value)):
            block.attn = Int8FusedQKVAttention(attn)  # LoRA-wrapped projections are converted one by one below
    for name, module in list(model.named_modules()):
        int8 = _int8_layer(name, module)
        if int8 is not None:
            replace_module(model, name, int8)
    model.__class__ = Int8GPT2
    model.int8_head = int8_head(model.wte.weight)
    return model


def int8_decoder_config() -> QuantConfig:
    """The fake-quant config that simulates `to_int8_decoder` exactly: int8 weights and activations, int8 head."""
    return QuantConfig(weight="int8", activations=True, embeddings=True)
