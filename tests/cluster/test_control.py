"""The backend's commands reach every node: real `realtime serve` processes on every broker
(Redis, NATS, RabbitMQ, PostgreSQL), real WebSocket, SSE and long-poll clients."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator

import httpx
import pytest

from realtime_behaviour.clients import Client, WsClient, connect

from .nodes import SERVERS, NodeProcess, api, broker_url, eventually, require, start_nodes
from .test_processes import token

ROOM = "presence-control"


@pytest.fixture(params=list(SERVERS))
def kind(request: pytest.FixtureRequest) -> str:
    require(request.param)
    return str(request.param)


@contextlib.contextmanager
def two_nodes(kind: str) -> Iterator[list[NodeProcess]]:
    nodes = start_nodes(broker_url(kind), 2)
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


async def _clustered(http: httpx.AsyncClient, nodes: list[NodeProcess]) -> None:
    """Wait until each node has heard the other (commands go to nodes it knows)."""
    async def both() -> bool:
        for node in nodes:
            stats = (await api(http, node, "GET", "stats")).json()
            if stats["nodes"] != len(nodes):
                return False
        return True
    await eventually(both)


async def _alive(client: Client) -> None:
    await client.send({"type": "ping"})
    await client.next(type="pong")


def test_commands_reach_connections_on_the_other_node(kind: str) -> None:
    async def scenario(nodes: list[NodeProcess]) -> None:
        n1, n2 = nodes
        async with httpx.AsyncClient() as http, \
                connect("websocket", n1.port, token=token("alice")) as tab1, \
                connect("websocket", n2.port, token=token("alice")) as tab2, \
                connect("sse", n2.port, token=token("bob")) as bob, \
                connect("polling", n2.port, token=token("carol")) as carol:
            await _clustered(http, nodes)
            routes = {c.connection_id.partition(".")[0] for c in (tab2, bob, carol)}
            assert len(routes) == 1 and not tab1.connection_id.startswith(routes.pop() + ".")
            for client in (tab1, tab2, bob, carol):
                ack = await client.subscribe(ROOM)
                assert ack["event"] == "subscription.succeeded"

            # a send through n1 reaches bob on n2, once
            answer = await api(http, n1, "POST", f"connections/{bob.connection_id}/send",
                               {"event": "note", "data": {"x": 1}})
            assert answer.status_code == 202 and answer.json()["forwarded"] is True
            note = await bob.next("note")
            assert (note["id"], note["data"]) == (answer.json()["id"], {"x": 1})
            # an id no node of the cluster made: 404, not accepted and dropped
            ghost = "nonode00." + bob.connection_id.partition(".")[2]
            answer = await api(http, n1, "POST", f"connections/{ghost}/send", {"event": "e"})
            assert (answer.status_code, answer.json()["error"]["code"]) == (404, 4022)

            # the user's subscription ends on every node, nobody else's
            answer = await api(http, n1, "POST", "users/alice/unsubscribe",
                               {"channel": ROOM, "reason": "revoked"})
            assert (answer.status_code, answer.json()) == (200, {"local": 1})
            for tab in (tab1, tab2):
                revoked = await tab.next("subscription.revoked")
                assert (revoked["channel"], revoked["data"]) == (ROOM, {"reason": "revoked"})
            left = await bob.next("user.left")
            assert left["data"]["user_id"] == "alice"
            await eventually(lambda: _members(http, n1, {"bob", "carol"}))

            # every connection of the user, on both nodes, is closed with 4010
            answer = await api(http, n1, "POST", "users/alice/disconnect", {"reason": "banned"})
            assert (answer.status_code, answer.json()) == (200, {"local": 1})
            for tab in (tab1, tab2):
                assert isinstance(tab, WsClient)
                assert await tab.wait_closed() == 4010
                assert tab.ws.close_reason == "banned"

            # one connection, on the other node: its close comes as an event over SSE
            answer = await api(http, n1, "POST", f"connections/{bob.connection_id}/disconnect",
                               {"reason": "bye"})
            assert (answer.status_code, answer.json()) == (202, {"forwarded": True})
            closed = await bob.next("connection.closed")
            assert closed["data"] == {"code": 4010, "reason": "bye"}
            await _alive(carol)  # the bystander on the same node noticed nothing
            assert [m for m in carol.seen if m.get("event") == "connection.closed"] == []

    with two_nodes(kind) as nodes:
        asyncio.run(scenario(nodes))


async def _members(http: httpx.AsyncClient, node: NodeProcess, users: set[str]) -> bool:
    body = (await api(http, node, "GET", f"channels/{ROOM}/members")).json()
    return {m["user_id"] for m in body["members"]} == users


def test_the_per_user_limit_counts_the_connections_of_every_node(kind: str) -> None:
    async def scenario(nodes: list[NodeProcess]) -> None:
        n1, n2 = nodes
        async with httpx.AsyncClient() as http:
            await _clustered(http, nodes)

            async def refused_on_n2() -> bool:
                async with http.stream("GET", f"{n2.base}/sse",
                                       params={"token": token("alice")}) as answer:
                    return answer.status_code == 429
            async with connect("websocket", n1.port, token=token("alice")):
                await eventually(refused_on_n2)  # n2 counts alice's connection on n1
                async with connect("websocket", n2.port, token=token("bob")) as bob:
                    assert bob.user_id == "bob"
            await eventually(lambda: _not(refused_on_n2))  # gone from n1: room again

    nodes = start_nodes(broker_url(kind), 2, "--max-connections-per-user", "1")
    try:
        asyncio.run(scenario(nodes))
    finally:
        for node in nodes:
            node.stop()


async def _not(check: Callable[[], Awaitable[bool]]) -> bool:
    return not await check()
