"""The example chat's server: a name that is online belongs to the browser that took it."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from urllib.parse import quote

import websockets
from websockets.exceptions import InvalidStatus

CHAT = Path(__file__).resolve().parents[2] / "examples" / "chat" / "server.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_name_online_is_refused_to_another_browser_until_it_is_free() -> None:
    port = free_port()
    process = subprocess.Popen([sys.executable, str(CHAT), "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def url(token: str) -> str:
        return f"ws://127.0.0.1:{port}/ws?token={quote(token)}"

    def browser(name: str, key: str) -> str:
        return json.dumps({"name": name, "key": key})

    async def connect(stack: AsyncExitStack, token: str) -> websockets.ClientConnection:
        ws = await stack.enter_async_context(websockets.connect(url(token)))
        established = json.loads(await ws.recv())
        assert established["event"] == "connection.established"
        return ws

    async def refused(token: str) -> int:
        try:
            async with websockets.connect(url(token)):
                pass
        except InvalidStatus as error:
            return error.response.status_code
        return 101

    async def scenario() -> None:
        async with asyncio.timeout(30):
            while True:  # until it listens (bounded)
                assert process.poll() is None
                try:
                    async with websockets.connect(url("probe")):
                        break
                except OSError:
                    await asyncio.sleep(0.05)
        async with AsyncExitStack() as first:
            await connect(first, browser("erin", "key-a"))
            await connect(first, browser("erin", "key-a"))  # the same browser, another tab
            assert await refused(browser("erin", "key-b")) == 401  # someone else
            assert await refused("erin") == 401  # a bare name is another key too
            async with AsyncExitStack() as other:
                await connect(other, browser("frank", "key-b"))  # a free name is fine
        # erin's browser has gone: the name is free for the next person
        deadline = time.monotonic() + 20
        while await refused(browser("erin", "key-b")) == 401:  # until the server saw it close
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        async with AsyncExitStack() as second:
            await connect(second, browser("erin", "key-b"))
            assert await refused(browser("erin", "key-a")) == 401

    try:
        asyncio.run(scenario())
    finally:
        process.terminate()
        process.communicate(timeout=20)
