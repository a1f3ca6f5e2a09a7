"""Bundles: publishes to one topic made together cross the broker as one message."""

from __future__ import annotations

import pytest

from realtime_proto import HubConfig
from realtime_proto.actions import BrokerPublish
from realtime_proto.envelope import Envelope, EnvelopeKind, bundle, unbundle
from realtime_proto.errors import MessageError
from realtime_proto.events import EnvelopeReceived
from realtime_proto.testing import Cluster

from .hubkit import make


def _envelope(sequence: int, text: str = "x") -> bytes:
    return Envelope(origin="n1", sequence=sequence, kind=EnvelopeKind.CHANNEL,
                    payload=b'{"type":"event","event":"%s"}' % text.encode()).encode()


def _publishes(actions: list[object]) -> list[BrokerPublish]:
    return [a for a in actions if isinstance(a, BrokerPublish)]


def test_a_bundle_round_trips_and_a_lone_envelope_is_not_one() -> None:
    parts = [_envelope(1, "a"), _envelope(2, "b\nwith a newline"), _envelope(3)]
    assert unbundle(bundle("n1", parts)) == ("n1", parts)
    assert unbundle(parts[0]) is None


@pytest.mark.parametrize("data", [
    b'{"b":"n1","n":[5,5]}\n0123456789x',        # lengths short of the body
    b'{"b":"n1","n":[5,6]}\n0123456789',         # past it
    b'{"b":"n1","n":[0]}\n',                      # an empty envelope
    b'{"b":"n1","n":["5"]}\n01234',              # a length that is not a number
    b'{"b":"n1","n":5}\n01234',                   # lengths that are not a list
    b'{"b":7,"n":[5]}\n01234',                    # an origin that is not a string
    b'{"b":"n1","n":[5]}',                        # no body at all
    b'{"b":"n1","n":[5',                          # a header cut short
])
def test_a_malformed_bundle_is_refused(data: bytes) -> None:
    with pytest.raises(MessageError):
        unbundle(data)


def _burst(config: HubConfig, messages: list[tuple[str, int]]) -> list[BrokerPublish]:
    hub, transport, clock = make(config)
    for channel in {c for c, _ in messages}:
        transport.send(transport.connect(), {"type": "subscribe", "channel": channel})
    transport.run()
    transport.broker_log.clear()  # type: ignore[attr-defined]
    for channel, number in messages:
        hub.broadcast(channel, "n", {"n": number, "pad": "p" * 200}, now=clock.now)
    transport.run()
    return _publishes(transport.broker_log)  # type: ignore[attr-defined]


def _numbers(publish: BrokerPublish) -> list[int]:
    parts = unbundle(publish.data)
    envelopes = [publish.data] if parts is None else parts[1]
    return [int(Envelope.decode(e).payload.split(b'"n":')[1].split(b",")[0])
            for e in envelopes]


def test_a_burst_on_one_channel_is_bundled_in_order_and_within_the_size() -> None:
    publishes = _burst(HubConfig(broker_bundle_bytes=2000), [("news", n) for n in range(40)])
    assert 1 < len(publishes) < 40
    assert all(len(p.data) <= 2000 + 100 for p in publishes)  # the header on top
    assert [n for p in publishes for n in _numbers(p)] == list(range(40))


def test_publishes_to_other_topics_in_between_close_the_bundle() -> None:
    order = [("a", 0), ("a", 1), ("b", 2), ("a", 3), ("a", 4)]
    publishes = _burst(HubConfig(), order)
    assert [(p.topic, _numbers(p)) for p in publishes] == [
        ("c:a", [0, 1]), ("c:b", [2]), ("c:a", [3, 4])]


def test_bundling_off_publishes_each_message_alone() -> None:
    publishes = _burst(HubConfig(broker_bundle_bytes=0), [("news", n) for n in range(5)])
    assert [unbundle(p.data) for p in publishes] == [None] * 5


def test_a_burst_reaches_every_other_node_once_in_order() -> None:
    cluster = Cluster(3, seed=7)
    subscribers = []
    for node in ("n2", "n3"):
        conn = cluster.connect(node)
        cluster.send(node, conn, {"type": "subscribe", "channel": "news"})
        subscribers.append((node, conn))
    cluster.settle()
    published_before = cluster.broker.published
    for number in range(300):
        cluster.hub("n1").broadcast("news", "n", {"n": number}, now=cluster.clock.now)
    cluster.transports["n1"].run()
    assert cluster.broker.published - published_before < 30
    cluster.settle()
    for node, conn in subscribers:
        got = [m["data"]["n"] for m in cluster.transports[node].take(conn)
               if m.get("event") == "n"]
        assert got == list(range(300))


def test_a_node_skips_its_own_bundle_and_counts_a_malformed_one() -> None:
    hub, transport, clock = make(HubConfig(node_id="n2"))
    conn = transport.connect()
    transport.send(conn, {"type": "subscribe", "channel": "news"})
    transport.run()
    transport.take(conn)
    own = bundle("n2", [_envelope(1, "mine"), _envelope(2, "mine")])
    hub.handle(EnvelopeReceived(topic="c:news", data=own), now=clock.now)
    hub.handle(EnvelopeReceived(topic="c:news", data=b'{"b":"n1","n":[9]}\n{}'),
               now=clock.now)
    hub.handle(EnvelopeReceived(topic="c:news", data=bundle("n1", [_envelope(1, "theirs")])),
               now=clock.now)
    transport.run()
    assert [m.get("event") for m in transport.take(conn)] == ["theirs"]
    assert hub.statistics().errors.get(4000) == 1
