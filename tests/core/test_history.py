"""History and recovery: offsets in an epoch, missed messages replayed in order, or refused."""

from __future__ import annotations

import json

from realtime_proto import HubConfig, User
from realtime_proto.history import HistoryRule
from realtime_proto.testing.peers import SseEvent, SsePeer

from .hubkit import make
from .nodekit import Harness

HISTORY = HubConfig(history=(HistoryRule("news", 3, 60), HistoryRule("room.*", 100, 10)))


def test_messages_carry_offsets_in_an_epoch() -> None:
    hub, transport, clock = make(HISTORY)
    conn = transport.connect()
    transport.send(conn, {"type": "subscribe", "channel": "news"})
    success = transport.take(conn)[-1]
    assert success["data"] == {"epoch": success["data"]["epoch"], "offset": 0}
    for number in range(2):
        hub.broadcast("news", "n", number, now=clock.now)
    transport.run()
    got = transport.take(conn)
    assert [m["offset"] for m in got] == [1, 2]
    assert {m["epoch"] for m in got} == {success["data"]["epoch"]}


def test_recovery_replays_what_was_missed_in_order() -> None:
    hub, transport, clock = make(HISTORY)
    first = transport.connect()
    transport.send(first, {"type": "subscribe", "channel": "room.1"})
    epoch = transport.take(first)[-1]["data"]["epoch"]
    hub.broadcast("room.1", "n", 1, now=clock.now)
    transport.run()
    last_seen = transport.take(first)[-1]["offset"]
    transport.close(first)
    for number in (2, 3, 4):
        hub.broadcast("room.1", "n", number, now=clock.now)
    again = transport.connect()
    transport.send(again, {"type": "subscribe", "channel": "room.1",
                           "data": {"recover": {"epoch": epoch, "offset": last_seen}}})
    got = transport.take(again)[1:]
    assert got[0]["event"] == "subscription.succeeded"
    assert got[0]["data"] == {"epoch": epoch, "offset": 4, "recovered": True, "replayed": 3}
    assert [m["data"] for m in got[1:]] == [2, 3, 4]
    assert hub.statistics().recoveries == {True: 1}


def test_recovery_fails_honestly_when_history_is_gone_or_the_epoch_changed() -> None:
    hub, transport, clock = make(HISTORY)
    conn = transport.connect()
    transport.send(conn, {"type": "subscribe", "channel": "news"})
    epoch = transport.take(conn)[-1]["data"]["epoch"]
    for number in range(5):  # news keeps 3: offsets 1 and 2 are gone
        hub.broadcast("news", "n", number, now=clock.now)
    partly = transport.connect()  # the same epoch: what is left, and what is not
    transport.send(partly, {"type": "subscribe", "channel": "news",
                            "data": {"recover": {"epoch": epoch, "offset": 0}}})
    success, *replayed = transport.take(partly)[1:]
    assert success["data"] == {"epoch": epoch, "offset": 5, "recovered": False,
                               "replayed": 3, "missing": 2}
    assert [(m["offset"], m["data"]) for m in replayed] == [(3, 2), (4, 3), (5, 4)]
    other = transport.connect()  # another epoch: nothing can be said
    transport.send(other, {"type": "subscribe", "channel": "news",
                           "data": {"recover": {"epoch": "other", "offset": 4}}})
    got = transport.take(other)
    assert got[-1]["event"] == "subscription.succeeded"
    assert got[-1]["data"] == {"epoch": epoch, "offset": 5, "recovered": False,
                               "replayed": 0, "missing": None}
    late = transport.connect()
    clock.advance(61)  # past the age limit: everything is gone
    transport.send(late, {"type": "subscribe", "channel": "news",
                          "data": {"recover": {"epoch": epoch, "offset": 3}}})
    assert transport.take(late)[-1]["data"]["recovered"] is False


def test_subscribe_can_ask_for_recent_history() -> None:
    hub, transport, clock = make(HISTORY)
    for number in range(5):
        hub.broadcast("room.9", "n", number, now=clock.now)
    conn = transport.connect()
    transport.send(conn, {"type": "subscribe", "channel": "room.9", "data": {"history": 2}})
    assert [m["data"] for m in transport.take(conn)[2:]] == [3, 4]


def test_sse_last_event_id_recovers_the_channel() -> None:
    h = Harness(hub=HubConfig(node_id="n1", history=(HistoryRule("news", 50, 60),)))
    peer = SsePeer(target="/sse?channels=news")
    transport = h.open()
    h.feed(transport, peer.request_bytes)
    peer.receive(h.take(transport))
    h.node.hub.broadcast("news", "n", 1, now=h.clock.now)
    h.pump()
    [event] = [e for e in peer.receive(h.take(transport)) if isinstance(e, SseEvent)]
    assert event.id is not None and event.id.endswith(":1:news")
    h.eof(transport)
    h.node.hub.broadcast("news", "n", 2, now=h.clock.now)
    h.node.hub.broadcast("news", "n", 3, now=h.clock.now)
    h.pump()
    again = SsePeer(target="/sse?channels=news")
    transport = h.open()
    raw = again.request_bytes.replace(b"\r\n\r\n", f"\r\nLast-Event-ID: {event.id}\r\n\r\n"
                                      .encode(), 1)
    h.feed(transport, raw)
    messages = [json.loads(e.data) for e in again.receive(h.take(transport))
                if isinstance(e, SseEvent)]
    assert messages[1]["data"]["recovered"] is True
    assert [m["data"] for m in messages[2:]] == [2, 3]


def test_a_subscribed_connection_asks_again_and_gets_a_replay_without_leaving() -> None:
    rules = (HistoryRule("presence-room", 100, 60),)
    hub, transport, clock = make(HubConfig(history=rules))
    hub.channel("presence-*").authorize(lambda conn, channel: True)
    other = transport.connect(User(id="bob"))
    transport.send(other, {"type": "subscribe", "channel": "presence-room"})
    conn = transport.connect(User(id="alice"))
    transport.send(conn, {"type": "subscribe", "channel": "presence-room"})
    epoch = transport.take(conn)[1]["data"]["epoch"]
    for number in range(3):
        hub.broadcast("presence-room", "n", number, now=clock.now)
    transport.run()
    transport.take(conn)
    transport.take(other)
    transport.send(conn, {"type": "subscribe", "channel": "presence-room",
                          "data": {"recover": {"epoch": epoch, "offset": 1}}})
    success, *replayed = transport.take(conn)
    assert success["data"] == {"epoch": epoch, "offset": 3, "recovered": True, "replayed": 2}
    assert [m["data"] for m in replayed] == [1, 2]
    assert transport.take(other) == []  # no one saw alice leave or join
    hub.broadcast("presence-room", "n", 3, now=clock.now)
    transport.run()
    assert [m["data"] for m in transport.take(conn)] == [3]  # still subscribed, once
