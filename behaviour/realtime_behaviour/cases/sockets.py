"""The server's side of each accepted socket, seen from the kernel, on every runtime: small
writes leave at once (TCP_NODELAY), and a peer that stops reading is let go. The server
must run in the test's process: its sockets are read from /proc/self/fd."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import sys
from pathlib import Path

import pytest
import websockets

from ..certs import client_context, make_certificate
from ..clients import connect_ws
from ..serving import Runtime, serving
from ..wire import HANDSHAKE, frame

__all__ = [
    "test_a_peer_that_stops_reading_is_let_go",
    "test_accepted_sockets_send_small_writes_at_once",
]

#: a mark on each case (not the module's `pytestmark`), so it travels with the case
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
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


@linux_only
@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
def test_accepted_sockets_send_small_writes_at_once(runtime: Runtime, secure: bool,
                                                    tmp_path: Path) -> None:
    """Without TCP_NODELAY a small write waits for the peer's delayed ACK (~40 ms)."""
    if secure and not runtime.tls:
        pytest.skip(f"the {runtime.name} runtime serves no TLS")
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


@linux_only
def test_a_peer_that_stops_reading_is_let_go(runtime: Runtime) -> None:
    """A slow consumer is dropped, and its socket closed within the grace period even
    though the close frame cannot be sent; a bystander notices nothing."""
    async def scenario() -> None:
        async with serving(runtime, max_output_bytes=64 * 1024) as server, \
                connect_ws(server.port) as good:
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
