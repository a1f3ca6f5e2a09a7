"""permessage-deflate end to end, on every runtime: the `websockets` library offers it by
default and inflates what it receives."""

from __future__ import annotations

import asyncio
from typing import Any

import websockets

from ..clients import WsClient
from ..serving import Runtime, in_server, serving

__all__ = [
    "test_with_compression_a_broadcast_arrives_compressed",
    "test_without_compression_no_extension_is_agreed",
]

TEXT = "a chat message long enough to be worth compressing, " * 20


def _encodings(server: Any) -> dict[str, int]:
    """How many times the server framed a broadcast, by kind."""
    return in_server(server, lambda running: dict(running.node.statistics().encodings))


async def _exchange(server: Any) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    """Connect with websockets' defaults, receive a broadcast, send a long ping: the
    extension the server agreed to, the broadcast and the answer to the ping."""
    ws = await websockets.connect(f"ws://127.0.0.1:{server.port}/ws")
    client = WsClient(ws)
    try:
        await client.established()
        assert (await client.subscribe("news"))["event"] == "subscription.succeeded"
        server.broadcast("news", "said", {"text": TEXT})
        message = await client.next("said")
        await client.send({"type": "ping", "padding": TEXT})  # compressed by websockets
        pong = await client.next(type="pong")
        assert ws.response is not None  # the handshake is done
        return ws.response.headers.get("Sec-WebSocket-Extensions"), message, pong
    finally:
        await client.close()


def test_with_compression_a_broadcast_arrives_compressed(runtime: Runtime) -> None:
    async def scenario() -> None:
        async with serving(runtime, compression=True) as server:
            extension, message, pong = await _exchange(server)
            assert extension is not None
            assert extension.startswith("permessage-deflate; server_no_context_takeover")
            assert message["data"] == {"text": TEXT}
            assert pong["type"] == "pong"
            assert _encodings(server).get("websocket-deflate", 0) >= 1
    asyncio.run(scenario())


def test_without_compression_no_extension_is_agreed(runtime: Runtime) -> None:
    async def scenario() -> None:
        async with serving(runtime) as server:
            extension, message, pong = await _exchange(server)
            assert extension is None
            assert message["data"] == {"text": TEXT} and pong["type"] == "pong"
            assert "websocket-deflate" not in _encodings(server)
    asyncio.run(scenario())
