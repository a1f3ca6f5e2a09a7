"""No sticky sessions: a poll, send or close for another node's connection is forwarded to
it over the broker and answered from there (two Nodes, their broker topics bridged)."""

from __future__ import annotations

import json
from typing import Any

from realtime_proto import HubConfig
from realtime_proto.actions import BrokerPublish, BrokerSubscribe
from realtime_proto.events import EnvelopeReceived, TransportId
from realtime_proto.forwarding import (
    ForwardedHeld,
    ForwardedReply,
    ForwardedRequest,
    decode_forwarded,
    encode_held,
    encode_reply,
    encode_request,
    node_topic,
    owner_route,
)
from realtime_proto.testing.peers import HttpPeer, HttpResponse

from .nodekit import Harness
from .test_node import http


def pair(**config: Any) -> tuple[Harness, Harness]:
    return (Harness(hub=HubConfig(node_id="a"), ids="a", **config),
            Harness(hub=HubConfig(node_id="b"), ids="b", **config))


def carry(*nodes: Harness) -> int:
    """Deliver the node-topic publishes between the nodes until none is left (a broker
    that loses nothing); how many were carried."""
    routes = {node_topic(h.node.route): h for h in nodes}
    carried = 0
    while True:
        moving = [(h, a) for h in nodes for a in h.broker
                  if isinstance(a, BrokerPublish) and a.topic in routes]
        if not moving:
            return carried
        for h, action in moving:
            h.broker.remove(action)
            target = routes[action.topic]
            target.node.handle(EnvelopeReceived(topic=action.topic, data=action.data),
                               now=target.clock.now)
            target.pump()
            carried += 1


def request(h: Harness, method: str, target: str, body: bytes = b"") -> tuple[TransportId,
                                                                              HttpPeer]:
    peer = HttpPeer()
    transport = h.open()
    h.feed(transport, peer.request(method, target, (), body))
    return transport, peer


def answer(h: Harness, transport: TransportId, peer: HttpPeer) -> HttpResponse | None:
    data = h.take(transport)
    if not data:
        return None  # (an empty read would be the end of the stream to h11)
    [response] = peer.receive(data)
    return response


def test_each_node_listens_on_its_route_and_its_connection_ids_carry_it() -> None:
    a, b = pair()
    assert a.node.route != b.node.route
    assert BrokerSubscribe(node_topic(a.node.route)) in a.broker
    opened = json.loads(http(a, "GET", "/poll").body)
    assert owner_route(opened["connection_id"]) == a.node.route
    assert owner_route("no-route") is None


def test_a_poll_held_for_another_node_is_answered_when_its_message_comes() -> None:
    a, b = pair()
    opened = json.loads(http(a, "GET", "/poll").body)
    connection_id, cursor = opened["connection_id"], opened["cursor"]
    transport, peer = request(b, "GET", f"/poll?connection_id={connection_id}&cursor={cursor}")
    assert carry(a, b) == 2  # the request reached a, which holds it and says so
    assert answer(b, transport, peer) is None
    a.node.hub.send(connection_id, "ding", {"n": 1}, now=a.clock.now)
    a.pump()
    assert carry(a, b) == 1  # the reply
    response = answer(b, transport, peer)
    assert response is not None and response.status == 200
    body = json.loads(response.body)
    assert body["connection_id"] == connection_id
    assert [(m["event"], m["data"]) for m in body["messages"]] == [("ding", {"n": 1})]
    counts = b.node.statistics().forwarded
    assert (counts["sent"], counts["answered"]) == (1, 1)
    assert a.node.statistics().forwarded["served"] == 1


def test_sends_and_close_through_another_node_act_on_the_owner() -> None:
    a, b = pair()
    opened = json.loads(http(a, "GET", "/poll").body)
    connection_id = opened["connection_id"]
    subscribe = json.dumps({"type": "subscribe", "channel": "news"}).encode()
    transport, peer = request(b, "POST", f"/send?connection_id={connection_id}", subscribe)
    carry(a, b)
    response = answer(b, transport, peer)
    assert response is not None and (response.status, json.loads(response.body)) == (
        202, {"accepted": 1})
    assert a.node.hub.channels() == {"news": 1}
    bad, bad_peer = request(b, "POST", f"/send?connection_id={connection_id}", b"[1")
    carry(a, b)
    refused = answer(b, bad, bad_peer)
    assert refused is not None and refused.status == 400  # the owner's own answer
    assert json.loads(refused.body)["error"]["code"] == 4000
    close, close_peer = request(b, "POST", f"/close?connection_id={connection_id}")
    carry(a, b)
    closed = answer(b, close, close_peer)
    assert closed is not None and json.loads(closed.body) == {"closed": True}
    assert a.node.hub.connection_ids() == []
    gone, gone_peer = request(b, "POST", f"/send?connection_id={connection_id}", subscribe)
    carry(a, b)
    unknown = answer(b, gone, gone_peer)
    assert unknown is not None and unknown.status == 404
    assert json.loads(unknown.body)["error"]["code"] == 4022


def test_a_request_for_a_node_that_never_answers_gets_404_after_the_timeout() -> None:
    a, b = pair(poll_timeout=10, poll_session_timeout=20, forward_timeout=5)
    opened = json.loads(http(a, "GET", "/poll").body)
    connection_id = opened["connection_id"]
    send, send_peer = request(b, "POST", f"/send?connection_id={connection_id}", b"{}")
    poll, poll_peer = request(b, "GET", f"/poll?connection_id={connection_id}&cursor=1")
    b.advance(4)
    assert answer(b, send, send_peer) is None  # nothing carried: a never heard them
    assert answer(b, poll, poll_peer) is None
    b.advance(2)
    for transport, peer in ((send, send_peer), (poll, poll_peer)):
        refused = answer(b, transport, peer)
        assert refused is not None and refused.status == 404
        assert json.loads(refused.body)["error"]["code"] == 4022
    assert b.node.statistics().forwarded["expired"] == 2
    carry(a, b)  # late: a answers both, and b drops the replies
    assert b.node.statistics().forwarded.get("answered", 0) == 0


def test_a_poll_the_owner_holds_is_waited_for_until_the_owner_answers_it() -> None:
    a, b = pair(poll_timeout=10, poll_session_timeout=20, forward_timeout=5)
    opened = json.loads(http(a, "GET", "/poll").body)
    connection_id, cursor = opened["connection_id"], opened["cursor"]
    poll, poll_peer = request(b, "GET", f"/poll?connection_id={connection_id}&cursor={cursor}")
    carry(a, b)  # held by a, which told b
    b.advance(9)  # past forward_timeout: still waiting, a holds it
    assert answer(b, poll, poll_peer) is None
    a.advance(11)  # a's poll_timeout: answered empty
    carry(a, b)
    response = answer(b, poll, poll_peer)
    assert response is not None and response.status == 200
    assert json.loads(response.body)["messages"] == []
    assert b.node.statistics().forwarded.get("expired", 0) == 0


def test_an_id_of_our_own_route_or_a_malformed_message_is_not_forwarded() -> None:
    a, _ = pair()
    response = http(a, "POST", f"/send?connection_id={a.node.route}.gone", b"{}")
    assert response.status == 404
    assert not [x for x in a.broker if isinstance(x, BrokerPublish) and x.topic.startswith("n:")]
    a.node.handle(EnvelopeReceived(topic=node_topic(a.node.route), data=b"{nonsense"),
                  now=a.clock.now)
    a.node.handle(EnvelopeReceived(topic=node_topic(a.node.route), data=b'{"a":1}\n'),
                  now=a.clock.now)
    a.pump()
    assert a.node.statistics().forwarded == {}


def test_messages_round_trip() -> None:
    data = encode_request("r1", "bb", "POST", "/send", {"connection_id": "aa.x"}, b'{"\n"}')
    assert decode_forwarded(data) == ForwardedRequest("r1", "bb", "POST", "/send",
                                                      {"connection_id": "aa.x"}, b'{"\n"}')
    reply = encode_reply("r1", 202, [("content-type", "application/json")], b"{}")
    assert decode_forwarded(reply) == ForwardedReply(
        "r1", 202, [("content-type", "application/json")], b"{}")
    assert decode_forwarded(encode_held("r2")) == ForwardedHeld("r2")
    assert decode_forwarded(b"[]\n") is None
    assert decode_forwarded(b'{"q":1}') is None
