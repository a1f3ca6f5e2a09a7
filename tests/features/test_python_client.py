"""The Python client against a real server: channels, presence, reconnect, recovery."""

from __future__ import annotations

import asyncio
import time

from realtime_asyncio import RealtimeClient, RealtimeServer
from realtime_proto.client import ClientState
from realtime_proto.jwt import encode_hs256

SECRET = "client-secret"


def token(user: str) -> str:
    return encode_hs256({"sub": user, "exp": int(time.time()) + 600,
                         "channels": ["private-*", "presence-*"]}, SECRET)


def server(port: int = 0, **options: object) -> RealtimeServer:
    return RealtimeServer(port=port, api_key="k", jwt_secret=SECRET, **options)


def test_channels_client_events_and_presence() -> None:
    async def scenario() -> None:
        node = server()
        await node.start()
        url = f"ws://127.0.0.1:{node.port}"
        async with RealtimeClient(url, token=token("alice")) as alice, \
                RealtimeClient(url, token=lambda: token("bob")) as bob:
            news = alice.subscribe("news")
            await asyncio.wait_for(news.subscribed.wait(), 10)
            node.broadcast("news", "headline", {"n": 1})
            assert (await news.next("headline", timeout=10)).data == {"n": 1}
            room_a, room_b = alice.subscribe("presence-room"), bob.subscribe("presence-room")
            joined: asyncio.Queue[object] = asyncio.Queue()
            room_a.on("user.joined", lambda data: joined.put_nowait(data))
            for room in (room_a, room_b):
                await asyncio.wait_for(room.subscribed.wait(), 10)
            async with asyncio.timeout(10):
                while set(room_a.members) != {"alice", "bob"}:
                    await asyncio.sleep(0.01)
            room_b.send("typing", {})
            message = await room_a.next("typing", timeout=10)
            assert message.message["user_id"] == "bob"
            refused = alice.subscribe("private-x.no")  # the JWT claim allows private-*
            await asyncio.wait_for(refused.subscribed.wait(), 10)
            assert refused.error is None
        await node.aclose()
    asyncio.run(scenario())


def test_reconnect_resubscribes_flushes_queued_sends_and_recovers() -> None:
    async def scenario() -> None:
        first = server(history="private-*=100:60")
        await first.start()
        port = first.port
        calls = []

        def fresh_token() -> str:
            calls.append(1)
            return token("carol")
        client = RealtimeClient(f"ws://127.0.0.1:{port}", token=fresh_token,
                                backoff_min=0.05, backoff_max=0.2)
        await client.connect()
        feed = client.subscribe("private-feed")
        await asyncio.wait_for(feed.subscribed.wait(), 10)
        first.broadcast("private-feed", "n", 1)
        assert (await feed.next("n", timeout=10)).data == 1
        # the server drops the connection; messages published meanwhile are recovered
        first.node.hub.disconnect(client.connection_id, 1012, "restart")  # type: ignore[arg-type]
        first.pump()
        first.broadcast("private-feed", "n", 2)
        first.broadcast("private-feed", "n", 3)
        got = [(await feed.next("n", timeout=10)).data for _ in range(2)]
        assert got == [2, 3]
        assert len(calls) >= 2  # the token function ran again for the reconnect
        # now the whole server restarts on the same port: a new epoch, resubscribed
        await first.aclose()
        feed.send("hello", "queued while offline")
        second = server(port=port, history="private-*=100:60")
        listener = RealtimeClient(f"ws://127.0.0.1:{port}", token=token("dave"))
        await second.start()
        await listener.connect()
        heard = listener.subscribe("private-feed")
        await asyncio.wait_for(heard.subscribed.wait(), 10)
        async with asyncio.timeout(20):
            while client.state is not ClientState.CONNECTED or "private-feed" not in \
                    second.channels() or second.channels()["private-feed"] < 2:
                await asyncio.sleep(0.02)
        # the send queued while offline reached the new server after the reconnect
        await asyncio.wait_for(_until(lambda: second.node.hub.statistics().published >= 1), 10)
        second.broadcast("private-feed", "n", 4)
        assert (await feed.next("n", timeout=10)).data == 4
        await client.close()
        await listener.close()
        await second.aclose()
    asyncio.run(scenario())


def test_a_refused_token_fails_without_retrying() -> None:
    async def scenario() -> None:
        node = server()
        await node.start()
        client = RealtimeClient(f"ws://127.0.0.1:{node.port}", token="forged.token.x",
                                backoff_min=0.01)
        states: list[ClientState] = []
        client.on("state", states.append)
        runner = asyncio.ensure_future(client.connect(timeout=5))
        async with asyncio.timeout(10):
            while client.state is not ClientState.FAILED:
                await asyncio.sleep(0.01)
        runner.cancel()
        assert client.attempts == 1 and states[-1] is ClientState.FAILED
        await client.close()
        await node.aclose()
    asyncio.run(scenario())


async def _until(check: object) -> None:
    while not check():  # type: ignore[operator]
        await asyncio.sleep(0.01)
