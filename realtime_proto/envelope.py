"""Envelopes between nodes: origin, per-topic sequence, kind and the encoded payload, one
per broker message or several of one topic in a bundle."""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, final

from .errors import ErrorCode, MessageError
from .jsoncodec import dumps, quote

__all__ = ["EnvelopeKind", "Outgoing", "Received", "SequenceWindow", "decode", "encode"]


class EnvelopeKind(enum.StrEnum):
    """What an envelope carries."""

    #: a message for a channel's subscribers
    CHANNEL = "c"
    #: a message for a user's connections
    USER = "u"
    #: presence and cluster control (joins, leaves, heartbeats, full syncs)
    CONTROL = "p"


class Outgoing(NamedTuple):
    """One envelope this node publishes, before it is encoded (alone or in a bundle).

    The payload is the message exactly as it was encoded for clients, so a receiving
    node forwards it without re-encoding.
    """

    topic: str
    sequence: int
    kind: EnvelopeKind
    payload: bytes
    #: a connection that must not receive it (the sender of a client event)
    exclude: str | None = None
    #: Unix milliseconds at publish, for the delivery latency histogram
    sent_ms: int | None = None
    #: (epoch, offset) of a channel message in its shared stream; the payload is unstamped
    position: tuple[str, int] | None = None


@final
@dataclass(slots=True)
class Received:
    """What one broker message brought: envelopes of one origin and kind with the
    sequences `sequence`, `sequence + 1`, … (one, or a bundle)."""

    origin: str
    kind: EnvelopeKind
    sequence: int
    payloads: list[bytes]
    sent_ms: int | None = None
    #: which run of the origin node sent it (its start time, Unix ms); 0 if not said
    incarnation: int = 0
    #: per payload, when any has one
    excludes: list[str | None] | None = None
    positions: list[tuple[str, int] | None] | None = None


def encode(origin: bytes, incarnation: int, run: list[Outgoing]) -> bytes:
    """The broker message for one envelope, or a bundle of several: a one-line JSON header,
    a newline, then the payload(s). `origin` is a JSON string literal (`jsoncodec.quote`);
    `incarnation` tells the origin's runs apart (a restarted node's sequences start over);
    a bundle's envelopes share topic and kind and follow each other in sequence.

    Alone: `{"o":origin,"i":incarnation,"s":sequence,"k":kind[,"x":exclude][,"t":ms]
    [,"e":epoch,"n":offset]}`.
    Bundled: `{"b":origin,"i":incarnation,"k":kind,"s":first sequence[,"t":ms],"n":[lengths]
    [,"x":[exclude or null, …]][,"p":[[epoch,offset] or null, …]]}`.
    """
    first = run[0]
    kind = first.kind.value.encode()
    if len(run) == 1:
        header = b'{"o":%s,"i":%d,"s":%d,"k":"%s"' % (origin, incarnation, first.sequence,
                                                       kind)
        if first.exclude is not None:
            header += b',"x":' + quote(first.exclude)
        if first.sent_ms is not None:
            header += b',"t":%d' % first.sent_ms
        if first.position is not None:
            header += b',"e":%s,"n":%d' % (quote(first.position[0]), first.position[1])
        return header + b"}\n" + first.payload
    header = b'{"b":%s,"i":%d,"k":"%s","s":%d' % (origin, incarnation, kind, first.sequence)
    if first.sent_ms is not None:
        header += b',"t":%d' % first.sent_ms
    payloads = [e.payload for e in run]
    header += b',"n":[' + b",".join([b"%d" % len(p) for p in payloads]) + b"]"
    excludes = [e.exclude for e in run]
    if excludes.count(None) < len(run):
        header += b',"x":' + dumps(excludes)
    positions = [e.position for e in run]
    if positions.count(None) < len(run):
        header += b',"p":' + dumps(positions)
    return b"".join([header, b"}\n", *payloads])


def decode(data: bytes) -> Received:
    """The envelope(s) of one broker message.

    Raises:
        MessageError: the bytes are not an envelope or a well-formed bundle, or a payload
            is not a JSON object in UTF-8 (4000).
    """
    head, newline, body = data.partition(b"\n")
    try:
        header = _DECODER.decode(head.decode()) if newline else {}
        if "b" not in header:
            return Received(_text(header["o"]), _KINDS[header["k"]], _number(header["s"]),
                            [_payload(body)], _sent_ms(header.get("t")),
                            _number(header.get("i", 0)),
                            _excludes(header.get("x"), 1),
                            _positions([[header["e"], header["n"]]] if "e" in header
                                       else None, 1))
        lengths = header["n"]
        if not isinstance(lengths, list) or not lengths:
            raise TypeError
        body.decode()  # UTF-8 (a sequence cannot span payloads: each ends with "}")
        payloads, start = [], 0
        for length in lengths:
            if type(length) is not int or length <= 0:
                raise ValueError
            end = start + length
            if body[start] != _OPEN or body[end - 1] != _CLOSE:  # (an IndexError past it)
                raise ValueError
            payloads.append(body[start:end])
            start = end
        if start != len(body):
            raise ValueError
        count = len(payloads)
        return Received(_text(header["b"]), _KINDS[header["k"]], _number(header["s"]),
                        payloads, _sent_ms(header.get("t")), _number(header.get("i", 0)),
                        _excludes(header.get("x"), count), _positions(header.get("p"), count))
    except (ValueError, TypeError, LookupError, AttributeError, RecursionError):
        raise MessageError(ErrorCode.MALFORMED_MESSAGE, "not an envelope") from None


_DECODER = json.JSONDecoder()
_OPEN, _CLOSE = ord("{"), ord("}")
_KINDS = {kind.value: kind for kind in EnvelopeKind}


def _text(value: object) -> str:
    """An id (origin, exclude, epoch): printable, so no lone surrogate (which no encoder
    takes) and no line break (which an SSE `id:` line cannot hold)."""
    if not isinstance(value, str) or not value.isprintable():
        raise TypeError
    return value


def _payload(value: bytes) -> bytes:
    """A message as every node publishes it: a JSON object in UTF-8 (a client gets these
    very bytes, in a WebSocket text frame or an SSE event)."""
    if value[:1] != b"{" or value[-1:] != b"}":
        raise ValueError
    value.decode()
    return value


def _number(value: object) -> int:
    if type(value) is not int:
        raise TypeError
    return value


def _optional_list(value: object, count: int) -> list | None:  # type: ignore[type-arg]
    """A header's per-envelope list (or a lone envelope's value), checked for its length."""
    if value is None:
        return None
    if count == 1 and not isinstance(value, list):
        value = [value]
    if not isinstance(value, list) or len(value) != count:
        raise ValueError
    return value


def _sent_ms(value: object) -> int | None:
    """Unix milliseconds, as a 64-bit clock has them (the latency histogram divides it)."""
    if value is None:
        return None
    ms = _number(value)
    if not 0 <= ms < 1 << 63:
        raise ValueError
    return ms


def _excludes(value: object, count: int) -> list[str | None] | None:
    found = _optional_list(value, count)
    if found is not None:
        for exclude in found:
            if exclude is not None:
                _text(exclude)
    return found


def _positions(value: object, count: int) -> list[tuple[str, int] | None] | None:
    found = _optional_list(value, count)
    if found is None:
        return None
    return [None if p is None else (_text(p[0]), _number(p[1])) for p in found]


class SequenceWindow:
    """Per (origin, topic) sequence tracking: drops duplicates, counts gaps."""

    def __init__(self, baseline: Callable[[str, str], int | None] | None = None) -> None:
        self._last: dict[tuple[str, str], int] = {}
        #: for a pair seen for the first time: the sequence known to precede it, if any
        self._baseline = baseline or (lambda origin, topic: None)
        self.duplicates = 0
        self.lost = 0

    def accept(self, origin: str, topic: str, sequence: int, count: int = 1) -> tuple[int, int]:
        """For `count` envelopes from `sequence` on: how many of the first ones to skip
        (seen already), and how many before them were missed."""
        key = (origin, topic)
        last = self._last.get(key)
        if last is None:
            last = self._baseline(origin, topic)
            if last is None:
                self._last[key] = sequence + count - 1
                return 0, 0
        skip = min(count, max(0, last - sequence + 1))
        gap = max(0, sequence - last - 1)
        self.duplicates += skip
        self.lost += gap
        if skip < count:
            self._last[key] = sequence + count - 1
        return skip, gap

    def catch_up(self, origin: str, topic: str, sequence: int) -> int:
        """The origin says its latest sequence on the topic is `sequence`: how many of its
        messages up to there were missed. A topic not seen from it yet starts here."""
        key = (origin, topic)
        last = self._last.get(key)
        if last is None:
            last = self._baseline(origin, topic)
        if last is not None and sequence <= last:
            return 0
        self._last[key] = sequence
        if last is None:
            return 0
        self.lost += sequence - last
        return sequence - last

    def forget_origin(self, origin: str) -> None:
        """Drop what is known of a node (it expired or restarted)."""
        for key in [k for k in self._last if k[0] == origin]:
            del self._last[key]

    def forget_topic(self, topic: str) -> None:
        """Drop what is known of a topic (this node unsubscribed from it)."""
        for key in [k for k in self._last if k[1] == topic]:
            del self._last[key]
