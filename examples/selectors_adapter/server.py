"""A realtime server on plain sockets and `selectors`: a new runtime adapter, in one file.

Written from ``docs/adapters.md`` alone, as proof that the guide is enough: one thread,
one selector, non-blocking sockets (each a ``realtime_server.sockets.ClientSocket``, whose
writer here is writable readiness), the Node's deadline as the select timeout, and the
broker reached through the shared asyncio bridge. Run it with

    python examples/selectors_adapter/server.py --port 6001

It passes the behaviour suite (``realtime_behaviour``, run in ``tests/behaviour``). Left out:
TLS (wrap each accepted socket with ``ssl.SSLContext.wrap_socket(...,
do_handshake_on_connect=False)`` and handle ``SSLWantReadError``), async callbacks, and the
auth webhook (``post_webhook``: a blocking HTTP call would stall the one thread, so with
``auth_webhook`` set every subscription the webhook would decide is refused with 4500).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import selectors
import signal
import socket
from collections.abc import Callable, Iterator
from typing import Any

from realtime_brokers.bridge import BrokerBridge
from realtime_proto.events import TransportId
from realtime_server.base import Answer, ServerBase  # runtime-neutral: neither imports trio
from realtime_server.edge import Settings
from realtime_server.sockets import ClientSocket

log = logging.getLogger("realtime")

CLOSE_GRACE = 5.0  # seconds a closing socket may take to drain before it is aborted


class Conn(ClientSocket):
    """One client socket (guide steps 3 and 4). `ClientSocket` reads it, sends directly and
    hands over to the writer once a send would block; here the writer is `drain()`, resumed
    whenever the selector reports the socket writable."""

    __slots__ = ("abort_at", "mask", "pending", "reading", "sock")
    server: SelectorsServer

    def __init__(self, server: SelectorsServer, sock: socket.socket,
                 transport_id: TransportId) -> None:
        super().__init__(server, transport_id, sock)
        self.sock = sock  # `raw`, typed as the plain socket it always is here
        self.pending: Iterator[None] | None = None  # the writer, paused until writable
        self.reading = True  # until EOF
        self.abort_at = float("inf")
        self.mask = 0

    def start_writer(self) -> None:
        self.pending = self.drain()
        self.server.update_mask(self)  # the next writable readiness resumes it

    def stop_reading(self) -> None:
        self.reading = False
        self.server.update_mask(self)


class SelectorsServer(ServerBase):
    """The embedding API of `realtime_asyncio.RealtimeServer`, on one selector thread."""

    runtime = "selectors"  # guide step 1: ServerBase builds the Node

    def __init__(self, settings: Settings | None = None, **options: Any) -> None:
        super().__init__(settings, **options)
        self.close_timeout = CLOSE_GRACE
        self.conns: dict[TransportId, Conn] = {}
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._calls: collections.deque[Callable[[], object]] = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._stopping = self._stopped = self._broker_closing = False
        self._stop_at = float("inf")

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
        self.broker = broker = BrokerBridge(self.settings.broker, self, node_id=self.node_id,
                                            call_soon=self.call_soon_threadsafe,
                                            history=self.history_store)
        self.history = broker
        broker.start(result.append)
        self._run_until(lambda: bool(result), timeout=10.0)
        error = result[0] if result else TimeoutError("the broker did not start in 10 s")
        if error is not None:
            self._release()
            raise error
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
        self.running = True
        self.pump()
        log.info("realtime node %s serving on %s:%d", self.node_id, self.settings.host, self.port)

    def serve_forever(self) -> None:
        """Run the loop until `stop()` has finished, then release the selector."""
        self._run_until(lambda: self._stopped, timeout=None)
        self._release()

    def _release(self) -> None:
        self.running = False  # the application API raises ServerNotStarted from now on
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
        self._stop_at = self.now() + self.close_timeout
        self.node.shutdown(now=self.now())
        self.pump()
        self.flush_writes()
        self._maybe_stopped()

    def _maybe_stopped(self) -> None:
        now = self.now()
        if not self._stopping or self._broker_closing or (self.conns and now < self._stop_at):
            return
        for conn in list(self.conns.values()):
            self._drop(conn)
        self._broker_closing = True
        self._stop_at = now + 5.0  # for the broker to send what is queued
        if isinstance(self.broker, BrokerBridge):
            self.broker.close(lambda: setattr(self, "_stopped", True))

    def _run_until(self, condition: Callable[[], bool], timeout: float | None) -> None:
        deadline = float("inf") if timeout is None else self.now() + timeout
        while not condition() and self.now() < deadline:
            self._run_once(min(deadline, self._next_wake()) - self.now())

    def _next_wake(self) -> float:
        aborts = (conn.abort_at for conn in self.conns.values())
        deadline = self.node.next_deadline() if self.running else float("inf")
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
                    conn.receive()
                if mask & selectors.EVENT_WRITE and conn.pending is not None:
                    self._resume_writer(conn)
        now = self.now()
        if self.running and now >= self.node.next_deadline():  # guide step 5
            self.tick()
        for conn in [c for c in self.conns.values() if c.abort_at <= now]:
            self._drop(conn)
        self.flush_writes()  # what this round's events queued, once per socket
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
            conn = Conn(self, sock, self.node.open_connection(
                now=self.now(), peer=f"{address[0]}:{address[1]}"))
            self.conns[conn.id] = conn
            self.update_mask(conn)

    def _resume_writer(self, conn: Conn) -> None:
        """The socket is writable: send on until it would block again, or until the Node
        has nothing more (then direct sends resume, or a closing socket is closed)."""
        assert conn.pending is not None
        try:
            next(conn.pending)
            return  # it would block again: wait for the next writable readiness
        except StopIteration:
            close = conn.release()
        except OSError:
            close = True
        conn.pending = None
        if close:
            self._drop(conn)
        else:
            self.update_mask(conn)

    def update_mask(self, conn: Conn) -> None:
        """Watch the socket for what it waits for: reads until EOF, writes while its writer
        waits."""
        mask = (selectors.EVENT_READ if conn.reading else 0) | (
            selectors.EVENT_WRITE if conn.pending is not None else 0)
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
        conn.pending = None
        conn.sock.close()
        self.node.receive_eof(conn.id, now=self.now())
        self.pump()

    # -- the hooks of ServerBase (guide step 4) -------------------------------------------

    def schedule_flush(self) -> None:
        """Nothing to do: every round of the loop ends with `flush_writes`."""

    def write(self, transport_id: TransportId) -> None:
        if (conn := self.conns.get(transport_id)) is not None:
            conn.write()

    def close_transport(self, transport_id: TransportId) -> bool:
        conn = self.conns.get(transport_id)
        if conn is None:
            return False
        if conn.close():
            conn.abort_at = self.now() + CLOSE_GRACE
        return True

    def run_callback(self, fn: Callable[..., Any], args: tuple[Any, ...],
                     answer: Answer) -> None:
        """Right here: a plain callback blocks the loop, so keep it quick."""
        awaitable = self.call_back(fn, args, answer)
        if awaitable is not None:
            self.refuse_awaitable(fn, awaitable, answer)

    def arm_timer(self, deadline: float) -> None:
        pass  # guide step 5: the select timeout is the Node's deadline (`_next_wake`)


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
