"""The asyncio adapter: sockets, one timer, callbacks and the broker around a Node."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import typing
from collections.abc import AsyncIterator, Callable
from typing import Any

from realtime_brokers import BrokerClient, open_broker
from realtime_brokers.history import HistoryService, open_history_store
from realtime_proto.events import TransportId
from realtime_proto.webhook import WebhookTarget
from realtime_server.base import Answer, ServerBase
from realtime_server.edge import Settings, server_ssl_context

from .asgi import RealtimeASGI

__all__ = ["RealtimeServer"]

log = logging.getLogger("realtime")

#: seconds a closing socket may take to drain before it is aborted
_CLOSE_GRACE = 5.0


# What a _Client's socket may do (one field, not a set of booleans)
_OPEN, _PAUSED, _CLOSING = 0, 1, 2


class _Client(asyncio.Protocol):
    """One socket: bytes in to the Node, bytes out when the Node says so.

    Four slots and nothing else while idle (no task, timer or closure per socket)."""

    __slots__ = ("_server", "id", "state", "transport")

    def __init__(self, server: RealtimeServer) -> None:
        self._server = server
        self.transport: asyncio.Transport | None = None
        self.id = TransportId("")
        #: _OPEN; _PAUSED while the transport's buffer is full; _CLOSING once closed
        self.state = _OPEN

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        secure = transport.get_extra_info("sslcontext") is not None
        server = self._server
        self.id = server.node.open_connection(now=server.now(), secure=secure,
                                              peer=f"{peer[0]}:{peer[1]}" if peer else None)
        server.clients[self.id] = self

    def data_received(self, data: bytes) -> None:
        server = self._server
        server.node.receive_data(self.id, data, now=server.now())
        server.pump()

    def eof_received(self) -> bool:
        server = self._server
        server.node.receive_eof(self.id, now=server.now())
        server.pump()
        return True  # keep the socket open until what is queued has been written

    def connection_lost(self, exc: Exception | None) -> None:
        server = self._server
        server.clients.pop(self.id, None)
        server.node.receive_eof(self.id, now=server.now())
        server.pump()

    def pause_writing(self) -> None:
        if self.state == _OPEN:
            self.state = _PAUSED

    def resume_writing(self) -> None:
        if self.state == _PAUSED:
            self.state = _OPEN
        self._server.transmit((self.id,))

    def write_pending(self) -> None:
        """Write everything the Node has for this socket in one go (while closing, even
        past the high-water mark: it is the last of it)."""
        if self.transport is None or self.state == _PAUSED:
            return
        chunks = self._server.node.data_to_send(self.id)
        if chunks:
            self.transport.writelines(chunks)

    def close(self) -> None:
        """Write what is left, then close; abort if the peer will not take it."""
        self.state = _CLOSING
        self.write_pending()
        if self.transport is not None:
            self.transport.close()
            loop = asyncio.get_running_loop()
            loop.call_later(_CLOSE_GRACE, self.transport.abort)


class RealtimeServer(ServerBase):
    """A realtime server inside an asyncio program.

    Register rules with `channel(pattern).authorize(fn)` and an `authenticate` hook,
    `await start()` (or `run()` to block; mounted in an ASGI application, `lifespan`),
    then publish with `broadcast`, `send_to_user` and `send`, from any thread.
    Callbacks may be plain functions or coroutines.
    """

    runtime = "asyncio"

    def __init__(self, settings: Settings | None = None, **options: Any) -> None:
        super().__init__(settings, **options)
        self.clients: dict[TransportId, _Client] = {}
        self.broker: BrokerClient | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopped = asyncio.Event()
        self._asgi: RealtimeASGI | None = None

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return int(self._servers[0].sockets[0].getsockname()[1])

    @property
    def started(self) -> bool:
        """Whether `start` has run."""
        return self._loop is not None

    @property
    def asgi_app(self) -> RealtimeASGI:
        """An ASGI application serving the same endpoints (mount it anywhere, and start
        the server with the host application's `lifespan`)."""
        if self._asgi is None:
            self._asgi = RealtimeASGI(self)
        return self._asgi

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Run the server (without a port of its own) while the host application runs.

        ``FastAPI(lifespan=server.lifespan)`` or ``Starlette(lifespan=server.lifespan)``;
        or ``async with server.lifespan():`` inside the host application's own lifespan.
        A mounted ASGI application gets no lifespan events of its own, so without this
        the mount answers 503 and the application API raises `ServerNotStarted`.
        """
        await self.start(listen=False)
        try:
            yield
        finally:
            await self.aclose()

    # -- running -------------------------------------------------------------------------

    async def start(self, *, listen: bool = True) -> None:
        """Connect the broker and start listening; returns once serving.

        Args:
            listen: bind the configured host and port; False when only the ASGI
                application serves (mounted in another server).

        Raises:
            OSError: the address is in use or cannot be bound.
            BrokerUnavailable: the broker cannot be reached.
        """
        self._loop = asyncio.get_running_loop()
        self.broker = open_broker(self.settings.broker, self, node_id=self.node_id)
        await self.broker.start()
        if self.history_store is not None:
            history = HistoryService(open_history_store(self.history_store), self.handle)
            try:
                await history.start()
            except BaseException:
                await self.broker.aclose()
                raise
            self.history = history
        self.running = True
        self.pump()
        if not listen:
            return
        ssl_context = server_ssl_context(self.settings)
        try:
            server = await self._loop.create_server(
                lambda: _Client(self), self.settings.host,
                self.settings.port, ssl=ssl_context, reuse_address=True, backlog=4096,
                reuse_port=self.settings.worker is not None,  # --workers share the port
                ssl_handshake_timeout=10.0 if ssl_context else None)
        except BaseException:
            await self.broker.aclose()  # leave nothing subscribed behind
            if isinstance(self.history, HistoryService):
                await self.history.aclose()
            raise
        self._servers.append(server)
        log.info("realtime node %s serving on %s:%d (broker %s)", self.node_id,
                 self.settings.host, self.port, self.settings.broker.partition("?")[0])

    async def serve(self) -> None:
        """Start, then serve until `stop()` or cancellation; shuts down gracefully."""
        await self.start()
        try:
            await self._stopped.wait()
        finally:
            await self.aclose()

    def stop(self) -> None:
        """Ask `serve()` to return (thread-unsafe; call from the loop)."""
        self._stopped.set()

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM, on uvloop when installed."""
        try:
            import uvloop
        except ImportError:
            runner = asyncio.run
        else:
            runner = uvloop.run
        runner(self._run_until_signal())

    async def _run_until_signal(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.stop)
        await self.serve()

    async def aclose(self, timeout: float = _CLOSE_GRACE) -> None:
        """Stop accepting, close every client (WebSocket 1001), stop the broker."""
        for server in self._servers:
            server.close()
        if self._loop is not None:
            self.node.shutdown(now=self.now())
            self.pump()
            self.flush_writes()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    while self.clients:
                        await asyncio.sleep(0.01)
            for client in list(self.clients.values()):
                if client.transport is not None:
                    client.transport.abort()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        if isinstance(self.history, HistoryService):
            await self.history.aclose()
        if self.broker is not None:
            await self.broker.aclose()
        self.running = False
        self._servers.clear()

    # -- the runtime's hooks -------------------------------------------------------------

    def call_soon_threadsafe(self, fn: Callable[[], None]) -> None:
        if self._loop is None:
            raise RuntimeError("the server has not started")
        self._loop.call_soon_threadsafe(fn)

    def schedule_flush(self) -> None:
        asyncio.get_running_loop().call_soon(self.flush_writes)

    def write(self, transport_id: TransportId) -> None:
        client = self.clients.get(transport_id)
        if client is not None:
            client.write_pending()

    def close_transport(self, transport_id: TransportId) -> bool:
        client = self.clients.get(transport_id)
        if client is None:
            return False
        client.close()
        return True

    def run_callback(self, fn: Callable[..., Any], args: tuple[Any, ...],
                     answer: Answer) -> None:
        """Plain callbacks run inline; coroutines run as tasks."""
        awaitable = self.call_back(fn, args, answer)
        if awaitable is not None:
            task = asyncio.ensure_future(self.answer_awaited(fn, awaitable, answer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def arm_timer(self, deadline: float) -> None:
        if deadline == self._timer_at or self._loop is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        # the Node's clock is time.monotonic(); the loop's may differ (uvloop): a delay
        self._timer = self._loop.call_later(max(0.0, deadline - self.now()), self._on_timer)

    async def post_webhook(self, target: WebhookTarget, request: bytes) -> bytes:
        async with asyncio.timeout(self.settings.auth_webhook_timeout):
            reader, writer = await asyncio.open_connection(
                target.host, target.port, ssl=True if target.secure else None)
            try:
                writer.write(request)
                return await reader.read()
            finally:
                writer.close()

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self.tick()
