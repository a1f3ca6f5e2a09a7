"""The authorization webhook on every runtime: the backend decides over HTTP (or HTTPS),
answers are cached, a backend too slow refuses with 4500."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from realtime_behaviour import token
from realtime_behaviour.certs import make_certificate
from realtime_behaviour.clients import connect
from realtime_proto.notify import body_signature

from ..behaviour.serving import serving

#: the runtimes with a webhook (the selectors example has none)
RUNTIMES = ["asyncio", "trio", "gevent"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def backend(calls: list[dict[str, object]], **tls: str) -> AsyncIterator[int]:
    """A small HTTP backend on a free port: `private-ok…` and `presence-…` are allowed
    (with info), `….slow` answers after 2 s, `….broken` fails, the rest is refused (with
    info too, which must not matter)."""
    async def authorize(request: Request) -> Response:
        body = await request.json()
        calls.append(body)
        if body["channel"].endswith(".slow"):
            await asyncio.sleep(2)  # past the 1 s timeout
        if body["channel"].endswith(".broken"):
            return Response("oops", status_code=500)
        allowed = body["channel"].startswith(("private-ok", "presence-"))
        return JSONResponse({"allowed": allowed, "info": {"seat": 7}})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(
        Starlette(routes=[Route("/auth", authorize, methods=["POST"])]),
        host="127.0.0.1", port=port, log_level="error", **tls))  # type: ignore[arg-type]
    task = asyncio.ensure_future(server.serve())
    async with asyncio.timeout(20):
        while not server.started:
            await asyncio.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        await task


async def subscribe(client: object, channel: str) -> object:
    """`subscription.succeeded`, or the error's code."""
    reply = await client.subscribe(channel)  # type: ignore[attr-defined]
    return reply["data"]["code"] if reply["type"] == "error" else reply["event"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_webhook_allows_refuses_times_out_and_caches(runtime: str) -> None:
    async def scenario() -> None:
        calls: list[dict[str, object]] = []
        async with backend(calls) as port, \
                serving(runtime, auth_webhook=f"http://127.0.0.1:{port}/auth",
                        auth_webhook_timeout=1.0) as server, \
                connect("websocket", server.port, token=token("ann")) as client:
            expectations = {"private-ok.1": "subscription.succeeded",
                            "private-no.1": 4003, "private-x.broken": 4003,
                            "private-ok.slow": 4500}
            for channel, expected in expectations.items():
                assert await subscribe(client, channel) == expected, channel
            await client.subscribe("presence-room")
            sync = await client.next("presence.sync")
            assert sync["data"]["members"] == [{"user_id": "ann", "info": {"seat": 7}}]
            assert calls[0]["user_id"] == "ann" and calls[0]["channel"] == "private-ok.1"
            asked = len(calls)
            await client.send({"type": "unsubscribe", "channel": "private-ok.1"})
            await client.next("unsubscription.succeeded")
            assert await subscribe(client, "private-ok.1") == "subscription.succeeded"
            assert await subscribe(client, "private-no.1") == 4003
            assert len(calls) == asked  # both answers came from the cache
    asyncio.run(scenario())


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_webhook_over_https(runtime: str, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = make_certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the default context trusts it alone

    async def scenario() -> None:
        calls: list[dict[str, object]] = []
        async with backend(calls, ssl_certfile=str(cert), ssl_keyfile=str(key)) as port, \
                serving(runtime, auth_webhook=f"https://127.0.0.1:{port}/auth") as server, \
                connect("websocket", server.port, token=token("bob")) as client:
            assert await subscribe(client, "private-ok.2") == "subscription.succeeded"
            assert await subscribe(client, "private-no.2") == 4003
            assert [call["user_id"] for call in calls] == ["bob", "bob"]
    asyncio.run(scenario())


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_presence_events_reach_the_backend_signed_on_every_runtime(runtime: str) -> None:
    """The presence webhooks go through the same `post_webhook` hook (docs/webhooks.md)."""
    async def scenario() -> None:
        bodies: list[tuple[bytes, str | None]] = []

        async def receive(request: Request) -> Response:
            bodies.append((await request.body(), request.headers.get("x-realtime-signature")))
            return Response(status_code=503 if len(bodies) == 1 else 204)  # one retry
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(
            Starlette(routes=[Route("/events", receive, methods=["POST"])]),
            host="127.0.0.1", port=port, log_level="error"))
        task = asyncio.ensure_future(server.serve())
        try:
            async with asyncio.timeout(20):
                while not server.started:
                    await asyncio.sleep(0.02)
            async with serving(runtime, webhook=(f"http://127.0.0.1:{port}/events",),
                               webhook_secret="s", webhook_settle=0.2) as realtime:
                async with connect("websocket", realtime.port,
                                   token=token("ann", channels=["presence-*"])) as client:
                    ack = await client.subscribe("presence-room")
                    assert ack["event"] == "subscription.succeeded", ack
                    async with asyncio.timeout(15):
                        while len(bodies) < 2:
                            await asyncio.sleep(0.02)
                async with asyncio.timeout(15):
                    while len(bodies) < 3:
                        await asyncio.sleep(0.02)
        finally:
            server.should_exit = True
            await task
        assert bodies[0] == bodies[1]  # the 503 retried, byte for byte
        names = [[(e["name"], e.get("user_id")) for e in json.loads(body)["events"]]
                 for body, _ in bodies[1:]]
        assert names == [[("channel.occupied", None), ("member.added", "ann")],
                         [("member.removed", "ann"), ("channel.vacated", None)]]
        assert all(signature == body_signature("s", body) for body, signature in bodies)
    asyncio.run(scenario())


def test_opt_in_connection_and_client_events() -> None:
    async def scenario() -> None:
        bodies: list[bytes] = []

        async def receive(request: Request) -> Response:
            bodies.append(await request.body())
            return Response(status_code=204)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(
            Starlette(routes=[Route("/events", receive, methods=["POST"])]),
            host="127.0.0.1", port=port, log_level="error"))
        task = asyncio.ensure_future(server.serve())

        def events() -> list[dict[str, object]]:
            return [e for body in bodies for e in json.loads(body)["events"]]
        try:
            async with asyncio.timeout(20):
                while not server.started:
                    await asyncio.sleep(0.02)
            async with serving("asyncio", webhook=(f"http://127.0.0.1:{port}/events",),
                               webhook_events=("connections",),
                               webhook_client_events=("private-audit.*",)) as realtime:
                async with connect("websocket", realtime.port,
                                   token=token("ann", channels=["private-*"])) as client:
                    for channel in ("private-audit.1", "private-chat.1"):
                        await client.subscribe(channel)
                        await client.send({"type": "event", "channel": channel,
                                           "event": "note", "data": {"on": channel}})
                    async with asyncio.timeout(15):
                        while len(events()) < 2:
                            await asyncio.sleep(0.02)
                    connection_id = client.connection_id
                async with asyncio.timeout(15):
                    while len(events()) < 3:
                        await asyncio.sleep(0.02)
        finally:
            server.should_exit = True
            await task
        got = [{k: v for k, v in e.items() if k not in ("id", "time_ms")} for e in events()]
        assert got == [
            {"name": "connection.opened", "connection_id": connection_id, "user_id": "ann",
             "transport": "websocket"},
            {"name": "client_event", "channel": "private-audit.1", "event": "note",
             "data": {"on": "private-audit.1"}, "user_id": "ann",
             "connection_id": connection_id},  # not private-chat.1: no pattern selects it
            {"name": "connection.closed", "connection_id": connection_id, "user_id": "ann",
             "transport": "websocket"}]
    asyncio.run(scenario())
