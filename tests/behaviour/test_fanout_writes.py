"""Every runtime's server writes a fan-out met alone chunk by chunk, the first subscribers'
sockets before the last are queued; messages that come together go out in one write per
socket (counted at `ServerBase.write`, the one call that writes a socket)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

from realtime_behaviour import Runtime
from realtime_behaviour.clients import Client, connect
from realtime_proto.events import TransportId
from realtime_server.edge import FANOUT_CHUNK

from .serving import serving

SUBSCRIBERS = FANOUT_CHUNK * 2 + 3
T = TypeVar("T")
TIMEOUT = 30.0


def count_writes(server: Any) -> list[TransportId]:
    """Every socket write from now on, in order (the real write still happens)."""
    writes: list[TransportId] = []
    write: Callable[[TransportId], None] = server.write

    def counted(transport_id: TransportId) -> None:
        writes.append(transport_id)
        write(transport_id)

    server.write = counted
    return writes


async def received(clients: list[Client], count: int) -> list[list[object]]:
    async def take(client: Client) -> list[object]:
        return [(await client.next("e"))["data"] for _ in range(count)]
    return await asyncio.wait_for(asyncio.gather(*(take(c) for c in clients)), TIMEOUT)


def test_a_fanout_alone_is_written_chunk_by_chunk_and_a_burst_once_per_socket(
        runtime: Runtime) -> None:
    async def scenario() -> None:
        # connection_rate 0: more subscribers from one address than its default burst
        async with serving(runtime, connection_rate=0) as handle, \
                contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(connect("websocket", handle.port))
                       for _ in range(SUBSCRIBERS)]
            for client in clients:
                await client.subscribe("c")
            server = getattr(handle, "server", handle)  # the threaded runtimes' own server

            def on_server_thread(fn: Callable[[], T]) -> T:
                return handle.call(fn) if handle is not server else fn()

            writes = on_server_thread(lambda: count_writes(server))

            def broadcast_alone() -> int:
                server.broadcast("c", "e", 1)  # returns before the loop turns
                return len(writes)
            # every chunk but the last written at once, each socket once
            assert on_server_thread(broadcast_alone) == SUBSCRIBERS - SUBSCRIBERS % FANOUT_CHUNK
            assert await received(clients, 1) == [[1]] * SUBSCRIBERS
            assert on_server_thread(lambda: sorted(writes)) == sorted(set(writes))
            assert len(writes) == SUBSCRIBERS

            def burst() -> int:
                writes.clear()
                for number in (2, 3, 4):  # three messages in one call
                    server.node.hub.broadcast("c", "e", number, now=server.now())
                server.pump()
                return len(writes)
            assert on_server_thread(burst) == 0  # queued for the end of the loop's turn
            assert await received(clients, 3) == [[2, 3, 4]] * SUBSCRIBERS
            assert on_server_thread(lambda: sorted(writes)) == sorted(set(writes))
            assert len(writes) == SUBSCRIBERS
    asyncio.run(scenario())
