"""The Hub's cluster side: what other nodes send through the broker (channel and user
messages, presence, commands), lost envelopes, and the broker's health."""

from __future__ import annotations

from .actions import DeliverBundle
from .cluster import ClusterState
from .envelope import EnvelopeKind, Received, decode
from .errors import ErrorCode, MessageError
from .events import BrokerReported, ConnectionId
from .hub_control import Control, is_termination
from .hub_history import ChannelHistory
from .hub_outbox import Outbox
from .hub_presence import Presence
from .hub_webhooks import WebhookEvents
from .message import Message
from .metrics import Histogram
from .signals import READ_EVENT, TYPING_EVENT, ChannelSignals, read_position

__all__ = ["Remote"]

#: what a typing or read signal's JSON holds (the cheap test before decoding it)
_TYPING = b'"event":"typing"'
_READ = b'"event":"read"'


class Remote:
    """Decodes other nodes' envelopes and hands what they carry to the local parts; keeps
    the broker's latency and the driver's last report."""

    def __init__(self, out: Outbox, cluster: ClusterState, history: ChannelHistory,
                 presence: Presence, control: Control, signals: ChannelSignals,
                 webhooks: WebhookEvents) -> None:
        self._out = out
        self._actions = out.actions
        self._subscribers = out.subscribers
        self._cluster = cluster
        self._history = history
        self._presence = presence
        self._control = control
        self._signals = signals
        self._webhooks = webhooks
        self.latency = Histogram()
        self.report = BrokerReported()

    def broker_lost(self) -> None:
        """The broker connection went down."""
        self._cluster.broker_connected = False

    def broker_restored(self) -> None:
        """The broker connection came back: tell the other nodes where this one stands."""
        self._cluster.broker_connected = True
        self._actions.extend(self._cluster.restored())

    def tick(self, now: float) -> None:
        """Heartbeats, nodes gone silent (their members leave), presence webhooks."""
        actions, left = self._cluster.sweep(now)
        self._actions.extend(actions)
        self._presence.announce(left, "user.left", now)
        transitions, announced = self._cluster.report(now)
        if transitions:
            self._actions.extend(announced)
            self._webhooks.presence(transitions, now)

    def envelope(self, topic: str, data: bytes, now: float) -> None:
        """A broker message on a topic this node subscribes to."""
        try:
            received = decode(data)
        except MessageError:
            self._out.errors[ErrorCode.MALFORMED_MESSAGE] += 1
            return
        heard = self._cluster.receive(topic, received, now)
        self._actions.extend(heard.actions)
        self._presence.announce(heard.left, "user.left", now)
        skip, payloads = heard.skip, received.payloads
        if heard.gap and not self._offsets_show(topic, received, skip):
            self._history.lost(topic, heard.gap)
        if skip >= len(payloads):
            return
        kind = received.kind
        if received.sent_ms is not None and kind is not EnvelopeKind.CONTROL:
            self.latency.observe(max(0.0, (self._out.unix_ms(now) - received.sent_ms) / 1000),
                                 len(payloads) - skip)
        if kind is EnvelopeKind.CHANNEL:
            self._from_other_node(topic[2:], received, skip, now)
        elif kind is EnvelopeKind.USER:
            targets = self._out.users.get(topic[2:], ())
            for payload in payloads[skip:]:
                if is_termination(payload):
                    self._control.terminated(payload, targets)
                    targets = ()
                    continue
                self._out.deliver(targets, payload)
        else:
            for payload in payloads[skip:]:
                applied = self._cluster.control(received.origin, payload, now, self._receives)
                self._actions.extend(applied.replies)
                self._presence.announce(applied.joined, "user.joined", now)
                self._presence.announce(applied.left, "user.left", now)
                for lost_topic, count in applied.caught_up:
                    self._history.lost(lost_topic, count)
                for command in applied.commands:
                    self._control.forwarded(command, now)

    def _offsets_show(self, topic: str, received: Received, skip: int) -> bool:
        """Whether a shared stream's offsets will show the gap before this message (with
        its range, `ChannelHistory.ready`): its channel's live order is in its epoch."""
        positions = received.positions
        if not positions or not topic.startswith("c:"):
            return False
        position = positions[min(skip, len(positions) - 1)]
        return position is not None and self._history.streams.ordered(topic[2:], position[0])

    def _receives(self, topic: str) -> bool:
        """Whether this node is subscribed to a channel or user topic."""
        kind, _, name = topic.partition(":")
        return name in (self._subscribers if kind == "c" else self._out.users if kind == "u"
                        else ())

    def _from_other_node(self, channel: str, received: Received, skip: int,
                         now: float) -> None:
        """Channel messages another node published: into this node's history (its own
        stream, or the shared one's order) and to the local subscribers."""
        history = self._history
        streams = history.streams
        rule = streams.rule(channel)
        excludes, positions = received.excludes, received.positions
        if rule is None and excludes is None and channel not in streams.loading:
            self._plain_from_other_node(channel, received.payloads[skip:])
            return
        for index in range(skip, len(received.payloads)):
            payload = received.payloads[index]
            exclude = excludes[index] if excludes else None
            kept = None if self._remote_signal(channel, payload) else rule
            if kept is not None and streams.shared:
                history.in_order(channel, payload, positions[index] if positions else None,
                                 ConnectionId(exclude) if exclude else None)
            else:
                position = streams.keep(channel, kept, payload, now) if kept else None
                history.fan_out(channel, payload, position,
                                ConnectionId(exclude) if exclude else None)

    def _plain_from_other_node(self, channel: str, payloads: list[bytes]) -> None:
        """`_from_other_node` for a channel without history, subscriptions still loading
        or excluded connections (the common case): every payload to every subscriber."""
        subscribers = self._subscribers.get(channel)
        if not subscribers:
            return
        # `Outbox.deliver`'s work inline (nothing to exclude), one action for the bundle
        for payload in payloads:
            if _TYPING in payload or _READ in payload:  # `_remote_signal`'s test, inline
                self._remote_signal(channel, payload)  # a read moves this node's position
        targets = tuple(subscribers)
        self._actions.append(DeliverBundle(targets, payloads, channel))
        self._out.messages_out += len(targets) * len(payloads)

    def _remote_signal(self, channel: str, payload: bytes) -> bool:
        """Whether a message from another node is a typing or read signal (kept out of
        history); a read moves this node's copy of the position too."""
        if _TYPING not in payload and _READ not in payload:
            return False
        try:
            message = Message.from_json(payload)
            if message.event == READ_EVENT and message.user_id is not None:
                self._signals.read(channel, message.user_id, read_position(message.data))
        except MessageError:
            return False  # another node's bytes that are not a signal: deliver as they are
        return message.event in (TYPING_EVENT, READ_EVENT)
