"""HTTP/1.1 request/response framing for one TCP connection (the front door), on h11."""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from http import HTTPStatus
from typing import final

import h11

from realtime_proto.errors import ErrorCode
from realtime_proto.framing import (
    FramingEvent,
    FramingKind,
    PeerClosed,
    RequestReceived,
    Violation,
)
from realtime_proto.framing.http_checks import head_problem, split_target, unsupported_coding
from realtime_proto.machine import Machine

__all__ = ["HTTP_MACHINE", "LAST_CHUNK", "HttpFraming", "HttpInput", "HttpState", "encode_chunk",
           "stream_head"]

#: The zero-length chunk that ends a chunked body (RFC 9112 §7.1).
LAST_CHUNK = b"0\r\n\r\n"

# The framing owns message delimitation; a caller's copy would contradict it (RFC 9112 §6.3).
_DELIMITING_HEADERS = frozenset({"content-length", "transfer-encoding"})
# Responses that never carry content, so they get no body and no Content-Length (RFC 9110 §6.4.1).
_NO_CONTENT = frozenset({204, 304})
_JSON = "application/json"
_CONTINUE = h11.InformationalResponse(status_code=100, headers=[], reason="Continue")


class HttpState(enum.Enum):
    """Where an HttpFraming is in its request/response cycle."""

    #: reading the next request's head and body; the request timer runs
    READING = "reading"
    #: a RequestReceived is out and the caller owes respond() (or take_over())
    RESPONDING = "responding"
    #: finished: the adapter closes the socket once data_to_send() is drained
    CLOSED = "closed"
    #: the peer closed its side (receive_eof()): finished, and no more bytes may be fed
    DISCONNECTED = "disconnected"
    #: take_over() handed the connection to another framing; this one is inert
    TAKEN_OVER = "taken_over"


class HttpInput(enum.Enum):
    """What moves an HttpFraming: the caller's calls, and a request read (the peer's)."""

    #: receive_data()
    DATA = "data"
    #: receive_eof()
    EOF = "eof"
    #: a whole request was read (from the peer, never refused)
    REQUEST = "request"
    #: respond(); a response that ends the connection is followed by CLOSE
    RESPOND = "respond"
    #: take_over()
    TAKE_OVER = "take_over"
    #: close(), or the framing finishing itself (a violation, the request timer, a
    #: response that ends the connection)
    CLOSE = "close"


_READING, _RESPONDING, _CLOSED = HttpState.READING, HttpState.RESPONDING, HttpState.CLOSED
_DISCONNECTED, _TAKEN_OVER = HttpState.DISCONNECTED, HttpState.TAKEN_OVER

#: The HttpFraming transition table (rendered in docs/design.md).
HTTP_MACHINE = Machine("HttpFraming", HttpState, HttpInput, {
    (_READING, HttpInput.DATA): _READING,
    (_READING, HttpInput.EOF): _DISCONNECTED,
    (_READING, HttpInput.REQUEST): _RESPONDING,
    (_READING, HttpInput.CLOSE): _CLOSED,
    # bytes of a pipelined request are held until the response
    (_RESPONDING, HttpInput.DATA): _RESPONDING,
    (_RESPONDING, HttpInput.EOF): _DISCONNECTED,
    (_RESPONDING, HttpInput.RESPOND): _READING,
    (_RESPONDING, HttpInput.TAKE_OVER): _TAKEN_OVER,
    (_RESPONDING, HttpInput.CLOSE): _CLOSED,
    # once closed, bytes and a late response (the peer went away) are ignored
    (_CLOSED, HttpInput.DATA): _CLOSED,
    (_CLOSED, HttpInput.EOF): _DISCONNECTED,
    (_CLOSED, HttpInput.RESPOND): _CLOSED,
    (_CLOSED, HttpInput.CLOSE): _CLOSED,
    (_DISCONNECTED, HttpInput.EOF): _DISCONNECTED,
    (_DISCONNECTED, HttpInput.RESPOND): _DISCONNECTED,
    (_DISCONNECTED, HttpInput.CLOSE): _DISCONNECTED,
    (_TAKEN_OVER, HttpInput.CLOSE): _TAKEN_OVER,
}, peer_inputs=[HttpInput.REQUEST])


@final
class HttpFraming:
    """The front door of one TCP connection: whole requests out, responses in.

    Receive methods never raise because of what the peer sent: a bad request is
    answered here (400, 408, 413, 431 with a JSON error body), reported as a
    `Violation`, and the framing becomes `closed`.
    """

    kind: FramingKind = FramingKind.HTTP

    def __init__(
        self,
        *,
        max_head_bytes: int = 16 * 1024,
        max_body_bytes: int = 1024 * 1024,
        request_timeout: float = 30.0,
        now: float,
    ) -> None:
        """Start waiting for the first request.

        Args:
            max_head_bytes: largest request line plus headers; more is answered 431.
            max_body_bytes: largest request body; more is answered 413.
            request_timeout: seconds allowed for a whole request, counted from the
                connection opening or from the previous response; then 408.
            now: the current monotonic time.

        Raises:
            ValueError: a limit is not positive.
        """
        if max_head_bytes <= 0 or max_body_bytes < 0 or request_timeout <= 0:
            raise ValueError("HttpFraming limits must be positive")
        self._max_head = max_head_bytes
        self._max_body = max_body_bytes
        self._request_timeout = request_timeout
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head_bytes)
        self._state = _READING
        self._now = now
        self._deadline: float | None = now + request_timeout
        self._events: list[FramingEvent] = []
        self._out: list[bytes] = []
        # h11 does not say where a head ended, so keep the bytes of the current head.
        self._raw: bytearray | None = bytearray()
        self._raw_head = b""
        self._request: h11.Request | None = None
        self._body = bytearray()
        # Bytes that arrived while a response is owed (pipelining), bounded below.
        self._held_bytes = 0

    @property
    def state(self) -> HttpState:
        """The current state."""
        return self._state

    @property
    def closed(self) -> bool:
        """True once the adapter should close the socket after draining data_to_send()."""
        return self._state is _CLOSED or self._state is _DISCONNECTED

    def _advance(self, event: HttpInput) -> None:
        self._state = HTTP_MACHINE.advance(self._state, event)

    def receive_data(self, data: bytes, *, now: float) -> None:
        """Feed bytes from the peer; complete requests appear in events().

        Raises:
            LocalProtocolError: called after receive_eof() or take_over().
        """
        self._advance(HttpInput.DATA)
        self._now = now
        if self._state is _CLOSED or not data:
            return
        self._h11.receive_data(data)
        if self._state is _RESPONDING:
            # h11 buffers pipelined bytes while PAUSED without any limit of its own.
            self._held_bytes += len(data)
            if self._held_bytes > self._max_head + self._max_body:
                self._events.append(Violation(code=400, reason="too much data before a response"))
                self._finish()
            return
        if self._raw is not None:
            self._raw += data
        self._read()

    def receive_eof(self, *, now: float) -> None:
        """Record that the peer closed its side; a partial request is dropped.

        Raises:
            LocalProtocolError: called after take_over().
        """
        finished = self.closed
        self._advance(HttpInput.EOF)
        self._now = now
        # A request cannot be delimited by EOF (RFC 9112 §6.3), so whatever is
        # buffered is a truncated request: the peer is simply gone.
        if not finished:
            self._events.append(PeerClosed())
            self._release()

    def events(self) -> list[FramingEvent]:
        """Drain the events: RequestReceived, PeerClosed or Violation."""
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> list[bytes]:
        """Drain the bytes to write to the socket."""
        out, self._out = self._out, []
        return out

    def respond(
        self,
        status: int,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        *,
        keep_alive: bool = True,
        now: float | None = None,
    ) -> None:
        """Answer the pending request; this may release a pipelined RequestReceived.

        Content-Length is set here (callers' Content-Length and Transfer-Encoding are
        dropped). Does nothing if the framing already closed (the peer went away).

        Args:
            status: the status code (200 or more).
            headers: response header fields.
            body: the whole body; not sent for HEAD, 204 and 304.
            keep_alive: False closes the connection after this response.
            now: the current monotonic time; the next request's timer starts here.
                Pass it when the answer comes later than the request (long-polling):
                without it the timer starts at the latest `now` this framing saw,
                which for a held request would leave the client too little time.

        Raises:
            LocalProtocolError: no request is waiting for a response.
        """
        self._advance(HttpInput.RESPOND)
        if self.closed:
            return  # the peer went away: the answer is dropped
        self._send_response(status, headers, body, close=not keep_alive)
        if self._h11.our_state is not h11.DONE or self._h11.their_state is not h11.DONE:
            self._finish()  # Connection: close from either side, or HTTP/1.0
            return
        self._h11.start_next_cycle()
        now = self._now if now is None else now
        self._deadline = now + self._request_timeout
        self._raw = bytearray(self._h11.trailing_data[0])
        self._request = None
        self._held_bytes = 0
        self._read()

    def take_over(self) -> bytes:
        """Hand the connection to another framing (WebSocket upgrade or SSE stream).

        Returns:
            The raw head of the pending request and every byte the peer sent after
            it, for `WebSocketFraming.accept()`. This framing is inert afterwards.

        Raises:
            LocalProtocolError: no request is pending.
        """
        self._advance(HttpInput.TAKE_OVER)
        return self._raw_head + self._h11.trailing_data[0]

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection once pending output is written; code and reason are unused."""
        if self._state is _READING or self._state is _RESPONDING:
            self._finish()
        else:
            self._advance(HttpInput.CLOSE)  # already finished, or taken over: no change

    def next_deadline(self) -> float | None:
        """When tick() must be called next, or None."""
        return self._deadline

    def tick(self, *, now: float) -> None:
        """Answer 408 if the request timer ran out (slowloris, idle keep-alive)."""
        self._now = now
        if self._deadline is not None and now >= self._deadline:
            self._fail(408, ErrorCode.IDLE_TIMEOUT, "request timeout")

    def _read(self) -> None:
        while self._state is _READING:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                # h11's message depends on how the bytes were split, so it is not
                # reported: only its status (400, 431, 501) is.
                status = exc.error_status_hint
                message = "request head too large" if status == 431 else "malformed request"
                if status == 501:  # h11 reads no transfer coding but chunked alone
                    status, message = unsupported_coding(bytes(self._raw or b""))
                self._fail(status, ErrorCode.MALFORMED_MESSAGE, message)
                return
            match event:
                case h11.Request():
                    self._on_head(event)
                case h11.Data(data=chunk):
                    self._body += chunk
                    if len(self._body) > self._max_body:
                        self._fail(413, ErrorCode.MESSAGE_TOO_LARGE, "request body too large")
                case h11.EndOfMessage():
                    self._on_end()
                case _:  # NEED_DATA; EOF never reaches h11, see receive_eof()
                    return

    def _on_head(self, request: h11.Request) -> None:
        assert self._raw is not None
        head_length = len(self._raw) - len(self._h11.trailing_data[0])
        self._raw_head = bytes(self._raw[:head_length])
        self._raw = None
        self._request = request
        self._body = bytearray()
        if head_length > self._max_head:
            self._fail(431, ErrorCode.MALFORMED_MESSAGE, "request head too large")
            return
        if (problem := head_problem(self._raw_head, request)) is not None:
            self._fail(400, ErrorCode.MALFORMED_MESSAGE, problem)
            return
        for name, value in request.headers:
            if name == b"content-length" and int(value) > self._max_body:
                self._fail(413, ErrorCode.MESSAGE_TOO_LARGE, "request body too large")
                return
        if self._h11.they_are_waiting_for_100_continue:
            # The body fits, so invite it now instead of making the client wait (RFC 9110 §10.1.1).
            self._out.append(self._h11.send(_CONTINUE))

    def _on_end(self) -> None:
        request = self._request
        assert request is not None
        target = request.target.decode("ascii")
        path, query = split_target(target)
        headers: dict[str, str] = {}
        for raw_name, raw_value in request.headers:
            name, value = raw_name.decode("ascii"), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self._events.append(
            RequestReceived(
                method=request.method.decode("ascii"),
                target=target,
                path=path,
                query=query,
                headers=headers,
                body=bytes(self._body),
                raw_head=self._raw_head,
            )
        )
        self._body = bytearray()
        self._advance(HttpInput.REQUEST)
        self._deadline = None

    def _fail(self, status: int, code: ErrorCode, message: str) -> None:
        self._events.append(Violation(code=status, reason=message))
        body = json.dumps({"error": {"code": int(code), "message": message}}, separators=(",", ":"))
        self._send_response(status, [("content-type", _JSON)], body.encode(), close=True)
        self._finish()

    def _send_response(
        self, status: int, headers: Sequence[tuple[str, str]], body: bytes, *, close: bool
    ) -> None:
        method = self._request.method if self._request is not None else b""
        fields = [
            (name, value) for name, value in headers if name.lower() not in _DELIMITING_HEADERS
        ]
        if status not in _NO_CONTENT:
            fields.append(("content-length", str(len(body))))
        if close:
            fields.append(("connection", "close"))
        self._out.append(
            self._h11.send(h11.Response(status_code=status, headers=fields, reason=_reason(status)))
        )
        if body and method != b"HEAD" and status not in _NO_CONTENT:
            # Passthrough hands back the caller's bytes object: no copy of a large body.
            self._out += self._h11.send_with_data_passthrough(h11.Data(data=body)) or ()
        if tail := self._h11.send(h11.EndOfMessage()):  # empty: Content-Length delimits
            self._out.append(tail)

    def _finish(self) -> None:
        self._advance(HttpInput.CLOSE)
        self._release()

    def _release(self) -> None:
        """Drop the timer and the buffers of a finished framing."""
        self._deadline = None
        self._raw = None
        self._body = bytearray()


def stream_head(status: int, headers: Sequence[tuple[str, str]]) -> bytes:
    """Build an HTTP/1.1 response head for a body of unknown length (chunked, RFC 9112 §7.1).

    Args:
        status: the status code.
        headers: header fields; Content-Length and Transfer-Encoding are replaced.

    Returns:
        The status line, the headers plus ``transfer-encoding: chunked``, and the blank line.

    Raises:
        ValueError: a header contains CR, LF or NUL (header injection).
    """
    lines = [f"HTTP/1.1 {status} {_reason(status)}"]
    for name, value in headers:
        if any(c in name or c in value for c in "\r\n\0"):
            raise ValueError(f"invalid header field {name!r}")
        if name.lower() not in _DELIMITING_HEADERS:
            lines.append(f"{name}: {value}")
    lines.append("transfer-encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def encode_chunk(payload: bytes) -> bytes:
    """Frame one HTTP chunk (RFC 9112 §7.1): hex size, CRLF, payload, CRLF.

    Raises:
        ValueError: the payload is empty (a zero-size chunk would end the body).
    """
    if not payload:
        raise ValueError("an empty chunk would end the body; use LAST_CHUNK")
    return b"%x\r\n%b\r\n" % (len(payload), payload)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
