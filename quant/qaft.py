"""Where to quantize: swap a GPT-2's linear layers (and embeddings) for fake-quant ones, for QAFT or for PTQ.

    quantize_model(model, cfg)    in place: nn.Linear -> FakeQuantLinear, wte/wpe -> FakeQuantEmbedding
    ptq(model, cfg)               a quantized copy of a finished model (post-training quantization)
    bake(model)                   fake-quant layers -> plain modules holding the quantized weights (inference only)
    remove_fake_quant(model)      fake-quant layers -> plain modules holding the full-precision weights
    apply_precision(model, p)     the study's knob: fp64/fp32/bf16 cast the model, fp8/int8/int4 fake-quantize it

Quantization-aware fine-tuning (QAFT) is ordinary training of a `quantize_model`-ed model: the loss is computed with
quantized weights, and the straight-through estimator carries the gradient to the full-precision weights, which
learn to sit where rounding hurts least. With LoRA, quantize first and then `apply_lora`: the adapter wraps the
FakeQuantLinear (a quantized frozen base plus a high-precision adapter).

The fake-quant layers are subclasses of the layers they replace and hold those layers' parameters, so the model's
state-dict keys do not change: save, load and export treat a fake-quantized model like a plain one.
"""

from __future__ import annotations

import copy
from typing import Iterable, Iterator

import torch
import torch.nn as nn

from minigpt2.surgery import replace_module

from .config import DTYPE_PRECISIONS, PRECISIONS, QuantConfig
from .fake import FakeQuantEmbedding, FakeQuantLayerNorm, FakeQuantLinear

FakeQuantModule = (FakeQuantLinear, FakeQuantEmbedding, FakeQuantLayerNorm)
WeightQuantModule = (FakeQuantLinear, FakeQuantEmbedding)
EMBEDDINGS = ("wte", "wpe")


def quantize_model(model: nn.Module, cfg: QuantConfig, skip: Iterable[str] = ()) -> nn.Module:
    """Swap every nn.Linear (and, with `cfg.embeddings`, `wte` and `wpe`) for fake-quant, in place; returns model.

    With `cfg.activations`, the final LayerNorm `ln_f` becomes a FakeQuantLayerNorm too: its output is the input
    of the tied LM head, a linear layer like the others.

    skip: module names left in full precision. A layer whose width the INT4 group size does not divide raises
    here, naming it. Layers already fake-quantized are left alone, so calling this twice changes nothing.
    """
    skip = set(skip)
    targets: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, FakeQuantModule) or name in skip or any(name.startswith(s + ".") for s in skip):
            continue
        leaf = name.rpartition(".")[2]
        if isinstance(module, nn.Linear):
            targets.append((name, FakeQuantLinear(module, cfg, name=name)))
        elif cfg.embeddings and cfg.weight is not None and isinstance(module, nn.Embedding) and leaf in EMBEDDINGS:
            targets.append((name, FakeQuantEmbedding(module, cfg, name=name)))
        elif cfg.activations and leaf == "ln_f" and isinstance(module, nn.LayerNorm):
            targets.append((name, FakeQuantLayerNorm(module, cfg, name=name)))
    for name, layer in targets:  # build all first: a bad group size raises before the model is touched
        replace_module(model, name, layer)
    return model


def fake_quant_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, layer) of every fake-quant layer in the model."""
    return ((n, m) for n, m in model.named_modules() if isinstance(m, FakeQuantModule))


def quant_config_of(model: nn.Module) -> QuantConfig | None:
    """The QuantConfig the model's fake-quant layers simulate (None when there are none); mixed configs are an
    error."""
    cfgs = {m.cfg for _, m in fake_quant_modules(model)}
    if len(cfgs) > 1:
        raise ValueError(f"model mixes {len(cfgs)} quantization configs: {sorted(map(str, cfgs))}")
    return next(iter(cfgs), None)


def set_quant_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch every fake-quant layer on or off (off = the exact full-precision model)."""
    for _, m in fake_quant_modules(model):
        m.enabled = enabled


def remove_fake_quant(model: nn.Module) -> nn.Module:
    """Replace every fake-quant layer by the plain layer with its full-precision parameters, in place."""
    for name, m in list(fake_quant_modules(model)):
        replace_module(model, name, m.to_plain())
    return model


@torch.no_grad()
def bake(model: nn.Module) -> nn.Module:
    """Replace weight-only fake-quant layers by plain ones whose weights are the quantized values, in place.

    Layers that also quantize activations stay (their weights baked, weight quant off), since activation
    quantization happens at run time; the outputs are unchanged either way.
    """
    for name, m in list(fake_quant_modules(model)):
        if not m.enabled:
            replace_module(model, name, m.to_plain())
        elif isinstance(m, FakeQuantEmbedding):
            m.latent_weight.copy_(m.weight)  # `weight` is the quantized table
            replace_module(model, name, m.to_plain())
        elif isinstance(m, FakeQuantLinear):
            m.weight.copy_(m.quantized_weight())
            if m.cfg.activations:
                m.cfg = m.cfg.replace(weight=None, embeddings=False)
            else:
                replace_module(model, name, m.to_plain())
        # FakeQuantLayerNorm: run-time quantization of activations, stays
    return model


def ptq(model: nn.Module, cfg: QuantConfig, skip: Iterable[str] = ()) -> nn.Module:
    """Post-training quantization: a fake-quantized copy of a trained model (absmax scales need no calibration)."""
    return quantize_model(copy.deepcopy(model), cfg, skip)


def apply_precision(model: nn.Module, precision: str, cfg: QuantConfig | None = None,
                    skip: Iterable[str] = ()) -> nn.Module:
    """The study's precision knob, in place: fp64/fp32/bf16 cast the weights; fp8/int8/int4 swap in fake-quant layers.

    cfg: overrides for the fake-quant formats (group size, activations, embeddings); its `weight` must agree.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {PRECISIONS}")
    if precision in DTYPE_PRECISIONS:
        return model.to(DTYPE_PRECISIONS[precision])
    want = QuantConfig.for_precision(precision)
    if cfg is None:
        cfg = want
    elif cfg.weight != want.weight:
        raise ValueError(f"precision {precision!r} simulates weight={want.weight!r}, but cfg has {cfg.weight!r}")
    return quantize_model(model, cfg, skip)
