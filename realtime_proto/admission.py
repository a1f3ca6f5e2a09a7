"""Who gets a connection: rate limits, the node's and each user's connection limits,
authentication (a JWT, or the application's own check), then the WebSocket, SSE or
long-poll connection opened on the Hub."""

from __future__ import annotations

import math
from collections import Counter

from . import jsonwire, sse
from .actions import Authenticate, AuthenticationRequest
from .api import bearer_token, error_body
from .config import NodeConfig
from .errors import ErrorCode, MessageError
from .events import (
    AuthenticationAnswered,
    ConnectionId,
    ConnectionOpened,
    MessageReceived,
    TransportId,
    TransportKind,
    User,
)
from .forwarded import client_peer
from .framing import RequestReceived
from .framing.websocket import WebSocketFraming
from .jwt import user_from_claims, verify_token
from .message import encode_json
from .polling import LongPolling
from .ratelimit import TokenBuckets
from .sockets import JSON, Sockets, Transport

__all__ = ["Admission"]


class Admission:
    """The connection requests of one node (`/ws`, `/sse`, a `/poll` without an id)."""

    def __init__(self, sockets: Sockets, polling: LongPolling) -> None:
        self._sockets = sockets
        self._polling = polling
        rates = self._config.hub.rates
        self._connect_buckets = TokenBuckets(rates.connections) if rates.connections else None
        self._api_buckets = TokenBuckets(rates.api_calls) if rates.api_calls else None
        #: one bucket for the whole node (`rates.handshakes`)
        self._handshake_buckets = TokenBuckets(rates.handshakes, max_keys=1) \
            if rates.handshakes else None
        #: requests waiting for the application's answer: request id -> (socket, request)
        self._waiting: dict[str, tuple[TransportId, RequestReceived]] = {}
        #: connections refused for a limit: "node" or "user"
        self.refused_connections: Counter[str] = Counter()

    @property
    def _config(self) -> NodeConfig:
        return self._sockets.config  # read each time: the Node's may be replaced

    def sweep(self, now: float) -> None:
        """Forget the rate-limit buckets that are full again."""
        for buckets in (self._connect_buckets, self._api_buckets):
            if buckets is not None:
                buckets.sweep(now)

    def refused_api(self, transport: Transport, key: str, now: float) -> bool:
        """Answer 429 when the API key `key` is over its rate; whether it was."""
        return self._refused(transport, self._api_buckets, key, now)

    def refused_connect(self, transport: Transport, peer: str | None, now: float) -> bool:
        """Answer 429 when the client's address opens connections too fast; whether it does."""
        return self._refused(transport, self._connect_buckets, (peer or "").rpartition(":")[0],
                             now)

    def _refused(self, transport: Transport, buckets: TokenBuckets | None, key: str,
                 now: float) -> bool:
        wait = buckets.take(key, now) if buckets is not None else 0.0
        if wait:
            self._sockets.respond(transport, 429, encode_json(
                error_body(ErrorCode.RATE_LIMITED, "rate limited") | {"retry_after": wait}),
                [("content-type", JSON), ("retry-after", str(max(1, round(wait)))),
                 *self._sockets.cors])
        return bool(wait)

    def peer(self, transport: Transport, request: RequestReceived) -> str | None:
        """The client's "host:port": the socket's, or whom a trusted proxy forwards."""
        trusted = self._config.trusted_proxies
        return client_peer(transport.peer, request.headers, trusted) if trusted else transport.peer

    def connect(self, transport: Transport, request: RequestReceived, now: float) -> None:
        """A request for a new connection: refused, sent to the application's check, or
        opened."""
        if self._full(transport) or self.overloaded(transport, now):
            return
        peer = self.peer(transport, request)
        if self.refused_connect(transport, peer, now):
            return
        token = request.query.get("token") or bearer_token(request.headers)
        sockets = self._sockets
        if self._config.custom_authentication:
            request_id = sockets.new_id()
            self._waiting[request_id] = (transport.id, request)
            sockets.actions.append(Authenticate(request_id=request_id,
                                                request=AuthenticationRequest(
                token=token, path=request.path, query=request.query, headers=request.headers,
                peer=peer)))
            return
        user = None
        if token is not None:
            try:
                if self._config.hub.jwt is None:
                    raise MessageError(ErrorCode.UNAUTHENTICATED, "this server accepts no tokens")
                claims = verify_token(token, self._config.hub.jwt,
                                      now_unix=sockets.epoch.unix_ms_at(now) / 1000)
                user = user_from_claims(claims)
            except MessageError as error:
                sockets.respond_json(transport, 401, error_body(error.code, error.message))
                return
        self._accept(transport, request, user, now)

    def authenticated(self, answer: AuthenticationAnswered, now: float) -> None:
        """The application's answer to an `Authenticate`."""
        sockets = self._sockets
        transport_id, request = self._waiting.pop(answer.request_id, (None, None))
        transport = sockets.transports.get(transport_id) if transport_id else None
        if transport is None or request is None:
            return  # the client went away meanwhile
        if answer.rejected:
            sockets.respond_json(transport, 401, error_body(
                ErrorCode.UNAUTHENTICATED, answer.reason or "authentication failed"))
        else:
            self._accept(transport, request, answer.user, now)
        sockets.collect(transport, now)

    def _full(self, transport: Transport) -> bool:
        """Answer 503 when the node has `max_connections` (counting those being
        authenticated); whether it has."""
        limit = self._config.hub.limits.max_connections
        if limit is None or self._sockets.hub.connection_count() + len(self._waiting) < limit:
            return False
        self.refused_connections["node"] += 1
        self._sockets.respond(transport, 503, encode_json(error_body(
            ErrorCode.TOO_MANY_CONNECTIONS, f"this node has its {limit} connections")),
            [("content-type", JSON), ("retry-after", "1"), *self._sockets.cors])
        return True

    def overloaded(self, transport: Transport, now: float) -> bool:
        """Answer 503 with Retry-After when the node admits no more new connections this
        second (`rates.handshakes`); whether it did."""
        buckets = self._handshake_buckets
        wait = buckets.take("", now) if buckets is not None else 0.0
        if not wait:
            return False
        self.refused_connections["handshakes"] += 1
        self._sockets.respond(transport, 503, encode_json(error_body(
            ErrorCode.TOO_MANY_CONNECTIONS, "this node admits no more connections this "
            "second") | {"retry_after": round(wait, 3)}),
            [("content-type", JSON), ("retry-after", str(max(1, math.ceil(wait)))),
             *self._sockets.cors], keep_alive=False)  # its socket is freed at once
        return True

    def _accept(self, transport: Transport, request: RequestReceived, user: User | None,
                now: float) -> None:
        sockets = self._sockets
        hub = sockets.hub
        limits = self._config.hub.limits
        per_user = limits.max_connections_per_user
        if user is not None and per_user is not None and not limits.replace_oldest \
                and hub.connection_count(user.id) >= per_user:
            self.refused_connections["user"] += 1
            sockets.respond_json(transport, 429, error_body(
                ErrorCode.TOO_MANY_CONNECTIONS, f"at most {per_user} connections per user"))
            return
        # the node's route key first: any node knows where to send its commands
        connection_id = ConnectionId(f"{hub.route}.{sockets.new_id()}")
        kind = TransportKind({"/ws": "websocket", "/sse": "sse"}.get(request.path, "polling"))
        # WebSocket keepalive is the protocol's Ping, unless the client asks for the JSON
        # ping the Hub sends (browsers cannot see a Ping: the JS client asks)
        json_ping = kind == "websocket" and request.query.get("heartbeat") == "json"
        opened = ConnectionOpened(connection_id=connection_id, user=user, transport=kind,
                                  peer=self.peer(transport, request), expects_pong=json_ping)
        if kind == "websocket" and not self._upgrade(transport, json_ping, now):
            return
        if kind == "sse":
            sse.start_stream(transport, self._config, sockets.cors, now)
        session = None
        if kind == "polling":
            session = self._polling.open(connection_id, now)
        else:
            transport.connection_id = connection_id
            sockets.routes[connection_id] = transport
        hub.handle(opened, now=now)
        sockets.run_hub()
        if kind == "sse":
            for message in sse.subscriptions(request):
                hub.handle(MessageReceived(connection_id=connection_id, data=message), now=now)
            sockets.run_hub()
        if session is not None:
            self._polling.answer(transport, session, now)

    def _upgrade(self, transport: Transport, json_ping: bool, now: float) -> bool:
        """Answer a WebSocket handshake in the native codec; whether it was accepted."""
        handshake = transport.framing.take_over()  # type: ignore[union-attr]
        hub = self._config.hub
        framing = WebSocketFraming(
            max_message_bytes=hub.limits.max_message_bytes,
            heartbeat=None if json_ping else hub.heartbeat_interval,
            idle_timeout=hub.effective_idle_timeout, compression=self._config.compression)
        transport.framing = framing
        if not framing.accept(handshake, now=now):
            return False
        deflate = framing.deflate
        transport.codec = (jsonwire.WEBSOCKET if deflate is None
                           else jsonwire.deflate_codec(deflate.server_max_window_bits))
        return True
