"""A client connection as the Hub keeps it, and what a subscription request asks for."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .actions import ConnectionInfo
from .errors import ErrorCode, MessageError
from .events import ConnectionId, User
from .message import JsonValue
from .ratelimit import TokenBucket

__all__ = ["Connection", "PendingAuthorization", "SubscribeOptions"]


@dataclass(slots=True, eq=False)
class Connection:
    """One client connection as the Hub keeps it (mutable; only the Hub changes it)."""

    id: ConnectionId
    user: User | None
    transport: str
    peer: str | None
    expects_pong: bool
    connected_at: float
    last_activity_at: float
    pinged: bool = False
    channels: set[str] = field(default_factory=set)
    pending: dict[str, str] = field(default_factory=dict)  # channel -> request id
    metadata: dict[str, Any] = field(default_factory=dict)
    message_bucket: TokenBucket | None = None
    subscribe_bucket: TokenBucket | None = None

    @property
    def user_id(self) -> str | None:
        """The authenticated user's id, or None for an anonymous connection."""
        return self.user.id if self.user else None

    @property
    def authenticated(self) -> bool:
        """Whether a user is known."""
        return self.user is not None

    def get(self, key: str, default: Any = None) -> Any:
        """Application metadata attached to the connection."""
        return self.metadata.get(key, default)

    def set(self, key: str, value: Any) -> None:
        """Attach application metadata (authorization callbacks see it)."""
        self.metadata[key] = value

    def info(self) -> ConnectionInfo:
        """A frozen snapshot for callbacks."""
        return ConnectionInfo(
            id=self.id,
            user_id=self.user.id if self.user else None,
            authenticated=self.user is not None,
            info=dict(self.user.info) if self.user else {},
            metadata=dict(self.metadata),
            transport=self.transport,
            peer=self.peer,
        )


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
