"""The framing layer: per-connection byte machines shared by every transport."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, final

__all__ = [
    "Framing",
    "FramingEvent",
    "FramingKind",
    "MessageIn",
    "PeerClosed",
    "RequestReceived",
    "Violation",
]


class FramingKind(enum.Enum):
    """What a client connection speaks after its first request."""

    #: plain HTTP request/response cycles (API, health, metrics, static, long-poll, send)
    HTTP = "http"
    #: a WebSocket after the upgrade
    WEBSOCKET = "websocket"
    #: a Server-Sent Events stream
    SSE = "sse"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestReceived:
    """A complete HTTP request (head and body) arrived."""

    method: str
    target: str
    path: str
    query: Mapping[str, str]
    #: header names lower-cased; repeated headers joined with ", "
    headers: Mapping[str, str]
    body: bytes
    #: the exact bytes of the request head, so a WebSocket handshake can be re-validated
    raw_head: bytes


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class MessageIn:
    """One whole message from a WebSocket peer (text as str, binary as bytes)."""

    data: str | bytes


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class PeerClosed:
    """The peer closed or went away; the framing is finished."""

    code: int | None = None
    reason: str = ""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Violation:
    """The peer broke the protocol; the framing already answered and is closing."""

    code: int
    reason: str


FramingEvent = RequestReceived | MessageIn | PeerClosed | Violation


class Framing(Protocol):
    """The shape every framing shares (STYLE.md §3.3)."""

    kind: FramingKind

    def receive_data(self, data: bytes, *, now: float) -> None: ...
    def receive_eof(self, *, now: float) -> None: ...
    def events(self) -> list[FramingEvent]: ...
    def data_to_send(self) -> list[bytes]: ...
    def close(self, code: int, reason: str = "") -> None: ...
    def next_deadline(self) -> float | None: ...
    def tick(self, *, now: float) -> None: ...
    @property
    def closed(self) -> bool: ...
