"""The Hub: connections, channels, presence, authorization and routing, as messages.

`Hub` is the facade the Node, the tests and `realtime_proto.testing` drive; each concern
is a part in a module of its own (`hub_*.py`) that owns its state:

- `hub_outbox`: the clock, the connection tables, the actions and the server's messages;
- `hub_connections`: open and close, users, expiring credentials, heartbeats;
- `hub_subscriptions`: the subscription lifecycle (`subscription_states`), authorization;
- `hub_presence`: presence channel members; `hub_webhooks`: the webhook events;
- `hub_history`: publish, history and recovery, the fan-out to local subscribers;
- `hub_inbox`: what clients send; `hub_control`: commands on connections and users;
- `hub_remote`: what other nodes send through the broker.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, assert_never

from .actions import BrokerSubscribe, ConnectionInfo, HubAction
from .channels import ChannelRule
from .cluster import CLUSTER_TOPIC, ClusterState
from .config import Epoch, HubConfig
from .errors import DISCONNECTED
from .events import (
    AuthorizationAnswered,
    BrokerLost,
    BrokerReported,
    BrokerRestored,
    ConnectionClosed,
    ConnectionId,
    ConnectionOpened,
    EnvelopeReceived,
    HistoryAppended,
    HistoryLoaded,
    HubEvent,
    MessageReceived,
    User,
)
from .history import HistoryRule
from .hub_connections import Connections
from .hub_control import Control
from .hub_history import ChannelHistory
from .hub_inbox import ClientMessages
from .hub_outbox import Outbox
from .hub_presence import Presence
from .hub_remote import Remote
from .hub_subscriptions import Subscriptions
from .hub_webhooks import WebhookEvents
from .message import JsonValue
from .presence import CONNECTIONS, Member
from .publication import PublicationTuple
from .signals import ChannelSignals
from .statistics import HubStatistics

__all__ = ["Hub"]


class Hub:
    """The server state machine of one process, on messages (no bytes, no I/O).

    Inputs go through `handle(event, now=…)` and `tick(now=…)`, and the application's
    calls (`broadcast`, `send_to_user`, `send`, …); outputs are drained from `actions()`.
    `handle` and `tick` never raise because of what a client or the broker sent; they
    raise `LocalProtocolError` for caller mistakes (an unknown connection id, `now` going
    backwards).
    """

    def __init__(self, config: HubConfig, *, new_id: Callable[[], str], epoch: Epoch) -> None:
        self.config = config
        self.node_id = config.node_id
        out = self._out = Outbox(new_id, epoch)
        #: the tables, under the names tools and memory profiles look for
        self._connections, self._subscribers = out.connections, out.subscribers
        #: this node's route key: the prefix of its connection ids (`<route>.<random>`),
        #: which tells every node where a connection lives
        self.route = new_id()[:8]
        cluster = self._cluster = ClusterState(config, out.now, lambda: out.unix_ms(out.now),
                                               epoch.unix_ms, self.route)
        signals = self._signals = ChannelSignals(config.typing_interval)
        webhooks = WebhookEvents(config, out, cluster)
        presence = self._presence = Presence(out, cluster)
        history = self._history = ChannelHistory(config, out, cluster, presence, signals,
                                                 new_id)
        subscriptions = self._subscriptions = Subscriptions(
            config, out, cluster, history, presence, new_id=new_id, epoch=epoch)
        #: the connections' lifecycle (`_connections` is the table)
        connections = self._lifecycle = Connections(config, out, cluster, subscriptions,
                                                    webhooks)
        self._inbox = ClientMessages(config, out, connections, subscriptions, history,
                                     signals, webhooks)
        self._control = Control(out, cluster, connections, subscriptions)
        self._remote = Remote(out, cluster, history, presence, self._control, signals,
                              webhooks)
        self._next_sweep_at = out.now
        out.actions.append(BrokerSubscribe(CLUSTER_TOPIC))
        out.actions.extend(cluster.hello())

    # -- the state-machine verbs ---------------------------------------------------------

    def handle(self, event: HubEvent, *, now: float) -> None:
        """Feed one input event.

        Raises:
            LocalProtocolError: an unknown connection id, or `now` went backwards.
        """
        self._out.advance(now)
        match event:
            case ConnectionOpened():
                self._lifecycle.open(event, now)
            case MessageReceived():
                self._inbox.receive(self._out.get(event.connection_id), event.data, now)
            case ConnectionClosed():
                self._lifecycle.remove(self._out.get(event.connection_id))
            case EnvelopeReceived():
                self._remote.envelope(event.topic, event.data, now)
            case AuthorizationAnswered():
                self._subscriptions.answered(event)
            case HistoryAppended():
                self._history.appended(event)
            case HistoryLoaded():
                self._history.loaded(event)
            case BrokerLost():
                self._remote.broker_lost()
            case BrokerRestored():
                self._remote.broker_restored()
            case BrokerReported():
                self._remote.report = event
            case _:
                assert_never(event)

    def tick(self, *, now: float) -> None:
        """Let time pass: pings, idle and authorization timeouts, cluster heartbeats."""
        self._out.advance(now)
        if now < self._next_sweep_at:
            return
        self._next_sweep_at = now + self.config.sweep_interval
        self._lifecycle.sweep(now)
        self._subscriptions.sweep_pending(now)
        self._history.tick(now)
        self._remote.tick(now)

    def next_deadline(self) -> float:
        """When `tick` next has work to do (monotonic seconds)."""
        return self._next_sweep_at

    def actions(self) -> list[HubAction]:
        """Drain the actions produced so far (publishes in a row to one topic bundled)."""
        if not self._out.actions:
            return []
        return self._cluster.bundle(self._out.drain())

    # -- the application's API: messages -------------------------------------------------

    def channel(self, pattern: str) -> ChannelRule:
        """The authorization rule for a channel pattern (`private-chat.*`)."""
        return self._subscriptions.rules.channel(pattern)

    def broadcast(self, channel: str, event: str, data: JsonValue = None, *, now: float,
                  exclude: ConnectionId | None = None, user_id: str | None = None,
                  ephemeral: bool = False) -> str:
        """Publish an event to a channel on every node; the message id.

        Args:
            ephemeral: keep it out of the channel's history (typing, read receipts).

        Raises:
            MessageError: the channel name is invalid (4008).
        """
        self._out.advance(now)
        return self._history.broadcast(((channel, event, data, exclude),), now, user_id,
                                       ephemeral)[0]

    def broadcast_many(self, publications: Sequence[PublicationTuple], *,
                       now: float) -> list[str]:
        """Publish several events at once, in order, as `broadcast` does each (cheaper per
        event: what they share is worked out once); their message ids. Each is a
        `Publication` (channel, event, data, exclude) or a plain tuple of those.

        Raises:
            MessageError: a channel name is invalid (4008) or an event is not a string
                (4005); then none is published.
        """
        self._out.advance(now)
        return self._history.broadcast(publications, now)

    def send_to_user(self, user_id: str, event: str, data: JsonValue = None, *,
                     now: float) -> str:
        """Send an event to every connection of a user, on every node; the message id."""
        self._out.advance(now)
        return self._control.send_to_user(user_id, event, data, now)

    def send(self, connection_id: ConnectionId, event: str, data: JsonValue = None, *,
             now: float) -> str | None:
        """Send an event to one connection, on whichever node holds it; the message id, or
        None when no connection can have that id (its node is this one or unknown).

        A connection of another node gets it through that node (`is_local` tells which);
        if it closed meanwhile, the event goes nowhere.
        """
        self._out.advance(now)
        return self._control.send(connection_id, event, data, now)

    def reads(self, channel: str) -> dict[str, int | str]:
        """Each user's read position on a channel (from `read` events on any node)."""
        return self._signals.reads(channel)

    def remember_reads(self, channel: str, reads: Mapping[str, int | str]) -> None:
        """Take in read positions the shared store keeps (integer ones only move forward)."""
        self._signals.remember(channel, reads)

    def shared_history_rule(self, channel: str) -> HistoryRule | None:
        """The channel's history rule when its history is in the shared store."""
        streams = self._history.streams
        return streams.rule(channel) if streams.shared else None

    # -- the application's API: connections and users -------------------------------------

    def is_local(self, connection_id: ConnectionId) -> bool:
        """Whether a connection is open on this node."""
        return connection_id in self._out.connections

    def disconnect(self, connection_id: ConnectionId, code: int = 1000, reason: str = "") -> None:
        """Close a connection of this node from the application's side.

        Raises:
            LocalProtocolError: no such connection here.
        """
        self._lifecycle.drop(self._out.get(connection_id), code, reason)

    def grant(self, connection_id: ConnectionId, channel: str, member: Member | None) -> None:
        """Let a connection join a private or presence channel its signature authorized
        (a Pusher client's; the Node checked it), as `member` on a presence channel."""
        self._out.get(connection_id).grant(channel, member)

    def sign_in(self, connection_id: ConnectionId, user: User, *, now: float) -> None:
        """Give a connection its user after it opened (a Pusher client's `pusher:signin`,
        which the Node checked): `send_to_user` and `terminate_user` reach it from then on.

        Raises:
            MessageError: 4003 when it has another user already.
        """
        self._out.advance(now)
        self._lifecycle.sign_in(self._out.get(connection_id), user, now)

    def terminate_user(self, user_id: str, code: int, reason: str, *, now: float) -> int:
        """Close every connection of a user, on every node; how many were on this one."""
        self._out.advance(now)
        return self._control.terminate_user(user_id, code, reason)

    def disconnect_connection(self, connection_id: ConnectionId, code: int = DISCONNECTED,
                              reason: str = "", *, now: float) -> bool:
        """Close one connection on whichever node holds it (close `code`, default 4010:
        clients do not reconnect); False when no connection can have that id.

        Raises:
            MessageError: the code or reason cannot go in a close frame (4005).
        """
        self._out.advance(now)
        return self._control.disconnect_connection(connection_id, code, reason)

    def disconnect_user(self, user_id: str, code: int = DISCONNECTED, reason: str = "", *,
                        now: float) -> int:
        """Close every connection of a user on every node; how many were on this one.

        Raises:
            MessageError: the code or reason cannot go in a close frame (4005).
        """
        self._out.advance(now)
        return self._control.disconnect_user(user_id, code, reason)

    def unsubscribe_user(self, user_id: str, channel: str, reason: str = "", *,
                         now: float) -> int:
        """End a user's subscriptions to a channel on every node (each connection gets
        `subscription.revoked`); how many were on this one.

        Raises:
            MessageError: the channel name is invalid (4008).
        """
        self._out.advance(now)
        return self._control.unsubscribe_user(user_id, channel, reason, now)

    # -- the application's API: what is here ----------------------------------------------

    def connection(self, connection_id: ConnectionId) -> ConnectionInfo | None:
        """A snapshot of a local connection, or None."""
        conn = self._out.connections.get(connection_id)
        return conn.info() if conn else None

    def set_metadata(self, connection_id: ConnectionId, key: str, value: Any) -> None:
        """Attach application data to a connection (seen by authorization callbacks)."""
        self._out.get(connection_id).set(key, value)

    def connection_ids(self, *, channel: str | None = None,
                       user_id: str | None = None) -> list[ConnectionId]:
        """Local connections, optionally only a channel's subscribers or a user's."""
        if channel is not None:
            return list(self._out.subscribers.get(channel, ()))
        if user_id is not None:
            return sorted(self._out.users.get(user_id, ()))
        return list(self._out.connections)

    def connection_count(self, user_id: str | None = None) -> int:
        """Connections: all of this node's; or one user's, on every node as far as this
        one knows when `max_connections_per_user` is set (else on this node)."""
        if user_id is None:
            return len(self._out.connections)
        if self.config.limits.max_connections_per_user is not None:
            return self._cluster.presence.count(CONNECTIONS, user_id)
        return len(self._out.users.get(user_id, ()))

    def channels(self) -> dict[str, int]:
        """Channels with local subscribers, and how many."""
        return {name: len(subs) for name, subs in sorted(self._out.subscribers.items())}

    def subscription_count(self, channel: str) -> int:
        """A channel's subscribers: over every node with `share_subscription_counts`
        (the others' as they last announced them, at most a sweep old), else here."""
        counts = self._cluster.counts
        if counts is not None:
            return counts.total(channel)
        return len(self._out.subscribers.get(channel, ()))

    def subscription_counts(self) -> dict[str, int]:
        """Every channel with subscribers and how many, over every node with
        `share_subscription_counts` (as `subscription_count`), else here."""
        counts = self._cluster.counts
        return counts.totals() if counts is not None else self.channels()

    def presence_channels(self) -> list[str]:
        """The presence channels with members, over every node."""
        return self._presence.channels()

    def members(self, channel: str) -> list[Member]:
        """The members of a presence channel, over every node."""
        return self._presence.members(channel)

    def statistics(self) -> HubStatistics:
        """A snapshot of the counters."""
        out, cluster, history = self._out, self._cluster, self._history
        return HubStatistics(
            connections=Counter(c.transport for c in out.connections.values()),
            subscriptions=sum(len(s) for s in out.subscribers.values()),
            channels=len(out.subscribers),
            messages_in=self._inbox.messages_in,
            messages_out=out.messages_out,
            published=history.published + self._control.published,
            errors=dict(out.errors),
            broker_connected=cluster.broker_connected,
            envelopes_lost=cluster.window.lost,
            envelopes_duplicate=cluster.window.duplicates,
            nodes=len(cluster.heard) + 1,
            recoveries=dict(history.recoveries),
            history_failures=history.failures,
            envelopes_stale=cluster.stale,
            lost_reported=history.reported_lost,
            broker_topics=len(out.subscribers) + len(out.users) + 1,
            broker_latency=self._remote.latency.snapshot(),
            broker_driver=self._remote.report,
            connections_replaced=self._lifecycle.replaced,
        )
