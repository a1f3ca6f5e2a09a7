"""The one supervisor every driver runs under: queue, reconnect, re-subscribe, probe.

:class:`SupervisedClient` is the :class:`~.api.BrokerClient` that ``open_broker`` returns.
It holds a :class:`~.driver.Driver` and does, the same way for every broker:

* **One ordered command queue** (:mod:`.commands`), served by one task, so one node's
  messages leave in publish order. While the broker is down commands wait there; when it
  is full the oldest publish is dropped and counted.
* **Reconnection.** When a connection is lost (the driver says so, an operation fails, or
  a probe goes unanswered) the listener hears ``connection_lost(reason)`` once; the
  supervisor reconnects with exponential backoff and jitter, subscribes every topic again,
  puts back what was in flight, and then says ``connection_restored()``.
* **End-to-end probes.** Every ``probe_interval`` it publishes a small message on a
  private topic it subscribes to, ahead of the queue, and expects it back within
  ``probe_timeout``; otherwise the connection is treated as dead. So a connection that is
  open but no longer delivers cannot leave a node deaf. Probes never reach the listener.

Delivery is at least once while connected: a publish whose connection fails before the
broker confirmed it is sent again on the next connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import secrets
import time

from realtime_proto.metrics import Histogram

from .api import BrokerError, BrokerListener, BrokerOptions, BrokerStatistics, BrokerUnavailable
from .commands import Command, CommandQueue, Op
from .driver import Connection, Driver, MessageRejected

__all__ = ["SupervisedClient"]

logger = logging.getLogger("realtime_brokers")

_PROBE_MARK = b"realtime-probe:"
_POISON_LIMIT = 5
"""A command under which this many connections in a row failed is dropped."""
_FLUSH_EVERY = 256
"""Buffered publishes are confirmed with a flush at least this often."""
_STALLED_AFTER = 1.0
"""Seconds without progress while commands wait, after which `statistics` says stalled."""


class _State(enum.Enum):
    NEW = enum.auto()  #: built, ``start`` not called
    RUNNING = enum.auto()  #: started; connected or reconnecting
    CLOSING = enum.auto()  #: ``aclose`` is sending what is queued
    CLOSED = enum.auto()  #: closed, or the first connection failed


class _Session:
    """One connection's lifetime, and the :class:`~.driver.Sink` its driver reports to."""

    def __init__(self, client: SupervisedClient) -> None:
        self._client = client
        self.active = True
        self.lost_reason: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.conn: Connection | None = None

    def deliver(self, topic: str, data: bytes) -> None:
        if self.active:
            self._client._deliver(topic, data)

    def lost(self, reason: str) -> None:
        if not self.lost_reason.done():
            self.lost_reason.set_result(reason)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, TimeoutError) and not text:
        return "timed out"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class SupervisedClient:
    """A :class:`~.api.BrokerClient` running one :class:`~.driver.Driver`."""

    def __init__(
        self,
        driver: Driver,
        listener: BrokerListener,
        *,
        node_id: str,
        options: BrokerOptions | None = None,
    ) -> None:
        self._driver = driver
        self._kind = driver.kind
        self._listener = listener
        self._options = options or BrokerOptions()
        self._probe_topic = f"_probe.{node_id}.{secrets.token_hex(6)}"
        self._queue = CommandQueue(self._options.queue_size)
        self._inflight: Command | None = None
        self._unconfirmed: list[Command] = []
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._session: _Session | None = None
        self._task: asyncio.Task[None] | None = None
        self._probe_out: bytes | None = None
        self._probe_waiter: tuple[bytes, asyncio.Future[None]] | None = None
        self._probes = 0
        self._state = _State.NEW
        self._published = 0
        self._publish_latency = Histogram()
        self._received = 0
        self._rejected = 0
        self._reconnects = 0
        self._last_error: str | None = None
        self._progress_at = time.monotonic()  # when the queue last moved (or woke up)

    # -- the BrokerClient API -------------------------------------------------------------

    async def start(self) -> None:
        """Connect and start serving the queue.

        Raises:
            BrokerUnavailable: the first connection failed (nothing is retried).
            BrokerError: the client was started before.
        """
        if self._state is not _State.NEW:
            raise BrokerError(f"{self._kind} broker client was already started")
        self._progress_at = time.monotonic()  # (what waited before the start is no stall)
        self._state = _State.RUNNING
        try:
            session = await self._open_session()
        except Exception as exc:
            self._state = _State.CLOSED
            self._last_error = _describe(exc)
            raise BrokerUnavailable(
                f"cannot connect to {self._kind} at {self._driver.address}: {self._last_error}"
            ) from exc
        self._task = asyncio.create_task(self._run(session), name=f"broker-{self._kind}")

    def publish_nowait(self, topic: str, data: bytes) -> None:
        """Queue ``data`` for ``topic``; see :class:`~.api.BrokerClient`."""
        self._check_open()
        self._queue.publish(topic, bytes(data))
        self._wake()

    def subscribe_nowait(self, topic: str) -> None:
        """Queue a subscription; see :class:`~.api.BrokerClient`."""
        self._check_open()
        if self._queue.subscribe(topic):
            self._wake()

    def unsubscribe_nowait(self, topic: str) -> None:
        """Queue an unsubscription; see :class:`~.api.BrokerClient`."""
        self._check_open()
        if self._queue.unsubscribe(topic):
            self._wake()

    async def aclose(self) -> None:
        """Send what is queued (for at most ``close_timeout``), then disconnect."""
        if self._state in (_State.CLOSING, _State.CLOSED):
            return
        self._state = _State.CLOSING
        if self._session is not None and self._session.active and self._busy():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._options.close_timeout):
                    await self._idle.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._end_session(self._session)
        unsent = self._queue.clear()
        if unsent:
            logger.warning("%s: closed with %d messages unsent", self._kind, unsent)
            self._rejected += unsent
        self._state = _State.CLOSED

    def statistics(self) -> BrokerStatistics:
        """The client's counters now."""
        session = self._session
        connected = self._state is _State.RUNNING and session is not None and session.active
        return BrokerStatistics(
            connected=connected,
            published=self._published,
            received=self._received,
            dropped=self._queue.dropped + self._rejected,
            reconnects=self._reconnects,
            queued=self._queue.publishes,
            subscriptions=len(self._queue.wanted),
            last_error=self._last_error,
            publish_latency=self._publish_latency.snapshot(),
            stalled=connected and self._busy()
            and time.monotonic() - self._progress_at > _STALLED_AFTER,
        )

    # -- connections ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state in (_State.CLOSING, _State.CLOSED):
            raise BrokerError(f"{self._kind} broker client is closed")

    def _wake(self) -> None:
        self._idle.clear()
        self._wakeup.set()

    def _busy(self) -> bool:
        return bool(len(self._queue) or self._inflight or self._unconfirmed)

    async def _open_session(self) -> _Session:
        """Connect, then subscribe the probe topic and every applied topic."""
        session = _Session(self)
        timeout = self._options.connect_timeout
        try:
            async with asyncio.timeout(timeout):
                conn = session.conn = await self._driver.connect(session)
            for topic in [self._probe_topic, *self._queue.applied]:
                async with asyncio.timeout(timeout):
                    await conn.subscribe(topic)
            if session.lost_reason.done():
                raise ConnectionError(session.lost_reason.result())
        except BaseException:
            session.active = False
            if session.conn is not None:
                await self._close_connection(session.conn)
            raise
        self._session = session
        return session

    async def _close_connection(self, conn: Connection) -> None:
        try:
            async with asyncio.timeout(self._options.close_timeout):
                await conn.close()
        except TimeoutError:
            logger.warning("%s: closing a connection timed out", self._kind)

    async def _end_session(self, session: _Session) -> None:
        """Forget a connection: put its unconfirmed commands back, close it."""
        session.active = False
        back = self._unconfirmed
        if self._inflight is not None:
            back.append(self._inflight)
        self._unconfirmed = []
        self._inflight = None
        self._queue.put_back(back)
        self._probe_out = None
        self._probe_waiter = None
        if session.conn is not None:
            await self._close_connection(session.conn)
        if self._session is session:
            self._session = None

    async def _reconnect(self) -> _Session:
        interval = self._options.reconnect_min_interval
        while True:
            await asyncio.sleep(interval / 2 + random.uniform(0, interval / 2))
            try:
                return await self._open_session()
            except Exception as exc:
                self._last_error = _describe(exc)
                logger.info(
                    "%s: reconnecting to %s failed: %s",
                    self._kind,
                    self._driver.address,
                    self._last_error,
                )
            interval = min(interval * 2, self._options.reconnect_max_interval)

    async def _run(self, session: _Session) -> None:
        while True:
            reason = await self._serve_until_lost(session)
            self._last_error = reason
            logger.warning("%s: connection lost: %s", self._kind, reason)
            await self._end_session(session)
            self._notify("connection_lost", reason)
            session = await self._reconnect()
            self._reconnects += 1
            logger.info("%s: connection restored", self._kind)
            self._notify("connection_restored")

    async def _serve_until_lost(self, session: _Session) -> str:
        tasks = [
            asyncio.create_task(self._serve(session)),
            asyncio.create_task(self._probe(session)),
        ]
        try:
            return await asyncio.shield(session.lost_reason)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # -- serving the queue ----------------------------------------------------------------

    async def _serve(self, session: _Session) -> None:
        try:
            await self._serve_commands(session)
        except Exception as exc:
            command = self._inflight
            if command is not None:
                command.failures += 1
                if command.failures >= _POISON_LIMIT:
                    self._drop_poison(command, exc)
            session.lost(f"{self._kind}: {_describe(exc)}")

    def _drop_poison(self, command: Command, exc: Exception) -> None:
        logger.error(
            "%s: dropping a %s on %r under which %d connections failed: %s",
            self._kind,
            command.op.name.lower(),
            command.topic,
            command.failures,
            _describe(exc),
        )
        self._inflight = None
        self._queue.abandon(command)
        if command.op is Op.PUBLISH:
            self._rejected += 1

    async def _serve_commands(self, session: _Session) -> None:
        conn = session.conn
        assert conn is not None
        self._progress_at = time.monotonic()
        while True:
            probe = self._probe_out
            if probe is not None:
                self._probe_out = None
                await conn.publish(self._probe_topic, probe)
                await self._flush(conn)  # drivers that batch writes must send it now
            elif len(self._queue):
                command = self._inflight = self._queue.pop()
                await self._execute(conn, command)
                self._inflight = None
            elif self._unconfirmed:
                await self._flush(conn)
            else:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                self._progress_at = time.monotonic()

    async def _execute(self, conn: Connection, command: Command) -> None:
        if command.op is Op.SUBSCRIBE:
            await conn.subscribe(command.topic)
        elif command.op is Op.UNSUBSCRIBE:
            await conn.unsubscribe(command.topic)
        else:
            try:
                await conn.publish(command.topic, command.data)
            except MessageRejected as exc:
                self._last_error = _describe(exc)
                logger.error("%s: message on %r rejected: %s", self._kind, command.topic, exc)
                self._rejected += 1
                return
            if not conn.confirms_publishes:
                self._unconfirmed.append(command)
                if len(self._unconfirmed) >= _FLUSH_EVERY:
                    await self._flush(conn)
                return
            self._published += 1
            self._publish_latency.observe(time.monotonic() - command.queued_at)
        self._queue.sent(command)
        self._progress_at = time.monotonic()

    async def _flush(self, conn: Connection) -> None:
        rejected = await conn.flush()
        self._published += len(self._unconfirmed) - rejected
        self._rejected += rejected
        now = self._progress_at = time.monotonic()
        for command in self._unconfirmed:
            self._publish_latency.observe(now - command.queued_at)
        self._unconfirmed.clear()

    # -- probes ---------------------------------------------------------------------------

    async def _probe(self, session: _Session) -> None:
        loop = asyncio.get_running_loop()
        timeout = self._options.probe_timeout
        while True:
            await asyncio.sleep(self._options.probe_interval)
            self._probes += 1
            token = _PROBE_MARK + str(self._probes).encode()
            answered: asyncio.Future[None] = loop.create_future()
            self._probe_waiter = (token, answered)
            self._probe_out = token
            self._wakeup.set()
            try:
                async with asyncio.timeout(timeout):
                    await answered
            except TimeoutError:
                session.lost(f"probe not answered within {timeout:g} s")
                return
            finally:
                self._probe_waiter = None

    # -- delivery -------------------------------------------------------------------------

    def _deliver(self, topic: str, data: bytes) -> None:
        if topic == self._probe_topic:
            waiter = self._probe_waiter
            if waiter is not None and waiter[0] == data and not waiter[1].done():
                waiter[1].set_result(None)
            return
        if topic not in self._queue.wanted or self._state is not _State.RUNNING:
            return  # unsubscribed meanwhile, or closing
        self._received += 1
        try:
            self._listener.message_received(topic, data)
        except Exception:
            logger.exception("%s: listener failed on a message for %r", self._kind, topic)

    def _notify(self, event: str, *args: str) -> None:
        try:
            getattr(self._listener, event)(*args)
        except Exception:
            logger.exception("%s: listener failed in %s", self._kind, event)
