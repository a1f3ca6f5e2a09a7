"""A Python client for asyncio: the core's ClientProtocol over a WebSocket (wsproto)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import ssl as ssl_module
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, assert_never
from urllib.parse import urlencode, urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from realtime_proto.client import (
    ChannelMessage,
    ClientEvent,
    ClientProtocol,
    ClientState,
    Connected,
    MessagesLost,
    PresenceChanged,
    Subscribed,
    SubscriptionFailed,
    busy_retry_after,
)
from realtime_proto.message import JsonValue

__all__ = ["Channel", "RealtimeClient"]

log = logging.getLogger("realtime.client")

Handler = Callable[..., Any]
TokenSource = str | Callable[[], str | Awaitable[str]] | None


class Channel:
    """One subscription: handlers per event, an async iterator, presence members."""

    def __init__(self, client: RealtimeClient, name: str) -> None:
        self.name = name
        self._client = client
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self._queue: asyncio.Queue[ChannelMessage] = asyncio.Queue(maxsize=10_000)
        self.subscribed = asyncio.Event()
        self.error: SubscriptionFailed | None = None
        self._tasks: set[asyncio.Future[Any]] = set()

    def on(self, event: str, handler: Handler) -> Handler:
        """Call `handler(data, message)` for `event` ("*" for every event)."""
        self._handlers[event].append(handler)
        return handler

    def off(self, event: str, handler: Handler) -> None:
        """Stop calling a handler."""
        if handler in self._handlers.get(event, []):
            self._handlers[event].remove(handler)

    def send(self, event: str, data: JsonValue = None) -> None:
        """A client event to the channel's other subscribers (private/presence channels)."""
        self._client.protocol.send(self.name, event, data)
        self._client.flush()

    @property
    def members(self) -> dict[str, Any]:
        """Presence members: user id → info."""
        return self._client.protocol.members(self.name)

    @property
    def recovering(self) -> bool:
        """Whether the channel resubscribes to replay messages the server reported lost."""
        return self._client.protocol.recovering(self.name)

    async def next(self, event: str | None = None, timeout: float | None = None
                   ) -> ChannelMessage:
        """The next message on this channel (optionally of one event)."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self._queue.get()
                if event is None or message.event == event:
                    return message

    async def __aiter__(self) -> AsyncIterator[ChannelMessage]:
        while True:
            yield await self._queue.get()

    def _dispatch(self, event: str, *args: Any) -> None:
        for handler in [*self._handlers.get(event, ()), *self._handlers.get("*", ())]:
            result = handler(*args)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)


class RealtimeClient:
    """Connects, reconnects with backoff, resubscribes and recovers; WebSocket transport.

    `token` may be a string or a (sync or async) function called before every attempt and
    when the server asks for a refresh before the token expires; if the function fails,
    the client ends `failed` (no token, no connection).
    With `auto_recover`, a `messages.lost` whose range is known on a channel with history
    makes the channel resubscribe and replay the lost messages (each offset once).
    A busy server's refusal (HTTP 503 or 429 with `Retry-After` in seconds) is retried after
    `Retry-After` (at most 60 s) plus a random share of up to half of it, instead of the
    backoff (`retry_after` tells what it was).
    """

    def __init__(self, url: str, *, token: TokenSource = None, backoff_min: float = 0.5,
                 backoff_max: float = 20.0, ssl: ssl_module.SSLContext | None = None,
                 jitter: Callable[[], float] = random.random,
                 auto_recover: bool = True) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._secure = parts.scheme in ("wss", "https")
        self._port = parts.port or (443 if self._secure else 80)
        self._path = (parts.path.rstrip("/") or "") + "/ws"
        self._ssl = ssl if ssl is not None else (True if self._secure else None)
        self._token = token
        self.protocol = ClientProtocol(jitter=jitter, backoff_min=backoff_min,
                                       backoff_max=backoff_max, auto_recover=auto_recover)
        self.channels: dict[str, Channel] = {}
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self._writer: asyncio.StreamWriter | None = None
        self._ws: WSConnection | None = None
        self._runner: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.attempts = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def state(self) -> ClientState:
        """connecting, connected, reconnecting, disconnected or failed."""
        return self.protocol.state

    @property
    def retry_after(self) -> float | None:
        """The `Retry-After` seconds of the busy server (503 or 429) that refused the last
        attempt; None once connected, or when the last attempt ended otherwise."""
        return self.protocol.retry_after

    @property
    def connection_id(self) -> str | None:
        """The server's id for the current connection."""
        return self.protocol.connection_id

    def on(self, event: str, handler: Handler) -> Handler:
        """Client-level events: "state" (new state), "connected", "message" (no channel),
        "messages.lost" (`handler(channel or None, data)`: lost messages of a channel, or
        sent to this user)."""
        self._handlers[event].append(handler)
        return handler

    def subscribe(self, channel: str) -> Channel:
        """A channel subscription, kept across reconnects."""
        if channel not in self.channels:
            self.channels[channel] = Channel(self, channel)
            self.protocol.subscribe(channel)
            self.flush()
        return self.channels[channel]

    def unsubscribe(self, channel: str) -> None:
        """Leave a channel."""
        self.channels.pop(channel, None)
        self.protocol.unsubscribe(channel)
        self.flush()

    async def connect(self, timeout: float = 10.0) -> None:
        """Start, and wait for the first `connection.established`."""
        if self._runner is None:
            self._runner = asyncio.ensure_future(self._run())
        async with asyncio.timeout(timeout):
            await self.connected.wait()

    async def close(self) -> None:
        """Disconnect for good."""
        self.protocol.close()
        self._set_state()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        self._drop_socket()

    async def __aenter__(self) -> RealtimeClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def flush(self) -> None:
        """Write what the protocol has queued, if connected."""
        if self._writer is None or self._ws is None:
            return
        for text in self.protocol.messages_to_send():
            self._writer.write(self._ws.send(TextMessage(data=text)))

    # -- the connection loop -------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.protocol.state not in (ClientState.DISCONNECTED, ClientState.FAILED):
            refused, code, retry_after = False, None, None
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError):
                refused, code, retry_after = await self._session()
            self._drop_socket()
            self.connected.clear()
            self.protocol.connection_lost(now=loop.time(), refused=refused, code=code,
                                          retry_after=retry_after)
            self._set_state()
            if self.protocol.next_attempt_at is not None:
                await asyncio.sleep(max(0.0, self.protocol.next_attempt_at - loop.time()))

    async def _session(self) -> tuple[bool, int | None, float | None]:
        """One connection, until it ends; whether the server refused the token, the close
        code it sent, if any, and a busy server's `Retry-After`."""
        loop = asyncio.get_running_loop()
        self.attempts += 1
        try:
            token = await self._fetch_token()
        except Exception:
            log.exception("the token function failed: giving up")
            return True, None, None
        target = self._path + (f"?{urlencode({'token': token})}" if token else "")
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self._host, self._port, ssl=self._ssl), 10)
        ws = WSConnection(ConnectionType.CLIENT)
        self._writer, self._ws = writer, ws
        writer.write(ws.send(Request(host=self._host, target=target)))
        self.protocol.connection_made(now=loop.time())
        while True:
            deadline = self.protocol.next_deadline()
            wait = None if deadline is None else max(0.1, deadline - loop.time())
            try:
                data = await asyncio.wait_for(reader.read(65536), wait)
            except TimeoutError:
                if self.protocol.is_dead(now=loop.time()):
                    return False, None, None
                continue
            if not data:
                return False, None, None
            ws.receive_data(data)
            for event in ws.events():
                match event:
                    case RejectConnection(status_code=status, headers=headers):
                        return status == 401, None, busy_retry_after(status, headers)
                    case AcceptConnection():
                        pass
                    case TextMessage():
                        self._handle(self.protocol.receive(event.data, now=loop.time()))
                    case Ping():
                        writer.write(ws.send(event.response()))
                    case CloseConnection(code=code):
                        return False, code, None
                    case _:  # Pong, BytesMessage, RejectData: wsproto's `Event` is an open
                        pass  # class, not a union, so `assert_never` cannot apply here
            self.flush()

    def _handle(self, events: list[ClientEvent]) -> None:
        for event in events:
            match event:
                case Connected():
                    self.connected.set()
                    self._set_state()
                    self._emit("connected", event)
                case Subscribed():
                    channel = self.channels.get(event.channel)
                    if channel is not None:
                        channel.subscribed.set()
                        channel._dispatch("subscription.succeeded", event)
                case SubscriptionFailed():
                    channel = self.channels.pop(event.channel, None)
                    if channel is not None:
                        channel.error = event
                        channel.subscribed.set()
                        channel._dispatch("subscription.error", event)
                case PresenceChanged():
                    channel = self.channels.get(event.channel)
                    if channel is not None:
                        channel._dispatch(event.event, event.data)
                        channel._dispatch("presence", event.members)
                case ChannelMessage() if event.event == "connection.refresh_required" \
                        and event.channel is None and callable(self._token):
                    task = asyncio.ensure_future(self._refresh())
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    self._emit("message", event)
                case ChannelMessage():
                    channel = self.channels.get(event.channel) if event.channel else None
                    if channel is None:
                        self._emit("message", event)
                    else:
                        with contextlib.suppress(asyncio.QueueFull):
                            channel._queue.put_nowait(event)
                        channel._dispatch(event.event, event.data, event.message)
                case MessagesLost():
                    self._emit("messages.lost", event.channel, event.data)
                case _:
                    assert_never(event)

    async def _fetch_token(self) -> str | None:
        token = self._token() if callable(self._token) else self._token
        if inspect.isawaitable(token):
            token = await token
        return token

    async def _refresh(self) -> None:
        """A new token for the server before the current one expires; if the function
        fails, the server closes with 4001 at expiry."""
        try:
            token = await self._fetch_token()
        except Exception:
            log.exception("the token function failed: the connection ends at expiry")
            return
        if token:
            self.protocol.refresh(token)
            self.flush()

    def _emit(self, name: str, *args: Any) -> None:
        for handler in self._handlers.get(name, ()):
            handler(*args)

    def _set_state(self) -> None:
        self._emit("state", self.protocol.state)

    def _drop_socket(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = self._ws = None
