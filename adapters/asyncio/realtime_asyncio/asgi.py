"""An ASGI application for the realtime endpoints, to mount next to an application's routes.

The ASGI server has already parsed HTTP and WebSocket; the Node speaks bytes. Each ASGI
connection therefore becomes a virtual socket: the request is written back into HTTP/1.1
bytes with an h11 (or wsproto) client, and the Node's answer is parsed by the same
client into ASGI events. One core, one behaviour, whatever serves the socket. The native
server (`RealtimeServer.run`) skips this translation and is the faster path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from realtime_proto.errors import ErrorCode
from realtime_proto.events import TransportId

if TYPE_CHECKING:
    from .server import RealtimeServer

__all__ = ["RealtimeASGI"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _VirtualClient:
    """Stands where a socket would: the Node's bytes go to a queue, not a network."""

    def __init__(self, server: RealtimeServer, scope: Scope) -> None:
        self._server = server
        self.output: asyncio.Queue[bytes | None] = asyncio.Queue()
        client = scope.get("client")
        self.id: TransportId = server.node.open_connection(
            now=server.now(), peer=f"{client[0]}:{client[1]}" if client else None,
            secure=scope.get("scheme") in ("https", "wss"))
        server.clients[self.id] = self  # type: ignore[assignment]
        self.closed = False

    def feed(self, data: bytes) -> None:
        if not self.closed:
            self._server.node.receive_data(self.id, data, now=self._server.now())
            self._server.pump()

    def write_pending(self) -> None:
        chunks = self._server.node.data_to_send(self.id)
        if chunks:
            self.output.put_nowait(b"".join(chunks))

    def close(self) -> None:
        self.write_pending()
        self.closed = True
        self.output.put_nowait(None)

    def gone(self) -> None:
        """The ASGI side went away."""
        self._server.clients.pop(self.id, None)
        self._server.node.receive_eof(self.id, now=self._server.now())
        self._server.pump()


class RealtimeASGI:
    """The ASGI application of a `RealtimeServer` (see `RealtimeServer.asgi_app`).

    Served directly, it starts and stops the server on the ASGI lifespan events. Mounted
    in another application (which keeps those events), the host's lifespan must run
    `RealtimeServer.lifespan`; until the server runs, requests get 503 and WebSocket
    handshakes are closed with 1011.
    """

    def __init__(self, server: RealtimeServer) -> None:
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif not self.server.running:
            await _refuse(scope, receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        async with contextlib.AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(self.server.lifespan())
            except Exception as error:
                await send({"type": "lifespan.startup.failed", "message": repr(error)})
                return
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        client = h11.Connection(h11.CLIENT)
        virtual = _VirtualClient(self.server, scope)
        request = h11.Request(method=scope["method"], target=_target(scope),
                              headers=_headers(scope, body_length=len(body)))
        virtual.feed(client.send(request) + client.send(h11.Data(data=bytes(body)))
                     + client.send(h11.EndOfMessage()))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            while True:
                reader = asyncio.ensure_future(virtual.output.get())
                done, _ = await asyncio.wait({reader, watcher},
                                             return_when=asyncio.FIRST_COMPLETED)
                if watcher in done:
                    reader.cancel()
                    return
                data = reader.result()
                client.receive_data(data if data is not None else b"")
                if await _relay_http(client, send) or data is None:
                    return
        finally:
            watcher.cancel()
            virtual.gone()

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        client = WSConnection(ConnectionType.CLIENT)
        virtual = _VirtualClient(self.server, scope)
        forwarded = [(k, v) for k, v in scope.get("headers", [])
                     if k.lower() in (b"authorization", b"cookie", b"origin", b"user-agent")]
        virtual.feed(client.send(Request(host="localhost", target=_target(scope).decode(),
                                         extra_headers=forwarded)))
        pump = asyncio.ensure_future(self._from_node(client, virtual, send))
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is not None:
                    virtual.feed(client.send(TextMessage(data=message["text"])))
                elif message.get("bytes") is not None:
                    virtual.feed(client.send(BytesMessage(data=message["bytes"])))
        finally:
            pump.cancel()
            virtual.gone()

    async def _from_node(self, client: WSConnection, virtual: _VirtualClient,
                         send: Send) -> None:
        accepted = False
        while (data := await virtual.output.get()) is not None:
            client.receive_data(data)
            for event in client.events():
                match event:
                    case AcceptConnection():
                        accepted = True
                        await send({"type": "websocket.accept"})
                    case RejectConnection():
                        await send({"type": "websocket.close", "code": 1008})
                        return
                    case TextMessage():
                        await send({"type": "websocket.send", "text": event.data})
                    case BytesMessage():
                        await send({"type": "websocket.send", "bytes": bytes(event.data)})
                    case Ping():
                        virtual.feed(client.send(event.response()))
                    case CloseConnection():
                        await send({"type": "websocket.close", "code": event.code,
                                    "reason": event.reason or ""})
                        return
                    case _:  # Pong, RejectData: wsproto's `Event` is an open class, not a
                        pass  # union, so `assert_never` cannot apply here
        if accepted:
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": 1006})


_NOT_RUNNING = ("the realtime server is not running: start it with the host application's "
                "lifespan (server.lifespan); see docs/embedding.md")


async def _refuse(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer a request that came before the server started (or after it stopped)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1011, "reason": _NOT_RUNNING})
        return
    body = json.dumps({"error": {"code": ErrorCode.INTERNAL_ERROR,
                                 "message": _NOT_RUNNING}}).encode()
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _relay_http(client: h11.Connection, send: Send) -> bool:
    """Pass the Node's response on as ASGI events; True once it is complete."""
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return False
        if isinstance(event, h11.Response):
            headers = [(k, v) for k, v in event.headers
                       if k not in (b"transfer-encoding", b"connection")]
            await send({"type": "http.response.start", "status": event.status_code,
                        "headers": headers})
        elif isinstance(event, h11.Data):
            await send({"type": "http.response.body", "body": bytes(event.data),
                        "more_body": True})
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return True


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _target(scope: Scope) -> bytes:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    query: bytes = scope.get("query_string", b"")
    return path.encode() + (b"?" + query if query else b"")


def _headers(scope: Scope, *, body_length: int) -> list[tuple[bytes, bytes]]:
    skip = {b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"host"}
    headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() not in skip]
    return [(b"host", b"localhost"), (b"content-length", str(body_length).encode()), *headers]
