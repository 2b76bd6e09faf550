"""Where to quantise: wrap a GPT-2's linear layers (and embeddings) with fake-quant, for QAFT or for PTQ.

    quantize_model(model, cfg)    in place: nn.Linear -> FakeQuantLinear, wte/wpe -> FakeQuantEmbedding
    ptq(model, cfg)               a quantised copy of a finished model (post-training quantization)
    bake(model)                   wrappers -> plain modules holding the quantised weights (inference only)
    unwrap(model)                 wrappers -> the wrapped full-precision modules
    apply_precision(model, p)     the study's knob: fp64/fp32/bf16 cast the model, fp8/int8/int4 fake-quantise it

Quantization-aware fine-tuning (QAFT) is ordinary training of a `quantize_model`-ed model: the loss is computed with
quantised weights, and the straight-through estimator carries the gradient to the full-precision weights, which
learn to sit where rounding hurts least. With LoRA, quantise first and then `apply_lora`: the adapter wraps the
FakeQuantLinear (a quantised frozen base plus a high-precision adapter).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
import torch.nn as nn

from minigpt2.surgery import replace_module, without_wrappers

from .config import DTYPE_PRECISIONS, PRECISIONS, QuantConfig
from .fake import FakeQuantActivation, FakeQuantEmbedding, FakeQuantLinear

FakeQuantModule = (FakeQuantLinear, FakeQuantEmbedding, FakeQuantActivation)
WeightQuantModule = (FakeQuantLinear, FakeQuantEmbedding)
EMBEDDINGS = ("wte", "wpe")


def quantize_model(model: nn.Module, cfg: QuantConfig, skip: Iterable[str] = ()) -> nn.Module:
    """Wrap every nn.Linear (and, with `cfg.embeddings`, `wte` and `wpe`) in fake-quant, in place; returns model.

    With `cfg.activations`, the final LayerNorm `ln_f` gets a FakeQuantActivation too: its output is the input
    of the tied LM head, a linear layer like the others.

    skip: module names left in full precision. A layer whose width the INT4 group size does not divide raises
    here, naming it. Layers already wrapped are left alone, so calling this twice changes nothing.
    """
    skip = set(skip)
    targets: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if name in skip or any(name.startswith(s + ".") for s in skip):
            continue
        if isinstance(module, nn.Linear) and not isinstance(_parent(model, name), FakeQuantModule):
            targets.append((name, FakeQuantLinear(module, cfg, name=name)))
        elif (cfg.embeddings and cfg.weight is not None and isinstance(module, nn.Embedding)
              and name.rpartition(".")[2] in EMBEDDINGS and not isinstance(_parent(model, name), FakeQuantModule)):
            targets.append((name, FakeQuantEmbedding(module, cfg, name=name)))
        elif (cfg.activations and name.rpartition(".")[2] == "ln_f" and isinstance(module, nn.LayerNorm)
              and not isinstance(_parent(model, name), FakeQuantModule)):
            targets.append((name, FakeQuantActivation(module, cfg)))
    for name, wrapper in targets:  # build all first: a bad group size raises before the model is touched
        replace_module(model, name, wrapper)
    return model


def _parent(model: nn.Module, name: str) -> nn.Module | None:
    parent_name, dot, _ = name.rpartition(".")
    if not dot:
        return model if name else None
    return model.get_submodule(parent_name)


def fake_quant_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, wrapper) of every FakeQuantLinear / FakeQuantEmbedding in the model."""
    return ((n, m) for n, m in model.named_modules() if isinstance(m, FakeQuantModule))


def quant_config_of(model: nn.Module) -> QuantConfig | None:
    """The QuantConfig the model's wrappers simulate (None when there are none); mixed configs are an error."""
    cfgs = {m.cfg for _, m in fake_quant_modules(model)}
    if len(cfgs) > 1:
        raise ValueError(f"model mixes {len(cfgs)} quantization configs: {sorted(map(str, cfgs))}")
    return next(iter(cfgs), None)


def set_quant_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch every fake-quant wrapper on or off (off = the exact full-precision model)."""
    for _, m in fake_quant_modules(model):
        m.enabled = enabled


def unwrap(model: nn.Module) -> nn.Module:
    """Replace every wrapper by the full-precision module it wraps, in place."""
    for name, m in list(fake_quant_modules(model)):
        replace_module(model, name, m.base)
    return model


@torch.no_grad()
def bake(model: nn.Module) -> nn.Module:
    """Replace weight-only wrappers by plain modules whose weights are the quantised values, in place.

    Wrappers that also quantise activations stay (their weights baked, weight quant off), since activation
    quantization happens at run time; the outputs are unchanged either way.
    """
    for name, m in list(fake_quant_modules(model)):
        if not m.enabled:
            replace_module(model, name, m.base)
            continue
        if isinstance(m, FakeQuantActivation):
            continue  # run-time quantization: stays
        if isinstance(m, FakeQuantEmbedding):
            m.base.weight.copy_(m.weight)
            replace_module(model, name, m.base)
            continue
        m.base.weight.copy_(m.quantized_weight())
        if m.cfg.activations:
            m.cfg = m.cfg.replace(weight=None, embeddings=False)
        else:
            replace_module(model, name, m.base)
    return model


def ptq(model: nn.Module, cfg: QuantConfig, skip: Iterable[str] = ()) -> nn.Module:
    """Post-training quantization: a fake-quantised copy of a trained model (absmax scales need no calibration)."""
    return quantize_model(copy.deepcopy(model), cfg, skip)


def apply_precision(model: nn.Module, precision: str, cfg: QuantConfig | None = None,
                    skip: Iterable[str] = ()) -> nn.Module:
    """The study's precision knob, in place: fp64/fp32/bf16 cast the weights; fp8/int8/int4 wrap in fake-quant.

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


@contextmanager
def unwrapped(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily put the wrapped modules back in place (plain GPT2 parameter names, e.g. for saving/loading
    an HF-layout checkpoint); the wrappers share those modules, so what is loaded reaches them."""
    with without_wrappers(model, FakeQuantModule):
        yield model
