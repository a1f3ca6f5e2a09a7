"""The Hub: connections, channels, presence, authorization and routing, as messages."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .actions import (
    Authorize,
    BrokerSubscribe,
    ClientEventSent,
    ConnectionInfo,
    Deliver,
    Disconnect,
    HubAction,
    Notify,
    SaveReadPosition,
)
from .channels import AuthRules, ChannelKind, ChannelRule, channel_kind, pattern_matches
from .channels import validate_channel_name as _valid
from .cluster import CLUSTER_TOPIC, ClusterState, channel_topic, user_topic
from .config import Epoch, HubConfig
from .connection import Connection, PendingAuthorization, SubscribeOptions
from .envelope import EnvelopeKind, Outgoing, Received, decode
from .errors import DISCONNECTED, ErrorCode, LocalProtocolError, MessageError
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
    Published,
    SentToConnection,
    SentToUser,
    User,
)
from .history import HistoryRule, StreamSlice, stamp
from .jwt import user_from_claims, verify_token
from .message import JsonValue, Message, MessageType, decode_json, encode_json, encode_message
from .metrics import Histogram
from .presence import CONNECTIONS, Member
from .ratelimit import TokenBucket
from .reporter import CHANNEL, Transition
from .signals import READ_EVENT, TYPING_EVENT, ChannelSignals, read_position
from .statistics import HubStatistics
from .streams import Gap, Position, Ready, Streams

__all__ = ["LOST_EVENT", "REVOKED_EVENT", "Hub"]

#: the event that tells subscribers that messages of a channel (or to their user) were lost
LOST_EVENT = "messages.lost"
#: the event that tells a connection the application ended its subscription
REVOKED_EVENT = "subscription.revoked"
#: the longest close reason a WebSocket close frame carries (RFC 6455 §5.5: 125 bytes
#: of payload, 2 of them the code)
MAX_REASON_BYTES = 123


class Hub:
    """The server state machine of one process, on messages (no bytes, no I/O).

    Inputs go through `handle(event, now=…)` and `tick(now=…)`; outputs are drained
    from `actions()`. `handle` and `tick` never raise because of what a client or the
    broker sent; they raise `LocalProtocolError` for caller mistakes (an unknown
    connection id, `now` going backwards).
    """

    def __init__(self, config: HubConfig, *, new_id: Callable[[], str], epoch: Epoch) -> None:
        self.config = config
        self.node_id = config.node_id
        self._new_id = new_id
        #: message ids: this node's random prefix and a count (unique in the cluster,
        #: and cheaper than a random id per publish)
        self._message_prefix = new_id() + "."
        self._messages_made = 0
        self._unix_ms_for, self._unix_ms_value = epoch.monotonic_at, epoch.unix_ms
        self._epoch = epoch
        self._now = epoch.monotonic_at
        self._rules = AuthRules()
        self._connections: dict[ConnectionId, Connection] = {}
        self._subscribers: dict[str, dict[ConnectionId, None]] = {}
        self._users: dict[str, set[ConnectionId]] = {}
        self._pending: dict[str, PendingAuthorization] = {}
        self._streams = Streams(config.history, shared=config.shared_history, new_id=new_id,
                                timeout=config.history_timeout,
                                max_pending=config.history_max_pending)
        self._signals = ChannelSignals(config.typing_interval)
        #: envelopes (`Outgoing`) become broker messages when drained (`actions`)
        self._actions: list[HubAction | Outgoing] = []
        #: this node's route key: the prefix of its connection ids (`<route>.<random>`),
        #: which tells every node where a connection lives
        self.route = new_id()[:8]
        self._cluster = ClusterState(config, self._now,
                                     lambda: self._unix_ms(self._now), epoch.unix_ms, self.route)
        self._broker_latency = Histogram()
        self._broker_report = BrokerReported()
        self._next_sweep_at = self._now
        self._messages_in = 0
        self._messages_out = 0
        self._published = 0
        self._errors: Counter[int] = Counter()
        self._recoveries: Counter[bool] = Counter()
        self._history_failures = 0
        #: messages this node's subscribers were told they lost
        self._reported_lost = 0
        self._webhook_events_made = 0
        #: connections closed for a newer one of the same user (`replace_oldest`)
        self._replaced = 0
        self._actions.append(BrokerSubscribe(CLUSTER_TOPIC))
        self._actions.extend(self._cluster.hello())

    # -- the state-machine verbs ---------------------------------------------------------

    def handle(self, event: HubEvent, *, now: float) -> None:
        """Feed one input event.

        Raises:
            LocalProtocolError: an unknown connection id, or `now` went backwards.
        """
        self._advance(now)
        match event:
            case ConnectionOpened():
                self._open(event, now)
            case MessageReceived():
                self._receive(self._get(event.connection_id), event.data, now)
            case ConnectionClosed():
                self._remove(self._get(event.connection_id))
            case Published():
                self.broadcast(event.channel, event.event, event.data, now=now,
                               exclude=event.exclude)
            case SentToUser():
                self.send_to_user(event.user_id, event.event, event.data, now=now)
            case SentToConnection():
                self.send(event.connection_id, event.event, event.data, now=now)
            case EnvelopeReceived():
                self._envelope(event.topic, event.data, now)
            case AuthorizationAnswered():
                self._answered(event)
            case HistoryAppended():
                self._appended(event)
            case HistoryLoaded():
                self._loaded(event)
            case BrokerLost():
                self._cluster.broker_connected = False
            case BrokerRestored():
                self._cluster.broker_connected = True
                self._actions.extend(self._cluster.restored())
            case BrokerReported():
                self._broker_report = event

    def tick(self, *, now: float) -> None:
        """Let time pass: pings, idle and authorization timeouts, cluster heartbeats."""
        self._advance(now)
        if now < self._next_sweep_at:
            return
        self._next_sweep_at = now + self.config.sweep_interval
        self._sweep_connections(now)
        self._sweep_pending(now)
        for channel, item in self._streams.overdue(now):
            self._ready(channel, item)
        for failure in self._streams.expired(now):
            if isinstance(failure, HistoryAppended):
                self._appended(failure)
            else:
                self._loaded(failure)
        actions, left = self._cluster.sweep(now)
        self._actions.extend(actions)
        self._announce(left, "user.left", now)
        transitions, announced = self._cluster.report(now)
        if transitions:
            self._actions.extend(announced)
            self._actions.append(Notify(self._webhook_events(transitions, now)))

    def next_deadline(self) -> float:
        """When `tick` next has work to do (monotonic seconds)."""
        return self._next_sweep_at

    def actions(self) -> list[HubAction]:
        """Drain the actions produced so far (publishes in a row to one topic bundled)."""
        actions, self._actions = self._actions, []
        return self._cluster.bundle(actions) if actions else []

    # -- the application's API -----------------------------------------------------------

    def channel(self, pattern: str) -> ChannelRule:
        """The authorization rule for a channel pattern (`private-chat.*`)."""
        return self._rules.channel(pattern)

    def broadcast(self, channel: str, event: str, data: JsonValue = None, *, now: float,
                  exclude: ConnectionId | None = None, user_id: str | None = None,
                  ephemeral: bool = False) -> str:
        """Publish an event to a channel on every node; the message id.

        Args:
            ephemeral: keep it out of the channel's history (typing, read receipts).

        Raises:
            MessageError: the channel name is invalid (4008).
        """
        self._advance(now)
        _valid(channel)
        rule = None if ephemeral else self._streams.rule(channel)
        message_id, payload = self._encode(MessageType.EVENT, now, channel=channel,
                                           event=event, data=data, user_id=user_id)
        self._published += 1
        if rule is not None and self._streams.shared:
            if (oldest := self._streams.full()) is not None:
                self._appended(oldest)
            self._actions.append(self._streams.append(channel, rule, payload, exclude, now))
            return message_id
        position = self._streams.keep(channel, rule, payload, now) if rule else None
        self._fan_out(channel, payload, position, exclude)
        self._actions.append(self._cluster.envelope(channel_topic(channel), EnvelopeKind.CHANNEL,
                                                    payload, exclude))
        return message_id

    def _appended(self, answer: HistoryAppended) -> None:
        """The shared stream placed a publish: deliver here and to the other nodes, in the
        order this node published."""
        if answer.error is not None:
            self._history_failures += 1
        for append in self._streams.appended(answer):
            position = append.position
            self._actions.append(self._cluster.envelope(
                channel_topic(append.channel), EnvelopeKind.CHANNEL, append.payload,
                append.exclude, position))
            self._in_order(append.channel, append.payload, position, append.exclude)

    def _in_order(self, channel: str, payload: bytes, position: Position | None,
                  exclude: ConnectionId | None) -> None:
        """Deliver a shared channel's message here in offset order (see `Streams.order`)."""
        if channel not in self._subscribers:
            return  # nobody here (any more): keep no order for it
        if position is None:
            self._fan_out(channel, payload, None, exclude)
            return
        for item in self._streams.order(channel, position, payload, exclude, self._now,
                                        self.config.sweep_interval):
            self._ready(channel, item)

    def _ready(self, channel: str, item: Ready | Gap) -> None:
        """A shared channel's next message in offset order, or the range given up on."""
        if isinstance(item, Gap):
            self._tell_lost(channel, item.last - item.first + 1, item)
        else:
            self._fan_out(channel, *item)

    def _fan_out(self, channel: str, payload: bytes, position: Position | None,
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
        if channel in self._streams.loading:  # new subscriptions get their history first
            skip = self._streams.divert(channel, position[1] if position else None, payload,
                                        event_id, exclude)
            subscribers = [c for c in subscribers if c not in skip]
        self._deliver(subscribers, payload, event_id, exclude, channel)

    def send_to_user(self, user_id: str, event: str, data: JsonValue = None, *,
                     now: float) -> str:
        """Send an event to every connection of a user, on every node; the message id."""
        self._advance(now)
        message_id, payload = self._encode(MessageType.EVENT, now, event=event, data=data)
        self._published += 1
        self._deliver(self._users.get(user_id, ()), payload)
        self._actions.append(self._cluster.envelope(user_topic(user_id), EnvelopeKind.USER,
                                                    payload))
        return message_id

    def send(self, connection_id: ConnectionId, event: str, data: JsonValue = None, *,
             now: float) -> str | None:
        """Send an event to one connection, on whichever node holds it; the message id, or
        None when no connection can have that id (its node is this one or unknown).

        A connection of another node gets it through that node (`is_local` tells which);
        if it closed meanwhile, the event goes nowhere.
        """
        self._advance(now)
        local = connection_id in self._connections
        owner = None if local else self._owner(connection_id)
        if not local and owner is None:
            return None
        message_id, payload = self._encode(MessageType.EVENT, now, event=event, data=data)
        if local:
            self._deliver((connection_id,), payload)
        else:
            self._actions.append(self._cluster.command(owner, op="send", n=connection_id,
                                                       p=payload.decode()))
        return message_id

    def is_local(self, connection_id: ConnectionId) -> bool:
        """Whether a connection is open on this node."""
        return connection_id in self._connections

    def disconnect(self, connection_id: ConnectionId, code: int = 1000, reason: str = "") -> None:
        """Close a connection of this node from the application's side.

        Raises:
            LocalProtocolError: no such connection here.
        """
        self._drop(self._get(connection_id), code, reason)

    def grant(self, connection_id: ConnectionId, channel: str, member: Member | None) -> None:
        """Let a connection join a private or presence channel its signature authorized
        (a Pusher client's; the Node checked it), as `member` on a presence channel."""
        self._get(connection_id).grant(channel, member)

    def sign_in(self, connection_id: ConnectionId, user: User, *, now: float) -> None:
        """Give a connection its user after it opened (a Pusher client's `pusher:signin`,
        which the Node checked): `send_to_user` and `terminate_user` reach it from then on.

        Raises:
            MessageError: 4003 when it has another user already.
        """
        self._advance(now)
        conn = self._get(connection_id)
        if conn.user is not None:
            if conn.user.id == user.id:
                return
            raise MessageError(ErrorCode.FORBIDDEN, "signed in as another user already")
        conn.user = user
        self._add_user(conn, user.id, now)

    def terminate_user(self, user_id: str, code: int, reason: str, *, now: float) -> int:
        """Close every connection of a user, on every node; how many were on this one."""
        self._advance(now)
        local = sorted(self._users.get(user_id, ()))
        for connection_id in local:
            self._drop(self._connections[connection_id], code, reason)
        self._actions.append(self._cluster.envelope(
            user_topic(user_id), EnvelopeKind.USER,
            _TERMINATE + encode_json({"code": code, "reason": reason}) + b"}"))
        return len(local)
    def disconnect_connection(self, connection_id: ConnectionId, code: int = DISCONNECTED,
                              reason: str = "", *, now: float) -> bool:
        """Close one connection on whichever node holds it (close `code`, default 4010:
        clients do not reconnect); False when no connection can have that id.

        Raises:
            MessageError: the code or reason cannot go in a close frame (4005).
        """
        self._advance(now)
        _close_frame(code, reason)
        conn = self._connections.get(connection_id)
        if conn is not None:
            self._drop(conn, code, reason)
            return True
        owner = self._owner(connection_id)
        if owner is None:
            return False
        self._actions.append(self._cluster.command(owner, op="disconnect", n=connection_id,
                                                   code=code, r=reason))
        return True

    def disconnect_user(self, user_id: str, code: int = DISCONNECTED, reason: str = "", *,
                        now: float) -> int:
        """Close every connection of a user on every node; how many were on this one.

        Raises:
            MessageError: the code or reason cannot go in a close frame (4005).
        """
        self._advance(now)
        _close_frame(code, reason)
        self._actions.append(self._cluster.command(None, op="disconnect_user", u=user_id,
                                                   code=code, r=reason))
        return self._disconnect_user(user_id, code, reason)

    def unsubscribe_user(self, user_id: str, channel: str, reason: str = "", *,
                         now: float) -> int:
        """End a user's subscriptions to a channel on every node (each connection gets
        `subscription.revoked`); how many were on this one.

        Raises:
            MessageError: the channel name is invalid (4008).
        """
        self._advance(now)
        _valid(channel)
        self._actions.append(self._cluster.command(None, op="unsubscribe_user", u=user_id,
                                                   c=channel, r=reason))
        return self._unsubscribe_user(user_id, channel, reason, now)

    def _owner(self, connection_id: ConnectionId) -> str | None:
        """The other node, alive as far as this one knows, that made a connection id."""
        return self._cluster.owner(connection_id)

    def _disconnect_user(self, user_id: str, code: int, reason: str) -> int:
        chosen = sorted(self._users.get(user_id, ()))
        for connection_id in chosen:
            self._drop(self._connections[connection_id], code, reason)
        return len(chosen)

    def _unsubscribe_user(self, user_id: str, channel: str, reason: str, now: float) -> int:
        count = 0
        for connection_id in sorted(self._users.get(user_id, ())):
            conn = self._connections[connection_id]
            request_id = conn.pending.pop(channel, None)
            if request_id is not None:  # its authorization is on its way: void it
                self._pending.pop(request_id, None)
            elif channel in conn.channels:
                self._leave(conn, channel, now)
            else:
                continue
            self._reply(conn, REVOKED_EVENT, {"reason": reason}, now, channel)
            count += 1
        return count

    def _webhook_events(self, transitions: list[Transition],
                        now: float) -> tuple[dict[str, JsonValue], ...]:
        """The webhook events of presence transitions this node reports."""
        events = []
        for (channel, user_id), present in transitions:
            if user_id == CHANNEL:
                events.append(self._webhook_event(
                    "channel.occupied" if present else "channel.vacated", now, channel=channel))
                continue
            event = self._webhook_event("member.added" if present else "member.removed", now,
                                        channel=channel, user_id=user_id)
            member = self._cluster.presence.member(channel, user_id) if present else None
            if member is not None:
                event["info"] = dict(member.info)
            events.append(event)
        return tuple(events)

    def _webhook_event(self, name: str, now: float, **fields: JsonValue) -> dict[str, JsonValue]:
        """One webhook event: an id unique per node, run and event, its name, its fields
        and the time."""
        self._webhook_events_made += 1
        return {"id": f"{self.node_id}:{self._cluster.incarnation}:{self._webhook_events_made}",
                "name": name, **fields, "time_ms": self._unix_ms(now)}

    def _notify_connection(self, name: str, conn: Connection, now: float) -> None:
        """`connection.opened` / `connection.closed` of a user's connection, when asked
        for (this node reports its own connections)."""
        if self.config.connection_webhooks and conn.user is not None:
            self._actions.append(Notify((self._webhook_event(
                name, now, connection_id=conn.id, user_id=conn.user.id,
                transport=conn.transport),)))

    def _command(self, body: dict[str, Any], now: float) -> None:
        """Carry out an application command another node forwarded (`ClusterState.command`)."""
        try:
            match body.get("op"):
                case "send":
                    connection_id = ConnectionId(str(body["n"]))
                    if connection_id in self._connections:
                        self._deliver((connection_id,), str(body["p"]).encode())
                case "disconnect":
                    conn = self._connections.get(ConnectionId(str(body["n"])))
                    if conn is not None:
                        self._drop(conn, int(body["code"]), str(body["r"]))
                case "disconnect_user":
                    self._disconnect_user(str(body["u"]), int(body["code"]), str(body["r"]))
                case "unsubscribe_user":
                    self._unsubscribe_user(str(body["u"]), str(body["c"]), str(body["r"]), now)
        except (KeyError, TypeError, ValueError):
            self._errors[ErrorCode.MALFORMED_MESSAGE] += 1  # another node's bug: counted

    def connection(self, connection_id: ConnectionId) -> ConnectionInfo | None:
        """A snapshot of a local connection, or None."""
        conn = self._connections.get(connection_id)
        return conn.info() if conn else None

    def set_metadata(self, connection_id: ConnectionId, key: str, value: Any) -> None:
        """Attach application data to a connection (seen by authorization callbacks)."""
        self._get(connection_id).set(key, value)

    def connection_ids(self, *, channel: str | None = None,
                       user_id: str | None = None) -> list[ConnectionId]:
        """Local connections, optionally only a channel's subscribers or a user's."""
        if channel is not None:
            return list(self._subscribers.get(channel, ()))
        if user_id is not None:
            return sorted(self._users.get(user_id, ()))
        return list(self._connections)

    def connection_count(self, user_id: str | None = None) -> int:
        """Connections: all of this node's; or one user's, on every node as far as this
        one knows when `max_connections_per_user` is set (else on this node)."""
        if user_id is None:
            return len(self._connections)
        if self.config.limits.max_connections_per_user is not None:
            return self._cluster.presence.count(CONNECTIONS, user_id)
        return len(self._users.get(user_id, ()))

    def _limit_user(self, conn: Connection, user_id: str, now: float) -> None:
        """Count a user's new connection cluster-wide (an entry of the presence table's
        `CONNECTIONS`, announced like presence) and, over `max_connections_per_user`
        (with `replace_oldest`: the Node refuses it at the door otherwise), close the
        user's oldest connection, on whichever node holds it."""
        _, announced = self._cluster.join(CONNECTIONS, conn.id, Member(
            user_id=user_id, info={"at": self._unix_ms(now)}))
        self._actions.extend(announced)
        table, limit = self._cluster.presence, self.config.limits.max_connections_per_user
        if limit is None or table.count(CONNECTIONS, user_id) <= limit:
            return
        oldest = table.oldest(CONNECTIONS, user_id, but=(self.node_id, conn.id))
        if oldest is None:
            return
        node, connection_id = oldest
        self._replaced += 1
        reason = "replaced by a newer connection of the same user"
        local = self._connections.get(ConnectionId(connection_id))
        if node == self.node_id and local is not None:
            self._drop(local, ErrorCode.TOO_MANY_CONNECTIONS, reason)
        elif node != self.node_id:
            self._actions.append(self._cluster.command(
                node, op="disconnect", n=connection_id, code=int(ErrorCode.TOO_MANY_CONNECTIONS),
                r=reason))

    def channels(self) -> dict[str, int]:
        """Channels with local subscribers, and how many."""
        return {name: len(subs) for name, subs in sorted(self._subscribers.items())}

    def presence_channels(self) -> list[str]:
        """The presence channels with members, over every node."""
        return self._cluster.presence.channels()

    def members(self, channel: str) -> list[Member]:
        """The members of a presence channel, over every node."""
        return self._cluster.presence.members(channel)

    def statistics(self) -> HubStatistics:
        """A snapshot of the counters."""
        return HubStatistics(
            connections=Counter(c.transport for c in self._connections.values()),
            subscriptions=sum(len(s) for s in self._subscribers.values()),
            channels=len(self._subscribers),
            messages_in=self._messages_in,
            messages_out=self._messages_out,
            published=self._published,
            errors=dict(self._errors),
            broker_connected=self._cluster.broker_connected,
            envelopes_lost=self._cluster.window.lost,
            envelopes_duplicate=self._cluster.window.duplicates,
            nodes=len(self._cluster.heard) + 1,
            recoveries=dict(self._recoveries),
            history_failures=self._history_failures,
            envelopes_stale=self._cluster.stale,
            lost_reported=self._reported_lost,
            broker_topics=len(self._subscribers) + len(self._users) + 1,
            broker_latency=self._broker_latency.snapshot(),
            broker_driver=self._broker_report,
            connections_replaced=self._replaced,
        )

    # -- connections ---------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        if now < self._now:
            raise LocalProtocolError(f"now went backwards ({now} < {self._now})")
        self._now = now

    def _get(self, connection_id: ConnectionId) -> Connection:
        conn = self._connections.get(connection_id)
        if conn is None:
            raise LocalProtocolError(f"unknown connection {connection_id!r}")
        return conn

    def _open(self, event: ConnectionOpened, now: float) -> None:
        if event.connection_id in self._connections:
            raise LocalProtocolError(f"connection {event.connection_id!r} is already open")
        rates = self.config.rates
        conn = Connection(id=event.connection_id, user=event.user, transport=event.transport,
                           peer=event.peer, expects_pong=event.expects_pong,
                           connected_at=now, last_activity_at=now,
                           message_bucket=TokenBucket(rates.messages, now)
                           if rates.messages else None,
                           subscribe_bucket=TokenBucket(rates.subscriptions, now)
                           if rates.subscriptions else None)
        self._connections[conn.id] = conn
        if conn.user is not None:
            self._expires(conn, conn.user.expires_ms, now)
            self._add_user(conn, conn.user.id, now)
            self._notify_connection("connection.opened", conn, now)
            if self.config.limits.max_connections_per_user is not None:
                self._limit_user(conn, conn.user.id, now)
        self._reply(conn, "connection.established", {
            "connection_id": conn.id,
            "user_id": conn.user.id if conn.user else None,
            "heartbeat": self.config.heartbeat_interval,
        }, now)

    def _add_user(self, conn: Connection, user_id: str, now: float) -> None:
        local = self._users.setdefault(user_id, set())
        if not local:
            self._actions.append(self._cluster.subscribe(user_topic(user_id), now))
        local.add(conn.id)

    def _remove(self, conn: Connection) -> None:
        del self._connections[conn.id]
        self._notify_connection("connection.closed", conn, self._now)
        if self.config.limits.max_connections_per_user is not None and conn.user is not None:
            self._actions.extend(self._cluster.leave(CONNECTIONS, conn.id)[1])
        for request_id in conn.pending.values():
            self._pending.pop(request_id, None)
        for channel in sorted(conn.channels):
            self._leave(conn, channel, self._now)
        if conn.user is not None:
            local = self._users[conn.user.id]
            local.discard(conn.id)
            if not local:
                del self._users[conn.user.id]
                self._actions.append(self._cluster.unsubscribe(user_topic(conn.user.id)))

    def _drop(self, conn: Connection, code: int, reason: str) -> None:
        self._remove(conn)
        self._actions.append(Disconnect(conn.id, code, reason))

    def _sweep_connections(self, now: float) -> None:
        idle_timeout = self.config.effective_idle_timeout
        heartbeat = self.config.heartbeat_interval
        for conn in list(self._connections.values()):
            if conn.expires_at is not None and self._expiring(conn, now):
                continue
            if conn.channel_expiry:
                self._channels_expiring(conn, now)
            if not conn.expects_pong:
                continue
            idle = now - conn.last_activity_at
            if idle >= idle_timeout:
                self._errors[ErrorCode.IDLE_TIMEOUT] += 1
                self._drop(conn, ErrorCode.IDLE_TIMEOUT, "idle timeout")
            elif idle >= heartbeat and not conn.pinged:
                conn.pinged = True
                _, payload = self._encode(MessageType.PING, now)
                self._deliver((conn.id,), payload)

    # -- expiring credentials ------------------------------------------------------------

    def _expires(self, conn: Connection, expires_ms: int | None, now: float) -> None:
        """Set when a connection's credentials expire (Unix ms, or None: never)."""
        conn.expires_at = None if expires_ms is None else (
            now + (expires_ms - self._unix_ms(now)) / 1000)
        conn.refresh_asked = False

    def _expiring(self, conn: Connection, now: float) -> bool:
        """Close a connection whose credentials expired (True), or ask it, `refresh_lead`
        seconds before, to refresh them."""
        assert conn.expires_at is not None
        if now >= conn.expires_at:
            self._errors[ErrorCode.UNAUTHENTICATED] += 1
            self._drop(conn, ErrorCode.UNAUTHENTICATED, "token expired")
            return True
        if not conn.refresh_asked and now >= conn.expires_at - self.config.refresh_lead:
            conn.refresh_asked = True
            self._reply(conn, "connection.refresh_required",
                        {"expires_in": round(conn.expires_at - now, 3)}, now)
        return False

    def _refresh(self, conn: Connection, data: JsonValue, now: float) -> None:
        """`{"type": "refresh", "data": {"token": T}}`: new credentials for the same user.

        Raises:
            MessageError: 4007 without a token; 4001 when the token is bad or expired, or
                the connection has none to refresh (the connection stays as it was).
        """
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise MessageError(ErrorCode.MISSING_FIELD, "'data.token' (a string) is required")
        if conn.user is None or self.config.jwt is None:
            raise MessageError(ErrorCode.UNAUTHENTICATED, "this connection has no token")
        user = user_from_claims(verify_token(token, self.config.jwt,
                                             now_unix=self._unix_ms(now) / 1000))
        if user.id != conn.user.id:
            self._errors[ErrorCode.UNAUTHENTICATED] += 1
            self._drop(conn, ErrorCode.UNAUTHENTICATED, "the new token is for another user")
            return
        self._expires(conn, user.expires_ms, now)
        self._reply(conn, "connection.refreshed", {
            "expires_in": None if conn.expires_at is None else round(conn.expires_at - now, 3)},
            now)

    # -- client messages -----------------------------------------------------------------

    def _receive(self, conn: Connection, data: object, now: float) -> None:
        conn.last_activity_at = now
        conn.pinged = False
        self._messages_in += 1
        if conn.message_bucket is not None and (wait := conn.message_bucket.take(now)):
            self._rate_limited(conn, wait, now)
            return
        try:
            if isinstance(data, str | bytes):
                message = Message.from_json(data, max_bytes=self.config.limits.max_message_bytes)
            else:
                message = Message.from_dict(data)
            match message.type:
                case MessageType.SUBSCRIBE:
                    if conn.subscribe_bucket is not None and (
                            wait := conn.subscribe_bucket.take(now)):
                        self._rate_limited(conn, wait, now, message.channel)
                        return
                    self._subscribe(conn, _valid(message.channel or ""), now, message.data)
                case MessageType.UNSUBSCRIBE:
                    self._unsubscribe(conn, _valid(message.channel or ""), now)
                case MessageType.EVENT:
                    self._client_event(conn, message, now)
                case MessageType.PING:
                    _, payload = self._encode(MessageType.PONG, now)
                    self._deliver((conn.id,), payload)
                case MessageType.REFRESH:
                    self._refresh(conn, message.data, now)
                case MessageType.PONG | MessageType.ERROR:
                    pass
        except MessageError as error:
            channel = data.get("channel") if isinstance(data, dict) else None
            if channel is None and isinstance(data, str | bytes):
                channel = _channel_hint(data)
            self._error(conn, error.code, error.message, now,
                        channel if isinstance(channel, str) else None)

    def _subscribe(self, conn: Connection, channel: str, now: float,
                   options: JsonValue = None) -> None:
        request = SubscribeOptions.parse(options)
        if channel in conn.channels:
            if request.token is not None and conn.channel_expiry and \
                    channel in conn.channel_expiry and conn.user is not None:
                _, expires_ms = self._subscription_token(conn.user, channel, request.token, now)
                self._channel_expires(conn, channel, expires_ms, now)  # a refresh
            kept = self._streams.rule(channel)
            if kept is not None and (request.recover is not None or request.history):
                self._replay(conn, channel, kept, request, now)
            else:
                self._succeeded(conn, channel, now)
            return
        if channel in conn.pending:
            return
        limits = self.config.limits
        if len(conn.channels) + len(conn.pending) >= limits.max_subscriptions:
            raise MessageError(ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                               f"at most {limits.max_subscriptions} subscriptions")
        if not channel_kind(channel).needs_authorization:
            self._join(conn, channel, None, now, request)
            return
        if channel in conn.grants:  # a Pusher client's signature
            member = conn.grants[channel]
            self._join(conn, channel, member.info if member else None, now, request)
            return
        if conn.user is None:
            raise MessageError(ErrorCode.UNAUTHENTICATED, f"{channel} needs an authenticated user")
        if any(pattern_matches(pattern, channel) for pattern in conn.user.channels):
            self._join(conn, channel, conn.user.info, now, request)
            return
        if request.token is not None:
            info, expires_ms = self._subscription_token(conn.user, channel, request.token, now)
            self._channel_expires(conn, channel, expires_ms, now)
            self._join(conn, channel, info, now, request)
            return
        rule = self._rules.find(channel)
        if rule is None or rule.callback is None:
            raise MessageError(ErrorCode.FORBIDDEN, f"no rule allows {channel}")
        if len(conn.pending) >= limits.max_pending_authorizations:
            raise MessageError(ErrorCode.TOO_MANY_PENDING, "too many authorizations in flight")
        request_id = self._new_id()
        conn.pending[channel] = request_id
        self._pending[request_id] = PendingAuthorization(conn.id, channel,
                                             now + self.config.authorization_timeout, request)
        self._actions.append(Authorize(request_id=request_id, callback=rule.callback,
                                       connection=conn.info(), channel=channel))

    def _subscription_token(self, user: User, channel: str, token: str,
                            now: float) -> tuple[Mapping[str, Any], int | None]:
        """Check a per-channel token (`sub` = this user, `channel` = this channel); its info
        and its `exp` (Unix ms), if any.

        Raises:
            MessageError: 4003 when the token is bad or for another user or channel.
        """
        if self.config.jwt is None:
            raise MessageError(ErrorCode.FORBIDDEN, "this server accepts no subscription tokens")
        try:
            claims = verify_token(token, self.config.jwt,
                                  now_unix=self._epoch.unix_ms_at(now) / 1000)
        except MessageError as error:
            raise MessageError(ErrorCode.FORBIDDEN, error.message) from None
        if str(claims.get("sub")) != user.id or claims.get("channel") != channel:
            raise MessageError(ErrorCode.FORBIDDEN, "token for another user or channel")
        info = claims.get("info")
        exp = claims.get("exp")
        expires_ms = round(exp * 1000) if isinstance(exp, int | float) and \
            not isinstance(exp, bool) else None
        return (info if isinstance(info, dict) else user.info), expires_ms

    def _channel_expires(self, conn: Connection, channel: str, expires_ms: int | None,
                         now: float) -> None:
        """Set when a subscription token's `exp` ends the subscription (None: never)."""
        if expires_ms is not None:
            if conn.channel_expiry is None:
                conn.channel_expiry = {}
            conn.channel_expiry[channel] = (now + (expires_ms - self._unix_ms(now)) / 1000, False)
        elif conn.channel_expiry:
            conn.channel_expiry.pop(channel, None)

    def _channels_expiring(self, conn: Connection, now: float) -> None:
        """End the subscriptions whose token expired (`subscription.revoked`), and ask,
        `refresh_lead` seconds before, for a new token (`subscription.refresh_required`:
        subscribe again with it)."""
        assert conn.channel_expiry is not None
        for channel, (expires_at, asked) in list(conn.channel_expiry.items()):
            if now >= expires_at:
                self._leave(conn, channel, now)
                self._reply(conn, REVOKED_EVENT, {"reason": "token expired"}, now, channel)
            elif not asked and now >= expires_at - self.config.refresh_lead:
                conn.channel_expiry[channel] = (expires_at, True)
                self._reply(conn, "subscription.refresh_required",
                            {"expires_in": round(expires_at - now, 3)}, now, channel)

    def _answered(self, answer: AuthorizationAnswered) -> None:
        pending = self._pending.pop(answer.request_id, None)
        conn = self._connections.get(pending.connection_id) if pending else None
        if pending is None or conn is None:
            return  # late: the connection left or the request timed out
        del conn.pending[pending.channel]
        if answer.error is not None:
            self._error(conn, ErrorCode.INTERNAL_ERROR, "authorization failed", self._now,
                        pending.channel)
        elif not answer.allowed:
            self._error(conn, ErrorCode.FORBIDDEN, f"not allowed to join {pending.channel}",
                        self._now, pending.channel)
        else:
            info = answer.info if answer.info is not None else (conn.user.info if conn.user else {})
            self._join(conn, pending.channel, info, self._now, pending.options)

    def _sweep_pending(self, now: float) -> None:
        for request_id, pending in list(self._pending.items()):
            if pending.deadline <= now:
                del self._pending[request_id]
                conn = self._connections[pending.connection_id]
                del conn.pending[pending.channel]
                self._error(conn, ErrorCode.FORBIDDEN, "authorization timed out", now,
                            pending.channel)

    def _join(self, conn: Connection, channel: str, info: Mapping[str, Any] | None,
              now: float, request: SubscribeOptions) -> None:
        conn.channels.add(channel)
        subscribers = self._subscribers.setdefault(channel, {})
        if not subscribers:
            self._actions.append(self._cluster.subscribe(channel_topic(channel), now))
            if channel_kind(channel) is not ChannelKind.PRESENCE:
                self._actions.extend(self._cluster.occupy(channel, True))
        subscribers[conn.id] = None
        rule = self._streams.rule(channel)
        if rule is not None and self._streams.shared:
            self._actions.append(self._streams.read(channel, rule, conn.id, info, request, now))
            return
        history = self._streams.local_slice(channel, rule, now) if rule else None
        self._welcome(conn, channel, info, request, history, (), now)

    def _replay(self, conn: Connection, channel: str, rule: HistoryRule,
                request: SubscribeOptions, now: float) -> None:
        """A subscribed connection asks again for what it missed (after `messages.lost`):
        answered as a new subscription would be, without leaving and joining again."""
        if not self._streams.shared:
            self._welcome(conn, channel, None, request,
                          self._streams.local_slice(channel, rule, now), (), now, joined=True)
        elif conn.id not in self._streams.loading.get(channel, ()):
            self._actions.append(self._streams.read(channel, rule, conn.id, None, request, now,
                                                    joined=True))

    def _loaded(self, answer: HistoryLoaded) -> None:
        """The shared stream answered a new subscription's read."""
        found = self._streams.loaded(answer)
        if found is None:
            return  # the subscription ended meanwhile
        channel, connection_id, loading = found
        conn = self._connections[connection_id]
        if answer.error is not None or answer.epoch is None:
            self._history_failures += 1
            history = None
        else:
            history = StreamSlice(answer.epoch, answer.offset, answer.entries)
            self.remember_reads(channel, answer.reads)
        self._welcome(conn, channel, loading.info, loading.request, history, loading.buffered,
                      self._now, joined=loading.joined)
        for item in self._streams.settle(channel):  # live messages held meanwhile
            self._ready(channel, item)

    def _welcome(self, conn: Connection, channel: str, info: Mapping[str, Any] | None,
                 request: SubscribeOptions, history: StreamSlice | None,
                 buffered: Iterable[tuple[int | None, bytes, str | None]], now: float,
                 joined: bool = False) -> None:
        """Answer a subscription: its stream position, what it asked to recover or see,
        the live messages that waited for that, and (unless it had `joined` already) the
        presence of its members."""
        success: dict[str, JsonValue] = {}
        missed: list[tuple[int, bytes]] = []
        if history is not None:
            success = {"epoch": history.epoch, "offset": history.offset}
            if request.recover is not None:
                epoch, since = request.recover
                recovered = history.recovers(epoch, since)
                success["recovered"] = recovered
                self._recoveries[recovered] += 1
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
            self._recoveries[False] += 1
        self._reply(conn, "subscription.succeeded", success, now, channel)
        if history is not None:
            for offset, payload in missed:
                self._deliver((conn.id,), stamp(payload, offset, history.epoch),
                              f"{history.epoch}:{offset}:{channel}", channel=channel)
        top = history.offset if history is not None else None
        for position, payload, event_id in sorted(buffered, key=_offset_order):
            if position is None or top is None or position > top:
                self._deliver((conn.id,), payload, event_id, channel=channel)
        identity = conn.member_id(channel)
        if channel_kind(channel) is ChannelKind.PRESENCE and identity is not None \
                and not joined:
            member = Member(user_id=identity, info=dict(info or {}))
            first, actions = self._cluster.join(channel, conn.id, member)
            self._actions.extend(actions)
            if first:
                self._announce([(channel, member)], "user.joined", now, exclude=conn.id)
            self._succeeded(conn, channel, now, only_sync=True)

    def _succeeded(self, conn: Connection, channel: str, now: float,
                   only_sync: bool = False) -> None:
        if not only_sync:
            self._reply(conn, "subscription.succeeded", {}, now, channel)
        if channel_kind(channel) is ChannelKind.PRESENCE:
            members = [m.to_dict() for m in self.members(channel)]
            self._reply(conn, "presence.sync", {"members": members}, now, channel)

    def _unsubscribe(self, conn: Connection, channel: str, now: float) -> None:
        if channel not in conn.channels:
            raise MessageError(ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {channel}")
        self._leave(conn, channel, now)
        self._reply(conn, "unsubscription.succeeded", {}, now, channel)

    def _leave(self, conn: Connection, channel: str, now: float) -> None:
        conn.channels.discard(channel)
        if conn.channel_expiry:
            conn.channel_expiry.pop(channel, None)
        self._streams.cancel(channel, conn.id)
        subscribers = self._subscribers[channel]
        del subscribers[conn.id]
        if not subscribers:
            del self._subscribers[channel]
            self._streams.forget(channel)
            self._actions.append(self._cluster.unsubscribe(channel_topic(channel)))
            if channel_kind(channel) is not ChannelKind.PRESENCE:
                self._actions.extend(self._cluster.occupy(channel, False))
        if channel_kind(channel) is ChannelKind.PRESENCE and conn.member_id(channel) is not None:
            member, actions = self._cluster.leave(channel, conn.id)
            self._actions.extend(actions)
            if member is not None:
                self._announce([(channel, member)], "user.left", now)
        conn.revoke(channel)

    def _client_event(self, conn: Connection, message: Message, now: float) -> None:
        if not message.channel or not message.event:
            raise MessageError(ErrorCode.MISSING_FIELD,
                               "a client event needs 'channel' and 'event'")
        channel = _valid(message.channel)
        if not channel_kind(channel).needs_authorization:
            raise MessageError(ErrorCode.FORBIDDEN,
                               "client events are allowed on private and presence channels only")
        if channel not in conn.channels:
            raise MessageError(ErrorCode.FORBIDDEN, f"not subscribed to {channel}")
        user_id = conn.member_id(channel)
        data = message.data
        ephemeral = message.event in (TYPING_EVENT, READ_EVENT)
        if message.event == TYPING_EVENT and user_id is not None and (
                not self._signals.typing_allowed(channel, user_id, now)):
            return  # coalesced: the others were told a moment ago
        if message.event == READ_EVENT:
            position = read_position(data)
            if user_id is None or not self._signals.read(channel, user_id, position):
                return
            data = {"position": position}
            rule = self._streams.rule(channel)
            if rule is not None and self._streams.shared:
                self._actions.append(SaveReadPosition(channel=channel, user_id=user_id,
                                                      position=position, ttl=rule.ttl))
        self.broadcast(channel, message.event, data, now=now, exclude=conn.id, user_id=user_id,
                       ephemeral=ephemeral)
        if self.config.report_events:
            self._actions.append(ClientEventSent(channel, message.event, data, user_id, conn.id))
        if any(pattern_matches(p, channel) for p in self.config.client_event_webhooks):
            self._actions.append(Notify((self._webhook_event(
                "client_event", now, channel=channel, event=message.event, data=data,
                user_id=user_id, connection_id=conn.id),)))

    def reads(self, channel: str) -> dict[str, int | str]:
        """Each user's read position on a channel (from `read` events on any node)."""
        return self._signals.reads(channel)

    def remember_reads(self, channel: str, reads: Mapping[str, int | str]) -> None:
        """Take in read positions the shared store keeps (integer ones only move forward)."""
        for user_id, position in reads.items():
            self._signals.read(channel, user_id, position)

    def shared_history_rule(self, channel: str) -> HistoryRule | None:
        """The channel's history rule when its history is in the shared store."""
        return self._streams.rule(channel) if self._streams.shared else None

    # -- the broker ----------------------------------------------------------------------

    def _envelope(self, topic: str, data: bytes, now: float) -> None:
        try:
            received = decode(data)
        except MessageError:
            self._errors[ErrorCode.MALFORMED_MESSAGE] += 1
            return
        heard = self._cluster.receive(topic, received, now)
        self._actions.extend(heard.actions)
        self._announce(heard.left, "user.left", now)
        skip, payloads = heard.skip, received.payloads
        if heard.gap and not self._offsets_show(topic, received, skip):
            self._lost(topic, heard.gap)
        if skip >= len(payloads):
            return
        kind = received.kind
        if received.sent_ms is not None and kind is not EnvelopeKind.CONTROL:
            self._broker_latency.observe(
                max(0.0, (self._unix_ms(now) - received.sent_ms) / 1000),
                len(payloads) - skip)
        if kind is EnvelopeKind.CHANNEL:
            self._from_other_node(topic[2:], received, skip, now)
        elif kind is EnvelopeKind.USER:
            targets = self._users.get(topic[2:], ())
            for payload in payloads[skip:]:
                if payload.startswith(_TERMINATE):  # another node's `terminate_user`
                    code, reason = _terminate_close(payload)
                    for connection_id in sorted(targets):
                        self._drop(self._connections[connection_id], code, reason)
                    targets = ()
                    continue
                self._deliver(targets, payload)
        else:
            for payload in payloads[skip:]:
                applied = self._cluster.control(received.origin, payload, now,
                                                self._receives)
                self._actions.extend(applied.replies)
                self._announce(applied.joined, "user.joined", now)
                self._announce(applied.left, "user.left", now)
                for lost_topic, count in applied.caught_up:
                    self._lost(lost_topic, count)
                for command in applied.commands:
                    self._command(command, now)

    def _offsets_show(self, topic: str, received: Received, skip: int) -> bool:
        """Whether a shared stream's offsets will show the gap before this message (with
        its range, `_ready`): its channel's live order is in the message's epoch."""
        positions = received.positions
        if not positions or not topic.startswith("c:"):
            return False
        position = positions[min(skip, len(positions) - 1)]
        return position is not None and self._streams.ordered(topic[2:], position[0])

    def _receives(self, topic: str) -> bool:
        """Whether this node is subscribed to a channel or user topic."""
        kind, _, name = topic.partition(":")
        return name in (self._subscribers if kind == "c" else self._users if kind == "u"
                        else ())

    def _lost(self, topic: str, count: int) -> None:
        """`count` messages of another node on a topic never arrived: tell the local
        subscribers, and leave a hole of that size in the channel's own stream, so that no
        recovery across it claims success."""
        kind, _, name = topic.partition(":")
        if kind == "u":
            self._tell_lost(None, count, None, self._users.get(name, ()))
            return
        if kind != "c" or name not in self._subscribers:
            return
        rule = self._streams.rule(name)
        hole = self._streams.skip(name, rule, count) if rule and not self._streams.shared \
            else None
        self._tell_lost(name, count, hole)

    def _tell_lost(self, channel: str | None, count: int, hole: Gap | None,
                   targets: Iterable[ConnectionId] | None = None) -> None:
        """The `messages.lost` event, to a channel's subscribers (or the given targets)."""
        data: dict[str, JsonValue] = {"count": count}
        if hole is not None:
            data.update(epoch=hole.epoch, **{"from": hole.first, "to": hole.last})
        _, payload = self._encode(MessageType.EVENT, self._now, channel=channel,
                                  event=LOST_EVENT, data=data)
        if targets is None:
            targets = self._subscribers.get(channel, ()) if channel is not None else ()
        chosen = tuple(targets)
        self._reported_lost += count * len(chosen)
        self._deliver(chosen, payload)

    def _from_other_node(self, channel: str, received: Received, skip: int,
                         now: float) -> None:
        """Channel messages another node published: into this node's history (its own
        stream, or the shared one's order) and to the local subscribers."""
        rule = self._streams.rule(channel)
        shared = self._streams.shared
        excludes, positions = received.excludes, received.positions
        if rule is None and excludes is None and channel not in self._streams.loading:
            self._plain_from_other_node(channel, received.payloads[skip:])
            return
        for index in range(skip, len(received.payloads)):
            payload = received.payloads[index]
            exclude = excludes[index] if excludes else None
            kept = None if self._remote_signal(channel, payload) else rule
            if kept is not None and shared:
                self._in_order(channel, payload, positions[index] if positions else None,
                               ConnectionId(exclude) if exclude else None)
            else:
                position = self._streams.keep(channel, kept, payload, now) if kept else None
                self._fan_out(channel, payload, position,
                              ConnectionId(exclude) if exclude else None)

    def _plain_from_other_node(self, channel: str, payloads: list[bytes]) -> None:
        """`_from_other_node` for a channel without history, subscriptions still loading
        or excluded connections (the common case): every payload to every subscriber."""
        subscribers = self._subscribers.get(channel)
        if not subscribers:
            return
        # `_deliver`'s work inline (nothing to exclude, one snapshot of the subscribers for
        # the whole bundle): through `_deliver` node B costs 9 % more instructions
        targets = tuple(subscribers)
        for payload in payloads:
            self._remote_signal(channel, payload)  # a read moves this node's position
            self._actions.append(Deliver(targets, payload, None, channel))
        self._messages_out += len(targets) * len(payloads)

    def _remote_signal(self, channel: str, payload: bytes) -> bool:
        """Whether a message from another node is a typing or read signal (kept out of
        history); a read moves this node's copy of the position too."""
        if b'"event":"typing"' not in payload and b'"event":"read"' not in payload:
            return False
        try:
            message = Message.from_json(payload)
            if message.event == READ_EVENT and message.user_id is not None:
                self._signals.read(channel, message.user_id, read_position(message.data))
        except MessageError:
            return False  # another node's bytes that are not a signal: deliver as they are
        return message.event in (TYPING_EVENT, READ_EVENT)

    # -- output --------------------------------------------------------------------------

    def _encode(self, kind: MessageType, now: float, *, channel: str | None = None,
                event: str | None = None, data: JsonValue = None,
                user_id: str | None = None) -> tuple[str, bytes]:
        """A message of this server's own, encoded as `Message.encode` would (without
        building one: this is the publish path)."""
        if event is not None and not isinstance(event, str):
            raise MessageError(ErrorCode.INVALID_FIELD, "field 'event' must be a string")
        self._messages_made += 1
        message_id = f"{self._message_prefix}{self._messages_made:x}"
        return message_id, encode_message(message_id, kind, channel, event, data,
                                          self._unix_ms(now), user_id)

    def _unix_ms(self, now: float) -> int:
        """Unix milliseconds at `now`, worked out once per distinct `now` (a batch of
        publishes shares one)."""
        if now != self._unix_ms_for:
            self._unix_ms_for, self._unix_ms_value = now, self._epoch.unix_ms_at(now)
        return self._unix_ms_value

    def _deliver(self, targets: Iterable[ConnectionId], payload: bytes,
                 event_id: str | None = None, exclude: ConnectionId | None = None,
                 channel: str | None = None) -> None:
        chosen = tuple(c for c in targets if c != exclude) if exclude else tuple(targets)
        if chosen:
            self._messages_out += len(chosen)
            self._actions.append(Deliver(chosen, payload, event_id, channel))

    def _reply(self, conn: Connection, event: str, data: JsonValue, now: float,
               channel: str | None = None) -> None:
        _, payload = self._encode(MessageType.EVENT, now, channel=channel,
                                           event=event, data=data)
        self._deliver((conn.id,), payload)

    def _error(self, conn: Connection, code: int, text: str, now: float,
               channel: str | None = None, **extra: JsonValue) -> None:
        self._errors[code] += 1
        _, payload = self._encode(MessageType.ERROR, now, channel=channel,
                                           data={"code": int(code), "message": text, **extra})
        self._deliver((conn.id,), payload)

    def _rate_limited(self, conn: Connection, wait: float, now: float,
                      channel: str | None = None) -> None:
        self._error(conn, ErrorCode.RATE_LIMITED, "rate limited", now, channel,
                    retry_after=round(wait, 3))

    def _announce(self, changes: list[tuple[str, Member]], event: str, now: float,
                  exclude: ConnectionId | None = None) -> None:
        for channel, member in changes:
            if channel in self._subscribers:
                _, payload = self._encode(MessageType.EVENT, now, channel=channel,
                                                   event=event, data=member.to_dict())
                self._deliver(self._subscribers[channel], payload, exclude=exclude)


#: how a user topic carries `terminate_user` to the other nodes: never a message's start
_TERMINATE = b'{"terminate":'


def _terminate_close(payload: bytes) -> tuple[int, str]:
    """The close code and reason of a `terminate_user` from another node (4009 when they
    cannot be read)."""
    try:
        close = decode_json(payload)["terminate"]
        return int(close["code"]), str(close["reason"])
    except (MessageError, KeyError, TypeError, ValueError):
        return 4009, "terminated"
def _close_frame(code: int, reason: str) -> None:
    """Check that a close code and reason fit a WebSocket close frame.

    Raises:
        MessageError: 4005, naming what is wrong.
    """
    if not isinstance(code, int) or not (code == 1000 or 3000 <= code <= 4999):
        raise MessageError(ErrorCode.INVALID_FIELD, "'code' must be 1000 or 3000-4999")
    if not isinstance(reason, str) or len(reason.encode()) > MAX_REASON_BYTES:
        raise MessageError(ErrorCode.INVALID_FIELD,
                           f"'reason' must be a string of at most {MAX_REASON_BYTES} bytes")


def _offset_order(item: tuple[int | None, bytes, str | None]) -> float:
    """Buffered live messages by offset (those without one last)."""
    return item[0] if item[0] is not None else float("inf")


def _channel_hint(raw: str | bytes) -> str | None:
    """The `channel` of a message that failed validation, so the error can name it."""
    try:
        value = decode_json(raw)
    except MessageError:
        return None
    channel = value.get("channel") if isinstance(value, dict) else None
    return channel if isinstance(channel, str) else None
