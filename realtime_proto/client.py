"""The client side of the protocol as a state machine: messages in, messages out, no I/O.

It keeps what a client must remember across reconnects — subscriptions, stream positions
for recovery, presence members, sends queued while offline — and decides when to retry
(exponential backoff with jitter, or a busy server's `Retry-After`) and when a silent
connection is dead. When the server reports lost messages (`messages.lost`) on a channel
with history, it resubscribes to replay them and delivers each offset once.
"""

from __future__ import annotations

import bisect
import enum
import json
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, final

from .errors import DISCONNECTED, ErrorCode
from .message import JsonValue

__all__ = [
    "MAX_RETRY_AFTER",
    "ChannelMessage",
    "ClientEvent",
    "ClientProtocol",
    "ClientState",
    "Connected",
    "MessagesLost",
    "PresenceChanged",
    "Subscribed",
    "SubscriptionFailed",
    "busy_retry_after",
]

#: the longest `Retry-After` (seconds) a client waits for; a longer one is cut to this
MAX_RETRY_AFTER = 60.0


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
    #: the server refused authentication, the application disconnected the user (close
    #: code 4010), or attempts ran out
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


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class MessagesLost:
    """The server lost messages of a channel (`channel` None: sent to this user).

    It follows the `messages.lost` ChannelMessage; `recovering` says whether the client
    resubscribes to replay them (a channel with history, the range known in its epoch).
    """

    channel: str | None
    data: JsonValue
    recovering: bool


ClientEvent = (Connected | Subscribed | SubscriptionFailed | ChannelMessage | PresenceChanged
               | MessagesLost)


def busy_retry_after(status: int, headers: Iterable[tuple[bytes, bytes]]) -> float | None:
    """The `Retry-After` seconds of a busy server's refused handshake (HTTP 503 or 429);
    None for another status, or without a `Retry-After` in seconds (a date is not used)."""
    if status not in (503, 429):
        return None
    for name, value in headers:
        if name.lower() == b"retry-after":
            try:
                seconds = float(value)
            except ValueError:
                return None
            return seconds if 0 < seconds < float("inf") else None
    return None


class _Offsets:
    """The offsets delivered on a channel in its epoch, as sorted disjoint ranges.

    One range while nothing is missing, one more per gap; at most `limit` ranges, the
    lowest forgotten first.
    """

    def __init__(self, limit: int = 64) -> None:
        self._limit = limit
        self._firsts: list[int] = []
        self._lasts: list[int] = []

    def clear(self) -> None:
        self._firsts.clear()
        self._lasts.clear()

    def add(self, offset: int) -> bool:
        """Add an offset; False when it was there already."""
        firsts, lasts = self._firsts, self._lasts
        i = bisect.bisect_right(firsts, offset) - 1  # the range starting at or below it
        if i >= 0 and offset <= lasts[i]:
            return False
        left = i >= 0 and lasts[i] == offset - 1
        right = i + 1 < len(firsts) and firsts[i + 1] == offset + 1
        if left and right:
            lasts[i] = lasts.pop(i + 1)
            del firsts[i + 1]
        elif left:
            lasts[i] = offset
        elif right:
            firsts[i + 1] = offset
        else:
            firsts.insert(i + 1, offset)
            lasts.insert(i + 1, offset)
            if len(firsts) > self._limit:
                del firsts[0], lasts[0]
        return True


@dataclass(slots=True)
class _Channel:
    name: str
    epoch: str | None = None
    offset: int | None = None
    members: dict[str, Any] = field(default_factory=dict)
    active: bool = False
    seen: _Offsets = field(default_factory=_Offsets)
    #: recovering a reported loss: replay what follows this offset
    recover_after: int | None = None
    #: a loss reported during that recovery, from before its start: recover again from here
    recover_again: int | None = None
    #: client events sent while recovering, sent once the channel is joined again
    held: list[str] = field(default_factory=list)


class ClientProtocol:
    """One logical client across any number of connections.

    Call `connection_made(now=…)` when a socket opens, `receive(text, now=…)` for every
    message, `connection_lost(now=…)` when it closes, and `tick(now=…)` at
    `next_deadline()`. Drain `messages_to_send()` after each call. `jitter` returns a
    float in [0, 1) (inject a seeded one in tests).
    """

    def __init__(self, *, jitter: Callable[[], float], backoff_min: float = 0.5,
                 backoff_max: float = 20.0, max_queued: int = 1000,
                 heartbeat_grace: float = 5.0, auto_recover: bool = True) -> None:
        self.state = ClientState.CONNECTING
        self.connection_id: str | None = None
        self.user_id: str | None = None
        self.next_attempt_at: float | None = None
        #: the `Retry-After` seconds of the busy server (503 or 429) that refused the last
        #: attempt; None once connected, or when the last attempt ended otherwise
        self.retry_after: float | None = None
        self._jitter = jitter
        self._backoff = (backoff_min, backoff_max)
        self._attempts = 0
        self._channels: dict[str, _Channel] = {}
        self._queued: deque[str] = deque(maxlen=max_queued)
        self._max_queued = max_queued
        self._outbox: list[str] = []
        self._heartbeat_grace = heartbeat_grace
        self._silence_limit: float | None = None
        self._last_heard_at = 0.0
        self._auto_recover = auto_recover

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
        """A client event; queued (bounded, oldest dropped) while not connected, held while
        the channel recovers."""
        text = _encode({"type": "event", "channel": channel, "event": event, "data": data})
        entry = self._channels.get(channel)
        if entry is not None and entry.recover_after is not None:
            entry.held.append(text)
            if len(entry.held) > self._max_queued:
                del entry.held[0]
        elif self.state is ClientState.CONNECTED:
            self._outbox.append(text)
        else:
            self._queued.append(text)

    def members(self, channel: str) -> dict[str, Any]:
        """The current members of a presence channel: user id → info."""
        entry = self._channels.get(channel)
        return dict(entry.members) if entry else {}

    def recovering(self, channel: str) -> bool:
        """Whether the channel resubscribes to replay messages reported lost."""
        entry = self._channels.get(channel)
        return entry is not None and entry.recover_after is not None

    def close(self) -> None:
        """Stop for good: no more reconnects."""
        self.state = ClientState.DISCONNECTED
        self.next_attempt_at = None

    # -- the I/O side --------------------------------------------------------------------

    def connection_made(self, *, now: float) -> None:
        """A socket opened; wait for `connection.established`."""
        self._last_heard_at = now

    def connection_lost(self, *, now: float, refused: bool = False, code: int | None = None,
                        retry_after: float | None = None) -> None:
        """The socket closed (with the server's close `code`, if any) or could not open;
        plan the next attempt, unless the server refused the token, the application
        disconnected this user (4010) or a newer connection replaced this one (4013).

        A busy server's `retry_after` (`busy_retry_after`) replaces the backoff: the next
        attempt waits it, at most `MAX_RETRY_AFTER`, plus a random share of up to half of
        it again, so the clients refused together do not come back together.
        """
        self.retry_after = None
        for entry in self._channels.values():
            entry.active = False
        if self.state in (ClientState.DISCONNECTED, ClientState.FAILED):
            return
        if refused or code in (DISCONNECTED, ErrorCode.TOO_MANY_CONNECTIONS):
            self.state = ClientState.FAILED
            self.next_attempt_at = None
            return
        self.state = ClientState.RECONNECTING
        low, high = self._backoff
        ceiling = min(high, low * 2 ** self._attempts)
        self._attempts += 1
        if retry_after is None:
            self.next_attempt_at = now + ceiling * (0.5 + self._jitter() / 2)  # bounded jitter
        else:
            self.retry_after = retry_after
            wait = min(retry_after, MAX_RETRY_AFTER)
            self.next_attempt_at = now + wait * (1 + self._jitter() / 2)

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
        if entry is not None:
            if event == "subscription.revoked":  # by the application: not resubscribed
                del self._channels[channel]
                reason = data.get("reason") if isinstance(data, dict) else None
                return [SubscriptionFailed(channel=channel, code=ErrorCode.FORBIDDEN,
                                           message=str(reason or "subscription revoked"))]
            if event == "subscription.succeeded":
                return [self._subscribed(entry, data)]
            if not self._track(entry, message):
                return []  # delivered already: a replay repeats what followed a gap
            if event in ("presence.sync", "user.joined", "user.left"):
                return [self._presence(entry, event, data)]
        delivered = ChannelMessage(channel=channel, event=str(event), data=data, message=message)
        if event != "messages.lost":
            return [delivered]
        recovering = entry is not None and self._lost(entry, data)
        return [delivered, MessagesLost(channel=channel, data=data, recovering=recovering)]

    def refresh(self, token: str) -> None:
        """Hand the server a new token for this connection (after
        `connection.refresh_required`)."""
        self._outbox.append(_encode({"type": "refresh", "data": {"token": token}}))

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
        self.retry_after = None
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
            after = entry.offset if entry.recover_after is None else entry.recover_after
            message["data"] = {"recover": {"epoch": entry.epoch, "offset": after}}
        return _encode(message)

    def _subscribed(self, entry: _Channel, data: JsonValue) -> Subscribed:
        details = data if isinstance(data, dict) else {}
        recovered = details.get("recovered")
        epoch, head = details.get("epoch"), details.get("offset")
        if isinstance(epoch, str) and isinstance(head, int):
            # The missed messages follow, up to the head. After a recovery the position
            # stays where the replay starts and moves as it arrives, so a replay cut
            # short is asked for again.
            replay = recovered is True and epoch == entry.epoch and entry.offset is not None
            if epoch != entry.epoch:
                entry.seen.clear()
            if not replay:
                entry.offset = head
            elif entry.recover_after is not None:
                entry.offset = entry.recover_after
            entry.epoch = epoch
        entry.active = True
        again = entry.recover_again if recovered is True else None
        entry.recover_after = entry.recover_again = None
        self._outbox.extend(entry.held)
        entry.held.clear()
        if again is not None:
            self._recover(entry, again - 1)
        return Subscribed(channel=entry.name, recovered=recovered)

    def _track(self, entry: _Channel, message: dict[str, Any]) -> bool:
        """Remember a message's stream position; False when that offset was delivered."""
        offset, epoch = message.get("offset"), message.get("epoch")
        if not isinstance(offset, int) or isinstance(offset, bool) or not isinstance(epoch, str):
            return True
        if epoch != entry.epoch:
            entry.seen.clear()
            entry.epoch, entry.offset = epoch, offset
        elif entry.offset is None or offset > entry.offset:
            entry.offset = offset
        return entry.seen.add(offset)

    def _lost(self, entry: _Channel, data: JsonValue) -> bool:
        """`messages.lost`: with its range known in the channel's epoch, resubscribe from
        just before it. Whether the channel recovers."""
        details = data if isinstance(data, dict) else {}
        first = details.get("from")
        if (not self._auto_recover or entry.epoch is None or details.get("epoch") != entry.epoch
                or not isinstance(first, int) or isinstance(first, bool) or first < 1):
            return False
        if entry.recover_after is not None:
            if first - 1 < entry.recover_after:
                entry.recover_again = min(first, entry.recover_again or first)
            return True
        if not entry.active:
            return False
        self._recover(entry, first - 1)
        return True

    def _recover(self, entry: _Channel, after: int) -> None:
        """Ask again for what follows `after` (a subscribed connection that subscribes
        again with `recover` gets a replay, without leaving the channel)."""
        entry.recover_after = after
        entry.active = False
        if self.state is ClientState.CONNECTED:
            self._outbox.append(self._subscribe_message(entry))

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
