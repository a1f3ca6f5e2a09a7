"""Bundles: publishes to one topic made together cross the broker as one message."""

from __future__ import annotations

import pytest

from realtime_proto import HubConfig
from realtime_proto.actions import BrokerPublish
from realtime_proto.envelope import EnvelopeKind, Outgoing, Received, decode, encode
from realtime_proto.errors import MessageError
from realtime_proto.events import EnvelopeReceived
from realtime_proto.history import HistoryRule
from realtime_proto.testing import Cluster

from .hubkit import make


def _outgoing(sequence: int, text: str = "x", **extra: object) -> Outgoing:
    return Outgoing("c:news", sequence, EnvelopeKind.CHANNEL,
                    b'{"type":"event","channel":"news","event":"%s"}' % text.encode(),
                    **extra)  # type: ignore[arg-type]


def _publishes(actions: list[object]) -> list[BrokerPublish]:
    return [a for a in actions if isinstance(a, BrokerPublish)]


def test_a_bundle_round_trips_with_its_excludes_and_positions() -> None:
    run = [_outgoing(4, "a", sent_ms=9), _outgoing(5, "b\nwith a newline", exclude="conn-1"),
           _outgoing(6, position=("ep", 12))]
    assert encode(b'"n1"', 7, run).startswith(b'{"b":"n1","i":7,"k":"c","s":4,"t":9,"n":[')
    assert decode(encode(b'"n1"', 7, run)) == Received(
        "n1", EnvelopeKind.CHANNEL, 4, [e.payload for e in run], 9, 7,
        [None, "conn-1", None], [None, None, ("ep", 12)])
    plain = decode(encode(b'"n1"', 7, [_outgoing(1), _outgoing(2)]))
    assert (plain.excludes, plain.positions, plain.sent_ms) == (None, None, None)
    alone = encode(b'"n1"', 7, [_outgoing(3, sent_ms=9)])
    assert alone.startswith(b'{"o":"n1","i":7,"s":3,"k":"c","t":9}\n')
    assert decode(alone).payloads == [_outgoing(3).payload]


@pytest.mark.parametrize("data", [
    b'{"b":"n1","k":"c","s":1,"n":[5,5]}\n0123456789x',    # lengths short of the body
    b'{"b":"n1","k":"c","s":1,"n":[5,6]}\n0123456789',     # past it
    b'{"b":"n1","k":"c","s":1,"n":[0]}\n',                  # an empty envelope
    b'{"b":"n1","k":"c","s":1,"n":[]}\n',                   # no envelope at all
    b'{"b":"n1","k":"c","s":1,"n":["5"]}\n01234',          # a length that is not a number
    b'{"b":"n1","k":"c","s":1,"n":5}\n01234',               # lengths that are not a list
    b'{"b":7,"k":"c","s":1,"n":[5]}\n01234',                # an origin that is not a string
    b'{"b":"n1","k":"z","s":1,"n":[5]}\n01234',             # an unknown kind
    b'{"b":"n1","k":"c","s":"1","n":[5]}\n01234',           # a sequence that is not a number
    b'{"b":"n1","k":"c","s":1,"t":"now","n":[5]}\n01234',   # a time that is not a number
    b'{"b":"n1","k":"c","s":1,"n":[2,3],"x":["a"]}\n01234',  # one exclude for two
    b'{"b":"n1","k":"c","s":1,"n":[5],"x":[7]}\n01234',      # an exclude that is no id
    b'{"b":"n1","k":"c","s":1,"n":[5],"p":[["e"]]}\n01234',  # a position cut short
    b'{"b":"n1","k":"c","s":1,"n":[5]}',                     # no body at all
    b'{"b":"n1","k":"c","s":1,"n":[5',                       # a header cut short
    b'{"o":"n1","k":"c"}\n01234',                            # a lone one without sequence
    b'[1]\n01234',                                           # a header that is no object
])
def test_a_malformed_broker_message_is_refused(data: bytes) -> None:
    with pytest.raises(MessageError):
        decode(data)


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
    return [int(p.split(b'"n":')[1].split(b",")[0]) for p in decode(publish.data).payloads]


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
    assert [len(decode(p.data).payloads) for p in publishes] == [1] * 5
    assert all(p.data.startswith(b'{"o":') for p in publishes)


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


def _receiver() -> tuple[object, object, object, str]:
    hub, transport, clock = make(HubConfig(node_id="n2"))
    conn = transport.connect()
    transport.send(conn, {"type": "subscribe", "channel": "news"})
    transport.run()
    transport.take(conn)
    return hub, transport, clock, conn


def test_a_node_skips_its_own_bundle_and_counts_a_malformed_one() -> None:
    hub, transport, clock, conn = _receiver()
    own = encode(b'"n2"', 7, [_outgoing(1, "mine"), _outgoing(2, "mine")])
    hub.handle(EnvelopeReceived(topic="c:news", data=own), now=clock.now)
    hub.handle(EnvelopeReceived(topic="c:news", data=b'{"b":"n1","k":"c","s":1,"n":[9]}\n{}'),
               now=clock.now)
    hub.handle(EnvelopeReceived(topic="c:news", data=encode(b'"n1"', 7, [_outgoing(1, "theirs")])),
               now=clock.now)
    transport.run()
    assert [m.get("event") for m in transport.take(conn)] == ["theirs"]
    assert hub.statistics().errors.get(4000) == 1


def test_envelopes_seen_already_are_skipped_within_a_bundle_and_gaps_reported() -> None:
    hub, transport, clock, conn = _receiver()
    for run in ([1, 2], [1, 2], [2, 3], [6, 7]):
        data = encode(b'"n1"', 7, [_outgoing(n, f"e{n}") for n in run])
        hub.handle(EnvelopeReceived(topic="c:news", data=data), now=clock.now)
    transport.run()
    got = transport.take(conn)
    assert [m.get("event") for m in got] == ["e1", "e2", "e3", "messages.lost", "e6", "e7"]
    assert got[3]["channel"] == "news" and got[3]["data"] == {"count": 2}
    stats = hub.statistics()
    assert (stats.envelopes_duplicate, stats.envelopes_lost) == (3, 2)


def test_a_bundled_client_event_skips_its_sender_on_the_receiving_node() -> None:
    hub, transport, clock, conn = _receiver()
    other = transport.connect()
    transport.send(other, {"type": "subscribe", "channel": "news"})
    transport.run()
    transport.take(other)
    data = encode(b'"n1"', 7, [_outgoing(1, "to-all"), _outgoing(2, "not-to-conn", exclude=conn)])
    hub.handle(EnvelopeReceived(topic="c:news", data=data), now=clock.now)
    transport.run()
    assert [m.get("event") for m in transport.take(conn)] == ["to-all"]
    assert [m.get("event") for m in transport.take(other)] == ["to-all", "not-to-conn"]


def test_shared_history_publishes_are_bundled_with_their_offsets() -> None:
    config = HubConfig(history=(HistoryRule("room.*", 100, 60),), shared_history=True)
    cluster = Cluster(2, seed=5, config=config)
    conn = cluster.connect("n2")
    cluster.send("n2", conn, {"type": "subscribe", "channel": "room.1"})
    cluster.settle()
    cluster.transports["n2"].take(conn)
    published_before = cluster.broker.published
    for number in range(60):
        cluster.hub("n1").broadcast("room.1", "n", number, now=cluster.clock.now)
    cluster.transports["n1"].run()
    cluster.settle()
    assert cluster.broker.published - published_before < 30
    got = [m for m in cluster.transports["n2"].take(conn) if m.get("event") == "n"]
    assert [m["data"] for m in got] == list(range(60))
    assert [m["offset"] for m in got] == list(range(1, 61))
