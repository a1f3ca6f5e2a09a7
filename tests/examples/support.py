"""Running the examples for their tests: import one by path, serve an ASGI app under real
uvicorn, subscribe with a WebSocket, read a process's lines with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import uvicorn
import websockets

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "examples"
TIMEOUT = 15.0


def load_example(relative: str) -> ModuleType:
    """An example's module, imported fresh under a unique name (its own server)."""
    name = f"example_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def listening_socket() -> socket.socket:
    """A socket bound to a port the kernel picked (handed to the server, never raced)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def uvicorn_serving(app: Any) -> AsyncIterator[int]:
    """An ASGI app under real uvicorn in this loop, its lifespan on; yields the port."""
    sock = listening_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="on"))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(TIMEOUT):
            while not server.started:
                assert not task.done(), "uvicorn stopped while starting"
                await asyncio.sleep(0.01)
        yield int(sock.getsockname()[1])
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, TIMEOUT)
        sock.close()


class WsSubscriber:
    """A WebSocket subscribed to one channel."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def next(self, event: str) -> dict[str, Any]:
        """The next message of that event (others are skipped)."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                message: dict[str, Any] = json.loads(await self.ws.recv())
                if message.get("event") == event:
                    return message


@contextlib.asynccontextmanager
async def ws_subscribed(url: str, channel: str) -> AsyncIterator[WsSubscriber]:
    async with websockets.connect(url) as ws:
        async with asyncio.timeout(TIMEOUT):
            assert json.loads(await ws.recv())["event"] == "connection.established"
            await ws.send(json.dumps({"type": "subscribe", "channel": channel}))
            assert json.loads(await ws.recv())["event"] == "subscription.succeeded"
        yield WsSubscriber(ws)


class Lines:
    """A child process's standard output, line by line, with a deadline per line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def next(self) -> str:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), TIMEOUT)
        assert line, "the process ended"
        return line.decode().strip()
