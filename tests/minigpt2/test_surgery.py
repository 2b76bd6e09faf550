"""minigpt2.surgery: replacing submodules, taking wrappers off for a block, unwrapping torch.compile."""

import pytest
import torch
import torch.nn as nn

from minigpt2.surgery import outermost, replace_module, unwrap_compiled, without_wrappers


class Wrap(nn.Module):
    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * self.base(x)


def net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.ReLU()))


def test_replace_module_puts_the_new_one_in_place_and_returns_the_old():
    model = net()
    old = model[1][0]
    new = nn.Linear(4, 4)
    assert replace_module(model, "1.0", new) is old
    assert model.get_submodule("1.0") is new
    with pytest.raises(AttributeError):
        replace_module(model, "1.7", new)
    with pytest.raises(ValueError, match="not ''"):
        replace_module(model, "", new)


def test_without_wrappers_takes_the_outermost_off_and_puts_them_back_even_on_error():
    model = net()
    replace_module(model, "0", Wrap(Wrap(model[0])))
    replace_module(model, "1.0", Wrap(model[1][0]))
    wrappers = outermost(model, Wrap)
    assert list(wrappers) == ["0", "1.0"]  # "0.base" sits inside "0"
    x = torch.randn(3, 4)
    wrapped = model(x)
    with without_wrappers(model, Wrap):
        assert isinstance(model[0], Wrap) and not isinstance(model[0].base, Wrap)  # one level off
        assert type(model[1][0]) is nn.Linear
    assert model[0] is wrappers["0"] and model[1][0] is wrappers["1.0"]
    assert torch.equal(model(x), wrapped)
    with pytest.raises(RuntimeError, match="boom"):
        with without_wrappers(model, Wrap):
            raise RuntimeError("boom")
    assert model[1][0] is wrappers["1.0"]


def test_unwrap_compiled_returns_the_real_module():
    model = net()
    assert unwrap_compiled(model) is model
    compiled = torch.compile(model)
    assert unwrap_compiled(compiled) is model
    assert list(unwrap_compiled(compiled).state_dict()) == list(model.state_dict())
