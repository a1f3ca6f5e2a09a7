"""What one node knows of the others: sequences, liveness, and presence over the broker.

Each node owns its own presence entries and announces them on the `_cluster` topic:
deltas as they happen (`join`, `leave`), a heartbeat every interval, and its full state
when asked (`sync?` → `state`). A node that has not been heard for `presence_ttl`
seconds is dropped with its entries. A gap in a node's control sequence, a node heard
for the first time, or a broker reconnect makes the others ask for a full state again,
so presence converges whatever the broker lost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .actions import BrokerPublish, Deliver, Disconnect, HubAction
from .config import HubConfig
from .envelope import EnvelopeKind, Outgoing, Received, SequenceWindow, encode
from .errors import MessageError
from .jsoncodec import dumps, quote
from .message import decode_json
from .presence import Entry, Member, PresenceTable

__all__ = ["CLUSTER_TOPIC", "ClusterState", "channel_topic", "user_topic"]

#: the topic every node subscribes to for presence and liveness
CLUSTER_TOPIC = "_cluster"

Changes = list[tuple[str, Member]]


def channel_topic(channel: str) -> str:
    """The broker topic that carries a channel's messages."""
    return "c:" + channel


def user_topic(user_id: str) -> str:
    """The broker topic that carries messages for one user's connections."""
    return "u:" + user_id


#: `Outgoing(...)` without the keyword handling of a named tuple's `__new__` (once per
#: publish)
_outgoing = tuple.__new__

#: a bundle's header, but for what each envelope adds to it (as `bundle` counts)
_HEADER_BYTES = 100


def _extra_bytes(envelope: Outgoing) -> int:
    """What an envelope's exclude and position add to a bundle's header."""
    extra = 0
    if envelope.exclude is not None:
        extra += len(envelope.exclude) + 3
    if envelope.position is not None:
        extra += len(envelope.position[0]) + 24
    return extra


class ClusterState:
    """Sequences, liveness and the cluster-wide presence table of one node."""

    def __init__(self, config: HubConfig, now: float, clock_ms: Callable[[], int]) -> None:
        self.node_id = config.node_id
        self.presence = PresenceTable()
        self.window = SequenceWindow()
        #: other nodes -> when they were last heard (monotonic seconds)
        self.heard: dict[str, float] = {}
        self.broker_connected = True
        self._heartbeat_interval = config.presence_heartbeat_interval
        self._ttl = config.presence_ttl
        self._next_heartbeat_at = now + self._heartbeat_interval
        self._sequences: dict[str, int] = {}
        self._clock_ms = clock_ms
        self._bundle_bytes = config.broker_bundle_bytes
        self._origin = quote(self.node_id)  # as every envelope's header has it

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
        """The broker messages for the envelopes among `actions`: those that follow each
        other on one topic (this node's own deliveries between them aside) as one bundle,
        up to `broker_bundle_bytes`, so a burst pays the broker's cost per message once.
        The order of publishes is kept."""
        out: list[HubAction] = []
        run: list[Outgoing] = []  # the open bundle
        topic, follows = None, 0  # its topic, the sequence that may join it
        run_at = size = 0  # where it goes in `out`; its bytes so far
        limit = self._bundle_bytes
        for action in actions:
            if type(action) is Outgoing:
                length = len(action.payload) + 6  # and its length in the header
                if action.exclude is not None or action.position is not None:
                    length += _extra_bytes(action)
                if action.topic == topic and action.sequence == follows \
                        and size + length <= limit:
                    run.append(action)
                    size += length
                    follows += 1
                    continue
                self._close_bundle(run, out, run_at)
                run, run_at, size = [action], len(out), length + _HEADER_BYTES
                topic, follows = action.topic, action.sequence + 1
                out.append(action)  # type: ignore[arg-type]  # replaced at the close
            elif type(action) is Deliver or type(action) is Disconnect:
                out.append(action)
            else:
                self._close_bundle(run, out, run_at)
                run, topic = [], None
                out.append(action)  # type: ignore[arg-type]
        self._close_bundle(run, out, run_at)
        return out

    def _close_bundle(self, run: list[Outgoing], out: list[HubAction], at: int) -> None:
        if run:
            out[at] = BrokerPublish(run[0].topic, encode(self._origin, run))

    def _control(self, **fields: Any) -> BrokerPublish:
        payload = dumps(fields)
        return BrokerPublish(CLUSTER_TOPIC, encode(self._origin, [
            self.envelope(CLUSTER_TOPIC, EnvelopeKind.CONTROL, payload)]))

    def hello(self) -> list[BrokerPublish]:
        """Ask every node for its state (at start)."""
        return [self._control(t="sync?")]

    def restored(self) -> list[BrokerPublish]:
        """After a broker outage: forget sequences, announce our state, ask for theirs."""
        self.window.forget_all()
        return [self._state(), self._control(t="sync?")]

    def _state(self) -> BrokerPublish:
        entries = [[e.channel, e.connection_id, e.member.user_id, dict(e.member.info)]
                   for e in self.presence.entries_of(self.node_id)]
        return self._control(t="state", e=entries)

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

    def receive(self, topic: str, received: Received, now: float) -> tuple[int, list[
            BrokerPublish]]:
        """How many of the first envelopes of a broker message to skip (our own echo, or
        seen already), and any sync requests it needs."""
        origin = received.origin
        count = len(received.payloads)
        if origin == self.node_id:
            return count, []  # our own, echoed by the broker
        actions = []
        is_new = origin not in self.heard
        self.heard[origin] = now
        skip, gap = self.window.accept(origin, topic, received.sequence, count)
        if topic == CLUSTER_TOPIC and (gap or is_new):
            actions.append(self._control(t="sync?", to=origin))
        return skip, actions

    def control(self, origin: str, payload: bytes) -> tuple[Changes, Changes,
                                                             list[BrokerPublish]]:
        """Apply a control envelope of another node; (joined, left, replies)."""
        try:
            body = decode_json(payload)  # no lone surrogate: what it names can be encoded
            kind = body["t"]
        except (MessageError, TypeError, KeyError):
            return [], [], []
        joined: Changes = []
        left: Changes = []
        replies: list[BrokerPublish] = []
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
            elif kind == "sync?" and body.get("to") in (None, self.node_id):
                replies.append(self._state())
        except (ValueError, TypeError, KeyError):
            pass  # a malformed control message from another node changes nothing
        return joined, left, replies

    def sweep(self, now: float) -> tuple[list[BrokerPublish], Changes]:
        """Heartbeat when due, and drop nodes silent for longer than the TTL."""
        actions = []
        if now >= self._next_heartbeat_at:
            self._next_heartbeat_at = now + self._heartbeat_interval
            actions.append(self._control(t="hb"))
        left: Changes = []
        for node, last in list(self.heard.items()):
            if now - last > self._ttl:
                del self.heard[node]
                self.window.forget_origin(node)
                left.extend(self.presence.remove_node(node))
        return actions, left
