"""Requests for a connection another node holds, carried over the broker to that node.

A long-poll connection, and the `POST /send` and `POST /close` of an SSE or long-poll
client, are state on the node that opened the connection. A connection id starts with its
node's route key (`<route>.<random>`), so any node that gets such a request knows the
owner without asking anyone: it publishes the request on the owner's topic (`n:<route>`,
which each node subscribes to at start), keeps the client's HTTP request open, and
answers it with the reply the owner publishes on the asking node's topic.

A broker message is a one-line JSON header, a newline, then the request or response
body as it is (as bundles are laid out):

- request: `{"q": request id, "r": asking node's route, "m": method, "p": path, "a": query}`
- reply: `{"a": request id, "s": status, "h": [[header, value], ...]}`
- held: `{"k": request id}` (and no body): the owner holds a forwarded poll until a message
  comes or its `poll_timeout`, so the asking node waits that long, not just for a reply
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from .jsoncodec import dumps

__all__ = [
    "ForwardedHeld",
    "ForwardedReply",
    "ForwardedRequest",
    "decode_forwarded",
    "encode_held",
    "encode_reply",
    "encode_request",
    "is_node_topic",
    "node_topic",
    "owner_route",
]

_PREFIX = "n:"


class ForwardedRequest(NamedTuple):
    """A client's request, sent by the node it reached to the connection's node."""

    request_id: str
    reply_route: str
    method: str
    path: str
    query: dict[str, str]
    body: bytes


class ForwardedReply(NamedTuple):
    """The owner's answer to a `ForwardedRequest`, for the asking node to pass on."""

    request_id: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class ForwardedHeld(NamedTuple):
    """The owner holds a forwarded poll: its reply may take up to `poll_timeout`."""

    request_id: str


def node_topic(route: str) -> str:
    """The broker topic a node receives forwarded requests and replies on."""
    return _PREFIX + route


def is_node_topic(topic: str) -> bool:
    """Whether a topic carries forwarded requests and replies (not envelopes)."""
    return topic.startswith(_PREFIX)


def owner_route(connection_id: str) -> str | None:
    """The route key of the node that holds a connection; None if the id has none."""
    route, dot, _ = connection_id.partition(".")
    return route if dot and route else None


def encode_request(request_id: str, reply_route: str, method: str, path: str,
                   query: Mapping[str, str], body: bytes) -> bytes:
    """A request as one broker message."""
    header = dumps({"q": request_id, "r": reply_route, "m": method, "p": path,
                    "a": dict(query)})
    return header + b"\n" + body


def encode_reply(request_id: str, status: int, headers: Sequence[tuple[str, str]],
                 body: bytes) -> bytes:
    """A reply as one broker message."""
    header = dumps({"a": request_id, "s": status, "h": [list(pair) for pair in headers]})
    return header + b"\n" + body


def encode_held(request_id: str) -> bytes:
    """A `ForwardedHeld` as one broker message."""
    return dumps({"k": request_id}) + b"\n"


def decode_forwarded(data: bytes) -> ForwardedRequest | ForwardedReply | ForwardedHeld | None:
    """A broker message of a node topic; None when malformed (another node's bug)."""
    head, newline, body = data.partition(b"\n")
    try:
        header = json.loads(head)
        if not newline or not isinstance(header, dict):
            return None
        if "k" in header:
            return ForwardedHeld(str(header["k"]))
        if "q" in header:
            query = header["a"]
            if not isinstance(query, dict):
                return None
            return ForwardedRequest(str(header["q"]), str(header["r"]), str(header["m"]),
                                    str(header["p"]),
                                    {str(k): str(v) for k, v in query.items()}, body)
        return ForwardedReply(str(header["a"]), int(header["s"]),
                              [(str(k), str(v)) for k, v in header["h"]], body)
    except (ValueError, TypeError, KeyError):
        return None
