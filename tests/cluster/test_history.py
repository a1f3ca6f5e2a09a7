"""History shared by real `realtime serve` nodes in a real store: a client recovers on
whichever node it reconnects to, in order and without duplicates."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from realtime_behaviour.clients import Client, connect

from .nodes import (
    NodeProcess,
    api,
    broker_url,
    drop_history_streams,
    eventually,
    metric,
    require,
    start_nodes,
)
from .test_processes import token

HISTORY = ("--history", "room.*=100:300,private-room.*=100:300")
#: (broker, history store): the broker's own server, and a store beside another broker
SETUPS = {
    "redis": ("redis", "auto"),
    "postgresql": ("postgresql", "auto"),
    "nats": ("nats", "auto"),
    "nats+redis": ("nats", "redis://127.0.0.1:6379/0"),
    "amqp+postgresql": ("amqp", "postgresql://postgres@127.0.0.1:5432/test"),
}


@pytest.fixture(params=list(SETUPS))
def setup(request: pytest.FixtureRequest) -> tuple[str, str]:
    broker, store = SETUPS[request.param]
    require(broker)
    if store != "auto":
        require(store.partition(":")[0])
    return broker, store


@contextlib.contextmanager
def history_cluster(broker: str, store: str) -> Iterator[list[NodeProcess]]:
    nodes: list[NodeProcess] = []
    url = broker_url(broker)
    try:
        nodes = start_nodes(url, 2, *HISTORY, "--history-store", store)
        yield nodes
    finally:
        for node in nodes:
            node.stop()
        if (broker, store) == ("nats", "auto"):
            asyncio.run(drop_history_streams(url))


async def _subscribe(client: Client, channel: str, **data: Any) -> dict[str, Any]:
    await client.send({"type": "subscribe", "channel": channel, "data": data})
    ack = await client.next("subscription.succeeded", channel=channel)
    return dict(ack["data"])


async def _receive(client: Client, count: int) -> list[dict[str, Any]]:
    got = []
    for _ in range(count):
        got.append(await client.next("n", timeout=15))
    return got


async def _publish(http: httpx.AsyncClient, nodes: list[NodeProcess], channel: str,
                   numbers: range) -> None:
    for n in numbers:
        response = await api(http, nodes[n % len(nodes)], "POST", "publish",
                             {"channel": channel, "event": "n", "data": n})
        assert response.status_code == 200, response.text


def test_a_client_recovers_on_another_node(setup: tuple[str, str]) -> None:
    channel = f"room.{setup[0]}-{uuid.uuid4().hex[:8]}"

    async def scenario(nodes: list[NodeProcess]) -> None:
        async with httpx.AsyncClient() as http, \
                connect("polling", nodes[1].port) as watcher:
            async with connect("websocket", nodes[0].port) as first:
                position = await _subscribe(first, channel)
                assert position == {"epoch": position["epoch"], "offset": position["offset"]}
                # both nodes see one stream: the watcher on the other node, same position
                assert await _subscribe(watcher, channel) == position
                await eventually(lambda: _routed(http, nodes, channel))
                await _publish(http, nodes, channel, range(6))
                seen = await _receive(first, 6)
                _in_publish_order(seen, range(6))
                watched = await _receive(watcher, 6)  # the same stream on the other node
                assert [(m["offset"], m["data"]) for m in watched] == \
                    [(m["offset"], m["data"]) for m in seen]
                offsets = [m["offset"] for m in seen]
                assert offsets == list(range(offsets[0], offsets[0] + 6))
                assert {m["epoch"] for m in seen} == {position["epoch"]}
            await _publish(http, nodes, channel, range(6, 11))  # while it is away
            await _receive(watcher, 5)  # the store has placed them all
            async with connect("websocket", nodes[1].port) as again:
                answer = await _subscribe(again, channel, recover={
                    "epoch": position["epoch"], "offset": offsets[-1]})
                assert answer == {"epoch": position["epoch"], "offset": offsets[-1] + 5,
                                  "recovered": True, "replayed": 5}
                missed = await _receive(again, 5)
                _in_publish_order(missed, range(6, 11))
                assert [m["offset"] for m in missed] == list(range(offsets[-1] + 1,
                                                                   offsets[-1] + 6))
                await _publish(http, nodes, channel, range(11, 13))
                live = await _receive(again, 2)
                _in_publish_order(live, range(11, 13))  # and nothing twice
                stale = await _subscribe(again, "room.other", recover={"epoch": "gone",
                                                                       "offset": 3})
                assert stale["recovered"] is False
            assert await metric(http, nodes[1], "realtime_recoveries_total",
                                'outcome="recovered"') >= 1

    with history_cluster(*setup) as nodes:
        asyncio.run(scenario(nodes))


def test_a_new_subscriber_on_any_node_can_fetch_recent_history(setup: tuple[str, str]) -> None:
    channel = f"room.recent-{uuid.uuid4().hex[:8]}"

    async def scenario(nodes: list[NodeProcess]) -> None:
        async with httpx.AsyncClient() as http, \
                connect("websocket", nodes[0].port) as watcher:
            await _subscribe(watcher, channel)
            await _publish(http, nodes[:1], channel, range(4))
            await _receive(watcher, 4)  # the API answers first; the store has them now
            for node in nodes:
                async with connect("websocket", node.port) as client:
                    answer = await _subscribe(client, channel, history=3)
                    recent = await _receive(client, 3)
                    assert [m["data"] for m in recent] == [1, 2, 3]
                    assert [m["offset"] for m in recent] == [2, 3, 4]
                    assert answer["offset"] == 4

    with history_cluster(*setup) as nodes:
        asyncio.run(scenario(nodes))


def _in_publish_order(messages: list[dict[str, Any]], numbers: range) -> None:
    """Every number once, each node's in the order it published them (publishes from two
    nodes at once take the store's order between them)."""
    got = [m["data"] for m in messages]
    assert sorted(got) == list(numbers)
    for parity in (0, 1):
        assert [n for n in got if n % 2 == parity] == [n for n in numbers if n % 2 == parity]


async def _routed(http: httpx.AsyncClient, nodes: list[NodeProcess], channel: str) -> bool:
    """Whether each node's broker subscription to the channel has taken effect (its
    subscriber count is seen by the cluster's stats)."""
    for node in nodes:
        response = await api(http, node, "GET", "channels")
        if channel not in response.text:
            return False
    return True


def test_read_positions_are_readable_on_every_node_after_a_reconnect(
        setup: tuple[str, str]) -> None:
    channel = f"private-room.reads-{uuid.uuid4().hex[:8]}"

    async def reads(http: httpx.AsyncClient, node: NodeProcess) -> object:
        response = await api(http, node, "GET", f"channels/{channel}/reads")
        return response.json()["reads"]

    async def scenario(nodes: list[NodeProcess]) -> None:
        async with httpx.AsyncClient() as http, \
                connect("websocket", nodes[1].port, token=token("bob")) as bob:
            await _subscribe(bob, channel)
            async with connect("websocket", nodes[0].port, token=token("ann")) as ann:
                await _subscribe(ann, channel)
                await eventually(lambda: _routed(http, nodes, channel))
                await ann.send({"type": "event", "channel": channel, "event": "read",
                                "data": {"position": 7}})
                receipt = await bob.next("read")
                assert (receipt["user_id"], receipt["data"]) == ("ann", {"position": 7})
            for node in nodes:  # ann has gone: her position stays, on both nodes
                await eventually(lambda node=node: _equal(reads(http, node), {"ann": 7}))
            async with connect("websocket", nodes[1].port, token=token("ann")) as ann:
                await _subscribe(ann, channel)
                await ann.send({"type": "event", "channel": channel, "event": "read",
                                "data": {"position": 5}})  # backwards: ignored
                await ann.send({"type": "event", "channel": channel, "event": "read",
                                "data": {"position": 9}})
                assert (await bob.next("read"))["data"] == {"position": 9}
            # the first node has no subscriber left: it asks the store, which has them all
            for node in nodes:
                await eventually(lambda node=node: _equal(reads(http, node), {"ann": 9}))

    with history_cluster(*setup) as nodes:
        asyncio.run(scenario(nodes))


async def _equal(value: Any, expected: object) -> bool:
    return bool(await value == expected)
