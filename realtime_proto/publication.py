"""What `Hub.broadcast_many` takes: one event to publish to a channel.

(Without postponed annotations: the fields' types are objects, which the API reference
can show; a named tuple's generated constructor could not resolve their names.)
"""

from typing import NamedTuple

from .events import ConnectionId
from .message import JsonValue

__all__ = ["Publication", "PublicationTuple"]


class Publication(NamedTuple):
    """One event to publish to a channel (`Hub.broadcast_many`)."""

    channel: str
    event: str
    data: JsonValue = None
    #: a connection that must not receive it (the sender of a client event)
    exclude: ConnectionId | None = None


#: what `Hub.broadcast_many` takes: a `Publication`, or the plain tuple of its fields
PublicationTuple = tuple[str, str, JsonValue, ConnectionId | None]
