"""The one supervisor every driver runs under: queue, reconnect, re-subscribe, probe.

:class:`SupervisedClient` is the :class:`~.api.BrokerClient` that :func:`open_broker`
returns. It holds a :class:`~.driver.Driver` and does, once for all brokers:

* **One ordered command queue.** ``publish_nowait``, ``subscribe_nowait`` and
  ``unsubscribe_nowait`` append to a bounded deque that one task serves, so one node's
  messages leave in publish order. While the broker is down they wait there; when it is
  full the oldest publish is dropped and counted.
* **Reconnection.** When a connection is lost (the driver says so, an operation fails or
  a probe goes unanswered) the listener hears ``connection_lost(reason)`` once; the
  supervisor reconnects with exponential backoff and jitter, subscribes every topic again,
  puts back what was in flight, and says ``connection_restored()``.
* **End-to-end probes.** Every ``probe_interval`` it publishes a small message on a
  private topic it subscribes to, ahead of the queue, and expects it back within
  ``probe_timeout``; otherwise the connection is treated as dead. So a connection that is
  open but no longer delivers cannot leave a node silently deaf. Probes never reach the
  listener.

Delivery is at least once while connected: a publish whose connection fails before the
broker confirmed it is sent again on the next connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections import deque
from enum import Enum

from .api import BrokerError, BrokerListener, BrokerOptions, BrokerStatistics, BrokerUnavailable
from .driver import Connection, Driver, MessageRejected

__all__ = ["SupervisedClient"]

logger = logging.getLogger("realtime_brokers")

_PROBE_MARK = b"realtime-probe:"
_POISON_LIMIT = 5
"""A command that made this many connections in a row fail is dropped."""


class _Op(Enum):
    PUBLISH = 0
    SUBSCRIBE = 1
    UNSUBSCRIBE = 2


class _Command:
    __slots__ = ("data", "failures", "op", "topic")

    def __init__(self, op: _Op, topic: str, data: bytes = b"") -> None:
        self.op = op
        self.topic = topic
        self.data = data
        self.failures = 0


class _Session:
    """One connection's lifetime; the :class:`~.driver.Sink` its driver reports to."""

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
    name = type(exc).__name__
    if isinstance(exc, TimeoutError) and not text:
        return "timed out"
    return f"{name}: {text}" if text else name


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
        self._listener = listener
        self._options = options or BrokerOptions()
        self._probe_topic = f"_probe.{node_id}.{secrets.token_hex(6)}"
        self._queue: deque[_Command] = deque()
        self._queued_publishes = 0
        self._wanted: set[str] = set()  # after every queued command
        self._applied: set[str] = set()  # after the commands sent so far
        self._inflight: _Command | None = None
        self._unconfirmed: list[_Command] = []
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._session: _Session | None = None
        self._task: asyncio.Task[None] | None = None
        self._probe_out: bytes | None = None
        self._probe_waiter: tuple[bytes, asyncio.Future[None]] | None = None
        self._probe_count = 0
        self._state = "new"  # new → running → closing → closed
        self._published = 0
        self._received = 0
        self._dropped = 0
        self._reconnects = 0
        self._last_error: str | None = None

    # -- the BrokerClient API -------------------------------------------------------------

    async def start(self) -> None:
        if self._state != "new":
            raise BrokerError(f"{self._driver.kind} broker client was already started")
        self._state = "running"
        try:
            session = await self._open_session()
        except Exception as exc:
            self._state = "closed"
            self._last_error = _describe(exc)
            raise BrokerUnavailable(
                f"cannot connect to {self._driver.kind} at {self._driver.address}: "
                f"{self._last_error}"
            ) from exc
        self._task = asyncio.create_task(self._run(session), name=f"broker-{self._driver.kind}")

    def publish_nowait(self, topic: str, data: bytes) -> None:
        self._check_open()
        self._enqueue(_Command(_Op.PUBLISH, topic, bytes(data)))
        self._queued_publishes += 1

    def subscribe_nowait(self, topic: str) -> None:
        self._check_open()
        if topic not in self._wanted:
            self._wanted.add(topic)
            self._enqueue(_Command(_Op.SUBSCRIBE, topic))

    def unsubscribe_nowait(self, topic: str) -> None:
        self._check_open()
        if topic in self._wanted:
            self._wanted.discard(topic)
            self._enqueue(_Command(_Op.UNSUBSCRIBE, topic))

    async def aclose(self) -> None:
        if self._state in ("closing", "closed"):
            return
        self._state = "closing"
        session = self._session
        if session is not None and session.active and not self._idle.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._options.close_timeout):
                    await self._idle.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._end_session(self._session)
        lost = self._queued_publishes + sum(
            1 for command in self._unconfirmed if command.op is _Op.PUBLISH
        )
        if lost:
            logger.warning("%s: closed with %d messages unsent", self._driver.kind, lost)
        self._dropped += lost
        self._queue.clear()
        self._unconfirmed.clear()
        self._queued_publishes = 0
        self._state = "closed"

    def statistics(self) -> BrokerStatistics:
        session = self._session
        return BrokerStatistics(
            connected=session is not None and session.active and self._state == "running",
            published=self._published,
            received=self._received,
            dropped=self._dropped,
            reconnects=self._reconnects,
            queued=self._queued_publishes,
            subscriptions=len(self._wanted),
            last_error=self._last_error,
        )

    # -- the queue ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state in ("closing", "closed"):
            raise BrokerError(f"{self._driver.kind} broker client is closed")

    def _enqueue(self, command: _Command) -> None:
        if len(self._queue) >= self._options.queue_size:
            self._make_room()
        self._queue.append(command)
        self._idle.clear()
        self._wakeup.set()

    def _make_room(self) -> None:
        """Drop the oldest queued publish; with none queued, fold the subscription
        changes into one per topic (their net effect)."""
        for index, command in enumerate(self._queue):
            if command.op is _Op.PUBLISH:
                del self._queue[index]
                self._queued_publishes -= 1
                if self._dropped == 0 or self._dropped % 1000 == 0:
                    logger.warning(
                        "%s: outbound queue full (%d), dropping the oldest message",
                        self._driver.kind,
                        self._options.queue_size,
                    )
                self._dropped += 1
                return
        current = set(self._applied)
        inflight = self._inflight
        if inflight is not None and inflight.op is _Op.SUBSCRIBE:
            current.add(inflight.topic)
        elif inflight is not None and inflight.op is _Op.UNSUBSCRIBE:
            current.discard(inflight.topic)
        self._queue.clear()
        self._queue.extend(_Command(_Op.UNSUBSCRIBE, t) for t in sorted(current - self._wanted))
        self._queue.extend(_Command(_Op.SUBSCRIBE, t) for t in sorted(self._wanted - current))

    def _requeue_unsent(self) -> None:
        """Put the unconfirmed and the in-flight commands back at the front."""
        back = self._unconfirmed
        if self._inflight is not None:
            back.append(self._inflight)
        self._unconfirmed = []
        self._inflight = None
        self._queue.extendleft(reversed(back))
        self._queued_publishes += sum(1 for command in back if command.op is _Op.PUBLISH)
        while len(self._queue) > self._options.queue_size:
            before = len(self._queue)
            self._make_room()
            if len(self._queue) >= before:
                break
        if back:
            self._idle.clear()

    # -- connections ----------------------------------------------------------------------

    async def _open_session(self) -> _Session:
        """Connect, subscribe the probe topic and every applied topic."""
        session = _Session(self)
        timeout = self._options.connect_timeout
        try:
            async with asyncio.timeout(timeout):
                session.conn = await self._driver.connect(session)
            conn = session.conn
            async with asyncio.timeout(timeout):
                await conn.subscribe(self._probe_topic)
            for topic in list(self._applied):
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
            async with asyncio.timeout(self._options.close_timeout or 0.001):
                await conn.close()
        except TimeoutError:
            logger.warning("%s: closing a connection timed out", self._driver.kind)
        except Exception:
            logger.exception("%s: closing a connection failed", self._driver.kind)

    async def _end_session(self, session: _Session) -> None:
        session.active = False
        self._requeue_unsent()
        self._probe_out = None
        self._probe_waiter = None
        if session.conn is not None:
            await self._close_connection(session.conn)
        if self._session is session:
            self._session = None

    async def _reconnect(self) -> _Session:
        delay = self._options.backoff_min
        while True:
            await asyncio.sleep(delay / 2 + random.uniform(0, delay / 2))
            try:
                return await self._open_session()
            except Exception as exc:
                self._last_error = _describe(exc)
                logger.info(
                    "%s: reconnecting to %s failed: %s",
                    self._driver.kind,
                    self._driver.address,
                    self._last_error,
                )
            delay = min(delay * 2, self._options.backoff_max)

    async def _run(self, session: _Session) -> None:
        while True:
            reason = await self._serve_until_lost(session)
            self._last_error = reason
            logger.warning("%s: connection lost: %s", self._driver.kind, reason)
            await self._end_session(session)
            self._notify("connection_lost", reason)
            session = await self._reconnect()
            self._reconnects += 1
            logger.info("%s: connection restored", self._driver.kind)
            self._notify("connection_restored")

    async def _serve_until_lost(self, session: _Session) -> str:
        serve = asyncio.create_task(self._serve(session))
        probe = asyncio.create_task(self._probe(session))
        try:
            return await asyncio.shield(session.lost_reason)
        finally:
            for task in (serve, probe):
                task.cancel()
            for task in (serve, probe):
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
            session.lost(f"{self._driver.kind}: {_describe(exc)}")

    def _drop_poison(self, command: _Command, exc: Exception) -> None:
        logger.error(
            "%s: dropping a %s on %r that failed %d connections: %s",
            self._driver.kind,
            command.op.name.lower(),
            command.topic,
            command.failures,
            _describe(exc),
        )
        self._inflight = None
        if command.op is _Op.PUBLISH:
            self._dropped += 1

    async def _serve_commands(self, session: _Session) -> None:
        conn = session.conn
        assert conn is not None
        queue = self._queue
        while True:
            probe = self._probe_out
            if probe is not None:
                self._probe_out = None
                await conn.publish(self._probe_topic, probe)
                continue
            if not queue:
                if self._unconfirmed:
                    await conn.flush()
                    self._published += len(self._unconfirmed)
                    self._unconfirmed.clear()
                    continue
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            command = queue.popleft()
            if command.op is _Op.PUBLISH:
                self._queued_publishes -= 1
            self._inflight = command
            await self._execute(conn, command)
            self._inflight = None

    async def _execute(self, conn: Connection, command: _Command) -> None:
        if command.op is _Op.PUBLISH:
            try:
                await conn.publish(command.topic, command.data)
            except MessageRejected as exc:
                self._last_error = _describe(exc)
                logger.error(
                    "%s: message on %r rejected: %s", self._driver.kind, command.topic, exc
                )
                self._dropped += 1
                return
            if conn.confirms_publishes:
                self._published += 1
            else:
                self._unconfirmed.append(command)
                if len(self._unconfirmed) >= 1000:
                    await conn.flush()
                    self._published += len(self._unconfirmed)
                    self._unconfirmed.clear()
        elif command.op is _Op.SUBSCRIBE:
            await conn.subscribe(command.topic)
            self._applied.add(command.topic)
        else:
            await conn.unsubscribe(command.topic)
            self._applied.discard(command.topic)

    # -- probes ---------------------------------------------------------------------------

    async def _probe(self, session: _Session) -> None:
        loop = asyncio.get_running_loop()
        timeout = self._options.probe_timeout
        while True:
            await asyncio.sleep(self._options.probe_interval)
            self._probe_count += 1
            token = _PROBE_MARK + str(self._probe_count).encode()
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
        if topic not in self._wanted or self._state != "running":
            return
        self._received += 1
        try:
            self._listener.message_received(topic, data)
        except Exception:
            logger.exception("%s: listener failed on a message for %r", self._driver.kind, topic)

    def _notify(self, event: str, *args: str) -> None:
        try:
            getattr(self._listener, event)(*args)
        except Exception:
            logger.exception("%s: listener failed in %s", self._driver.kind, event)
