"""The application API from any thread, and never before the server runs, on every runtime."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

import pytest

from realtime_asyncio import RealtimeServer, ServerNotStarted
from realtime_behaviour import ThreadedServer
from realtime_behaviour.clients import connect
from realtime_proto import Publication
from realtime_proto.errors import MessageError
from tests.behaviour.serving import RUNTIMES, selectors_module, serving

THREADS = 8
PER_THREAD = 100


def raw(server: Any) -> Any:
    """The server object itself (the threaded runtimes' handle marshals every call)."""
    return server.server if isinstance(server, ThreadedServer) else server


def unstarted(runtime: str) -> Any:
    if runtime == "trio":
        from realtime_trio import RealtimeServer as TrioServer
        return TrioServer(port=0)
    if runtime == "gevent":
        from realtime_gevent import RealtimeServer as GeventServer
        return GeventServer(port=0)
    if runtime == "selectors":
        return selectors_module().SelectorsServer(port=0)
    return RealtimeServer(port=0)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_api_raises_before_start_and_after_stop(runtime: str) -> None:
    server = unstarted(runtime)
    for call in (lambda: server.broadcast("news", "n", 1),
                 lambda: server.send_to_user("alice", "n", 1),
                 lambda: server.send("c1", "n", 1),
                 lambda: server.members("presence-x")):
        with pytest.raises(ServerNotStarted, match=r"server\.lifespan"):
            call()
    if runtime == "selectors":
        server._release()  # its wake-up socket pair, made in the constructor

    async def scenario() -> None:
        async with serving(runtime) as running:
            stopped = raw(running)
        with pytest.raises(ServerNotStarted):
            stopped.broadcast("news", "n", 1)
    asyncio.run(scenario())


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_broadcasts_from_eight_threads_all_arrive_in_per_thread_order(runtime: str) -> None:
    async def scenario() -> None:
        async with serving(runtime) as server, connect("websocket", server.port) as client:
            await client.subscribe("news")
            target = raw(server)
            start = threading.Barrier(THREADS)

            def publish(thread: int) -> list[str]:
                start.wait(10)
                return [target.broadcast("news", "n", {"thread": thread, "i": i})
                        for i in range(PER_THREAD)]

            with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
                ids = await asyncio.gather(*(asyncio.wrap_future(pool.submit(publish, t))
                                             for t in range(THREADS)))
            received: dict[int, list[int]] = {t: [] for t in range(THREADS)}
            arrived_ids = set()
            for _ in range(THREADS * PER_THREAD):
                message = await client.next("n")
                received[message["data"]["thread"]].append(message["data"]["i"])
                arrived_ids.add(message["id"])
            assert received == {t: list(range(PER_THREAD)) for t in range(THREADS)}
            assert arrived_ids == {i for thread_ids in ids for i in thread_ids}
            await client.nothing()
    asyncio.run(scenario())


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_broadcast_many_publishes_in_order_or_nothing(runtime: str) -> None:
    async def scenario() -> None:
        async with serving(runtime) as server, connect("websocket", server.port) as news, \
                connect("websocket", server.port) as sports:
            await news.subscribe("news")
            await sports.subscribe("sports")
            target = raw(server)
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                bad = pool.submit(target.broadcast_many, [Publication("news", "n", 0),
                                                          Publication("bad channel!", "n")])
                with pytest.raises(MessageError, match="channel"):
                    await asyncio.wrap_future(bad)
                ids = await asyncio.wrap_future(pool.submit(target.broadcast_many, [
                    Publication("news", "n", 1), ("sports", "s", {"goal": 1}, None),
                    Publication("news", "n", 2)]))
            assert len(set(ids)) == 3
            first, second = await news.next("n"), await news.next("n")
            assert [first["data"], second["data"]] == [1, 2]  # not 0: nothing of the bad call
            assert [first["id"], second["id"]] == [ids[0], ids[2]]
            goal = await sports.next("s")
            assert (goal["data"], goal["id"]) == ({"goal": 1}, ids[1])
            await news.nothing()
    asyncio.run(scenario())


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_errors_reach_the_calling_thread(runtime: str) -> None:
    async def scenario() -> None:
        async with serving(runtime) as server:
            target = raw(server)
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                failed = pool.submit(target.broadcast, "bad channel!", "n", 1)
                with pytest.raises(MessageError, match="channel"):
                    await asyncio.wrap_future(failed)
                assert await asyncio.wrap_future(pool.submit(target.channels)) == {}
    asyncio.run(scenario())


def test_a_call_the_loop_never_took_raises_and_is_never_sent() -> None:
    async def scenario() -> None:
        async with serving("asyncio") as server, connect("websocket", server.port) as client:
            await client.subscribe("news")
            server.call_timeout = 0.2
            outcome: list[BaseException] = []

            def publish() -> None:
                try:
                    server.broadcast("news", "late", 1)
                except BaseException as error:
                    outcome.append(error)

            thread = threading.Thread(target=publish)
            thread.start()
            thread.join(10)  # blocks the loop: the call cannot be taken in time
            assert len(outcome) == 1 and isinstance(outcome[0], TimeoutError)
            server.broadcast("news", "after", 2)
            assert (await client.next())["event"] == "after"
            await client.nothing()
    asyncio.run(scenario())
