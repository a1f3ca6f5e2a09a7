"""The server's side of each accepted socket, seen from the kernel, on every runtime: small
writes leave at once (TCP_NODELAY), and a peer that stops reading is let go."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import sys
from pathlib import Path

import pytest
import websockets

from ..features.certs import client_context, make_certificate
from .clients import connect
from .serving import serving
from .test_bad_input import HANDSHAKE, frame

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads this process's sockets from /proc/self/fd")

TIMEOUT = 30.0
Address = tuple[str, int]


def server_sockets(port: int) -> dict[Address, bool]:
    """The server's side of every connection accepted on `port` (the servers run in this
    process): each one's peer address, and whether it has TCP_NODELAY set."""
    found: dict[Address, bool] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            if not stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                continue
            copy = socket.socket(fileno=os.dup(int(name)))
        except OSError:  # closed meanwhile
            continue
        with copy:
            if copy.family != socket.AF_INET or copy.type != socket.SOCK_STREAM:
                continue
            try:
                local, peer = copy.getsockname(), copy.getpeername()
            except OSError:  # a listening socket
                continue
            if local[1] == port:
                found[peer] = bool(copy.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    return found


@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
def test_accepted_sockets_send_small_writes_at_once(runtime: str, secure: bool,
                                                    tmp_path: Path) -> None:
    """Without TCP_NODELAY a small write waits for the peer's delayed ACK (~40 ms)."""
    if secure and runtime == "selectors":
        pytest.skip("the selectors example leaves TLS out (see its docstring)")
    settings: dict[str, str] = {}
    context = None
    if secure:
        cert, key = make_certificate(tmp_path)
        settings = {"tls_cert": str(cert), "tls_key": str(key)}
        context = client_context(cert)

    async def scenario() -> None:
        async with serving(runtime, **settings) as server:
            url = f"{'wss' if secure else 'ws'}://127.0.0.1:{server.port}/ws"
            async with websockets.connect(url, ssl=context) as ws:
                established = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                assert established["event"] == "connection.established"
                assert server_sockets(server.port) == {ws.local_address[:2]: True}
    asyncio.run(scenario())


def test_a_peer_that_stops_reading_is_let_go(runtime: str) -> None:
    """A slow consumer is dropped, and its socket closed within the grace period even
    though the close frame cannot be sent; a bystander notices nothing."""
    async def scenario() -> None:
        async with serving(runtime, max_output_bytes=64 * 1024) as server, \
                connect("websocket", server.port) as good:
            await good.subscribe("news")
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", server.port))
            sock.setblocking(False)
            address = sock.getsockname()
            reader, writer = await asyncio.open_connection(sock=sock)
            writer.write(HANDSHAKE + frame(json.dumps({"type": "subscribe",
                                                      "channel": "news"}).encode()))
            await reader.readuntil(b"\r\n\r\n")
            async with asyncio.timeout(TIMEOUT):
                while sum(server.channels().values()) < 2:
                    await asyncio.sleep(0.01)
            assert address in server_sockets(server.port)
            payload = "y" * 256 * 1024  # loopback buffers take megabytes before they push back
            async with asyncio.timeout(TIMEOUT):
                while server.node.statistics().slow_consumers == 0:
                    server.broadcast("news", "bulk", payload)
                    assert (await good.next("bulk"))["data"] == payload
            async with asyncio.timeout(TIMEOUT):  # the grace period is 5 s
                while address in server_sockets(server.port):
                    await asyncio.sleep(0.05)
            server.broadcast("news", "still-here", 1)
            assert (await good.next("still-here"))["data"] == 1
            assert good.close_code is None
            writer.close()
    asyncio.run(scenario())


def _live_tasks() -> int:
    """Tasks of the trio run that calls this (run it on the server's thread)."""
    import trio

    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(count(child) for nursery in task.child_nurseries
                       for child in nursery.child_tasks)
    return count(trio.lowlevel.current_root_task())


def _live_greenlets() -> int:
    """Greenlets of this process that have started and not ended (the hub's included)."""
    import gc

    import greenlet  # type: ignore[import-untyped]

    return sum(1 for obj in gc.get_objects()
               if issubclass(type(obj), greenlet.greenlet) and obj and not obj.dead)


@pytest.mark.parametrize("runtime", ["trio", "gevent"])
def test_an_idle_plain_connection_parks_no_task(runtime: str) -> None:
    """What would make an idle connection cost 12 KiB (trio) or 20 KiB (gevent): a task or
    greenlet per socket. Only a send that would block, or a close, starts one."""
    live = _live_tasks if runtime == "trio" else _live_greenlets

    async def scenario() -> None:
        async with serving(runtime) as server, connect("websocket", server.port) as first:
            await first.subscribe("news")
            before = server.call(live)
            async with contextlib.AsyncExitStack() as stack:
                clients = [await stack.enter_async_context(connect("websocket", server.port))
                           for _ in range(10)]
                for client in clients:
                    await client.subscribe("news")
                assert server.call(live) == before
                server.broadcast("news", "e", 1)
                for client in (first, *clients):
                    assert (await client.next("e"))["data"] == 1
    asyncio.run(scenario())


def test_trio_reads_each_socket_with_a_task_where_no_selector_can_be_awaited(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the platform's selector has no file descriptor (Windows), trio reads plain
    sockets through a stream and a task each, as it reads TLS ones."""
    import realtime_trio.server

    monkeypatch.setattr(realtime_trio.server, "_awaitable_selector", lambda: None)

    async def scenario() -> None:
        async with serving("trio") as server, connect("websocket", server.port) as ws:
            await ws.subscribe("news")
            assert server.call(lambda: [sock.stream is not None
                                        for sock in server.server.sockets.values()]) == [True]
            server.broadcast("news", "big", "x" * 1_000_000)
            assert (await ws.next("big"))["data"] == "x" * 1_000_000
    asyncio.run(scenario())
