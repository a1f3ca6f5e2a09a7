"""No sticky sessions: real nodes on real brokers, every HTTP request of a long-poll or SSE
client sent to the next node in turn on a new TCP connection (a round-robin balancer)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from realtime_behaviour.clients import Client, SseClient, connect

from .nodes import NodeProcess, api, broker_url, metric, require, start_nodes
from .test_processes import routed, token

CHANNEL = "private-feed"
COUNT = 30


class RoundRobin:
    """Each request to the next node, on a connection of its own."""

    def __init__(self, http: httpx.AsyncClient, nodes: list[NodeProcess]) -> None:
        self.http = http
        self.nodes = nodes
        self.turn = 0

    async def request(self, method: str, path: str, **options: Any) -> httpx.Response:
        node = self.nodes[self.turn % len(self.nodes)]
        self.turn += 1
        return await self.http.request(method, f"{node.base}{path}", **options)

    async def send(self, connection_id: str, message: dict[str, Any]) -> None:
        response = await self.request("POST", "/send", params={"connection_id": connection_id},
                                      json=message)
        assert response.status_code == 202, response.text


@pytest.fixture(params=["redis", "nats", "amqp", "postgresql"])
def nodes(request: pytest.FixtureRequest) -> Any:
    require(request.param)
    started = start_nodes(broker_url(request.param), 2, "--poll-timeout", "5")
    try:
        yield started
    finally:
        for node in started:
            node.stop()


@contextlib.asynccontextmanager
async def observer(node: NodeProcess) -> AsyncIterator[Client]:
    async with connect("websocket", node.port, token=token("watcher")) as client:
        ack = await client.subscribe(CHANNEL)
        assert ack["event"] == "subscription.succeeded", ack
        yield client


async def client_events(watcher: Client, origin: str) -> list[int]:
    """The numbers `origin` sent, in the order the watcher got them (all COUNT of them)."""
    async with asyncio.timeout(20):
        while len([m for m in watcher.seen if m.get("event") == origin]) < COUNT:
            await watcher.next(origin)
    await watcher.nothing()  # a moment later: still no duplicate
    return [m["data"] for m in watcher.seen if m.get("event") == origin]


async def scenario(nodes: list[NodeProcess]) -> None:
    unpooled = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=30, limits=unpooled) as http, \
            observer(nodes[1]) as watcher:
        balancer = RoundRobin(http, nodes)
        await routed(http, [nodes[0]], CHANNEL, [watcher])

        # long-polling: opened on the first node; every later poll and send anywhere
        opened = (await http.get(f"{nodes[0].base}/poll",
                                 params={"token": token("poller")})).json()
        poll_id, cursor = opened["connection_id"], opened["cursor"]
        await balancer.send(poll_id, {"type": "subscribe", "channel": CHANNEL})
        for n in range(COUNT):
            await api(http, nodes[0], "POST", "publish",
                      {"channel": CHANNEL, "event": "n", "data": n})
        polled: list[dict[str, Any]] = list(opened["messages"])
        async with asyncio.timeout(30):
            while len([m for m in polled if m.get("event") == "n"]) < COUNT:
                response = await balancer.request(
                    "GET", "/poll", params={"connection_id": poll_id, "cursor": str(cursor)})
                assert response.status_code == 200, response.text
                cursor = response.json()["cursor"]
                polled += response.json()["messages"]
        assert [m["data"] for m in polled if m.get("event") == "n"] == list(range(COUNT))
        for n in range(COUNT):  # client events of the long-poll connection, in order
            await balancer.send(poll_id, {"type": "event", "channel": CHANNEL,
                                          "event": "from-poll", "data": n})
        assert await client_events(watcher, "from-poll") == list(range(COUNT))

        # SSE: the stream stays on the first node; its sends go anywhere
        async with connect("sse", nodes[0].port, token=token("streamer"),
                           channels=CHANNEL) as sse:
            assert isinstance(sse, SseClient)
            await sse.next("subscription.succeeded")
            for n in range(COUNT):
                await balancer.send(sse.connection_id, {"type": "event", "channel": CHANNEL,
                                                        "event": "from-sse", "data": n})
            assert await client_events(watcher, "from-sse") == list(range(COUNT))
            closed = await http.post(f"{nodes[1].base}/close",
                                     params={"connection_id": sse.connection_id})
            assert closed.json() == {"closed": True}
            async with asyncio.timeout(10):
                await sse.ended.wait()  # the stream on the first node ended

        closed = await http.post(f"{nodes[1].base}/close", params={"connection_id": poll_id})
        assert closed.json() == {"closed": True}
        gone = await http.post(f"{nodes[1].base}/send", params={"connection_id": poll_id},
                               json={"type": "ping"})
        assert gone.status_code == 404 and gone.json()["error"]["code"] == 4022
        served = await metric(http, nodes[0], "realtime_forwarded_requests_total",
                              'outcome="served"')
        assert served >= COUNT  # half of every poll and send went through the other node
        assert await metric(http, nodes[1], "realtime_forwarded_requests_total",
                            'outcome="expired"') == 0


def test_long_poll_and_sse_sends_need_no_sticky_routing(nodes: list[NodeProcess]) -> None:
    asyncio.run(scenario(nodes))
