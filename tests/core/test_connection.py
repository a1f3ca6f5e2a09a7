"""The Hub's per-connection records: set and mapping views over lazy storage, and what an
idle connection keeps (the memory budget of an idle subscribed connection)."""

from __future__ import annotations

import gc

import pytest

from realtime_proto.backlog import Backlog
from realtime_proto.connection import Connection
from realtime_proto.events import ConnectionId, User

from .hubkit import make


def connection() -> Connection:
    return Connection(id=ConnectionId("c1"), user=None, transport="websocket", peer=None,
                      expects_pong=True, connected_at=0.0, last_activity_at=0.0)


def test_channels_behave_as_a_set() -> None:
    conn = connection()
    assert len(conn.channels) == 0 and "a" not in conn.channels
    conn.channels.add("b")
    conn.channels.add("a")
    conn.channels.add("b")
    assert conn.channels == {"a", "b"} and sorted(conn.channels) == ["a", "b"]
    assert "a" in conn.channels and len(conn.channels) == 2
    conn.channels.discard("b")
    conn.channels.discard("missing")
    assert list(conn.channels) == ["a"]
    with pytest.raises(KeyError):
        conn.channels.remove("b")


def test_pending_behaves_as_a_dict_that_exists_only_while_used() -> None:
    conn = connection()
    assert len(conn.pending) == 0 and "a" not in conn.pending
    assert list(conn.pending.values()) == []
    with pytest.raises(KeyError):
        conn.pending["a"]
    with pytest.raises(KeyError):
        del conn.pending["a"]
    conn.pending["a"] = "r1"
    conn.pending["b"] = "r2"
    assert dict(conn.pending) == {"a": "r1", "b": "r2"} and conn.pending["a"] == "r1"
    del conn.pending["a"]
    del conn.pending["b"]
    assert len(conn.pending) == 0
    assert conn._pending is None  # the dict went with the last entry


def test_metadata_is_made_on_first_set_and_read_only_outside() -> None:
    conn = connection()
    assert conn.get("role") is None and conn.get("role", "guest") == "guest"
    assert dict(conn.metadata) == {} and conn.info().metadata == {}
    conn.set("role", "admin")
    assert conn.get("role") == "admin" and conn.metadata == {"role": "admin"}
    assert conn.info().metadata == {"role": "admin"}
    with pytest.raises(TypeError):
        conn.metadata["role"] = "guest"  # type: ignore[index]


def test_user_properties() -> None:
    conn = connection()
    assert conn.user_id is None and not conn.authenticated
    conn.user = User(id="u1", info={"name": "A"})
    assert conn.user_id == "u1" and conn.authenticated and conn.info().info == {"name": "A"}


def test_an_idle_subscribed_connection_keeps_no_empty_containers() -> None:
    hub, transport, _ = make()
    conn_id = transport.connect()
    transport.send(conn_id, {"type": "subscribe", "channel": "news"})
    conn = hub._connections[conn_id]
    held = gc.get_referents(conn)
    assert not any(isinstance(r, dict | set | list) for r in held), held
    assert ("news",) in held  # the channels, as a tuple
    assert not hasattr(conn, "__dict__")


def test_an_empty_backlog_holds_no_list() -> None:
    backlog = Backlog()
    assert backlog.drain() == [] and backlog.drain() is not backlog.drain()
    backlog.push(b"a")
    backlog.push(b"b")
    assert backlog.bytes == 2 and backlog.drain() == [b"a", b"b"]
    assert not any(isinstance(r, list) for r in gc.get_referents(backlog))
    assert backlog.drop_oldest(0, "news") == 0 and backlog.drain() == []
