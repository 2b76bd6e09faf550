"""Module surgery: the few ways the project changes a model's tree of modules, in one place.

    replace_module(model, "h.0.attn.query", new)    put `new` where the named submodule was; returns the old one
    without_wrappers(model, LoRALinear)             each wrapper's inner module back in its place, for a block
    unwrap_compiled(model)                          the module a `torch.compile` wrapper runs

LoRA, fake-quant, the int8 decoder and prepacking all work by putting one module where another was; they share
these helpers so that "which module sits where" is decided the same way everywhere.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch.nn as nn


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The module itself when `model` is a `torch.compile` wrapper, else `model`.

    Names (state-dict keys, module paths) are those of the real module; the wrapper prefixes them.
    """
    return getattr(model, "_orig_mod", model)  # where torch.compile keeps the module it wraps


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put `new` at the dotted submodule path `name` of `model` (e.g. "h.0.attn.query"); return what was there."""
    if not name:
        raise ValueError("replace_module needs the name of a submodule, not '' (the model itself)")
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = parent.get_submodule(child)  # raises AttributeError naming the path when there is no such module
    setattr(parent, child, new)
    return old


def take_over(new: nn.Module, old: nn.Module) -> None:
    """Give `new`, an instance of a subclass of `old`'s class made without running its `__init__`, everything `old`
    holds (layers, parameters, settings), so the two have the same parameters and state-dict keys."""
    nn.Module.__init__(new)
    new.__dict__.update({k: v for k, v in old.__dict__.items() if k != "training"})
    new.training = old.training


def outermost(model: nn.Module, kind: type | tuple[type, ...]) -> dict[str, nn.Module]:
    """Name -> module of every `kind` module of `model` that is not inside another one, in model order."""
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if name and isinstance(module, kind) and not any(name.startswith(f + ".") for f in found):
            found[name] = module
    return found


@contextmanager
def without_wrappers(model: nn.Module, kind: type | tuple[type, ...],
                     inner: Callable[[nn.Module], nn.Module] = lambda wrapper: wrapper.base) -> Iterator[nn.Module]:
    """Inside the block, each (outermost) `kind` wrapper of `model` is replaced by `inner(wrapper)`, its `.base`
    by default; the wrappers are put back afterwards, even on error.

    The inner modules are shared, not copied: what the block loads into them, the wrappers compute with afterwards.
    """
    wrappers = outermost(model, kind)
    replaced: list[str] = []
    try:
        for name, wrapper in wrappers.items():
            replace_module(model, name, inner(wrapper))
            replaced.append(name)
        yield model
    finally:
        for name in replaced:
            replace_module(model, name, wrappers[name])
