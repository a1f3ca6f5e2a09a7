"""What no socket costs on trio and gevent: an idle connection parks no task or greenlet;
and trio's reading where no selector can be awaited."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from realtime_behaviour.clients import connect

from .serving import serving


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
