"""The Hub's channel messages: publish, history (in memory or shared), the fan-out to
local subscribers in stream order, what a subscription recovers, and reported losses."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .channels import validate_channel_name
from .cluster import ClusterState, channel_topic
from .config import HubConfig
from .connection import Connection, SubscribeOptions
from .envelope import EnvelopeKind
from .errors import ErrorCode, MessageError
from .events import ConnectionId, HistoryAppended, HistoryLoaded
from .history import StreamSlice, stamp
from .hub_outbox import Outbox
from .hub_presence import Presence
from .message import JsonValue, MessageType
from .publication import PublicationTuple
from .signals import ChannelSignals
from .streams import Gap, Position, Ready, Streams

__all__ = ["LOST_EVENT", "ChannelHistory"]

#: the event that tells subscribers that messages of a channel (or to their user) were lost
LOST_EVENT = "messages.lost"


class ChannelHistory:
    """Owns the channels' streams (`Streams`): every channel message this node delivers
    goes through here, so that history, offsets and recovery agree with what was sent."""

    def __init__(self, config: HubConfig, out: Outbox, cluster: ClusterState,
                 presence: Presence, signals: ChannelSignals,
                 new_id: Callable[[], str]) -> None:
        self._config = config
        self._out = out
        self._actions = out.actions
        self._subscribers = out.subscribers
        self._cluster = cluster
        self._presence = presence
        self._signals = signals
        self.streams = Streams(config.history, shared=config.shared_history, new_id=new_id,
                               timeout=config.history_timeout,
                               max_pending=config.history_max_pending)
        self.published = 0
        self.failures = 0
        self.recoveries: Counter[bool] = Counter()
        #: messages this node's subscribers were told they lost
        self.reported_lost = 0

    def broadcast(self, publications: Sequence[PublicationTuple], now: float,
                  user_id: str | None = None, ephemeral: bool = False) -> list[str]:
        """Publish events to channels here and on every node, in order; their message ids
        (`Hub.broadcast`, `Hub.broadcast_many`). All are checked before any goes out.

        Raises:
            MessageError: a channel name is invalid (4008), an event not a string (4005).
        """
        for publication in publications:
            validate_channel_name(publication[0])
            if not isinstance(publication[1], str):
                raise MessageError(ErrorCode.INVALID_FIELD, "field 'event' must be a string")
        streams, subscribers, actions = self.streams, self._subscribers, self._actions
        rule_of = streams.rule
        encode = self._out.event_encoder(now, user_id)
        envelope = self._cluster.envelope
        ids = []
        for channel, event, data, exclude in publications:
            message_id, payload = encode(channel, event, data)
            ids.append(message_id)
            rule = None if ephemeral else rule_of(channel)
            position = None
            if rule is not None:
                if streams.shared:
                    if (oldest := streams.full()) is not None:
                        self.appended(oldest)
                    actions.append(streams.append(channel, rule, payload, exclude, now))
                    continue
                position = streams.keep(channel, rule, payload, now)
            if channel in subscribers:  # a node without subscribers (node A) skips the call
                self.fan_out(channel, payload, position, exclude)
            actions.append(envelope(channel_topic(channel), EnvelopeKind.CHANNEL, payload,
                                    exclude))
        self.published += len(ids)
        return ids

    def tick(self, now: float) -> None:
        """Release what waited too long for the shared store, give up on its answers."""
        for channel, item in self.streams.overdue(now):
            self.ready(channel, item)
        for failure in self.streams.expired(now):
            if isinstance(failure, HistoryAppended):
                self.appended(failure)
            else:
                self.loaded(failure)

    def appended(self, answer: HistoryAppended) -> None:
        """The shared stream placed a publish: deliver here and to the other nodes, in the
        order this node published."""
        if answer.error is not None:
            self.failures += 1
        for append in self.streams.appended(answer):
            position = append.position
            self._actions.append(self._cluster.envelope(
                channel_topic(append.channel), EnvelopeKind.CHANNEL, append.payload,
                append.exclude, position))
            self.in_order(append.channel, append.payload, position, append.exclude)

    def in_order(self, channel: str, payload: bytes, position: Position | None,
                 exclude: ConnectionId | None) -> None:
        """Deliver a shared channel's message here in offset order (see `Streams.order`)."""
        if channel not in self._subscribers:
            return  # nobody here (any more): keep no order for it
        if position is None:
            self.fan_out(channel, payload, None, exclude)
            return
        for item in self.streams.order(channel, position, payload, exclude, self._out.now,
                                       self._config.sweep_interval):
            self.ready(channel, item)

    def ready(self, channel: str, item: Ready | Gap) -> None:
        """A shared channel's next message in offset order, or the range given up on."""
        if isinstance(item, Gap):
            self.tell_lost(channel, item.last - item.first + 1, item)
        else:
            self.fan_out(channel, *item)

    def fan_out(self, channel: str, payload: bytes, position: Position | None,
                exclude: ConnectionId | None) -> None:
        """Deliver a channel message (unstamped) to this node's subscribers, with its
        position in the channel's stream if it has one."""
        event_id = None
        if position is not None:
            epoch, offset = position
            payload = stamp(payload, offset, epoch)
            event_id = f"{epoch}:{offset}:{channel}"
        subscribers: Iterable[ConnectionId] = self._subscribers.get(channel, ())
        if not subscribers:
            return  # nobody here: the publish path of a node without subscribers
        if channel in self.streams.loading:  # new subscriptions get their history first
            skip = self.streams.divert(channel, position[1] if position else None, payload,
                                       event_id, exclude)
            subscribers = [c for c in subscribers if c not in skip]
        self._out.deliver(subscribers, payload, event_id, exclude, channel)

    def join(self, conn: Connection, channel: str, info: Mapping[str, Any] | None,
             request: SubscribeOptions, now: float) -> None:
        """Answer a new subscriber (already among the channel's subscribers): at once from
        this node's stream, or once the shared store answered its read."""
        rule = self.streams.rule(channel)
        if rule is not None and self.streams.shared:
            self._actions.append(self.streams.read(channel, rule, conn.id, info, request, now))
            return
        history = self.streams.local_slice(channel, rule, now) if rule else None
        self.welcome(conn, channel, info, request, history, (), now)

    def replay(self, conn: Connection, channel: str, request: SubscribeOptions,
               now: float) -> bool:
        """A subscribed connection asks again for what it missed (after `messages.lost`):
        answered as a new subscription would be, without leaving and joining again. False
        when the channel keeps no history or nothing is asked for."""
        rule = self.streams.rule(channel)
        if rule is None or (request.recover is None and not request.history):
            return False
        if not self.streams.shared:
            self.welcome(conn, channel, None, request,
                         self.streams.local_slice(channel, rule, now), (), now, joined=True)
        elif conn.id not in self.streams.loading.get(channel, ()):
            self._actions.append(self.streams.read(channel, rule, conn.id, None, request, now,
                                                   joined=True))
        return True

    def loaded(self, answer: HistoryLoaded) -> None:
        """The shared stream answered a new subscription's read."""
        found = self.streams.loaded(answer)
        if found is None:
            return  # the subscription ended meanwhile
        channel, connection_id, loading = found
        conn = self._out.connections[connection_id]
        if answer.error is not None or answer.epoch is None:
            self.failures += 1
            history = None
        else:
            history = StreamSlice(answer.epoch, answer.offset, answer.entries)
            self._signals.remember(channel, answer.reads)
        self.welcome(conn, channel, loading.info, loading.request, history, loading.buffered,
                     self._out.now, joined=loading.joined)
        for item in self.streams.settle(channel):  # live messages held meanwhile
            self.ready(channel, item)

    def welcome(self, conn: Connection, channel: str, info: Mapping[str, Any] | None,
                request: SubscribeOptions, history: StreamSlice | None,
                buffered: Iterable[tuple[int | None, bytes, str | None]], now: float,
                joined: bool = False) -> None:
        """Answer a subscription: its stream position, (unless it had `joined` already) the
        presence of its members, what it asked to recover or see, and the live messages
        that waited for that."""
        out = self._out
        success: dict[str, JsonValue] = {}
        missed: list[tuple[int, bytes]] = []
        if history is not None:
            success = {"epoch": history.epoch, "offset": history.offset}
            if request.recover is not None:
                epoch, since = request.recover
                recovered = history.recovers(epoch, since)
                success["recovered"] = recovered
                self.recoveries[recovered] += 1
                if recovered or epoch == history.epoch:
                    missed = history.after(since)  # all of it, or what is left of it
                success["replayed"] = len(missed)
                if not recovered:
                    success["missing"] = history.missing(epoch, since)
            elif request.history:
                missed = history.last(request.history)
                success["replayed"] = len(missed)
        elif request.recover is not None:
            success.update(recovered=False, replayed=0, missing=None)
            self.recoveries[False] += 1
        out.reply(conn, "subscription.succeeded", success, now, channel)
        if not joined:  # the members first, then what the subscription asked for
            self._presence.enter(conn, channel, info, now, replayed=success.get("replayed"))
        if history is not None:
            for offset, payload in missed:
                out.deliver((conn.id,), stamp(payload, offset, history.epoch),
                            f"{history.epoch}:{offset}:{channel}", channel=channel)
        top = history.offset if history is not None else None
        for position, payload, event_id in sorted(buffered, key=_offset_order):
            if position is None or top is None or position > top:
                out.deliver((conn.id,), payload, event_id, channel=channel)

    def lost(self, topic: str, count: int) -> None:
        """`count` messages of another node on a topic never arrived: tell the local
        subscribers, and leave a hole of that size in the channel's own stream, so that no
        recovery across it claims success."""
        kind, _, name = topic.partition(":")
        if kind == "u":
            self.tell_lost(None, count, None, self._out.users.get(name, ()))
            return
        if kind != "c" or name not in self._subscribers:
            return
        rule = self.streams.rule(name)
        hole = self.streams.skip(name, rule, count) if rule and not self.streams.shared \
            else None
        self.tell_lost(name, count, hole)

    def tell_lost(self, channel: str | None, count: int, hole: Gap | None,
                  targets: Iterable[ConnectionId] | None = None) -> None:
        """The `messages.lost` event, to a channel's subscribers (or the given targets)."""
        data: dict[str, JsonValue] = {"count": count}
        if hole is not None:
            data.update(epoch=hole.epoch, **{"from": hole.first, "to": hole.last})
        _, payload = self._out.encode(MessageType.EVENT, self._out.now, channel=channel,
                                      event=LOST_EVENT, data=data)
        if targets is None:
            targets = self._subscribers.get(channel, ()) if channel is not None else ()
        chosen = tuple(targets)
        self.reported_lost += count * len(chosen)
        self._out.deliver(chosen, payload)


def _offset_order(item: tuple[int | None, bytes, str | None]) -> float:
    """Buffered live messages by offset (those without one last)."""
    return item[0] if item[0] is not None else float("inf")
