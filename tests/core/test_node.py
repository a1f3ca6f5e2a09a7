"""The Node with real-library peers over in-memory sockets: routing, transports, fan-out."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realtime_proto import ErrorCode, HubConfig, Limits
from realtime_proto.actions import CloseTransport, Transmit
from realtime_proto.envelope import EnvelopeKind, Outgoing, encode
from realtime_proto.events import EnvelopeReceived
from realtime_proto.framing import MessageIn, PeerClosed
from realtime_proto.testing.peers import HttpPeer, SseEvent, SsePeer, WebSocketPeer

from .nodekit import API_KEY, Harness, token
from .strategies import chunkings


def ws_connect(h: Harness, query: str = "") -> tuple[Any, WebSocketPeer, list[dict[str, Any]]]:
    peer = WebSocketPeer()
    transport = h.open()
    h.feed(transport, peer.handshake_bytes("/ws" + query))
    messages = ws_messages(peer, h.take(transport))
    assert peer.accepted
    return transport, peer, messages


def ws_subscribed(h: Harness, channel: str) -> tuple[Any, WebSocketPeer]:
    """A WebSocket client subscribed to `channel`, the answers so far taken (and, until
    the test pulls its bytes again, an adapter that stopped pulling them)."""
    transport, peer, _ = ws_connect(h)
    h.feed(transport, peer.send_text(json.dumps({"type": "subscribe", "channel": channel})))
    h.take(transport)
    return transport, peer


def ws_messages(peer: WebSocketPeer, data: bytes) -> list[dict[str, Any]]:
    return [json.loads(e.data) for e in peer.receive(data) if isinstance(e, MessageIn)]


def http(h: Harness, method: str, target: str, body: bytes = b"",
         headers: tuple[tuple[str, str], ...] = ()) -> Any:
    peer = HttpPeer()
    transport = h.open()
    h.feed(transport, peer.request(method, target, headers, body))
    [response] = peer.receive(h.take(transport))
    return response


def api(h: Harness, method: str, path: str, body: Any = None, key: str = API_KEY) -> Any:
    raw = json.dumps(body).encode() if body is not None else b""
    return http(h, method, path, raw, (("Authorization", f"Bearer {key}"),
                                       ("Content-Type", "application/json")))


def test_websocket_connect_subscribe_and_receive() -> None:
    h = Harness()
    transport, peer, first = ws_connect(h, f"?token={token('alice')}")
    assert first[0]["event"] == "connection.established"
    assert first[0]["data"]["user_id"] == "alice"
    h.feed(transport, peer.send_text(json.dumps({"type": "subscribe", "channel": "news"})))
    assert ws_messages(peer, h.take(transport))[0]["event"] == "subscription.succeeded"
    h.node.hub.broadcast("news", "headline", {"n": 1}, now=h.clock.now)
    h.pump()
    [message] = ws_messages(peer, h.take(transport))
    assert (message["event"], message["data"]) == ("headline", {"n": 1})


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_any_chunking_of_the_client_bytes_gives_the_same_conversation(data: st.DataObject) -> None:
    peer = WebSocketPeer()
    stream = peer.handshake_bytes("/ws") + b"".join(
        peer.send_text(json.dumps(m)) for m in (
            {"type": "subscribe", "channel": "a"}, {"type": "ping"}, "oops"))
    h = Harness()
    transport = h.open()
    for chunk in data.draw(chunkings(stream)):
        h.feed(transport, chunk)
    got = ws_messages(peer, h.take(transport))
    assert [(m["type"], m.get("event")) for m in got] == [
        ("event", "connection.established"), ("event", "subscription.succeeded"),
        ("pong", None), ("error", None)]


def test_broadcast_is_encoded_once_per_framing_whatever_the_audience() -> None:
    h = Harness()
    peers = [ws_subscribed(h, "news") for _ in range(4)]
    sse = []
    for _ in range(3):
        peer = SsePeer(target="/sse?channels=news")
        transport = h.open()
        h.feed(transport, peer.request_bytes)
        peer.receive(h.take(transport))
        sse.append((transport, peer))
    before = h.node.statistics().encodings
    for number in range(5):
        h.node.hub.broadcast("news", "tick", number, now=h.clock.now)
    h.pump()
    after = h.node.statistics().encodings
    assert after["websocket"] - before.get("websocket", 0) == 5
    assert after["sse"] - before.get("sse", 0) == 5
    for transport, peer in peers:
        assert [m["data"] for m in ws_messages(peer, h.take(transport))] == [0, 1, 2, 3, 4]
    for transport, peer in sse:
        events = [e for e in peer.receive(h.take(transport)) if isinstance(e, SseEvent)]
        assert [json.loads(e.data)["data"] for e in events] == [0, 1, 2, 3, 4]
        assert all(e.id is None for e in events)  # no history here: no stream position


def test_sse_stream_subscribes_from_the_query_and_sends_through_post() -> None:
    h = Harness()
    h.node.hub.channel("private-*").authorize(lambda conn, ch: True)
    peer = SsePeer(target=f"/sse?channels=news,private-x&token={token('bob')}")
    transport = h.open()
    h.feed(transport, peer.request_bytes)
    events = [json.loads(e.data) for e in peer.receive(h.take(transport))
              if isinstance(e, SseEvent)]
    assert [(m["event"], m["channel"]) for m in events] == [
        ("connection.established", None), ("subscription.succeeded", "news"),
        ("subscription.succeeded", "private-x")]
    connection_id = events[0]["data"]["connection_id"]
    response = http(h, "POST", f"/send?connection_id={connection_id}",
                    json.dumps([{"type": "ping"}, {"type": "unsubscribe",
                                                   "channel": "news"}]).encode())
    assert (response.status, json.loads(response.body)) == (202, {"accepted": 2})
    got = [json.loads(e.data) for e in peer.receive(h.take(transport))
           if isinstance(e, SseEvent)]
    assert [m["type"] for m in got] == ["pong", "event"]
    h.eof(transport)
    assert h.node.hub.connection(connection_id) is None


def test_sse_heartbeat_comments_keep_the_stream_alive() -> None:
    h = Harness(sse_heartbeat_interval=5)
    peer = SsePeer()
    transport = h.open()
    h.feed(transport, peer.request_bytes)
    peer.receive(h.take(transport))
    h.advance(6)
    assert b": heartbeat" in h.take(transport)


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"{nope", 400, ErrorCode.MALFORMED_MESSAGE),
    (b"\xff\xfe", 400, ErrorCode.INVALID_UTF8),
    (b"42", 400, ErrorCode.NOT_AN_OBJECT),
    (b'"text"', 400, ErrorCode.NOT_AN_OBJECT),
])
def test_send_refuses_a_bad_body_whole(body: bytes, status: int, code: int) -> None:
    h = Harness()
    opened = json.loads(http(h, "GET", "/poll").body)
    response = http(h, "POST", f"/send?connection_id={opened['connection_id']}", body)
    assert response.status == status
    assert json.loads(response.body)["error"]["code"] == code


def test_send_to_an_unknown_connection_is_404() -> None:
    response = http(Harness(), "POST", "/send?connection_id=nope", b"{}")
    assert response.status == 404 and json.loads(response.body)["error"]["code"] == 4022


def test_long_poll_cursor_makes_a_retry_lose_nothing() -> None:
    h = Harness()
    opened = json.loads(http(h, "GET", "/poll").body)
    connection_id, cursor = opened["connection_id"], opened["cursor"]
    assert opened["messages"][0]["event"] == "connection.established"
    http(h, "POST", f"/send?connection_id={connection_id}",
         json.dumps({"type": "subscribe", "channel": "news"}).encode())
    for number in range(3):
        h.node.hub.broadcast("news", "n", number, now=h.clock.now)
    h.pump()
    first = json.loads(http(h, "GET", f"/poll?connection_id={connection_id}&cursor={cursor}").body)
    assert [m.get("data") for m in first["messages"]] == [{}, 0, 1, 2]
    # the response was lost: the same cursor again gets the same messages
    again = json.loads(http(h, "GET", f"/poll?connection_id={connection_id}&cursor={cursor}").body)
    assert again == first
    h.node.hub.broadcast("news", "n", 3, now=h.clock.now)
    h.pump()
    after = json.loads(http(h, "GET",
                            f"/poll?connection_id={connection_id}&cursor={first['cursor']}").body)
    assert [m["data"] for m in after["messages"]] == [3]


def test_held_poll_is_answered_when_a_message_arrives_or_at_timeout() -> None:
    h = Harness(poll_timeout=10, poll_session_timeout=20)
    opened = json.loads(http(h, "GET", "/poll").body)
    connection_id = opened["connection_id"]
    peer = HttpPeer()
    transport = h.open()
    h.feed(transport, peer.request("GET", f"/poll?connection_id={connection_id}&cursor=1"))
    assert h.take(transport) == b""  # held
    h.node.hub.send(connection_id, "ding", None, now=h.clock.now)
    h.pump()
    [response] = peer.receive(h.take(transport))
    body = json.loads(response.body)
    assert [m["event"] for m in body["messages"]] == ["ding"]
    h.feed(transport, peer.request("GET", f"/poll?connection_id={connection_id}"
                                          f"&cursor={body['cursor']}"))
    h.advance(11)
    [response] = peer.receive(h.take(transport))
    assert json.loads(response.body)["messages"] == []


def test_long_poll_connection_expires_without_polls() -> None:
    h = Harness(poll_timeout=5, poll_session_timeout=10)
    opened = json.loads(http(h, "GET", "/poll").body)
    assert h.node.hub.connection(opened["connection_id"]) is not None
    h.advance(12)
    assert h.node.hub.connection(opened["connection_id"]) is None
    gone = http(h, "GET", f"/poll?connection_id={opened['connection_id']}&cursor=1")
    assert gone.status == 404


def test_api_needs_the_key_and_a_good_body() -> None:
    h = Harness()
    assert api(h, "POST", "/api/publish", {"channel": "a", "event": "e"}, key="bad").status == 401
    assert http(h, "POST", "/api/publish", b"{}").status == 401
    bad = api(h, "POST", "/api/publish", {"channel": "a"})
    assert bad.status == 400 and json.loads(bad.body)["error"]["code"] == ErrorCode.MISSING_FIELD
    bad = http(h, "POST", "/api/publish", b"{x", (("Authorization", f"Bearer {API_KEY}"),))
    assert bad.status == 400 and json.loads(bad.body)["error"]["code"] == 4000
    bad = api(h, "POST", "/api/publish", {"channel": "bad name", "event": "e"})
    assert json.loads(bad.body)["error"]["code"] == ErrorCode.INVALID_CHANNEL_NAME
    ok = api(h, "POST", "/api/publish", {"channels": ["a", "b"], "event": "e", "data": 1})
    assert ok.status == 200 and len(json.loads(ok.body)["ids"]) == 2


def test_api_batch_publishes_in_order_and_checks_every_message_first() -> None:
    h = Harness()
    transport, peer, _ = ws_connect(h)
    h.feed(transport, peer.send_text(json.dumps({"type": "subscribe", "channel": "news"})))
    peer.receive(h.take(transport))
    published = h.node.statistics().hub.published
    bad = api(h, "POST", "/api/batch", {"messages": [
        {"channel": "news", "event": "e", "data": 1}, {"channel": "bad name", "event": "e"}]})
    error = json.loads(bad.body)["error"]
    assert bad.status == 400 and error["code"] == ErrorCode.INVALID_CHANNEL_NAME
    assert error["message"].startswith("messages[1]")
    assert h.node.statistics().hub.published == published  # nothing went out
    for body in ({}, {"messages": []}, {"messages": [1]},
                 {"messages": [{"channel": "news", "event": "e"}] * 1001}):
        assert api(h, "POST", "/api/batch", body).status == 400
    ok = api(h, "POST", "/api/batch", {"messages": [
        {"channel": "news", "event": "e", "data": n} for n in range(5)]})
    ids = json.loads(ok.body)["ids"]
    got = [json.loads(m.data) for m in peer.receive(h.take(transport))
           if hasattr(m, "data")]
    assert [m["data"] for m in got] == [0, 1, 2, 3, 4]
    assert [m["id"] for m in got] == [i[0] for i in ids]


def test_api_reads_channels_and_members() -> None:
    h = Harness()
    h.node.hub.channel("presence-*").authorize(lambda conn, ch: {"n": 1})
    transport, peer, _ = ws_connect(h, f"?token={token('ann')}")
    for channel in ("news", "presence-lobby"):
        h.feed(transport, peer.send_text(json.dumps({"type": "subscribe", "channel": channel})))
    listing = json.loads(api(h, "GET", "/api/channels").body)
    assert listing == {"channels": [{"name": "news", "subscribers": 1},
                                    {"name": "presence-lobby", "subscribers": 1}]}
    members = json.loads(api(h, "GET", "/api/channels/presence-lobby/members").body)
    assert members == {"members": [{"user_id": "ann", "info": {"n": 1}}]}
    sent = api(h, "POST", "/api/users/ann/send", {"event": "hello", "data": 5})
    assert sent.status == 200
    assert ws_messages(peer, h.take(transport))[-1]["event"] == "hello"


def test_health_metrics_static_and_not_found() -> None:
    h = Harness()
    health = http(h, "GET", "/health")
    assert health.status == 200 and json.loads(health.body)["status"] == "ok"
    metrics = http(h, "GET", "/metrics").body.decode()
    assert 'realtime_connections{node="n1",runtime="unknown",transport="websocket"} 0' in metrics
    assert "# TYPE realtime_errors_total counter" in metrics
    assert "# TYPE realtime_broker_delivery_seconds histogram" in metrics
    bytes_in = next(line for line in metrics.splitlines()
                    if line.startswith("realtime_bytes_in_total{"))
    assert float(bytes_in.rsplit(" ", 1)[1]) > 0  # the requests of this test so far
    page = http(h, "GET", "/")
    assert (page.status, page.body, page.headers["content-type"]) == (200, b"<h1>hi</h1>",
                                                                      "text/html")
    head = http(h, "HEAD", "/index.html")
    assert head.status == 200 and head.headers["content-length"] == "11"
    assert http(h, "GET", "/nothing").status == 404


def test_bad_token_is_refused_before_the_upgrade() -> None:
    h = Harness()
    peer = WebSocketPeer()
    transport = h.open()
    h.feed(transport, peer.handshake_bytes("/ws?token=forged.token.here"))
    response = HttpPeer().receive  # the 401 is plain HTTP
    assert h.take(transport).startswith(b"HTTP/1.1 401 ")
    del response


def test_slow_websocket_consumer_is_dropped_and_others_keep_receiving() -> None:
    h = Harness(hub=HubConfig(node_id="n1", limits=Limits(max_output_bytes=1000)))
    slow, _ = ws_subscribed(h, "n")
    good, good_peer = ws_subscribed(h, "n")
    # the adapter stops pulling for `slow` (its socket is full): emulate by not pumping it
    for _number in range(20):
        h.node.hub.broadcast("n", "x", "y" * 100, now=h.clock.now)
        for action in h.node.actions():
            if isinstance(action, Transmit) and good in action.transport_ids:
                h.output[good].extend(b"".join(h.node.data_to_send(good)))
            elif isinstance(action, CloseTransport) and action.transport_id == slow:
                h.closed.add(slow)
    assert slow in h.closed
    assert h.node.statistics().slow_consumers == 1
    assert len([m for m in ws_messages(good_peer, h.take(good)) if m["event"] == "x"]) == 20


def test_shutdown_closes_every_transport_its_own_way() -> None:
    h = Harness()
    ws, ws_peer, _ = ws_connect(h)
    sse_peer = SsePeer()
    sse = h.open()
    h.feed(sse, sse_peer.request_bytes)
    sse_peer.receive(h.take(sse))
    opened = json.loads(http(h, "GET", "/poll").body)
    poll_peer = HttpPeer()
    poll = h.open()
    h.feed(poll, poll_peer.request("GET", f"/poll?connection_id={opened['connection_id']}"
                                          f"&cursor={opened['cursor']}"))
    h.node.shutdown(now=h.clock.now)
    h.pump()
    closes = [e for e in ws_peer.receive(h.take(ws)) if isinstance(e, PeerClosed)]
    assert [c.code for c in closes] == [1001]
    events = [json.loads(e.data) for e in sse_peer.receive(h.take(sse))
              if isinstance(e, SseEvent)]
    assert events[-1]["event"] == "connection.closed" and sse_peer.ended
    [answer] = poll_peer.receive(h.take(poll))
    assert json.loads(answer.body)["messages"][-1]["data"]["code"] == 1001
    assert {sse, poll} <= h.closed  # the answered poll was its connection's last request


def test_connections_per_address_and_api_calls_per_key_are_rate_limited() -> None:
    from realtime_proto.config import RateLimits
    from realtime_proto.ratelimit import Rate

    h = Harness(hub=HubConfig(node_id="n1", rates=RateLimits(connections=Rate(1, 2),
                                                             api_calls=Rate(1, 1))))
    statuses = [http(h, "GET", "/poll").status for _ in range(3)]
    assert statuses == [200, 200, 429]
    refused = http(h, "GET", "/poll")
    assert json.loads(refused.body)["error"]["code"] == 4029
    assert int(refused.headers["retry-after"]) >= 1
    assert api(h, "GET", "/api/channels").status == 200
    assert api(h, "GET", "/api/channels").status == 429
    h.advance(1.5)
    assert http(h, "GET", "/poll").status == 200
    assert api(h, "GET", "/api/channels").status == 200


def test_the_node_admits_new_connections_at_its_handshake_rate_and_refuses_with_503() -> None:
    from realtime_proto.config import RateLimits
    from realtime_proto.ratelimit import Rate

    h = Harness(hub=HubConfig(node_id="n1", rates=RateLimits(connections=None,
                                                             handshakes=Rate(2, 2))))
    assert [http(h, "GET", "/poll").status for _ in range(2)] == [200, 200]
    refused = http(h, "GET", "/poll")
    assert refused.status == 503
    assert json.loads(refused.body)["error"]["code"] == ErrorCode.TOO_MANY_CONNECTIONS
    assert 0 < json.loads(refused.body)["retry_after"] <= 0.5
    assert refused.headers["retry-after"] == "1"
    peer = WebSocketPeer()
    transport = h.open()
    h.feed(transport, peer.handshake_bytes("/ws"))
    assert not peer.accepted and b" 503 " in h.take(transport).split(b"\r\n")[0] + b" "
    assert transport in h.closed  # a refused socket is not kept alive
    # what is not a new connection is served: the API, health, an open long-poll's polls
    assert api(h, "GET", "/api/channels").status == 200
    assert http(h, "GET", "/health").status == 200
    assert h.node.statistics().refused_connections == {"handshakes": 2}
    h.advance(0.5)  # one token back
    assert ws_connect(h)[1].accepted
    assert http(h, "GET", "/poll").status == 503


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_limit() -> None:
    from realtime_proto.actions import Authenticate
    from realtime_proto.config import RateLimits
    from realtime_proto.events import AuthenticationAnswered
    from realtime_proto.forwarded import parse_networks
    from realtime_proto.ratelimit import Rate

    h = Harness(hub=HubConfig(node_id="n1", rates=RateLimits(connections=Rate(1, 1))),
                trusted_proxies=parse_networks(["127.0.0.0/8"]), custom_authentication=True)

    def connect(*headers: tuple[str, str]) -> Authenticate | int:
        """The application's Authenticate action (then accepted), or the refusal's status."""
        peer = HttpPeer()
        transport = h.open()  # the Harness's sockets come from 127.0.0.1:5000
        h.broker.clear()
        h.feed(transport, peer.request("GET", "/poll", headers))
        asked = [action for action in h.broker if isinstance(action, Authenticate)]
        if not asked:
            [refused] = peer.receive(h.take(transport))
            return int(refused.status)
        [action] = asked
        h.node.handle(AuthenticationAnswered(request_id=action.request_id), now=h.clock.now)
        h.pump()
        [answer] = peer.receive(h.take(transport))
        assert answer.status == 200
        return action

    first = connect(("X-Forwarded-For", "203.0.113.1"))
    second = connect(("Forwarded", 'for="[2001:db8::2]:4711"'))
    assert isinstance(first, Authenticate) and isinstance(second, Authenticate)
    # the application sees the client, not the proxy; so does the connection
    assert (first.request.peer, second.request.peer) == ("203.0.113.1:0", "2001:db8::2:4711")
    peers = {h.node.hub.connection(c).peer  # type: ignore[union-attr]
             for c in h.node.hub.connection_ids()}
    assert peers == {"203.0.113.1:0", "2001:db8::2:4711"}
    # one bucket per client: a second connection of the first client is over its rate
    assert connect(("X-Forwarded-For", "203.0.113.1")) == 429
    # the proxy's own connections (no header) share the proxy's bucket
    assert isinstance(connect(), Authenticate)
    assert connect() == 429


def test_an_untrusted_peer_cannot_escape_its_limit_with_a_forged_header() -> None:
    from realtime_proto.config import RateLimits
    from realtime_proto.forwarded import parse_networks
    from realtime_proto.ratelimit import Rate

    h = Harness(hub=HubConfig(node_id="n1", rates=RateLimits(connections=Rate(1, 1))),
                trusted_proxies=parse_networks(["10.0.0.0/8"]))
    statuses = [http(h, "GET", "/poll", headers=(("X-Forwarded-For", f"203.0.113.{n}"),)).status
                for n in range(3)]
    assert statuses == [200, 429, 429]


def _publish_without_pulling(h: Harness, channel: str, messages: list[Any]) -> None:
    for data in messages:
        h.node.hub.broadcast(channel, "tick", data, now=h.clock.now)
        h.node.actions()  # the adapter sees Transmit but its socket is full: no pull


def test_drop_oldest_policy_keeps_the_newest_and_tells_the_client() -> None:
    from realtime_proto.backlog import SlowConsumerPolicy, SlowConsumerRule

    h = Harness(hub=HubConfig(node_id="n1", limits=Limits(max_output_bytes=2000)),
                slow_consumers=(SlowConsumerRule("feed.*", SlowConsumerPolicy.DROP_OLDEST),))
    transport, peer = ws_subscribed(h, "feed.1")
    _publish_without_pulling(h, "feed.1", [{"n": n, "pad": "x" * 100} for n in range(60)])
    messages = ws_messages(peer, b"".join(h.node.data_to_send(transport)))
    assert transport not in h.closed
    notices = [m for m in messages if m["event"] == "messages.dropped"]
    assert notices and notices[0]["channel"] == "feed.1"
    numbers = [m["data"]["n"] for m in messages if m["event"] == "tick"]
    assert numbers == sorted(numbers) and numbers[-1] == 59  # the newest survive, in order
    assert sum(n["data"]["count"] for n in notices) == 60 - len(numbers)
    assert h.node.statistics().dropped_messages == 60 - len(numbers)


def test_latest_policy_conflates_by_key() -> None:
    from realtime_proto.backlog import SlowConsumerPolicy, SlowConsumerRule

    h = Harness(slow_consumers=(SlowConsumerRule("cursors", SlowConsumerPolicy.LATEST),))
    transport, peer = ws_subscribed(h, "cursors")
    _publish_without_pulling(h, "cursors", [{"key": user, "x": x}
                                            for x in range(5) for user in ("ann", "bob")])
    got = [m["data"] for m in ws_messages(peer, b"".join(h.node.data_to_send(transport)))]
    assert got == [{"key": "ann", "x": 4}, {"key": "bob", "x": 4}]


def _bundle_from_n2(channel: str, events: list[str]) -> EnvelopeReceived:
    """Another node's bundle of messages on `channel`, as the broker hands it over."""
    run = [Outgoing(f"c:{channel}", sequence, EnvelopeKind.CHANNEL,
                    json.dumps({"type": "event", "channel": channel, "event": event,
                                "data": "p" * 100}).encode())
           for sequence, event in enumerate(events, start=1)]
    return EnvelopeReceived(topic=f"c:{channel}", data=encode(b'"n2"', 1, run))


def test_a_bundle_from_another_node_reaches_every_subscriber_in_order_then_a_local_one() -> None:
    h = Harness()
    subscribers = [ws_subscribed(h, "n") for _ in range(2)]
    events = [f"e{number}" for number in range(30)]
    h.node.handle(_bundle_from_n2("n", events), now=h.clock.now)
    h.node.hub.broadcast("n", "local", None, now=h.clock.now)
    h.pump()
    for transport, peer in subscribers:
        assert [m["event"] for m in ws_messages(peer, h.take(transport))] == [*events, "local"]


def test_a_subscriber_that_does_not_read_is_dropped_once_within_a_bundle() -> None:
    h = Harness(hub=HubConfig(node_id="n1", limits=Limits(max_output_bytes=1000)))
    transport, _peer = ws_subscribed(h, "n")
    h.node.handle(_bundle_from_n2("n", [f"e{number}" for number in range(30)]),
                  now=h.clock.now)
    h.pump()
    assert transport in h.closed
    assert h.node.statistics().slow_consumers == 1


def test_drop_oldest_within_a_bundle_keeps_the_newest_in_order() -> None:
    from realtime_proto.backlog import SlowConsumerPolicy, SlowConsumerRule

    h = Harness(hub=HubConfig(node_id="n1", limits=Limits(max_output_bytes=2000)),
                slow_consumers=(SlowConsumerRule("feed.*", SlowConsumerPolicy.DROP_OLDEST),))
    transport, peer = ws_subscribed(h, "feed.1")
    events = [f"e{number:02}" for number in range(60)]
    h.node.handle(_bundle_from_n2("feed.1", events), now=h.clock.now)
    h.node.actions()  # its socket is full: no pull
    messages = ws_messages(peer, b"".join(h.node.data_to_send(transport)))
    assert transport not in h.closed
    kept = [m["event"] for m in messages if m["event"] != "messages.dropped"]
    assert kept == events[-len(kept):] and len(kept) < 60
    [notice] = [m for m in messages if m["event"] == "messages.dropped"]
    assert notice["data"]["count"] == 60 - len(kept)
