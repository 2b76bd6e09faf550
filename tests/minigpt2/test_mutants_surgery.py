"""`minigpt2.surgery` on trees where a slip shows: paths three levels deep (the parent is everything before the
last dot), sibling names that share a prefix ("1" and "10"), a wrapper whose `training` flag differs from its new
class's default, a refusal half-way through `without_wrappers`, and a `torch.compile`-like wrapper."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from minigpt2.surgery import outermost, replace_module, take_over, unwrap_compiled, without_wrappers


class Wrap(nn.Module):
    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.scale = 2.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.base(x)


class FastWrap(Wrap):
    def __init__(self, old: Wrap) -> None:
        take_over(self, old)


def deep() -> nn.Module:
    torch.manual_seed(0)
    return nn.ModuleDict({"h": nn.ModuleList([nn.ModuleDict({"attn": nn.ModuleDict({"query": nn.Linear(2, 2),
                                                                                     "key": nn.Linear(2, 2)})})
                                              for _ in range(2)])})


def test_replace_module_three_levels_deep_touches_only_that_module():
    model = deep()
    old = model.h[1].attn.query
    others = [model.h[0].attn.query, model.h[0].attn.key, model.h[1].attn.key]
    new = nn.Identity()
    assert replace_module(model, "h.1.attn.query", new) is old
    assert model.get_submodule("h.1.attn.query") is new
    assert [model.h[0].attn.query, model.h[0].attn.key, model.h[1].attn.key] == others
    assert not hasattr(model, "query") and "h.1.attn.query" in dict(model.named_modules())


def test_replace_module_at_the_top_and_refusals():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    relu = model[1]
    tanh = nn.Tanh()
    assert replace_module(model, "1", tanh) is relu and model[1] is tanh
    with pytest.raises(AttributeError, match="has no attribute `q`"):
        replace_module(deep(), "h.0.attn.q", nn.Identity())
    with pytest.raises(ValueError) as e:
        replace_module(model, "", nn.Identity())
    assert str(e.value) == "replace_module needs the name of a submodule, not '' (the model itself)"


def test_take_over_keeps_everything_but_is_of_the_new_class():
    old = Wrap(nn.Linear(2, 3))
    old.scale = 5.0
    old.eval()
    new = FastWrap(old)
    assert type(new) is FastWrap and new.base is old.base and new.scale == 5.0
    assert new.training is False  # the old one's mode, not a fresh module's True
    assert list(new.state_dict()) == list(old.state_dict()) == ["base.weight", "base.bias"]
    assert [id(p) for p in new.parameters()] == [id(p) for p in old.parameters()]
    new.train()
    assert new.training and new.base.training and old.training is False  # its own flag, not the old one's
    old = Wrap(nn.Linear(2, 3))  # training: True
    assert FastWrap(old).training is True
    x = torch.randn(4, 2)
    torch.testing.assert_close(FastWrap(old)(x), old(x), rtol=0, atol=0)


def test_outermost_tells_siblings_with_a_common_prefix_apart():
    model = nn.Sequential(*[nn.Linear(1, 1) for _ in range(11)])
    model[1] = Wrap(Wrap(nn.Linear(1, 1)))
    model[10] = Wrap(nn.Linear(1, 1))  # "10" starts with "1", but is not inside it
    found = outermost(model, Wrap)
    assert list(found) == ["1", "10"] and found["1"] is model[1] and found["10"] is model[10]
    assert list(outermost(model, (Wrap, nn.Linear))) == [str(i) for i in range(11)]
    assert outermost(Wrap(nn.Linear(1, 1)), Wrap) == {}  # the model itself is not one of its submodules


def test_without_wrappers_uses_the_base_by_default_or_the_given_inner_and_restores_after_a_failure():
    model = nn.Sequential(Wrap(nn.Linear(2, 2)), nn.ReLU(), Wrap(nn.Linear(2, 2)))
    wrappers = [model[0], model[2]]
    with without_wrappers(model, Wrap) as m:
        assert m is model and model[0] is wrappers[0].base and model[2] is wrappers[1].base
    assert [model[0], model[2]] == wrappers
    with without_wrappers(model, Wrap, inner=lambda w: nn.Identity()):
        assert type(model[0]) is nn.Identity and type(model[2]) is nn.Identity
    assert [model[0], model[2]] == wrappers
    calls = []

    def fails_on_the_second(w):
        calls.append(w)
        if len(calls) == 2:
            raise RuntimeError("no inner module")
        return w.base

    with pytest.raises(RuntimeError, match="no inner module"):
        with without_wrappers(model, Wrap, inner=fails_on_the_second):
            pass
    assert [model[0], model[2]] == wrappers  # the first put back, the second never taken off


class CompiledLike(nn.Module):
    """What torch.compile returns: the real module kept as `_orig_mod`, its names prefixed."""

    def __init__(self, mod: nn.Module) -> None:
        super().__init__()
        self._orig_mod = mod


def test_unwrap_compiled_takes_the_original_module():
    inner = nn.Linear(2, 2)
    assert unwrap_compiled(CompiledLike(inner)) is inner
    assert list(CompiledLike(inner).state_dict()) == ["_orig_mod.weight", "_orig_mod.bias"]
    assert unwrap_compiled(inner) is inner
