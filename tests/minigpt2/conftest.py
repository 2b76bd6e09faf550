"""Fixtures and helpers shared by the library's tests: the fake hub, adapters with values."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from tests.fakehub import FakeHub, point_client_at


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    """A fake HF hub on 127.0.0.1, with the hub client and the cache pointed at it."""
    h = FakeHub()
    point_client_at(h, monkeypatch, tmp_path / "cache")
    yield h
    h.stop() if h._thread.is_alive() else None


def randomize_adapters(model: nn.Module, seed: int = 1, scale: float = 0.1) -> None:
    """Give every LoRA A and B seeded normal values times `scale`, so that the adapters really change the model
    (a fresh B is zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("lora_A", "lora_B")):
                p.copy_(torch.randn(p.shape, generator=g) * scale)
