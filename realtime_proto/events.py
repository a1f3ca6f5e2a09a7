"""Inputs to the Hub and the Node: past-tense facts, frozen and validated."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NewType, NoReturn, final

from .message import JsonValue
from .metrics import HistogramSnapshot

__all__ = [
    "AuthenticationAnswered",
    "AuthorizationAnswered",
    "BrokerLost",
    "BrokerReported",
    "BrokerRestored",
    "ConnectionClosed",
    "ConnectionId",
    "ConnectionOpened",
    "EnvelopeReceived",
    "FrozenDict",
    "HistoryAppended",
    "HistoryLoaded",
    "HubEvent",
    "MessageReceived",
    "NodeEvent",
    "TransportId",
    "TransportKind",
    "User",
    "WebhookPosted",
]

#: A client connection as the Hub sees it (one per WebSocket, SSE stream or poll session).
ConnectionId = NewType("ConnectionId", str)
#: One socket as the Node and the adapter see it.
TransportId = NewType("TransportId", str)


class TransportKind(enum.StrEnum):
    """How a client connection reaches the Hub (the `transport` label of the metrics)."""

    WEBSOCKET = "websocket"
    #: a WebSocket speaking the Pusher protocol
    PUSHER = "pusher"
    SSE = "sse"
    #: long-polling (`GET /poll`, `POST /send`)
    POLLING = "polling"
    #: `MemoryTransport`, or an application driving the Hub itself
    MEMORY = "memory"


class FrozenDict(dict[str, Any]):
    """A dict that refuses every change, so a frozen value can hold a mapping: JSON
    encoders take it as the dict it is. Only its top level is frozen."""

    __slots__ = ()

    def _refuse(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(f"{type(self).__name__} cannot be changed")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> tuple[type[FrozenDict], tuple[dict[str, Any]]]:
        return type(self), (dict(self),)

    def __copy__(self) -> FrozenDict:
        return self


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class User:
    """Who a connection belongs to, as authentication established it."""

    id: str
    #: presence info shown to other members (a `FrozenDict` once built)
    info: Mapping[str, Any] = field(default_factory=FrozenDict)
    #: channel patterns this user may join without asking a rule (the JWT `channels` claim)
    channels: tuple[str, ...] = ()
    #: when the connection's credentials expire (Unix ms; the JWT `exp`): the connection
    #: must refresh them before (`docs/protocol.md`, "Expiring connections"), or it closes
    expires_ms: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.info, FrozenDict):
            object.__setattr__(self, "info", FrozenDict(self.info))


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionOpened:
    """A client connection was accepted; `user` is None for an anonymous one."""

    connection_id: ConnectionId
    user: User | None = None
    transport: TransportKind = TransportKind.MEMORY
    peer: str | None = None
    #: whether the client answers `ping` (bidirectional transports); idle timeout applies
    expects_pong: bool = True

    def __post_init__(self) -> None:
        """Raises:
            ValueError: `transport` is not a `TransportKind` (nor the value of one).
        """
        object.__setattr__(self, "transport", TransportKind(self.transport))


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class MessageReceived:
    """A client sent a message: raw text/bytes, or an already-decoded JSON value."""

    connection_id: ConnectionId
    data: str | bytes | JsonValue


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionClosed:
    """A client connection is gone."""

    connection_id: ConnectionId


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class EnvelopeReceived:
    """The broker delivered bytes published by some node on a topic."""

    topic: str
    data: bytes


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizationAnswered:
    """The application's authorization callback answered an `Authorize` action."""

    request_id: str
    allowed: bool
    #: presence info returned by the callback, if any
    info: Mapping[str, Any] | None = None
    #: set when the callback raised; the subscription is refused with 4500
    error: str | None = None


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryAppended:
    """A shared stream answered a `HistoryAppend`: the message's position, or why not."""

    request_id: str
    epoch: str | None = None
    offset: int | None = None
    #: set when the store failed; the message goes out without a position
    error: str | None = None


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryLoaded:
    """A shared stream answered a `HistoryRead`."""

    request_id: str
    epoch: str | None = None
    #: the stream's latest offset
    offset: int = 0
    #: (offset, unstamped payload), oldest first
    entries: tuple[tuple[int, bytes], ...] = ()
    #: each user's read position on the channel, as the store keeps them
    reads: Mapping[str, int | str] = field(default_factory=dict)
    #: set when the store failed; the subscription succeeds without recovery
    error: str | None = None


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class AuthenticationAnswered:
    """The application's authenticate hook answered an `Authenticate` action."""

    request_id: str
    #: None: anonymous when `rejected` is False, refused with 401 when True
    user: User | None = None
    rejected: bool = False
    reason: str = ""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookPosted:
    """What became of a `PostWebhook`: the backend's raw HTTP response, or the error
    (connection refused, timeout) that stopped it."""

    request_id: str
    response: bytes = b""
    error: str | None = None


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerLost:
    """The broker connection went away."""

    reason: str = ""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerRestored:
    """The broker connection is back and every topic is subscribed again."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerReported:
    """The broker driver's own counters, fed by the adapter for /metrics."""

    published: int = 0
    received: int = 0
    #: publishes lost for good (the outage queue overflowed, or the broker refused them)
    dropped: int = 0
    #: publishes waiting to be sent (during an outage, until the reconnect)
    queued: int = 0
    reconnects: int = 0
    #: seconds from publish to the broker taking the message
    publish_latency: HistogramSnapshot | None = None
    #: connected, but nothing queued has gone through for a second
    stalled: bool = False
    #: False while the shared history store is unreachable (appends fail at once)
    history_available: bool = True
    #: history appends and read positions waiting for the store
    history_queued: int = 0
    #: history appends failed unsent because that queue was full
    history_overflowed: int = 0


HubEvent = (
    ConnectionOpened
    | MessageReceived
    | ConnectionClosed
    | EnvelopeReceived
    | AuthorizationAnswered
    | BrokerLost
    | BrokerRestored
    | BrokerReported
    | HistoryAppended
    | HistoryLoaded
)
NodeEvent = HubEvent | AuthenticationAnswered | WebhookPosted
