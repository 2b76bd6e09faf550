"""Fixtures shared by the library's download tests."""

from __future__ import annotations

import pytest

from tests.fakehub import FakeHub, point_client_at


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    """A fake HF hub on 127.0.0.1, with the hub client and the cache pointed at it."""
    h = FakeHub()
    point_client_at(h, monkeypatch, tmp_path / "cache")
    yield h
    h.stop() if h._thread.is_alive() else None
