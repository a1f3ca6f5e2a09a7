"""Error codes shared by every transport, and the project's exception classes."""

from __future__ import annotations

import enum

__all__ = [
    "DISCONNECTED",
    "ConfigError",
    "ErrorCode",
    "LocalProtocolError",
    "MessageError",
    "RealtimeError",
]


class ErrorCode(enum.IntEnum):
    """Codes used in `error` messages, WebSocket close frames and HTTP error bodies."""

    #: the bytes are not valid JSON
    MALFORMED_MESSAGE = 4000
    #: authentication required, or the token is bad or expired
    UNAUTHENTICATED = 4001
    #: the bytes are not UTF-8
    INVALID_UTF8 = 4002
    #: not authorized for this channel or action
    FORBIDDEN = 4003
    #: valid JSON that is not an object
    NOT_AN_OBJECT = 4004
    #: a field has the wrong type
    INVALID_FIELD = 4005
    #: `type` is not one of the known message types
    UNKNOWN_TYPE = 4006
    #: a field this message type needs is missing
    MISSING_FIELD = 4007
    #: the channel name breaks the naming rules
    INVALID_CHANNEL_NAME = 4008
    #: the message is over the configured size
    MESSAGE_TOO_LARGE = 4009
    #: unsubscribe from a channel the connection is not in
    NOT_SUBSCRIBED = 4010
    #: over the per-connection subscription limit
    TOO_MANY_SUBSCRIPTIONS = 4011
    #: too many authorizations in flight on one connection
    TOO_MANY_PENDING = 4012
    #: over the connection limit of the node or of the user
    TOO_MANY_CONNECTIONS = 4013
    #: nothing heard from the client within the idle timeout
    IDLE_TIMEOUT = 4020
    #: the client did not read; its output buffer passed the limit
    SLOW_CONSUMER = 4021
    #: an SSE or long-poll connection id that is unknown or expired
    UNKNOWN_CONNECTION = 4022
    #: too many requests; retry later
    RATE_LIMITED = 4029
    #: a bug on the server side
    INTERNAL_ERROR = 4500

    @property
    def slug(self) -> str:
        """The lower-case name used in metrics and logs."""
        return self.name.lower()


#: the close code of a connection the application closed (`disconnect_user`,
#: `POST /api/users/{id}/disconnect`): clients do not reconnect after it. (As the code
#: of an `error` message, 4010 is `NOT_SUBSCRIBED`; close frames and error messages are
#: separate spaces.)
DISCONNECTED = 4010


class RealtimeError(Exception):
    """Base class of every exception this package raises."""


class ConfigError(RealtimeError, ValueError):
    """A configuration value is invalid."""


class LocalProtocolError(RealtimeError):
    """The caller misused a state machine (unknown id, time going backwards, …)."""


class MessageError(RealtimeError):
    """A message from a peer is invalid; carries the code to answer with."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
