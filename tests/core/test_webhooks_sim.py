"""Presence webhooks in the seeded simulation: each cluster-wide transition reported once,
whatever crashes, partitions and broker restarts happen."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import pytest

from realtime_proto import HubConfig, User
from realtime_proto.events import ConnectionId
from realtime_proto.testing import Cluster

SEEDS = range(300)
#: two presence channels (occupancy and members) and a plain one (occupancy only)
CHANNELS = ("presence-a", "presence-b", "news")
CONFIG = HubConfig(presence_heartbeat_interval=1.0, presence_ttl=3.0, presence_webhooks=True,
                   webhook_settle=0.5)
#: long enough for any partition to heal, a dead node to expire and its removal to settle
CONVERGE = CONFIG.presence_ttl * 3 + CONFIG.webhook_settle + 2


class Recorder:
    """Every node's `Notify` events, in the order they were reported, across restarts."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.events: list[Mapping[str, Any]] = []
        self.wire()

    def wire(self) -> None:
        for transport in self.cluster.transports.values():
            transport.notified = self.events


def _allow(cluster: Cluster) -> None:
    for transport in cluster.transports.values():
        transport.hub.channel("presence-*").authorize(lambda conn, ch: True)


def _restart(cluster: Cluster, recorder: Recorder, node: str) -> None:
    cluster.restart(node, lambda hub: hub.channel("presence-*").authorize(lambda c, ch: True))
    recorder.wire()


def check_exactly_once(events: list[Mapping[str, Any]]) -> dict[tuple[str, str], bool]:
    """Each key's events alternate (added, removed, added, …), members only inside an
    occupied channel; the final reported state."""
    state: dict[tuple[str, str], bool] = {}
    ids = set()
    for event in events:
        assert event["id"] not in ids
        ids.add(event["id"])
        name, channel = event["name"], event["channel"]
        key = (channel, event.get("user_id", ""))
        present = name in ("channel.occupied", "member.added")
        assert state.get(key, False) != present, f"{name} twice for {key}: {events}"
        state[key] = present
        if name == "member.added":
            assert state.get((channel, "")), f"member.added before channel.occupied: {event}"
        if name == "channel.vacated":
            assert not any(p for (c, u), p in state.items() if c == channel and u), \
                f"channel.vacated with members left: {event}"
    return state


def _truth(cluster: Cluster) -> dict[tuple[str, str], bool]:
    """The converged presence of the surviving nodes (every node agrees on it)."""
    views = []
    for node in cluster.transports:
        hub = cluster.hub(node)
        view = {}
        for channel in CHANNELS[:2]:
            users = {m.user_id for m in hub.members(channel)}
            if users:
                view[(channel, "")] = True
            view.update({(channel, u): True for u in users})
        views.append(view)
    assert all(view == views[0] for view in views)
    if any("news" in cluster.hub(node).channels() for node in cluster.transports):
        views[0][("news", "")] = True
    return views[0]


@pytest.mark.parametrize("seed", SEEDS)
def test_each_presence_transition_is_reported_once_per_cluster(seed: int) -> None:
    rng = random.Random(seed)
    cluster = Cluster(3, seed=seed, config=CONFIG)
    _allow(cluster)
    recorder = Recorder(cluster)
    live: list[tuple[str, ConnectionId]] = []
    crashed = False
    for _ in range(rng.randint(4, 16)):
        nodes = list(cluster.transports)
        roll = rng.random()
        if roll < 0.45:  # a user joins
            node, user = rng.choice(nodes), f"u{rng.randint(1, 4)}"
            conn = cluster.connect(node, User(id=user))
            cluster.send(node, conn, {"type": "subscribe", "channel": rng.choice(CHANNELS)})
            live.append((node, conn))
        elif roll < 0.55:  # two tabs of one user on two nodes join at the same moment
            user, channel = f"u{rng.randint(1, 4)}", rng.choice(CHANNELS)
            for node in rng.sample(nodes, 2):
                conn = cluster.connect(node, User(id=user))
                cluster.send(node, conn, {"type": "subscribe", "channel": channel})
                live.append((node, conn))
        elif roll < 0.8 and live:  # a connection leaves
            node, conn = live.pop(rng.randrange(len(live)))
            if node in cluster.transports:
                cluster.transports[node].close(conn)
        elif roll < 0.86 and not crashed:  # SIGKILL (the reporter, n1, as often as not)
            victim = "n1" if rng.random() < 0.5 else rng.choice(nodes)
            cluster.crash(victim)
            live = [(n, c) for n, c in live if n != victim]
            crashed = True
        elif roll < 0.92:  # a node is cut from the broker for a while
            cut = rng.choice(nodes)
            cluster.partition(cut)
            cluster.run_for(rng.uniform(0, 2 * CONFIG.presence_ttl))
            cluster.heal(cut)
        elif roll < 0.96:  # the broker restarts; the nodes come back in any order
            cluster.restart_broker()
            cluster.run_for(rng.uniform(0, 1))
            for node in rng.sample(list(cluster.transports), len(cluster.transports)):
                cluster.heal(node)
                cluster.run_for(rng.uniform(0, 0.3))
        elif len(nodes) > 1:  # a node restarts with the same id
            node = rng.choice(nodes)
            _restart(cluster, recorder, node)
            live = [(n, c) for n, c in live if n != node]
            # it learns what was reported from a node that knows before another restarts:
            # if every node that knows is down at once, that knowledge is gone (webhooks.md)
            cluster.run_for(CONFIG.webhook_settle)
        cluster.run_for(rng.uniform(0, 1.5))
    cluster.run_for(CONVERGE)
    reported = {key for key, present in check_exactly_once(recorder.events).items() if present}
    assert reported == set(_truth(cluster)), recorder.events


def test_two_tabs_on_two_nodes_are_one_member_added_and_one_removed() -> None:
    cluster = Cluster(3, seed=7, config=CONFIG)
    _allow(cluster)
    recorder = Recorder(cluster)
    tabs = []
    for node in ("n2", "n3"):  # the same moment: neither node has heard of the other's
        conn = cluster.connect(node, User(id="alice", info={"name": "Alice"}))
        cluster.send(node, conn, {"type": "subscribe", "channel": "presence-a"})
        tabs.append((node, conn))
    cluster.run_for(CONFIG.webhook_settle + 2 * CONFIG.sweep_interval)
    assert [(e["name"], e.get("user_id"), e.get("info")) for e in recorder.events] == [
        ("channel.occupied", None, None), ("member.added", "alice", {"name": "Alice"})]
    for node, conn in tabs:
        cluster.transports[node].close(conn)
    cluster.run_for(CONFIG.webhook_settle + 2 * CONFIG.sweep_interval)
    assert [e["name"] for e in recorder.events[2:]] == ["member.removed", "channel.vacated"]
    assert {e["channel"] for e in recorder.events} == {"presence-a"}


def test_a_killed_node_owes_its_members_removal_reported_by_one_survivor() -> None:
    cluster = Cluster(3, seed=8, config=CONFIG)
    _allow(cluster)
    recorder = Recorder(cluster)
    for node, user in (("n1", "alice"), ("n2", "bob")):
        conn = cluster.connect(node, User(id=user))
        cluster.send(node, conn, {"type": "subscribe", "channel": "presence-a"})
    cluster.run_for(CONFIG.webhook_settle + 2 * CONFIG.sweep_interval)
    assert len(recorder.events) == 3
    cluster.crash("n1")  # the reporter itself
    cluster.run_for(CONFIG.presence_ttl + CONFIG.webhook_settle + 2 * CONFIG.sweep_interval)
    assert [(e["name"], e.get("user_id")) for e in recorder.events[3:]] == [
        ("member.removed", "alice")]


def test_a_flap_shorter_than_the_settle_delay_is_not_reported() -> None:
    cluster = Cluster(2, seed=9, config=CONFIG)
    _allow(cluster)
    recorder = Recorder(cluster)
    cluster.run_for(1)
    conn = cluster.connect("n2", User(id="alice"))
    cluster.send("n2", conn, {"type": "subscribe", "channel": "presence-a"})
    cluster.run_for(0.1)
    cluster.transports["n2"].close(conn)
    cluster.run_for(CONFIG.webhook_settle + 2 * CONFIG.sweep_interval)
    assert recorder.events == []


def test_a_plain_channel_is_occupied_and_vacated_once_across_nodes() -> None:
    cluster = Cluster(3, seed=10, config=CONFIG)
    recorder = Recorder(cluster)
    readers = []
    for node in ("n1", "n2", "n3"):  # anonymous subscribers, at the same moment
        conn = cluster.connect(node)
        cluster.send(node, conn, {"type": "subscribe", "channel": "news"})
        readers.append((node, conn))
    cluster.run_for(CONFIG.webhook_settle + 2 * CONFIG.sweep_interval)
    assert [(e["name"], e["channel"]) for e in recorder.events] == [("channel.occupied", "news")]
    for node, conn in readers:
        cluster.transports[node].close(conn)
        cluster.run_for(0.1)
    cluster.run_for(CONFIG.webhook_settle + 2 * CONFIG.sweep_interval)
    assert [e["name"] for e in recorder.events] == ["channel.occupied", "channel.vacated"]
