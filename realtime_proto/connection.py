"""A client connection as the Hub keeps it, and what a subscription request asks for."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping, MutableSet
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .actions import ConnectionInfo
from .errors import ErrorCode, MessageError
from .events import ConnectionId, TransportKind, User
from .message import JsonValue
from .presence import Member
from .ratelimit import TokenBucket

__all__ = ["Connection", "PendingAuthorization", "SubscribeOptions"]


class Connection:
    """One client connection as the Hub keeps it (mutable; only the Hub changes it).

    Slotted, and its containers cost nothing until used: the channels are a tuple
    (an empty one shared by all), pending authorizations and metadata a dict made on
    first use. `channels` and `pending` are set and mapping views over them, so the
    Hub keeps using set and dict operations.
    """

    __slots__ = ("_channels", "_grants", "_metadata", "_pending", "channel_expiry",
                 "connected_at", "expects_pong", "expires_at", "id", "last_activity_at",
                 "message_bucket", "peer", "pinged", "refresh_asked", "subscribe_bucket",
                 "transport", "user")

    def __init__(self, *, id: ConnectionId, user: User | None, transport: TransportKind,
                 peer: str | None, expects_pong: bool, connected_at: float,
                 last_activity_at: float, pinged: bool = False,
                 message_bucket: TokenBucket | None = None,
                 subscribe_bucket: TokenBucket | None = None) -> None:
        self.id = id
        self.user = user
        self.transport = transport
        self.peer = peer
        self.expects_pong = expects_pong
        self.connected_at = connected_at
        self.last_activity_at = last_activity_at
        self.pinged = pinged
        self.message_bucket = message_bucket
        self.subscribe_bucket = subscribe_bucket
        #: when its credentials expire (monotonic seconds), None if they do not
        self.expires_at: float | None = None
        #: whether `connection.refresh_required` went out for the current credentials
        self.refresh_asked = False
        #: channels joined with a subscription token that expires: channel -> (when,
        #: whether `subscription.refresh_required` went out)
        self.channel_expiry: dict[str, tuple[float, bool]] | None = None
        self._channels: tuple[str, ...] = ()
        self._pending: dict[str, str] | None = None  # channel -> request id
        self._metadata: dict[str, Any] | None = None
        #: channel -> presence member, for channels a signature authorized (Pusher)
        self._grants: dict[str, Member | None] | None = None

    def __repr__(self) -> str:
        return f"Connection(id={self.id!r}, transport={self.transport!r})"

    @property
    def channels(self) -> MutableSet[str]:
        """The channels it is subscribed to (a live view)."""
        return _Channels(self)

    @property
    def pending(self) -> MutableMapping[str, str]:
        """Channel -> request id of the authorizations in flight (a live view)."""
        return _Pending(self)

    @property
    def metadata(self) -> Mapping[str, Any]:
        """Application metadata attached to the connection (read-only)."""
        return MappingProxyType(self._metadata) if self._metadata else _NO_METADATA

    @property
    def user_id(self) -> str | None:
        """The authenticated user's id, or None for an anonymous connection."""
        return self.user.id if self.user else None

    @property
    def authenticated(self) -> bool:
        """Whether a user is known."""
        return self.user is not None

    @property
    def grants(self) -> Mapping[str, Member | None]:
        """Channels a signature authorized (the Pusher protocol), with the presence
        member it names (read-only)."""
        return MappingProxyType(self._grants) if self._grants else _NO_GRANTS

    def grant(self, channel: str, member: Member | None) -> None:
        """Record a channel a signature authorized (the Node checked it)."""
        if self._grants is None:
            self._grants = {}
        self._grants[channel] = member

    def revoke(self, channel: str) -> None:
        """Forget a channel's grant (the connection left it)."""
        if self._grants is not None:
            self._grants.pop(channel, None)

    def member_id(self, channel: str) -> str | None:
        """Who the connection is on a channel: the member its grant names, else its user."""
        member = self._grants.get(channel) if self._grants else None
        return member.user_id if member is not None else self.user_id

    def get(self, key: str, default: Any = None) -> Any:
        """Application metadata attached to the connection."""
        return self._metadata.get(key, default) if self._metadata else default

    def set(self, key: str, value: Any) -> None:
        """Attach application metadata (authorization callbacks see it)."""
        if self._metadata is None:
            self._metadata = {}
        self._metadata[key] = value

    def info(self) -> ConnectionInfo:
        """A frozen snapshot for callbacks."""
        return ConnectionInfo(
            id=self.id,
            user_id=self.user.id if self.user else None,
            authenticated=self.user is not None,
            info=dict(self.user.info) if self.user else {},
            metadata=dict(self._metadata or {}),
            transport=self.transport,
            peer=self.peer,
        )


_NO_METADATA: Mapping[str, Any] = MappingProxyType({})
_NO_GRANTS: Mapping[str, Member | None] = MappingProxyType({})


class _Channels(MutableSet[str]):
    """A connection's channels as a set, stored as a tuple on it (at most
    `max_subscriptions` names, so a scan is cheap)."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def __contains__(self, channel: object) -> bool:
        return channel in self._conn._channels

    def __iter__(self) -> Iterator[str]:
        return iter(self._conn._channels)

    def __len__(self) -> int:
        return len(self._conn._channels)

    def add(self, channel: str) -> None:
        if channel not in self._conn._channels:
            self._conn._channels += (channel,)

    def discard(self, channel: str) -> None:
        channels = self._conn._channels
        if channel in channels:
            self._conn._channels = tuple(c for c in channels if c != channel)


class _Pending(MutableMapping[str, str]):
    """A connection's authorizations in flight; the dict exists only while there are."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def __getitem__(self, channel: str) -> str:
        if self._conn._pending is None:
            raise KeyError(channel)
        return self._conn._pending[channel]

    def __setitem__(self, channel: str, request_id: str) -> None:
        if self._conn._pending is None:
            self._conn._pending = {}
        self._conn._pending[channel] = request_id

    def __delitem__(self, channel: str) -> None:
        pending = self._conn._pending
        if pending is None:
            raise KeyError(channel)
        del pending[channel]
        if not pending:
            self._conn._pending = None

    def __iter__(self) -> Iterator[str]:
        return iter(self._conn._pending or ())

    def __len__(self) -> int:
        return len(self._conn._pending or ())


@dataclass(frozen=True, slots=True)
class SubscribeOptions:
    """What a subscribe may ask for in its `data`: recovery, or recent history."""

    recover: tuple[str, int] | None = None
    history: int = 0
    token: str | None = None

    @classmethod
    def parse(cls, data: JsonValue) -> SubscribeOptions:
        """Read the options of a subscribe message.

        Raises:
            MessageError: 4005 when one has the wrong type.
        """
        if not isinstance(data, dict):
            return cls()
        recover, history = data.get("recover"), data.get("history", 0)
        position = None
        if isinstance(recover, dict):
            epoch, offset = recover.get("epoch"), recover.get("offset")
            if not isinstance(epoch, str) or not isinstance(offset, int):
                raise MessageError(ErrorCode.INVALID_FIELD,
                                   "'recover' needs 'epoch' (string) and 'offset' (integer)")
            position = (epoch, offset)
        if not isinstance(history, int) or isinstance(history, bool) or history < 0:
            raise MessageError(ErrorCode.INVALID_FIELD, "'history' must be a count")
        token = data.get("token")
        if token is not None and not isinstance(token, str):
            raise MessageError(ErrorCode.INVALID_FIELD, "'token' must be a string")
        return cls(position, history, token)


@dataclass(slots=True)
class PendingAuthorization:
    """A subscription waiting for the application's authorization callback."""

    connection_id: ConnectionId
    channel: str
    deadline: float
    options: SubscribeOptions
