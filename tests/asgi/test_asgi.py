"""The ASGI application mounted in Starlette next to the user's own route, under uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator

import httpx
import uvicorn
import websockets
from httpx_sse import aconnect_sse
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from realtime_asyncio import RealtimeServer

KEY = "asgi-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def uvicorn_serving() -> AsyncIterator[tuple[int, RealtimeServer]]:
    realtime = RealtimeServer(api_key=KEY)
    realtime.channel("private-*").authorize(lambda conn, channel: True)

    async def hello(request: object) -> PlainTextResponse:
        return PlainTextResponse("my own route")
    app = Starlette(routes=[Route("/hello", hello), Mount("/realtime", app=realtime.asgi_app)],
                    lifespan=realtime.lifespan)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                           lifespan="on"))
    task = asyncio.ensure_future(server.serve())
    async with asyncio.timeout(20):
        while not server.started:
            await asyncio.sleep(0.02)
    try:
        yield port, realtime
    finally:
        server.should_exit = True
        await task


def test_websocket_sse_poll_and_api_through_uvicorn() -> None:
    async def scenario() -> None:
        async with uvicorn_serving() as (port, realtime), httpx.AsyncClient() as http:
            base = f"http://127.0.0.1:{port}"
            assert (await http.get(f"{base}/hello")).text == "my own route"
            health = (await http.get(f"{base}/realtime/health")).json()
            assert health["status"] == "ok", health
            async with websockets.connect(f"ws://127.0.0.1:{port}/realtime/ws") as ws:
                assert json.loads(await ws.recv())["event"] == "connection.established"
                await ws.send(json.dumps({"type": "subscribe", "channel": "news"}))
                assert json.loads(await ws.recv())["event"] == "subscription.succeeded"
                async with aconnect_sse(http, "GET",
                                        f"{base}/realtime/sse?channels=news") as source:
                    events = source.aiter_sse()
                    seen = []
                    async with asyncio.timeout(10):
                        while len(seen) < 2:
                            event = await anext(events)
                            if event.data:
                                seen.append(json.loads(event.data)["event"])
                    assert seen == ["connection.established", "subscription.succeeded"]
                    response = await http.post(
                        f"{base}/realtime/api/publish", headers={"Authorization": f"Bearer {KEY}"},
                        json={"channel": "news", "event": "headline", "data": 7})
                    assert response.status_code == 200
                    assert json.loads(await asyncio.wait_for(ws.recv(), 10))["data"] == 7
                    async with asyncio.timeout(10):
                        while True:
                            event = await anext(events)
                            if event.data and json.loads(event.data)["event"] == "headline":
                                break
            opened = (await http.get(f"{base}/realtime/poll")).json()
            realtime.send(opened["connection_id"], "direct", "hi")
            polled = (await http.get(f"{base}/realtime/poll", params={
                "connection_id": opened["connection_id"], "cursor": opened["cursor"]})).json()
            assert polled["messages"][0]["data"] == "hi"
            wrong = await http.post(f"{base}/realtime/api/publish", json={})
            assert wrong.status_code == 401
    asyncio.run(scenario())
