"""Faults in the seeded cluster simulation: broker restarts with nodes reconnecting in any
order, a node restarted with the same id, a shared store down for a while. The invariant
throughout: every message reaches each subscriber or the subscriber is told it was lost
(`messages.lost`), never twice, in publish order; recovery says `true` only when it is."""

from __future__ import annotations

import random
from typing import Any

import pytest

from realtime_proto import HubConfig, User
from realtime_proto.events import ConnectionId
from realtime_proto.history import HistoryRule
from realtime_proto.testing import Cluster

SEEDS = range(200)
CONFIG = HubConfig(presence_heartbeat_interval=1.0, presence_ttl=3.0)
LOCAL_HISTORY = HubConfig(presence_heartbeat_interval=1.0, presence_ttl=3.0,
                          history=(HistoryRule("news", 10_000, 600),))
SHARED_HISTORY = HubConfig(presence_heartbeat_interval=1.0, presence_ttl=3.0,
                           history=(HistoryRule("news", 10_000, 600),), shared_history=True)


def _numbers(messages: list[dict[str, Any]]) -> list[int]:
    return [m["data"] for m in messages if m.get("event") == "n"]


def _lost(messages: list[dict[str, Any]]) -> int:
    return sum(m["data"]["count"] for m in messages if m.get("event") == "messages.lost")


def _subscribe(cluster: Cluster, node: str, data: Any = None) -> ConnectionId:
    conn = cluster.connect(node)
    cluster.send(node, conn, {"type": "subscribe", "channel": "news", "data": data})
    return conn


def _publish(cluster: Cluster, node: str, number: int) -> None:
    cluster.hub(node).broadcast("news", "n", number, now=cluster.clock.now)
    cluster.transports[node].run()


@pytest.mark.parametrize("config", [CONFIG, LOCAL_HISTORY, SHARED_HISTORY],
                         ids=["plain", "local-history", "shared-history"])
@pytest.mark.parametrize("seed", SEEDS)
def test_a_broker_restart_loses_nothing_silently_whatever_the_reconnect_order(
        seed: int, config: HubConfig) -> None:
    rng = random.Random(seed)
    cluster = Cluster(3, seed=seed, config=config)
    watchers = {node: _subscribe(cluster, node) for node in ("n2", "n3")}
    cluster.settle()
    for transport in cluster.transports.values():
        for conn in transport.inbox:
            transport.take(conn)
    total = rng.randint(20, 80)
    restart_at = rng.randint(0, total - 1)
    order = ["n1", "n2", "n3"]
    rng.shuffle(order)
    store_down = config.shared_history and rng.random() < 0.5  # the store fails too
    for number in range(total):
        if number == restart_at:
            cluster.restart_broker()
            cluster.store.down = store_down
        if number >= restart_at and order and rng.random() < 0.3:
            cluster.heal(order.pop(0))  # one node back, the others still away
            cluster.store.down = False
        _publish(cluster, "n1", number)
        cluster.run_for(rng.uniform(0, 0.03))
    for node in order:
        cluster.heal(node)
    if rng.random() < 0.5:
        _publish(cluster, "n1", total)  # a later message shows the gap; else the sync does
        total += 1
    cluster.run_for(2 * config.sweep_interval + 0.5)  # (a gap in a shared stream is waited for)
    for node, conn in watchers.items():
        got = cluster.transports[node].take(conn)
        numbers = _numbers(got)
        assert numbers == sorted(set(numbers)), "duplicates or out of order"
        assert len(numbers) + _lost(got) == total, (node, numbers, _lost(got))


@pytest.mark.parametrize("seed", range(100))
def test_a_hole_left_by_lost_messages_makes_recovery_across_it_fail(seed: int) -> None:
    rng = random.Random(seed)
    cluster = Cluster(2, seed=seed, config=LOCAL_HISTORY)
    watcher = _subscribe(cluster, "n2")
    cluster.settle()
    for number in range(5):
        _publish(cluster, "n1", number)
    cluster.settle()
    seen = [m for m in cluster.transports["n2"].take(watcher) if m.get("event") == "n"]
    epoch, last = seen[-1]["epoch"], seen[-1]["offset"]
    cluster.partition("n2")  # n2 misses what follows
    for number in range(5, 5 + rng.randint(1, 20)):
        _publish(cluster, "n1", number)
    cluster.settle()
    cluster.heal("n2")
    cluster.settle()
    notice = [m for m in cluster.transports["n2"].take(watcher)
              if m.get("event") == "messages.lost"]
    assert len(notice) == 1 and notice[0]["data"]["epoch"] == epoch
    assert notice[0]["data"]["from"] == last + 1
    again = _subscribe(cluster, "n2", {"recover": {"epoch": epoch, "offset": last}})
    answer = next(m for m in cluster.transports["n2"].take(again)
                  if m.get("event") == "subscription.succeeded")
    assert answer["data"]["recovered"] is False
    assert answer["data"]["missing"] == notice[0]["data"]["count"]
    behind_hole = _subscribe(cluster, "n2", {"recover": {
        "epoch": epoch, "offset": notice[0]["data"]["to"]}})
    answer = next(m for m in cluster.transports["n2"].take(behind_hole)
                  if m.get("event") == "subscription.succeeded")
    assert answer["data"]["recovered"] is True


@pytest.mark.parametrize("seed", range(50))
def test_a_node_restarted_with_the_same_id_is_heard_at_once(seed: int) -> None:
    cluster = Cluster(2, seed=seed, config=CONFIG)

    def allow(hub: Any) -> None:
        hub.channel("presence-*").authorize(lambda conn, ch: True)

    for node in ("n1", "n2"):
        allow(cluster.hub(node))
    watcher = _subscribe(cluster, "n2")
    alice = cluster.connect("n1", User(id="alice"))
    cluster.send("n1", alice, {"type": "subscribe", "channel": "presence-room"})
    bob = cluster.connect("n2", User(id="bob"))
    cluster.send("n2", bob, {"type": "subscribe", "channel": "presence-room"})
    cluster.settle()
    for number in range(5):
        _publish(cluster, "n1", number)
    cluster.settle()
    cluster.transports["n2"].take(bob)
    cluster.restart("n1", allow)  # same id, sequences start over; alice's tab is gone
    cluster.settle()
    left = [m for m in cluster.transports["n2"].take(bob) if m.get("event") == "user.left"]
    assert [m["data"]["user_id"] for m in left] == ["alice"]  # at once, not after the TTL
    assert [m.user_id for m in cluster.hub("n2").members("presence-room")] == ["bob"]
    for number in range(5, 10):
        _publish(cluster, "n1", number)
    cluster.settle()
    assert _numbers(cluster.transports["n2"].take(watcher)) == list(range(10))
    assert cluster.hub("n2").statistics().envelopes_duplicate == 0


@pytest.mark.parametrize("seed", range(50))
def test_a_store_that_fails_for_a_while_ends_the_epoch_so_recovery_stays_honest(
        seed: int) -> None:
    rng = random.Random(seed)
    cluster = Cluster(2, seed=seed, config=SHARED_HISTORY)
    watcher = _subscribe(cluster, "n2")
    cluster.settle()
    for number in range(3):
        _publish(cluster, rng.choice(["n1", "n2"]), number)
    cluster.settle()
    before = [m for m in cluster.transports["n2"].take(watcher) if m.get("event") == "n"]
    epoch, last = before[-1]["epoch"], before[-1]["offset"]
    cluster.store.down = True
    failed = rng.randint(1, 5)
    for number in range(3, 3 + failed):  # delivered live, without a position
        _publish(cluster, "n1", number)
    cluster.store.down = False
    for number in range(3 + failed, 6 + failed):
        _publish(cluster, "n1", number)
    cluster.settle()
    live = [m for m in cluster.transports["n2"].take(watcher) if m.get("event") == "n"]
    assert [m["data"] for m in live] == list(range(3, 6 + failed))
    assert all("offset" not in m for m in live[:failed])
    after = live[failed:]
    assert {m["epoch"] for m in after} != {epoch}  # the epoch the failure ended
    again = _subscribe(cluster, "n1", {"recover": {"epoch": epoch, "offset": last}})
    answer = next(m for m in cluster.transports["n1"].take(again)
                  if m.get("event") == "subscription.succeeded")
    assert answer["data"]["recovered"] is False
    fresh = _subscribe(cluster, "n1", {"recover": {"epoch": after[0]["epoch"],
                                                   "offset": after[0]["offset"]}})
    got = cluster.transports["n1"].take(fresh)
    answer = next(m for m in got if m.get("event") == "subscription.succeeded")
    assert answer["data"]["recovered"] is True
    assert _numbers(got) == [m["data"] for m in after[1:]]


@pytest.mark.parametrize("seed", range(100))
def test_a_gap_in_a_shared_stream_is_reported_with_its_range_and_recoverable(
        seed: int) -> None:
    rng = random.Random(seed)
    cluster = Cluster(2, seed=seed, config=SHARED_HISTORY)
    watcher = _subscribe(cluster, "n2")
    cluster.settle()
    _publish(cluster, "n1", 0)
    cluster.settle()
    [first] = [m for m in cluster.transports["n2"].take(watcher) if m.get("event") == "n"]
    cluster.partition("n2")
    missed = rng.randint(1, 10)
    for number in range(1, 1 + missed):
        _publish(cluster, "n1", number)
    cluster.settle()
    cluster.heal("n2")
    _publish(cluster, "n1", 1 + missed)
    cluster.run_for(2 * CONFIG.sweep_interval + 0.2)  # past the wait for the gap
    got = cluster.transports["n2"].take(watcher)
    assert _numbers(got) == [1 + missed]
    [notice] = [m for m in got if m.get("event") == "messages.lost"]
    assert notice["data"] == {"count": missed, "epoch": first["epoch"],
                              "from": first["offset"] + 1, "to": first["offset"] + missed}
    cluster.send("n2", watcher, {"type": "subscribe", "channel": "news", "data": {  # again
        "recover": {"epoch": first["epoch"], "offset": notice["data"]["from"] - 1}}})
    cluster.settle()
    got = cluster.transports["n2"].take(watcher)
    answer = next(m for m in got if m.get("event") == "subscription.succeeded")
    assert answer["data"]["recovered"] is True
    assert _numbers(got) == list(range(1, 2 + missed))  # the gap, and what followed it
    _publish(cluster, "n1", 2 + missed)
    cluster.settle()
    assert _numbers(cluster.transports["n2"].take(watcher)) == [2 + missed]  # still live
