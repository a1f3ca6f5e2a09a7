"""Third-party clients for end-to-end tests: websockets for /ws, httpx for SSE and polling."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import websockets
from httpx_sse import aconnect_sse

TIMEOUT = 10.0
Match = Callable[[dict[str, Any]], bool]


class Client:
    """What every transport's test client offers: next matching message, send, close."""

    transport = ""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.connection_id = ""
        self.user_id: str | None = None
        self.seen: list[dict[str, Any]] = []

    async def next(self, event: str | None = None, *, type: str | None = None,
                   channel: str | None = None, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next message matching every given field (others are kept in `seen`)."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.inbox.get()
                self.seen.append(message)
                if ((event is None or message.get("event") == event)
                        and (type is None or message.get("type") == type)
                        and (channel is None or message.get("channel") == channel)):
                    return message

    async def nothing(self, seconds: float = 0.3) -> None:
        """Assert no message arrives within a short window (after a round trip)."""
        with contextlib.suppress(TimeoutError):
            message = await self.next(timeout=seconds)
            raise AssertionError(f"unexpected message {message}")

    async def subscribe(self, channel: str) -> dict[str, Any]:
        await self.send({"type": "subscribe", "channel": channel})
        return await self.next(channel=channel)

    async def established(self) -> None:
        message = await self.next("connection.established")
        self.connection_id = message["data"]["connection_id"]
        self.user_id = message["data"]["user_id"]

    async def send(self, message: dict[str, Any]) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class WsClient(Client):
    transport = "websocket"

    def __init__(self, ws: Any) -> None:
        super().__init__()
        self.ws = ws
        self._reader = asyncio.ensure_future(self._read())
        self.close_code: int | None = None

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                await self.inbox.put(json.loads(raw))
        except websockets.ConnectionClosed:
            pass
        self.close_code = self.ws.close_code

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def wait_closed(self) -> int | None:
        async with asyncio.timeout(TIMEOUT):
            await self._reader
        return self.close_code

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


class SseClient(Client):
    transport = "sse"

    def __init__(self, base: str, http: httpx.AsyncClient, url: str) -> None:
        super().__init__()
        self.base, self.http = base, http
        self.ids: list[str] = []
        self.ended = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read(url))

    async def _read(self, url: str) -> None:
        try:
            async with aconnect_sse(self.http, "GET", url) as source:
                self.status = source.response.status_code
                async for event in source.aiter_sse():
                    if not event.data:
                        continue  # a `retry:` block dispatches nothing (WHATWG SSE)
                    self.ids.append(event.id)
                    await self.inbox.put(json.loads(event.data))
        except (httpx.HTTPError, httpx_sse_error()):
            pass
        finally:
            self.ended.set()

    async def send(self, message: dict[str, Any] | list[Any]) -> None:
        await _post_send(self, message)

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def httpx_sse_error() -> type[Exception]:
    from httpx_sse import SSEError

    return SSEError


async def _post_send(client: SseClient | PollClient,
                     message: dict[str, Any] | list[Any]) -> None:
    """SSE and long-poll clients send with `POST /send` (docs/protocol.md)."""
    response = await client.http.post(f"{client.base}/send",
                                      params={"connection_id": client.connection_id},
                                      json=message)
    assert response.status_code == 202, response.text


async def _leave(client: SseClient | PollClient) -> None:
    if client.connection_id:
        with contextlib.suppress(httpx.HTTPError):
            await client.http.post(f"{client.base}/close",
                                   params={"connection_id": client.connection_id})


class PollClient(Client):
    transport = "polling"

    def __init__(self, base: str, http: httpx.AsyncClient, params: dict[str, str]) -> None:
        super().__init__()
        self.base, self.http = base, http
        self.cursor = 0
        self._params = params
        self.ended = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            response = await self.http.get(f"{self.base}/poll", params=self._params)
            while response.status_code == 200:
                body = response.json()
                self.connection_id = body["connection_id"]
                self.cursor = body["cursor"]
                for message in body["messages"]:
                    await self.inbox.put(message)
                response = await self.http.get(f"{self.base}/poll", params={
                    "connection_id": self.connection_id, "cursor": str(self.cursor)})
            self.last_status = response.status_code
        except httpx.HTTPError:
            pass
        finally:
            self.ended.set()

    async def send(self, message: dict[str, Any] | list[Any]) -> None:
        await _post_send(self, message)

    async def close(self) -> None:
        await _leave(self)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def connect(transport: str, port: int, *, token: str | None = None,
                  channels: str | None = None) -> AsyncIterator[Client]:
    """A connected client of the given transport, closed at the end."""
    base = f"http://127.0.0.1:{port}"
    params = {"token": token} if token else {}
    client: Client
    async with contextlib.AsyncExitStack() as stack:
        http = None
        if transport != "websocket":
            http = await stack.enter_async_context(httpx.AsyncClient(timeout=60.0))
        if transport == "websocket":
            query = f"?token={token}" if token else ""
            ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws{query}")
            client = WsClient(ws)
        elif transport == "sse":
            assert http is not None
            if channels:
                params["channels"] = channels
            url = str(httpx.URL(f"{base}/sse", params=params))
            client = SseClient(base, http, url)
        else:
            assert http is not None
            client = PollClient(base, http, params)
        try:
            await client.established()
            yield client
        finally:
            await client.close()


@contextlib.asynccontextmanager
async def connect_ws(port: int, *, token: str | None = None) -> AsyncIterator[WsClient]:
    """A connected WebSocket client (its frames and close code in reach), closed at the end."""
    async with connect("websocket", port, token=token) as client:
        assert isinstance(client, WsClient)
        yield client
