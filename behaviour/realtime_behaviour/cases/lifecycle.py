"""What every runtime does at its edges: graceful shutdown, start-up failures, TLS."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from realtime_brokers import BrokerUnavailable

from ..certs import client_context, make_certificate
from ..clients import PollClient, SseClient, WsClient, connect
from ..serving import CLOSE_TIMEOUT, Runtime, in_server, serving

__all__ = [
    "test_shutdown_says_goodbye_on_every_transport",
    "test_start_fails_with_the_cause",
    "test_tls_serves_wss_and_https",
]

TIMEOUT = 20.0


def test_shutdown_says_goodbye_on_every_transport(runtime: Runtime) -> None:
    async def scenario() -> None:
        async with serving(runtime) as server, \
                connect("websocket", server.port) as ws, \
                connect("sse", server.port) as sse, \
                connect("polling", server.port) as poll:
            assert isinstance(ws, WsClient) and isinstance(sse, SseClient)
            assert isinstance(poll, PollClient)
            async with asyncio.timeout(TIMEOUT):  # a poll is answered only if one is held
                while not _held_polls(server):
                    await asyncio.sleep(0.01)
            await server.aclose(timeout=CLOSE_TIMEOUT)
            assert await ws.wait_closed() == 1001
            for client in (sse, poll):
                goodbye = await client.next("connection.closed")
                assert goodbye["data"]["code"] == 1001
                async with asyncio.timeout(TIMEOUT):
                    await client.ended.wait()
    asyncio.run(scenario())


def _held_polls(server: Any) -> int:
    """Long-polls the server holds."""
    return in_server(server, lambda running: int(running.node.statistics().held_polls))


def test_start_fails_with_the_cause(runtime: Runtime) -> None:
    async def scenario() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            with pytest.raises(OSError):
                async with serving(runtime, port=taken.getsockname()[1]):
                    pass
        with pytest.raises(BrokerUnavailable):
            async with serving(runtime, broker="redis://127.0.0.1:9/0?connect_timeout=2"):
                pass
    asyncio.run(scenario())


def test_tls_serves_wss_and_https(runtime: Runtime, tmp_path: Path) -> None:
    if not runtime.tls:
        pytest.skip(f"the {runtime.name} runtime serves no TLS")
    cert, key = make_certificate(tmp_path)
    context = client_context(cert)

    async def scenario() -> None:
        async with serving(runtime, tls_cert=str(cert), tls_key=str(key)) as server:
            async with websockets.connect(f"wss://127.0.0.1:{server.port}/ws",
                                          ssl=context) as ws:
                established = json.loads(await ws.recv())
                assert established["event"] == "connection.established"
                await ws.send(json.dumps({"type": "subscribe", "channel": "news"}))
                assert json.loads(await ws.recv())["event"] == "subscription.succeeded"
                server.broadcast("news", "secure", "x" * 100_000)
                assert json.loads(await ws.recv())["data"] == "x" * 100_000
            async with httpx.AsyncClient(verify=context) as http:
                response = await http.get(f"https://127.0.0.1:{server.port}/health")
                assert response.json()["runtime"] == runtime.name
            with socket.create_connection(("127.0.0.1", server.port)) as plain:
                plain.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # not TLS
                status = await asyncio.to_thread(_health_over_tls, server.port, context)
                assert status == 200  # a confused client hurts nobody else
    asyncio.run(scenario())


def _health_over_tls(port: int, context: ssl.SSLContext) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return int(tls.recv(4096).split()[1])
