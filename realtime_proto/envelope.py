"""Envelopes between nodes: origin, per-topic sequence, kind, and the encoded payload;
and bundles, several envelopes of one node and topic in one broker message."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import final

from .errors import ErrorCode, MessageError

__all__ = ["Envelope", "EnvelopeKind", "SequenceWindow", "bundle", "encode_envelope",
           "unbundle"]


class EnvelopeKind(enum.StrEnum):
    """What an envelope carries."""

    #: a message for a channel's subscribers
    CHANNEL = "c"
    #: a message for a user's connections
    USER = "u"
    #: presence and cluster control (joins, leaves, heartbeats, full syncs)
    CONTROL = "p"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """One unit a node publishes to the broker.

    The wire form is a one-line JSON header, a newline, then the payload bytes exactly as
    they were encoded for clients, so a receiving node forwards them without re-encoding.
    """

    origin: str
    sequence: int
    kind: EnvelopeKind
    payload: bytes
    #: a connection that must not receive it (the sender of a client event)
    exclude: str | None = None
    #: Unix milliseconds at publish, for the delivery latency histogram
    sent_ms: int | None = None
    #: (epoch, offset) of a channel message in its shared stream; the payload is unstamped
    position: tuple[str, int] | None = None

    def encode(self) -> bytes:
        """The bytes handed to the broker."""
        return encode_envelope(_string(self.origin), self.sequence, self.kind, self.payload,
                               self.exclude, self.sent_ms, self.position)

    @classmethod
    def decode(cls, data: bytes) -> Envelope:
        """Parse an envelope from the broker.

        Raises:
            MessageError: the bytes are not an envelope (4000).
        """
        head, newline, payload = data.partition(b"\n")
        try:
            header = _DECODER.decode(head.decode()) if newline else {}
            position = (str(header["e"]), int(header["n"])) if "e" in header else None
            return cls(
                origin=str(header["o"]),
                sequence=int(header["s"]),
                kind=_KINDS[header["k"]],
                payload=payload,
                exclude=header.get("x"),
                sent_ms=header.get("t"),
                position=position,
            )
        except (ValueError, TypeError, KeyError):
            raise MessageError(ErrorCode.MALFORMED_MESSAGE, "not an envelope") from None


def encode_envelope(origin: bytes, sequence: int, kind: EnvelopeKind, payload: bytes,
                    exclude: str | None = None, sent_ms: int | None = None,
                    position: tuple[str, int] | None = None) -> bytes:
    """An envelope's bytes without building an `Envelope` (the publish path);
    `origin` is already a JSON string literal (`json.dumps(node_id).encode()`)."""
    header = b'{"o":%s,"s":%d,"k":"%s"' % (origin, sequence, kind.value.encode())
    if exclude is not None:
        header += b',"x":' + _string(exclude)
    if sent_ms is not None:
        header += b',"t":%d' % sent_ms
    if position is not None:
        header += b',"e":%s,"n":%d' % (_string(position[0]), position[1])
    return header + b"}\n" + payload


_DECODER = json.JSONDecoder()
_KINDS = {kind.value: kind for kind in EnvelopeKind}
_BUNDLE = b'{"b":'


def bundle(origin: str, envelopes: list[bytes]) -> bytes:
    """Encoded envelopes as one broker message: a one-line JSON header with the origin
    and each envelope's length, a newline, then the envelopes back to back."""
    lengths = b",".join(b"%d" % len(e) for e in envelopes)
    return b"".join([_BUNDLE, _string(origin), b',"n":[', lengths, b"]}\n", *envelopes])


def unbundle(data: bytes) -> tuple[str, list[bytes]] | None:
    """The origin and the envelopes of a bundle; None when `data` is a lone envelope.

    Raises:
        MessageError: it says it is a bundle but is not a well-formed one (4000).
    """
    if not data.startswith(_BUNDLE):
        return None
    head, newline, body = data.partition(b"\n")
    try:
        header = _DECODER.decode(head.decode()) if newline else {}
        origin, lengths = header["b"], header["n"]
        if not isinstance(origin, str) or not isinstance(lengths, list):
            raise TypeError
        envelopes, start = [], 0
        for length in lengths:
            if not isinstance(length, int) or length <= 0:
                raise ValueError
            envelopes.append(body[start:start + length])
            start += length
    except (ValueError, TypeError, KeyError):
        raise MessageError(ErrorCode.MALFORMED_MESSAGE, "not a bundle") from None
    if start != len(body):
        raise MessageError(ErrorCode.MALFORMED_MESSAGE, "bundle lengths do not add up")
    return origin, envelopes


def _string(text: str) -> bytes:
    """A JSON string literal (ids are ASCII: this is the fast case of `json.dumps`)."""
    return json.dumps(text).encode()


class SequenceWindow:
    """Per (origin, topic) sequence tracking: drops duplicates, counts gaps."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], int] = {}
        self.duplicates = 0
        self.lost = 0

    def accept(self, origin: str, topic: str, sequence: int) -> tuple[bool, int]:
        """Whether to process an envelope, and how many before it were missed."""
        key = (origin, topic)
        last = self._last.get(key)
        if last is not None and sequence <= last:
            self.duplicates += 1
            return False, 0
        gap = 0 if last is None else sequence - last - 1
        self.lost += gap
        self._last[key] = sequence
        return True, gap

    def forget_origin(self, origin: str) -> None:
        """Drop what is known of a node (it expired or restarted)."""
        for key in [k for k in self._last if k[0] == origin]:
            del self._last[key]

    def forget_topic(self, topic: str) -> None:
        """Drop what is known of a topic (this node unsubscribed from it)."""
        for key in [k for k in self._last if k[1] == topic]:
            del self._last[key]

    def forget_all(self) -> None:
        """Start over (after a broker outage, when sequences may have moved on)."""
        self._last.clear()
