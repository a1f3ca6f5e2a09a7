"""The wire codecs on the Node: one encoding per codec per message, whichever protocols
share the channel, and per user for what is sent to a user."""

from __future__ import annotations

from realtime_proto.testing.peers import SsePeer

from .nodekit import Harness
from .test_node import ws_messages, ws_subscribed
from .test_pusher import ONE, frames, pusher_connect, send


def test_a_channel_shared_by_three_protocols_is_encoded_once_per_codec() -> None:
    h = Harness(pusher_apps=(ONE,))
    native = [ws_subscribed(h, "news") for _ in range(3)]
    sse_peer = SsePeer(target="/sse?channels=news")
    sse = h.open()
    h.feed(sse, sse_peer.request_bytes)
    sse_peer.receive(h.take(sse))
    pushers = [pusher_connect(h) for _ in range(3)]
    for transport, peer, _ in pushers:
        send(h, transport, peer, "pusher:subscribe", {"channel": "news"})
    before = h.node.statistics().encodings
    h.node.hub.broadcast("news", "tick", {"n": 1}, now=h.clock.now)
    h.pump()
    after = h.node.statistics().encodings
    assert {name: after[name] - before.get(name, 0)
            for name in ("websocket", "sse", "pusher")} == {"websocket": 1, "sse": 1,
                                                            "pusher": 1}
    for transport, peer in native:
        assert [m["data"] for m in ws_messages(peer, h.take(transport))] == [{"n": 1}]
    for transport, peer, _ in pushers:
        assert frames(peer, h.take(transport)) == [
            {"event": "tick", "channel": "news", "data": {"n": 1}}]
