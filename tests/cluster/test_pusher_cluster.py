"""The Pusher protocol across two nodes on every broker: the official Python SDK calls
node A, Pusher clients are on node B (and A)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets

from ..behaviour.serving import serving
from ..features.test_pusher import (
    APP_ID,
    KEY,
    SECRET,
    pusher_socket,
    sdk,
    webhook_receiver,
)
from .nodes import broker_url, require

BROKERS = ["redis", "nats", "amqp", "postgresql"]


@contextlib.asynccontextmanager
async def two_nodes(kind: str, **options: Any) -> AsyncIterator[tuple[Any, Any]]:
    """Two asyncio nodes serving the Pusher app, joined through the broker of `kind`."""
    broker, app = broker_url(kind), (f"{APP_ID}:{KEY}:{SECRET}",)
    async with serving("asyncio", broker=broker, pusher_app=app, **options) as node_a, \
            serving("asyncio", broker=broker, pusher_app=app, **options) as node_b:
        yield node_a, node_b


@pytest.mark.parametrize("kind", BROKERS)
def test_triggers_presence_and_termination_cross_nodes(kind: str) -> None:
    require(kind)

    async def scenario() -> None:
        async with two_nodes(kind) as (node_a, node_b), \
                pusher_socket(node_b.port) as bob, pusher_socket(node_a.port) as ann, \
                pusher_socket(node_b.port) as carol:
            client_a = sdk(node_a.port)
            channel = f"orders-{time.monotonic_ns()}"
            await bob.subscribe(channel)
            # node B's broker subscription may still be on its way: trigger until it is
            async with asyncio.timeout(15):
                while True:
                    await asyncio.to_thread(client_a.trigger, channel, "created", {"n": 1})
                    # (a node that joined mid-stream may first report `messages.lost`)
                    created = [f for f in await bob.quiet(0.3) if f["event"] == "created"]
                    if created:
                        break
            assert created[0]["channel"] == channel

            room = f"presence-room-{time.monotonic_ns()}"
            for socket, user in ((bob, "bob"), (ann, "ann")):
                auth = client_a.authenticate(channel=room, socket_id=socket.socket_id,
                                             custom_data={"user_id": user})
                assert (await socket.subscribe(room, **auth))["channel"] == room
            added = await bob.next("pusher_internal:member_added")
            assert added["data"]["user_id"] == "ann"
            async with asyncio.timeout(15):  # node B's news of bob may still be on its way
                while True:
                    users = await asyncio.to_thread(client_a.users_info, room)
                    if len(users["users"]) == 2:
                        break
                    await asyncio.sleep(0.1)
            assert sorted(u["id"] for u in users["users"]) == ["ann", "bob"]
            lonely = f"presence-lonely-{time.monotonic_ns()}"  # a member on node B only
            auth = client_a.authenticate(channel=lonely, socket_id=bob.socket_id,
                                         custom_data={"user_id": "bob"})
            await bob.subscribe(lonely, **auth)
            async with asyncio.timeout(15):
                while True:
                    listed = await asyncio.to_thread(client_a.channels_info, "presence-lonely",
                                                     ["user_count"])
                    if listed["channels"]:
                        break
                    await asyncio.sleep(0.1)
            assert listed == {"channels": {lonely: {"user_count": 1}}}

            await carol.send("pusher:signin", client_a.authenticate_user(
                carol.socket_id, {"id": "carol"}))
            assert (await carol.next())["event"] == "pusher:signin_success"
            async with asyncio.timeout(15):  # node B's user topic may be on its way too
                while carol.ws.close_code is None:
                    await asyncio.to_thread(client_a.terminate_user_connections, "carol")
                    try:
                        async with asyncio.timeout(0.5):
                            await carol.ws.recv()
                    except (TimeoutError, websockets.ConnectionClosed):
                        pass
            assert carol.ws.close_code == 4009
            await ann.ws.close()
            removed = await bob.next("pusher_internal:member_removed")
            assert removed["data"]["user_id"] == "ann"

    asyncio.run(scenario())


def test_member_added_webhook_once_across_nodes() -> None:
    require("redis")

    async def scenario() -> None:
        received: list[dict[str, Any]] = []
        async with webhook_receiver(received) as url, \
                two_nodes("redis", pusher_webhook=url) as (a, b), \
                pusher_socket(a.port) as on_a, pusher_socket(b.port) as on_b:
            client = sdk(a.port)
            room = f"presence-room-{time.monotonic_ns()}"
            auth = client.authenticate(channel=room, socket_id=on_a.socket_id,
                                       custom_data={"user_id": "ann"})
            await on_a.subscribe(room, **auth)
            async with asyncio.timeout(15):  # until node B knows ann is there
                while not (await asyncio.to_thread(sdk(b.port).users_info, room))["users"]:
                    await asyncio.sleep(0.05)
            auth = client.authenticate(channel=room, socket_id=on_b.socket_id,
                                       custom_data={"user_id": "ann"})
            await on_b.subscribe(room, **auth)  # ann again, on the other node: no webhook
            await on_b.send("client-marker", {}, room)  # reported after that join
            async with asyncio.timeout(15):  # (presence is reported once it settled)
                while sum(len(r.get("events", [1])) for r in received) < 3:
                    await asyncio.sleep(0.05)
            assert all("invalid" not in r for r in received), received
            assert sorted(e["name"] for r in received for e in r["events"]) == [
                "channel_occupied", "client_event", "member_added"]

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["redis", "nats"])
def test_subscription_counts_and_channel_lists_span_the_nodes(kind: str) -> None:
    require(kind)

    async def scenario() -> None:
        async with two_nodes(kind) as (node_a, node_b), \
                pusher_socket(node_a.port) as ann, pusher_socket(node_b.port) as bob, \
                pusher_socket(node_b.port) as carol:
            client_a = sdk(node_a.port)
            stamp = time.monotonic_ns()
            public, private = f"orders-{stamp}", f"private-orders-{stamp}"
            for socket in (ann, bob, carol):
                assert (await socket.subscribe(public))["channel"] == public
            await bob.subscribe(private, **client_a.authenticate(channel=private,
                                                                 socket_id=bob.socket_id))

            async def on_a(expected: dict[str, Any]) -> None:
                """Ask node A (with the SDK) until its answers are `expected`: node B's
                counts arrive within a sweep."""
                async with asyncio.timeout(15):
                    while True:
                        answers = {
                            "public": await asyncio.to_thread(
                                client_a.channel_info, public, ["subscription_count"]),
                            "private": await asyncio.to_thread(
                                client_a.channel_info, private, ["subscription_count"]),
                            "listed": sorted((await asyncio.to_thread(
                                client_a.channels_info, "", ["subscription_count"]))[
                                    "channels"].items())}
                        if answers == expected:
                            return
                        await asyncio.sleep(0.1)

            def listed(**counts: int) -> list[tuple[str, dict[str, int]]]:
                names = {"public": public, "private": private}
                return sorted((names[k], {"subscription_count": v}) for k, v in counts.items())

            await on_a({"public": {"occupied": True, "subscription_count": 3},
                        "private": {"occupied": True, "subscription_count": 1},
                        "listed": listed(public=3, private=1)})
            await carol.ws.close()
            await bob.send("pusher:unsubscribe", {"channel": private})
            await on_a({"public": {"occupied": True, "subscription_count": 2},
                        "private": {"occupied": False, "subscription_count": 0},
                        "listed": listed(public=2)})

    asyncio.run(scenario())
