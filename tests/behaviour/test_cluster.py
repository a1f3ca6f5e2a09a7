"""Mixed clusters: nodes of different runtimes on one broker behave as one server."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable

import pytest

from realtime_behaviour import token
from realtime_behaviour.clients import Client, connect

from ..cluster.nodes import broker_url as cluster_broker_url
from ..cluster.nodes import drop_history_streams, require
from .serving import RUNTIMES, serving

REDIS = ("127.0.0.1", 6379)


def broker_url(kind: str) -> str:
    """A broker of `kind` private to this test (its own bus name, prefix or exchange);
    skipped when the server is down, failed under CI."""
    if kind == "memory":
        return f"memory://cluster-{uuid.uuid4().hex[:12]}"
    require(kind)
    return cluster_broker_url(kind)


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until `check()` holds (it reads state another node reaches over the broker)."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def until_routed(publish: Callable[[int], Awaitable[object] | object],
                       client: Client, timeout: float = 10.0) -> None:
    """Publish numbered probes until one arrives: the broker subscription that a new
    subscriber's node makes takes effect a moment after the subscriber's ack."""
    async with asyncio.timeout(timeout):
        for number in range(10**6):
            result = publish(number)
            if asyncio.iscoroutine(result):
                await result
            with contextlib.suppress(TimeoutError):
                await client.next("probe", timeout=0.2)
                return


@pytest.mark.parametrize("broker", ["memory", "redis", "nats", "amqp", "postgresql"])
def test_every_runtime_in_one_cluster_sees_every_message(broker: str) -> None:
    """Every broker URL works from every runtime (trio, gevent and selectors through the
    bridge), and one cluster may mix them."""
    async def scenario() -> None:
        url = broker_url(broker)
        async with contextlib.AsyncExitStack() as stack:
            servers = [await stack.enter_async_context(serving(runtime, broker=url))
                       for runtime in RUNTIMES]
            clients = [await stack.enter_async_context(connect("websocket", server.port))
                       for server in servers]
            for client in clients:
                await client.subscribe("news")
            for server in servers:
                for client in clients:
                    await until_routed(
                        lambda n, s=server: s.broadcast("news", "probe", n), client)
            for index, server in enumerate(servers):
                message_id = server.broadcast("news", "headline", {"from": RUNTIMES[index]})
                for client in clients:
                    message = await client.next("headline")
                    assert (message["id"], message["data"]) == (
                        message_id, {"from": RUNTIMES[index]})
    asyncio.run(scenario())


@pytest.mark.parametrize("broker", ["memory", "redis"])
@pytest.mark.parametrize("other", ["trio", "gevent"])
def test_asyncio_and_another_runtime_share_presence_and_client_events(
        broker: str, other: str) -> None:
    async def scenario() -> None:
        url, room = broker_url(broker), "presence-room.mixed"
        async with serving("asyncio", broker=url) as first, serving(other, broker=url) as second:
            for server in (first, second):
                server.channel("presence-*").authorize(
                    lambda conn, channel: {"name": conn.user_id.title()})
            async with connect("websocket", first.port, token=token("alice")) as alice:
                await alice.subscribe(room)
                assert [m["user_id"] for m in (await alice.next("presence.sync"))["data"][
                    "members"]] == ["alice"]
                async with connect("sse", second.port, token=token("bob")) as bob:
                    await bob.subscribe(room)
                    joined = await alice.next("user.joined")
                    assert joined["data"] == {"user_id": "bob", "info": {"name": "Bob"}}
                    for server in (first, second):
                        await eventually(lambda s=server: sorted(
                            m.user_id for m in s.members(room)) == ["alice", "bob"])
                    await until_routed(lambda n: first.broadcast(room, "probe", n), bob)
                    await alice.send({"type": "event", "channel": room, "event": "wave",
                                      "data": "hi bob"})
                    got = await bob.next("wave")
                    assert (got["user_id"], got["data"]) == ("alice", "hi bob")
                    await bob.send({"type": "event", "channel": room, "event": "wave",
                                    "data": "hi alice"})
                    got = await alice.next("wave")
                    assert (got["user_id"], got["data"]) == ("bob", "hi alice")
                    second.send_to_user("alice", "note", {"via": other})
                    assert (await alice.next("note"))["data"] == {"via": other}
                left = await alice.next("user.left")
                assert left["data"]["user_id"] == "bob"
                await eventually(lambda: [m.user_id for m in second.members(room)] == ["alice"])
    asyncio.run(scenario())



@pytest.mark.parametrize("store", ["memory", "redis", "nats"])
def test_every_runtime_shares_one_history_and_recovers_another_nodes_messages(
        store: str) -> None:
    """Each runtime appends to and reads the shared store (trio, gevent and selectors
    through the bridge): one stream, whichever node publishes or recovers."""
    url = broker_url(store)  # the broker's own server keeps the history

    async def scenario() -> None:
        history_store = url if store == "memory" else "auto"
        channel = f"room.{uuid.uuid4().hex[:8]}"
        async with contextlib.AsyncExitStack() as stack:
            servers = [await stack.enter_async_context(serving(
                runtime, broker=url, history="room.*=50:60", history_store=history_store))
                for runtime in RUNTIMES]
            async with connect("websocket", servers[0].port) as first:
                await first.send({"type": "subscribe", "channel": channel})
                position = (await first.next("subscription.succeeded"))["data"]
                for server in servers:
                    await until_routed(lambda n, s=server: s.broadcast(channel, "probe", n),
                                       first)
                last = (await _last_offset(first))
            for index, server in enumerate(servers):  # while the client is away
                server.broadcast(channel, "n", index)
            for server in servers:  # it comes back on each node in turn
                async with connect("websocket", server.port) as again:
                    await again.send({"type": "subscribe", "channel": channel, "data": {
                        "recover": {"epoch": position["epoch"], "offset": last}}})
                    answer = (await again.next("subscription.succeeded"))["data"]
                    assert answer["recovered"] is True, answer
                    missed = [await again.next("n") for _ in servers]
                    assert sorted(m["data"] for m in missed) == list(range(len(servers)))
                    assert [m["offset"] for m in missed] == list(
                        range(last + 1, last + 1 + len(servers)))
    try:
        asyncio.run(scenario())
    finally:
        if store == "nats":
            asyncio.run(drop_history_streams(url))


async def _last_offset(client: Client) -> int:
    """The offset of the last message the client has seen (probes included)."""
    await client.send({"type": "ping"})
    await client.next(type="pong")
    return max(m["offset"] for m in client.seen if "offset" in m)
