"""What one node knows of the others: sequences, liveness, and presence over the broker.

Each node owns its own presence entries and announces them on the `_cluster` topic:
deltas as they happen (`join`, `leave`), a heartbeat every interval, and its full state
when asked (`sync?` → `state`). A node that has not been heard for `presence_ttl`
seconds is dropped with its entries. A gap in a node's control sequence, a node heard
for the first time, or a broker reconnect makes the others ask for a full state again,
so presence converges whatever the broker lost.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .actions import BrokerPublish, Deliver, Disconnect, HubAction
from .config import HubConfig
from .envelope import Envelope, EnvelopeKind, SequenceWindow, bundle, encode_envelope
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
        self._origin = json.dumps(self.node_id).encode()  # as every envelope's header has it

    # -- publishing ----------------------------------------------------------------------

    def envelope(self, topic: str, kind: EnvelopeKind, payload: bytes,
                 exclude: str | None = None,
                 position: tuple[str, int] | None = None) -> BrokerPublish:
        """The broker action for a payload, with this node's next sequence on the topic."""
        sequence = self._sequences.get(topic, 0) + 1
        self._sequences[topic] = sequence
        return BrokerPublish(topic, encode_envelope(self._origin, sequence, kind, payload,
                                                    exclude, self._clock_ms(), position))

    def bundle(self, actions: list[HubAction]) -> list[HubAction]:
        """Publishes to one topic that follow each other (this node's own deliveries
        between them aside) as one broker message, up to `broker_bundle_bytes`: a burst
        pays the broker's cost per message once. The order of publishes is kept."""
        if not self._bundle_bytes:
            return actions
        out: list[HubAction] = []
        run: list[BrokerPublish] = []  # the open bundle: publishes to run[0].topic
        run_at = size = 0  # where the bundle goes in `out`; its bytes so far
        for action in actions:
            if isinstance(action, BrokerPublish):
                if run and action.topic == run[0].topic \
                        and size + len(action.data) <= self._bundle_bytes:
                    run.append(action)
                    size += len(action.data) + 6  # and its length in the header
                    continue
                self._close_bundle(run, out, run_at)
                run, run_at, size = [action], len(out), len(action.data)
                out.append(action)  # the bundle replaces it if others join
            elif isinstance(action, Deliver | Disconnect):
                out.append(action)
            else:
                self._close_bundle(run, out, run_at)
                run = []
                out.append(action)
        self._close_bundle(run, out, run_at)
        return out

    def _close_bundle(self, run: list[BrokerPublish], out: list[HubAction], at: int) -> None:
        if len(run) > 1:
            out[at] = BrokerPublish(run[0].topic, bundle(self.node_id, [p.data for p in run]))

    def _control(self, **fields: Any) -> BrokerPublish:
        payload = json.dumps(fields, separators=(",", ":")).encode()
        return self.envelope(CLUSTER_TOPIC, EnvelopeKind.CONTROL, payload)

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

    def receive(self, topic: str, envelope: Envelope, now: float) -> tuple[bool, list[
            BrokerPublish]]:
        """Whether to process an envelope from the broker, and any sync requests it needs."""
        origin = envelope.origin
        if origin == self.node_id:
            return False, []  # our own, echoed by the broker
        actions = []
        is_new = origin not in self.heard
        self.heard[origin] = now
        accepted, gap = self.window.accept(origin, topic, envelope.sequence)
        if topic == CLUSTER_TOPIC and (gap or is_new):
            actions.append(self._control(t="sync?", to=origin))
        return accepted, actions

    def control(self, envelope: Envelope) -> tuple[Changes, Changes, list[BrokerPublish]]:
        """Apply a control envelope; (joined, left, replies)."""
        try:
            body = json.loads(envelope.payload)
            kind = body["t"]
        except (ValueError, TypeError, KeyError):
            return [], [], []
        origin = envelope.origin
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
