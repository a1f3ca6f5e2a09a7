"""No sticky sessions: a request for another node's connection travels to that node over
the broker, and its answer comes back the same way (the messages are `forwarding.py`'s)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

from . import forwarding
from .actions import BrokerPublish
from .api import error_body
from .errors import ErrorCode
from .events import TransportId
from .framing import RequestReceived
from .framing.http import HttpFraming
from .sockets import Sockets, Transport

__all__ = ["Forwarder"]


class Forwarder:
    """The requests this node forwarded and is waiting on, and those it serves for others."""

    def __init__(self, sockets: Sockets) -> None:
        self._sockets = sockets
        #: serves a request forwarded to this node (set by the Node: long-polling's `serve`)
        self.serve: Callable[[Transport, RequestReceived, float], None] = lambda *_: None
        #: forwarded requests waiting for the owner's reply: request id -> (socket, deadline)
        self._forwards: dict[str, tuple[TransportId, float]] = {}
        #: requests sent, answered, served and expired
        self.counts: Counter[str] = Counter()

    def forward(self, transport: Transport, request: RequestReceived, now: float) -> bool:
        """Send a request for a connection of another node to that node, and keep the
        client waiting for its answer; False when the connection would be ours."""
        sockets = self._sockets
        owner = forwarding.owner_route(request.query.get("connection_id", ""))
        if owner is None or owner == sockets.hub.route or transport.reply_to is not None:
            return False
        request_id = sockets.new_id()
        self._forwards[request_id] = (transport.id, now + sockets.config.forward_timeout)
        self.counts["sent"] += 1
        sockets.actions.append(BrokerPublish(forwarding.node_topic(owner),
                                             forwarding.encode_request(
            request_id, sockets.hub.route, request.method, request.path, request.query,
            request.body)))
        return True

    def received(self, data: bytes, now: float) -> None:
        """A request forwarded to us (serve it as if its client were here), or the reply
        to one we forwarded (answer our client with it)."""
        sockets = self._sockets
        message = forwarding.decode_forwarded(data)
        if isinstance(message, forwarding.ForwardedHeld):  # the owner is there: wait longer
            waiting = self._forwards.get(message.request_id)
            if waiting is not None:
                config = sockets.config
                self._forwards[message.request_id] = (
                    waiting[0], now + config.poll_timeout + config.forward_timeout)
            return
        if isinstance(message, forwarding.ForwardedReply):
            transport_id, _ = self._forwards.pop(message.request_id, (None, 0.0))
            transport = sockets.transports.get(transport_id) if transport_id else None
            if transport is not None:  # else the client went away, or it was answered 404
                self.counts["answered"] += 1
                sockets.respond(transport, message.status, message.body, message.headers)
                sockets.collect(transport, now)
            return
        if message is None:
            return
        self.counts["served"] += 1
        # a socket-less transport: its answer is published (`Sockets.respond`), it never
        # times out
        framing = HttpFraming(max_head_bytes=1, max_body_bytes=0, now=now,
                              request_timeout=math.inf)
        transport = Transport(sockets.new_transport_id(), framing, None, False,
                              reply_to=(message.reply_route, message.request_id))
        sockets.transports[transport.id] = transport
        self.serve(transport, RequestReceived(
            method=message.method, target=message.path, path=message.path,
            query=message.query, headers={}, body=message.body, raw_head=b""), now)

    def expire(self, now: float) -> None:
        """Answer 404 (4022) to the clients whose connection's node did not answer in time
        (it is gone, or the broker lost the request or its reply)."""
        sockets = self._sockets
        expired = [request_id for request_id, (_, deadline) in self._forwards.items()
                   if deadline <= now]
        for request_id in expired:
            transport_id, _ = self._forwards.pop(request_id)
            transport = sockets.transports.get(transport_id)
            if transport is not None:
                self.counts["expired"] += 1
                sockets.respond_json(transport, 404, error_body(
                    ErrorCode.UNKNOWN_CONNECTION,
                    "unknown or expired connection (its node did not answer)"))
                sockets.collect(transport, now)
