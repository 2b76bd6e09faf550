"""minigpt2/fast/compiled.py under mutmut: which forward the blocks run before, inside and after `active()` (an
exception inside too), what is handed to torch.compile, and the inductor cache folder's name written out by hand.

torch.compile is replaced by a stand-in that marks its output (the block's eager forward plus 1000), so nothing is
compiled and the test reads which forward ran; test_compile.py holds the real compiled blocks to eager's numbers.
"""

from __future__ import annotations

import getpass
import os
import tempfile

import pytest
import torch

import minigpt2.fast.compiled as fc
from minigpt2.config import GPT2Config
from minigpt2.model import GPT2, Block

MARK = 1000.0


@pytest.fixture
def no_cache_env(monkeypatch):
    """No capability cap and no chosen cache folder; whatever a test writes is undone."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "unset")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    return monkeypatch


@pytest.fixture
def compiled(no_cache_env):
    handed = []

    def fake_compile(fn):
        handed.append(fn)
        return lambda block, *a, **k: fn(block, *a, **k) + MARK

    no_cache_env.setattr(torch, "compile", fake_compile)
    torch.manual_seed(0)
    model = GPT2(GPT2Config(n_layer=3, n_head=2, n_embd=16, n_positions=8, vocab_size=40)).eval()
    return model, fc.CompiledBlocks(model), handed


def outputs(model: GPT2, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return [b(x, None, True) for b in model.h]


def test_the_blocks_and_block_forward_are_what_is_compiled(compiled):
    model, cb, handed = compiled
    assert handed == [Block.forward]
    assert cb.blocks == list(model.h) and len(cb.blocks) == 3
    assert fc.CompiledBlocks(torch.nn.Linear(2, 2)).blocks == []


def test_the_blocks_run_compiled_only_inside_active(compiled):
    model, cb, _ = compiled
    x = torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(1))
    eager = outputs(model, x)
    assert all("forward" not in vars(b) for b in model.h)
    with cb.active() as inside:
        assert inside is None
        got = outputs(model, x)
        assert all("forward" in vars(b) for b in model.h)
    for g, e in zip(got, eager):
        assert torch.equal(g, e + MARK)  # each block ran the compiled forward on itself
    after = outputs(model, x)
    assert all(torch.equal(a, e) for a, e in zip(after, eager))
    assert all("forward" not in vars(b) for b in model.h)
    with cb.active():  # a second time works the same
        assert all(torch.equal(g, e + MARK) for g, e in zip(outputs(model, x), eager))
    assert all(torch.equal(a, e) for a, e in zip(outputs(model, x), eager))


def test_an_error_inside_active_restores_eager_and_goes_on(compiled):
    model, cb, _ = compiled
    x = torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(2))
    eager = outputs(model, x)
    with pytest.raises(RuntimeError, match="^step failed$"):
        with cb.active():
            raise RuntimeError("step failed")
    assert all("forward" not in vars(b) for b in model.h)
    assert all(torch.equal(a, e) for a, e in zip(outputs(model, x), eager))


def test_the_constructor_separates_a_capped_cache(compiled, no_cache_env):
    no_cache_env.setattr(getpass, "getuser", lambda: "ann")
    no_cache_env.setenv("ATEN_CPU_CAPABILITY", "AVX2")
    fc.CompiledBlocks(compiled[0])
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == os.path.join(tempfile.gettempdir(), "torchinductor_ann-avx2")


def test_a_capped_cpu_gets_a_folder_named_by_user_and_capability(no_cache_env):
    no_cache_env.setattr(getpass, "getuser", lambda: "Ann")
    no_cache_env.setenv("ATEN_CPU_CAPABILITY", "AVX512")
    assert fc.separate_inductor_cache() is None
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == os.path.join(tempfile.gettempdir(), "torchinductor_Ann-avx512")


@pytest.mark.parametrize("error", [KeyError("getpwuid(): uid not found: 4321"), OSError("no login")])
def test_a_nameless_user_is_named_by_uid(no_cache_env, error):
    def no_name():
        raise error

    no_cache_env.setattr(getpass, "getuser", no_name)
    no_cache_env.setattr(os, "getuid", lambda: 4321, raising=False)
    no_cache_env.setenv("ATEN_CPU_CAPABILITY", "default")
    fc.separate_inductor_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == os.path.join(tempfile.gettempdir(),
                                                                 "torchinductor_uid_4321-default")


def test_without_getuid_the_uid_is_unknown(no_cache_env):
    def no_name():
        raise KeyError("no name")

    no_cache_env.setattr(getpass, "getuser", no_name)
    no_cache_env.delattr(os, "getuid", raising=False)
    no_cache_env.setenv("ATEN_CPU_CAPABILITY", "AVX2")
    fc.separate_inductor_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == os.path.join(tempfile.gettempdir(),
                                                                 "torchinductor_uid_unknown-avx2")


def test_a_chosen_folder_or_no_cap_is_left_alone(no_cache_env):
    no_cache_env.setattr(getpass, "getuser", lambda: "ann")
    fc.separate_inductor_cache()  # no cap
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    no_cache_env.setenv("ATEN_CPU_CAPABILITY", "")
    fc.separate_inductor_cache()  # an empty cap is none
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    no_cache_env.setenv("ATEN_CPU_CAPABILITY", "AVX2")
    no_cache_env.setenv("TORCHINDUCTOR_CACHE_DIR", "/chosen")
    fc.separate_inductor_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/chosen"
    no_cache_env.setenv("TORCHINDUCTOR_CACHE_DIR", "")  # chosen, even if empty: set means chosen
    fc.separate_inductor_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == ""
