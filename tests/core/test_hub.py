"""The Hub on its own: protocol behaviour through a MemoryTransport, on a fake clock."""

from __future__ import annotations

import json

import pytest

from realtime_proto import (
    Epoch,
    ErrorCode,
    Hub,
    HubConfig,
    Limits,
    LocalProtocolError,
    MessageError,
    Publication,
    User,
)
from realtime_proto.actions import BrokerPublish, BrokerSubscribe, BrokerUnsubscribe
from realtime_proto.events import ConnectionId
from realtime_proto.history import HistoryRule
from realtime_proto.testing import counter_ids

from .hubkit import error_codes, events, make, user


def test_connection_established_is_the_first_message() -> None:
    _, transport, _ = make()
    alice = transport.connect(user("alice"))
    [first] = transport.take(alice)
    assert first["type"] == "event" and first["event"] == "connection.established"
    assert first["data"] == {"connection_id": alice, "user_id": "alice", "heartbeat": 25.0}
    assert first["timestamp"] == 1_700_000_000_000 and first["id"]


def test_timestamps_follow_the_injected_clock() -> None:
    _, transport, clock = make()
    alice = transport.connect()
    clock.advance(2.5)
    transport.send(alice, {"type": "ping"})
    pong = transport.take(alice)[-1]
    assert pong["type"] == "pong" and pong["timestamp"] == 1_700_000_002_500


def test_subscribe_public_and_receive_broadcast() -> None:
    hub, transport, clock = make()
    a, b = transport.connect(), transport.connect()
    for conn in (a, b):
        transport.send(conn, {"type": "subscribe", "channel": "news"})
    assert events(transport.take(a))[-1] == ("subscription.succeeded", "news")
    transport.take(b)
    message_id = hub.broadcast("news", "headline", {"t": 1}, now=clock.now)
    transport.run()
    for conn in (a, b):
        [message] = transport.take(conn)
        assert message["id"] == message_id
        assert (message["event"], message["channel"], message["data"]) == ("headline", "news",
                                                                          {"t": 1})


def test_broadcast_many_is_each_broadcast_in_order_or_nothing() -> None:
    hub, transport, clock = make(HubConfig(history=(HistoryRule("room.*", 10, 60),)))
    a, b = transport.connect(), transport.connect()
    for conn, channel in ((a, "news"), (a, "room.1"), (b, "room.1")):
        transport.send(conn, {"type": "subscribe", "channel": channel})
    transport.take(a), transport.take(b)
    for bad in ([("news", "e", 1, None), ("bad name!", "e", 2, None)],
                [("news", "e", 1, None), ("news", 7, 2, None)]):
        with pytest.raises(MessageError):
            hub.broadcast_many(bad, now=clock.now)  # type: ignore[arg-type]
    assert hub.actions() == []  # nothing of a refused call went out
    ids = hub.broadcast_many([Publication("news", "e", 1), Publication("room.1", "r", 2, b),
                              ("room.1", "r", 3, None)], now=clock.now)
    transport.run()
    got_a, got_b = transport.take(a), transport.take(b)
    assert [(m["id"], m["channel"], m["data"]) for m in got_a] == [
        (ids[0], "news", 1), (ids[1], "room.1", 2), (ids[2], "room.1", 3)]
    assert [(m["data"], m["offset"]) for m in got_a[1:]] == [(2, 1), (3, 2)]  # kept in order
    assert [m["data"] for m in got_b] == [3]  # excluded from the one it sent


def test_message_ids_are_unique_on_a_node_and_across_nodes() -> None:
    ids = []
    for node in ("a", "b"):  # each node draws its own prefix at start
        hub = Hub(HubConfig(), new_id=counter_ids(node), epoch=Epoch(0.0, 0))
        ids += [hub.broadcast("news", "e", n, now=0.0) for n in range(300)]
    assert len(set(ids)) == 600
    assert {i.rpartition(".")[0] for i in ids} == {"a-1", "b-1"}


def test_broadcast_is_encoded_once_for_all_subscribers() -> None:
    hub, transport, clock = make()
    conns = [transport.connect() for _ in range(5)]
    for conn in conns:
        transport.send(conn, {"type": "subscribe", "channel": "news"})
    hub.actions()
    hub.broadcast("news", "e", 1, now=clock.now)
    delivers = [a for a in hub.actions() if type(a).__name__ == "Deliver"]
    assert len(delivers) == 1 and set(delivers[0].connection_ids) == set(conns)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", ErrorCode.MALFORMED_MESSAGE),
        (b"\xff\xfe{}", ErrorCode.INVALID_UTF8),
        (b"[1, 2]", ErrorCode.NOT_AN_OBJECT),
        (b"42", ErrorCode.NOT_AN_OBJECT),
        (b'{"type": "dance"}', ErrorCode.UNKNOWN_TYPE),
        (b'{"type": 7}', ErrorCode.INVALID_FIELD),
        (b'{"channel": "x"}', ErrorCode.MISSING_FIELD),
        (b'{"type": "subscribe"}', ErrorCode.MISSING_FIELD),
        (b'{"type": "subscribe", "channel": 5}', ErrorCode.INVALID_FIELD),
        (b'{"type": "subscribe", "channel": "bad name!"}', ErrorCode.INVALID_CHANNEL_NAME),
        (b'{"type": "subscribe", "channel": "' + b"a" * 201 + b'"}',
         ErrorCode.INVALID_CHANNEL_NAME),
        (b'{"type": "event", "channel": "news"}', ErrorCode.MISSING_FIELD),
        (b'{"type": "unsubscribe", "channel": "news"}', ErrorCode.NOT_SUBSCRIBED),
        (b'{"type": "event", "channel": "news", "event": "x"}', ErrorCode.FORBIDDEN),
        (b'{"type": "subscribe", "channel": "private-x"}', ErrorCode.UNAUTHENTICATED),
    ],
)
def test_bad_input_gets_its_error_code_and_the_connection_stays(raw: bytes, code: int) -> None:
    _, transport, _ = make()
    conn = transport.connect()
    transport.take(conn)
    transport.send(conn, raw)
    assert error_codes(transport.take(conn)) == [code]
    transport.send(conn, {"type": "ping"})
    assert transport.take(conn)[-1]["type"] == "pong"
    assert conn not in transport.closed


def test_too_large_message_is_refused_with_4009() -> None:
    _, transport, _ = make(HubConfig(limits=Limits(max_message_bytes=100)))
    conn = transport.connect()
    transport.take(conn)
    transport.send(conn, json.dumps({"type": "ping", "data": "x" * 200}))
    assert error_codes(transport.take(conn)) == [ErrorCode.MESSAGE_TOO_LARGE]


def test_error_names_the_channel() -> None:
    _, transport, _ = make()
    conn = transport.connect()
    transport.take(conn)
    transport.send(conn, {"type": "subscribe", "channel": "private-secret"})
    [error] = transport.take(conn)
    assert error["channel"] == "private-secret"
    assert error["data"] == {"code": 4001, "message": "private-secret needs an authenticated user"}


def test_private_channel_needs_a_rule() -> None:
    _, transport, _ = make()
    conn = transport.connect(user("alice"))
    transport.take(conn)
    transport.send(conn, {"type": "subscribe", "channel": "private-chat.1"})
    assert error_codes(transport.take(conn)) == [ErrorCode.FORBIDDEN]


def test_most_specific_rule_wins() -> None:
    hub, transport, _ = make()
    hub.channel("private-*").authorize(lambda conn, channel: False)
    hub.channel("private-chat.*").authorize(lambda conn, channel: conn.user_id == "alice")
    alice, bob = transport.connect(user("alice")), transport.connect(user("bob"))
    for conn in (alice, bob):
        transport.take(conn)
        transport.send(conn, {"type": "subscribe", "channel": "private-chat.7"})
    assert events(transport.take(alice)) == [("subscription.succeeded", "private-chat.7")]
    assert error_codes(transport.take(bob)) == [ErrorCode.FORBIDDEN]
    transport.send(alice, {"type": "subscribe", "channel": "private-other"})
    assert error_codes(transport.take(alice)) == [ErrorCode.FORBIDDEN]


def test_jwt_channels_claim_allows_without_a_rule() -> None:
    _, transport, _ = make()
    conn = transport.connect(User(id="u1", channels=("private-team.*",)))
    transport.take(conn)
    transport.send(conn, {"type": "subscribe", "channel": "private-team.red"})
    assert events(transport.take(conn)) == [("subscription.succeeded", "private-team.red")]
    transport.send(conn, {"type": "subscribe", "channel": "private-admin"})
    assert error_codes(transport.take(conn)) == [ErrorCode.FORBIDDEN]


def test_authorization_callback_that_raises_refuses_with_4500() -> None:
    hub, transport, _ = make()
    hub.channel("private-*").authorize(lambda conn, channel: 1 / 0)
    conn = transport.connect(user("alice"))
    transport.take(conn)
    transport.send(conn, {"type": "subscribe", "channel": "private-x"})
    assert error_codes(transport.take(conn)) == [ErrorCode.INTERNAL_ERROR]


def test_authorization_times_out() -> None:
    hub, transport, clock = make(HubConfig(authorization_timeout=3))
    hub.channel("private-*").authorize(lambda conn, channel: True)
    conn = transport.connect(user("alice"))
    transport.take(conn)
    hub.handle_message = None  # the answer never comes: take the Authorize action ourselves
    from realtime_proto.events import MessageReceived

    hub.handle(MessageReceived(connection_id=conn, data={"type": "subscribe",
                                                        "channel": "private-x"}), now=clock.now)
    authorize = [a for a in hub.actions() if type(a).__name__ == "Authorize"]
    assert len(authorize) == 1
    clock.advance(4)
    hub.tick(now=clock.now)
    transport.run()
    [error] = transport.take(conn)
    assert error["data"] == {"code": 4003, "message": "authorization timed out"}


def test_client_event_goes_to_others_not_the_sender() -> None:
    hub, transport, _ = make()
    hub.channel("private-room.*").authorize(lambda conn, channel: True)
    a, b, c = (transport.connect(user(n)) for n in ("a", "b", "c"))
    for conn in (a, b):
        transport.send(conn, {"type": "subscribe", "channel": "private-room.1"})
    for conn in (a, b, c):
        transport.take(conn)
    transport.send(a, {"type": "event", "channel": "private-room.1", "event": "typing",
                       "data": {"on": True}, "user_id": "forged"})
    assert transport.take(a) == [] and transport.take(c) == []
    [received] = transport.take(b)
    assert (received["event"], received["data"], received["user_id"]) == ("typing", {"on": True},
                                                                          "a")
    transport.send(c, {"type": "event", "channel": "private-room.1", "event": "typing"})
    assert error_codes(transport.take(c)) == [ErrorCode.FORBIDDEN]


def test_a_presence_channel_sends_its_members_before_the_history_it_was_asked_for() -> None:
    hub, transport, clock = make(HubConfig(history=(HistoryRule("presence-*", 10, 60),)))
    hub.channel("presence-*").authorize(lambda conn, channel: {})
    room = "presence-room.1"
    hub.broadcast(room, "said", "hi", now=clock.now)
    alice = transport.connect(user("alice"))
    transport.send(alice, {"type": "subscribe", "channel": room, "data": {"history": 5}})
    got = transport.take(alice)
    assert events(got)[-3:] == [("subscription.succeeded", room), ("presence.sync", room),
                                ("said", room)]
    assert got[-3]["data"]["replayed"] == got[-2]["data"]["replayed"] == 1
    bob = transport.connect(user("bob"))
    transport.send(bob, {"type": "subscribe", "channel": room})  # no history asked
    assert "replayed" not in transport.take(bob)[-1]["data"]


def test_presence_join_sync_leave_with_two_connections_for_one_user() -> None:
    hub, transport, _ = make()
    hub.channel("presence-*").authorize(lambda conn, channel: {"name": conn.user_id.upper()})
    room = "presence-room.1"
    alice1 = transport.connect(user("alice"))
    transport.send(alice1, {"type": "subscribe", "channel": room})
    got = transport.take(alice1)
    assert events(got)[-2:] == [("subscription.succeeded", room), ("presence.sync", room)]
    assert got[-1]["data"] == {"members": [{"user_id": "alice", "info": {"name": "ALICE"}}]}
    bob = transport.connect(user("bob"))
    transport.send(bob, {"type": "subscribe", "channel": room})
    assert transport.take(alice1)[-1]["event"] == "user.joined"
    assert [m["user_id"] for m in transport.take(bob)[-1]["data"]["members"]] == ["alice", "bob"]
    alice2 = transport.connect(user("alice"))
    transport.send(alice2, {"type": "subscribe", "channel": room})
    assert transport.take(bob) == []  # alice was already there: no second user.joined
    transport.close(alice1)
    assert transport.take(bob) == []  # alice is still there through alice2
    transport.close(alice2)
    [left] = transport.take(bob)
    assert (left["event"], left["data"]) == ("user.left", {"user_id": "alice",
                                                           "info": {"name": "ALICE"}})
    assert [m.user_id for m in hub.members(room)] == ["bob"]


def test_send_to_user_reaches_every_connection_of_that_user() -> None:
    hub, transport, clock = make()
    a1, a2, b = transport.connect(user("a")), transport.connect(user("a")), transport.connect()
    for conn in (a1, a2, b):
        transport.take(conn)
    hub.send_to_user("a", "note", {"n": 1}, now=clock.now)
    transport.run()
    assert [m["event"] for m in transport.take(a1) + transport.take(a2)] == ["note", "note"]
    assert transport.take(b) == []
    assert hub.send(a1, "direct", None, now=clock.now) is not None
    assert hub.send(ConnectionId("nobody"), "direct", None, now=clock.now) is None


def test_idle_connection_is_pinged_then_closed() -> None:
    hub, transport, clock = make(HubConfig(heartbeat_interval=10, idle_timeout=25))
    conn = transport.connect()
    transport.take(conn)
    clock.advance(11)
    hub.tick(now=clock.now)
    transport.run()
    assert [m["type"] for m in transport.take(conn)] == ["ping"]
    transport.send(conn, {"type": "pong"})
    clock.advance(11)
    hub.tick(now=clock.now)
    transport.run()
    assert [m["type"] for m in transport.take(conn)] == ["ping"]
    clock.advance(15)
    hub.tick(now=clock.now)
    transport.run()
    assert transport.closed[conn] == (ErrorCode.IDLE_TIMEOUT, "idle timeout")


def test_subscription_limit() -> None:
    _, transport, _ = make(HubConfig(limits=Limits(max_subscriptions=2)))
    conn = transport.connect()
    for name in ("a", "b", "c"):
        transport.send(conn, {"type": "subscribe", "channel": name})
    assert error_codes(transport.take(conn)) == [ErrorCode.TOO_MANY_SUBSCRIPTIONS]


def test_broker_topics_follow_local_subscribers() -> None:
    _hub, transport, _ = make()
    log = transport.broker_log  # type: ignore[attr-defined]
    a, b = transport.connect(), transport.connect()
    log.clear()
    transport.send(a, {"type": "subscribe", "channel": "news"})
    transport.send(b, {"type": "subscribe", "channel": "news"})
    assert [x for x in log if not isinstance(x, BrokerPublish)] == [BrokerSubscribe("c:news")]
    transport.send(a, {"type": "unsubscribe", "channel": "news"})
    assert not any(isinstance(x, BrokerUnsubscribe) for x in log)
    transport.close(b)
    assert log[-1] == BrokerUnsubscribe("c:news")


def test_unsubscribe_stops_delivery() -> None:
    hub, transport, clock = make()
    conn = transport.connect()
    transport.send(conn, {"type": "subscribe", "channel": "news"})
    transport.send(conn, {"type": "unsubscribe", "channel": "news"})
    assert events(transport.take(conn))[-1] == ("unsubscription.succeeded", "news")
    hub.broadcast("news", "e", None, now=clock.now)
    transport.run()
    assert transport.take(conn) == []


def test_caller_mistakes_raise() -> None:
    hub, transport, clock = make()
    with pytest.raises(LocalProtocolError):
        transport.send(ConnectionId("ghost"), {"type": "ping"})
    with pytest.raises(LocalProtocolError):
        hub.tick(now=clock.now - 1)


def test_metadata_is_visible_to_callbacks() -> None:
    hub, transport, _ = make()
    seen = []
    hub.channel("private-*").authorize(lambda conn, ch: seen.append(conn.metadata) or True)
    conn = transport.connect(user("a"))
    hub.set_metadata(conn, "role", "admin")
    transport.send(conn, {"type": "subscribe", "channel": "private-x"})
    assert seen == [{"role": "admin"}]
    assert hub.connection(conn).metadata == {"role": "admin"}  # type: ignore[union-attr]


def test_message_rate_limit_answers_4029_with_a_retry_hint() -> None:
    from realtime_proto.config import RateLimits
    from realtime_proto.ratelimit import Rate

    _, transport, clock = make(HubConfig(rates=RateLimits(messages=Rate(2, 3))))
    conn = transport.connect()
    transport.take(conn)
    for _ in range(4):
        transport.send(conn, {"type": "ping"})
    got = transport.take(conn)
    assert [m["type"] for m in got] == ["pong", "pong", "pong", "error"]
    assert got[-1]["data"]["code"] == ErrorCode.RATE_LIMITED
    assert got[-1]["data"]["retry_after"] == 0.5
    clock.advance(0.5)
    transport.send(conn, {"type": "ping"})
    assert [m["type"] for m in transport.take(conn)] == ["pong"]


def test_subscription_rate_limit_names_the_channel() -> None:
    from realtime_proto.config import RateLimits
    from realtime_proto.ratelimit import Rate

    _, transport, _ = make(HubConfig(rates=RateLimits(subscriptions=Rate(1, 1))))
    conn = transport.connect()
    transport.send(conn, {"type": "subscribe", "channel": "a"})
    transport.send(conn, {"type": "subscribe", "channel": "b"})
    error = transport.take(conn)[-1]
    assert (error["channel"], error["data"]["code"]) == ("b", ErrorCode.RATE_LIMITED)
