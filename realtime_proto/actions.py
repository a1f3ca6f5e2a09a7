"""Outputs of the Hub and the Node: imperative actions for the adapter to carry out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, final

from .channels import AuthorizeCallback
from .events import ConnectionId, TransportId, TransportKind

if TYPE_CHECKING:  # (webhook.py imports this module)
    from .webhook import WebhookTarget

__all__ = [
    "Authenticate",
    "AuthenticationRequest",
    "Authorize",
    "BrokerPublish",
    "BrokerSubscribe",
    "BrokerUnsubscribe",
    "ClientEventSent",
    "CloseTransport",
    "ConnectionInfo",
    "Deliver",
    "DeliverBundle",
    "Disconnect",
    "HistoryAppend",
    "HistoryRead",
    "HubAction",
    "NodeAction",
    "Notify",
    "PostWebhook",
    "SaveReadPosition",
    "Transmit",
]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionInfo:
    """A snapshot of a connection, handed to the application's callbacks."""

    id: ConnectionId
    user_id: str | None
    authenticated: bool
    info: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    transport: TransportKind = TransportKind.MEMORY
    peer: str | None = None


@final
@dataclass(frozen=True, slots=True)
class Deliver:
    """Send one encoded message (JSON bytes, encoded once) to these connections."""

    connection_ids: tuple[ConnectionId, ...]
    payload: bytes
    #: the SSE event id (`epoch:offset:channel` on channels with history), if any
    event_id: str | None = None
    #: the channel it was published on (its slow-consumer policy applies)
    channel: str | None = None


@final
@dataclass(frozen=True, slots=True)
class DeliverBundle:
    """Send several encoded messages of a channel, in order, to these connections: what a
    bundle from another node carries (one action for the run, not one per message)."""

    connection_ids: tuple[ConnectionId, ...]
    payloads: Sequence[bytes]
    channel: str


@final
@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close a connection with a code; the Hub has already forgotten it."""

    connection_id: ConnectionId
    code: int
    reason: str = ""


@final
@dataclass(frozen=True, slots=True)
class BrokerPublish:
    """Publish an envelope to the broker."""

    topic: str
    data: bytes


@final
@dataclass(frozen=True, slots=True)
class BrokerSubscribe:
    """Start receiving a topic from the broker."""

    topic: str


@final
@dataclass(frozen=True, slots=True)
class BrokerUnsubscribe:
    """Stop receiving a topic from the broker."""

    topic: str


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Authorize:
    """Run `callback(connection, channel)` and answer with `AuthorizationAnswered`."""

    request_id: str
    callback: AuthorizeCallback
    connection: ConnectionInfo
    channel: str


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryAppend:
    """Append an unstamped message to a channel's shared stream; answer with
    `HistoryAppended`. Carry appends out in the order they come: the store gives the
    offsets, and the Hub delivers in the order it published."""

    request_id: str
    channel: str
    payload: bytes
    #: the channel's history rule: keep the latest `size` messages for `ttl` seconds
    size: int
    ttl: float
    #: start a new epoch with this message: an earlier publish on the channel could not be
    #: placed, so no recovery may span it
    new_epoch: bool = False


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryRead:
    """Read a channel's shared stream; answer with `HistoryLoaded`."""

    request_id: str
    channel: str
    #: the entries after this offset; None: only the latest `limit`
    since: int | None
    limit: int
    ttl: float


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SaveReadPosition:
    """Keep a user's read position on a channel in the shared store (no answer); an
    integer position never moves backwards there either."""

    channel: str
    user_id: str
    position: int | str
    #: seconds the positions of the channel are kept after the latest move
    ttl: float


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class AuthenticationRequest:
    """What the application's authenticate hook sees of a connecting client."""

    token: str | None
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    peer: str | None


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Authenticate:
    """Run the application's authenticate hook; answer with `AuthenticationAnswered`."""

    request_id: str
    request: AuthenticationRequest


@final
@dataclass(frozen=True, slots=True)
class Transmit:
    """Bytes are waiting for these sockets: pull each one's with `Node.data_to_send`.

    One action per Node call, for every socket that got output in it (a fan-out to
    10,000 sockets is one action, not 10,000). `partial`: one chunk of a fan-out that
    goes on at the next `Node.actions()` (`NodeConfig.fanout_chunk`): write these now if
    the socket writes are not being coalesced, so the first subscribers need not wait
    for the last."""

    transport_ids: tuple[TransportId, ...]
    partial: bool = False


@final
@dataclass(frozen=True, slots=True)
class CloseTransport:
    """Close this socket once what `Node.data_to_send` returned has been written."""

    transport_id: TransportId


@final
@dataclass(frozen=True, slots=True)
class ClientEventSent:
    """A connection of this node sent a client event (already delivered)."""

    channel: str
    event: str
    data: Any
    user_id: str | None
    connection_id: ConnectionId


@final
@dataclass(frozen=True, slots=True)
class Notify:
    """Events for the backend's webhooks (`docs/webhooks.md`): JSON objects, in order."""

    events: tuple[Mapping[str, Any], ...]


@final
@dataclass(frozen=True, slots=True)
class PostWebhook:
    """POST these bytes (a whole HTTP/1.1 request) to the target, then feed the outcome
    back with `WebhookPosted(request_id, …)`."""

    request_id: str
    target: WebhookTarget
    request: bytes


HubAction = (
    Deliver
    | DeliverBundle
    | Disconnect
    | BrokerPublish
    | BrokerSubscribe
    | BrokerUnsubscribe
    | Authorize
    | HistoryAppend
    | HistoryRead
    | SaveReadPosition
    | ClientEventSent
    | Notify
)
NodeAction = (
    Transmit
    | CloseTransport
    | BrokerPublish
    | BrokerSubscribe
    | BrokerUnsubscribe
    | Authorize
    | Authenticate
    | HistoryAppend
    | HistoryRead
    | SaveReadPosition
    | PostWebhook
)
