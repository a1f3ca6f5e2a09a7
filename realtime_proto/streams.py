"""Where a node keeps its channels' history: in its own memory, or shared in a store.

With a shared store (Redis streams, a PostgreSQL table, JetStream: the adapter's business),
every node sees the same offsets, so a client recovers on whichever node it reconnects
to. The store answers asynchronously, so this module keeps what waits for an answer:
publishes waiting for their offset (released in publish order), and subscriptions waiting
for their slice of history (with the live messages that arrive meanwhile).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .actions import HistoryAppend, HistoryRead
from .connection import SubscribeOptions
from .events import ConnectionId, HistoryAppended, HistoryLoaded
from .history import ChannelStream, HistoryRule, StreamSlice, find_rule

__all__ = ["Append", "Gap", "Loading", "Streams"]

#: how many channels' rule lookups are remembered before the memo starts over
_RULE_MEMO = 4096

Position = tuple[str, int]
#: a channel message ready for this node's subscribers: unstamped payload, position, exclude
Ready = tuple[bytes, Position, ConnectionId | None]


class Gap(NamedTuple):
    """Offsets of a channel's stream that never reached this node (given up on)."""

    epoch: str
    first: int
    last: int


@dataclass(slots=True)
class Append:
    """A publish waiting for its position in the shared stream."""

    channel: str
    payload: bytes
    exclude: ConnectionId | None
    #: when it is given up on if the store has not answered
    deadline: float
    answer: HistoryAppended | None = None

    @property
    def position(self) -> Position | None:
        """The (epoch, offset) the store gave, or None if it failed."""
        answer = self.answer
        if answer is None or answer.epoch is None or answer.offset is None:
            return None
        return answer.epoch, answer.offset


@dataclass(slots=True)
class _Sequence:
    """Live order of one shared channel on this node: the offset expected next, and the
    messages that came early (another node's publish overtook one still on its way)."""

    epoch: str
    next: int
    held: dict[int, tuple[bytes, ConnectionId | None]] = field(default_factory=dict)
    #: when the held messages go out even if the gap before them never fills
    deadline: float = 0.0
    #: started by a live message while a read was on its way: everything is held until
    #: the read says where the stream stood (an earlier offset may still be coming)
    provisional: bool = False


@dataclass(slots=True)
class Loading:
    """A new subscription of a shared channel: waiting for the store's answer, then, until
    live messages pass it, ignoring those the answer already gave."""

    info: Any
    request: SubscribeOptions
    #: live messages that arrived meanwhile: (offset, stamped payload, SSE event id)
    buffered: list[tuple[int | None, bytes, str | None]] = field(default_factory=list)
    #: once answered: the stream's latest offset when it was read
    floor: int | None = None
    #: a subscription that exists already and asks for a replay
    joined: bool = False


class Streams:
    """The history of every channel of one node, local or shared."""

    def __init__(self, rules: tuple[HistoryRule, ...], *, shared: bool,
                 new_id: Callable[[], str], timeout: float = 2.0,
                 max_pending: int = 10_000) -> None:
        self.shared = shared
        self._timeout = timeout
        self._max_pending = max_pending
        self._rules = rules
        self._new_id = new_id
        self._memo: dict[str, HistoryRule | None] = {}
        self._local: dict[str, ChannelStream] = {}
        self._appends: dict[str, Append] = {}  # by request id, in publish order
        #: channel -> subscriptions waiting for their slice of history
        self.loading: dict[str, dict[ConnectionId, Loading]] = {}
        #: read request id -> the subscription it is for, and when it is given up on
        self._reads: dict[str, tuple[str, ConnectionId, float]] = {}
        self._sequences: dict[str, _Sequence] = {}
        #: channels with a publish the store could not place: the next append starts a new
        #: epoch, so that no recovery spans the message that is not in the stream
        self._broken: set[str] = set()

    def rule(self, channel: str) -> HistoryRule | None:
        """The channel's history rule, if it keeps history."""
        if not self._rules:
            return None
        try:
            return self._memo[channel]
        except KeyError:
            if len(self._memo) >= _RULE_MEMO:
                self._memo.clear()
            rule = self._memo[channel] = find_rule(self._rules, channel)
            return rule

    # -- this node's memory --------------------------------------------------------------

    def keep(self, channel: str, rule: HistoryRule, payload: bytes, now: float) -> Position:
        """Append to this node's stream of the channel; the message's position."""
        stream = self._stream(channel, rule)
        return stream.epoch, stream.append(payload, now)

    def skip(self, channel: str, rule: HistoryRule, count: int) -> Gap:
        """Messages of the channel that never reached this node: a hole in its stream."""
        stream = self._stream(channel, rule)
        return Gap(stream.epoch, *stream.skip(count))

    def local_slice(self, channel: str, rule: HistoryRule, now: float) -> StreamSlice:
        """What this node's stream of the channel holds."""
        return self._stream(channel, rule).read(now)

    def _stream(self, channel: str, rule: HistoryRule) -> ChannelStream:
        stream = self._local.get(channel)
        if stream is None:
            stream = self._local[channel] = ChannelStream(rule, self._new_id)
        return stream

    # -- the shared store ----------------------------------------------------------------

    def append(self, channel: str, rule: HistoryRule, payload: bytes,
               exclude: ConnectionId | None, now: float) -> HistoryAppend:
        """Ask the store for the next position of a publish (see `full`)."""
        request_id = self._new_id()
        self._appends[request_id] = Append(channel, payload, exclude, now + self._timeout)
        return HistoryAppend(request_id=request_id, channel=channel, payload=payload,
                             size=rule.size, ttl=rule.ttl, new_epoch=channel in self._broken)

    def full(self) -> HistoryAppended | None:
        """When as many appends wait as may: a failure for the oldest, to be handled as
        the store's answer before the next append."""
        if len(self._appends) < self._max_pending:
            return None
        oldest = next(id_ for id_, a in self._appends.items() if a.answer is None)
        return HistoryAppended(request_id=oldest, error="too many appends waiting")

    def expired(self, now: float) -> list[HistoryAppended | HistoryLoaded]:
        """Failures for the appends and reads the store did not answer in time, in order
        (handled like the store's answers; a late real answer is then ignored)."""
        failed: list[HistoryAppended | HistoryLoaded] = []
        for request_id, append in self._appends.items():
            if append.deadline > now:
                break  # in publish order: the later ones are not due either
            if append.answer is None:
                failed.append(HistoryAppended(request_id=request_id, error="timed out"))
        failed.extend(HistoryLoaded(request_id=request_id, error="timed out")
                      for request_id, (_, _, deadline) in self._reads.items()
                      if deadline <= now)
        return failed

    def appended(self, answer: HistoryAppended) -> list[Append]:
        """Record an answer; the publishes now ready to go out, in publish order."""
        append = self._appends.get(answer.request_id)
        if append is None:
            return []
        append.answer = answer
        if append.position is None:
            self._broken.add(append.channel)
        else:
            self._broken.discard(append.channel)
        ready = []
        for request_id, first in list(self._appends.items()):
            if first.answer is None:
                break
            del self._appends[request_id]
            ready.append(first)
        return ready

    def order(self, channel: str, position: Position, payload: bytes,
              exclude: ConnectionId | None, now: float, wait: float) -> list[Ready | Gap]:
        """Put a shared channel's live messages in offset order: those ready now.

        A message ahead of a gap waits for it at most `wait` seconds (see `overdue`); one
        behind (it arrived after its gap was given up on) goes out at once.
        """
        epoch, offset = position
        sequence = self._sequences.get(channel)
        if sequence is None or sequence.epoch != epoch:
            reading = any(w.floor is None for w in self.loading.get(channel, {}).values())
            sequence = self._sequences[channel] = _Sequence(epoch, offset,
                                                            provisional=reading)
        if sequence.provisional:  # held until `settle`, whatever its offset
            sequence.next = min(sequence.next, offset)
        elif offset < sequence.next:
            return [(payload, position, exclude)]
        if not sequence.held:
            sequence.deadline = now + wait
        sequence.held[offset] = (payload, exclude)
        return [] if sequence.provisional else _release(sequence, give_up=False)

    def settle(self, channel: str) -> list[Ready | Gap]:
        """After a new subscription's history went out: the live messages held while its
        read was on its way, those behind the stream's position first, in order."""
        sequence = self._sequences.get(channel)
        if sequence is None or sequence.provisional:
            return []
        held = sequence.held
        ready: list[Ready | Gap] = []
        for offset in sorted(o for o in held if o < sequence.next):
            payload, exclude = held.pop(offset)
            ready.append((payload, (sequence.epoch, offset), exclude))
        return ready + _release(sequence, give_up=False)

    def ordered(self, channel: str, epoch: str) -> bool:
        """Whether a shared channel's live messages of `epoch` are put in offset order here
        (so a gap among them shows)."""
        sequence = self._sequences.get(channel)
        return sequence is not None and sequence.epoch == epoch

    def overdue(self, now: float) -> list[tuple[str, Ready | Gap]]:
        """Messages that waited their time for a gap that did not fill, in order, each gap
        given up on before them."""
        ready: list[tuple[str, Ready | Gap]] = []
        for channel, sequence in self._sequences.items():
            if sequence.held and sequence.deadline <= now and not sequence.provisional:
                ready.extend((channel, item) for item in _release(sequence, give_up=True))
        return ready

    def forget(self, channel: str) -> None:
        """This node no longer receives the channel."""
        self._sequences.pop(channel, None)

    def read(self, channel: str, rule: HistoryRule, connection_id: ConnectionId, info: Any,
             request: SubscribeOptions, now: float, *, joined: bool = False) -> HistoryRead:
        """Ask the store for what a new subscription (or a replay) needs; live messages
        wait meanwhile."""
        request_id = self._new_id()
        self.loading.setdefault(channel, {})[connection_id] = Loading(info, request,
                                                                     joined=joined)
        self._reads[request_id] = (channel, connection_id, now + self._timeout)
        since = request.recover[1] if request.recover is not None else None
        limit = rule.size if since is not None else min(request.history, rule.size)
        return HistoryRead(request_id=request_id, channel=channel, since=since, limit=limit,
                           ttl=rule.ttl)

    def loaded(self, answer: HistoryLoaded) -> tuple[str, ConnectionId, Loading] | None:
        """The subscription a read was for, if it still waits; from now on it skips the
        live messages at or below the offset the store answered with."""
        found = self._reads.pop(answer.request_id, None)
        if found is None:
            return None
        channel, connection_id, _ = found
        loading = self.loading[channel][connection_id]
        sequence = self._sequences.get(channel)
        if answer.error is None and answer.epoch is not None:
            loading.floor = answer.offset
            if sequence is None:
                self._sequences[channel] = _Sequence(answer.epoch, answer.offset + 1)
            elif sequence.provisional and sequence.epoch == answer.epoch:
                sequence.provisional = False  # the stream stood here: expect what follows
                sequence.next = answer.offset + 1
        else:
            self._done(channel, connection_id)
        if sequence is not None and sequence.provisional:  # no position: from what came
            sequence.provisional = False
        return channel, connection_id, loading

    def divert(self, channel: str, offset: int | None, payload: bytes, event_id: str | None,
               exclude: ConnectionId | None) -> set[ConnectionId]:
        """A live message of a channel with new subscriptions: keep it for those still
        waiting; the subscribers that must not get it now."""
        skip = set()
        for connection_id, loading in list(self.loading[channel].items()):
            if loading.floor is None:
                if connection_id != exclude:
                    loading.buffered.append((offset, payload, event_id))
                skip.add(connection_id)
            elif offset is not None and offset <= loading.floor:
                skip.add(connection_id)
            else:
                self._done(channel, connection_id)
        return skip

    def _done(self, channel: str, connection_id: ConnectionId) -> None:
        waiting = self.loading[channel]
        del waiting[connection_id]
        if not waiting:
            del self.loading[channel]

    def cancel(self, channel: str, connection_id: ConnectionId) -> None:
        """Forget a subscription that ended before its history arrived."""
        if connection_id in self.loading.get(channel, ()):
            self._done(channel, connection_id)
            self._reads = {k: v for k, v in self._reads.items()
                           if v[:2] != (channel, connection_id)}


def _release(sequence: _Sequence, *, give_up: bool) -> list[Ready | Gap]:
    """Take the held messages that are next in line; with `give_up`, skip the gaps (and
    say so)."""
    ready: list[Ready | Gap] = []
    held = sequence.held
    while held:
        if sequence.next not in held:
            if not give_up:
                break
            resume = min(held)
            ready.append(Gap(sequence.epoch, sequence.next, resume - 1))
            sequence.next = resume
        payload, exclude = held.pop(sequence.next)
        ready.append((payload, (sequence.epoch, sequence.next), exclude))
        sequence.next += 1
    return ready
