import pytest
from tests.brokers import conftest
from tests.brokers.support import SERVERS

def test_skip_or_fail(monkeypatch):
    monkeypatch.setitem(SERVERS, "redis", ("127.0.0.1", 1, "redis://{host}:{port}"))
    conftest._reachable.pop("redis", None)
    conftest.require_server("redis")
