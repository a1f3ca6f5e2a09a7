"""Subscription counts over the cluster in the seeded simulation: every node answers
from memory what the others announced; a node that dies or restarts takes its
subscribers with it."""

from __future__ import annotations

import random

import pytest

from realtime_proto import HubConfig
from realtime_proto.counts import SubscriptionCounts
from realtime_proto.testing import Cluster

SEEDS = range(60)
CONFIG = HubConfig(presence_heartbeat_interval=1.0, presence_ttl=3.0,
                   share_subscription_counts=True)


def _totals(cluster: Cluster) -> list[dict[str, int]]:
    return [t.hub.subscription_counts() for t in cluster.transports.values()]


@pytest.mark.parametrize("seed", SEEDS)
def test_every_node_counts_every_nodes_subscribers(seed: int) -> None:
    cluster = Cluster(3, seed=seed, config=CONFIG)
    rng = random.Random(seed)
    cluster.settle()
    subscribed: dict[str, list[tuple[str, str]]] = {n: [] for n in cluster.transports}
    for _ in range(rng.randint(5, 25)):
        node = rng.choice(list(cluster.transports))
        channel = rng.choice(["news", "sport", "chat"])
        conn = cluster.connect(node)
        cluster.send(node, conn, {"type": "subscribe", "channel": channel})
        subscribed[node].append((conn, channel))
    for node, items in subscribed.items():  # some leave again
        for conn, channel in rng.sample(items, k=len(items) // 3):
            cluster.send(node, conn, {"type": "unsubscribe", "channel": channel})
            items.remove((conn, channel))
        cluster.transports[node].run()
    cluster.run_for(2.0)  # a sweep and the broker's delay

    def expected(nodes: list[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in nodes:
            for _, channel in subscribed[node]:
                counts[channel] = counts.get(channel, 0) + 1
        return counts

    everyone = expected(list(subscribed))
    assert _totals(cluster) == [everyone] * 3
    assert cluster.hub("n1").subscription_count("news") == everyone.get("news", 0)

    cluster.restart("n3")  # a new run of n3: its subscribers are gone with the old one
    cluster.run_for(2.0)
    assert _totals(cluster) == [expected(["n1", "n2"])] * 3
    cluster.crash("n2")  # silent: forgotten after the presence TTL
    cluster.run_for(5.0)
    assert _totals(cluster)[0] == expected(["n1"])


def test_announcements_carry_what_changed_and_bad_counts_are_ignored() -> None:
    counts = SubscriptionCounts()
    counts.count("a", 2)
    counts.count("b", 1)
    counts.count("b", 0)
    assert counts.announcement() == {"a": 2, "b": 0} and counts.announcement() == {}
    counts.update("n2", {"a": 3, "c": -1, "d": "x", "e": True})
    assert counts.totals() == {"a": 5} and counts.total("c") == 0
    counts.replace("n2", {"c": 4})
    assert counts.totals() == {"a": 2, "c": 4}
    counts.forget("n2")
    assert counts.totals() == {"a": 2}
