"""Cluster-wide commands in the seeded simulation: disconnects, sends, unsubscribes."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from realtime_proto import HubConfig, User
from realtime_proto.api import handle_api
from realtime_proto.config import Limits
from realtime_proto.errors import DISCONNECTED, MessageError
from realtime_proto.events import ConnectionId
from realtime_proto.testing import Cluster

SEEDS = range(150)
ROOM = "presence-room"
CONFIG = HubConfig(presence_heartbeat_interval=1.0, presence_ttl=3.0)
KEY = "k"


def _cluster(seed: int, nodes: int = 3) -> Cluster:
    cluster = Cluster(nodes, seed=seed, config=CONFIG)
    for transport in cluster.transports.values():
        transport.hub.channel("presence-*").authorize(lambda conn, ch: True)
    return cluster


def _api(cluster: Cluster, node: str, path: str, body: Any = None) -> tuple[int, Any]:
    raw = b"" if body is None else json.dumps(body).encode()
    answer = handle_api(cluster.hub(node), KEY, "POST", path,
                        {"authorization": f"Bearer {KEY}"}, raw, now=cluster.clock.now,
                        max_body_bytes=65536)
    cluster.transports[node].run()
    return answer


def _events(cluster: Cluster, node: str, conn: ConnectionId) -> list[str]:
    return [m.get("event") for m in cluster.transports[node].take(conn)]


@pytest.mark.parametrize("seed", SEEDS)
def test_disconnect_user_closes_every_connection_of_the_user_on_every_node(seed: int) -> None:
    cluster = _cluster(seed)
    rng = random.Random(seed)
    nodes = list(cluster.transports)
    watchers = {n: cluster.connect(n, User(id=f"watch-{n}")) for n in nodes}
    for node, conn in watchers.items():
        cluster.send(node, conn, {"type": "subscribe", "channel": ROOM})
    victims, others = [], []
    for index in range(rng.randint(2, 8)):
        node = rng.choice(nodes)
        user = "mallory" if index < 2 or rng.random() < 0.5 else f"u{index}"
        conn = cluster.connect(node, User(id=user))
        cluster.send(node, conn, {"type": "subscribe", "channel": ROOM})
        (victims if user == "mallory" else others).append((node, conn))
        cluster.run_for(rng.uniform(0, 0.1))
    cluster.settle()
    origin = rng.choice(nodes)
    cut = rng.random() < 0.3  # the command leaves while its node is cut from the broker
    if cut:
        cluster.partition(origin)
    local = cluster.hub(origin).disconnect_user("mallory", reason="banned",
                                                now=cluster.clock.now)
    cluster.transports[origin].run()
    assert local == sum(1 for node, _ in victims if node == origin)
    if cut:
        cluster.run_for(rng.uniform(0, 1))
        cluster.heal(origin)
    cluster.settle()
    for node, conn in victims:
        assert cluster.transports[node].closed[conn] == (DISCONNECTED, "banned")
        assert cluster.hub(node).connection(conn) is None
    for node, conn in others:
        assert conn not in cluster.transports[node].closed
    for node in nodes:
        assert "mallory" not in {m.user_id for m in cluster.hub(node).members(ROOM)}
        left = [m for m in cluster.transports[node].take(watchers[node])
                if m.get("event") == "user.left" and m["data"]["user_id"] == "mallory"]
        assert len(left) == 1  # one user.left, whatever the number of tabs and nodes


@pytest.mark.parametrize("seed", SEEDS)
def test_send_to_a_connection_reaches_it_on_any_node_once(seed: int) -> None:
    cluster = _cluster(seed)
    rng = random.Random(seed)
    nodes = list(cluster.transports)
    conns = [(n, cluster.connect(n, User(id=f"u{i}"))) for i, n in enumerate(nodes * 2)]
    cluster.settle()
    target_node, target = rng.choice(conns)
    sender = rng.choice(nodes)
    status, body = _api(cluster, sender, f"/api/connections/{target}/send",
                        {"event": "note", "data": {"n": seed}})
    if sender == target_node:
        assert (status, set(body)) == (200, {"id"})
    else:
        assert (status, body["forwarded"]) == (202, True)
    cluster.settle()
    for node, conn in conns:
        got = [m for m in cluster.transports[node].take(conn) if m.get("event") == "note"]
        if conn == target:
            assert [(m["id"], m["data"]) for m in got] == [(body["id"], {"n": seed})]
        else:
            assert got == []


def test_ids_no_node_can_hold_are_refused_with_404_and_bad_closes_with_400() -> None:
    cluster = _cluster(0, nodes=2)
    alice = cluster.connect("n2", User(id="alice"))
    cluster.settle()
    gone = cluster.connect("n1")
    cluster.transports["n1"].close(gone)
    for unknown in (gone, "c-9.n7", "no-node-part"):
        for verb, body in (("send", {"event": "e"}), ("disconnect", None)):
            status, answer = _api(cluster, "n1", f"/api/connections/{unknown}/{verb}", body)
            assert (status, answer["error"]["code"]) == (404, 4022), (unknown, verb)
    for body in ({"code": 999}, {"code": "4010"}, {"reason": "x" * 124}, {"reason": 5}):
        status, answer = _api(cluster, "n1", f"/api/connections/{alice}/disconnect", body)
        assert (status, answer["error"]["code"]) == (400, 4005), body
    status, answer = _api(cluster, "n1", "/api/users/alice/unsubscribe", {})
    assert (status, answer["error"]["code"]) == (400, 4007)
    cluster.settle()
    assert alice not in cluster.transports["n2"].closed  # nothing bad went out
    with pytest.raises(MessageError):
        cluster.hub("n1").disconnect_user("alice", code=70000, now=cluster.clock.now)


def test_disconnect_one_connection_on_another_node_with_its_code_and_reason() -> None:
    cluster = _cluster(1, nodes=2)
    tab1 = cluster.connect("n2", User(id="alice"))
    tab2 = cluster.connect("n2", User(id="alice"))
    cluster.settle()
    status, body = _api(cluster, "n1", f"/api/connections/{tab1}/disconnect",
                        {"code": 4100, "reason": "moved"})
    assert (status, body) == (202, {"forwarded": True})
    cluster.settle()
    assert cluster.transports["n2"].closed == {tab1: (4100, "moved")}
    status, body = _api(cluster, "n2", f"/api/connections/{tab2}/disconnect")
    assert (status, body) == (200, {"disconnected": True})
    assert cluster.transports["n2"].closed[tab2] == (DISCONNECTED, "")


@pytest.mark.parametrize("seed", range(50))
def test_unsubscribe_user_ends_its_subscriptions_everywhere_and_nothing_else(seed: int) -> None:
    cluster = _cluster(seed)
    rng = random.Random(seed)
    nodes = list(cluster.transports)
    tabs = [(n, cluster.connect(n, User(id="alice"))) for n in rng.sample(nodes, 2)]
    bob_node = rng.choice(nodes)
    bob = cluster.connect(bob_node, User(id="bob"))
    for node, conn in [*tabs, (bob_node, bob)]:
        for channel in (ROOM, "news"):
            cluster.send(node, conn, {"type": "subscribe", "channel": channel})
    cluster.settle()
    for node, conn in [*tabs, (bob_node, bob)]:
        cluster.transports[node].take(conn)
    status, body = _api(cluster, rng.choice(nodes), "/api/users/alice/unsubscribe",
                        {"channel": ROOM, "reason": "access revoked"})
    assert status == 200 and isinstance(body["local"], int)
    cluster.settle()
    for node, conn in tabs:
        revoked = [m for m in cluster.transports[node].take(conn)
                   if m.get("event") == "subscription.revoked"]
        assert [(m["channel"], m["data"]) for m in revoked] == [
            (ROOM, {"reason": "access revoked"})]
        hub = cluster.hub(node)
        assert conn in hub.connection_ids(channel="news")
        assert conn not in hub.connection_ids(channel=ROOM)
    assert {m.user_id for m in cluster.hub(bob_node).members(ROOM)} == {"bob"}
    assert [m["data"]["user_id"] for m in cluster.transports[bob_node].take(bob)
            if m.get("event") == "user.left"] == ["alice"]
    # a message on the channel no longer reaches alice, and still reaches bob
    cluster.hub(nodes[0]).broadcast(ROOM, "after", now=cluster.clock.now)
    cluster.transports[nodes[0]].run()
    cluster.settle()
    for node, conn in tabs:
        assert "after" not in _events(cluster, node, conn)
    assert "after" in _events(cluster, bob_node, bob)


@pytest.mark.parametrize("seed", range(30))
def test_the_per_user_limit_counts_every_node_and_replaces_the_oldest_anywhere(
        seed: int) -> None:
    config = HubConfig(presence_heartbeat_interval=1.0, presence_ttl=3.0,
                       limits=Limits(max_connections_per_user=2, replace_oldest=True))
    cluster = Cluster(2, seed=seed, config=config)
    cluster.settle()
    first = cluster.connect("n1", User(id="alice"))
    cluster.run_for(0.01)
    cluster.connect("n2", User(id="alice"))
    bob = cluster.connect("n1", User(id="bob"))
    cluster.settle()
    for node in ("n1", "n2"):
        assert cluster.hub(node).connection_count("alice") == 2
    cluster.connect("n2", User(id="alice"))  # the oldest, on n1, makes room
    cluster.settle()
    assert cluster.transports["n1"].closed == {
        first: (4013, "replaced by a newer connection of the same user")}
    assert cluster.transports["n2"].closed == {}  # second and third stay
    assert bob not in cluster.transports["n1"].closed
    for node in ("n1", "n2"):
        assert cluster.hub(node).connection_count("alice") == 2
