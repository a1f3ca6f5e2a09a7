"""The client side of the protocol as a state machine: messages in, messages out, no I/O.

It keeps what a client must remember across reconnects — subscriptions, stream positions
for recovery, presence members, sends queued while offline — and decides when to retry
(exponential backoff with jitter) and when a silent connection is dead.
"""

from __future__ import annotations

import enum
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, final

from .message import JsonValue

__all__ = [
    "ChannelMessage",
    "ClientEvent",
    "ClientProtocol",
    "ClientState",
    "Connected",
    "PresenceChanged",
    "Subscribed",
    "SubscriptionFailed",
]


class ClientState(enum.Enum):
    """Where a client connection is."""

    #: the first connection is being made
    CONNECTING = "connecting"
    #: `connection.established` arrived
    CONNECTED = "connected"
    #: the connection was lost; the next attempt waits for `next_attempt_at`
    RECONNECTING = "reconnecting"
    #: closed on purpose
    DISCONNECTED = "disconnected"
    #: the server refused authentication, or attempts ran out
    FAILED = "failed"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Connected:
    """The server accepted the connection."""

    connection_id: str
    user_id: str | None


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Subscribed:
    """A subscription succeeded; `recovered` says whether missed messages follow."""

    channel: str
    recovered: bool | None = None


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriptionFailed:
    """The server refused a subscription."""

    channel: str
    code: int
    message: str


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelMessage:
    """An event on a channel, or addressed to this connection (`channel` None)."""

    channel: str | None
    event: str
    data: JsonValue
    message: dict[str, Any] = field(default_factory=dict)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class PresenceChanged:
    """A presence channel's member list changed (sync, join or leave)."""

    channel: str
    #: presence.sync, user.joined or user.left
    event: str
    data: JsonValue
    members: dict[str, Any]


ClientEvent = Connected | Subscribed | SubscriptionFailed | ChannelMessage | PresenceChanged


@dataclass(slots=True)
class _Channel:
    name: str
    epoch: str | None = None
    offset: int | None = None
    members: dict[str, Any] = field(default_factory=dict)
    active: bool = False


class ClientProtocol:
    """One logical client across any number of connections.

    Call `connection_made(now=…)` when a socket opens, `receive(text, now=…)` for every
    message, `connection_lost(now=…)` when it closes, and `tick(now=…)` at
    `next_deadline()`. Drain `messages_to_send()` after each call. `jitter` returns a
    float in [0, 1) (inject a seeded one in tests).
    """

    def __init__(self, *, jitter: Callable[[], float], backoff_min: float = 0.5,
                 backoff_max: float = 20.0, max_queued: int = 1000,
                 heartbeat_grace: float = 5.0) -> None:
        self.state = ClientState.CONNECTING
        self.connection_id: str | None = None
        self.user_id: str | None = None
        self.next_attempt_at: float | None = None
        self._jitter = jitter
        self._backoff = (backoff_min, backoff_max)
        self._attempts = 0
        self._channels: dict[str, _Channel] = {}
        self._queued: deque[str] = deque(maxlen=max_queued)
        self._outbox: list[str] = []
        self._heartbeat_grace = heartbeat_grace
        self._silence_limit: float | None = None
        self._last_heard_at = 0.0

    # -- the application's side ----------------------------------------------------------

    def subscribe(self, channel: str) -> None:
        """Join a channel now, and again after every reconnect (recovering what was missed)."""
        if channel not in self._channels:
            self._channels[channel] = _Channel(channel)
            if self.state is ClientState.CONNECTED:
                self._outbox.append(self._subscribe_message(self._channels[channel]))

    def unsubscribe(self, channel: str) -> None:
        """Leave a channel."""
        if self._channels.pop(channel, None) is not None and self.state is ClientState.CONNECTED:
            self._outbox.append(_encode({"type": "unsubscribe", "channel": channel}))

    def send(self, channel: str, event: str, data: JsonValue = None) -> None:
        """A client event; queued (bounded, oldest dropped) while not connected."""
        text = _encode({"type": "event", "channel": channel, "event": event, "data": data})
        if self.state is ClientState.CONNECTED:
            self._outbox.append(text)
        else:
            self._queued.append(text)

    def members(self, channel: str) -> dict[str, Any]:
        """The current members of a presence channel: user id → info."""
        entry = self._channels.get(channel)
        return dict(entry.members) if entry else {}

    def close(self) -> None:
        """Stop for good: no more reconnects."""
        self.state = ClientState.DISCONNECTED
        self.next_attempt_at = None

    # -- the I/O side --------------------------------------------------------------------

    def connection_made(self, *, now: float) -> None:
        """A socket opened; wait for `connection.established`."""
        self._last_heard_at = now

    def connection_lost(self, *, now: float, refused: bool = False) -> None:
        """The socket closed or could not open; plan the next attempt."""
        for entry in self._channels.values():
            entry.active = False
        if self.state in (ClientState.DISCONNECTED, ClientState.FAILED):
            return
        if refused:
            self.state = ClientState.FAILED
            self.next_attempt_at = None
            return
        self.state = ClientState.RECONNECTING
        low, high = self._backoff
        ceiling = min(high, low * 2 ** self._attempts)
        self._attempts += 1
        self.next_attempt_at = now + ceiling * (0.5 + self._jitter() / 2)  # bounded jitter

    def receive(self, text: str | bytes, *, now: float) -> list[ClientEvent]:
        """One message from the server; the events it means for the application."""
        self._last_heard_at = now
        message = json.loads(text)
        kind, event, channel = message.get("type"), message.get("event"), message.get("channel")
        data = message.get("data")
        if kind == "ping":
            self._outbox.append(_encode({"type": "pong"}))
            return []
        if kind == "error":
            details = data if isinstance(data, dict) else {}
            if channel in self._channels:
                del self._channels[channel]
                return [SubscriptionFailed(channel=channel, code=int(details.get("code", 0)),
                                           message=str(details.get("message", "")))]
            return []
        if kind != "event":
            return []
        if event == "connection.established":
            return [self._established(data, now)]
        entry = self._channels.get(channel) if channel else None
        if event == "subscription.succeeded" and entry is not None:
            entry.active = True
            if isinstance(data, dict) and "epoch" in data:
                entry.epoch, entry.offset = data["epoch"], data.get("offset")
            return [Subscribed(channel=entry.name, recovered=(data or {}).get("recovered"))]
        if entry is not None and isinstance(message.get("offset"), int):
            entry.offset = message["offset"]
            entry.epoch = message.get("epoch", entry.epoch)
        if entry is not None and event in ("presence.sync", "user.joined", "user.left"):
            return [self._presence(entry, event, data)]
        return [ChannelMessage(channel=channel, event=str(event), data=data, message=message)]

    def messages_to_send(self) -> list[str]:
        """Drain the messages to write, in order."""
        outbox, self._outbox = self._outbox, []
        return outbox

    def next_deadline(self) -> float | None:
        """When the connection counts as dead if nothing arrives, or the next attempt."""
        if self.state is ClientState.RECONNECTING:
            return self.next_attempt_at
        if self.state is ClientState.CONNECTED and self._silence_limit is not None:
            return self._last_heard_at + self._silence_limit
        return None

    def is_dead(self, *, now: float) -> bool:
        """Whether the server has been silent past twice its heartbeat plus a grace."""
        return (self.state is ClientState.CONNECTED and self._silence_limit is not None
                and now - self._last_heard_at > self._silence_limit)

    # -- inside --------------------------------------------------------------------------

    def _established(self, data: JsonValue, now: float) -> Connected:
        details = data if isinstance(data, dict) else {}
        self.state = ClientState.CONNECTED
        self._attempts = 0
        self.next_attempt_at = None
        self.connection_id = details.get("connection_id")
        self.user_id = details.get("user_id")
        heartbeat = details.get("heartbeat")
        if isinstance(heartbeat, int | float):
            self._silence_limit = 2 * heartbeat + self._heartbeat_grace
        self._outbox.extend(self._subscribe_message(e) for e in self._channels.values())
        self._outbox.extend(self._queued)
        self._queued.clear()
        return Connected(connection_id=str(self.connection_id), user_id=self.user_id)

    def _subscribe_message(self, entry: _Channel) -> str:
        message: dict[str, Any] = {"type": "subscribe", "channel": entry.name}
        if entry.epoch is not None and entry.offset is not None:
            message["data"] = {"recover": {"epoch": entry.epoch, "offset": entry.offset}}
        return _encode(message)

    def _presence(self, entry: _Channel, event: str, data: JsonValue) -> PresenceChanged:
        details = data if isinstance(data, dict) else {}
        if event == "presence.sync":
            entry.members = {m["user_id"]: m.get("info") for m in details.get("members", [])}
        elif event == "user.joined":
            entry.members[details["user_id"]] = details.get("info")
        else:
            entry.members.pop(str(details.get("user_id")), None)
        return PresenceChanged(channel=entry.name, event=event, data=data,
                               members=dict(entry.members))


def _encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))
