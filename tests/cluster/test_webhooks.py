"""Presence webhooks from real `realtime serve` processes on every broker to a real HTTP
receiver: each transition once, a SIGKILLed node's members removed by the survivor,
signed bodies, a 503 retried."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import h11
import httpx
import pytest

from realtime_behaviour.clients import Client, connect
from realtime_proto.notify import body_signature

from .nodes import SERVERS, TTL, NodeProcess, broker_url, eventually, metric, require, start_nodes
from .test_processes import token

SECRET = "hook-secret"
ROOM = "presence-hooked"


class Receiver:
    """A tiny HTTP server that records webhook POSTs; answers 503 to the first `fail`."""

    def __init__(self, fail: int = 0) -> None:
        self.bodies: list[bytes] = []
        self.signatures: list[str | None] = []
        self.fail = fail
        self.requests = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def events(self) -> list[dict[str, Any]]:
        return [event for body in self.bodies for event in json.loads(body)["events"]]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = h11.Connection(h11.SERVER)
        headers: dict[bytes, bytes] = {}
        body = b""
        async with asyncio.timeout(10):
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    connection.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Request):
                    headers = dict(event.headers)
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    return
        self.requests += 1
        status = 503 if self.requests <= self.fail else 204
        if status == 204:
            self.bodies.append(body)
            signature = headers.get(b"x-realtime-signature")
            self.signatures.append(signature.decode() if signature else None)
        writer.write(connection.send(h11.Response(status_code=status, headers=[
            ("content-length", "0"), ("connection", "close")])) or b"")
        writer.write(connection.send(h11.EndOfMessage()) or b"")
        await writer.drain()
        writer.close()


@pytest.fixture(params=list(SERVERS))
def kind(request: pytest.FixtureRequest) -> str:
    require(request.param)
    return str(request.param)


@contextlib.contextmanager
def hooked_nodes(kind: str, receiver_port: int) -> Iterator[list[NodeProcess]]:
    nodes = start_nodes(broker_url(kind), 2, "--webhook", f"http://127.0.0.1:{receiver_port}/h",
                        "--webhook-secret", SECRET, "--webhook-settle", "0.3")
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@contextlib.asynccontextmanager
async def member(node: NodeProcess, user: str) -> AsyncIterator[Client]:
    async with connect("websocket", node.port, token=token(user)) as client:
        ack = await client.subscribe(ROOM)
        assert ack["event"] == "subscription.succeeded"
        yield client


def _names(receiver: Receiver) -> list[tuple[str, str | None]]:
    return [(e["name"], e.get("user_id")) for e in receiver.events]


def test_presence_webhooks_once_per_cluster_through_a_sigkill(kind: str) -> None:
    async def scenario() -> None:
        receiver = Receiver(fail=1)
        await receiver.start()
        try:
            with hooked_nodes(kind, receiver.port) as (n1, n2):
                await run(receiver, n1, n2)
        finally:
            await receiver.stop()

    async def run(receiver: Receiver, n1: NodeProcess, n2: NodeProcess) -> None:
        async with httpx.AsyncClient() as http, contextlib.AsyncExitStack() as stack:
            await eventually(lambda: _heard(http, [n1, n2]))
            # two tabs of alice on both nodes at the same moment, bob on n2, carol on n1
            await asyncio.gather(*(stack.enter_async_context(member(node, user)) for node, user
                                   in ((n1, "alice"), (n2, "alice"), (n2, "bob"),
                                       (n1, "carol"))))
            await eventually(lambda: len(receiver.events) >= 4)
            assert sorted(_names(receiver)) == [
                ("channel.occupied", None), ("member.added", "alice"), ("member.added", "bob"),
                ("member.added", "carol")]
            assert _names(receiver)[0] == ("channel.occupied", None)
            # the first POST got 503 and was retried (n1, the smallest id, reports)
            assert await metric(http, n1, "realtime_webhook_retries_total") >= 1
            assert await metric(http, n1, "realtime_webhook_events_sent_total") == 4

            n1.kill()  # SIGKILL: carol's removal is owed, alice stays (her tab on n2)
            await eventually(lambda: len(receiver.events) >= 5, timeout=TTL + 10)
            assert _names(receiver)[4] == ("member.removed", "carol")

            await stack.aclose()  # bob and alice leave n2: the channel empties
            await eventually(lambda: len(receiver.events) >= 8)
            assert sorted(_names(receiver)[5:7]) == [("member.removed", "alice"),
                                                     ("member.removed", "bob")]
            assert _names(receiver)[7] == ("channel.vacated", None)
            async with member(n2, "dave"):  # a last transition: nothing else came before it
                await eventually(lambda: len(receiver.events) >= 10)
            assert _names(receiver)[8:] == [("channel.occupied", None), ("member.added", "dave")]
            events = receiver.events
            assert len({e["id"] for e in events}) == len(events)
            assert all(e["channel"] == ROOM and isinstance(e["time_ms"], int) for e in events)
            for body, signature in zip(receiver.bodies, receiver.signatures, strict=True):
                assert signature == body_signature(SECRET, body)

    asyncio.run(scenario())


async def _heard(http: httpx.AsyncClient, nodes: list[NodeProcess]) -> bool:
    for node in nodes:
        if (await http.get(f"{node.base}/api/stats",
                           headers={"Authorization": "Bearer cluster-key"})).json()["nodes"] \
                != len(nodes):
            return False
    return True
