"""What every runtime's server shares: the embedding API, the action pump, writes batched
per loop turn, the auth webhook and the broker listener. A runtime adds sockets, its timer,
the way it runs callbacks and the webhook's socket.

Runtime-neutral (it imports no asyncio, trio or gevent): the asyncio, trio and gevent
servers and the selectors example all subclass it. One level of subclassing, as STYLE.md
allows: a runtime overrides the hooks at the bottom and nothing else.
"""

from __future__ import annotations

import _thread
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol, TypeVar, assert_never

from realtime_brokers import BrokerStatistics
from realtime_brokers.history import HistoryStatistics
from realtime_proto import ChannelRule, Node, Publication
from realtime_proto.actions import (
    Authenticate,
    Authorize,
    BrokerPublish,
    BrokerSubscribe,
    BrokerUnsubscribe,
    CloseTransport,
    ConnectionInfo,
    HistoryAppend,
    HistoryRead,
    NodeAction,
    PostWebhook,
    SaveReadPosition,
    Transmit,
)
from realtime_proto.callbacks import authentication_answer, authorization_answer
from realtime_proto.errors import DISCONNECTED
from realtime_proto.events import (
    BrokerLost,
    BrokerRestored,
    ConnectionId,
    EnvelopeReceived,
    HistoryAppended,
    HistoryLoaded,
    NodeEvent,
    TransportId,
    WebhookPosted,
)
from realtime_proto.message import JsonValue
from realtime_proto.notify import response_status
from realtime_proto.presence import Member
from realtime_proto.webhook import (
    WebhookAnswer,
    WebhookCache,
    WebhookTarget,
    read_answer,
    webhook_request,
)

from .edge import (
    Settings,
    broker_report,
    build_node_config,
    history_store,
    new_epoch,
    new_node_id,
    random_id,
    worker_count,
)

__all__ = ["Answer", "BrokerCommands", "ServerBase", "ServerNotStarted"]

log = logging.getLogger("realtime")

T = TypeVar("T")

Answer = Callable[[object, BaseException | None], NodeEvent]
"""Turns what a callback returned (or raised) into the event that answers the Node."""


class ServerNotStarted(RuntimeError):
    """The application API was used while the server is not running (before it started,
    or after it stopped): nothing was sent."""
@dataclass(frozen=True, slots=True)
class _AuthorizationAnswer:
    """The `Answer` to an `Authorize` action, and what a log line about it names."""

    request_id: str
    connection: ConnectionInfo
    channel: str

    def __call__(self, result: object, error: BaseException | None) -> NodeEvent:
        return authorization_answer(self.request_id, result, error)


def _log_context(answer: Answer) -> dict[str, str | None] | None:
    """The `extra=` of a log line about a callback: the connection and user it concerns."""
    if not isinstance(answer, _AuthorizationAnswer):
        return None
    connection = answer.connection
    return {"connection_id": connection.id, "user_id": connection.user_id,
            "channel": answer.channel}


class BrokerCommands(Protocol):
    """The broker as the pump uses it (a `BrokerBridge`, or an asyncio `BrokerClient`)."""

    def publish_nowait(self, topic: str, data: bytes) -> None: ...
    def subscribe_nowait(self, topic: str) -> None: ...
    def unsubscribe_nowait(self, topic: str) -> None: ...
    def statistics(self) -> BrokerStatistics: ...


class HistoryCommands(Protocol):
    """The shared history store as the pump uses it (a `HistoryService` or a bridge)."""

    def carry_out(self, action: HistoryAppend | HistoryRead | SaveReadPosition) -> None: ...
    def history_statistics(self) -> HistoryStatistics: ...


class ServerBase:
    """A Node behind the embedding API of `realtime_asyncio.RealtimeServer`.

    The application API (`broadcast`, `send_to_user`, `send`, `members`, `channels`,
    `connection`) may be called from any thread once the server runs; every other method
    runs on the server's own thread (its loop, hub or selector). Until the runtime sets
    `running` (on that thread), actions wait in the Node and the application API raises
    `ServerNotStarted`.
    """

    #: the runtime's name, for /health and /metrics
    runtime: ClassVar[str] = ""
    #: seconds a call from another thread waits for the server's thread to take it
    call_timeout: float = 10.0

    def __init__(self, settings: Settings | None = None, **options: Any) -> None:
        self.settings = settings or Settings(**options)
        if worker_count(self.settings.workers) != 1:  # the supervisor gives each "1"
            raise ValueError("workers is an option of `realtime serve` (it forks the "
                             "processes); an embedded server is one process")
        self.node_id = self.settings.node_id or new_node_id()
        self.node = Node(build_node_config(self.settings, self.node_id, runtime=self.runtime),
                         new_id=random_id, epoch=new_epoch(), jitter=random.random)
        #: the shared history store's URL, when channels keep history there
        self.history_store = history_store(self.settings)
        self.broker: BrokerCommands | None = None
        self.history: HistoryCommands | None = None
        #: the id of the thread that drives the Node while the server runs
        self._thread: int | None = None
        self._authenticate_hook: Callable[[Any], Any] | None = None
        self._pumping = False
        self._to_write: dict[TransportId, None] = {}
        self._flush_scheduled = False
        self._webhook_cache = WebhookCache(self.settings.auth_webhook_cache)
        self._webhook: WebhookTarget | None = None
        if self.settings.auth_webhook:
            self._webhook = WebhookTarget.parse(self.settings.auth_webhook)
            # the least specific rule: the application's own rules still win
            self.channel("*").authorize(self._ask_webhook)

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
        """Publish to a channel's subscribers on every node; the message id.

        Safe from any thread (see `on_server_thread`: another thread waits until the
        server's thread has taken the call, at most `call_timeout` seconds).

        Raises:
            ServerNotStarted: the server is not running; nothing was sent.
            MessageError: the channel name is invalid (code 4008).
            TimeoutError: the server's thread did not take the call in time; nothing
                was sent.
        """
        return self.on_server_thread(self._broadcast, channel, event, data, exclude)

    def broadcast_many(self, publications: Sequence[Publication]) -> list[str]:
        """Publish several events in one call, in order, as `broadcast` does each (cheaper
        per event); their message ids. Each is a `Publication(channel, event, data,
        exclude)` or a plain tuple of those four. All are checked before any goes out:
        when one is invalid, none is sent. Safe from any thread, and raises as `broadcast`
        does (`MessageError` 4005 too, for an event that is not a string).
        """
        return self.on_server_thread(self._broadcast_many, publications)

    def send_to_user(self, user_id: str, event: str, data: JsonValue = None) -> str:
        """Send to every connection of a user, on every node; the message id. Safe from
        any thread, and raises as `broadcast` does."""
        return self.on_server_thread(self._send_to_user, user_id, event, data)

    def send(self, connection_id: str, event: str, data: JsonValue = None) -> str | None:
        """Send to one connection, on whichever node holds it; the message id, or None when
        no node can have it. Safe from any thread, and raises as `broadcast` does."""
        return self.on_server_thread(self._send, connection_id, event, data)

    def disconnect_user(self, user_id: str, code: int = DISCONNECTED, reason: str = "") -> int:
        """Close every connection of a user on every node (close `code`, default 4010:
        the clients do not reconnect); how many were on this node. Safe from any thread;
        raises as `broadcast` does, and `MessageError` (4005) for a code or reason that
        cannot go in a close frame."""
        count: int = self.on_server_thread(self._command, self.node.hub.disconnect_user,
                                           user_id, code, reason)
        return count

    def disconnect(self, connection_id: str, code: int = DISCONNECTED, reason: str = "") -> bool:
        """Close one connection on whichever node holds it; False when no node can have
        it. Safe from any thread; raises as `disconnect_user` does."""
        known: bool = self.on_server_thread(self._command, self.node.hub.disconnect_connection,
                                            ConnectionId(connection_id), code, reason)
        return known

    def unsubscribe_user(self, user_id: str, channel: str, reason: str = "") -> int:
        """End a user's subscriptions to a channel on every node (each connection gets
        `subscription.revoked`); how many were on this node. Safe from any thread; raises
        as `broadcast` does."""
        count: int = self.on_server_thread(self._command, self.node.hub.unsubscribe_user,
                                           user_id, channel, reason)
        return count

    def members(self, channel: str) -> list[Member]:
        """Members of a presence channel across the cluster (from any thread)."""
        return self.on_server_thread(self.node.hub.members, channel)

    def channels(self) -> dict[str, int]:
        """Channels with subscribers on this node, and how many (from any thread)."""
        return self.on_server_thread(self.node.hub.channels)

    def connection(self, connection_id: str) -> ConnectionInfo | None:
        """A snapshot of one connection of this node (from any thread)."""
        return self.on_server_thread(self.node.hub.connection, ConnectionId(connection_id))

    def on_server_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the server's thread, from any thread; what it returns or raises.

        On the server's thread it runs at once. From another thread it is handed over
        with `call_soon_threadsafe` (calls from one thread keep their order) and the
        caller blocks until it has run; if the server's thread has not taken it within
        `call_timeout` seconds, it never runs and `TimeoutError` is raised.

        Raises:
            ServerNotStarted: the server is not running (checked again on its thread).
        """
        if self._thread is None:
            raise self._not_started()
        if self.thread_ident() == self._thread:
            return fn(*args)
        taken, done = self.allocate_lock(), self.allocate_lock()
        done.acquire()
        outcome: list[Any] = []

        def run() -> None:
            if not taken.acquire(blocking=False):
                return  # the caller gave up: it raised TimeoutError
            try:
                if self._thread is None:
                    raise self._not_started()
                outcome.append(fn(*args))
            except BaseException as error:
                outcome.append(error)
            finally:
                done.release()

        try:
            self.call_soon_threadsafe(run)
        except RuntimeError as error:  # the loop is closed, or trio's run has finished
            raise self._not_started() from error
        if not done.acquire(timeout=self.call_timeout):
            if taken.acquire(blocking=False):
                raise TimeoutError(f"the {self.runtime} server's thread did not take the "
                                   f"call within {self.call_timeout} s; nothing was sent")
            done.acquire()  # `run` has taken the call: it ends soon
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        result: T = outcome[0]
        return result

    def _not_started(self) -> ServerNotStarted:
        return ServerNotStarted(
            f"the {self.runtime} realtime server is not running: start it first "
            "(mounted in an ASGI application, pass `lifespan=server.lifespan` to the host "
            "application or enter `server.lifespan()` in its own lifespan); see "
            "docs/embedding.md")

    def _broadcast(self, channel: str, event: str, data: JsonValue,
                   exclude: str | None) -> str:
        message_id = self.node.hub.broadcast(channel, event, data, now=self.now(),
                                             exclude=ConnectionId(exclude) if exclude else None)
        self.pump()
        return message_id

    def _broadcast_many(self, publications: Sequence[Publication]) -> list[str]:
        message_ids = self.node.hub.broadcast_many(
            [(channel, event, data, ConnectionId(exclude) if exclude else None)
             for channel, event, data, exclude in publications], now=self.now())
        self.pump()
        return message_ids

    def _send_to_user(self, user_id: str, event: str, data: JsonValue) -> str:
        message_id = self.node.hub.send_to_user(user_id, event, data, now=self.now())
        self.pump()
        return message_id

    def _send(self, connection_id: str, event: str, data: JsonValue) -> str | None:
        message_id = self.node.hub.send(ConnectionId(connection_id), event, data, now=self.now())
        self.pump()
        return message_id

    def _command(self, verb: Callable[..., T], *args: Any) -> T:
        result = verb(*args, now=self.now())
        self.pump()
        return result

    @property
    def running(self) -> bool:
        """Whether the server runs: actions flow, and the application API works."""
        return self._thread is not None

    @running.setter
    def running(self, value: bool) -> None:
        """The runtime sets it on the server's thread once started, and clears it once
        stopped."""
        self._thread = self.thread_ident() if value else None

    # -- driving the Node ----------------------------------------------------------------

    def now(self) -> float:
        """Monotonic seconds: the clock `new_epoch` read, so timestamps come out right."""
        return time.monotonic()

    def handle(self, event: NodeEvent) -> None:
        """Feed an event to the Node and carry out what follows."""
        self.node.handle(event, now=self.now())
        self.pump()

    def pump(self) -> None:
        """Carry out every action the Node has produced, then re-arm the timer."""
        if self._pumping or self._thread is None:  # not `running`: a property
            return
        self._pumping = True
        try:
            while actions := self.node.actions():
                for action in actions:
                    self._carry_out(action)
        finally:
            self._pumping = False
        self.arm_timer(self.node.next_deadline())

    def _carry_out(self, action: NodeAction) -> None:
        broker = self.broker
        assert broker is not None
        match action:
            case Transmit(transport_ids, partial):
                self.transmit(transport_ids, partial=partial)
            case CloseTransport(transport_id):
                if not self.close_transport(transport_id):
                    self.node.data_to_send(transport_id)  # gone already: drop its last bytes
            case BrokerPublish(topic, data):
                broker.publish_nowait(topic, data)
            case BrokerSubscribe(topic):
                broker.subscribe_nowait(topic)
            case BrokerUnsubscribe(topic):
                broker.unsubscribe_nowait(topic)
            case HistoryAppend() | HistoryRead() | SaveReadPosition():
                assert self.history is not None
                self.history.carry_out(action)
            case Authorize():
                self.run_callback(
                    action.callback, (action.connection, action.channel),
                    _AuthorizationAnswer(action.request_id, action.connection, action.channel))
            case Authenticate():
                request_id = action.request_id
                self.run_callback(
                    self._authenticate_hook or _anonymous, (action.request,),
                    lambda result, error: authentication_answer(request_id, result, error))
            case PostWebhook():
                self.run_callback(self._post_events, (action,), _posted_answer)
            case _:
                assert_never(action)

    def call_back(self, fn: Callable[..., Any], args: tuple[Any, ...],
                  answer: Answer) -> Awaitable[Any] | None:
        """Call `fn` here and answer the Node; or return its awaitable for the runtime to
        await and pass to `answer_awaited`. An exception answers as a refusal (4500)."""
        try:
            result = fn(*args)
        except Exception as error:
            log.exception("callback %r failed", fn, extra=_log_context(answer))
            self.handle(answer(None, error))
            return None
        if inspect.isawaitable(result):
            return result
        self.handle(answer(result, None))
        return None

    async def answer_awaited(self, fn: Callable[..., Any], awaitable: Awaitable[Any],
                             answer: Answer) -> None:
        """Await what an async callback returned, then answer the Node."""
        try:
            value = await awaitable
        except Exception as error:
            log.exception("callback %r failed", fn, extra=_log_context(answer))
            self.handle(answer(None, error))
        else:
            self.handle(answer(value, None))

    def refuse_awaitable(self, fn: Callable[..., Any], awaitable: Awaitable[Any],
                         answer: Answer) -> None:
        """Answer for an async callback on a runtime that runs plain callables only."""
        if inspect.iscoroutine(awaitable):
            awaitable.close()
        error = TypeError(f"the {self.runtime} runtime runs plain callables, not {fn!r}")
        log.error("%s", error)
        self.handle(answer(None, error))

    # -- writing ---------------------------------------------------------------------------

    def transmit(self, transport_ids: Iterable[TransportId], *, partial: bool = False) -> None:
        """Bytes wait for these sockets: write each once, after this turn of the loop, with
        all that the turn queued for it (`schedule_flush`, then `write`).

        `partial` (a chunk of a fan-out that goes on, `Transmit.partial`): written at once
        when nothing waits for the flush yet, so the first subscribers do not wait for the
        last; once this turn has queued writes (load: several calls in a turn), queued
        with them."""
        if partial and not self._flush_scheduled:
            for transport_id in transport_ids:
                self.write(transport_id)
            return
        self._to_write.update(dict.fromkeys(transport_ids))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.schedule_flush()

    def flush_writes(self) -> None:
        """Write every socket that got bytes since the last flush."""
        self._flush_scheduled = False
        pending, self._to_write = self._to_write, {}
        for transport_id in pending:
            self.write(transport_id)

    # -- the auth webhook ----------------------------------------------------------------

    def _ask_webhook(self, connection: ConnectionInfo, channel: str) -> object:
        """The catch-all rule: a cached answer, else the backend's through `post_webhook`
        (awaited where the runtime awaits, blocking cooperatively where it blocks)."""
        target = self._webhook
        assert target is not None
        cached = self._webhook_cache.get(connection.user_id, channel, self.now())
        if cached is not None:
            return _rule_result(cached)
        response = self.post_webhook(target, webhook_request(target, connection, channel))
        if inspect.isawaitable(response):
            return self._webhook_answered_later(connection.user_id, channel, response)
        return self._webhook_answered(connection.user_id, channel, response)

    async def _webhook_answered_later(self, user_id: str | None, channel: str,
                                      response: Awaitable[bytes]) -> object:
        return self._webhook_answered(user_id, channel, await response)

    def _webhook_answered(self, user_id: str | None, channel: str, response: bytes) -> object:
        answer = read_answer(response)
        self._webhook_cache.put(user_id, channel, answer, self.now())
        return _rule_result(answer)

    # -- the event webhooks ---------------------------------------------------------------

    def _post_events(self, action: PostWebhook) -> object:
        """POST a batch of webhook events through `post_webhook`; its `WebhookPosted`
        (or an awaitable of it), never an exception."""
        try:
            response = self.post_webhook(action.target, action.request)
        except Exception as error:
            return self._posted(action, b"", error)
        if inspect.isawaitable(response):
            return self._posted_later(action, response)
        return self._posted(action, response, None)

    async def _posted_later(self, action: PostWebhook, response: Awaitable[bytes]) -> object:
        try:
            return self._posted(action, await response, None)
        except Exception as error:
            return self._posted(action, b"", error)

    @staticmethod
    def _posted(action: PostWebhook, response: bytes, error: Exception | None) -> WebhookPosted:
        target = action.target
        url = f"{'https' if target.secure else 'http'}://{target.host}:{target.port}{target.path}"
        status = response_status(response) if error is None else None
        if status is None or not 200 <= status < 300:
            log.warning("webhook %s: %s", url,
                        f"HTTP {status}" if status else repr(error or "no HTTP answer"))
        return WebhookPosted(request_id=action.request_id, response=response,
                             error=None if error is None else repr(error))

    # -- the runtime's hooks ---------------------------------------------------------------

    @staticmethod
    def thread_ident() -> int:
        """The calling OS thread's id (gevent: the unpatched one, not a greenlet's)."""
        return _thread.get_ident()

    @staticmethod
    def allocate_lock() -> _thread.LockType:
        """A lock that blocks the calling OS thread (gevent: the unpatched one)."""
        return _thread.allocate_lock()

    def call_soon_threadsafe(self, fn: Callable[[], None]) -> None:
        """From any thread: make the server's thread call `fn` soon, in call order. Raise
        RuntimeError if the loop has gone."""
        raise NotImplementedError

    def schedule_flush(self) -> None:
        """Make the loop call `flush_writes` once, after what it is running now."""
        raise NotImplementedError

    def write(self, transport_id: TransportId) -> None:
        """Write what the Node has for this socket (`data_to_send`), unless a write is
        still in progress there: then that writer pulls once it is done."""
        raise NotImplementedError

    def close_transport(self, transport_id: TransportId) -> bool:
        """Pull once more, write, close, abort after a grace period; False if the socket
        is unknown (gone already)."""
        raise NotImplementedError

    def run_callback(self, fn: Callable[..., Any], args: tuple[Any, ...],
                     answer: Answer) -> None:
        """Run an application callback the runtime's way, ending in `call_back`."""
        raise NotImplementedError

    def arm_timer(self, deadline: float) -> None:
        """Make the one timer fire at `deadline` (monotonic seconds); it then calls
        `tick()`."""
        raise NotImplementedError

    def post_webhook(self, target: WebhookTarget, request: bytes) -> bytes | Awaitable[bytes]:
        """Send `request` to the auth webhook and return its whole response (read to EOF:
        the request says `connection: close`), over TLS when `target.secure`, within
        `settings.auth_webhook_timeout` (else raise: the subscription is refused, 4500).
        Blocking cooperatively, or as an awaitable, the runtime's way."""
        raise NotImplementedError(f"the {self.runtime} runtime has no auth webhook")

    def tick(self) -> None:
        """What the timer does when it fires (and the broker's counters for /metrics)."""
        if self.broker is not None:
            history = self.history.history_statistics() if self.history is not None else None
            self.node.handle(broker_report(self.broker.statistics(), history), now=self.now())
        self.node.tick(now=self.now())
        self.pump()

    # -- BrokerListener: the bridge calls these on the server's thread ---------------------

    def message_received(self, topic: str, data: bytes) -> None:
        self.handle(EnvelopeReceived(topic=topic, data=data))

    def connection_lost(self, reason: str) -> None:
        log.warning("broker connection lost: %s", reason)
        self.handle(BrokerLost(reason=reason))

    def connection_restored(self) -> None:
        log.warning("broker connection restored")
        self.handle(BrokerRestored())

    def history_answered(self, answer: HistoryAppended | HistoryLoaded) -> None:
        self.handle(answer)


def _posted_answer(result: object, error: BaseException | None) -> WebhookPosted:
    """`_post_events` answers with its `WebhookPosted` (it never raises)."""
    assert isinstance(result, WebhookPosted) and error is None
    return result


def _anonymous(request: object) -> None:
    return None


def _rule_result(answer: WebhookAnswer) -> object:
    """A webhook answer as an authorization rule's result: False, True or the member info."""
    if not answer.allowed:
        return False
    return dict(answer.info) if answer.info is not None else True

