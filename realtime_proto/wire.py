"""Wire formats as plug-ins: what a client protocol must say to sit on the Hub.

A `WireCodec` turns the frames one kind of client sends into the Hub's inputs
(`decode` -> `HubInputs`) and the payloads the Hub delivers into that client's bytes
(`encode`). The fan-out asks each subscriber's codec for a message's bytes once per codec
per message, so a broadcast costs one encoding per wire format, whatever the number of
subscribers. The native JSON protocol (docs/protocol.md) is `jsonwire`; the Pusher
protocol is `pusher.wire`. A new client protocol is a new codec (and a front-door route
that opens its connections): the Hub and the fan-out loop stay as they are
(docs/wire-formats.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import final

from .events import ConnectionId, User
from .message import JsonValue
from .presence import Member

__all__ = ["HubInputs", "WireCodec"]


@final
@dataclass(frozen=True, slots=True)
class HubInputs:
    """What one client frame asks of the Node, in the order the Node applies it."""

    #: a native message for the Hub (raw JSON text, or a decoded object), or None
    message: str | bytes | JsonValue = None
    #: a channel (the Hub's name) the client's own signature authorized, with its member
    grant: tuple[str, Member | None] | None = None
    #: wire bytes to answer at once (an error, an acknowledgement); after a sign-in is
    #: tried (a refused one is answered with `WireCodec.error` instead), nothing else is
    #: applied
    reply: bytes | None = None
    #: a user the frame signs the connection in as (the Hub's form of the user)
    user: User | None = None
    #: the codec's own name for that user, passed back to `encode` once signed in
    user_tag: str | None = None


class WireCodec(ABC):
    """One client protocol over one framing; shared by all its connections (stateless).

    Codecs are compared by identity: the fan-out caches one encoding per codec object.
    """

    #: the label of its encodings in `NodeStatistics.encodings`
    name: str
    #: the codec to ask when `encode` answers None (a compressed codec's plain twin)
    fallback: WireCodec | None = None
    #: whether the native HTTP calls `/send` and `/close` may name its connections
    http_commands: bool = True

    @abstractmethod
    def encode(self, payload: bytes, event_id: str | None, user: str | None) -> bytes | None:
        """The bytes of one payload the Hub delivers; b"" when the protocol has nothing
        to say, None to use `fallback`'s.

        Args:
            payload: the native JSON message (docs/protocol.md), as the Hub encoded it.
            event_id: the message's resumable id, for formats that carry one (SSE).
            user: the connection's `user_tag` for a delivery with no channel (to one
                connection or one user); None for every channel message.
        """

    def decode(self, connection_id: ConnectionId, user: str | None, data: str | bytes, *,
               max_bytes: int) -> HubInputs:
        """One frame from a client (`user`: its `user_tag`, if signed in); never raises.
        By default the frame is a native message."""
        return HubInputs(message=data)

    def notice(self, payload: bytes) -> bytes:
        """The bytes of a message the Node itself writes (`messages.dropped`)."""
        return self.encode(payload, None, None) or b""

    def goodbye(self, payload: bytes) -> bytes:
        """What to send ahead of closing: the `connection.closed` message, for formats
        without a close code of their own (default: nothing)."""
        return b""

    def close_code(self, code: int) -> int:
        """The close code this protocol's client gets for one of the Hub's."""
        return code

    def error(self, code: int, message: str) -> bytes:
        """An error frame, for a refused sign-in."""
        raise NotImplementedError(f"{self.name} has no sign-in frames")
