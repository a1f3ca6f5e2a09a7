"""Bad input over real sockets, on every runtime: each gets its documented answer; a
bystander notices nothing."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ..clients import WsClient, connect_ws
from ..serving import API_KEY, Runtime, serving
from ..wire import HANDSHAKE, close_code, frame, raw_ws, server_frame

__all__ = [
    "test_a_reader_that_lags_within_the_limit_gets_everything_in_order",
    "test_absolute_form_target_is_routed_by_path",
    "test_ambiguous_requests_get_one_4xx_and_close",
    "test_bad_http_requests_get_4xx",
    "test_bad_messages_get_an_error_and_keep_the_connection",
    "test_expect_100_continue_on_publish",
    "test_messages_before_a_violation_are_handled_before_the_close",
    "test_oversized_message_closes_with_4009",
    "test_post_on_ws_is_405_with_allow",
    "test_protocol_violations_close_with_the_rfc_code",
    "test_slow_consumer_alone_is_dropped_with_4021",
    "test_truncated_request_is_dropped_quietly",
]

Scenario = Callable[[Any, WsClient], Awaitable[None]]


async def slow_subscriber(server: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw WebSocket client of `server` with a 4 KiB receive buffer, subscribed to
    `news` beside the bystander (returned once the server counts both)."""
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
    return reader, writer


def with_bystander(runtime: Runtime, scenario: Scenario, **settings: Any) -> None:
    async def main() -> None:
        async with serving(runtime, **settings) as server, \
                connect_ws(server.port) as good:
            await good.subscribe("news")
            await scenario(server, good)
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
                                                           runtime: Runtime) -> None:
    async def scenario(server: Any, good: WsClient) -> None:
        async with connect_ws(server.port) as bad:
            await bad.ws.send(raw)
            assert (await bad.next(type="error"))["data"]["code"] == code
            await bad.send({"type": "ping"})
            await bad.next(type="pong")
    with_bystander(runtime, scenario)


def test_oversized_message_closes_with_4009(runtime: Runtime) -> None:
    async def scenario(server: Any, good: WsClient) -> None:
        async with connect_ws(server.port) as bad:
            await bad.ws.send(json.dumps({"type": "ping", "data": "x" * 5000}))
            assert await bad.wait_closed() == 4009
    with_bystander(runtime, scenario, max_message_bytes=4096)


@pytest.mark.parametrize(("data", "code"), [
    (frame(b'{"type":"ping","data":"\xff"}'), 1007),  # invalid UTF-8 in a text frame
    (frame(b'{"type":"ping"}', masked=False), 1002),  # clients must mask (RFC 6455 §5.1)
    (frame(b"x", opcode=3), 1002),  # a reserved opcode
], ids=["invalid utf-8", "unmasked", "reserved opcode"])
def test_protocol_violations_close_with_the_rfc_code(data: bytes, code: int,
                                                     runtime: Runtime) -> None:
    async def scenario(server: Any, good: WsClient) -> None:
        reader, writer = await raw_ws(server.port)
        writer.write(data)
        assert await close_code(reader) == code
        writer.close()
    with_bystander(runtime, scenario)


def test_messages_before_a_violation_are_handled_before_the_close(runtime: Runtime) -> None:
    """A subscribe and a bad frame in one write: the subscription is answered, then 1002."""
    async def scenario(server: Any, good: WsClient) -> None:
        reader, writer = await raw_ws(server.port)
        writer.write(frame(json.dumps({"type": "subscribe", "channel": "news"}).encode())
                     + frame(b"x", opcode=3))
        opcode, payload = await asyncio.wait_for(server_frame(reader), 10)  # established
        assert json.loads(payload)["event"] == "connection.established"
        opcode, payload = await asyncio.wait_for(server_frame(reader), 10)
        assert opcode == 1 and json.loads(payload)["event"] == "subscription.succeeded"
        assert await close_code(reader) == 1002
        writer.close()
    with_bystander(runtime, scenario)


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
    (b"NONSENSE\r\n\r\n", 400),
    (b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", 413),
])
def test_bad_http_requests_get_4xx(request_bytes: bytes, status: int, runtime: Runtime) -> None:
    async def scenario(server: Any, good: WsClient) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request_bytes)
        line = await asyncio.wait_for(reader.readline(), 10)
        assert line.split()[1] == str(status).encode()
        writer.close()
    with_bystander(runtime, scenario)


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything the server writes until it closes the connection (bounded in time)."""
    async with asyncio.timeout(10):
        return await reader.read(-1)


async def exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes on a new connection; everything the server answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await read_to_eof(reader)
    finally:
        writer.close()


PIPELINED = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
UPGRADE = (b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
SHORT_KEY = UPGRADE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"dGhlIHNhbXBsZQ==")  # 10 bytes


@pytest.mark.parametrize(("head", "status"), [
    (b"POST /api/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
     b"Content-Length: 5\r\n\r\n0\r\n\r\n", 400),
    (b"POST /api/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
    (b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
     b"Content-Length: 2\r\n\r\n{}", 400),
    (b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
     b"Content-Length: 3\r\n\r\n{}", 400),
    (b"GET /health HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    (b"GET /health HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n", 400),
    (b"GET /health HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n", 400),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nX\x01A: b\r\n\r\n", 400),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x1bb\r\n\r\n", 400),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400),
    (b"GET /ws HTTP/1.1\r\nHost: x\r\n" + SHORT_KEY +
     b"Sec-WebSocket-Version: 13\r\n\r\n", 400),  # a key of 10 bytes
    (b"GET /ws HTTP/1.1\r\nHost: x\r\n" + UPGRADE.replace(b"dGhl", b"!!!!") +
     b"Sec-WebSocket-Version: 13\r\n\r\n", 400),  # a key that is not base64
    (b"GET /ws HTTP/1.0\r\nHost: x\r\n" + UPGRADE + b"Sec-WebSocket-Version: 13\r\n\r\n", 400),
    (b"GET /ws HTTP/1.1\r\nHost: x\r\n" + UPGRADE + b"\r\n", 426),
    (b"GET /ws HTTP/1.1\r\nHost: x\r\n" + UPGRADE + b"Sec-WebSocket-Version: 8\r\n\r\n", 426),
], ids=["transfer-encoding and content-length", "final coding not chunked",
        "duplicate content-length", "conflicting content-length", "space before colon",
        "bare CR", "bare LF", "control in a name", "NUL in a value", "control in a value",
        "obs-fold", "websocket key too short", "websocket key not base64",
        "websocket over HTTP/1.0", "websocket version missing", "websocket version 8"])
def test_ambiguous_requests_get_one_4xx_and_close(head: bytes, status: int,
                                                   runtime: Runtime) -> None:
    """RFC 9112 and RFC 6455 §4.2: one clear 4xx, then the connection closes, so the
    request pipelined behind it is never answered."""
    async def scenario(server: Any, good: WsClient) -> None:
        answer = await exchange(server.port, head + PIPELINED)
        assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:60]
        assert answer.count(b"HTTP/1.1 ") == 1  # the pipelined GET /health got nothing
        body = json.loads(answer.partition(b"\r\n\r\n")[2])
        assert body["error"]["code"] == 4000
        if status == 426:
            assert b"sec-websocket-version: 13\r\n" in answer.lower()
    with_bystander(runtime, scenario)


def test_post_on_ws_is_405_with_allow(runtime: Runtime) -> None:
    async def scenario(server: Any, good: WsClient) -> None:
        answer = await exchange(server.port, b"POST /ws HTTP/1.1\r\nHost: x\r\n"
                                b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 405 ")
        assert b"\r\nallow: GET\r\n" in answer.lower().replace(b"get", b"GET")
    with_bystander(runtime, scenario)


def test_absolute_form_target_is_routed_by_path(runtime: Runtime) -> None:
    """RFC 9112 §3.2.2: a server accepts absolute-form; the path picks the endpoint."""
    async def scenario(server: Any, good: WsClient) -> None:
        answer = await exchange(server.port, b"GET http://elsewhere.example/health HTTP/1.1"
                                b"\r\nHost: elsewhere.example\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["status"] == "ok"
    with_bystander(runtime, scenario)


def test_expect_100_continue_on_publish(runtime: Runtime) -> None:
    """The client waits for 100 Continue before the body, then gets the real answer."""
    async def scenario(server: Any, good: WsClient) -> None:
        body = json.dumps({"channel": "news", "event": "still-here", "data": -1}).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                     b"Authorization: Bearer %b\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n"
                     % (API_KEY.encode(), len(body)))
        async with asyncio.timeout(10):
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        answer = await read_to_eof(reader)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:60]
        assert (await good.next("still-here"))["data"] == -1
        writer.close()
    with_bystander(runtime, scenario)


def test_truncated_request_is_dropped_quietly(runtime: Runtime) -> None:
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


def test_slow_consumer_alone_is_dropped_with_4021(runtime: Runtime) -> None:
    async def scenario(server: Any, good: WsClient) -> None:
        _, writer = await slow_subscriber(server)
        payload = "y" * 256 * 1024  # loopback buffers take megabytes before they push back
        async with asyncio.timeout(60):
            while server.node.statistics().slow_consumers == 0:
                server.broadcast("news", "bulk", payload)
                assert (await good.next("bulk"))["data"] == payload
        assert server.node.statistics().hub.errors.get(4021, 0) == 0  # a close, not an error
        assert server.channels()["news"] == 1  # only the bystander is left
        writer.close()
    with_bystander(runtime, scenario, max_output_bytes=64 * 1024)


def test_a_reader_that_lags_within_the_limit_gets_everything_in_order(runtime: Runtime) -> None:
    """Sends that would block wait for the socket, and what follows queues behind them."""
    async def scenario(server: Any, good: WsClient) -> None:
        reader, writer = await slow_subscriber(server)
        count, pad = 100, "z" * 64 * 1024  # 6.5 MB: more than the kernel buffers take
        for number in range(count):
            server.broadcast("news", "bulk", {"n": number, "pad": pad})
        numbers: list[int] = []
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
