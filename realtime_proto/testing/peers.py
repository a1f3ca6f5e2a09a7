"""Client peers built on real libraries (wsproto, h11) that write and read client bytes in tests."""

from __future__ import annotations

import codecs
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import final

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)

from realtime_proto.framing import MessageIn, PeerClosed

__all__ = [
    "HttpPeer",
    "HttpResponse",
    "PongReceived",
    "SseComment",
    "SseEvent",
    "SsePeer",
    "SseRetry",
    "WebSocketPeer",
    "WebSocketPeerEvent",
]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class PongReceived:
    """The server answered a ping."""

    payload: bytes


WebSocketPeerEvent = MessageIn | PeerClosed | PongReceived


@final
class WebSocketPeer:
    """A wsproto CLIENT: writes the handshake and masked frames, reads the server's frames.

    Frames can be written before the server's 101 arrives (to test frames sent right
    behind the handshake). Pings and the server's Close are answered automatically;
    drain the answers with `data_to_send()`.
    """

    def __init__(self, *, host: str = "localhost") -> None:
        self._handshake = WSConnection(ConnectionType.CLIENT)
        # wsproto's WSConnection refuses frames before the 101; its frame layer does not.
        self._frames = Connection(ConnectionType.CLIENT)
        self._host = host
        self._head = bytearray()
        self._text: list[str] = []
        self._binary: list[bytes | bytearray] = []
        self._outbox: list[bytes] = []
        #: True once the server's 101 arrived
        self.accepted = False
        #: the status of the server's rejection, if it rejected the handshake
        self.rejected_status: int | None = None

    def handshake_bytes(
        self, path: str = "/ws", *, extra_headers: Sequence[tuple[str, str]] = ()
    ) -> bytes:
        """Return the opening handshake request for `path`."""
        headers = [(name.encode(), value.encode()) for name, value in extra_headers]
        return self._handshake.send(Request(host=self._host, target=path, extra_headers=headers))

    def receive(self, data: bytes) -> list[WebSocketPeerEvent]:
        """Feed server bytes; return whole messages, pongs and the server's Close."""
        if not self.accepted and self.rejected_status is None:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return []
            head, data = bytes(self._head[: end + 4]), bytes(self._head[end + 4 :])
            self._handshake.receive_data(head)
            for event in self._handshake.events():
                match event:
                    case AcceptConnection():
                        self.accepted = True
                    case RejectConnection(status_code=status):
                        self.rejected_status = status
            if not self.accepted:
                return []
        self._frames.receive_data(data)
        received: list[WebSocketPeerEvent] = []
        for event in self._frames.events():
            match event:
                case TextMessage(data=text, message_finished=finished):
                    self._text.append(text)
                    if finished:
                        received.append(MessageIn(data="".join(self._text)))
                        self._text.clear()
                case BytesMessage(data=chunk, message_finished=finished):
                    self._binary.append(chunk)
                    if finished:
                        received.append(MessageIn(data=b"".join(self._binary)))
                        self._binary.clear()
                case Ping():
                    self._outbox.append(self._frames.send(event.response()))
                case Pong(payload=payload):
                    received.append(PongReceived(payload=payload))
                case CloseConnection(code=code, reason=reason):
                    if self._frames.state is ConnectionState.REMOTE_CLOSING:
                        self._outbox.append(self._frames.send(event.response()))
                    received.append(PeerClosed(code=int(code), reason=reason or ""))
        return received

    def send_text(self, text: str) -> bytes:
        """Return one masked text frame."""
        return self._frames.send(TextMessage(data=text))

    def send_bytes(self, data: bytes) -> bytes:
        """Return one masked binary frame."""
        return self._frames.send(BytesMessage(data=data))

    def send_fragments(self, parts: Sequence[str]) -> bytes:
        """Return one text message split into len(parts) frames (RFC 6455 §5.4)."""
        last = len(parts) - 1
        return b"".join(
            self._frames.send(TextMessage(data=part, message_finished=i == last))
            for i, part in enumerate(parts)
        )

    def ping(self, payload: bytes = b"") -> bytes:
        """Return a ping frame."""
        return self._frames.send(Ping(payload=payload))

    def close(self, code: int = 1000, reason: str = "") -> bytes:
        """Return a Close frame."""
        return self._frames.send(CloseConnection(code=code, reason=reason))

    def data_to_send(self) -> bytes:
        """Drain the automatic answers (pongs, the Close echo)."""
        out, self._outbox = b"".join(self._outbox), []
        return out


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class HttpResponse:
    """One whole HTTP response as the client saw it."""

    status: int
    #: header names lower-cased; repeated headers joined with ", "
    headers: Mapping[str, str]
    body: bytes


@final
class HttpPeer:
    """An h11 CLIENT: writes requests (pipelined if you like) and reads the responses."""

    def __init__(self, *, host: str = "localhost") -> None:
        self._host = host
        # Requests are written by throwaway h11 clients so that any number can be
        # pipelined; this one replays them to read the responses in order.
        self._reader = h11.Connection(h11.CLIENT)
        self._sent: deque[tuple[h11.Request, bytes]] = deque()
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body = bytearray()

    def request(
        self,
        method: str = "GET",
        target: str = "/",
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> bytes:
        """Return the bytes of one request; Host and Content-Length are added when missing."""
        fields = list(headers)
        names = {name.lower() for name, _ in fields}
        if "host" not in names:
            fields.insert(0, ("host", self._host))
        if (body or method in ("POST", "PUT", "PATCH")) and not names & {
            "content-length",
            "transfer-encoding",
        }:
            fields.append(("content-length", str(len(body))))
        request = h11.Request(method=method, target=target, headers=fields)
        writer = h11.Connection(h11.CLIENT)
        data = writer.send(request)
        if body:
            data += writer.send(h11.Data(data=body))
        data += writer.send(h11.EndOfMessage())
        self._sent.append((request, body))
        return data

    def receive(self, data: bytes) -> list[HttpResponse]:
        """Feed server bytes; return the responses completed by them."""
        self._reader.receive_data(data)
        responses: list[HttpResponse] = []
        while True:
            if self._reader.our_state is h11.IDLE:
                if self._sent:
                    request, body = self._sent.popleft()
                elif self._reader.trailing_data[0]:
                    # An answer to no request of ours (400 to hand-typed bytes, 408).
                    request, body = (
                        h11.Request(method="GET", target="/", headers=[("host", "x")]),
                        b"",
                    )
                else:
                    return responses
                self._reader.send(request)
                if body:
                    self._reader.send(h11.Data(data=body))
                self._reader.send(h11.EndOfMessage())
            match self._reader.next_event():
                case h11.InformationalResponse():
                    pass
                case h11.Response(status_code=status, headers=headers):
                    self._status, self._headers, self._body = (
                        status,
                        _header_dict(headers),
                        bytearray(),
                    )
                case h11.Data(data=chunk):
                    self._body += chunk
                case h11.EndOfMessage():
                    responses.append(
                        HttpResponse(
                            status=self._status, headers=self._headers, body=bytes(self._body)
                        )
                    )
                    if (
                        self._reader.our_state is not h11.DONE
                        or self._reader.their_state is not h11.DONE
                    ):
                        return responses
                    self._reader.start_next_cycle()
                case _:
                    return responses


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SseEvent:
    """One dispatched event; `id` is the id line of this event's block, if any."""

    id: str | None
    data: str
    event: str = "message"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SseComment:
    """A comment line (``: text``), such as a heartbeat."""

    text: str


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SseRetry:
    """A ``retry:`` field: the reconnection delay."""

    ms: int


SsePeerEvent = SseEvent | SseComment | SseRetry
_LINE = re.compile(r"\r\n|\r|\n")


@final
class SsePeer:
    """Reads an SSE response (head, then a chunked body) the way EventSource does (WHATWG)."""

    def __init__(self, *, target: str = "/sse", host: str = "localhost") -> None:
        self._reader = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method="GET", target=target, headers=[("host", host), ("accept", "text/event-stream")]
        )
        #: the request this peer stands for
        self.request_bytes = self._reader.send(request) + self._reader.send(h11.EndOfMessage())
        #: the response status, once the head arrived
        self.status: int | None = None
        #: the response headers, lower-cased
        self.headers: dict[str, str] = {}
        #: True once the last chunk arrived
        self.ended = False
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._pending = ""
        self._id: str | None = None
        self._event = "message"
        self._data: list[str] = []

    def receive(self, data: bytes) -> list[SsePeerEvent]:
        """Feed server bytes; return the events, comments and retry fields they complete."""
        self._reader.receive_data(data)
        parsed: list[SsePeerEvent] = []
        while True:
            match self._reader.next_event():
                case h11.Response(status_code=status, headers=headers):
                    self.status, self.headers = status, _header_dict(headers)
                case h11.Data(data=chunk):
                    self._feed(self._decoder.decode(chunk), parsed)
                case h11.EndOfMessage():
                    self.ended = True
                    return parsed
                case _:
                    return parsed

    def _feed(self, text: str, parsed: list[SsePeerEvent]) -> None:
        text = self._pending + text
        # A CR at the end may be the first half of a CRLF still on its way.
        held = "\r" if text.endswith("\r") else ""
        *lines, rest = _LINE.split(text[: len(text) - len(held)])
        self._pending = rest + held
        for line in lines:
            self._line(line, parsed)

    def _line(self, line: str, parsed: list[SsePeerEvent]) -> None:
        if not line:
            if self._data:
                parsed.append(SseEvent(id=self._id, data="\n".join(self._data), event=self._event))
            self._id, self._event, self._data = None, "message", []
            return
        if line.startswith(":"):
            parsed.append(SseComment(text=line[1:].removeprefix(" ")))
            return
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self._data.append(value)
        elif field == "id" and "\0" not in value:
            self._id = value
        elif field == "event":
            self._event = value
        elif field == "retry" and value.isascii() and value.isdigit():
            parsed.append(SseRetry(ms=int(value)))


def _header_dict(headers: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    result: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name, value = raw_name.decode("ascii").lower(), raw_value.decode("latin-1")
        result[name] = f"{result[name]}, {value}" if name in result else value
    return result
