"""Bad input over real sockets, on every runtime: each gets its documented answer; a
bystander notices nothing."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from .clients import WsClient, connect
from .serving import serving

HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             b"Sec-WebSocket-Version: 13\r\n\r\n")


def frame(payload: bytes, *, opcode: int = 1, masked: bool = True) -> bytes:
    """A client frame built by hand (RFC 6455 §5.2), for the malformed cases."""
    head = bytes([0x80 | opcode])
    length = len(payload)
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def raw_ws(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HANDSHAKE)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    return reader, writer


async def server_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next frame from the server (unmasked, whole): its opcode and payload."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        length = struct.unpack("!H", await reader.readexactly(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", await reader.readexactly(8))[0]
    return first & 0x0F, await reader.readexactly(length)


async def close_code(reader: asyncio.StreamReader) -> int:
    """Read server frames until the close frame; its code."""
    async with asyncio.timeout(10):
        while True:
            opcode, payload = await server_frame(reader)
            if opcode == 8:
                return int(struct.unpack("!H", payload[:2])[0])


Scenario = Callable[[Any, WsClient], Awaitable[None]]


def with_bystander(runtime: str, scenario: Scenario, **settings: Any) -> None:
    async def main() -> None:
        async with serving(runtime, **settings) as server, \
                connect("websocket", server.port) as good:
            await good.subscribe("news")
            await scenario(server, good)  # type: ignore[arg-type]
            for number in range(3):
                server.broadcast("news", "still-here", number)
                assert (await good.next("still-here"))["data"] == number
            assert good.close_code is None
    asyncio.run(main())


@pytest.mark.parametrize(("raw", "code"), [
    ("{oops", 4000), ("[1, 2, 3]", 4004), ("42", 4004), ('{"type": "dance"}', 4006),
    ('{"type": "subscribe"}', 4007), ('{"type": "subscribe", "channel": "a b"}', 4008),
    ('{"type": "subscribe", "channel": "private-x"}', 4001),
    ('{"type": "event", "channel": "news", "event": "e"}', 4003),
])
def test_bad_messages_get_an_error_and_keep_the_connection(raw: str, code: int,
                                                           runtime: str) -> None:
    async def scenario(server: Any, good: WsClient) -> None:
        async with connect("websocket", server.port) as bad:
            await bad.ws.send(raw)
            assert (await bad.next(type="error"))["data"]["code"] == code
            await bad.send({"type": "ping"})
            await bad.next(type="pong")
    with_bystander(runtime, scenario)


def test_oversized_message_closes_with_4009(runtime: str) -> None:
    async def scenario(server: Any, good: WsClient) -> None:
        async with connect("websocket", server.port) as bad:
            await bad.ws.send(json.dumps({"type": "ping", "data": "x" * 5000}))
            assert await bad.wait_closed() == 4009
    with_bystander(runtime, scenario, max_message_bytes=4096)


@pytest.mark.parametrize(("data", "code"), [
    (frame(b'{"type":"ping","data":"\xff"}'), 1007),  # invalid UTF-8 in a text frame
    (frame(b'{"type":"ping"}', masked=False), 1002),  # clients must mask (RFC 6455 §5.1)
    (frame(b"x", opcode=3), 1002),  # a reserved opcode
])
def test_protocol_violations_close_with_the_rfc_code(data: bytes, code: int,
                                                     runtime: str) -> None:
    async def scenario(server: Any, good: WsClient) -> None:
        reader, writer = await raw_ws(server.port)
        writer.write(data)
        assert await close_code(reader) == code
        writer.close()
    with_bystander(runtime, scenario)


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
    (b"NONSENSE\r\n\r\n", 400),
    (b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", 413),
])
def test_bad_http_requests_get_4xx(request_bytes: bytes, status: int, runtime: str) -> None:
    async def scenario(server: Any, good: WsClient) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request_bytes)
        line = await asyncio.wait_for(reader.readline(), 10)
        assert line.split()[1] == str(status).encode()
        writer.close()
    with_bystander(runtime, scenario)


def test_truncated_request_is_dropped_quietly(runtime: str) -> None:
    async def scenario(server: Any, good: WsClient) -> None:
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{\"cha")
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        async with asyncio.timeout(10):
            while server.node.statistics().transports > 1:
                await asyncio.sleep(0.01)
    with_bystander(runtime, scenario)


def test_slow_consumer_alone_is_dropped_with_4021(runtime: str) -> None:
    async def scenario(server: Any, good: WsClient) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(HANDSHAKE + frame(json.dumps({"type": "subscribe",
                                                  "channel": "news"}).encode()))
        await reader.readuntil(b"\r\n\r\n")
        async with asyncio.timeout(10):
            while sum(server.channels().values()) < 2:
                await asyncio.sleep(0.01)
        payload = "y" * 256 * 1024  # loopback buffers take megabytes before they push back
        async with asyncio.timeout(60):
            while server.node.statistics().slow_consumers == 0:
                server.broadcast("news", "bulk", payload)
                assert (await good.next("bulk"))["data"] == payload
        assert server.node.statistics().hub.errors.get(4021, 0) == 0  # a close, not an error
        assert server.channels()["news"] == 1  # only the bystander is left
        writer.close()
    with_bystander(runtime, scenario, max_output_bytes=64 * 1024)


def test_a_reader_that_lags_within_the_limit_gets_everything_in_order(runtime: str) -> None:
    """Sends that would block wait for the socket, and what follows queues behind them."""
    async def scenario(server: Any, good: WsClient) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(HANDSHAKE + frame(json.dumps({"type": "subscribe",
                                                  "channel": "news"}).encode()))
        await reader.readuntil(b"\r\n\r\n")
        async with asyncio.timeout(10):
            while sum(server.channels().values()) < 2:
                await asyncio.sleep(0.01)
        count, pad = 100, "z" * 64 * 1024  # 6.5 MB: more than the kernel buffers take
        for number in range(count):
            server.broadcast("news", "bulk", {"n": number, "pad": pad})
        numbers = []
        async with asyncio.timeout(60):
            while len(numbers) < count:
                opcode, payload = await server_frame(reader)
                message = json.loads(payload)
                if opcode == 1 and message.get("event") == "bulk":
                    numbers.append(message["data"]["n"])
        assert numbers == list(range(count))
        assert server.node.statistics().slow_consumers == 0
        writer.close()
    with_bystander(runtime, scenario, max_output_bytes=16 * 1024 * 1024)
