"""A realtime server on plain sockets and `selectors`: a new runtime adapter, in one file.

Written from ``docs/adapters.md`` alone, as proof that the guide is enough: one thread,
one selector, non-blocking sockets, the Node's deadline as the select timeout, and the
broker reached through the shared asyncio bridge. Run it with

    python examples/selectors_adapter/server.py --port 6001

It passes the single-node behaviour suite (``tests/behaviour``). Left out, to stay short:
TLS (wrap each accepted socket with ``ssl.SSLContext.wrap_socket(...,
do_handshake_on_connect=False)`` and handle ``SSLWantReadError``) and async callbacks.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import inspect
import logging
import selectors
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from realtime_asyncio.edge import Settings, build_node_config, new_epoch, new_node_id, random_id
from realtime_trio.bridge import BrokerBridge  # runtime-neutral: imports no trio

from realtime_proto import ChannelRule, Node
from realtime_proto.actions import (
    Authenticate,
    Authorize,
    BrokerPublish,
    BrokerSubscribe,
    BrokerUnsubscribe,
    CloseTransport,
    ConnectionInfo,
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

log = logging.getLogger("realtime")

CLOSE_GRACE = 5.0  # seconds a closing socket may take to drain before it is aborted
READ_BYTES = 65536


class Conn:
    """One client socket (guide step 3)."""

    def __init__(self, sock: socket.socket, transport_id: TransportId) -> None:
        self.sock = sock
        self.id = transport_id
        self.out = memoryview(b"")  # pulled from the Node, not yet written: one chunk in flight
        self.wants_pull = False  # a Transmit (or CloseTransport) came since the last pull
        self.closing = False  # CloseTransport came
        self.final = False  # `out` is the last pull: close once it is written
        self.reading = True  # until EOF
        self.abort_at = float("inf")
        self.mask = 0


class SelectorsServer:
    """The embedding API of `realtime_asyncio.RealtimeServer`, on one selector thread."""

    def __init__(self, settings: Settings | None = None, **options: Any) -> None:
        self.settings = settings or Settings(**options)
        self.node_id = self.settings.node_id or new_node_id()
        self.node = Node(build_node_config(self.settings, self.node_id, runtime="selectors"),
                         new_id=random_id, epoch=new_epoch())  # guide step 1
        self.close_timeout = CLOSE_GRACE
        self.conns: dict[TransportId, Conn] = {}
        self.broker: BrokerBridge | None = None
        self._hook: Callable[[Any], Any] | None = None
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._calls: collections.deque[Callable[[], object]] = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._dirty: dict[TransportId, None] = {}
        self._running = self._stopping = self._stopped = self._broker_closing = False
        self._stop_at = float("inf")

    # -- the application's API (call on the loop's thread, or through call_soon_threadsafe)

    def channel(self, pattern: str) -> ChannelRule:
        return self.node.hub.channel(pattern)

    def authenticate(self, hook: Callable[[Any], Any]) -> Callable[[Any], Any]:
        self._hook = hook
        self.node.config = replace(self.node.config, custom_authentication=True)
        return hook

    def broadcast(self, channel: str, event: str, data: JsonValue = None, *,
                  exclude: str | None = None) -> str:
        message_id = self.node.hub.broadcast(channel, event, data, now=time.monotonic(),
                                             exclude=ConnectionId(exclude) if exclude else None)
        self.pump()
        return message_id

    def send_to_user(self, user_id: str, event: str, data: JsonValue = None) -> str:
        message_id = self.node.hub.send_to_user(user_id, event, data, now=time.monotonic())
        self.pump()
        return message_id

    def send(self, connection_id: str, event: str, data: JsonValue = None) -> str | None:
        message_id = self.node.hub.send(ConnectionId(connection_id), event, data,
                                        now=time.monotonic())
        self.pump()
        return message_id

    def members(self, channel: str) -> list[Member]:
        return self.node.hub.members(channel)

    def channels(self) -> dict[str, int]:
        return self.node.hub.channels()

    def connection(self, connection_id: str) -> ConnectionInfo | None:
        return self.node.hub.connection(ConnectionId(connection_id))

    @property
    def port(self) -> int:
        assert self._listener is not None
        return int(self._listener.getsockname()[1])

    # -- running (guide steps 2 and 7) ----------------------------------------------------

    def call_soon_threadsafe(self, fn: Callable[[], object]) -> None:
        """Run `fn` on the loop's thread soon; the one method other threads may call."""
        self._calls.append(fn)
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway), or closed
            self._wake_w.send(b"\0")

    def start(self) -> None:
        """Connect the broker and listen (on the calling thread, which then must run
        `serve_forever`)."""
        result: list[BaseException | None] = []
        self.broker = BrokerBridge(self.settings.broker, self, node_id=self.node_id,
                                   call_soon=self.call_soon_threadsafe)
        self.broker.start(result.append)
        self._run_until(lambda: bool(result), timeout=10.0)
        if not result or result[0] is not None:
            self._release()
            raise result[0] if result else TimeoutError("the broker did not start")
        try:
            listener = socket.create_server((self.settings.host, self.settings.port),
                                            backlog=4096)
        except OSError:
            self.stop()
            self.serve_forever()  # until the broker has closed
            raise
        listener.setblocking(False)
        self._listener = listener
        self._selector.register(listener, selectors.EVENT_READ, "listener")
        self._running = True
        self.pump()
        log.info("realtime node %s serving on %s:%d", self.node_id, self.settings.host, self.port)

    def serve_forever(self) -> None:
        """Run the loop until `stop()` has finished, then release the selector."""
        self._run_until(lambda: self._stopped, timeout=None)
        self._release()

    def _release(self) -> None:
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: self.call_soon_threadsafe(self.stop))
        self.start()
        self.serve_forever()

    def stop(self) -> None:
        """Say goodbye to every client, then close the broker (guide step 8)."""
        if self._stopping:
            return
        self._stopping = True
        if self._listener is not None:
            self._selector.unregister(self._listener)
            self._listener.close()
        self._stop_at = time.monotonic() + self.close_timeout
        self.node.shutdown(now=time.monotonic())
        self.pump()
        self._flush_dirty()
        self._maybe_stopped()

    def _maybe_stopped(self) -> None:
        now = time.monotonic()
        if not self._stopping or self._broker_closing or (self.conns and now < self._stop_at):
            return
        for conn in list(self.conns.values()):
            self._drop(conn)
        self._broker_closing = True
        self._stop_at = now + 5.0  # for the broker to send what is queued
        if self.broker is not None:
            self.broker.close(lambda: setattr(self, "_stopped", True))

    def _run_until(self, condition: Callable[[], bool], timeout: float | None) -> None:
        deadline = float("inf") if timeout is None else time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            self._run_once(min(deadline, self._next_wake()) - time.monotonic())

    def _next_wake(self) -> float:
        aborts = (conn.abort_at for conn in self.conns.values())
        deadline = self.node.next_deadline() if self._running else float("inf")
        return min(deadline, self._stop_at, *aborts)

    def _run_once(self, timeout: float) -> None:
        for key, mask in self._selector.select(max(0.0, min(timeout, 3600.0))):
            if key.data is None:
                self._run_calls()
            elif key.data == "listener":
                self._accept()
            elif key.data.id in self.conns:
                conn = key.data
                if mask & selectors.EVENT_READ:
                    self._read(conn)
                if mask & selectors.EVENT_WRITE and conn.id in self.conns:
                    self._write(conn)
        now = time.monotonic()
        if self._running and now >= self.node.next_deadline():  # guide step 5
            self.node.tick(now=now)
            self.pump()
        for conn in [c for c in self.conns.values() if c.abort_at <= now]:
            self._drop(conn)
        self._flush_dirty()
        self._maybe_stopped()
        if self._broker_closing and now >= self._stop_at:
            self._stopped = True  # the broker did not finish closing in time

    def _run_calls(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while self._calls:
            self._calls.popleft()()

    # -- sockets (guide steps 3 and 4) ----------------------------------------------------

    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(64):
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # EMFILE and friends: try again on the next round
                log.warning("accept failed: %s", error)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn(sock, self.node.open_connection(
                now=time.monotonic(), peer=f"{address[0]}:{address[1]}"))
            self.conns[conn.id] = conn
            self._update_mask(conn)

    def _read(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self.node.receive_data(conn.id, data, now=time.monotonic())
        else:
            conn.reading = False
            self._update_mask(conn)
            self.node.receive_eof(conn.id, now=time.monotonic())
        self.pump()

    def _write(self, conn: Conn) -> None:
        """Send what is in flight; when it is all out, pull the next batch (one chunk)."""
        while True:
            if not conn.out:
                if conn.final:
                    self._drop(conn)
                    return
                if not conn.wants_pull:
                    break
                conn.wants_pull = False
                conn.final = conn.closing
                conn.out = memoryview(b"".join(self.node.data_to_send(conn.id)))
                continue
            try:
                sent = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(conn)
                return
            conn.out = conn.out[sent:]
        self._update_mask(conn)

    def _flush_dirty(self) -> None:
        dirty, self._dirty = self._dirty, {}
        for transport_id in dirty:
            conn = self.conns.get(transport_id)
            if conn is not None and not conn.out:  # else: writable readiness continues
                self._write(conn)

    def _update_mask(self, conn: Conn) -> None:
        mask = (selectors.EVENT_READ if conn.reading else 0) | (
            selectors.EVENT_WRITE if conn.out else 0)
        if mask == conn.mask:
            return
        if conn.mask == 0:
            self._selector.register(conn.sock, mask, conn)
        elif mask == 0:
            self._selector.unregister(conn.sock)
        else:
            self._selector.modify(conn.sock, mask, conn)
        conn.mask = mask

    def _drop(self, conn: Conn) -> None:
        """Close the socket now and tell the Node (which ignores it if it closed first)."""
        if self.conns.pop(conn.id, None) is None:
            return
        if conn.mask:
            self._selector.unregister(conn.sock)
        conn.sock.close()
        self.node.receive_eof(conn.id, now=time.monotonic())
        self.pump()

    # -- actions (guide step 4) ------------------------------------------------------------

    def handle(self, event: NodeEvent) -> None:
        self.node.handle(event, now=time.monotonic())
        self.pump()

    def pump(self) -> None:
        if not self._running:
            return  # before start: actions wait in the Node
        while actions := self.node.actions():
            for action in actions:
                match action:
                    case Transmit(transport_id):
                        if (conn := self.conns.get(transport_id)) is not None:
                            conn.wants_pull = True
                            self._dirty[transport_id] = None
                    case CloseTransport(transport_id):
                        conn = self.conns.get(transport_id)
                        if conn is None:
                            self.node.data_to_send(transport_id)  # gone: drop its last bytes
                        elif not conn.closing:
                            conn.closing = conn.wants_pull = True
                            conn.abort_at = time.monotonic() + CLOSE_GRACE
                            self._dirty[transport_id] = None
                    case BrokerPublish(topic, data):
                        assert self.broker is not None
                        self.broker.publish_nowait(topic, data)
                    case BrokerSubscribe(topic):
                        assert self.broker is not None
                        self.broker.subscribe_nowait(topic)
                    case BrokerUnsubscribe(topic):
                        assert self.broker is not None
                        self.broker.unsubscribe_nowait(topic)
                    case Authorize():
                        self.node.handle(self._answer(
                            action.callback, action.connection, action.channel,
                            answer=lambda r, e, rid=action.request_id:
                                authorization_answer(rid, r, e)), now=time.monotonic())
                    case Authenticate():
                        self.node.handle(self._answer(
                            self._hook or (lambda request: None), action.request,
                            answer=lambda r, e, rid=action.request_id:
                                authentication_answer(rid, r, e)), now=time.monotonic())

    def _answer(self, fn: Callable[..., Any], *args: Any,
                answer: Callable[[object, BaseException | None], NodeEvent]) -> NodeEvent:
        """Run a plain callback right here (it blocks the loop: keep it quick)."""
        try:
            result = fn(*args)
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                raise TypeError("this adapter runs plain callables only")
        except Exception as error:
            log.exception("callback %r failed", fn)
            return answer(None, error)
        return answer(result, None)

    # -- BrokerListener: the bridge calls these on our thread (guide step 6) ---------------

    def message_received(self, topic: str, data: bytes) -> None:
        self.handle(EnvelopeReceived(topic=topic, data=data))

    def connection_lost(self, reason: str) -> None:
        self.handle(BrokerLost(reason=reason))

    def connection_restored(self) -> None:
        self.handle(BrokerRestored())


def main() -> None:
    parser = argparse.ArgumentParser(description="realtime_proto on selectors")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6001)
    parser.add_argument("--broker", default="memory://")
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()
    logging.basicConfig(level="INFO")
    server = SelectorsServer(host=args.host, port=args.port, broker=args.broker,
                             api_key=args.api_key)
    if server.settings.api_key_generated:
        print(f"API key: {server.settings.api_key}", flush=True)
    server.run()


if __name__ == "__main__":
    main()
