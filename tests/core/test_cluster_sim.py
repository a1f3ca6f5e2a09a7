"""Deterministic cluster simulation: invariants over many seeds, no sockets."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import pytest

from realtime_proto import HubConfig, User
from realtime_proto.events import ConnectionId
from realtime_proto.testing import Cluster

SEEDS = range(200)
ROOM = "presence-room"
CONFIG = HubConfig(presence_heartbeat_interval=1.0, presence_ttl=3.0)


def _allow_all(cluster: Cluster) -> None:
    for transport in cluster.transports.values():
        transport.hub.channel("presence-*").authorize(lambda conn, ch: True)
        transport.hub.channel("private-*").authorize(lambda conn, ch: True)


def _presence_events(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["event"], m["data"]["user_id"]) for m in messages
            if m.get("event") in ("user.joined", "user.left")]


@pytest.mark.parametrize("seed", SEEDS)
def test_every_message_reaches_every_subscriber_once_in_publish_order(seed: int) -> None:
    cluster = Cluster(3, seed=seed, config=CONFIG)
    rng = random.Random(seed)
    nodes = list(cluster.transports)
    subscribers = []
    for _index in range(rng.randint(2, 6)):
        node = rng.choice(nodes)
        conn = cluster.connect(node)
        cluster.send(node, conn, {"type": "subscribe", "channel": "news"})
        subscribers.append((node, conn))
    cluster.settle()
    published: dict[str, list[int]] = defaultdict(list)
    for number in range(rng.randint(5, 30)):
        node = rng.choice(nodes)
        cluster.hub(node).broadcast("news", "n", {"from": node, "n": number},
                                    now=cluster.clock.now)
        cluster.transports[node].run()
        published[node].append(number)
        if rng.random() < 0.3:
            cluster.run_for(rng.uniform(0, 0.05))
    cluster.settle()
    for node, conn in subscribers:
        got = [m["data"] for m in cluster.transports[node].take(conn) if m.get("event") == "n"]
        assert sorted(d["n"] for d in got) == sorted(n for ns in published.values() for n in ns)
        for origin, numbers in published.items():
            assert [d["n"] for d in got if d["from"] == origin] == numbers


@pytest.mark.parametrize("seed", SEEDS)
def test_presence_converges_after_crash_and_partition(seed: int) -> None:
    cluster = Cluster(3, seed=seed, config=CONFIG)
    _allow_all(cluster)
    rng = random.Random(seed)
    nodes = list(cluster.transports)
    watchers = {node: cluster.connect(node, User(id=f"watch-{node}")) for node in nodes}
    for node, conn in watchers.items():
        cluster.send(node, conn, {"type": "subscribe", "channel": ROOM})
    live: dict[tuple[str, ConnectionId], str] = {}
    for _ in range(rng.randint(3, 12)):
        node = rng.choice(list(cluster.transports))
        if live and rng.random() < 0.35:
            key = rng.choice(sorted(live))
            if key[0] in cluster.transports:
                cluster.transports[key[0]].close(key[1])
            del live[key]
        else:
            user = f"u{rng.randint(1, 4)}"
            conn = cluster.connect(node, User(id=user))
            cluster.send(node, conn, {"type": "subscribe", "channel": ROOM})
            live[(node, conn)] = user
        cluster.run_for(rng.uniform(0, 0.2))
    victim, cut = rng.sample(nodes, 2)
    cluster.crash(victim)
    live = {k: v for k, v in live.items() if k[0] != victim}
    cluster.partition(cut)
    cluster.run_for(rng.uniform(0, 2))
    cluster.heal(cut)
    cluster.run_for(CONFIG.presence_ttl * 3)

    expected = {v for v in live.values()} | {f"watch-{n}" for n in cluster.transports}
    for node in cluster.transports:
        assert {m.user_id for m in cluster.hub(node).members(ROOM)} == expected
        # no duplicate user.joined or user.left: each user's events alternate
        state: dict[str, bool] = {}
        for event, user in _presence_events(cluster.transports[node].take(watchers[node])):
            present = event == "user.joined"
            assert state.get(user) != present, f"duplicate {event} for {user} on {node}"
            state[user] = present


def test_a_silent_node_is_expired_within_the_ttl() -> None:
    cluster = Cluster(2, seed=1, config=CONFIG)
    _allow_all(cluster)
    watcher = cluster.connect("n1", User(id="watcher"))
    cluster.send("n1", watcher, {"type": "subscribe", "channel": ROOM})
    doomed = cluster.connect("n2", User(id="doomed"))
    cluster.send("n2", doomed, {"type": "subscribe", "channel": ROOM})
    cluster.settle()
    assert _presence_events(cluster.transports["n1"].take(watcher)) == [("user.joined", "doomed")]
    cluster.crash("n2")
    cluster.run_for(CONFIG.presence_ttl - CONFIG.sweep_interval - 0.5)
    assert cluster.transports["n1"].take(watcher) == []
    cluster.run_for(2 * CONFIG.sweep_interval + 0.6)  # TTL + one sweep after the crash
    assert _presence_events(cluster.transports["n1"].take(watcher)) == [("user.left", "doomed")]


def test_send_to_user_reaches_connections_on_every_node() -> None:
    cluster = Cluster(3, seed=2, config=CONFIG)
    conns = {node: cluster.connect(node, User(id="alice")) for node in ("n1", "n3")}
    cluster.settle()
    cluster.hub("n2").send_to_user("alice", "ding", {"x": 1}, now=cluster.clock.now)
    cluster.transports["n2"].run()
    cluster.settle()
    for node, conn in conns.items():
        assert [m["event"] for m in cluster.transports[node].take(conn)][-1:] == ["ding"]
    latency = cluster.hub("n1").statistics().broker_latency
    assert latency.count == 1 and 0.001 <= latency.total <= 0.05  # the simulated delay


def test_one_user_on_two_nodes_joins_and_leaves_once() -> None:
    cluster = Cluster(3, seed=3, config=CONFIG)
    _allow_all(cluster)
    watcher = cluster.connect("n3", User(id="w"))
    cluster.send("n3", watcher, {"type": "subscribe", "channel": ROOM})
    a1 = cluster.connect("n1", User(id="alice"))
    a2 = cluster.connect("n2", User(id="alice"))
    for node, conn in (("n1", a1), ("n2", a2)):
        cluster.send(node, conn, {"type": "subscribe", "channel": ROOM})
        cluster.settle()
    cluster.transports["n1"].close(a1)
    cluster.settle()
    cluster.transports["n2"].close(a2)
    cluster.settle()
    assert _presence_events(cluster.transports["n3"].take(watcher)) == [
        ("user.joined", "alice"), ("user.left", "alice")]
