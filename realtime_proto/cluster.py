"""What one node knows of the others: sequences, liveness, and presence over the broker.

Each node owns its own presence entries and announces them on the `_cluster` topic:
deltas as they happen (`join`, `leave`), a heartbeat every interval, and its full state
when asked (`sync?` → `state`). A node that has not been heard for `presence_ttl`
seconds is dropped with its entries. A gap in a node's control sequence, a node heard
for the first time, or a broker reconnect makes the others ask for a full state again,
so presence converges whatever the broker lost.

Envelopes name the run of their origin too (its incarnation: when it started), so a node
restarted with the same id is a new sender at once: its sequences start over for the
others and the entries of its previous run are dropped without waiting for the TTL. What
a node has seen from the others survives its own broker outages: a gap across one is
counted and reported (`Heard.gap`), and the full state a node sends on request carries
its latest sequence per channel and user topic, so a loss at the end of a stream, with
nothing after it, shows too (`control`'s catch-ups).

The same topic carries the application's commands (`cmd`: disconnect, send, unsubscribe)
to the node that holds a connection, found by the route key every control message names
(`rt`) and every connection id starts with; and, with presence webhooks, what the
reporter reported (`rep`) and which nodes have subscribers of each plain channel
(`occ`), for `realtime_proto.reporter`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from .actions import BrokerPublish, BrokerSubscribe, BrokerUnsubscribe, HubAction
from .bundling import bundle
from .config import HubConfig
from .counts import SubscriptionCounts
from .envelope import EnvelopeKind, Outgoing, Received, SequenceWindow, encode
from .errors import MessageError
from .jsoncodec import dumps, quote
from .message import decode_json
from .occupancy import Occupancy
from .presence import Entry, Member, PresenceTable
from .reporter import Reporter, Transition

__all__ = ["CLUSTER_TOPIC", "Applied", "ClusterState", "Heard", "channel_topic",
           "connection_route", "user_topic"]

#: the topic every node subscribes to for presence and liveness
CLUSTER_TOPIC = "_cluster"

Changes = list[tuple[str, Member]]


class Heard(NamedTuple):
    """What one broker message means to this node (`ClusterState.receive`)."""

    #: how many of its first envelopes to skip (our own echo, seen already, a past run's)
    skip: int
    #: how many envelopes of its origin on its topic were missed before it
    gap: int
    #: sync requests it calls for
    actions: list[BrokerPublish]
    #: presence entries of a previous run of its origin, dropped now
    left: Changes


class Applied(NamedTuple):
    """What a control envelope of another node changes here (`ClusterState.control`)."""

    joined: Changes
    left: Changes
    #: the full state it asks for
    replies: list[BrokerPublish]
    #: (topic, count): messages of its origin that never arrived here
    caught_up: list[tuple[str, int]]
    #: commands from the application for this node's connections (`ClusterState.command`)
    commands: list[dict[str, Any]]


def connection_route(connection_id: str) -> str | None:
    """The route key of the node that made a connection id (`<route>.<random>`), None if
    it is not of that form."""
    route, dot, rest = connection_id.partition(".")
    return route if dot and route and rest else None


def channel_topic(channel: str) -> str:
    """The broker topic that carries a channel's messages."""
    return "c:" + channel


def user_topic(user_id: str) -> str:
    """The broker topic that carries messages for one user's connections."""
    return "u:" + user_id


#: `Outgoing(...)` without the keyword handling of a named tuple's `__new__` (once per
#: publish)
_outgoing = tuple.__new__


class ClusterState:
    """Sequences, liveness and the cluster-wide presence table of one node."""

    def __init__(self, config: HubConfig, now: float, clock_ms: Callable[[], int],
                 incarnation: int, route: str) -> None:
        self.node_id = config.node_id
        self.incarnation = incarnation
        #: this node's route key (the prefix of its connection ids), in every control
        #: message it sends, so that the others know where its connections live
        self.route = route
        #: other nodes' route keys -> node id, and back
        self.routes: dict[str, str] = {}
        self._route_of: dict[str, str] = {}
        self.presence = PresenceTable()
        self.window = SequenceWindow(self._baseline)
        #: our channel and user topics -> when we subscribed
        self._subscribed_at: dict[str, float] = {}
        #: other nodes -> when their last full state came, and their sequences in it
        self._states: dict[str, tuple[float, dict[str, Any]]] = {}
        #: other nodes -> when they were last heard (monotonic seconds)
        self.heard: dict[str, float] = {}
        #: other nodes -> the run of theirs heard last
        self.incarnations: dict[str, int] = {}
        #: envelopes of a previous run of their origin, dropped
        self.stale = 0
        self.broker_connected = True
        self._heartbeat_interval = config.presence_heartbeat_interval
        self._ttl = config.presence_ttl
        self._next_heartbeat_at = now + self._heartbeat_interval
        self._sequences: dict[str, int] = {}
        self._clock_ms = clock_ms
        self._bundle_bytes = config.broker_bundle_bytes
        self._origin = quote(self.node_id)  # as every envelope's header has it
        #: what the cluster reported to the webhooks (None: no presence webhooks)
        self.reporter = Reporter(config.webhook_settle) if config.presence_webhooks else None
        #: with the reporter: the nodes with subscribers of each channel that is not a
        #: presence channel (those are in the presence table)
        self.occupied = Occupancy(self.presence)
        if self.reporter is not None:
            self.presence.changed = set()
        #: subscribers per channel over the cluster (None: not shared)
        self.counts = SubscriptionCounts() if config.share_subscription_counts else None

    # -- publishing ----------------------------------------------------------------------

    def envelope(self, topic: str, kind: EnvelopeKind, payload: bytes,
                 exclude: str | None = None,
                 position: tuple[str, int] | None = None) -> Outgoing:
        """A payload to publish, with this node's next sequence on the topic (`bundle`
        encodes it)."""
        sequence = self._sequences.get(topic, 0) + 1
        self._sequences[topic] = sequence
        return _outgoing(Outgoing, (topic, sequence, kind, payload, exclude, self._clock_ms(),
                                    position))

    def bundle(self, actions: list[HubAction | Outgoing]) -> list[HubAction]:
        """The broker messages for the envelopes among `actions` (`bundling.bundle`)."""
        return bundle(actions, self._origin, self.incarnation, self._bundle_bytes)

    def _control(self, **fields: Any) -> BrokerPublish:
        payload = dumps({**fields, "rt": self.route})
        return BrokerPublish(CLUSTER_TOPIC, encode(self._origin, self.incarnation, [
            self.envelope(CLUSTER_TOPIC, EnvelopeKind.CONTROL, payload)]))

    def command(self, to: str | None, **fields: Any) -> BrokerPublish:
        """An application command for the connections of node `to` (None: every node)."""
        return self._control(t="cmd", to=to, **fields)

    def owner(self, connection_id: str) -> str | None:
        """The other node, alive as far as this one knows, that made a connection id."""
        route = connection_route(connection_id)
        node = self.routes.get(route) if route is not None else None
        return node if node is not None and node in self.heard else None

    def hello(self) -> list[BrokerPublish]:
        """Ask every node for its state (at start)."""
        return [self._control(t="sync?")]

    def restored(self) -> list[BrokerPublish]:
        """After a broker outage: announce our state, ask for theirs (their answers show
        what we missed meanwhile; the sequences seen before the outage are kept for that)."""
        return [self._state(), self._control(t="sync?")]

    def _state(self) -> BrokerPublish:
        """Our presence entries, and our latest sequence on each channel and user topic."""
        entries = [[e.channel, e.connection_id, e.member.user_id, dict(e.member.info)]
                   for e in self.presence.entries_of(self.node_id)]
        latest = {topic: sequence for topic, sequence in self._sequences.items()
                  if topic != CLUSTER_TOPIC}
        extra: dict[str, Any] = {}
        if self.counts is not None:
            extra["sc"] = self.counts.local
        if self.reporter is not None:
            extra.update(rv=self.reporter.version, rb=sorted(self.reporter.reported),
                         o=self.occupied.of(self.node_id))
        return self._control(t="state", e=entries, q=latest, **extra)

    def occupy(self, channel: str, subscribed: bool) -> list[BrokerPublish]:
        """With the reporter: this node got its first subscriber of a channel that is not
        a presence channel, or lost its last; the announcement."""
        if self.reporter is None:
            return []
        self.occupied.set(channel, self.node_id, subscribed)
        return [self._control(t="occ", c=channel, s=subscribed)]

    # -- our subscriptions ---------------------------------------------------------------

    def subscribe(self, topic: str, now: float) -> BrokerSubscribe:
        """We start receiving a channel or user topic."""
        self._subscribed_at[topic] = now
        return BrokerSubscribe(topic)

    def unsubscribe(self, topic: str) -> BrokerUnsubscribe:
        """We stop receiving a topic: what we knew of its sequences goes with it."""
        self._subscribed_at.pop(topic, None)
        self.window.forget_topic(topic)
        return BrokerUnsubscribe(topic)

    def _baseline(self, origin: str, topic: str) -> int | None:
        """The sequence of `origin` on `topic` that its first envelope to reach us should
        follow: the one its last full state gave, if we were subscribed by then (what it
        published after that is ours to receive); else unknown."""
        state = self._states.get(origin)
        since = self._subscribed_at.get(topic)
        if state is None or since is None or state[0] <= since:
            return None
        sequence = state[1].get(topic, 0)
        return sequence if type(sequence) is int else None

    # -- our own presence ----------------------------------------------------------------

    def join(self, channel: str, connection_id: str, member: Member) -> tuple[bool, list[
            BrokerPublish]]:
        """Add a local entry; whether the user is new, and the announcement."""
        first = self.presence.add(Entry(channel=channel, node_id=self.node_id,
                                        connection_id=connection_id, member=member))
        return first, [self._control(t="join", c=channel, n=connection_id, u=member.user_id,
                                     i=dict(member.info))]

    def leave(self, channel: str, connection_id: str) -> tuple[Member | None, list[
            BrokerPublish]]:
        """Remove a local entry; the member if the user left, and the announcement."""
        member = self.presence.remove(channel, self.node_id, connection_id)
        return member, [self._control(t="leave", c=channel, n=connection_id)]

    # -- receiving -----------------------------------------------------------------------

    def receive(self, topic: str, received: Received, now: float) -> Heard:
        """What a broker message means: how many of its first envelopes to skip, how many
        before it were missed, the sync requests it needs, and, when it comes from a new
        run of its origin, the presence entries of the previous run."""
        origin = received.origin
        count = len(received.payloads)
        if origin == self.node_id:
            return Heard(count, 0, [], [])  # our own, echoed by the broker
        run, known = received.incarnation, self.incarnations.get(origin)
        left: Changes = []
        if known is not None and run < known:
            self.stale += count  # sent by a previous run, overtaken by the current one
            return Heard(count, 0, [], [])
        if known is not None and run > known:  # restarted: a new sender with the same id
            self.window.forget_origin(origin)
            self._states.pop(origin, None)
            left = self.presence.remove_node(origin)
            self.occupied.forget_node(origin)
            if self.counts is not None:
                self.counts.forget(origin)
        self.incarnations[origin] = run
        actions = []
        is_new = origin not in self.heard or run != known
        self.heard[origin] = now
        skip, gap = self.window.accept(origin, topic, received.sequence, count)
        if topic == CLUSTER_TOPIC and (gap or is_new):
            actions.append(self._control(t="sync?", to=origin))
        return Heard(skip, gap, actions, left)

    def control(self, origin: str, payload: bytes, now: float,
                subscribed: Callable[[str], bool]) -> Applied:
        """Apply a control envelope of another node.

        The catch-ups are (topic, count) for the topics this node is `subscribed` to on
        which a full state of the origin shows messages that never arrived; the commands
        are those addressed to this node or to every node, for the Hub to carry out.
        """
        joined: Changes = []
        left: Changes = []
        replies: list[BrokerPublish] = []
        caught_up: list[tuple[str, int]] = []
        commands: list[dict[str, Any]] = []
        try:
            body = decode_json(payload)  # no lone surrogate: what it names can be encoded
            kind = body["t"]
        except (MessageError, TypeError, KeyError):
            return Applied(joined, left, replies, caught_up, commands)
        route = body.get("rt")
        if isinstance(route, str) and self._route_of.get(origin) != route:
            self.routes.pop(self._route_of.get(origin, ""), None)  # its previous run's
            self.routes[route], self._route_of[origin] = origin, route
        try:
            if kind == "join":
                member = Member(user_id=str(body["u"]), info=dict(body.get("i") or {}))
                entry = Entry(channel=str(body["c"]), node_id=origin,
                              connection_id=str(body["n"]), member=member)
                if self.presence.add(entry):
                    joined.append((entry.channel, member))
            elif kind == "leave":
                gone = self.presence.remove(str(body["c"]), origin, str(body["n"]))
                if gone is not None:
                    left.append((str(body["c"]), gone))
            elif kind == "state":
                entries = [Entry(channel=str(c), node_id=origin, connection_id=str(n),
                                 member=Member(user_id=str(u), info=dict(i or {})))
                           for c, n, u, i in body["e"]]
                joined, left = self.presence.replace_node(origin, entries)
                if self.reporter is not None and "o" in body:
                    self.occupied.replace_node(origin, (str(c) for c in body["o"]))
                if self.counts is not None and isinstance(body.get("sc"), dict):
                    self.counts.replace(origin, body["sc"])
                if self.reporter is not None and "rv" in body:
                    self.reporter.adopt([(str(c), str(u)) for c, u in body["rb"]],
                                        int(body["rv"]))
                latest = body.get("q") or {}
                if isinstance(latest, dict):
                    caught_up = self._catch_up(origin, latest, subscribed)
                    self._states[origin] = (now, latest)
            elif kind == "sync?" and body.get("to") in (None, self.node_id):
                replies.append(self._state())
            elif kind == "cnt" and self.counts is not None and isinstance(body["s"], dict):
                self.counts.update(origin, body["s"])
            elif kind == "occ" and self.reporter is not None:
                self.occupied.set(str(body["c"]), origin, bool(body["s"]))
            elif kind == "rep" and self.reporter is not None:
                self.reporter.apply([((str(c), str(u)), bool(p)) for c, u, p in body["k"]],
                                    int(body["v"]))
            elif kind == "cmd" and body.get("to") in (None, self.node_id):
                commands.append(body)
        except (ValueError, TypeError, KeyError, AttributeError):
            pass  # a malformed control message from another node changes nothing
        return Applied(joined, left, replies, caught_up, commands)

    def _catch_up(self, origin: str, latest: dict[str, Any],
                  subscribed: Callable[[str], bool]) -> list[tuple[str, int]]:
        """Compare another node's latest sequences with what arrived from it."""
        found = []
        for topic, sequence in latest.items():
            if type(sequence) is int and subscribed(topic):
                missed = self.window.catch_up(origin, topic, sequence)
                if missed:
                    found.append((topic, missed))
        return found

    def report(self, now: float) -> tuple[list[Transition], list[BrokerPublish]]:
        """The presence transitions this node reports now (when it is the reporter: the
        smallest id among the live nodes, itself only while its broker is connected),
        and their announcement to the others (`realtime_proto.reporter`)."""
        reporter, table = self.reporter, self.presence
        if reporter is None or table.changed is None:
            return [], []
        changed, table.changed = table.changed, set()
        alive = min(self.heard, default=None)
        reporting = self.broker_connected and (alive is None or self.node_id < alive)
        occupied = self.occupied

        def present(key: tuple[str, str]) -> bool:
            return table.present(key) or (not key[1] and key[0] in occupied)

        def everything() -> set[tuple[str, str]]:
            return table.keys() | {(channel, "") for channel in occupied}
        transitions = reporter.evaluate(changed, present, everything, now, reporting)
        if not transitions:
            return [], []
        announced = self._control(t="rep", v=reporter.version,
                                  k=[[c, u, p] for (c, u), p in transitions])
        return transitions, [announced]

    def sweep(self, now: float) -> tuple[list[BrokerPublish], Changes]:
        """Heartbeat when due, the subscription counts changed since the last sweep, and
        drop nodes silent for longer than the TTL."""
        actions = []
        if self.counts is not None and self.counts.changed:
            actions.append(self._control(t="cnt", s=self.counts.announcement()))
        if now >= self._next_heartbeat_at:
            self._next_heartbeat_at = now + self._heartbeat_interval
            actions.append(self._control(t="hb"))
        left: Changes = []
        for node, last in list(self.heard.items()):
            if now - last > self._ttl:
                del self.heard[node]
                self.routes.pop(self._route_of.pop(node, ""), None)
                self.incarnations.pop(node, None)
                self._states.pop(node, None)
                self.window.forget_origin(node)
                left.extend(self.presence.remove_node(node))
                self.occupied.forget_node(node)
                if self.counts is not None:
                    self.counts.forget(node)
        return actions, left
