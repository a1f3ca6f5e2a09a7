"""Fixtures for the core tests: the core is pure, so these tests never touch the network."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make any socket creation fail loudly (STYLE.md §3.6: core tests use no network)."""

    def refuse(*args: object, **kwargs: object) -> socket.socket:
        raise RuntimeError("core tests must not open sockets")

    monkeypatch.setattr(socket, "socket", refuse)
    yield
