"""The gevent adapter: sockets, one timer, callbacks and the broker around a Node."""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable
from typing import Any

import gevent  # type: ignore[import-untyped]
import gevent.event  # type: ignore[import-untyped]
import gevent.monkey  # type: ignore[import-untyped]
import gevent.pool  # type: ignore[import-untyped]
import gevent.server  # type: ignore[import-untyped]
import gevent.socket  # type: ignore[import-untyped]
import gevent.ssl  # type: ignore[import-untyped]

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
#: seconds the broker may take to connect (its own connect_timeout decides first)
_BROKER_START_TIMEOUT = 300.0
#: seconds the broker may take to send what is queued at shutdown
_BROKER_CLOSE_TIMEOUT = 5.0


class _Socket(ClientSocket):
    """One client socket. A plain socket (`raw`) is a non-blocking `_socket.socket` read by
    a libev watcher's callback in the hub: no greenlet while idle. A TLS socket (`tls`) is a
    `gevent.ssl` socket read by a greenlet. A writer greenlet exists only while a send would
    block, or while the socket closes."""

    __slots__ = ("abort", "reader", "tls", "writer")
    server: RealtimeServer

    def __init__(self, server: RealtimeServer, transport_id: TransportId,
                 raw: _socket.socket | None, tls: Any = None) -> None:
        super().__init__(server, transport_id, raw)
        self.tls = tls
        #: the plain socket's read watcher, until its EOF
        self.reader: Any = None
        #: the writer greenlet, while it has the socket
        self.writer: Any = None
        #: the loop timer that ends a close which did not drain within the grace period
        self.abort: Any = None

    def start_writer(self) -> None:
        self.writer = gevent.spawn(self.server._write, self)

    def stop_reading(self) -> None:
        self.reader.close()
        self.reader = None


class RealtimeServer(ServerBase):
    """A realtime server inside a gevent program.

    Register rules with `channel(pattern).authorize(fn)` and an `authenticate` hook,
    `start()` (or `serve_forever()`, or `run()` to also handle SIGINT and SIGTERM), then
    publish with `broadcast`, `send_to_user` and `send` from any greenlet or thread
    (other OS threads are handed to the hub's loop). Callbacks are plain callables, each
    run in its own greenlet, so they may block cooperatively (gevent sockets,
    monkey-patched drivers). Works with and without monkey-patching.
    """

    runtime = "gevent"

    def __init__(self, settings: Settings | None = None, **options: Any) -> None:
        super().__init__(settings, **options)
        self.sockets: dict[TransportId, _Socket] = {}
        self.hub: Any = None
        self._server: Any = None
        self._ssl_context: Any = None
        self._callbacks = gevent.pool.Group()
        self._timer: Any = None
        self._timer_at: float | None = None
        self._stopping = False
        self._drained = gevent.event.Event()
        self._stopped = gevent.event.Event()

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return int(self._server.server_port)

    # -- running -------------------------------------------------------------------------

    def start(self) -> None:
        """Connect the broker and start listening; returns once serving.

        Raises:
            OSError: the address is in use or cannot be bound.
            BrokerUnavailable: the broker cannot be reached.
        """
        self.hub = gevent.get_hub()
        context = server_ssl_context(self.settings, context_class=gevent.ssl.SSLContext)
        self.broker = broker = BrokerBridge(
            self.settings.broker, self, node_id=self.node_id,
            call_soon=self.hub.loop.run_callback_threadsafe,
            start_thread=_start_os_thread, new_loop=_new_asyncio_loop,
            history=self.history_store)
        self.history = broker
        started = gevent.event.AsyncResult()
        broker.start(started.set)
        # bounded by the broker's connect_timeout; the timeout here also keeps the hub
        # waiting (a callback from another thread is no watcher of its loop)
        error = started.get(timeout=_BROKER_START_TIMEOUT)
        if error is not None:
            raise error
        self._ssl_context = context
        self._server = gevent.server.StreamServer(
            (self.settings.host, self.settings.port), self._serve_socket, backlog=4096)
        try:
            self._server.start()
        except BaseException:
            self._close_broker()
            raise
        self.running = True
        self.pump()
        log.info("realtime node %s serving on %s:%d (broker %s)", self.node_id,
                 self.settings.host, self.port, self.settings.broker.partition("?")[0])

    def serve_forever(self) -> None:
        """Start, then serve until `stop()`."""
        self.start()
        self._stopped.wait()

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM."""
        handlers = [gevent.signal_handler(signum, self.stop)
                    for signum in (signal.SIGINT, signal.SIGTERM)]
        try:
            self.serve_forever()
        finally:
            for handler in handlers:
                handler.cancel()

    def stop(self, timeout: float = _CLOSE_GRACE) -> None:
        """Close every client (WebSocket 1001, SSE ended, polls answered) within
        `timeout`, then stop the broker; returns once stopped. Call from a greenlet of
        the server's thread, not from a hub callback."""
        if self._stopping:
            self._stopped.wait()
            return
        self._stopping = True
        if self._server is not None:
            self._server.close()
        self.node.shutdown(now=self.now())
        self.pump()
        if self.sockets:
            self._drained.clear()
            self._drained.wait(timeout)
        gevent.killall([sock.writer for sock in self.sockets.values() if sock.writer],
                       timeout=1)  # each closes its socket
        for sock in list(self.sockets.values()):
            self._finish(sock)
        self._callbacks.kill(timeout=1)
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        self.running = False
        self._close_broker()
        self._stopped.set()

    def _close_broker(self) -> None:
        if isinstance(self.broker, BrokerBridge):
            closed = gevent.event.Event()
            self.broker.close(closed.set)
            closed.wait(_BROKER_CLOSE_TIMEOUT)

    # -- sockets -------------------------------------------------------------------------

    def _serve_socket(self, client: Any, address: Any) -> None:
        """Set up an accepted socket, in the greenlet the server spawned for it. A plain
        one gets a read watcher and the greenlet ends; a TLS one is read here."""
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else None
        secure = self._ssl_context is not None
        transport_id = self.node.open_connection(now=self.now(), peer=peer, secure=secure)
        if not secure:  # our own socket object: the server closes `client` on return
            raw = _socket.socket(fileno=client.detach())
            raw.setblocking(False)
            sock = _Socket(self, transport_id, raw)
            self.sockets[sock.id] = sock
            sock.reader = self.hub.loop.io(raw.fileno(), 1)
            sock.reader.start(sock.receive)
            return
        # the handshake happens in `_read`, where its failure is an EOF
        sock = _Socket(self, transport_id, None, self._ssl_context.wrap_socket(
            client, server_side=True, do_handshake_on_connect=False))
        self.sockets[sock.id] = sock
        self._read(sock)

    def _read(self, sock: _Socket) -> None:
        """Read a TLS socket until EOF, or until `_finish` closes it."""
        try:
            sock.tls.do_handshake()
            while data := sock.tls.recv(READ_BYTES):
                self.node.receive_data(sock.id, data, now=self.now())
                self.pump()
        except OSError:  # reset, closed, or a TLS failure (ssl.SSLError is an OSError)
            pass
        self.node.receive_eof(sock.id, now=self.now())  # no effect if the Node closed it
        self.pump()

    def _write(self, sock: _Socket) -> None:
        """The writer greenlet (`ClientSocket.start_writer`): send the socket's batches,
        blocking cooperatively, then hand it back to direct sends; or, once it is closing
        (or it failed, or the close took too long), close it."""
        try:
            if sock.raw is not None:
                for _ in sock.drain():
                    gevent.socket.wait_write(sock.raw.fileno())
            else:
                for data in sock.batches():
                    sock.tls.sendall(data)
        except OSError:
            pass
        finally:
            sock.writer = None
            if sock.release():
                self._finish(sock)

    def _abort(self, sock: _Socket) -> None:
        """A close did not drain within the grace period (a hub callback)."""
        writer = sock.writer
        if writer is not None:
            writer.kill(block=False)  # it closes the socket, unless it never started
        if writer is None or writer.dead:
            self._finish(sock)

    def _finish(self, sock: _Socket) -> None:
        """Forget a socket and close it (a TLS socket's reading greenlet then ends)."""
        if self.sockets.pop(sock.id, None) is None:
            return
        for watcher in (sock.reader, sock.abort):
            if watcher is not None:
                watcher.close()
        sock.reader = sock.abort = None
        self.node.receive_eof(sock.id, now=self.now())  # no effect if the Node closed it
        self.pump()
        (sock.tls if sock.raw is None else sock.raw).close()
        if self._stopping and not self.sockets:
            self._drained.set()

    # -- the hooks of ServerBase ---------------------------------------------------------

    @staticmethod
    def thread_ident() -> int:
        """The OS thread's id even under monkey-patching: greenlets of the hub's thread
        call the API directly."""
        return int(_os_thread_ident())

    @staticmethod
    def allocate_lock() -> Any:
        """A lock that blocks a real OS thread even under monkey-patching."""
        return _os_thread_lock()

    def call_soon_threadsafe(self, fn: Callable[[], None]) -> None:
        if self.hub is None:
            raise RuntimeError("the server has not started")
        self.hub.loop.run_callback_threadsafe(fn)

    def schedule_flush(self) -> None:
        """A hub callback: it runs after the greenlets and callbacks that are ready now."""
        self.hub.loop.run_callback(self.flush_writes)

    def write(self, transport_id: TransportId) -> None:
        """Send at once what the socket takes (no greenlet switch per socket); a writer
        greenlet sends the rest, and everything over TLS."""
        sock = self.sockets.get(transport_id)
        if sock is not None:
            sock.write()

    def close_transport(self, transport_id: TransportId) -> bool:
        sock = self.sockets.get(transport_id)
        if sock is None:
            return False
        if sock.close():
            sock.abort = self.hub.loop.timer(_CLOSE_GRACE)
            sock.abort.start(self._abort, sock)
        return True

    def run_callback(self, fn: Callable[..., Any], args: tuple[Any, ...],
                     answer: Answer) -> None:
        """Each callback in a greenlet of its own: it may block cooperatively, and the
        pump (which may run in a hub callback) never does."""
        def run() -> None:
            awaitable = self.call_back(fn, args, answer)
            if awaitable is not None:
                self.refuse_awaitable(fn, awaitable, answer)

        self._callbacks.spawn(run)

    def arm_timer(self, deadline: float) -> None:
        """The one timer: a loop timer at the Node's deadline, moved when that changes."""
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.close()
        self._timer_at = deadline
        self._timer = self.hub.loop.timer(max(0.0, deadline - self.now()))
        self._timer.start(self._on_timer)

    def post_webhook(self, target: WebhookTarget, request: bytes) -> bytes:
        """In the rule's own greenlet (see `run_callback`): it blocks cooperatively."""
        late = TimeoutError(f"the auth webhook took over {self.settings.auth_webhook_timeout} s")
        with gevent.Timeout(self.settings.auth_webhook_timeout, late), \
                contextlib.ExitStack() as sockets:
            sock = sockets.enter_context(
                gevent.socket.create_connection((target.host, target.port)))
            if target.secure:
                sock = sockets.enter_context(gevent.ssl.create_default_context().wrap_socket(
                    sock, server_hostname=target.host))
            sock.sendall(request)
            response = bytearray()
            while chunk := sock.recv(65536):
                response += chunk
        return bytes(response)

    def _on_timer(self) -> None:
        self._timer_at = None
        self.tick()


#: the unpatched `_thread` functions (the originals, whether patched before or after import)
_os_thread_ident = gevent.monkey.get_original("_thread", "get_ident")
_os_thread_lock = gevent.monkey.get_original("_thread", "allocate_lock")


def _start_os_thread(target: Callable[[], None]) -> None:
    """A real thread even under monkey-patching (where `threading` makes greenlets)."""
    start_new_thread = gevent.monkey.get_original("_thread", "start_new_thread")
    start_new_thread(target, ())


class _UnpatchedLoop(asyncio.SelectorEventLoop):
    """The broker's asyncio loop, safe in a monkey-patched process: it waits on the
    original selector (a patched one would wait on a gevent hub that nobody runs in that
    thread) and resolves names without the default executor (whose threads would be
    greenlets there)."""

    def __init__(self) -> None:
        super().__init__(gevent.monkey.get_original("selectors", "DefaultSelector")())

    async def getaddrinfo(self, *args: Any, **kwargs: Any) -> Any:
        return gevent.monkey.get_original("socket", "getaddrinfo")(*args, **kwargs)


def _new_asyncio_loop() -> asyncio.AbstractEventLoop:
    return _UnpatchedLoop()
