"""The speed pieces: each computes what a plain module of the library computes, faster or in less memory.

    for_training(module, device)                  in place, before `minigpt2.train.train`; parameters stay
    fast = for_inference(model, device, dtype)    a copy to predict and generate with; `model` is untouched

The application calls these two switches (`app.finetune`, `app.evaluate`, `app.generate`), except with `--plain`;
the library's plain files, the tasks, quant and distill never import this package (tests/minigpt2/test_layers.py).
tests/minigpt2/fast/test_fast_agreement.py shows both paths agree on a tiny run of every task.

| piece | in place of | switched in by |
|---|---|---|
| `recompute.RecomputeGELUMLP` | `model.MLP`: the GELU output recomputed in backward | `for_training` |
| `cpu_dropout.CPUDropout`, `CPUDropoutAttention` | `nn.Dropout`, `model.CausalSelfAttention`: cheap masks | `for_training`, on CPU |
| `lora.FusedLoRALinear` | `lora.LoRALinear`: one autograd node, base cast once | `for_training` |
| `chunked_loss.ChunkedLMLoss` | `losses.LMLoss`: never the whole (N, 50257) logits | `for_training` |
| `prepack.prepacked` | the model: linears and head on oneDNN, prepacked for the batch decoded (fp32 batch 1: weights in slabs, one batched product); q/k/v fused | `for_inference`, on CPU |
| `decoding.sample_next`, `Fp32CacheAttention` | `generation.sample_next`; bf16 attention on CPU | `for_inference` |
| `step.OneTokenStep` | `GPT2.forward` of one new token on the KV cache | `for_inference` |
| `compiled.CompiledBlocks` | the blocks' eager forward, during the training steps | `app.speed.for_training`, `--compile` |
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ..losses import LMLoss
from ..model import GPT2
from ..surgery import replace_module, unwrap_compiled
from . import decoding
from .chunked_loss import ChunkedLMLoss
from .cpu_dropout import use_cpu_dropout
from .lora import use_fused_lora
from .prepack import inference_copy
from .recompute import recompute_gelu_in_backward
from .step import with_one_token_step


def for_training(module: nn.Module, device: torch.device) -> None:
    """Switch in, in place, the training pieces: the recomputed GELU, the fused LoRA layer, the chunked LM loss
    and, on CPU, the cheap dropout masks. No parameter or state-dict key changes; calling it again does nothing."""
    recompute_gelu_in_backward(module)
    use_fused_lora(module)
    for name in [n for n, m in module.named_modules() if type(m) is LMLoss]:
        replace_module(module, name, ChunkedLMLoss())
    if torch.device(device).type == "cpu":
        use_cpu_dropout(module)


def for_inference(model: GPT2, device: torch.device, autocast_dtype: torch.dtype | None = None,
                  batch: int = 1) -> GPT2:
    """A copy of `model` to predict and generate with; `model` itself is not changed.

    On CPU, a plain `GPT2` becomes the inference copy (`prepack.inference_copy`: fp32 weights in slabs for one
    row, oneDNN-prepacked for several; in bf16 when `autocast_dtype` is bf16 and the CPU multiplies bf16 natively;
    with fp16 weights on fbgemm when it is torch.float16 and fbgemm's fp16 linear runs here), its weights laid out
    for decoding `batch` sequences at once (`prepack.prepacked`). A bf16 or fp16 model on CPU attends in fp32 over
    an fp32 KV cache. Each new token after the prompt takes the lean one-token step (`step.OneTokenStep`), and sampling
    skips the full sort (`decoding.sample_next`). Other copies share `model`'s modules.
    """
    model = unwrap_compiled(model)
    device = torch.device(device)
    fast = inference_copy(model, autocast_dtype, batch) if device.type == "cpu" and type(model) is GPT2 else model
    weight_dtype = fast.wte.weight.dtype
    cache_dtype = decoding.kv_cache_dtype(weight_dtype, device)
    if cache_dtype != weight_dtype:
        fast = copy.deepcopy(model) if fast is model else fast  # its attention modules change
        decoding.attend_in_cache_dtype(fast)
    if fast is model:
        fast = copy.copy(model)  # a new object sharing every module: what is set below stays off `model`
    fast.sample_next = decoding.sample_next
    fast.kv_cache_dtype = cache_dtype
    return with_one_token_step(fast)  # a class change on the copy only
