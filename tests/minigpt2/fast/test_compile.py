"""`--compile` on CPU: the tiny model's blocks compiled by inductor give eager's logits and training step."""

from __future__ import annotations

import copy
import getpass
import os
import tempfile

import pytest
import torch
from torch._dynamo.utils import counters

from minigpt2.config import GPT2Config
from minigpt2.losses import lm_loss
from minigpt2.model import GPT2, last_token_index
from minigpt2.fast.compiled import CompiledBlocks, separate_inductor_cache
from tests.minigpt2.test_train import one_thread  # noqa: F401  (autouse fixture: one torch thread)


@pytest.mark.compile
def test_compiled_blocks_give_eager_logits_and_training_step():
    torch.manual_seed(0)
    eager = GPT2(GPT2Config.from_name("tiny")).eval()  # no dropout: both sides see the same function
    model = copy.deepcopy(eager)
    ids = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(1))
    targets = ids.roll(-1, 1)
    compiled = CompiledBlocks(model)
    assert len(compiled.blocks) == model.config.n_layer

    def step(m: GPT2) -> tuple[torch.Tensor, torch.Tensor]:
        # SGD: the update is the gradient itself (AdamW would blow up the rounding noise of the key bias's
        # gradient, which is zero in exact arithmetic, to a full learning-rate step of random sign)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        hidden = m(ids)
        loss = lm_loss(hidden, m.wte.weight, targets)
        loss.backward()
        opt.step()
        return hidden.detach(), loss.detach()

    frames = counters["frames"]["ok"]
    with compiled.active():
        got_hidden, got_loss = step(model)
    assert counters["frames"]["ok"] > frames  # inductor really compiled a block graph
    assert all("forward" not in vars(b) for b in compiled.blocks)  # eager again afterwards
    want_hidden, want_loss = step(eager)
    # inductor fuses and reorders fp32 arithmetic: equal to rounding, not bit for bit
    torch.testing.assert_close(got_hidden, want_hidden, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"grad {name}: {m}")
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name} after the step: {m}")
    with torch.no_grad():  # the logits after the step, compiled again vs eager
        with compiled.active():
            got = model.logits(ids)
        torch.testing.assert_close(got, eager.logits(ids), rtol=1e-4, atol=1e-5)


@pytest.mark.compile
def test_compiled_blocks_read_one_position_per_row_as_eager_does():
    """A classifier's forward under `--compile`: the last block compiled with `at` (one query per row, an explicit
    mask) gives eager's hidden states and gradients."""
    torch.manual_seed(0)
    eager = GPT2(GPT2Config.from_name("tiny")).eval()
    model = copy.deepcopy(eager)
    ids = torch.randint(0, 50257, (3, 12), generator=torch.Generator().manual_seed(2))
    mask = (torch.arange(12)[None] < torch.tensor([[12], [5], [9]])).long()  # right padding
    at = last_token_index(mask)
    weights = torch.randn(3, eager.config.n_embd, generator=torch.Generator().manual_seed(3))
    compiled = CompiledBlocks(model)
    with compiled.active():
        got = model(ids, attention_mask=mask, at=at)
        (got * weights).sum().backward()
    want = eager(ids, attention_mask=mask, at=at)
    (want * weights).sum().backward()
    assert got.shape == (3, eager.config.n_embd)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"grad {name}: {m}")


def test_the_application_switches_the_compiled_blocks_in_only_with_compile_on_either_path():
    """`app.speed.for_training`: `--compile` gives the context that compiles every block (on the plain path too:
    it changes no module); without it, none. Nothing is compiled until a forward runs."""
    from app import speed

    for plain in (False, True):
        model = GPT2(GPT2Config.from_name("tiny"))
        assert speed.for_training(model, torch.device("cpu"), plain, compile=False) is None
        steps = speed.for_training(model, torch.device("cpu"), plain, compile=True)
        blocks = list(model.h)
        with steps():
            assert all("forward" in vars(b) for b in blocks)
        assert all("forward" not in vars(b) for b in blocks)


def test_a_capped_instruction_set_gets_its_own_inductor_cache(monkeypatch):
    # torch 2.13's inductor cache handed one ISA's kernels to another ISA's process (wrong numbers, aborts).
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "AVX2")
    CompiledBlocks(GPT2(GPT2Config.from_name("tiny")))  # compiles nothing until a block runs
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == os.path.join(tempfile.gettempdir(),
                                                                 f"torchinductor_{getpass.getuser()}-avx2")


def test_the_inductor_cache_is_left_alone_when_chosen_or_uncapped(monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/chosen")
    separate_inductor_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/chosen"
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    separate_inductor_cache()
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "")
    separate_inductor_cache()
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ


def test_a_nameless_user_gets_a_cache_by_uid(monkeypatch):
    def no_name():
        raise KeyError("getpwuid(): uid not found: 1234")
    monkeypatch.setattr(getpass, "getuser", no_name)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")
    separate_inductor_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == os.path.join(tempfile.gettempdir(),
                                                                 f"torchinductor_uid_{os.getuid()}-avx512")
