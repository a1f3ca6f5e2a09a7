"""The trio adapter: sockets, one timer, callbacks and the broker around a Node."""

from __future__ import annotations

import contextlib
import logging
import selectors
import signal
import socket
import ssl
from collections.abc import Callable
from typing import Any

import trio

from realtime_brokers.bridge import BrokerBridge
from realtime_proto.events import TransportId
from realtime_proto.webhook import WebhookTarget
from realtime_server.base import Answer, ServerBase
from realtime_server.edge import Settings, server_ssl_context
from realtime_server.sockets import READ_BYTES, ClientSocket

__all__ = ["RealtimeServer"]

log = logging.getLogger("realtime")

#: seconds a closing socket (and, at shutdown, the whole server) may take to drain
_CLOSE_GRACE = 5.0
#: seconds the broker may take to send what is queued and disconnect at shutdown
_BROKER_CLOSE_TIMEOUT = 5.0


class _Socket(ClientSocket):
    """One client socket. A plain socket (`raw`) is a non-blocking `socket.socket` that the
    server's one selector watches: no task while idle. A TLS socket is an `SSLStream` with a
    task that reads it. A writer task exists only while a send would block, or while the
    socket closes."""

    __slots__ = ("scope", "stream", "write_scope")
    server: RealtimeServer

    def __init__(self, server: RealtimeServer, transport_id: TransportId,
                 raw: socket.socket | None, stream: trio.abc.Stream | None) -> None:
        super().__init__(server, transport_id, raw)
        #: TLS (or the plain socket where no selector can be awaited), read by a task
        self.stream = stream
        #: the running writer's scope (its deadline bounds a close)
        self.write_scope: trio.CancelScope | None = None
        #: the reading task's scope, for a socket read through `stream`
        self.scope: trio.CancelScope | None = None

    def start_writer(self) -> None:
        nursery = self.server._nursery
        assert nursery is not None
        nursery.start_soon(self.server._write, self)

    def stop_reading(self) -> None:
        selector = self.server._selector
        assert selector is not None and self.raw is not None
        selector.unregister(self.raw)


class RealtimeServer(ServerBase):
    """A realtime server inside a trio program.

    Register rules with `channel(pattern).authorize(fn)` and an `authenticate` hook, run
    `await nursery.start(server.serve)` (or `run()` to block), then publish with
    `broadcast`, `send_to_user` and `send` from any thread (other threads are handed to
    the trio thread through its token). Callbacks may be plain functions or async
    functions (run as trio tasks). Cancelling `serve` shuts down gracefully.
    """

    runtime = "trio"

    def __init__(self, settings: Settings | None = None, **options: Any) -> None:
        super().__init__(settings, **options)
        self.sockets: dict[TransportId, _Socket] = {}
        self.trio_token: trio.lowlevel.TrioToken | None = None
        #: seconds clients get to go at shutdown before their sockets are aborted
        self.close_timeout = _CLOSE_GRACE
        self._listeners: list[trio.SocketListener] = []
        self._ssl_context: ssl.SSLContext | None = None
        #: watches every plain socket for the one reader task (None: not awaitable here)
        self._selector: selectors.BaseSelector | None = None
        self._nursery: trio.Nursery | None = None
        self._timer_scope: trio.CancelScope | None = None
        self._flush_wanted = trio.Event()
        self._accepting = trio.CancelScope()
        self._shield = trio.CancelScope(shield=True)
        self._shutting_down = False
        self._stop = trio.Event()
        self._drained = trio.Event()

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return int(self._listeners[0].socket.getsockname()[1])

    # -- running -------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                    ) -> None:
        """Connect the broker, listen, and serve until `stop()` or cancellation.

        `task_status.started()` is called once listening. On the way out every client is
        closed (WebSocket 1001, SSE ended, polls answered) within a grace period, then
        the broker is closed.

        Raises:
            OSError: the address is in use or cannot be bound.
            BrokerUnavailable: the broker cannot be reached.
        """
        try:
            await self._start()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._serve_shielded)
                task_status.started()
                try:
                    await self._stop.wait()
                finally:
                    self._begin_shutdown()
        finally:
            self.running = False
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + _BROKER_CLOSE_TIMEOUT
                await self._close_broker()

    def stop(self) -> None:
        """Ask `serve()` to shut down and return (from the trio thread)."""
        self._stop.set()

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM."""
        trio.run(self._run_until_signal)

    async def _run_until_signal(self) -> None:
        error: Exception | None = None
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                async def stop_on_signal() -> None:
                    async for _ in signals:
                        self.stop()
                        return

                nursery.start_soon(stop_on_signal)
                try:
                    await self.serve()
                except Exception as failure:  # raised as itself, not in an ExceptionGroup
                    error = failure
                finally:
                    nursery.cancel_scope.cancel()
        if error is not None:
            raise error

    async def _start(self) -> None:
        self._ssl_context = server_ssl_context(self.settings)
        self.trio_token = token = trio.lowlevel.current_trio_token()
        self.broker = broker = BrokerBridge(self.settings.broker, self, node_id=self.node_id,
                                            call_soon=token.run_sync_soon,
                                            history=self.history_store)
        self.history = broker
        started = trio.Event()
        errors: list[BaseException | None] = []

        def done(error: BaseException | None) -> None:
            errors.append(error)
            started.set()

        broker.start(done)
        await started.wait()
        if errors[0] is not None:
            raise errors[0]
        self._listeners = await trio.open_tcp_listeners(
            self.settings.port, host=self.settings.host, backlog=4096)
        self.running = True
        self.pump()
        log.info("realtime node %s serving on %s:%d (broker %s)", self.node_id,
                 self.settings.host, self.port, self.settings.broker.partition("?")[0])

    async def _serve_shielded(self) -> None:
        """Accept, time and serve sockets, shielded from the caller's cancellation so
        that clients can be told goodbye; bounded by the grace period once stopping."""
        with self._shield:
            self._selector = _awaitable_selector()
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._run_timer)
                    nursery.start_soon(self._run_flusher)
                    if self._selector is not None:
                        nursery.start_soon(self._run_reader, self._selector)
                    nursery.start_soon(self._accept)
                    await self._drained.wait()
                    nursery.cancel_scope.cancel()
            finally:  # past the grace period: what is still open is closed as it is
                self.running = False
                for sock in list(self.sockets.values()):
                    self._finish(sock)
                if self._selector is not None:
                    self._selector.close()

    def _begin_shutdown(self) -> None:
        if self._shutting_down:
            return
        self._shutting_down = True
        self._accepting.cancel()
        self._shield.deadline = trio.current_time() + self.close_timeout
        self.node.shutdown(now=self.now())
        self.pump()
        if not self.sockets:
            self._drained.set()

    async def _accept(self) -> None:
        with self._accepting:
            await trio.serve_listeners(self._serve_socket, self._listeners,
                                       handler_nursery=self._nursery)
        for listener in self._listeners:
            await trio.aclose_forcefully(listener)

    async def _close_broker(self) -> None:
        if isinstance(self.broker, BrokerBridge):
            closed = trio.Event()
            self.broker.close(closed.set)
            await closed.wait()

    # -- sockets -------------------------------------------------------------------------

    async def _serve_socket(self, tcp: trio.SocketStream) -> None:
        """Set up an accepted socket (trio's stream has set TCP_NODELAY). A plain one is
        handed to the selector and this task ends; a TLS one is read here."""
        try:
            host, port = tcp.socket.getpeername()[:2]
            peer: str | None = f"{host}:{port}"
        except OSError:
            peer = None
        secure = self._ssl_context is not None
        transport_id = self.node.open_connection(now=self.now(), peer=peer, secure=secure)
        if self._ssl_context is None and self._selector is not None:
            raw = socket.socket(fileno=tcp.socket.detach())
            raw.setblocking(False)
            sock = _Socket(self, transport_id, raw, None)
            self.sockets[sock.id] = sock
            self._selector.register(raw, selectors.EVENT_READ, sock)
            return
        stream: trio.abc.Stream = tcp
        if self._ssl_context is not None:
            stream = trio.SSLStream(tcp, self._ssl_context, server_side=True,
                                    https_compatible=True)
        sock = _Socket(self, transport_id, None, stream)
        self.sockets[sock.id] = sock
        try:
            with trio.CancelScope() as sock.scope:
                await self._read(sock, stream)
                await trio.sleep_forever()  # until the writer has closed the socket
        except Exception:
            log.exception("serving socket %s failed", sock.id)
        finally:
            self._finish(sock)
            await trio.aclose_forcefully(stream)

    async def _read(self, sock: _Socket, stream: trio.abc.Stream) -> None:
        try:
            while data := await stream.receive_some(READ_BYTES):
                # bytes() is free for the bytes a socket returns (SSLStream: a bytearray)
                self.node.receive_data(sock.id, bytes(data), now=self.now())
                self.pump()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self.node.receive_eof(sock.id, now=self.now())
        self.pump()

    async def _run_reader(self, selector: selectors.BaseSelector) -> None:
        """The one task that reads every plain socket: it waits until the selector has
        readable sockets, then reads each once, without blocking."""
        fd = selector.fileno()  # type: ignore[attr-defined]  # epoll, kqueue, devpoll
        while True:
            await trio.lowlevel.wait_readable(fd)
            for key, _ in selector.select(0):
                key.data.receive()

    async def _write(self, sock: _Socket) -> None:
        """The writer task (`ClientSocket.start_writer`): send the socket's batches, then
        hand it back to direct sends; or, once it is closing (or it failed), close it."""
        try:
            with trio.CancelScope() as sock.write_scope:
                if sock.closing:
                    sock.write_scope.deadline = trio.current_time() + _CLOSE_GRACE
                if sock.raw is not None:
                    # a direct send has just found it full (or it closes): wait, then send
                    await trio.lowlevel.wait_writable(sock.raw)
                    for _ in sock.drain():
                        await trio.lowlevel.wait_writable(sock.raw)
                elif sock.stream is not None:
                    for data in sock.batches():
                        await sock.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            sock.write_scope = None
            if sock.release():
                if sock.scope is not None:
                    sock.scope.cancel()  # its reading task closes it
                else:
                    self._finish(sock)

    def _finish(self, sock: _Socket) -> None:
        """Forget a socket and close it (a TLS stream: its task closes it after this)."""
        if self.sockets.pop(sock.id, None) is None:
            return
        if sock.write_scope is not None:
            sock.write_scope.cancel()
        self.node.receive_eof(sock.id, now=self.now())  # no effect if the Node closed it
        self.pump()
        if sock.raw is not None:
            assert self._selector is not None
            with contextlib.suppress(KeyError):  # not if its EOF was read
                self._selector.unregister(sock.raw)
            trio.lowlevel.notify_closing(sock.raw)
            sock.raw.close()
        if self._shutting_down and not self.sockets:
            self._drained.set()

    # -- the hooks of ServerBase ---------------------------------------------------------

    def call_soon_threadsafe(self, fn: Callable[[], None]) -> None:
        """Through the trio token (RunFinishedError, a RuntimeError, once trio is done)."""
        if self.trio_token is None:
            raise RuntimeError("the server has not started")
        self.trio_token.run_sync_soon(fn)

    def schedule_flush(self) -> None:
        self._flush_wanted.set()

    def write(self, transport_id: TransportId) -> None:
        """Send at once what the socket takes (no task switch per socket); a writer task
        sends the rest, and everything over TLS."""
        sock = self.sockets.get(transport_id)
        if sock is not None:
            sock.write()

    def close_transport(self, transport_id: TransportId) -> bool:
        sock = self.sockets.get(transport_id)
        if sock is None:
            return False
        if sock.close() and sock.write_scope is not None:
            sock.write_scope.deadline = trio.current_time() + _CLOSE_GRACE
        return True

    def run_callback(self, fn: Callable[..., Any], args: tuple[Any, ...],
                     answer: Answer) -> None:
        awaitable = self.call_back(fn, args, answer)
        if awaitable is not None:
            assert self._nursery is not None
            self._nursery.start_soon(self.answer_awaited, fn, awaitable, answer)

    def arm_timer(self, deadline: float) -> None:
        if self._timer_scope is not None:
            self._timer_scope.deadline = trio.current_time() + (deadline - self.now())

    async def post_webhook(self, target: WebhookTarget, request: bytes) -> bytes:
        with trio.fail_after(self.settings.auth_webhook_timeout):
            stream: trio.abc.Stream
            if target.secure:
                stream = await trio.open_ssl_over_tcp_stream(target.host, target.port,
                                                             https_compatible=True)
            else:
                stream = await trio.open_tcp_stream(target.host, target.port)
            async with stream:
                await stream.send_all(request)
                response = bytearray()
                while chunk := await stream.receive_some():
                    response += chunk
        return bytes(response)

    async def _run_flusher(self) -> None:
        """Call `flush_writes` once per turn of the run loop: the sockets that this turn's
        tasks gave bytes are written together, in one task step."""
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted = trio.Event()
            self.flush_writes()

    async def _run_timer(self) -> None:
        """The one timer: sleep until the Node's deadline, which `pump` moves."""
        while True:
            with trio.CancelScope() as scope:
                self._timer_scope = scope
                self.arm_timer(self.node.next_deadline())
                await trio.sleep_forever()
            self._timer_scope = None
            self.tick()


def _awaitable_selector() -> selectors.BaseSelector | None:
    """The platform's selector if it has a file descriptor trio can wait on (epoll,
    kqueue); else None, and plain sockets are read by a task each, as TLS ones are."""
    selector = selectors.DefaultSelector()
    if hasattr(selector, "fileno"):
        return selector
    selector.close()
    return None
