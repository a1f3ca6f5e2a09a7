"""A reconnect storm on real sockets: 2,000 subscribed WebSocket clients drop at once and
all come back, against a node that admits new connections at a bounded rate
(`max_handshakes_per_second`). Every refusal is a 503 with Retry-After before the
upgrade, the refused sockets are closed, and the node ends holding exactly the clients
that are back (nothing leaked from the dropped or the refused ones)."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from dataclasses import dataclass, field

from realtime_asyncio import RealtimeServer
from realtime_proto.framing import MessageIn
from realtime_proto.testing.peers import WebSocketPeer

CLIENTS = 2000
RATE = 250  # handshakes per second the node admits: the storm lasts several seconds


@dataclass
class Refusals:
    """What the node answered the refused handshakes."""

    statuses: Counter[int] = field(default_factory=Counter)
    retry_after: list[int] = field(default_factory=list)
    codes: Counter[int] = field(default_factory=Counter)
    keep_alive: int = 0


class Client:
    """A subscribed WebSocket client that comes back after a refusal by waiting the
    server's Retry-After plus a random share of half a second."""

    def __init__(self, port: int, refusals: Refusals) -> None:
        self.port = port
        self.refusals = refusals
        self.writer: asyncio.StreamWriter | None = None
        self.reader: asyncio.StreamReader | None = None

    async def come_back(self) -> None:
        while not await self._attempt():
            pass

    async def _attempt(self) -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        peer = WebSocketPeer()
        writer.write(peer.handshake_bytes("/ws"))
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            await self._refused(status, head, reader, writer)
            return False
        peer.receive(head)
        writer.write(peer.send_text(json.dumps({"type": "subscribe", "channel": "storm"})))
        while True:
            events = peer.receive(await reader.read(65536))
            if any(isinstance(e, MessageIn) and "subscription.succeeded" in str(e.data)
                   for e in events):
                self.reader, self.writer = reader, writer
                return True

    async def _refused(self, status: int, head: bytes, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        headers = dict(line.split(b": ", 1) for line in head.strip().split(b"\r\n")[1:])
        self.refusals.statuses[status] += 1
        body = await reader.readexactly(int(headers[b"content-length"]))
        self.refusals.codes[json.loads(body)["error"]["code"]] += 1
        if await reader.read(1):  # the server closes a refused socket: EOF, nothing more
            self.refusals.keep_alive += 1
        writer.close()
        retry_after = int(headers[b"retry-after"])
        self.refusals.retry_after.append(retry_after)
        await asyncio.sleep(retry_after + random.random() * 0.5)

    def drop(self) -> None:
        """Reset the connection at once (no close handshake)."""
        assert self.writer is not None
        self.writer.transport.abort()
        self.writer.close()
        self.writer = self.reader = None


async def _all_receive(clients: list[Client], message: str) -> int:
    async def one(client: Client) -> bool:
        assert client.reader is not None
        data = b""
        while message.encode() not in data:
            data += await client.reader.read(65536)
        return True
    return sum(await asyncio.gather(*(one(c) for c in clients)))


def test_every_client_comes_back_after_a_storm_and_refusals_are_503_with_retry_after() -> None:
    async def scenario() -> None:
        server = RealtimeServer(port=0, api_key="k", connection_rate=0,
                                max_handshakes_per_second=RATE)
        await server.start()
        try:
            refusals = Refusals()
            clients = [Client(server.port, refusals) for _ in range(CLIENTS)]
            async with asyncio.timeout(90):
                await asyncio.gather(*(c.come_back() for c in clients))  # the first rush
                for client in clients:
                    client.drop()
                await asyncio.gather(*(c.come_back() for c in clients))  # the storm
                server.broadcast("storm", "after", {"ok": True})
                assert await _all_receive(clients, '"after"') == CLIENTS
            statistics = server.node.statistics()
            assert server.node.hub.connection_count() == CLIENTS
            # the dropped and the refused sockets are gone, not kept alive
            assert statistics.transports == CLIENTS
            assert refusals.keep_alive == 0
            assert set(refusals.statuses) == {503} and refusals.statuses[503] > 0
            assert set(refusals.codes) == {4013}
            assert set(refusals.retry_after) == {1}  # under a second to the next token
            assert statistics.refused_connections == {"handshakes": refusals.statuses[503]}
            for client in clients:
                client.drop()
        finally:
            await server.aclose()
    asyncio.run(scenario())
