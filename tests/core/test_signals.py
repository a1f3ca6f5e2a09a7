"""Typing indicators and read receipts as first-class signals."""

from __future__ import annotations

from realtime_proto import ErrorCode, HubConfig, User
from realtime_proto.history import HistoryRule
from realtime_proto.testing import Cluster

from .hubkit import error_codes, make

ROOM = "private-room.1"


def two_members(config: HubConfig) -> tuple:  # type: ignore[type-arg]
    hub, transport, clock = make(config)
    hub.channel("private-*").authorize(lambda conn, ch: True)
    a, b = transport.connect(User(id="a")), transport.connect(User(id="b"))
    for conn in (a, b):
        transport.send(conn, {"type": "subscribe", "channel": ROOM})
        transport.take(conn)
    return hub, transport, clock, a, b


def test_typing_is_coalesced_per_user_and_kept_out_of_history() -> None:
    _hub, transport, clock, a, b = two_members(
        HubConfig(typing_interval=2, history=(HistoryRule("private-*", 10, 60),)))
    for _ in range(5):
        transport.send(a, {"type": "event", "channel": ROOM, "event": "typing", "data": {}})
    got = transport.take(b)
    assert [(m["event"], m["user_id"]) for m in got] == [("typing", "a")]
    assert "offset" not in got[0]
    clock.advance(2)
    transport.send(a, {"type": "event", "channel": ROOM, "event": "typing"})
    assert len(transport.take(b)) == 1
    late = transport.connect(User(id="c"))
    transport.send(late, {"type": "subscribe", "channel": ROOM, "data": {"history": 10}})
    assert [m["event"] for m in transport.take(late)] == ["connection.established",
                                                           "subscription.succeeded"]


def test_read_positions_move_forward_and_are_readable_later() -> None:
    hub, transport, _clock, a, b = two_members(HubConfig())
    transport.send(a, {"type": "event", "channel": ROOM, "event": "read",
                       "data": {"position": 5, "extra": "dropped"}})
    [receipt] = transport.take(b)
    assert (receipt["event"], receipt["user_id"], receipt["data"]) == ("read", "a",
                                                                       {"position": 5})
    transport.send(a, {"type": "event", "channel": ROOM, "event": "read",
                       "data": {"position": 3}})
    assert transport.take(b) == []  # never backwards
    transport.send(b, {"type": "event", "channel": ROOM, "event": "read",
                       "data": {"position": "msg-9"}})
    assert hub.reads(ROOM) == {"a": 5, "b": "msg-9"}
    transport.send(a, {"type": "event", "channel": ROOM, "event": "read", "data": {}})
    assert error_codes(transport.take(a)) == [ErrorCode.INVALID_FIELD]


def test_read_positions_travel_to_other_nodes() -> None:
    cluster = Cluster(2, seed=5)
    for transport in cluster.transports.values():
        transport.hub.channel("private-*").authorize(lambda conn, ch: True)
    a = cluster.connect("n1", User(id="a"))
    b = cluster.connect("n2", User(id="b"))
    cluster.send("n1", a, {"type": "subscribe", "channel": ROOM})
    cluster.send("n2", b, {"type": "subscribe", "channel": ROOM})
    cluster.settle()
    cluster.send("n1", a, {"type": "event", "channel": ROOM, "event": "read",
                           "data": {"position": 7}})
    cluster.settle()
    assert cluster.hub("n2").reads(ROOM) == {"a": 7}
    assert cluster.transports["n2"].take(b)[-1]["event"] == "read"
