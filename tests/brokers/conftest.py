"""Fixtures for the broker tests: one target per broker, each a real server on 127.0.0.1.

A target whose server is not reachable is skipped, except under CI (``CI`` set), where
it fails: CI must never skip a broker silently.
"""

from __future__ import annotations

import os
import socket
import sys
import uuid
from pathlib import Path

import pytest

try:
    import realtime_brokers  # noqa: F401
except ImportError:  # not installed: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "brokers"))

from .support import SERVERS, Target

_reachable: dict[str, str | None] = {}


def _check(kind: str) -> str | None:
    """None if the server of ``kind`` accepts TCP connections, else why not."""
    if kind not in _reachable:
        host, port, _ = SERVERS[kind]
        try:
            with socket.create_connection((host, port), timeout=1.0):
                _reachable[kind] = None
        except OSError as exc:
            _reachable[kind] = f"{kind} server not reachable at {host}:{port} ({exc})"
    return _reachable[kind]


def require_server(kind: str) -> None:
    """Skip (or under CI fail) the current test if the server of ``kind`` is down."""
    if kind == "memory":
        return
    problem = _check(kind)
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{problem}; CI must test every broker")
        pytest.skip(problem)


@pytest.fixture(params=["memory", "redis", "nats", "amqp", "postgresql"])
def target(request: pytest.FixtureRequest) -> Target:
    """Each broker in turn, with a name unique to the test (memory bus, PG table)."""
    kind: str = request.param
    require_server(kind)
    return Target(kind, uuid.uuid4().hex[:10])


@pytest.fixture
def postgres() -> Target:
    """The PostgreSQL target alone."""
    require_server("postgresql")
    return Target("postgresql", uuid.uuid4().hex[:10])
