"""The gevent adapter: sockets, one timer, callbacks and the broker around a Node."""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, assert_never

import gevent  # type: ignore[import-untyped]
import gevent.event  # type: ignore[import-untyped]
import gevent.monkey  # type: ignore[import-untyped]
import gevent.pool  # type: ignore[import-untyped]
import gevent.server  # type: ignore[import-untyped]
import gevent.ssl  # type: ignore[import-untyped]
from realtime_asyncio.edge import (
    Settings,
    build_node_config,
    new_epoch,
    new_node_id,
    random_id,
    server_ssl_context,
)
from realtime_trio.bridge import BrokerBridge

from realtime_proto import ChannelRule, Node
from realtime_proto.actions import (
    Authenticate,
    Authorize,
    BrokerPublish,
    BrokerSubscribe,
    BrokerUnsubscribe,
    CloseTransport,
    ConnectionInfo,
    NodeAction,
    Transmit,
)
from realtime_proto.callbacks import authentication_answer, authorization_answer
from realtime_proto.events import (
    BrokerLost,
    BrokerRestored,
    ConnectionId,
    EnvelopeReceived,
    NodeEvent,
    TransportId,
)
from realtime_proto.message import JsonValue
from realtime_proto.presence import Member

__all__ = ["RealtimeServer"]

log = logging.getLogger("realtime")

#: seconds a closing socket (and, at shutdown, the whole server) may take to drain
_CLOSE_GRACE = 5.0
#: seconds the broker may take to start, and to send what is queued at shutdown
_BROKER_TIMEOUT = 10.0
#: bytes asked of a socket per read
_READ_BYTES = 65536

Answer = Callable[[object, BaseException | None], NodeEvent]


class _Socket:
    """One client socket: its greenlets, its writer's wake-up and its closing state."""

    __slots__ = ("abort", "closing", "handler", "id", "sock", "wake")

    def __init__(self, sock: Any, transport_id: TransportId) -> None:
        self.sock = sock
        self.id = transport_id
        self.wake = gevent.event.Event()
        self.closing = False
        #: the greenlet that reads (and owns the socket); killing it closes the socket
        self.handler: Any = gevent.getcurrent()
        #: kills `handler` if a close does not drain within the grace period
        self.abort: Any = None


class RealtimeServer:
    """A realtime server inside a gevent program.

    Register rules with `channel(pattern).authorize(fn)` and an `authenticate` hook,
    `start()` (or `serve_forever()`, or `run()` to also handle SIGINT and SIGTERM), then
    publish with `broadcast`, `send_to_user` and `send` from the server's thread.
    Callbacks are plain callables, each run in its own greenlet, so they may block
    cooperatively (gevent sockets, monkey-patched drivers). Works with and without
    monkey-patching. Other threads reach the server through its hub:
    ``server.hub.loop.run_callback_threadsafe(server.broadcast, …)``.
    """

    def __init__(self, settings: Settings | None = None, **options: Any) -> None:
        self.settings = settings or Settings(**options)
        self.node_id = self.settings.node_id or new_node_id()
        self.node = Node(build_node_config(self.settings, self.node_id, runtime="gevent"),
                         new_id=random_id, epoch=new_epoch())
        self.sockets: dict[TransportId, _Socket] = {}
        self.broker: BrokerBridge | None = None
        self.hub: Any = None
        self._authenticate_hook: Callable[[Any], Any] | None = None
        self._server: Any = None
        self._ssl_context: Any = None
        self._callbacks = gevent.pool.Group()
        self._timer: Any = None
        self._timer_at: float | None = None
        self._running = False
        self._pumping = False
        self._stopping = False
        self._drained = gevent.event.Event()
        self._stopped = gevent.event.Event()

    # -- the application's API -----------------------------------------------------------

    def channel(self, pattern: str) -> ChannelRule:
        """The authorization rule for a channel pattern; `.authorize(fn)` registers fn."""
        return self.node.hub.channel(pattern)

    def authenticate(self, hook: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """Register the hook that turns a connecting request into a user (a decorator).

        The hook gets an `AuthenticationRequest` (token, path, query, headers, peer) and
        returns a `User` (or a user id), None for anonymous, or False to refuse (401).
        """
        self._authenticate_hook = hook
        self.node.config = replace(self.node.config, custom_authentication=True)
        return hook

    def broadcast(self, channel: str, event: str, data: JsonValue = None, *,
                  exclude: str | None = None) -> str:
        """Publish to a channel's subscribers on every node; the message id."""
        message_id = self.node.hub.broadcast(channel, event, data, now=self.now(),
                                             exclude=ConnectionId(exclude) if exclude else None)
        self.pump()
        return message_id

    def send_to_user(self, user_id: str, event: str, data: JsonValue = None) -> str:
        """Send to every connection of a user, on every node; the message id."""
        message_id = self.node.hub.send_to_user(user_id, event, data, now=self.now())
        self.pump()
        return message_id

    def send(self, connection_id: str, event: str, data: JsonValue = None) -> str | None:
        """Send to one connection of this node; the message id, or None if unknown."""
        message_id = self.node.hub.send(ConnectionId(connection_id), event, data, now=self.now())
        self.pump()
        return message_id

    def members(self, channel: str) -> list[Member]:
        """Members of a presence channel across the cluster."""
        return self.node.hub.members(channel)

    def channels(self) -> dict[str, int]:
        """Channels with subscribers on this node, and how many."""
        return self.node.hub.channels()

    def connection(self, connection_id: str) -> ConnectionInfo | None:
        """A snapshot of one connection of this node."""
        return self.node.hub.connection(ConnectionId(connection_id))

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return int(self._server.server_port)

    # -- running -------------------------------------------------------------------------

    def now(self) -> float:
        """Monotonic seconds, the Node's clock (the one `new_epoch` read)."""
        return time.monotonic()

    def start(self) -> None:
        """Connect the broker and start listening; returns once serving.

        Raises:
            OSError: the address is in use or cannot be bound.
            BrokerUnavailable: the broker cannot be reached.
        """
        self.hub = gevent.get_hub()
        context = server_ssl_context(self.settings, context_class=gevent.ssl.SSLContext)
        self.broker = BrokerBridge(self.settings.broker, self, node_id=self.node_id,
                                   call_soon=self.hub.loop.run_callback_threadsafe,
                                   start_thread=_start_os_thread, new_loop=_new_asyncio_loop)
        started = gevent.event.AsyncResult()
        self.broker.start(started.set)
        error = started.get(timeout=_BROKER_TIMEOUT)
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
        self._running = True
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
        handlers = [sock.handler for sock in self.sockets.values()]
        gevent.killall(handlers, timeout=1)
        self._callbacks.kill(timeout=1)
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        self._running = False
        self._close_broker()
        self._stopped.set()

    def _close_broker(self) -> None:
        if self.broker is not None:
            closed = gevent.event.Event()
            self.broker.close(closed.set)
            closed.wait(_BROKER_TIMEOUT)

    # -- sockets -------------------------------------------------------------------------

    def _serve_socket(self, client: Any, address: Any) -> None:
        """One socket's greenlet: read until EOF, while a second greenlet writes."""
        peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else None
        secure = self._ssl_context is not None
        if secure:  # the handshake happens in `_read`, where its failure is an EOF
            client = self._ssl_context.wrap_socket(client, server_side=True,
                                                   do_handshake_on_connect=False)
        sock = _Socket(client, self.node.open_connection(now=self.now(), peer=peer,
                                                         secure=secure))
        self.sockets[sock.id] = sock
        writer = gevent.spawn(self._write, sock)
        try:
            self._read(sock)
            writer.join()
        except gevent.GreenletExit:
            pass
        finally:
            del self.sockets[sock.id]
            writer.kill(block=False)
            if sock.abort is not None:
                sock.abort.kill(block=False)
            self.node.receive_eof(sock.id, now=self.now())  # no effect if the Node closed it
            self.pump()
            client.close()
            if self._stopping and not self.sockets:
                self._drained.set()

    def _read(self, sock: _Socket) -> None:
        try:
            if self._ssl_context is not None:
                sock.sock.do_handshake()
            while data := sock.sock.recv(_READ_BYTES):
                self.node.receive_data(sock.id, data, now=self.now())
                self.pump()
        except OSError:  # reset, or a TLS failure (ssl.SSLError is an OSError)
            pass
        self.node.receive_eof(sock.id, now=self.now())
        self.pump()

    def _write(self, sock: _Socket) -> None:
        """Write what the Node has, one `sendall` per wake-up; pull nothing more while a
        send is in progress (the Node's buffer, and its slow-consumer rule, hold the rest)."""
        try:
            while True:
                sock.wake.wait()
                sock.wake.clear()
                closing = sock.closing
                chunks = self.node.data_to_send(sock.id)
                if chunks:
                    sock.sock.sendall(b"".join(chunks))
                if closing:
                    break
        except OSError:
            pass
        sock.handler.kill(block=False)

    # -- driving the Node ----------------------------------------------------------------

    def handle(self, event: NodeEvent) -> None:
        """Feed an event to the Node and carry out what follows."""
        self.node.handle(event, now=self.now())
        self.pump()

    def pump(self) -> None:
        """Carry out every action the Node has produced, then re-arm the timer.

        Never blocks, so it may run in a hub callback (the timer, the broker bridge).
        """
        if self._pumping or not self._running:
            return  # before `start`, actions wait in the Node
        self._pumping = True
        try:
            while actions := self.node.actions():
                for action in actions:
                    self._carry_out(action)
        finally:
            self._pumping = False
        self._arm_timer()

    def _carry_out(self, action: NodeAction) -> None:
        broker = self.broker
        assert broker is not None
        match action:
            case Transmit(transport_id):
                sock = self.sockets.get(transport_id)
                if sock is not None:
                    sock.wake.set()
            case CloseTransport(transport_id):
                sock = self.sockets.get(transport_id)
                if sock is None:
                    self.node.data_to_send(transport_id)  # gone already: drop its last bytes
                elif not sock.closing:
                    sock.closing = True
                    sock.wake.set()
                    sock.abort = gevent.spawn_later(_CLOSE_GRACE, sock.handler.kill,
                                                    block=False)
            case BrokerPublish(topic, data):
                broker.publish_nowait(topic, data)
            case BrokerSubscribe(topic):
                broker.subscribe_nowait(topic)
            case BrokerUnsubscribe(topic):
                broker.unsubscribe_nowait(topic)
            case Authorize():
                request_id = action.request_id
                self._callbacks.spawn(
                    self._call, action.callback, (action.connection, action.channel),
                    lambda result, error: authorization_answer(request_id, result, error))
            case Authenticate():
                request_id = action.request_id
                self._callbacks.spawn(
                    self._call, self._authenticate_hook or _anonymous, (action.request,),
                    lambda result, error: authentication_answer(request_id, result, error))
            case _:
                assert_never(action)

    def _call(self, fn: Callable[..., Any], args: tuple[Any, ...], answer: Answer) -> None:
        """Run an application callback in this greenlet and feed its answer back."""
        try:
            result = fn(*args)
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                raise TypeError("gevent callbacks must be plain callables, not async")
        except Exception as error:
            log.exception("callback %r failed", fn)
            self.handle(answer(None, error))
        else:
            self.handle(answer(result, None))

    def _arm_timer(self) -> None:
        """The one timer: a loop timer at the Node's deadline, moved when that changes."""
        deadline = self.node.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.close()
        self._timer_at = deadline
        self._timer = self.hub.loop.timer(max(0.0, deadline - self.now()))
        self._timer.start(self._on_timer)

    def _on_timer(self) -> None:
        self._timer_at = None
        self.node.tick(now=self.now())
        self.pump()

    # -- BrokerListener (called in the hub by the bridge) -------------------------------

    def message_received(self, topic: str, data: bytes) -> None:
        self.handle(EnvelopeReceived(topic=topic, data=data))

    def connection_lost(self, reason: str) -> None:
        log.warning("broker connection lost: %s", reason)
        self.handle(BrokerLost(reason=reason))

    def connection_restored(self) -> None:
        log.warning("broker connection restored")
        self.handle(BrokerRestored())


def _anonymous(request: object) -> None:
    return None


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
