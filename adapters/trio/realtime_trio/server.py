"""The trio adapter: sockets, one timer, callbacks and the broker around a Node."""

from __future__ import annotations

import logging
import signal
import socket
import ssl
from collections.abc import Callable
from typing import Any

import trio

from realtime_asyncio.base import Answer, ServerBase
from realtime_asyncio.edge import Settings, server_ssl_context
from realtime_brokers.bridge import BrokerBridge
from realtime_proto.events import TransportId
from realtime_proto.webhook import WebhookTarget

__all__ = ["RealtimeServer"]

log = logging.getLogger("realtime")

#: seconds a closing socket (and, at shutdown, the whole server) may take to drain
_CLOSE_GRACE = 5.0
#: seconds the broker may take to send what is queued and disconnect at shutdown
_BROKER_CLOSE_TIMEOUT = 5.0
#: bytes asked of a socket per read
_READ_BYTES = 65536


class _Socket:
    """One client socket: its stream, its writer's state and its closing state."""

    __slots__ = ("closing", "held", "id", "raw", "scope", "stream", "unsent", "wake",
                 "write_scope")

    def __init__(self, stream: trio.abc.Stream, raw: socket.socket | None,
                 transport_id: TransportId) -> None:
        self.stream = stream
        #: the plain socket under `stream`, for sends that do not block (None: TLS)
        self.raw = raw
        self.id = transport_id
        self.wake = trio.Event()
        #: the writer task has the socket: a send would block, or the socket is closing
        self.held = False
        #: what a direct send left, for the writer
        self.unsent = b""
        self.closing = False
        #: bounds the writer once the Node has asked for a close
        self.write_scope = trio.CancelScope()
        #: the nursery of the reader and the writer
        self.scope = trio.CancelScope()

    def hand_over(self, unsent: bytes) -> None:
        """Give the socket to its writer task, with what a direct send left."""
        self.unsent = unsent
        self.held = True
        self.wake.set()


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
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._run_timer)
                nursery.start_soon(self._run_flusher)
                nursery.start_soon(self._accept)
                await self._drained.wait()
                nursery.cancel_scope.cancel()

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
        try:
            host, port = tcp.socket.getpeername()[:2]
            peer: str | None = f"{host}:{port}"
        except OSError:
            peer = None
        stream: trio.abc.Stream
        raw: socket.socket | None = None
        if self._ssl_context is not None:
            stream = trio.SSLStream(tcp, self._ssl_context, server_side=True,
                                    https_compatible=True)
        else:  # the stream over a socket object we hold too: `write` sends on it directly
            raw = socket.socket(fileno=tcp.socket.detach())
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(raw))
        sock = _Socket(stream, raw, self.node.open_connection(
            now=self.now(), peer=peer, secure=self._ssl_context is not None))
        self.sockets[sock.id] = sock
        try:
            with sock.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write, sock)
                    await self._read(sock)
        except Exception:
            log.exception("serving socket %s failed", sock.id)
        finally:
            del self.sockets[sock.id]
            self.node.receive_eof(sock.id, now=self.now())  # no effect if the Node closed it
            self.pump()
            await trio.aclose_forcefully(stream)
            if self._shutting_down and not self.sockets:
                self._drained.set()

    async def _read(self, sock: _Socket) -> None:
        try:
            while data := await sock.stream.receive_some(_READ_BYTES):
                # bytes() is free for the bytes a socket returns (SSLStream: a bytearray)
                self.node.receive_data(sock.id, bytes(data), now=self.now())
                self.pump()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self.node.receive_eof(sock.id, now=self.now())
        self.pump()

    async def _write(self, sock: _Socket) -> None:
        """Write while the socket is handed over (TLS, a send that would block, a close),
        then hand it back to `write`; close it after the last pull."""
        with sock.write_scope:
            try:
                while True:
                    await sock.wake.wait()
                    sock.wake = trio.Event()
                    if await self._drain(sock):
                        break
                    sock.held = False
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        sock.scope.cancel()

    async def _drain(self, sock: _Socket) -> bool:
        """Send what a direct send left, then pull and send until the Node has nothing
        more, one `send_all` per pull: nothing is pulled while a send is in progress (the
        Node's buffer, and its slow-consumer rule, hold the rest). True once a closing
        socket's last bytes are out."""
        if sock.unsent:
            unsent, sock.unsent = sock.unsent, b""
            await sock.stream.send_all(unsent)
        while True:
            closing = sock.closing
            chunks = self.node.data_to_send(sock.id)
            if chunks:
                await sock.stream.send_all(b"".join(chunks))
            if closing or not chunks:
                return closing

    # -- the hooks of ServerBase ---------------------------------------------------------

    def call_soon_threadsafe(self, fn: Callable[[], None]) -> None:
        """Through the trio token (RunFinishedError, a RuntimeError, once trio is done)."""
        if self.trio_token is None:
            raise RuntimeError("the server has not started")
        self.trio_token.run_sync_soon(fn)

    def schedule_flush(self) -> None:
        self._flush_wanted.set()

    def write(self, transport_id: TransportId) -> None:
        """Send at once what the socket takes (no task switch per socket); its writer task
        sends the rest, and everything over TLS."""
        sock = self.sockets.get(transport_id)
        if sock is None or sock.held:
            return
        if sock.raw is None:
            sock.hand_over(b"")
        elif unsent := self.send_nowait(transport_id, sock.raw.send):
            sock.hand_over(unsent)

    def close_transport(self, transport_id: TransportId) -> bool:
        sock = self.sockets.get(transport_id)
        if sock is None:
            return False
        if not sock.closing:
            sock.closing = True
            sock.write_scope.deadline = trio.current_time() + _CLOSE_GRACE
            if not sock.held:
                sock.hand_over(b"")
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
