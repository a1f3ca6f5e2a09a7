"""The Pusher codec on the Node, with no socket: encode once per broadcast, app isolation,
close codes, and the signature checks."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realtime_proto import ErrorCode, HubConfig
from realtime_proto.config import RateLimits
from realtime_proto.framing import MessageIn, PeerClosed
from realtime_proto.pusher import codec
from realtime_proto.pusher.apps import PusherApp, parse_app, parse_apps, sign
from realtime_proto.ratelimit import Rate
from realtime_proto.testing.peers import HttpPeer, WebSocketPeer

from .nodekit import Harness

ONE = parse_app("1:key-one:secret-one")
APPS = parse_apps(("1:key-one:secret-one", "2:key-two:secret-two"))


def pusher_connect(h: Harness, key: str = "key-one") -> tuple[Any, WebSocketPeer, str]:
    peer = WebSocketPeer()
    transport = h.open()
    h.feed(transport, peer.handshake_bytes(f"/app/{key}?protocol=7&client=js&version=8.4.0"))
    [established] = frames(peer, h.take(transport))
    assert established["event"] == "pusher:connection_established"
    return transport, peer, established["data"]["socket_id"]


def frames(peer: WebSocketPeer, data: bytes) -> list[dict[str, Any]]:
    return received(peer, data)[0]


def received(peer: WebSocketPeer, data: bytes) -> tuple[list[dict[str, Any]], int | None]:
    """The frames (their `data` decoded from its JSON string) and the close code, if any."""
    result, code = [], None
    for event in peer.receive(data):
        if isinstance(event, MessageIn):
            frame = json.loads(event.data)
            frame["data"] = json.loads(frame["data"])
            result.append(frame)
        elif isinstance(event, PeerClosed):
            code = event.code
    return result, code


def send(h: Harness, transport: Any, peer: WebSocketPeer, event: str, data: Any,
         channel: str | None = None) -> list[dict[str, Any]]:
    frame = {"event": event, "data": data, **({"channel": channel} if channel else {})}
    h.feed(transport, peer.send_text(json.dumps(frame)))
    return frames(peer, h.take(transport))


def test_a_broadcast_is_encoded_once_for_every_pusher_subscriber() -> None:
    h = Harness(pusher_apps=(ONE,))
    sockets = [pusher_connect(h) for _ in range(4)]
    for transport, peer, _ in sockets:
        assert send(h, transport, peer, "pusher:subscribe", {"channel": "news"})[0]["event"] \
            == "pusher_internal:subscription_succeeded"
    before = h.node.statistics().encodings.get("pusher", 0)
    for number in range(5):
        h.node.hub.broadcast("news", "tick", {"n": number}, now=h.clock.now)
    h.pump()
    assert h.node.statistics().encodings["pusher"] - before == 5
    for transport, peer, _ in sockets:
        assert frames(peer, h.take(transport)) == [
            {"event": "tick", "channel": "news", "data": {"n": n}} for n in range(5)]


def test_several_apps_are_isolated_from_each_other() -> None:
    h = Harness(pusher_apps=APPS)
    one, one_peer, _ = pusher_connect(h, "key-one")
    two, two_peer, _ = pusher_connect(h, "key-two")
    for transport, peer in ((one, one_peer), (two, two_peer)):
        send(h, transport, peer, "pusher:subscribe", {"channel": "news"})
    h.node.hub.broadcast(APPS[0].hub_channel("news"), "tick", 1, now=h.clock.now)
    h.pump()
    assert frames(one_peer, h.take(one)) == [{"event": "tick", "channel": "news", "data": 1}]
    assert frames(two_peer, h.take(two)) == []


def test_the_server_pings_and_an_idle_pusher_client_may_reconnect() -> None:
    h = Harness(pusher_apps=(ONE,))
    transport, peer, _ = pusher_connect(h)
    h.advance(h.node.config.hub.heartbeat_interval + 1)
    assert [f["event"] for f in frames(peer, h.take(transport))] == ["pusher:ping"]
    h.advance(h.node.config.hub.effective_idle_timeout)
    # 4020 would stop pusher-js for good; 4201 makes it reconnect at once
    assert received(peer, h.take(transport)) == ([], codec.PusherClose.PONG_NOT_RECEIVED)


def test_unknown_keys_and_protocols_get_the_closes_that_stop_pusher_js() -> None:
    h = Harness(pusher_apps=(ONE,))
    for target, code in (("/app/nope?protocol=7", 4001), ("/app/key-one?protocol=6", 4007),
                         ("/app/key-one", 4007)):
        peer = WebSocketPeer()
        transport = h.open()
        h.feed(transport, peer.handshake_bytes(target))
        [error], closed = received(peer, h.take(transport))
        assert error["event"] == "pusher:error" and error["data"]["code"] == code
        assert closed == code


def test_channel_data_is_verified_byte_for_byte_as_received() -> None:
    app = PusherApp("1", "key", "secret")
    spaced = '{"user_id": "ann", "user_info": {"name": "Ann"}}'  # the Python SDK's json
    auth = "key:" + sign("secret", f"1.2:presence-room:{spaced}")
    accepted = codec.decode_frame(app, "1.2", json.dumps({"event": "pusher:subscribe", "data": {
        "channel": "presence-room", "auth": auth, "channel_data": spaced}}), max_bytes=10_000)
    assert accepted.grant is not None and accepted.grant[1] is not None
    assert accepted.grant[1].user_id == "ann"
    compact = json.dumps(json.loads(spaced), separators=(",", ":"))  # same JSON, other bytes
    refused = codec.decode_frame(app, "1.2", json.dumps({"event": "pusher:subscribe", "data": {
        "channel": "presence-room", "auth": auth, "channel_data": compact}}), max_bytes=10_000)
    assert refused.message is None and refused.reply is not None
    assert json.loads(refused.reply)["event"] == "pusher:subscription_error"


@pytest.mark.parametrize("frame", [
    "[]", '{"data": {}}', '{"event": "pusher:subscribe", "data": {"channel": "bad name"}}',
    '{"event": "client-x", "channel": "public", "data": {}}',
    '{"event": "pusher:signin_typo", "data": {}}'])
def test_bad_frames_are_answered_with_a_pusher_error(frame: str) -> None:
    inbound = codec.decode_frame(APPS[0], "1.2", frame, max_bytes=10_000)
    assert inbound.message is None and inbound.reply is not None
    assert json.loads(inbound.reply)["event"] == "pusher:error"


def test_socket_ids_have_the_form_the_sdks_insist_on() -> None:
    ids = {codec.socket_id_for(f"random-id-{n}") for n in range(100)}
    assert len(ids) == 100
    assert all(a.isdigit() and b.isdigit() for a, _, b in (i.partition(".") for i in ids))


def test_close_codes_keep_pusher_js_reconnecting_unless_it_must_stop() -> None:
    assert codec.close_code(ErrorCode.SLOW_CONSUMER) == 4100
    assert codec.close_code(ErrorCode.IDLE_TIMEOUT) == 4201
    assert codec.close_code(ErrorCode.FORBIDDEN) == 4200
    assert codec.close_code(4009) == 4009 and codec.close_code(1001) == 1001


def test_app_options_are_checked_and_the_secret_stays_out_of_sight() -> None:
    app = parse_app("7:key:very-secret")
    assert "very-secret" not in repr(app) and app.namespace == ""
    assert {a.namespace for a in APPS} == {":app1", ":app2"}
    for bad in ("7:key", "x7:key:s", "7:k y:s", ":key:s"):
        with pytest.raises(ValueError) as error:
            parse_app(bad)
        assert "very-secret" not in str(error.value)
    with pytest.raises(ValueError, match="same id or key"):
        parse_apps(("1:a:s", "1:b:s"))


def test_client_events_over_the_rate_get_the_pusher_code() -> None:
    h = Harness(pusher_apps=(ONE,), hub=HubConfig(node_id="n1", rates=RateLimits(
        messages=Rate(0.001, 1))))  # the subscribe takes the one token
    transport, peer, socket_id = pusher_connect(h)
    channel = "private-room"
    auth = "key-one:" + sign("secret-one", f"{socket_id}:{channel}")
    send(h, transport, peer, "pusher:subscribe", {"channel": channel, "auth": auth})
    [limited] = send(h, transport, peer, "client-typing", {}, channel)
    assert limited["event"] == "pusher:error" and limited["data"]["code"] == 4301


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


@given(event=st.sampled_from(["pusher:subscribe", "pusher:unsubscribe", "pusher:signin",
                              "pusher:ping", "client-x", "other"]),
       data=_JSON, channel=_JSON)
@settings(max_examples=300, deadline=None)
def test_any_frame_is_decoded_or_answered_without_raising(event: str, data: Any,
                                                          channel: Any) -> None:
    raw = json.dumps({"event": event, "data": data, "channel": channel})
    inbound = codec.decode_frame(ONE, "1.2", raw, max_bytes=10_000)
    assert (inbound.reply is not None) or (inbound.message is not None) \
        or inbound.user_channel is not None or event == "pusher:unsubscribe"


def test_the_http_api_is_signed_and_rate_limited_per_key() -> None:
    h = Harness(pusher_apps=(ONE,), hub=HubConfig(node_id="n1", rates=RateLimits(
        api_calls=Rate(0.001, 1))))
    unix = h.node._epoch.unix_ms_at(h.clock.now) // 1000
    query = f"auth_key=key-one&auth_timestamp={unix}&auth_version=1.0"
    signature = sign("secret-one", f"GET\n/apps/1/channels\n{query}")

    def get(target: str) -> Any:
        peer = HttpPeer()
        transport = h.open()
        h.feed(transport, peer.request("GET", target, (), b""))
        [response] = peer.receive(h.take(transport))
        return response

    assert get(f"/apps/1/channels?{query}&auth_signature={'0' * 64}").status == 401
    assert get(f"/apps/1/channels?{query}&auth_signature={signature}").status == 429
    other = Harness(pusher_apps=(ONE,))
    peer = HttpPeer()
    transport = other.open()
    other.feed(transport, peer.request(
        "GET", f"/apps/1/channels?{query}&auth_signature={signature}", (), b""))
    [response] = peer.receive(other.take(transport))
    assert response.status == 200 and json.loads(response.body) == {"channels": {}}


def test_a_presence_cache_channel_answers_its_members_then_the_cached_event_or_a_miss() -> None:
    h = Harness(pusher_apps=(ONE,), hub=HubConfig(node_id="n1", history=codec.CACHE_RULES))
    channel = "presence-cache-room"

    def join(user: str) -> tuple[Any, WebSocketPeer, list[dict[str, Any]]]:
        transport, peer, socket_id = pusher_connect(h)
        channel_data = json.dumps({"user_id": user})
        auth = "key-one:" + sign("secret-one", f"{socket_id}:{channel}:{channel_data}")
        got = send(h, transport, peer, "pusher:subscribe",
                   {"channel": channel, "auth": auth, "channel_data": channel_data})
        return transport, peer, got

    _, _, first = join("ann")
    assert [(f["event"], f["data"]) for f in first] == [
        ("pusher_internal:subscription_succeeded",
         {"presence": {"ids": ["ann"], "hash": {"ann": {}}, "count": 1}}),
        ("pusher:cache_miss", {})]
    h.node.hub.broadcast(channel, "price", {"p": 2}, now=h.clock.now)
    h.pump()
    _, _, late = join("bob")
    assert [f["event"] for f in late] == ["pusher_internal:subscription_succeeded", "price"]
    assert late[0]["data"]["presence"]["count"] == 2 and late[1]["data"] == {"p": 2}
