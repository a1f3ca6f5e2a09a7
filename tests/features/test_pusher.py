"""The Pusher Channels protocol on a real server: WebSocket clients speaking protocol 7
at /app/{key}, and the official Python server SDK (`pusher` on PyPI, unmodified) for
triggers, batches, channel queries and channel authentication."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pusher
import pusher.errors
import pytest
import websockets

from realtime_behaviour.clients import connect

from ..behaviour.serving import serving

APP_ID, KEY, SECRET = "4242", "app-key", "app-secret"
#: the protocol lives in the core: every runtime serves it (the selectors example too)
RUNTIMES = ["asyncio", "trio", "gevent", "selectors"]
TIMEOUT = 10.0


class PusherSocket:
    """A bare protocol-7 client: frames as dicts, `data` decoded from its JSON string."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.socket_id = ""

    async def send(self, event: str, data: Any = None, channel: str | None = None) -> None:
        frame: dict[str, Any] = {"event": event, "data": data}
        if channel is not None:
            frame["channel"] = channel
        await self.ws.send(json.dumps(frame))

    async def next(self, event: str | None = None) -> dict[str, Any]:
        """The next frame (of that event, skipping others)."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                frame = json.loads(await self.ws.recv())
                assert isinstance(frame["data"], str), frame  # always a JSON string
                frame["data"] = json.loads(frame["data"])
                if event is None or frame["event"] == event:
                    return frame

    async def subscribe(self, channel: str, **auth: str) -> dict[str, Any]:
        """Subscribe; `pusher_internal:subscription_succeeded` or the error frame."""
        await self.send("pusher:subscribe", {"channel": channel, **auth})
        async with asyncio.timeout(TIMEOUT):
            while True:
                frame = await self.next()
                if frame["event"] in ("pusher_internal:subscription_succeeded",
                                      "pusher:subscription_error", "pusher:error"):
                    return frame

    async def quiet(self, seconds: float = 0.3) -> list[dict[str, Any]]:
        """Whatever arrives within `seconds` (to check that nothing does)."""
        frames = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while True:
                    frames.append(json.loads(await self.ws.recv()))
        return frames


@contextlib.asynccontextmanager
async def pusher_socket(port: int, key: str = KEY,
                        protocol: str = "7") -> AsyncIterator[PusherSocket]:
    url = f"ws://127.0.0.1:{port}/app/{key}?protocol={protocol}&client=js&version=8.4.0"
    async with websockets.connect(url) as ws:
        client = PusherSocket(ws)
        established = await client.next()
        if established["event"] == "pusher:connection_established":
            client.socket_id = established["data"]["socket_id"]
        else:
            client.socket_id = ""
            client.first = established  # type: ignore[attr-defined]
        yield client


def sdk(port: int) -> pusher.Pusher:
    return pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET, host="127.0.0.1", port=port,
                         ssl=False)


@contextlib.asynccontextmanager
async def pusher_server(runtime: str = "asyncio", **settings: Any) -> AsyncIterator[Any]:
    async with serving(runtime, pusher_app=(f"{APP_ID}:{KEY}:{SECRET}",),
                       **settings) as server:
        yield server


def test_handshake_ping_and_refusals() -> None:
    async def scenario() -> None:
        async with pusher_server(heartbeat_interval=30.0) as server:
            async with pusher_socket(server.port) as client:
                assert re.fullmatch(r"\d+\.\d+", client.socket_id)
                await client.send("pusher:ping", {})
                assert (await client.next())["event"] == "pusher:pong"
                await client.send("pusher:bogus", {})
                error = await client.next()
                assert error["event"] == "pusher:error" and "bogus" in error["data"]["message"]
                await client.ws.send("not json")
                assert (await client.next())["event"] == "pusher:error"
            for key, protocol, code in (("wrong-key", "7", 4001), (KEY, "5", 4007)):
                async with pusher_socket(server.port, key, protocol) as refused:
                    assert refused.first["event"] == "pusher:error"  # type: ignore[attr-defined]
                    assert refused.first["data"]["code"] == code  # type: ignore[attr-defined]
                    with pytest.raises(websockets.ConnectionClosed):
                        await refused.ws.recv()
                    assert refused.ws.close_code == code

    asyncio.run(scenario())


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_trigger_batch_and_socket_id_exclusion_with_the_python_sdk(runtime: str) -> None:
    async def scenario() -> None:
        async with pusher_server(runtime) as server, pusher_socket(server.port) as one, \
                pusher_socket(server.port) as two:
            client = sdk(server.port)
            for socket in (one, two):
                reply = await socket.subscribe("orders")
                assert reply == {"event": "pusher_internal:subscription_succeeded",
                                 "channel": "orders", "data": {}}
            await asyncio.to_thread(client.trigger, ["orders", "other"], "created",
                                    {"id": 7, "text": "é"})
            for socket in (one, two):
                frame = await socket.next("created")
                assert frame == {"event": "created", "channel": "orders",
                                 "data": {"id": 7, "text": "é"}}
            await asyncio.to_thread(client.trigger, "orders", "updated", {"id": 8},
                                    socket_id=one.socket_id)
            assert (await two.next("updated"))["data"] == {"id": 8}
            assert await one.quiet() == []  # excluded
            await asyncio.to_thread(client.trigger_batch, [
                {"channel": "orders", "name": "a", "data": "plain text"},
                {"channel": "orders", "name": "b", "data": {"n": 2}}])
            assert (await one.next("a"))["data"] == "plain text"
            assert (await one.next("b"))["data"] == {"n": 2}
            with pytest.raises(ValueError):  # the SDK itself refuses a bad socket id
                client.trigger("orders", "x", {}, socket_id="abc")

    asyncio.run(scenario())


def test_native_and_pusher_clients_share_a_channel() -> None:
    async def scenario() -> None:
        async with pusher_server() as server, pusher_socket(server.port) as socket, \
                connect("websocket", server.port) as native:
            await socket.subscribe("news")
            assert (await native.subscribe("news"))["event"] == "subscription.succeeded"
            await asyncio.to_thread(sdk(server.port).trigger, "news", "headline", {"t": 1})
            assert (await socket.next("headline"))["data"] == {"t": 1}
            received = await native.next("headline")
            assert received["data"] == {"t": 1}
            server.broadcast("news", "from-python", {"t": 2})
            assert (await socket.next("from-python"))["data"] == {"t": 2}

    asyncio.run(scenario())


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_private_and_presence_auth_with_the_sdk_signature(runtime: str) -> None:
    async def scenario() -> None:
        async with pusher_server(runtime) as server, pusher_socket(server.port) as ann, \
                pusher_socket(server.port) as ann2, pusher_socket(server.port) as bob:
            client = sdk(server.port)
            bad = await ann.subscribe("private-room", auth=f"{KEY}:{'0' * 64}")
            assert bad["event"] == "pusher:subscription_error"
            assert bad["channel"] == "private-room" and bad["data"]["status"] == 401
            other = client.authenticate(channel="private-room", socket_id=bob.socket_id)
            stolen = await ann.subscribe("private-room", **other)  # signed for another socket
            assert stolen["event"] == "pusher:subscription_error"
            good = await ann.subscribe("private-room", **client.authenticate(
                channel="private-room", socket_id=ann.socket_id))
            assert good["event"] == "pusher_internal:subscription_succeeded"
            not_signed = await ann.subscribe("presence-room")
            assert not_signed["event"] == "pusher:subscription_error"

            async def join(socket: PusherSocket, user_id: str, name: str) -> dict[str, Any]:
                auth = client.authenticate(channel="presence-room", socket_id=socket.socket_id,
                                           custom_data={"user_id": user_id,
                                                        "user_info": {"name": name}})
                return await socket.subscribe("presence-room", **auth)

            joined = await join(ann, "ann", "Ann")
            assert joined["data"] == {"presence": {"ids": ["ann"], "hash": {"ann": {"name": "Ann"}},
                                                   "count": 1}}
            assert (await join(ann2, "ann", "Ann"))["data"]["presence"]["count"] == 1
            assert await ann.quiet() == []  # the same user again: no member_added
            bob_joined = await join(bob, "bob", "Bob")
            assert sorted(bob_joined["data"]["presence"]["ids"]) == ["ann", "bob"]
            added = await ann.next("pusher_internal:member_added")
            assert added["data"] == {"user_id": "bob", "user_info": {"name": "Bob"}}

            users = await asyncio.to_thread(client.users_info, "presence-room")
            assert sorted(u["id"] for u in users["users"]) == ["ann", "bob"]
            info = await asyncio.to_thread(client.channel_info, "presence-room",
                                           ["user_count", "subscription_count"])
            assert info == {"occupied": True, "user_count": 2, "subscription_count": 3}
            channels = await asyncio.to_thread(client.channels_info, "presence-", ["user_count"])
            assert channels == {"channels": {"presence-room": {"user_count": 2}}}
            everything = await asyncio.to_thread(client.channels_info)
            assert set(everything["channels"]) == {"presence-room", "private-room"}

            # client events: private and presence only, never echoed, user_id on presence
            await bob.send("client-typing", {"on": True}, "presence-room")
            for socket in (ann, ann2):
                frame = await socket.next("client-typing")
                assert frame == {"event": "client-typing", "channel": "presence-room",
                                 "data": {"on": True}, "user_id": "bob"}
            assert await bob.quiet() == []
            await bob.send("client-typing", {}, "public-room")
            assert (await bob.next())["event"] == "pusher:error"

            await ann2.send("pusher:unsubscribe", {"channel": "presence-room"})
            assert await bob.quiet() == []  # ann is still there through her other socket
            await ann.ws.close()
            removed = await bob.next("pusher_internal:member_removed")
            assert removed["data"] == {"user_id": "ann"}

    asyncio.run(scenario())


def test_http_api_refuses_bad_signatures_and_old_timestamps() -> None:
    async def scenario() -> None:
        async with pusher_server() as server:
            wrong = pusher.Pusher(app_id=APP_ID, key=KEY, secret="not-the-secret",
                                  host="127.0.0.1", port=server.port, ssl=False)
            with pytest.raises(pusher.errors.PusherBadAuth):
                await asyncio.to_thread(wrong.trigger, "orders", "x", {})
            client = sdk(server.port)
            real_time = time.time
            try:
                time.time = lambda: real_time() - 601  # type: ignore[assignment]
                with pytest.raises(pusher.errors.PusherBadAuth):
                    await asyncio.to_thread(client.channels_info)
            finally:
                time.time = real_time  # type: ignore[assignment]
            with pytest.raises(pusher.errors.PusherBadRequest):
                await asyncio.to_thread(client.users_info, "private-room")
            assert await asyncio.to_thread(client.channels_info) == {"channels": {}}

    asyncio.run(scenario())


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_signin_send_to_user_and_terminate_connections(runtime: str) -> None:
    async def scenario() -> None:
        async with pusher_server(runtime) as server, pusher_socket(server.port) as ann, \
                pusher_socket(server.port) as ann2, pusher_socket(server.port) as bob:
            client = sdk(server.port)
            forged = await bob.subscribe("#server-to-user-ann")  # not signed in as ann
            assert forged["event"] == "pusher:subscription_error"
            for socket, user in ((ann, "ann"), (ann2, "ann"), (bob, "bob")):
                await socket.send("pusher:signin", client.authenticate_user(
                    socket.socket_id, {"id": user, "user_info": {"name": user}}))
                success = await socket.next()
                assert success["event"] == "pusher:signin_success"
                assert json.loads(success["data"]["user_data"])["id"] == user
            replayed = client.authenticate_user(ann.socket_id, {"id": "bob"})
            await bob.send("pusher:signin", replayed)  # signed for another socket
            assert (await bob.next())["event"] == "pusher:error"
            channel = "#server-to-user-ann"
            assert (await ann.subscribe(channel))["event"] == \
                "pusher_internal:subscription_succeeded"
            server.send_to_user("ann", "notice", {"text": "hi"})
            for socket in (ann, ann2):
                assert await socket.next("notice") == {"event": "notice", "channel": channel,
                                                       "data": {"text": "hi"}}
            # the Python SDK posts to /users/{id}/terminate_connections (no /apps/{id})
            await asyncio.to_thread(client.terminate_user_connections, "ann")
            for socket in (ann, ann2):
                with pytest.raises(websockets.ConnectionClosed):
                    async with asyncio.timeout(TIMEOUT):
                        while True:
                            await socket.ws.recv()
                assert socket.ws.close_code == 4009
            await bob.send("pusher:ping", {})
            assert (await bob.next())["event"] == "pusher:pong"  # bob is still connected

    asyncio.run(scenario())


def test_cache_channels_deliver_the_last_event_or_a_cache_miss() -> None:
    async def scenario() -> None:
        async with pusher_server() as server, pusher_socket(server.port) as first, \
                pusher_socket(server.port) as late:
            client = sdk(server.port)
            def auth(channel: str, socket: PusherSocket) -> dict[str, str]:
                if channel.startswith("presence-"):
                    return dict(client.authenticate(channel=channel, socket_id=socket.socket_id,
                                                    custom_data={"user_id": socket.socket_id}))
                if channel.startswith("private-"):
                    return dict(client.authenticate(channel=channel, socket_id=socket.socket_id))
                return {}

            for channel in ("cache-prices", "private-cache-prices", "presence-cache-prices"):
                reply = await first.subscribe(channel, **auth(channel, first))
                assert reply["event"] == "pusher_internal:subscription_succeeded"
                assert (await first.next())["event"] == "pusher:cache_miss"  # right after it
                for price in (1, 2):
                    await asyncio.to_thread(client.trigger, channel, "price", {"p": price})
                    assert (await first.next("price"))["data"] == {"p": price}
                reply = await late.subscribe(channel, **auth(channel, late))
                assert reply["event"] == "pusher_internal:subscription_succeeded"
                assert await late.next() == {"event": "price", "channel": channel,
                                             "data": {"p": 2}}  # the last one only, after it

    asyncio.run(scenario())


def test_an_event_with_a_bad_info_is_refused_before_it_is_sent() -> None:
    async def scenario() -> None:
        async with pusher_server() as server, pusher_socket(server.port) as socket:
            client = sdk(server.port)
            await socket.subscribe("orders")
            with pytest.raises(pusher.errors.PusherBadRequest):
                await asyncio.to_thread(client.trigger_batch, [
                    {"channel": "orders", "name": "first", "data": "{}"},
                    {"channel": "orders", "name": "second", "data": "{}", "info": "user_count"}])
            reply = await asyncio.to_thread(client.trigger_batch, [
                {"channel": "orders", "name": "third", "data": "{}",
                 "info": "subscription_count"}])
            assert reply == {"batch": [{"subscription_count": 1}]}
            assert (await socket.next())["event"] == "third"  # nothing of the refused batch

    asyncio.run(scenario())


@contextlib.asynccontextmanager
async def webhook_receiver(received: list[dict[str, Any]], *, fail_first: int = 0,
                           refused: list[str] | None = None) -> AsyncIterator[str]:
    """A backend that checks each Pusher webhook with the Python SDK, then keeps it; it
    answers the first `fail_first` requests 503 instead (their bodies go to `refused`)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from .test_webhook import free_port

    checker = pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET)

    async def hook(request: Request) -> Response:
        body = (await request.body()).decode()
        valid = checker.validate_webhook(request.headers["x-pusher-key"],
                                         request.headers["x-pusher-signature"], body)
        assert request.headers["content-type"] == "application/json"  # the Node SDK's need
        if refused is not None and len(refused) < fail_first:
            refused.append(body)
            return Response(status_code=503)
        received.append(valid if valid is not None else {"invalid": body})
        return Response(status_code=200)

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=[Route("/hook", hook,
                                                                   methods=["POST"])]),
                                           host="127.0.0.1", port=port, log_level="error"))
    task = asyncio.ensure_future(server.serve())
    async with asyncio.timeout(20):
        while not server.started:
            await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        server.should_exit = True
        await task


@pytest.mark.parametrize("runtime", ["asyncio", "trio", "gevent"])  # (selectors: no client)
def test_webhooks_in_pushers_format_once_per_transition(runtime: str) -> None:
    async def scenario() -> None:
        received: list[dict[str, Any]] = []

        def of_members_and_clients() -> list[dict[str, Any]]:
            return [e for r in received for e in r.get("events", [{"name": "invalid"}])
                    if not e["name"].startswith("channel_")]

        async def events(count: int) -> list[dict[str, Any]]:
            async with asyncio.timeout(TIMEOUT):
                while len(of_members_and_clients()) < count:
                    await asyncio.sleep(0.02)
            assert all("invalid" not in r for r in received), received
            return of_members_and_clients()

        async with webhook_receiver(received) as url, \
                pusher_server(runtime, pusher_webhook=url) as server, \
                pusher_socket(server.port) as ann, pusher_socket(server.port) as ann2, \
                pusher_socket(server.port) as bob:
            client = sdk(server.port)
            for socket, user in ((ann, "ann"), (ann2, "ann"), (bob, "bob")):
                auth = client.authenticate(channel="presence-room", socket_id=socket.socket_id,
                                           custom_data={"user_id": user})
                await socket.subscribe("presence-room", **auth)
            await bob.send("client-typing", {"on": True}, "presence-room")
            await ann.next("client-typing")
            # (each Node call's events go in a request of their own, in any order)
            assert sorted(await events(3), key=lambda e: (e["name"], e["user_id"])) == [
                {"name": "client_event", "channel": "presence-room", "event": "client-typing",
                 "data": '{"on":true}', "socket_id": bob.socket_id, "user_id": "bob"},
                {"name": "member_added", "channel": "presence-room", "user_id": "ann"},
                {"name": "member_added", "channel": "presence-room", "user_id": "bob"}]
            await ann2.ws.close()  # ann is still there through her other connection
            async with asyncio.timeout(TIMEOUT):
                while (await asyncio.to_thread(client.channel_info, "presence-room", [
                        "subscription_count"]))["subscription_count"] != 2:
                    await asyncio.sleep(0.05)
            await bob.send("client-marker", {}, "presence-room")  # posted after that close
            assert sorted(e["name"] for e in await events(4)) == [
                "client_event", "client_event", "member_added", "member_added"]
            await ann.ws.close()  # her last connection
            assert [e for e in await events(5) if e["name"] == "member_removed"] == [
                {"name": "member_removed", "channel": "presence-room", "user_id": "ann"}]
            occupied = [e for r in received for e in r["events"]
                        if e["name"].startswith("channel_")]
            assert occupied == [{"name": "channel_occupied", "channel": "presence-room"}]
            sent = re.compile(r'realtime_pusher_webhooks_total\{[^}]*result="sent"\} (\d+)')
            async with asyncio.timeout(TIMEOUT):  # the last answer may still be on its way
                while not (found := sent.search(await asyncio.to_thread(
                        _get, f"http://127.0.0.1:{server.port}/metrics"))) \
                        or int(found[1]) < len(received):
                    await asyncio.sleep(0.05)

    asyncio.run(scenario())


def test_a_webhook_the_backend_fails_is_retried_until_it_succeeds() -> None:
    async def scenario() -> None:
        received: list[dict[str, Any]] = []
        refused: list[str] = []
        async with webhook_receiver(received, fail_first=1, refused=refused) as url, \
                pusher_server(pusher_webhook=url) as server, \
                pusher_socket(server.port) as ann, pusher_socket(server.port) as bob:
            client = sdk(server.port)
            for socket in (ann, bob):
                await socket.subscribe("private-room", **client.authenticate(
                    channel="private-room", socket_id=socket.socket_id))
            await bob.send("client-typing", {"on": True}, "private-room")
            async with asyncio.timeout(TIMEOUT):  # the back-off starts at 0.5 s
                while not any(e["name"] == "client_event" for r in received
                              for e in r["events"]):
                    await asyncio.sleep(0.05)
            [first] = [json.loads(body) for body in refused]
            assert first == received[0]  # the refused batch again, before anything else
            events = [e for r in received for e in r["events"]]
            assert [e for e in events if e["name"] == "client_event"] == [
                {"name": "client_event", "channel": "private-room", "event": "client-typing",
                 "data": '{"on":true}', "socket_id": bob.socket_id}]  # once, after the 503
            retried = re.compile(r'realtime_pusher_webhooks_total\{[^}]*result="retried"\} (\d+)')
            found = retried.search(await asyncio.to_thread(
                _get, f"http://127.0.0.1:{server.port}/metrics"))
            assert found and int(found[1]) >= 1

    asyncio.run(scenario())


def _get(url: str) -> str:
    import urllib.request
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def test_several_apps_are_isolated() -> None:
    async def scenario() -> None:
        apps = (f"{APP_ID}:{KEY}:{SECRET}", "77:other-key:other-secret")
        async with serving("asyncio", pusher_app=apps) as server, \
                pusher_socket(server.port) as mine, \
                pusher_socket(server.port, "other-key") as theirs:
            other = pusher.Pusher(app_id="77", key="other-key", secret="other-secret",
                                  host="127.0.0.1", port=server.port, ssl=False)
            for socket in (mine, theirs):
                await socket.subscribe("news")
            await asyncio.to_thread(other.trigger, "news", "theirs", {})
            assert (await theirs.next())["event"] == "theirs"
            await asyncio.to_thread(sdk(server.port).trigger, "news", "mine", {})
            assert (await mine.next())["event"] == "mine"  # not "theirs" first
            assert await theirs.quiet() == []
            for client in (sdk(server.port), other):
                assert await asyncio.to_thread(client.channels_info) == {
                    "channels": {"news": {}}}
            with pytest.raises(pusher.errors.PusherBadAuth):  # app 77's key, app 4242's id
                await asyncio.to_thread(pusher.Pusher(
                    app_id=APP_ID, key="other-key", secret="other-secret", host="127.0.0.1",
                    port=server.port, ssl=False).trigger, "news", "x", {})

    asyncio.run(scenario())
