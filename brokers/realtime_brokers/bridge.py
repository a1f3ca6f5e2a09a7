"""Lend an asyncio broker client to a runtime that is not asyncio, through one thread.

The broker clients of :mod:`realtime_brokers` (redis, nats-py, aio-pika, asyncpg and the
in-process memory bus) are asyncio code. :class:`BrokerBridge` runs one of them on its own
asyncio loop in its own thread, and moves work across in both directions:

* commands (publish, subscribe, unsubscribe, history appends and reads) go from the host
  into the loop with ``loop.call_soon_threadsafe``;
* what the client reports (messages, connection lost and restored) and the answers to
  ``start`` and ``close`` come back through the host's own thread-safe ``call_soon``
  (``TrioToken.run_sync_soon``, ``gevent``'s ``loop.run_callback_threadsafe``, a wake-up
  pipe), always in the order they happened.

Both directions batch: a burst of publishes costs one wake-up of the loop, and a burst of
messages one callback into the host. The module imports neither trio nor gevent; it is
shared by every runtime without a native broker client (``realtime_trio``,
``realtime_gevent``, ``examples/selectors_adapter``) and belongs in ``realtime_brokers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Protocol

from realtime_brokers import BrokerClient, BrokerListener, BrokerStatistics, open_broker
from realtime_brokers.history import HistoryService, HistoryStatistics, open_history_store
from realtime_proto.actions import HistoryAppend, HistoryRead, SaveReadPosition
from realtime_proto.events import HistoryAppended, HistoryLoaded

__all__ = ["BridgeListener", "BrokerBridge", "CallSoon"]

log = logging.getLogger("realtime")

CallSoon = Callable[[Callable[[], None]], object]
"""Schedule a plain callable to run soon on the host's loop; callable from any thread."""


class BridgeListener(BrokerListener, Protocol):
    """A broker listener that also hears the history store's answers."""

    def history_answered(self, answer: HistoryAppended | HistoryLoaded) -> None:
        """A `HistoryAppend` or `HistoryRead` was carried out."""


def _start_thread(target: Callable[[], None]) -> None:
    threading.Thread(target=target, name="realtime-broker", daemon=True).start()


class _Mailbox:
    """A queue of callables drained by one wake-up per burst (deque operations are atomic).

    The flag may let a producer wake the consumer once too often, never once too few:
    the consumer clears it before draining, and a producer checks it after appending.
    """

    def __init__(self) -> None:
        self.items: deque[Callable[[], None]] = deque()
        self.scheduled = False

    def put(self, item: Callable[[], None], wake: Callable[[], object]) -> None:
        self.items.append(item)
        if not self.scheduled:
            self.scheduled = True
            wake()

    def drain(self) -> None:
        self.scheduled = False
        items = self.items
        while items:
            item = items.popleft()
            try:
                item()
            except Exception:
                log.exception("broker bridge: %r failed", item)


class BrokerBridge:
    """A broker client on its own asyncio loop and thread, driven from another runtime.

    Every method is meant for the host's thread; only `start` and `close` report back,
    through `call_soon`.

    Args:
        url: the broker URL, as for :func:`realtime_brokers.open_broker`.
        listener: told about messages and connection changes, on the host's loop.
        node_id: this node's id.
        call_soon: the host's thread-safe way to run a callable on its loop.
        start_thread: starts a real OS thread running the target (gevent passes its
            original ``start_new_thread`` so that monkey-patching cannot turn it into a
            greenlet).
        new_loop: makes the asyncio loop (gevent passes one on an unpatched selector).
        history: the URL of the shared history store, if the node keeps history there;
            its answers reach ``listener.history_answered``.

    Raises:
        ValueError: the URL has an unknown scheme or a bad option.
        BrokerError: the broker's client library is not installed.
    """

    def __init__(self, url: str, listener: BridgeListener, *, node_id: str,
                 call_soon: CallSoon,
                 start_thread: Callable[[Callable[[], None]], object] = _start_thread,
                 new_loop: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
                 history: str | None = None) -> None:
        self._listener = listener
        self._call_soon = call_soon
        self._start_thread = start_thread
        self._new_loop = new_loop
        self._client: BrokerClient = open_broker(url, _Forward(self), node_id=node_id)
        self._history_url = history
        self._history: HistoryService | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox = _Mailbox()  # host → loop
        self._inbox = _Mailbox()  # loop → host
        self._closed = False  # host side: no more commands
        self._stop = False  # loop side: close the client and end
        self._stopping: asyncio.Event | None = None
        self._finished = False  # the thread has ended
        self._start_reported = False
        self._on_started: Callable[[BaseException | None], None] = _ignore
        self._on_closed: Callable[[], None] | None = None

    # -- the host's side -----------------------------------------------------------------

    def start(self, done: Callable[[BaseException | None], None]) -> None:
        """Start the thread and connect; `done(error)` runs on the host once that is
        decided (None on success, else the `BrokerUnavailable`).

        Raises:
            RuntimeError: the bridge was started before.
        """
        if self._loop is not None:
            raise RuntimeError("a broker bridge starts once")
        self._on_started = done
        self._loop = self._new_loop()  # made here, so `close` can reach it at once
        self._start_thread(self._run)

    def publish_nowait(self, topic: str, data: bytes) -> None:
        """Queue a publish; messages leave in the order they were queued."""
        self._command(lambda: self._client.publish_nowait(topic, data))

    def subscribe_nowait(self, topic: str) -> None:
        """Queue a subscription to `topic`."""
        self._command(lambda: self._client.subscribe_nowait(topic))

    def unsubscribe_nowait(self, topic: str) -> None:
        """Queue the end of a subscription to `topic`."""
        self._command(lambda: self._client.unsubscribe_nowait(topic))

    def carry_out(self, action: HistoryAppend | HistoryRead | SaveReadPosition) -> None:
        """Queue a history append, read or read position for the store."""
        self._command(lambda: self._history.carry_out(action) if self._history else None)

    def close(self, done: Callable[[], None]) -> None:
        """Send what is queued (bounded by the client's ``close_timeout``), disconnect and
        end the thread; `done()` runs once on the host afterwards. Idempotent."""
        if self._closed:
            return
        self._closed = True
        finished: list[bool] = []

        def once() -> None:
            if not finished:
                finished.append(True)
                done()

        self._on_closed = once
        if self._loop is None or self._finished:  # never started, or already ended
            self._call_soon(once)
            return
        # if the loop closed meanwhile, the thread reports `once` as it ends
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._stop_loop)

    def statistics(self) -> BrokerStatistics:
        """The client's counters (read across threads: a consistent-enough snapshot)."""
        return self._client.statistics()

    def history_statistics(self) -> HistoryStatistics:
        """The history service's state (across threads, as `statistics`)."""
        history = self._history
        if history is None:
            return HistoryStatistics(available=True, queued=0, overflowed=0)
        return history.history_statistics()

    def _command(self, command: Callable[[], None]) -> None:
        if not self._closed:
            self._outbox.put(command, self._wake_loop)

    def _wake_loop(self) -> None:
        if self._loop is None:
            return  # the thread drains the outbox once the client has started
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing more is sent
            self._loop.call_soon_threadsafe(self._outbox.drain)

    def report(self, item: Callable[[], None]) -> None:
        """Run `item` on the host, after everything reported before it."""
        self._inbox.put(item, self._wake_host)

    def _wake_host(self) -> None:
        try:
            self._call_soon(self._inbox.drain)
        except Exception:  # the host's loop has ended (trio.RunFinishedError, …)
            log.debug("broker bridge: the host loop is gone", exc_info=True)

    # -- the loop's side -----------------------------------------------------------------

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        try:
            loop.run_until_complete(self._main())
        except BaseException as error:
            log.exception("broker bridge: the broker loop failed")
            if not self._start_reported:  # a host waiting for `start` must hear of it
                self.report(functools.partial(self._on_started, error))
        finally:
            loop.close()
            self._finished = True
            if self._on_closed is not None:
                self.report(self._on_closed)

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        if self._stop:
            self._start_reported = True
            self.report(lambda: self._on_started(RuntimeError("closed before it started")))
            return
        try:
            await self._client.start()
        except Exception as error:
            self._start_reported = True
            self.report(functools.partial(self._on_started, error))
            return
        if self._history_url is not None:
            try:
                history = HistoryService(open_history_store(self._history_url),
                                         self._answer_history)
                await history.start()
            except Exception as error:
                await self._client.aclose()  # leave nothing connected behind
                self._start_reported = True
                self.report(functools.partial(self._on_started, error))
                return
            self._history = history
        self._outbox.drain()
        self._start_reported = True
        self.report(lambda: self._on_started(None))
        if not self._stop:
            await self._stopping.wait()
        self._outbox.drain()
        if self._history is not None:
            await self._history.aclose()
        await self._client.aclose()

    def _answer_history(self, answer: HistoryAppended | HistoryLoaded) -> None:
        listener = self._listener
        self.report(lambda: listener.history_answered(answer))

    def _stop_loop(self) -> None:
        self._stop = True
        if self._stopping is not None:
            self._stopping.set()


def _ignore(error: BaseException | None) -> None:
    pass


class _Forward:
    """The client's listener inside the loop: hands each report to the host, in order."""

    def __init__(self, bridge: BrokerBridge) -> None:
        self._bridge = bridge

    def message_received(self, topic: str, data: bytes) -> None:
        listener = self._bridge._listener
        self._bridge.report(lambda: listener.message_received(topic, data))

    def connection_lost(self, reason: str) -> None:
        listener = self._bridge._listener
        self._bridge.report(lambda: listener.connection_lost(reason))

    def connection_restored(self) -> None:
        self._bridge.report(self._bridge._listener.connection_restored)

