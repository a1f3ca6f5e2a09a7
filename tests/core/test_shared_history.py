"""Shared history: one stream per channel for the whole cluster, so a client recovers on
any node; the store's answers are asynchronous and may come in any order."""

from __future__ import annotations

import random
from typing import Any

import pytest

from realtime_proto import Epoch, Hub, HubConfig, User
from realtime_proto.actions import HistoryAppend, HistoryRead, SaveReadPosition
from realtime_proto.events import (
    ConnectionClosed,
    ConnectionId,
    ConnectionOpened,
    HistoryAppended,
    HistoryLoaded,
    MessageReceived,
)
from realtime_proto.history import HistoryRule, MemoryStore, stamp
from realtime_proto.message import Message, MessageType
from realtime_proto.testing import Cluster, FakeClock, counter_ids

from .nodekit import API_KEY, Harness

RULES = (HistoryRule("room.*", 100, 60),)
SHARED = HubConfig(history=RULES, shared_history=True, presence_heartbeat_interval=1.0,
                   presence_ttl=3.0)


def _numbers(messages: list[dict[str, Any]]) -> list[int]:
    return [m["data"] for m in messages if m.get("event") == "n"]


def _subscribe(cluster: Cluster, node: str, conn: ConnectionId,
               **data: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The subscription's answer, and the channel messages that followed it."""
    cluster.send(node, conn, {"type": "subscribe", "channel": "room.1", "data": data})
    cluster.settle()
    got = cluster.transports[node].take(conn)
    [success] = [m for m in got if m.get("event") == "subscription.succeeded"]
    return success["data"], [m for m in got if m.get("event") == "n"]


def test_stamp_gives_the_bytes_of_encoding_with_the_position() -> None:
    message = Message(type=MessageType.EVENT, id="m1", channel="c", event="e",
                      data={"ü": [1]}, timestamp=5, user_id="u")
    with_position = Message(type=MessageType.EVENT, id="m1", channel="c", event="e",
                            data={"ü": [1]}, timestamp=5, user_id="u", offset=7, epoch="ep")
    assert stamp(message.encode(), 7, "ep") == with_position.encode()


def test_every_node_delivers_the_same_offsets() -> None:
    cluster = Cluster(2, seed=1, config=SHARED)
    watchers = {node: cluster.connect(node) for node in ("n1", "n2")}
    positions = {node: _subscribe(cluster, node, conn)[0] for node, conn in watchers.items()}
    assert positions["n1"] == positions["n2"]
    for number, node in enumerate(["n1", "n2", "n1", "n2", "n2"]):
        cluster.hub(node).broadcast("room.1", "n", number, now=cluster.clock.now)
        cluster.transports[node].run()
    cluster.settle()
    for node, conn in watchers.items():
        got = [m for m in cluster.transports[node].take(conn) if m.get("event") == "n"]
        assert [m["offset"] for m in got] == [1, 2, 3, 4, 5]
        assert [m["data"] for m in got] == [0, 1, 2, 3, 4]
        assert {m["epoch"] for m in got} == {positions["n1"]["epoch"]}


@pytest.mark.parametrize("seed", range(100))
def test_a_client_recovers_on_another_node_in_order_without_duplicates(seed: int) -> None:
    """Publishes from random nodes, delayed at random by the broker; a client leaves one
    node and recovers on another: it sees every message once, in offset order."""
    cluster = Cluster(3, seed=seed, config=SHARED)
    rng = random.Random(seed)
    nodes = list(cluster.transports)
    home = rng.choice(nodes)
    conn = cluster.connect(home)
    position, _ = _subscribe(cluster, home, conn)
    published = 0

    def publish(count: int) -> None:
        nonlocal published
        for _ in range(count):
            node = rng.choice(nodes)
            cluster.hub(node).broadcast("room.1", "n", published, now=cluster.clock.now)
            cluster.transports[node].run()
            published += 1
            if rng.random() < 0.4:
                cluster.run_for(rng.uniform(0, 0.03))

    publish(rng.randint(0, 10))
    cluster.settle()
    before = [m for m in cluster.transports[home].take(conn) if m.get("event") == "n"]
    last = before[-1]["offset"] if before else position["offset"]
    cluster.transports[home].close(conn)
    publish(rng.randint(0, 10))
    away = rng.choice(nodes)
    again = cluster.connect(away)
    success, recovered = _subscribe(cluster, away, again,
                                    recover={"epoch": position["epoch"], "offset": last})
    publish(rng.randint(0, 5))
    cluster.settle()
    after = recovered + [m for m in cluster.transports[away].take(again)
                         if m.get("event") == "n"]
    assert success["recovered"] is True
    assert [m["data"] for m in before + after] == list(range(published))
    assert [m["offset"] for m in before + after] == list(range(1, published + 1))


class _Node:
    """One Hub whose store answers are held back, to be given in any order."""

    def __init__(self, config: HubConfig = SHARED) -> None:
        self.clock = FakeClock()
        self.hub = Hub(config, new_id=counter_ids("m"), epoch=Epoch(self.clock.now, 0))
        self.store = MemoryStore(counter_ids("epoch"))
        self.inbox: dict[str, list[dict[str, Any]]] = {}
        self.appends: list[HistoryAppend] = []
        self.reads: list[HistoryRead] = []
        self.run()

    def run(self) -> None:
        import json
        for action in self.hub.actions():
            match action:
                case HistoryAppend():
                    self.appends.append(action)
                case HistoryRead():
                    self.reads.append(action)
                case _ if hasattr(action, "payload") and hasattr(action, "connection_ids"):
                    for conn in action.connection_ids:
                        self.inbox.setdefault(conn, []).append(json.loads(action.payload))

    def connect(self, name: str, **subscribe: Any) -> ConnectionId:
        conn = ConnectionId(name)
        self.hub.handle(ConnectionOpened(connection_id=conn), now=self.clock.now)
        self.hub.handle(MessageReceived(connection_id=conn, data={
            "type": "subscribe", "channel": "room.1", "data": subscribe}), now=self.clock.now)
        self.run()
        return conn

    def answer(self, event: HistoryAppended | HistoryLoaded) -> None:
        self.hub.handle(event, now=self.clock.now)
        self.run()


def test_publishes_go_out_in_publish_order_whatever_order_the_store_answers_in() -> None:
    node = _Node()
    conn = node.connect("a")
    node.answer(node.store.read(node.reads.pop(), node.clock.now))
    for number in range(4):
        node.hub.broadcast("room.1", "n", number, now=node.clock.now)
    node.run()
    answers = [node.store.append(a, node.clock.now) for a in node.appends]
    assert _numbers(node.inbox[conn]) == []  # nothing goes out before its position
    for index in (2, 1, 3, 0):
        node.answer(answers[index])
    assert _numbers(node.inbox[conn]) == [0, 1, 2, 3]
    assert [m["offset"] for m in node.inbox[conn][-4:]] == [1, 2, 3, 4]


def test_live_messages_wait_for_the_recovered_ones_and_are_not_repeated() -> None:
    node = _Node()
    first = node.connect("first")
    node.answer(node.store.read(node.reads.pop(), node.clock.now))
    epoch = node.inbox[first][-1]["data"]["epoch"]
    for number in range(3):
        node.hub.broadcast("room.1", "n", number, now=node.clock.now)
    node.run()
    for append in node.appends:
        node.answer(node.store.append(append, node.clock.now))
    node.appends.clear()
    again = node.connect("again", recover={"epoch": epoch, "offset": 1})
    read = node.reads.pop()
    node.hub.broadcast("room.1", "n", 3, now=node.clock.now)
    node.run()
    [append] = node.appends
    answered = node.store.append(append, node.clock.now)
    loaded = node.store.read(read, node.clock.now)  # the read saw offset 4 already …
    node.answer(answered)  # … and the live message arrives before the read's answer
    assert _numbers(node.inbox[again]) == []
    node.answer(loaded)
    got = node.inbox[again]
    assert got[1]["data"] == {"epoch": epoch, "offset": 4, "recovered": True, "replayed": 3}
    assert _numbers(got) == [1, 2, 3]
    assert _numbers(node.inbox[first]) == [0, 1, 2, 3]


def test_a_failing_store_loses_no_message_and_says_recovery_failed() -> None:
    node = _Node()
    conn = node.connect("a", recover={"epoch": "e", "offset": 0})
    node.answer(HistoryLoaded(request_id=node.reads.pop().request_id, error="down"))
    assert node.inbox[conn][-1]["data"] == {"recovered": False, "replayed": 0,
                                            "missing": None}
    node.hub.broadcast("room.1", "n", 7, now=node.clock.now)
    node.run()
    node.answer(HistoryAppended(request_id=node.appends.pop().request_id, error="down"))
    [message] = [m for m in node.inbox[conn] if m.get("event") == "n"]
    assert message["data"] == 7 and "offset" not in message
    assert node.hub.statistics().history_failures == 2


def test_an_answer_for_a_subscription_that_ended_is_ignored() -> None:
    node = _Node()
    conn = node.connect("a")
    read = node.reads.pop()
    node.hub.handle(ConnectionClosed(connection_id=conn), now=node.clock.now)
    node.answer(node.store.read(read, node.clock.now))
    assert [m.get("event") for m in node.inbox[conn]] == ["connection.established"]


def test_read_positions_are_kept_in_the_store_and_reach_a_node_that_never_heard_them() -> None:
    config = HubConfig(history=(HistoryRule("private-room.*", 10, 60),), shared_history=True,
                       presence_heartbeat_interval=1.0, presence_ttl=3.0)
    cluster = Cluster(2, seed=3, config=config)
    for transport in cluster.transports.values():
        transport.hub.channel("private-*").authorize(lambda conn, channel: True)
    ann = cluster.connect("n1", User(id="ann"))
    cluster.send("n1", ann, {"type": "subscribe", "channel": "private-room.1"})
    for position in (4, 2, 6):  # 2 would move backwards: not kept
        cluster.send("n1", ann, {"type": "event", "channel": "private-room.1", "event": "read",
                                 "data": {"position": position}})
    cluster.settle()
    assert cluster.hub("n2").reads("private-room.1") == {}  # n2 had no subscriber: not told
    bob = cluster.connect("n2", User(id="bob"))
    cluster.send("n2", bob, {"type": "subscribe", "channel": "private-room.1"})
    cluster.settle()
    assert cluster.hub("n2").reads("private-room.1") == {"ann": 6}


def test_the_reads_api_asks_the_shared_store() -> None:
    config = HubConfig(node_id="n1", history=RULES, shared_history=True)
    h = Harness(hub=config)
    store = MemoryStore(counter_ids("epoch"))
    store.save_read(SaveReadPosition(channel="room.1", user_id="ann", position=12, ttl=60))
    transport = h.open()
    h.feed(transport, b"GET /api/channels/room.1/reads HTTP/1.1\r\nhost: x\r\n"
                      b"authorization: Bearer " + API_KEY.encode() + b"\r\n\r\n")
    assert h.take(transport) == b""  # waiting for the store
    [read] = [a for a in h.broker if isinstance(a, HistoryRead)]
    h.node.handle(store.read(read, h.clock.now), now=h.clock.now)
    h.pump()
    response = h.take(transport)
    assert response.startswith(b"HTTP/1.1 200") and response.endswith(b'{"reads":{"ann":12}}')


def test_a_store_that_does_not_answer_keeps_local_subscribers_waiting_a_bounded_time() -> None:
    node = _Node()
    conn = node.connect("a")
    node.answer(node.store.read(node.reads.pop(), node.clock.now))
    node.hub.broadcast("room.1", "n", 1, now=node.clock.now)
    node.run()
    [stuck] = node.appends
    node.clock.advance(SHARED.history_timeout + SHARED.sweep_interval)
    node.hub.tick(now=node.clock.now)
    node.run()
    [late] = [m for m in node.inbox[conn] if m.get("event") == "n"]
    assert late["data"] == 1 and "offset" not in late  # out, without a position
    node.answer(node.store.append(stuck, node.clock.now))  # the store's late answer: ignored
    assert _numbers(node.inbox[conn]) == [1]
    node.hub.broadcast("room.1", "n", 2, now=node.clock.now)
    node.run()
    assert node.appends[-1].new_epoch  # the unplaced message ends the epoch
    assert node.hub.statistics().history_failures == 1


def test_appends_waiting_for_the_store_are_bounded() -> None:
    node = _Node(HubConfig(history=RULES, shared_history=True, history_max_pending=3))
    conn = node.connect("a")
    node.answer(node.store.read(node.reads.pop(), node.clock.now))
    for number in range(10):
        node.hub.broadcast("room.1", "n", number, now=node.clock.now)
    node.run()
    assert _numbers(node.inbox[conn]) == list(range(7))  # the oldest given up on, in order
    assert node.hub.statistics().history_failures == 7


def test_a_read_the_store_does_not_answer_ends_without_history() -> None:
    node = _Node()
    conn = node.connect("a", recover={"epoch": "e", "offset": 3})
    node.clock.advance(SHARED.history_timeout + SHARED.sweep_interval)
    node.hub.tick(now=node.clock.now)
    node.run()
    [answer] = [m for m in node.inbox[conn] if m.get("event") == "subscription.succeeded"]
    assert answer["data"] == {"recovered": False, "replayed": 0, "missing": None}


def test_live_messages_that_overtake_a_new_subscriptions_read_keep_their_order() -> None:
    """Another node's offsets 6 and 7 arrive while the read is on its way, the read
    answers with the stream at 4, then 5 arrives: the client gets 5, 6, 7 in order."""
    from realtime_proto.envelope import EnvelopeKind, Outgoing, encode
    from realtime_proto.events import EnvelopeReceived

    node = _Node()
    conn = node.connect("a", recover={"epoch": "e1", "offset": 4})
    [read] = node.reads

    sent = iter(range(1, 10))  # the other node's sequence: in the order it sent them

    def arrives(offset: int) -> None:
        payload = Message(type=MessageType.EVENT, id=f"m{offset}", channel="room.1",
                          event="n", data=offset, timestamp=1).encode()
        data = encode(b'"other"', 1, [Outgoing("c:room.1", next(sent), EnvelopeKind.CHANNEL,
                                                payload, None, None, ("e1", offset))])
        node.answer(EnvelopeReceived(topic="c:room.1", data=data))

    arrives(6)
    arrives(7)
    node.answer(HistoryLoaded(request_id=read.request_id, epoch="e1", offset=4, entries=()))
    assert _numbers(node.inbox[conn]) == []  # 6 and 7 wait for 5
    arrives(5)
    assert _numbers(node.inbox[conn]) == [5, 6, 7]
