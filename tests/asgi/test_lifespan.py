"""Mounted in FastAPI under /rt: the server starts and stops with the host application's
lifespan, its API raises before that, and a plain `def` route may publish (real uvicorn)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from fastapi import FastAPI

from realtime_asyncio import RealtimeServer, ServerNotStarted

TIMEOUT = 10.0


def direct(realtime: RealtimeServer) -> Callable[[FastAPI], Any]:
    return realtime.lifespan


def composed(realtime: RealtimeServer) -> Callable[[FastAPI], Any]:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with realtime.lifespan():
            yield
    return lifespan


def host_app(realtime: RealtimeServer, lifespan: Callable[[FastAPI], Any] | None) -> FastAPI:
    app = FastAPI(lifespan=lifespan)

    @app.post("/publish")
    async def publish_async(n: int) -> dict[str, str]:
        return {"id": realtime.broadcast("news", "async", n)}

    @app.post("/publish-sync")
    def publish_sync(n: int) -> dict[str, str]:  # FastAPI runs it in a worker thread
        return {"id": realtime.broadcast("news", "sync", n)}

    app.mount("/rt", realtime.asgi_app)
    return app


@contextlib.asynccontextmanager
async def uvicorn_serving(app: FastAPI) -> AsyncIterator[int]:
    """The app under real uvicorn (its lifespan on), on a port the kernel picked."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="on"))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(TIMEOUT):
            while not server.started:
                assert not task.done(), task.exception()
                await asyncio.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, TIMEOUT)
        sock.close()


async def subscribed(url: str) -> Any:
    ws = await websockets.connect(url)
    assert json.loads(await ws.recv())["event"] == "connection.established"
    await ws.send(json.dumps({"type": "subscribe", "channel": "news"}))
    assert json.loads(await ws.recv())["event"] == "subscription.succeeded"
    return ws


async def next_event(ws: Any) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    return message


@pytest.mark.parametrize("lifespan", [direct, composed])
def test_the_mounted_server_runs_with_the_host_lifespan(
        lifespan: Callable[[RealtimeServer], Callable[[FastAPI], Any]]) -> None:
    async def scenario() -> None:
        bus = f"memory://lifespan-{uuid.uuid4().hex}"
        realtime = RealtimeServer(broker=bus)
        other = RealtimeServer(broker=bus, port=0)
        with pytest.raises(ServerNotStarted, match="lifespan"):
            realtime.broadcast("news", "early", 0)
        await other.start()
        try:
            async with uvicorn_serving(host_app(realtime, lifespan(realtime))) as port, \
                    httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                mounted = await subscribed(f"ws://127.0.0.1:{port}/rt/ws")
                remote = await subscribed(f"ws://127.0.0.1:{other.port}/ws")
                message_id = realtime.broadcast("news", "direct", 1)
                for ws in (mounted, remote):
                    message = await next_event(ws)
                    assert (message["event"], message["id"]) == ("direct", message_id)
                for route, event in (("/publish", "async"), ("/publish-sync", "sync")):
                    response = await http.post(route, params={"n": 2})
                    assert response.status_code == 200, response.text
                    for ws in (mounted, remote):
                        message = await next_event(ws)
                        assert (message["event"], message["id"]) == (
                            event, response.json()["id"])
                await mounted.close()
                await remote.close()
            with pytest.raises(ServerNotStarted):  # stopped with the host application
                realtime.broadcast("news", "late", 3)
        finally:
            await other.aclose(timeout=1)
    asyncio.run(scenario())


def test_without_the_lifespan_the_mount_refuses_and_the_api_raises() -> None:
    async def scenario() -> None:
        realtime = RealtimeServer(broker=f"memory://lifespan-{uuid.uuid4().hex}")
        async with uvicorn_serving(host_app(realtime, None)) as port, \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            health = await http.get("/rt/health")
            assert health.status_code == 503
            assert health.json()["error"]["code"] == 4500
            assert "lifespan" in health.json()["error"]["message"]
            with pytest.raises(websockets.InvalidStatus):
                await websockets.connect(f"ws://127.0.0.1:{port}/rt/ws")
            published = await http.post("/publish-sync", params={"n": 1})
            assert published.status_code == 500  # ServerNotStarted, not a lost message
            with pytest.raises(ServerNotStarted):
                realtime.broadcast("news", "lost", 1)
    asyncio.run(scenario())



def test_served_directly_the_asgi_lifespan_runs_the_server() -> None:
    async def scenario() -> None:
        realtime = RealtimeServer(broker=f"memory://lifespan-{uuid.uuid4().hex}")
        async with uvicorn_serving(realtime.asgi_app) as port, \
                websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
            established = await next_event(ws)
            message_id = realtime.send(established["data"]["connection_id"], "hi", 1)
            assert (await next_event(ws))["id"] == message_id
        with pytest.raises(ServerNotStarted):
            realtime.broadcast("news", "late", 1)
    asyncio.run(scenario())


def test_a_broker_that_cannot_be_reached_fails_the_host_startup() -> None:
    async def scenario() -> None:
        with socket.socket() as closed:  # bound, not listening: connections are refused
            closed.bind(("127.0.0.1", 0))
            realtime = RealtimeServer(broker=f"redis://127.0.0.1:{closed.getsockname()[1]}")
            server = uvicorn.Server(uvicorn.Config(host_app(realtime, realtime.lifespan),
                                                   log_level="critical", lifespan="on"))
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                with pytest.raises(SystemExit):  # uvicorn's exit on a failed startup
                    async with asyncio.timeout(TIMEOUT):
                        await server.serve(sockets=[sock])
            assert not server.started
            with pytest.raises(ServerNotStarted):
                realtime.broadcast("news", "lost", 1)
    asyncio.run(scenario())


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_starlettes_test_client_runs_the_lifespan_in_its_own_thread() -> None:
    from starlette.testclient import TestClient

    realtime = RealtimeServer(broker=f"memory://lifespan-{uuid.uuid4().hex}")
    with TestClient(host_app(realtime, realtime.lifespan)) as client, \
            client.websocket_connect("/rt/ws") as ws:
        assert ws.receive_json()["event"] == "connection.established"
        ws.send_json({"type": "subscribe", "channel": "news"})
        assert ws.receive_json()["event"] == "subscription.succeeded"
        published = client.post("/publish-sync", params={"n": 1}).json()
        assert ws.receive_json()["id"] == published["id"]
        message_id = realtime.broadcast("news", "direct", 2)  # handed to the app's loop
        assert ws.receive_json()["id"] == message_id
