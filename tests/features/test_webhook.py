"""The authorization webhook: the backend decides over HTTP, answers are cached."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from realtime_asyncio import RealtimeServer
from realtime_proto.jwt import encode_hs256

from ..behaviour.clients import connect


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def backend(calls: list[dict[str, object]]) -> AsyncIterator[int]:
    async def authorize(request: Request) -> Response:
        body = await request.json()
        calls.append(body)
        if body["channel"].endswith(".slow"):
            await asyncio.sleep(2)  # past the 1 s timeout
        if body["channel"].endswith(".broken"):
            return Response("oops", status_code=500)
        allowed = body["channel"].startswith("private-ok") or body["channel"].startswith(
            "presence-")
        return JSONResponse({"allowed": allowed, "info": {"seat": 7}})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=[Route("/auth", authorize,
                                                                   methods=["POST"])]),
                                           host="127.0.0.1", port=port, log_level="error"))
    task = asyncio.ensure_future(server.serve())
    async with asyncio.timeout(20):
        while not server.started:
            await asyncio.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        await task


def test_webhook_allows_refuses_times_out_and_caches() -> None:
    async def scenario() -> None:
        calls: list[dict[str, object]] = []
        async with backend(calls) as port:
            realtime = RealtimeServer(port=0, jwt_secret="s",
                                      auth_webhook=f"http://127.0.0.1:{port}/auth",
                                      auth_webhook_timeout=1.0)
            await realtime.start()
            try:
                token = encode_hs256({"sub": "ann"}, "s")
                async with connect("websocket", realtime.port, token=token) as client:
                    expectations = {"private-ok.1": "subscription.succeeded",
                                    "private-no.1": 4003, "private-x.broken": 4003,
                                    "private-ok.slow": 4500}
                    for channel, expected in expectations.items():
                        reply = await client.subscribe(channel)
                        got = reply["data"]["code"] if reply["type"] == "error" \
                            else reply["event"]
                        assert got == expected, channel
                    await client.subscribe("presence-room")
                    sync = await client.next("presence.sync")
                    assert sync["data"]["members"] == [{"user_id": "ann", "info": {"seat": 7}}]
                    asked = len(calls)
                    await client.send({"type": "unsubscribe", "channel": "private-ok.1"})
                    await client.next("unsubscription.succeeded")
                    assert (await client.subscribe("private-ok.1"))["event"] == \
                        "subscription.succeeded"
                    assert len(calls) == asked  # the cached answer was used
                    assert json.loads(json.dumps(calls[0]))["user_id"] == "ann"
            finally:
                await realtime.aclose(timeout=1)
    asyncio.run(scenario())
