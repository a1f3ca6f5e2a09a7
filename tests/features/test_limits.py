"""Connection limits at the door: per node (503 before the upgrade), per user (429, or the
user's oldest connection closed), each counted in /metrics. (Across nodes:
tests/core/test_control_sim.py and tests/cluster/test_control.py.)"""

from __future__ import annotations

import asyncio

import httpx
import websockets

from realtime_asyncio import RealtimeClient, RealtimeServer
from realtime_behaviour import token
from realtime_behaviour.clients import WsClient, connect
from realtime_proto.client import ClientState


def _server(**options: object) -> RealtimeServer:
    return RealtimeServer(port=0, api_key="k", jwt_secret="test-secret", **options)


async def _sse_status(port: int, user: str) -> tuple[int, int]:
    """A new SSE connection's HTTP status and, when refused, its error code."""
    async with httpx.AsyncClient() as http, http.stream(
            "GET", f"http://127.0.0.1:{port}/sse", params={"token": token(user)},
            timeout=5) as answer:
        if answer.status_code == 200:
            return 200, 0
        await answer.aread()
        return answer.status_code, int(answer.json()["error"]["code"])


async def _metric(port: int, name: str, labels: str = "") -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    [value] = [line.rsplit(" ", 1)[1] for line in text.splitlines()
               if line.startswith(name + "{") and labels in line]
    return float(value)


def test_a_full_node_answers_503_before_the_upgrade() -> None:
    async def scenario() -> None:
        server = _server(max_connections=2)
        await server.start()
        try:
            async with connect("websocket", server.port, token=token("a")), \
                    connect("sse", server.port, token=token("b")):
                assert await _sse_status(server.port, "c") == (503, 4013)
                try:
                    await websockets.connect(f"ws://127.0.0.1:{server.port}/ws")
                    raise AssertionError("a third connection was upgraded")
                except websockets.InvalidStatus as error:
                    assert error.response.status_code == 503
                assert await _metric(server.port, "realtime_connections_refused_total",
                                     'limit="node"') == 2
            async with connect("websocket", server.port, token=token("c")) as again:
                assert again.user_id == "c"  # room again once the others have gone
        finally:
            await server.aclose()
    asyncio.run(scenario())


def test_a_user_over_its_limit_is_refused_others_are_not() -> None:
    async def scenario() -> None:
        server = _server(max_connections_per_user=2)
        await server.start()
        try:
            async with connect("websocket", server.port, token=token("ann")), \
                    connect("polling", server.port, token=token("ann")):
                assert await _sse_status(server.port, "ann") == (429, 4013)
                async with connect("websocket", server.port, token=token("bob")) as bob:
                    assert bob.user_id == "bob"
                assert await _metric(server.port, "realtime_connections_refused_total",
                                     'limit="user"') == 1
        finally:
            await server.aclose()
    asyncio.run(scenario())


def test_with_the_oldest_policy_the_newest_connection_replaces_the_oldest() -> None:
    async def scenario() -> None:
        server = _server(max_connections_per_user=2, per_user_limit_policy="oldest")
        await server.start()
        try:
            async with connect("websocket", server.port, token=token("ann")) as first, \
                    connect("websocket", server.port, token=token("ann")) as second, \
                    connect("websocket", server.port, token=token("ann")) as third:
                assert isinstance(first, WsClient)
                assert await first.wait_closed() == 4013
                assert first.ws.close_reason == "replaced by a newer connection of the same user"
                for alive in (second, third):
                    await alive.send({"type": "ping"})
                    await alive.next(type="pong")
                assert await _metric(server.port, "realtime_connections_replaced_total") == 1
        finally:
            await server.aclose()
    asyncio.run(scenario())


def test_a_replaced_python_client_does_not_reconnect() -> None:
    async def scenario() -> None:
        server = _server(max_connections_per_user=1, per_user_limit_policy="oldest")
        await server.start()
        url = f"ws://127.0.0.1:{server.port}"
        try:
            old = RealtimeClient(url, token=token("ann"), backoff_min=0.01, backoff_max=0.02)
            await old.connect()
            async with RealtimeClient(url, token=token("ann")) as new:
                async with asyncio.timeout(10):
                    while old.state is not ClientState.FAILED:
                        await asyncio.sleep(0.01)
                assert old.attempts == 1 and new.state is ClientState.CONNECTED
            await old.close()
        finally:
            await server.aclose()
    asyncio.run(scenario())
