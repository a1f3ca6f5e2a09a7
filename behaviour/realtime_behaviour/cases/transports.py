"""End to end over real sockets: every behaviour on WebSocket, SSE and long-polling, on
every runtime."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from ..clients import connect
from ..serving import API_KEY, TRANSPORTS, Runtime, flavoured, serving, token

__all__ = [
    "test_a_bad_token_is_refused_with_401",
    "test_authorization_by_jwt_claim_and_by_callbacks",
    "test_client_events_reach_others_but_not_the_sender",
    "test_presence_join_sync_and_leave",
    "test_send_to_user_reaches_every_connection_of_the_user",
    "test_subscribe_and_receive_from_the_http_api_and_python",
]

#: every case here runs once per transport (a mark on each function, so that it travels
#: with the function into the module that imports it)
each_transport = pytest.mark.parametrize("transport", TRANSPORTS)


def run(coroutine: object) -> None:
    asyncio.run(coroutine)  # type: ignore[arg-type]


@each_transport
def test_subscribe_and_receive_from_the_http_api_and_python(transport: str,
                                                            runtime: Runtime) -> None:
    async def scenario() -> None:
        async with serving(runtime) as server, connect(transport, server.port) as client:
            ack = await client.subscribe("news")
            assert ack["event"] == "subscription.succeeded"
            async with httpx.AsyncClient() as http:
                response = await http.post(
                    f"http://127.0.0.1:{server.port}/api/publish",
                    headers={"Authorization": f"Bearer {API_KEY}"},
                    json={"channel": "news", "event": "headline", "data": {"n": 1}})
            assert response.status_code == 200
            message = await client.next("headline")
            assert message["id"] == response.json()["id"] and message["data"] == {"n": 1}
            message_id = server.broadcast("news", "headline", {"n": 2})
            message = await client.next("headline")
            assert (message["id"], message["data"]) == (message_id, {"n": 2})
            assert isinstance(message["timestamp"], int)
    run(scenario())


@each_transport
def test_send_to_user_reaches_every_connection_of_the_user(transport: str,
                                                           runtime: Runtime) -> None:
    async def scenario() -> None:
        async with serving(runtime) as server, \
                connect(transport, server.port, token=token("alice")) as first, \
                connect("websocket", server.port, token=token("alice")) as second, \
                connect(transport, server.port, token=token("bob")) as bob:
            assert first.user_id == "alice"
            server.send_to_user("alice", "note", {"hi": 1})
            for client in (first, second):
                assert (await client.next("note"))["data"] == {"hi": 1}
            server.send(bob.connection_id, "direct", "only bob")
            assert (await bob.next("direct"))["data"] == "only bob"
            await first.nothing()
    run(scenario())


@each_transport
def test_client_events_reach_others_but_not_the_sender(transport: str, runtime: Runtime) -> None:
    async def scenario() -> None:
        async with serving(runtime) as server:
            server.channel("private-room.*").authorize(lambda conn, channel: True)
            async with connect(transport, server.port, token=token("a")) as sender, \
                    connect("websocket", server.port, token=token("b")) as other:
                for client in (sender, other):
                    assert (await client.subscribe("private-room.1"))["event"] == \
                        "subscription.succeeded"
                await sender.send({"type": "event", "channel": "private-room.1",
                                   "event": "typing", "data": {"on": True}})
                got = await other.next("typing")
                assert (got["user_id"], got["data"]) == ("a", {"on": True})
                await sender.send({"type": "ping"})
                await sender.next(type="pong")
                assert not [m for m in sender.seen if m.get("event") == "typing"]
                await sender.send({"type": "event", "channel": "news", "event": "x"})
                error = await sender.next(type="error")
                assert error["data"]["code"] == 4003
    run(scenario())


@each_transport
def test_presence_join_sync_and_leave(transport: str, runtime: Runtime) -> None:
    async def scenario() -> None:
        room = "presence-room.1"
        async with serving(runtime) as server:
            def allow(conn: object, channel: str) -> dict[str, str]:
                return {"name": getattr(conn, "user_id", "").title()}
            server.channel("presence-*").authorize(flavoured(runtime, allow))
            async with connect(transport, server.port, token=token("bob")) as bob:
                await bob.subscribe(room)
                sync = await bob.next("presence.sync")
                assert sync["data"]["members"] == [{"user_id": "bob", "info": {"name": "Bob"}}]
                async with connect(transport, server.port, token=token("alice")) as alice1:
                    await alice1.subscribe(room)
                    members = (await alice1.next("presence.sync"))["data"]["members"]
                    assert sorted(m["user_id"] for m in members) == ["alice", "bob"]
                    joined = await bob.next("user.joined")
                    assert joined["data"] == {"user_id": "alice", "info": {"name": "Alice"}}
                    async with connect("websocket", server.port,
                                       token=token("alice")) as alice2:
                        await alice2.subscribe(room)
                        await alice2.next("presence.sync")
                    await bob.send({"type": "ping"})
                    await bob.next(type="pong")
                    assert [m["event"] for m in bob.seen].count("user.left") == 0
                left = await bob.next("user.left")
                assert left["data"]["user_id"] == "alice"
                assert [m.user_id for m in server.members(room)] == ["bob"]
                assert [m["event"] for m in bob.seen].count("user.joined") == 1
    run(scenario())


@each_transport
def test_authorization_by_jwt_claim_and_by_callbacks(transport: str, runtime: Runtime) -> None:
    async def scenario() -> None:
        async with serving(runtime) as server:
            def rule(conn: object, channel: str) -> bool:
                return channel.endswith(".ok")
            server.channel("private-sync.*").authorize(rule)
            expectations: dict[str, str | int] = {
                "private-team.red": "subscription.succeeded",
                "private-sync.ok": "subscription.succeeded", "private-sync.no": 4003,
                "private-other": 4003}
            if runtime.async_callbacks:
                server.channel("private-async.*").authorize(flavoured(runtime, rule))
                expectations |= {"private-async.ok": "subscription.succeeded",
                                 "private-async.no": 4003}
            user_token = token("carol", channels=["private-team.*"])
            async with connect(transport, server.port, token=user_token) as client:
                for channel, expected in expectations.items():
                    reply = await client.subscribe(channel)
                    got = reply["data"]["code"] if reply["type"] == "error" else reply["event"]
                    assert got == expected, channel
            async with connect(transport, server.port) as anonymous:
                reply = await anonymous.subscribe("private-team.red")
                assert reply["data"]["code"] == 4001
    run(scenario())


@each_transport
def test_a_bad_token_is_refused_with_401(transport: str, runtime: Runtime) -> None:
    async def scenario() -> None:
        async with serving(runtime) as server, httpx.AsyncClient() as http:
            path = {"websocket": "/ws", "sse": "/sse", "polling": "/poll"}[transport]
            for bad in ("garbage", token("x", ttl=-10), token("x")[:-2] + "AA"):
                headers = {"Connection": "Upgrade", "Upgrade": "websocket",
                           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                           "Sec-WebSocket-Version": "13"} if transport == "websocket" else {}
                response = await http.get(f"http://127.0.0.1:{server.port}{path}",
                                          params={"token": bad}, headers=headers)
                assert response.status_code == 401
                assert response.json()["error"]["code"] == 4001
    run(scenario())
