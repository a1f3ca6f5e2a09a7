"""WebSocket keepalive on every runtime: the server's Ping, answered by any WebSocket
library, keeps a silent client; a client that answers nothing is closed with 4020."""

from __future__ import annotations

import asyncio
import json
import struct

from ..clients import connect_ws
from ..serving import Runtime, serving
from ..wire import raw_ws, server_frame

__all__ = [
    "test_a_listening_client_outlives_the_idle_timeout",
    "test_json_heartbeat_on_request",
]

SETTINGS = {"heartbeat_interval": 0.5, "idle_timeout": 1.5}


async def silent_raw_client(port: int) -> list[int]:
    """A WebSocket client that never answers: the opcodes it receives, up to the Close's
    code (appended last)."""
    reader, writer = await raw_ws(port)
    opcodes = []
    async with asyncio.timeout(20):
        while True:
            opcode, payload = await server_frame(reader)
            opcodes.append(opcode)
            if opcode == 8:
                writer.close()
                return [*opcodes, struct.unpack("!H", payload[:2])[0]]


def test_a_listening_client_outlives_the_idle_timeout(runtime: Runtime) -> None:
    async def main() -> None:
        async with serving(runtime, **SETTINGS) as server, \
                connect_ws(server.port) as listener:
            await listener.subscribe("news")  # its last message: from now on it only listens
            # Two silent clients in a row are closed for idling: more than 2 x idle_timeout
            # passes meanwhile for the listener, which only answers the server's Pings.
            for _ in range(2):
                received = await silent_raw_client(server.port)
                assert received[0] == 1  # connection.established
                assert 9 in received[1:-2]  # a Ping came before the Close
                assert received[-2:] == [8, 4020]
            assert listener.close_code is None
            server.broadcast("news", "still-here", 1)
            assert (await listener.next("still-here"))["data"] == 1
    asyncio.run(main())


def test_json_heartbeat_on_request(runtime: Runtime) -> None:
    """`?heartbeat=json` (the JS client's choice): the Hub's JSON ping instead of Ping frames."""
    async def main() -> None:
        async with serving(runtime, **SETTINGS) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /ws?heartbeat=json HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         b"Sec-WebSocket-Version: 13\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
            async with asyncio.timeout(20):
                seen = []
                while True:
                    opcode, payload = await server_frame(reader)
                    if opcode == 8:
                        break
                    seen.append(json.loads(payload)["type"] if opcode == 1 else opcode)
            assert seen == ["event", "ping"]  # established, then the JSON ping; no Ping frame
            assert struct.unpack("!H", payload[:2])[0] == 4020
            writer.close()
    asyncio.run(main())
