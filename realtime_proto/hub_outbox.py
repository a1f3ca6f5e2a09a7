"""What every part of the Hub shares: the clock, the connection tables and the output."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from .actions import Deliver, HubAction
from .config import Epoch
from .connection import Connection
from .envelope import Outgoing
from .errors import ErrorCode, LocalProtocolError, MessageError
from .events import ConnectionId
from .jsoncodec import quote
from .message import EventEncoder, JsonValue, MessageType, encode_message

__all__ = ["Outbox"]


class Outbox:
    """The Hub's shared state and output: the time of the latest input, this node's
    connections (by id, by channel, by user), the actions produced so far, and the
    messages the server makes itself (encoded once, delivered as `Deliver`).

    Each part of the Hub keeps its own state; this is what they all read and write.
    """

    def __init__(self, new_id: Callable[[], str], epoch: Epoch) -> None:
        #: message ids: this node's random prefix and a count (unique in the cluster,
        #: and cheaper than a random id per publish)
        self._message_prefix = new_id() + "."
        self._quoted_prefix = quote(self._message_prefix)[:-1]  # without its closing quote
        self._messages_made = 0
        self._epoch = epoch
        self._unix_ms_for, self._unix_ms_value = epoch.monotonic_at, epoch.unix_ms
        #: the `now` of the latest input (monotonic seconds)
        self.now = epoch.monotonic_at
        self.connections: dict[ConnectionId, Connection] = {}
        #: channel -> its local subscribers (a dict for insertion order)
        self.subscribers: dict[str, dict[ConnectionId, None]] = {}
        self.users: dict[str, set[ConnectionId]] = {}
        #: envelopes (`Outgoing`) become broker messages when drained (`Hub.actions`);
        #: the parts hold this list, so it is emptied, never replaced
        self.actions: list[HubAction | Outgoing] = []
        self.messages_out = 0
        self.errors: Counter[int] = Counter()

    def advance(self, now: float) -> None:
        """Move the clock to `now`.

        Raises:
            LocalProtocolError: `now` went backwards.
        """
        if now < self.now:
            raise LocalProtocolError(f"now went backwards ({now} < {self.now})")
        self.now = now

    def get(self, connection_id: ConnectionId) -> Connection:
        """A local connection.

        Raises:
            LocalProtocolError: no such connection here.
        """
        conn = self.connections.get(connection_id)
        if conn is None:
            raise LocalProtocolError(f"unknown connection {connection_id!r}")
        return conn

    def drain(self) -> list[HubAction | Outgoing]:
        """The actions produced so far, removed."""
        actions = self.actions[:]
        self.actions.clear()
        return actions

    def encode(self, kind: MessageType, now: float, *, channel: str | None = None,
               event: str | None = None, data: JsonValue = None,
               user_id: str | None = None) -> tuple[str, bytes]:
        """A message of this server's own and its id, encoded as `Message.encode` would
        (without building one: this is the publish path).

        Raises:
            MessageError: 4005 when `event` is not a string.
        """
        if event is not None and not isinstance(event, str):
            raise MessageError(ErrorCode.INVALID_FIELD, "field 'event' must be a string")
        self._messages_made += 1
        message_id = f"{self._message_prefix}{self._messages_made:x}"
        return message_id, encode_message(message_id, kind, channel, event, data,
                                          self.unix_ms(now), user_id)

    def event_encoder(self, now: float, user_id: str | None = None
                      ) -> Callable[[str, str, JsonValue], tuple[str, bytes]]:
        """`encode` for events to channels at one time (a batch of publishes): the
        function takes (channel, event, data) and returns the message id and bytes."""
        events = EventEncoder(self.unix_ms(now), user_id)
        prefix, quoted_prefix = self._message_prefix, self._quoted_prefix

        def encode(channel: str, event: str, data: JsonValue) -> tuple[str, bytes]:
            self._messages_made += 1
            made = self._messages_made
            # `%`: half the time of an f-string with a format spec, once per publish
            return "%s%x" % (prefix, made), events.encode(  # noqa: UP031
                b'%s%x"' % (quoted_prefix, made), channel, event, data)

        return encode

    def unix_ms(self, now: float) -> int:
        """Unix milliseconds at `now`, worked out once per distinct `now` (a batch of
        publishes shares one)."""
        if now != self._unix_ms_for:
            self._unix_ms_for, self._unix_ms_value = now, self._epoch.unix_ms_at(now)
        return self._unix_ms_value

    def deliver(self, targets: Iterable[ConnectionId], payload: bytes,
                event_id: str | None = None, exclude: ConnectionId | None = None,
                channel: str | None = None) -> None:
        """Send an encoded message to local connections (but `exclude`)."""
        chosen = tuple(c for c in targets if c != exclude) if exclude else tuple(targets)
        if chosen:
            self.messages_out += len(chosen)
            self.actions.append(Deliver(chosen, payload, event_id, channel))

    def reply(self, conn: Connection, event: str, data: JsonValue, now: float,
              channel: str | None = None) -> None:
        """An event of the server's to one connection."""
        _, payload = self.encode(MessageType.EVENT, now, channel=channel, event=event,
                                 data=data)
        self.deliver((conn.id,), payload)

    def error(self, conn: Connection, code: int, text: str, now: float,
              channel: str | None = None, **extra: JsonValue) -> None:
        """An `error` message to one connection (counted by code)."""
        self.errors[code] += 1
        _, payload = self.encode(MessageType.ERROR, now, channel=channel,
                                 data={"code": int(code), "message": text, **extra})
        self.deliver((conn.id,), payload)
