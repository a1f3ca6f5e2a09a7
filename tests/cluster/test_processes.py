"""Several real `realtime serve` processes on each real broker behave as one server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from realtime_behaviour.clients import Client, connect
from realtime_proto.jwt import encode_hs256

from ..brokers.proxy import ThreadedTcpProxy
from .nodes import (
    SECRET,
    SERVERS,
    TTL,
    NodeProcess,
    api,
    broker_url,
    eventually,
    metric,
    require,
)
from .nodes import start_nodes as _start_nodes

KINDS = list(SERVERS)
ROOM = "presence-lobby"


def token(user: str) -> str:
    claims = {"sub": user, "exp": int(time.time()) + 600, "info": {"name": user.title()},
              "channels": ["private-*", "presence-*"]}
    return encode_hs256(claims, SECRET)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    require(request.param)
    return str(request.param)


@contextlib.contextmanager
def cluster(url: str, count: int = 3) -> Iterator[list[NodeProcess]]:
    nodes: list[NodeProcess] = []
    try:
        nodes = _start_nodes(url, count)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@contextlib.asynccontextmanager
async def subscribed(node: NodeProcess, channel: str, transport: str = "websocket",
                     user: str | None = None) -> AsyncIterator[Client]:
    async with connect(transport, node.port, token=token(user) if user else None) as client:
        ack = await client.subscribe(channel)
        assert ack["event"] == "subscription.succeeded", ack
        yield client


async def routed(http: httpx.AsyncClient, publishers: list[NodeProcess], channel: str,
                 clients: list[Client]) -> None:
    """Publish probes from every publisher until every client hears each: a new node's
    broker subscription takes effect a moment after its client's acknowledgement."""
    for publisher in publishers:
        for client in clients:
            async with asyncio.timeout(15):
                while True:
                    await api(http, publisher, "POST", "publish",
                              {"channel": channel, "event": "probe", "data": publisher.name})
                    with contextlib.suppress(TimeoutError):
                        message = await client.next("probe", timeout=0.3)
                        if message["data"] == publisher.name:
                            break


def numbers(client: Client, origin: str) -> list[int]:
    return [m["data"]["n"] for m in client.seen
            if m.get("event") == "n" and m["data"]["from"] == origin]


def test_fan_out_reaches_every_node_once_in_publish_order(kind: str) -> None:
    async def scenario(nodes: list[NodeProcess]) -> None:
        async with httpx.AsyncClient() as http, \
                subscribed(nodes[0], "private-feed", user="a") as on1, \
                subscribed(nodes[1], "private-feed", "sse", user="b") as on2, \
                subscribed(nodes[2], "private-feed", "polling", user="c") as on3, \
                subscribed(nodes[2], "private-feed", user="d") as sender:
            clients = [on1, on2, on3]
            await routed(http, nodes[:2], "private-feed", [*clients, sender])
            for n in range(30):
                publisher = nodes[n % 2]
                await api(http, publisher, "POST", "publish", {
                    "channel": "private-feed", "event": "n",
                    "data": {"from": publisher.name, "n": n}})
                if n % 5 == 0:  # a client event from the third node, too
                    await sender.send({"type": "event", "channel": "private-feed",
                                       "event": "n", "data": {"from": "client", "n": n}})
            for client in clients:
                async with asyncio.timeout(20):
                    while len([m for m in client.seen if m.get("event") == "n"]) < 36:
                        await client.next("n")
                await client.send({"type": "ping"})
                await client.next(type="pong")  # a round trip later: still no duplicate
                assert numbers(client, "n1") == list(range(0, 30, 2))
                assert numbers(client, "n2") == list(range(1, 30, 2))
                assert numbers(client, "client") == list(range(0, 30, 5))
            assert numbers(sender, "client") == []  # the sender is excluded everywhere

    with cluster(broker_url(kind)) as nodes:
        asyncio.run(scenario(nodes))


def test_a_batch_crosses_the_broker_in_bundles_in_order(kind: str) -> None:
    """`POST /api/batch` on one node: a few broker messages carry it all, in order."""
    async def published(http: httpx.AsyncClient, node: NodeProcess) -> int:
        return int(await metric(http, node, "realtime_broker_published_total"))

    async def scenario(nodes: list[NodeProcess]) -> None:
        async with httpx.AsyncClient() as http, \
                subscribed(nodes[1], "private-feed", user="b") as far, \
                subscribed(nodes[1], "private-feed", "sse", user="c") as far_sse:
            await routed(http, nodes[:1], "private-feed", [far, far_sse])
            before = await published(http, nodes[0])
            batch = [{"channel": "private-feed", "event": "n",
                      "data": {"from": "n1", "n": n, "text": "x" * 100}} for n in range(600)]
            answer = await api(http, nodes[0], "POST", "batch", {"messages": batch})
            assert answer.status_code == 200, answer.text
            for client in (far, far_sse):
                async with asyncio.timeout(20):
                    while len(numbers(client, "n1")) < 600:
                        await client.next("n")
                assert numbers(client, "n1") == list(range(600))
            # the broker's counters reach /metrics at the node's next sweep (every second)
            await asyncio.sleep(1.5)
            sent = await published(http, nodes[0]) - before
            assert 0 < sent <= 600 // 10, sent  # ~25 envelopes per bundle, heartbeats aside

    with cluster(broker_url(kind), count=2) as nodes:
        asyncio.run(scenario(nodes))


def test_presence_and_send_to_user_span_the_cluster(kind: str) -> None:
    async def scenario(nodes: list[NodeProcess]) -> None:
        async with httpx.AsyncClient() as http, \
                subscribed(nodes[2], ROOM, user="watcher") as watcher:
            async with subscribed(nodes[0], ROOM, user="alice") as alice1:
                await watcher.next("user.joined")
                async with subscribed(nodes[1], ROOM, "sse", user="alice") as alice2:
                    await eventually(lambda: _member_count(http, nodes[2], 2))
                    sent = await api(http, nodes[2], "POST", "users/alice/send",
                                     {"event": "note", "data": 1})
                    assert sent.status_code == 200
                    for client in (alice1, alice2):
                        assert (await client.next("note"))["data"] == 1
                    for node in nodes:
                        members = (await api(http, node, "GET",
                                             f"channels/{ROOM}/members")).json()["members"]
                        assert sorted(m["user_id"] for m in members) == ["alice", "watcher"]
                await watcher.send({"type": "ping"})
                await watcher.next(type="pong")
            left = await watcher.next("user.left", timeout=15)
            assert left["data"]["user_id"] == "alice"
            events = [(m["event"], m["data"]["user_id"]) for m in watcher.seen
                      if m.get("event") in ("user.joined", "user.left")]
            assert events == [("user.joined", "alice"), ("user.left", "alice")]

    with cluster(broker_url(kind)) as nodes:
        asyncio.run(scenario(nodes))


async def _member_count(http: httpx.AsyncClient, node: NodeProcess, count: int) -> bool:
    response = await api(http, node, "GET", f"channels/{ROOM}/members")
    return len({m["user_id"] for m in response.json()["members"]}) >= count


def test_a_killed_node_leaves_presence_within_the_ttl(kind: str) -> None:
    async def scenario(nodes: list[NodeProcess]) -> None:
        async with subscribed(nodes[0], ROOM, user="watcher") as watcher, \
                connect("websocket", nodes[1].port, token=token("doomed")) as doomed:
            await doomed.subscribe(ROOM)
            await watcher.next("user.joined", timeout=15)
            killed_at = time.monotonic()
            nodes[1].kill()
            left = await watcher.next("user.left", timeout=TTL + 10)
            assert left["data"]["user_id"] == "doomed"
            assert time.monotonic() - killed_at <= TTL + 3  # TTL plus one sweep, with slack

    with cluster(broker_url(kind), count=2) as nodes:
        asyncio.run(scenario(nodes))


def test_a_node_subscribes_only_to_what_it_needs(kind: str) -> None:
    async def topics(http: httpx.AsyncClient, node: NodeProcess) -> int:
        return int(await metric(http, node, "realtime_broker_topics"))

    async def scenario(nodes: list[NodeProcess]) -> None:
        async with httpx.AsyncClient() as http:
            base = await topics(http, nodes[0])
            async with subscribed(nodes[0], "news") as first:
                assert await topics(http, nodes[0]) == base + 1
                async with subscribed(nodes[0], "news") as second:
                    assert await topics(http, nodes[0]) == base + 1
                    del second
                del first
            await eventually(lambda: _equals(topics(http, nodes[0]), base))
            assert await topics(http, nodes[1]) == 1  # only the cluster topic

    with cluster(broker_url(kind), count=2) as nodes:
        asyncio.run(scenario(nodes))


async def _equals(value: Any, expected: int) -> bool:
    return bool(await value == expected)


def test_a_cut_broker_connection_is_reported_and_healed(kind: str) -> None:
    port = SERVERS[kind][0]
    proxy = ThreadedTcpProxy("127.0.0.1", port).start()

    async def health(http: httpx.AsyncClient, node: NodeProcess) -> str:
        return str((await http.get(f"{node.base}/health")).json()["broker"])

    async def scenario(nodes: list[NodeProcess]) -> None:
        near, far = nodes
        async with httpx.AsyncClient() as http, \
                subscribed(far, ROOM, user="watcher") as watcher, \
                subscribed(near, "private-local", user="local") as local:
            await routed(http, [near], ROOM, [watcher])
            proxy.refuse()
            proxy.cut()
            await eventually(lambda: _is(health(http, near), "disconnected"))
            metrics = (await http.get(f"{near.base}/metrics")).text
            assert "realtime_broker_connected{" in metrics and any(
                line.startswith("realtime_broker_connected{") and line.endswith(" 0")
                for line in metrics.splitlines())
            # the node keeps serving its own clients during the outage
            await api(http, near, "POST", "publish",
                      {"channel": "private-local", "event": "still", "data": 1})
            assert (await local.next("still"))["data"] == 1
            # its own publishes wait in the driver's queue, and /metrics says so
            await eventually(lambda: _metric(http, near, "realtime_broker_queued",
                                             lambda v: v >= 1))
            async with subscribed(near, ROOM, user="newcomer"):
                proxy.allow()
                await eventually(lambda: _is(health(http, near), "connected"))
                # presence is resynchronised: the far node learns of the newcomer
                joined = await watcher.next("user.joined", timeout=15)
                assert joined["data"]["user_id"] == "newcomer"
                await routed(http, [near], ROOM, [watcher])
                await eventually(lambda: _metric(http, near, "realtime_broker_queued",
                                                 lambda v: v == 0))

    try:
        url = broker_url(kind, port=proxy.port)
        far_url = broker_url(kind, name=_name_of(url, kind))
        near, far = NodeProcess("near", url), NodeProcess("far", far_url)
        try:
            near.wait_ready()
            far.wait_ready()
            asyncio.run(scenario([near, far]))
        finally:
            near.stop()
            far.stop()
    finally:
        proxy.close()


async def _metric(http: httpx.AsyncClient, node: NodeProcess, name: str,
                  check: Callable[[float], bool]) -> bool:
    return check(await metric(http, node, name))


async def _is(value: Any, expected: str) -> bool:
    return bool(await value == expected)


def _name_of(url: str, kind: str) -> str:
    """The private prefix of a URL made by `broker_url`, to put a second node beside it."""
    marker = {"redis": "prefix=rt-", "nats": "prefix=rt", "amqp": "exchange=rt-",
              "postgresql": "prefix=r"}[kind]
    return url.split(marker, 1)[1].split("&", 1)[0].rstrip(":")


def test_api_reads_are_json(kind: str) -> None:
    """The channel listing of each node names the channels with local subscribers."""
    async def scenario(nodes: list[NodeProcess]) -> None:
        async with httpx.AsyncClient() as http, subscribed(nodes[0], "news"):
            listing = (await api(http, nodes[0], "GET", "channels")).json()
            assert {"name": "news", "subscribers": 1} in listing["channels"]
            assert json.loads((await api(http, nodes[1], "GET", "channels")).text) == {
                "channels": []}

    with cluster(broker_url(kind), count=2) as nodes:
        asyncio.run(scenario(nodes))


def test_a_node_restarted_with_the_same_id_is_a_new_sender_at_once(kind: str) -> None:
    """Its fresh sequences are not taken for duplicates, and the presence of its previous
    run goes at once, not after the TTL (which its heartbeats would keep renewing)."""
    url = broker_url(kind)

    async def scenario(nodes: list[NodeProcess]) -> None:
        first, watching = nodes
        async with httpx.AsyncClient() as http, \
                subscribed(watching, "private-feed", user="watcher") as feed, \
                subscribed(watching, ROOM, user="watcher") as room:
            async with connect("websocket", first.port, token=token("ghost")) as ghost:
                await ghost.subscribe(ROOM)
                await room.next("user.joined", timeout=15)
                await routed(http, [first], "private-feed", [feed])
                for n in range(5):
                    await api(http, first, "POST", "publish", {
                        "channel": "private-feed", "event": "n", "data": {"from": "old", "n": n}})
                async with asyncio.timeout(15):
                    while len(numbers(feed, "old")) < 5:
                        await feed.next("n")
                first.kill()
                first.stop()  # (closes its pipes)
                again = nodes[0] = NodeProcess(first.name, url)  # the same --node-id
                again.wait_ready()
            left = await room.next("user.left", timeout=TTL + 10)
            assert left["data"]["user_id"] == "ghost"
            await routed(http, [again], "private-feed", [feed])
            for n in range(50):
                await api(http, again, "POST", "publish", {
                    "channel": "private-feed", "event": "n", "data": {"from": "new", "n": n}})
            async with asyncio.timeout(20):
                while len(numbers(feed, "new")) < 50:
                    await feed.next("n")
            assert numbers(feed, "new") == list(range(50))
            assert await metric(http, watching, "realtime_broker_envelopes_duplicate_total") == 0
            members = (await api(http, watching, "GET", f"channels/{ROOM}/members")).json()
            assert [m["user_id"] for m in members["members"]] == ["watcher"]

    nodes = _start_nodes(url, 2)
    try:
        asyncio.run(scenario(nodes))  # (it puts the restarted node in place of the first)
    finally:
        for node in nodes:
            node.stop()
