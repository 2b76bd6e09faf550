"""Fast CPU inference: the linear layers and the LM head with their weights laid out once for the rows they take.

    fast = prepacked(model)            # an inference copy of a GPT2 on CPU (a `PackedGPT2`)
    generate(fast, prompts, 128)       # used as usual; `model` itself is untouched

`minigpt2.fast.for_inference` makes this copy where it applies; the application calls it.

Why: a decoding step multiplies a few rows of activations (one per sequence) by every weight matrix, so it is
bound by how fast the weights stream from memory. The BLAS call behind `F.linear` streams them well below the
memory's speed on such thin products (GPT-2's LM head at one row, for instance). oneDNN, bundled with PyTorch's
CPU builds, can lay each weight out for its kernel once, ahead of time (`torch.compile`'s CPU backend uses the
same two kernels when it freezes weights), and its products are faster than `F.linear` on GPT-2's shapes, with
the same values up to fp32 rounding. The measured figures are in docs/performance.md.

fp32 for one row (batch-1 decoding, the default): the layers are `SlabLinear`s instead, each weight cut into one
slab per thread and one row multiplied by all slabs in one batched product, which streams the weights at about the
memory's speed where oneDNN's one-row product reached 0.5-0.8 of it; q, k and v become one product
(`FusedQKVAttention`). A copy for decoding several sequences at once (`prepacked(model, batch=12)`) packs every
weight for that many rows instead: oneDNN's layout is chosen by the rows a product will have, and there its
packed product is the faster one.

Only inference: a packed weight is an opaque oneDNN tensor, with no gradient and no state dict. Layers that are
not plain `nn.Linear` (LoRA adapters, fake-quant layers) keep their own forward, so a prepacked LoRA model runs its
frozen base layers packed and its adapters as they are.

bf16 (`prepacked(model, torch.bfloat16)`): the same copy with bf16 weights, for CPUs that multiply bf16 natively
(x86 AVX512-BF16 or AMX, ARM's BF16 extension; `native_bf16`). Decoding then reads half the bytes per token. The
whole copy is bf16, as a model loaded with bf16 weights is: embeddings, LayerNorm parameters, the residual stream
and the logits; `minigpt2.fast.for_inference` keeps its KV cache and attention in fp32 on CPU (torch's CPU
attention kernel is slow in bf16 at decoding shapes). Where precision matters, the kernels accumulate in fp32 anyway: oneDNN's bf16 GEMMs,
LayerNorm's mean and variance; the samplers turn the logits into fp32 before temperature and softmax.
What bf16 costs is the rounding of every stored activation to 8 bits of mantissa: the
logits differ from fp32's by a few percent of their spread at most (the tests bound the largest difference by a
tenth of the fp32 logits' standard deviation), so greedy decoding follows fp32 until two candidates come within
that margin. Where the CPU lacks native bf16, oneDNN would emulate it, slower than fp32:
`prepacked` refuses, and `inference_copy` stays in fp32.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .. import device
from ..lora import LoRALinear
from ..model import GPT2, MLP, CausalSelfAttention
from ..surgery import replace_module, unwrap_compiled
from .cpu_dropout import CPUDropoutAttention


def available() -> bool:
    """True when this PyTorch build can run `prepacked` (CPU builds with oneDNN, i.e. the usual x86/ARM wheels)."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class Bf16Unsupported(RuntimeError):
    """bf16 inference was asked for on a CPU that would only emulate bf16 arithmetic."""


def native_bf16() -> bool:
    """True when this CPU multiplies bf16 natively and oneDNN has bf16 kernels for it.

    oneDNN also runs bf16 on AVX-512 CPUs without BF16 instructions, by converting to fp32: slower than fp32 itself,
    so only the instruction set counts here (`minigpt2.device.cpu_native_bf16`, the one place that reads it).
    """
    return available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and device.cpu_native_bf16()


def _pack(weight: torch.Tensor, dtype: torch.dtype = torch.float32, batch: int = 1) -> torch.Tensor:
    # `batch` is a layout hint: the rows each product will get (one per sequence decoded together). Any number of
    # rows runs on either layout; several rows on a layout packed for one ran up to 1.75x slower, and one row on a
    # layout packed for several, slower and rounded otherwise (docs/performance.md, "Batched sampling").
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(dtype).contiguous(), batch)


def _packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # oneDNN computes in the packed weight's dtype and returns that dtype; the input must match it.
    return torch.ops.mkldnn._linear_pointwise(x.to(packed.dtype), packed, bias, "none", [], "")


class PackedLinear(nn.Module):
    """`nn.Linear` for inference, with the weight in oneDNN's packed layout (fp32, or bf16 given `dtype`).

    Made from an `nn.Linear`, or from a bare `weight` (no bias) when `linear` is None (the tied LM head); the weight
    is laid out for products of `batch` rows (see `prepacked`).
    """

    def __init__(self, linear: nn.Linear | None, dtype: torch.dtype = torch.float32,
                 weight: torch.Tensor | None = None, batch: int = 1) -> None:
        super().__init__()
        weight = linear.weight if linear is not None else weight
        self.out_features, self.in_features = weight.shape
        self.batch = batch
        self.packed = _pack(weight, dtype, batch)
        bias = None if linear is None or linear.bias is None else linear.bias.detach().to(dtype).clone()
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _packed_linear(x, self.packed, self.bias)

    def forward_gelu(self, x: torch.Tensor) -> torch.Tensor:
        """`gelu(self(x))` (tanh GELU, GPT-2's) in one oneDNN call: the GELU as the product's post-op."""
        return torch.ops.mkldnn._linear_pointwise(x.to(self.packed.dtype), self.packed, self.bias, "gelu", [],
                                                  "tanh")

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"oneDNN prepacked {str(self.packed.dtype).removeprefix('torch.')} for {self.batch} row(s)")


def slab_count() -> int:
    """How many slabs `SlabLinear` cuts a weight into when not told: one per torch thread, and at least two (a
    batch of one slab is not run as a batched product, and one slab streamed 1.3x slower than two at 1 thread)."""
    return max(2, torch.get_num_threads())


class SlabLinear(nn.Module):
    """fp32 `nn.Linear` for decoding one row at a time: the weight's rows cut into `slabs` slabs of equal height,
    stored as one (slabs, rows, in) table, and one row multiplied by all of them in one batched product.

    One row: `baddbmm(bias, table, x)`, x a column shared by every slab. torch runs it as MKL's batched GEMM, which
    hands whole slabs to its threads, so each thread streams its own rows in memory order with a one-thread product:
    0.8-0.96 of a plain read of the same weights on GPT-2's shapes, where oneDNN's and MKL's one-row products split
    over the threads streamed 0.3-0.8 (docs/performance.md, "Seventh round"). The column must be passed with stride
    0 over the slabs and `in_features` between columns (strides (0, 1, in), made by `as_strided` over the row):
    stored the other way, torch took a path 5x slower. Each output is a dot product of its row and x, so its bits depend on where the row lies in
    memory (its alignment), not on the threads (nor on the slab count, unless a slab holds only a few rows: MKL then
    takes another kernel); the table is this layer's own fresh allocation, which torch's CPU allocator aligns to 64
    bytes, so two copies of one model give the same bits. The last slab is padded with zero rows, whose outputs are
    dropped. Several rows (a prompt): oneDNN on the same memory read as the (out, in) table.
    `prepacked` makes every fp32 layer and the tied head of a copy for one row of this kind (`PackedLinear` for
    several rows). Made from an `nn.Linear`, or from a bare `weight` (no bias) when `linear` is None (the tied head).
    """

    def __init__(self, linear: nn.Linear | None, weight: torch.Tensor | None = None,
                 slabs: int | None = None) -> None:
        super().__init__()
        weight = linear.weight if linear is not None else weight
        self.out_features, self.in_features = weight.shape
        self.slabs = slabs or slab_count()
        height = -(-self.out_features // self.slabs)
        self.padded = self.slabs * height != self.out_features
        table = torch.zeros(self.slabs * height, self.in_features)
        table[:self.out_features] = weight.detach()
        self.register_buffer("table", table.view(self.slabs, height, self.in_features), persistent=False)
        bias = None
        if linear is not None and linear.bias is not None:
            bias = torch.zeros(self.slabs * height)
            bias[:self.out_features] = linear.bias.detach()
            bias = bias.view(self.slabs, height, 1)
        self.register_buffer("bias", bias, persistent=False)

    def _product(self, x: torch.Tensor, gelu: bool) -> torch.Tensor:
        if x.numel() == self.in_features:  # one row: the decoding step, 49 calls a token
            # The column every slab multiplies, read from x's own memory with strides (0, 1, in) (copied first
            # where x is a strided view). One view op, and no slicing where no slab is padded: the ops around the
            # product are part of every token's fixed cost (docs/performance.md, "Ninth round").
            column = x.contiguous().as_strided((self.slabs, self.in_features, 1), (0, 1, self.in_features))
            y = torch.bmm(self.table, column) if self.bias is None else torch.baddbmm(self.bias, self.table, column)
            if self.padded:
                y = y.view(-1)[:self.out_features]
            if gelu:
                torch.ops.aten.gelu_(y, approximate="tanh")
        else:
            rows = x.reshape(-1, self.in_features)
            weight = self.table.view(-1, self.in_features)[:self.out_features]
            bias = None if self.bias is None else self.bias.view(-1)[:self.out_features]
            y = torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "gelu" if gelu else "none", [],
                                                   "tanh" if gelu else "")
        return y.view(*x.shape[:-1], self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._product(x, False)

    def forward_gelu(self, x: torch.Tensor) -> torch.Tensor:
        """`gelu(self(x))` (tanh GELU, GPT-2's): in place on the product for one row, a oneDNN post-op for more."""
        return self._product(x, True)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, fp32 in {self.slabs} slabs "
                "(batched product for one row, oneDNN for more)")


class FusedQKVAttention(CausalSelfAttention):
    """Inference attention whose query, key and value projections are one product of width 3C (`self.qkv`), in
    fp32 or with fp16 weights (`dtype`), laid out for `batch` rows (`prepacked`).

    Made from a `CausalSelfAttention` (or the training copy's CPU-dropout one: at inference both attend alike) with
    plain `nn.Linear` projections; `c_proj` and the attention itself are the model's. One call instead of three per
    block: at batch 1 each call costs Python and dispatch time beside its product, and one wider table streams at
    least as fast as three narrow ones. Each output column sums over the same input in the same order as its own
    layer would, so stacking changes no number.
    """

    def __init__(self, attn: CausalSelfAttention, dtype: torch.dtype = torch.float32, batch: int = 1) -> None:
        nn.Module.__init__(self)  # not CausalSelfAttention.__init__, which would build new layers
        self.n_head, self.dropout = attn.n_head, 0.0  # inference: no dropout
        self.qkv = _packed_layer(_stacked([attn.query, attn.key, attn.value]), dtype, batch=batch)
        self.c_proj, self.resid_dropout = _packed_layer(attn.c_proj, dtype, batch=batch), nn.Identity()

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv(x).split(self.qkv.out_features // 3, dim=-1)
        return q, k, v


def _stacked(linears: list[nn.Linear]) -> nn.Linear:
    """One `nn.Linear` computing `torch.cat([linear(x) for linear in linears], -1)` (a missing bias adds zeros)."""
    weight = torch.cat([linear.weight.detach().float() for linear in linears])
    stacked = nn.Linear(weight.size(1), weight.size(0), bias=any(linear.bias is not None for linear in linears),
                        device="meta")
    stacked.weight = nn.Parameter(weight, requires_grad=False)
    if stacked.bias is not None:
        stacked.bias = nn.Parameter(torch.cat([linear.bias.detach().float() if linear.bias is not None
                                               else torch.zeros(linear.out_features) for linear in linears]),
                                    requires_grad=False)
    return stacked


def _fusable(module: nn.Module) -> bool:
    return type(module) in (CausalSelfAttention, CPUDropoutAttention) and all(
        type(getattr(module, name)) is nn.Linear for name in ("query", "key", "value", "c_proj"))


def fp16_available() -> bool:
    """True when this PyTorch build has fbgemm's fp16 linear and the CPU runs it (x86 with AVX2 or AVX-512)."""
    return ("fbgemm" in torch.backends.quantized.supported_engines
            and hasattr(torch.ops.quantized, "linear_prepack_fp16")
            and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"))


class Fp16Linear(nn.Module):
    """`nn.Linear` for inference with fp16 weights: fbgemm's fp16 GEMM (`quantized::linear_dynamic_fp16`).

    fbgemm keeps the weight in fp16, packed for its kernel, and converts each tile to fp32 in registers (F16C):
    the input, the accumulation, the bias and the output are fp32, only the weight is rounded, to 11 bits of
    mantissa. It needs AVX2, not fp16 arithmetic. Made from an `nn.Linear`, or from a bare `weight` (the tied head).
    """

    def __init__(self, linear: nn.Linear | None, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        weight = linear.weight if linear is not None else weight
        self.out_features, self.in_features = weight.shape
        bias = None if linear is None or linear.bias is None else linear.bias.detach().float().contiguous()
        self.packed = torch.ops.quantized.linear_prepack_fp16(weight.detach().float().contiguous(), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic_fp16(x.float(), self.packed)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fbgemm fp16 weights"


def _packed_layer(linear: nn.Linear | None, dtype: torch.dtype, weight: torch.Tensor | None = None,
                  batch: int = 1) -> nn.Module:
    if dtype == torch.float16:
        return Fp16Linear(linear, weight=weight)  # fbgemm's fp16 layout has no batch hint
    if dtype == torch.float32 and batch == 1:
        return SlabLinear(linear, weight=weight)
    return PackedLinear(linear, dtype, weight=weight, batch=batch)


class PackedGPT2(GPT2):
    """A `GPT2` whose LM head multiplies by a packed copy of the `wte` table (`self.packed_head`).

    Made by `prepacked` from a copy of a model. The embedding lookup keeps the plain table: a lookup reads one row,
    a packed layout would not help it. A call with `token_ids` (a few vocabulary columns) reads those rows of the
    plain table, as `GPT2.lm_head` does.
    """

    packed_head: SlabLinear | PackedLinear | Fp16Linear

    def lm_head(self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        if token_ids is not None:
            return super().lm_head(hidden, token_ids)
        return self.packed_head(hidden)


PACKED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@torch.no_grad()
def prepacked(model: GPT2, dtype: torch.dtype = torch.float32, batch: int = 1) -> GPT2:
    """An inference copy of `model` (eval mode, on CPU) whose plain linear layers and LM head are prepacked.

    dtype: torch.float32 (the model must be fp32), torch.bfloat16 (an fp32 or bf16 model; the copy is all bf16,
    see the module docstring), or torch.float16 (an fp32 model; fp16 weights on fbgemm, everything else fp32:
    `Fp16Linear`). batch: how many sequences each decoding step will carry (the prompts generated together). Above
    one, the fp32 and bf16 weights are laid out for that many rows (oneDNN's layout hint; an fp32 copy for one row
    has `SlabLinear`s): batched sampling then runs up to 1.75x faster per product, with the same numbers as on the
    one-row layout for any product of two rows or more (docs/performance.md, "Batched sampling"). One row on such
    a copy runs, slower and rounded otherwise.

    Raises ValueError for a model not on the CPU or of another dtype, or a batch below 1, RuntimeError when this
    PyTorch build has no oneDNN (see `available`; for fp16, no fbgemm fp16: `fp16_available`), `Bf16Unsupported`
    for bf16 on a CPU without native bf16.
    """
    if dtype not in PACKED_DTYPES:
        raise ValueError(f"prepacked: dtype {dtype} is not one of {PACKED_DTYPES}")
    if batch < 1:
        raise ValueError(f"prepacked: batch must be at least 1, got {batch}")
    if dtype == torch.float16 and not fp16_available():
        raise RuntimeError("prepacked: fp16 weights need fbgemm's fp16 linear (an x86 CPU with AVX2 and a PyTorch "
                           "build with fbgemm); use fp32")
    if dtype != torch.float16 and not available():
        raise RuntimeError("prepacked: this PyTorch build has no oneDNN linear kernels "
                           "(torch.backends.mkldnn.is_available() is False); use the model as it is")
    if dtype == torch.bfloat16 and not native_bf16():
        raise Bf16Unsupported("bf16 inference needs a CPU with native bf16 arithmetic (AVX512-BF16 or AMX on x86, "
                              "BF16 on ARM); this one would emulate it, slower than fp32: use fp32")
    model = unwrap_compiled(model)
    accepted = PACKED_DTYPES if dtype == torch.bfloat16 else (torch.float32,)
    weight = model.wte.weight
    if weight.device.type != "cpu" or weight.dtype not in accepted:
        names = " or ".join({torch.float32: "fp32", torch.bfloat16: "bf16"}[d] for d in accepted)
        raise ValueError(f"prepacked needs an {names} model on the CPU, got {weight.dtype} on {weight.device}; "
                         "call model.float().cpu() first (on a GPU, use the model as it is)")
    if not isinstance(model, GPT2):
        raise TypeError(f"prepacked expects a minigpt2 GPT2, got {type(model).__name__}")
    # fp16: only the weight matrices are fp16 (inside fbgemm's packed layers); the rest of the copy stays fp32.
    model = copy.deepcopy(model).eval().to(torch.float32 if dtype == torch.float16 else dtype)
    if dtype in (torch.float32, torch.float16):
        for name in [n for n, m in model.named_modules() if _fusable(m)]:
            replace_module(model, name, FusedQKVAttention(model.get_submodule(name), dtype, batch))
    for module in list(model.modules()):
        if not isinstance(module, (CausalSelfAttention, MLP, LoRALinear)):
            continue  # e.g. a fake-quant layer reads its inner linear's `.weight` itself: leave it whole
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, _packed_layer(child, dtype, batch=batch))
    if type(model.wte) is nn.Embedding and type(model) is GPT2:  # not e.g. a fake-quant table
        model.__class__ = PackedGPT2
        model.packed_head = _packed_layer(None, dtype, weight=model.wte.weight, batch=batch)  # tied head: no bias
    return model


def inference_copy(model: GPT2, dtype: torch.dtype | None = None, batch: int = 1) -> GPT2:
    """`prepacked(model, dtype, batch)` where it applies (a GPT2 on a CPU with oneDNN), else `model` itself.

    dtype: None for the model's own dtype; torch.bfloat16 for the bf16 copy, which falls back to the fp32 copy
    where the CPU lacks native bf16 (`native_bf16`); torch.float16 for fp16 weights, which falls back to fp32
    where fbgemm's fp16 linear is missing (`fp16_available`). For code that generates with whatever model it is
    handed, e.g. `minigpt2.fast.for_inference`.
    """
    model = unwrap_compiled(model)
    if not (available() and isinstance(model, GPT2) and model.wte.weight.device.type == "cpu"):
        return model
    dtype = dtype or model.wte.weight.dtype
    if dtype == torch.bfloat16 and not native_bf16():
        dtype = torch.float32
    if dtype == torch.float16 and (model.wte.weight.dtype != torch.float32 or not fp16_available()):
        dtype = torch.float32  # fp16 weights are made from an fp32 model, on fbgemm
    if dtype == torch.float32 and model.wte.weight.dtype != torch.float32:
        return model  # e.g. a bf16 model on a CPU without native bf16: used as it is
    if dtype not in PACKED_DTYPES:
        return model
    return prepacked(model, dtype, batch)
