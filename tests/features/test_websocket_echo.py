"""The WebSocket framing on its own: examples/websocket_echo, driven by the websockets
library over a real socket."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import struct
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType

import websockets
from websockets.asyncio.client import connect

EXAMPLE = Path(__file__).parents[2] / "examples" / "websocket_echo" / "server.py"


def load_example() -> ModuleType:
    name = "websocket_echo_example"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@asynccontextmanager
async def echo_server(*, compression: bool = False) -> AsyncIterator[int]:
    """The example's server on a free port, in this loop; its port."""
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(load_example().serve("127.0.0.1", 0, started,
                                                    compression=compression))
    try:
        yield await asyncio.wait_for(started, 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_text_binary_fragmented_ping_close() -> None:
    async def main() -> None:
        async with echo_server() as port, connect(f"ws://127.0.0.1:{port}/") as ws:
            async with asyncio.timeout(10):
                await ws.send("héllo ✓")
                assert await ws.recv() == "héllo ✓"
                await ws.send(b"\x00\xff\x80")
                assert await ws.recv() == b"\x00\xff\x80"
                await ws.send(["frag", "mén", "ted"])  # three frames, one message
                assert await ws.recv() == "fragménted"
                big = os.urandom(300_000)
                await ws.send(big)
                assert await ws.recv() == big
                pong = await ws.ping(b"are you there")
                await pong
                await ws.close(1000, "bye")
            assert ws.close_code == 1000 and ws.close_reason == "bye"  # echoed (RFC 6455 §5.5.1)
    asyncio.run(main())


def test_a_violation_after_a_message_echoes_it_then_closes_1002() -> None:
    async def main() -> None:
        async with echo_server() as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade"
                         b"\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         b"Sec-WebSocket-Version: 13\r\n\r\n")
            key = b"\x01\x02\x03\x04"
            hello = bytes(b ^ key[i % 4] for i, b in enumerate(b"hello"))
            writer.write(b"\x81\x85" + key + hello + b"\xc1\x80" + key)  # then RSV1 set
            async with asyncio.timeout(10):
                assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
                assert await reader.readexactly(7) == b"\x81\x05hello"
                close = await reader.read(-1)
            assert close[0] == 0x88 and struct.unpack("!H", close[2:4]) == (1002,)
            writer.close()
    asyncio.run(main())


def test_a_refused_handshake_is_answered() -> None:
    async def main() -> None:
        async with echo_server() as port:
            try:
                async with connect(f"ws://127.0.0.1:{port}/",
                                   additional_headers={"Sec-WebSocket-Version": "8"}):
                    raise AssertionError("accepted")
            except websockets.InvalidStatus as refused:
                assert refused.response.status_code == 426
    asyncio.run(main())


def test_with_compression_messages_are_echoed_compressed() -> None:
    async def main() -> None:
        long_text, long_bytes = "ünïcode text to squeeze " * 200, bytes(range(50)) * 100
        async with echo_server(compression=True) as port, \
                connect(f"ws://127.0.0.1:{port}/") as ws:
            extension = ws.response.headers["Sec-WebSocket-Extensions"]
            assert extension.startswith("permessage-deflate; server_no_context_takeover")
            async with asyncio.timeout(10):
                for message in ("short", long_text, long_bytes, long_text):
                    await ws.send(message)
                    assert await ws.recv() == message
        async with echo_server() as port, connect(f"ws://127.0.0.1:{port}/") as ws:
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
    asyncio.run(main())
