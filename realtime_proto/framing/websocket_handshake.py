"""The WebSocket opening handshake (RFC 6455 §4.2): the request head checked, then
answered with a 101 (wsproto), permessage-deflate agreed (RFC 7692), or refused."""

from __future__ import annotations

import binascii
import json
import re
from base64 import b64decode
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request
from wsproto.utilities import RemoteProtocolError

from realtime_proto.errors import ErrorCode
from realtime_proto.framing.deflate import DeflateParams, negotiate

__all__ = ["Accepted", "Refused", "answer_handshake", "head_end"]

# h11's own end-of-head rule (a blank line, bare LF tolerated), so the split agrees with it.
_HEAD_END = re.compile(rb"\n\r?\n")


@dataclass(frozen=True, slots=True)
class Accepted:
    """The handshake is valid: the 101 answer, and the permessage-deflate agreed or None."""

    response: bytes
    deflate: DeflateParams | None


@dataclass(frozen=True, slots=True)
class Refused:
    """The handshake is refused: the status and reason, and the whole HTTP answer."""

    status: int
    reason: str
    response: bytes


def head_end(handshake: bytes) -> int:
    """Where the request head ends in `handshake` (frames may follow it)."""
    match = _HEAD_END.search(handshake)
    return match.end() if match else len(handshake)


def answer_handshake(head: bytes, *, compression: bool) -> Accepted | Refused:
    """Check an opening handshake's request head and build the answer (§4.2.2).

    Args:
        head: the request head, up to its blank line.
        compression: agree to permessage-deflate when the client offers it.
    """
    if (refusal := _refusal(head)) is not None:
        return _refused(*refusal)
    ws = WSConnection(ConnectionType.SERVER)  # dropped once answered
    try:
        ws.receive_data(head)
        request = next((e for e in ws.events() if isinstance(e, Request)), None)
    except RemoteProtocolError as exc:
        return _refused(400, str(exc))
    if request is None:
        return _refused(400, "incomplete handshake")
    headers: list[tuple[bytes, bytes]] = []
    deflate = None
    if compression and request.extensions:
        # always with server_no_context_takeover: a frame_message() of ours stays
        # the same bytes for every connection that agreed to the same window
        deflate = negotiate(", ".join(str(offer) for offer in request.extensions))
        if deflate is not None:
            headers.append((b"sec-websocket-extensions", deflate.response().encode()))
    return Accepted(ws.send(AcceptConnection(extra_headers=headers)), deflate)


def _refusal(head: bytes) -> tuple[int, str, list[tuple[str, str]]] | None:
    """What RFC 6455 §4.2.1 makes a server refuse and wsproto lets through (or answers
    with a less precise status): the answer's status, reason and headers, or None."""
    http = h11.Connection(h11.SERVER)
    try:
        http.receive_data(head)
        request = http.next_event()
    except h11.RemoteProtocolError:
        return 400, "malformed handshake", []
    if not isinstance(request, h11.Request):
        return 400, "incomplete handshake", []
    if request.method != b"GET":
        return 405, "a WebSocket handshake is a GET", [("allow", "GET")]
    if request.http_version != b"1.1":
        return 400, "a WebSocket handshake needs HTTP/1.1", []
    fields: dict[bytes, list[bytes]] = {}
    for name, value in request.headers:
        fields.setdefault(name, []).append(value)
    if not (_has_token(fields, b"upgrade", b"websocket")
            and _has_token(fields, b"connection", b"upgrade")):
        return 400, "not a WebSocket upgrade", []
    if fields.get(b"sec-websocket-version") != [b"13"]:
        return 426, "Sec-WebSocket-Version must be 13", [("sec-websocket-version", "13")]
    keys = fields.get(b"sec-websocket-key", [])
    try:
        valid_key = len(keys) == 1 and len(b64decode(keys[0], validate=True)) == 16
    except binascii.Error:
        valid_key = False
    if not valid_key:
        return 400, "Sec-WebSocket-Key must be 16 bytes in base64", []
    return None


def _has_token(fields: dict[bytes, list[bytes]], name: bytes, token: bytes) -> bool:
    """Whether a comma-separated header field lists `token` (case-insensitive)."""
    return any(part.strip().lower() == token
               for value in fields.get(name, ()) for part in value.split(b","))


def _refused(status: int, reason: str, headers: Sequence[tuple[str, str]] = ()) -> Refused:
    """An error answer to the handshake (with a JSON body, as the HTTP front door sends)."""
    body = json.dumps({"error": {"code": int(ErrorCode.MALFORMED_MESSAGE), "message": reason}},
                      separators=(",", ":")).encode()
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
             *(f"{name}: {value}" for name, value in headers),
             "content-type: application/json", f"content-length: {len(body)}",
             "connection: close", "", ""]
    return Refused(status, reason, "\r\n".join(lines).encode("latin-1") + body)
