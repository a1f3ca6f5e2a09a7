"""The Node: bytes in, I/O actions out; the one object an adapter drives."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from . import forwarding, longpoll
from .actions import (
    Authenticate,
    AuthenticationRequest,
    Authorize,
    BrokerPublish,
    BrokerSubscribe,
    BrokerUnsubscribe,
    ClientEventSent,
    CloseTransport,
    Deliver,
    Disconnect,
    HistoryAppend,
    HistoryRead,
    NodeAction,
    Notify,
    PostWebhook,
    SaveReadPosition,
    Transmit,
)
from .api import bearer_token, error_body, handle_api, reads_channel
from .backlog import Backlog, SlowConsumerPolicy, conflation_key, find_policy
from .config import Epoch, NodeConfig, StaticFile
from .errors import ErrorCode, MessageError
from .events import (
    AuthenticationAnswered,
    ConnectionClosed,
    ConnectionId,
    ConnectionOpened,
    EnvelopeReceived,
    HistoryLoaded,
    MessageReceived,
    NodeEvent,
    TransportId,
    TransportKind,
    User,
    WebhookPosted,
)
from .forwarded import client_peer
from .framing import FramingKind, MessageIn, PeerClosed, RequestReceived, Violation
from .framing.deflate import compressed_frame
from .framing.http import HttpFraming
from .framing.sse import SseFraming, encode_event
from .framing.websocket import WebSocketFraming, frame_message
from .hub import Hub
from .jwt import user_from_claims, verify_token
from .longpoll import PollSession
from .message import JsonValue, Message, MessageType, encode_json
from .metrics import render_metrics
from .notify import WebhookQueue, response_status
from .pusher import codec as pusher_codec
from .pusher.api import handle_pusher_api
from .pusher.apps import PusherApp
from .pusher.webhooks import presence_event, pusher_webhook_request, webhook_event
from .ratelimit import TokenBuckets
from .statistics import NodeStatistics

__all__ = ["Node"]

_Framing = HttpFraming | WebSocketFraming | SseFraming
_WEBSOCKET = FramingKind.WEBSOCKET
_JSON = "application/json"
#: the one method of each fixed endpoint: any other is answered 405 with Allow (RFC 9110 §15.5.6)
_ALLOWED_METHODS = {"/ws": "GET", "/sse": "GET", "/poll": "GET", "/health": "GET",
                    "/metrics": "GET", "/send": "POST", "/close": "POST"}


@dataclass(slots=True, eq=False)
class _Transport:
    id: TransportId
    framing: _Framing
    peer: str | None
    secure: bool
    #: the Hub connection this socket carries (WebSocket, SSE)
    connection_id: ConnectionId | None = None
    #: the app of a WebSocket that speaks the Pusher protocol (None: the native one)
    pusher: PusherApp | None = None
    #: the user a Pusher client signed in as (`pusher:signin`)
    pusher_user: str | None = None
    #: message frames waiting since the adapter last pulled (bounded by the policies)
    backlog: Backlog = field(default_factory=Backlog)
    #: the long-poll connection whose poll this socket holds
    holding: ConnectionId | None = None
    #: (route, request id) of the node that forwarded this request: no socket here, the
    #: answer goes back over the broker
    reply_to: tuple[str, str] | None = None


class Node:
    """Everything between the sockets and the application, for one server process.

    `receive_data`, `receive_eof`, `handle` and `tick` never raise because of what a
    peer or the broker sent. After every call, drain `actions()`; for each socket of a
    `Transmit` pull `data_to_send(transport_id)`; after a `CloseTransport` write what was pulled
    and close the socket. Not thread-safe: one loop drives it.
    """

    def __init__(self, config: NodeConfig, *, new_id: Callable[[], str], epoch: Epoch,
                 jitter: Callable[[], float] = lambda: 0.5) -> None:
        self.config = config
        self.hub = Hub(config.hub, new_id=new_id, epoch=epoch)
        #: one queue per webhook URL (`jitter`, a float in [0, 1), spreads their retries)
        self._webhooks = [WebhookQueue(url, config.webhooks, jitter)
                          for url in config.webhooks.urls] if config.webhooks else []
        self._new_id = new_id
        self._epoch = epoch
        self._transports: dict[TransportId, _Transport] = {}
        #: `GET …/reads` requests waiting for the shared store: request id -> (socket, channel)
        self._reads_asked: dict[str, tuple[TransportId, str]] = {}
        self._routes: dict[ConnectionId, _Transport | PollSession] = {}
        self._final_output: dict[TransportId, list[bytes]] = {}
        self._waiting_auth: dict[str, tuple[TransportId, RequestReceived]] = {}
        self._actions: list[NodeAction] = []
        #: sockets whose framing did something (closed, maybe) since the last Transmit
        self._dirty: dict[TransportId, _Transport] = {}
        #: sockets that got message frames since the last Transmit (in delivery order)
        self._fanned: dict[TransportId, None] = {}
        self._polls_to_answer: dict[ConnectionId, PollSession] = {}
        self._encodings: Counter[str] = Counter()
        self._responses: Counter[int] = Counter()
        self._slow_consumers = 0
        self._shutting_down = False
        self._dropped_messages = 0
        self._refused_connections: Counter[str] = Counter()
        self._policies: dict[str | None, SlowConsumerPolicy] = {}
        self._bytes_in = 0
        self._bytes_out = 0
        #: Pusher webhook events waiting for the end of this call, by app; their outcomes
        self._webhook_events: dict[PusherApp, list[JsonValue]] = {}
        #: Pusher webhook requests by outcome, and those still on their way
        self._pusher_webhooks: Counter[str] = Counter()
        self._pusher_posts: set[str] = set()
        rates = config.hub.rates
        self._connect_buckets = TokenBuckets(rates.connections) if rates.connections else None
        self._api_buckets = TokenBuckets(rates.api_calls) if rates.api_calls else None
        origin = config.cors_origin
        #: the same for every answer: built once, shared by every connection
        self._cors = (("access-control-allow-origin", origin),) if origin else ()
        self._now = epoch.monotonic_at
        #: this node's route key (the Hub's): the prefix of its connection ids, and its
        #: broker topic
        self.route = self.hub.route
        #: forwarded requests waiting for the owner's reply: request id -> (socket, deadline)
        self._forwards: dict[str, tuple[TransportId, float]] = {}
        self._forward_counts: Counter[str] = Counter()
        self._actions.append(BrokerSubscribe(forwarding.node_topic(self.route)))
        self._run_hub()

    # -- the adapter's verbs -------------------------------------------------------------

    def open_connection(self, *, now: float, peer: str | None = None,
                        secure: bool = False) -> TransportId:
        """Register a new socket; its id for every later call."""
        transport_id = TransportId(self._new_id())
        limits = self.config.hub.limits
        framing = HttpFraming(max_head_bytes=limits.max_head_bytes,
                              max_body_bytes=limits.max_body_bytes, now=now)
        self._transports[transport_id] = _Transport(transport_id, framing, peer, secure)
        return transport_id

    def receive_data(self, transport_id: TransportId, data: bytes, *, now: float) -> None:
        """Bytes arrived on a socket. Input for a socket the Node closed is ignored."""
        self._now = now
        transport = self._transports.get(transport_id)
        if transport is not None:
            self._bytes_in += len(data)
            transport.framing.receive_data(data, now=now)
            self._pump(transport, now)
        self._finish_call()

    def receive_eof(self, transport_id: TransportId, *, now: float) -> None:
        """The peer closed its side, or the socket failed."""
        self._now = now
        transport = self._transports.get(transport_id)
        if transport is not None:
            transport.framing.receive_eof(now=now)
            self._pump(transport, now)
            if transport.id in self._transports:
                self._finish(transport, now)
        self._finish_call()

    def handle(self, event: NodeEvent, *, now: float) -> None:
        """Feed an application, broker or callback event."""
        self._now = now
        if isinstance(event, AuthenticationAnswered):
            self._authenticated(event, now)
        elif isinstance(event, WebhookPosted):
            status = response_status(event.response) if event.error is None else None
            if event.request_id in self._pusher_posts:  # not retried (docs/pusher.md)
                self._pusher_posts.discard(event.request_id)
                delivered = status is not None and 200 <= status < 300
                self._pusher_webhooks["sent" if delivered else "failed"] += 1
            else:
                for queue in self._webhooks:
                    queue.answered(event.request_id, status, now)
        elif isinstance(event, HistoryLoaded) and event.request_id in self._reads_asked:
            self._reads_answered(event)
        elif type(event) is EnvelopeReceived and forwarding.is_node_topic(event.topic):
            self._forward_received(event.data, now)
        else:
            self.hub.handle(event, now=now)
        self._finish_call()

    def tick(self, *, now: float) -> None:
        """Let time pass; call at `next_deadline()`."""
        self._now = now
        if now >= self.hub.next_deadline():
            for transport in list(self._transports.values()):
                deadline = transport.framing.next_deadline()
                if deadline is not None and deadline <= now:
                    transport.framing.tick(now=now)
                    self._pump(transport, now)
            for session in list(self._polls()):
                self._sweep_poll(session, now)
            for buckets in (self._connect_buckets, self._api_buckets):
                if buckets is not None:
                    buckets.sweep(now)
            self._expire_forwards(now)
        self.hub.tick(now=now)
        self._finish_call()

    def next_deadline(self) -> float:
        """When `tick` next has work to do (monotonic seconds)."""
        deadline = self.hub.next_deadline()
        for queue in self._webhooks:
            due = queue.next_deadline()
            if due is not None and due < deadline:
                deadline = due
        return deadline

    def actions(self) -> list[NodeAction]:
        """Drain the actions produced so far, including those of calls made on `hub`."""
        self._finish_call()
        actions, self._actions = self._actions, []
        return actions

    def data_to_send(self, transport_id: TransportId) -> list[bytes]:
        """Drain the bytes waiting for one socket."""
        final = self._final_output.pop(transport_id, None) if self._final_output else None
        if final is not None:
            self._bytes_out += sum(map(len, final))
            return final
        transport = self._transports.get(transport_id)
        if transport is None:
            return []
        # the framing's own output (handshake, pongs, heartbeats) first, then messages
        chunks = transport.framing.data_to_send()
        backlog = transport.backlog
        if backlog.gaps:
            chunks += self._gap_notices(transport)
        if chunks:
            self._bytes_out += sum(map(len, chunks))
        if backlog.bytes:  # the common case of a fan-out: only this
            self._bytes_out += backlog.bytes
            chunks = chunks + backlog.drain() if chunks else backlog.drain()
        return chunks

    def shutdown(self, *, now: float, code: int = 1001,
                 reason: str = "server shutting down") -> None:
        """Close every client connection (WebSocket 1001, SSE ended, polls answered)."""
        self._shutting_down = True
        for connection_id in self.hub.connection_ids():
            self.hub.disconnect(connection_id, code, reason)
        self._run_hub()
        for transport in list(self._transports.values()):
            if transport.connection_id is None and transport.holding is None:
                transport.framing.close(code, reason)
                self._finish(transport, now)
        self._finish_call()

    def statistics(self) -> NodeStatistics:
        """A snapshot of the counters."""
        return NodeStatistics(
            node_id=self.hub.node_id, runtime=self.config.runtime,
            transports=len(self._transports), poll_sessions=len(self._polls()),
            held_polls=sum(1 for session in self._polls() if session.held is not None),
            encodings=dict(self._encodings), slow_consumers=self._slow_consumers,
            pusher_webhooks=dict(self._pusher_webhooks),
            dropped_messages=self._dropped_messages + sum(
                t.backlog.dropped for t in self._transports.values()),
            backlogs={str(t.connection_id): t.backlog.bytes for t in self._transports.values()
                      if t.backlog.bytes and t.connection_id},
            http_responses=dict(self._responses), bytes_in=self._bytes_in,
            bytes_out=self._bytes_out, hub=self.hub.statistics(), worker=self.config.worker,
            forwarded=dict(self._forward_counts),
            webhooks=tuple(queue.statistics() for queue in self._webhooks),
            refused_connections=dict(self._refused_connections))

    # -- framing events ------------------------------------------------------------------

    def _pump(self, transport: _Transport, now: float) -> None:
        while events := transport.framing.events():
            for event in events:
                match event:
                    case RequestReceived():
                        self._request(transport, event, now)
                    case MessageIn():
                        if transport.pusher is not None:
                            self._pusher_in(transport, event.data, now)
                        elif transport.connection_id is not None:
                            self.hub.handle(MessageReceived(connection_id=transport.connection_id,
                                                            data=event.data), now=now)
                    case PeerClosed() | Violation():
                        self._run_hub()  # the answers to the messages before it
                        self._finish(transport, now)
                        return
            self._run_hub()
        self._collect(transport, now)

    def _collect(self, transport: _Transport, now: float) -> None:
        if transport.id not in self._transports:
            return
        if transport.framing.closed:
            self._finish(transport, now)
        else:
            self._dirty[transport.id] = transport

    def _finish(self, transport: _Transport, now: float) -> None:
        """Forget a socket: its Hub connection closes, its held poll is released."""
        self._transports.pop(transport.id, None)
        self._dirty.pop(transport.id, None)
        self._fanned.pop(transport.id, None)
        self._dropped_messages += transport.backlog.dropped
        connection_id = transport.connection_id
        if connection_id is not None and self._routes.get(connection_id) is transport:
            del self._routes[connection_id]
            self.hub.handle(ConnectionClosed(connection_id=connection_id), now=now)
            self._run_hub()
        if transport.holding is not None:
            session = self._routes.get(transport.holding)
            if isinstance(session, PollSession):
                session.release_hold(now, self.config.poll_session_timeout)
        if transport.framing.kind is _WEBSOCKET and transport.backlog.bytes:
            # answers to what came before a protocol violation, ahead of the Close
            for frame in transport.backlog.drain():
                transport.framing.send_encoded(frame)  # type: ignore[union-attr]
        self._final_output[transport.id] = transport.framing.data_to_send()
        self._actions.append(CloseTransport(transport.id))

    # -- HTTP requests -------------------------------------------------------------------

    def _request(self, transport: _Transport, request: RequestReceived, now: float) -> None:
        path, method = request.path, request.method
        if method == "OPTIONS":
            self._respond(transport, 204, b"", [
                *self._cors, ("access-control-allow-methods", "GET, POST, OPTIONS"),
                ("access-control-allow-headers", "authorization, content-type"),
                ("access-control-max-age", "600")])
        elif path.startswith("/apps/") and self.config.pusher_apps:
            self._pusher_api(transport, request, now)
        elif path.startswith("/users/") and method == "POST" and self.config.pusher_apps:
            self._pusher_api(transport, request, now)  # the Python SDK's terminate_connections
        elif path.startswith("/app/") and method == "GET" and self.config.pusher_apps:
            self._pusher_connect(transport, request, now)
        elif path.startswith("/api/"):
            if self._refused(transport, self._api_buckets,
                             bearer_token(request.headers) or "", now):
                return
            status, body = handle_api(self.hub, self.config.api_key, method, path,
                                      request.headers, request.body, now=now,
                                      max_body_bytes=self.config.hub.limits.max_body_bytes,
                                      statistics=self._stats_json)
            self._run_hub()
            channel = reads_channel(method, path) if status == 200 else None
            rule = self.hub.shared_history_rule(channel) if channel is not None else None
            if channel is not None and rule is not None:  # the store has every node's
                request_id = self._new_id()
                self._reads_asked[request_id] = (transport.id, channel)
                self._actions.append(HistoryRead(request_id=request_id, channel=channel,
                                                 since=None, limit=0, ttl=rule.ttl))
                return
            self._respond_json(transport, status, body)
        elif path == "/health" and method == "GET":
            self._respond_json(transport, 200, self._health())
        elif path == "/ready" and method == "GET":
            ready = self.hub.statistics().broker_connected and not self._shutting_down
            self._respond_json(transport, 200 if ready else 503, self._health() | {
                "ready": ready, "draining": self._shutting_down})
        elif path == "/metrics" and method == "GET":
            self._respond(transport, 200, render_metrics(self.statistics()),
                          [("content-type", "text/plain; version=0.0.4")])
        elif (path in ("/ws", "/sse") and method == "GET") or (
                path == "/poll" and method == "GET" and "connection_id" not in request.query):
            if not self._full(transport):
                self._authenticate(transport, request, now)
        elif path == "/poll" and method == "GET":
            self._poll(transport, request, now)
        elif path == "/send" and method == "POST":
            self._send(transport, request, now)
        elif path == "/close" and method == "POST":
            self._close_request(transport, request, now)
        elif method in ("GET", "HEAD") and (static := self._static(path)) is not None:
            # HttpFraming leaves the body out of a HEAD answer and keeps its length
            self._respond(transport, 200, static.body,
                          [("content-type", static.content_type), ("cache-control", "no-cache")])
        elif (allowed := _ALLOWED_METHODS.get(path)) is not None:
            self._respond(transport, 405, encode_json(error_body(
                405, f"{path} takes {allowed} only")), [
                ("content-type", _JSON), ("allow", allowed), *self._cors])
        else:
            self._respond_json(transport, 404, error_body(404, f"nothing at {path}"))

    def _respond(self, transport: _Transport, status: int, body: bytes,
                 headers: list[tuple[str, str]]) -> None:
        if transport.reply_to is not None:
            self._reply(transport, status, body, headers)
            return
        self._responses[status] += 1
        # once shutting down, every answer is the connection's last (Connection: close)
        transport.framing.respond(status, headers, body, now=self._now,  # type: ignore[union-attr]
                                  keep_alive=not self._shutting_down)

    def _reads_answered(self, answer: HistoryLoaded) -> None:
        """Answer `GET /api/channels/{channel}/reads` with what the store keeps too."""
        transport_id, channel = self._reads_asked.pop(answer.request_id)
        self.hub.remember_reads(channel, answer.reads)
        transport = self._transports.get(transport_id)
        if transport is not None:
            self._respond_json(transport, 200, {"reads": self.hub.reads(channel)})
            self._collect(transport, self._now)

    def _respond_json(self, transport: _Transport, status: int, body: JsonValue) -> None:
        self._respond(transport, status, encode_json(body),
                      [("content-type", _JSON), *self._cors])

    def _static(self, path: str) -> StaticFile | None:
        files = self.config.static_files
        return files.get(path) or (files.get(path + "index.html") if path.endswith("/") else None)

    def _stats_json(self) -> JsonValue:
        """`GET /api/stats`: the counters the admin page shows."""
        stats = self.statistics()
        hub = stats.hub
        return {"node_id": stats.node_id, "runtime": stats.runtime,
                "connections": dict(hub.connections), "subscriptions": hub.subscriptions,
                "channels": hub.channels, "messages_in": hub.messages_in,
                "messages_out": hub.messages_out, "published": hub.published,
                "bytes_in": stats.bytes_in, "bytes_out": stats.bytes_out,
                "slow_consumers": stats.slow_consumers, "nodes": hub.nodes,
                "broker_connected": hub.broker_connected,
                "errors": {str(code): count for code, count in hub.errors.items()}}

    def _health(self) -> JsonValue:
        """`GET /health`: degraded while the broker is disconnected or stalled, or the
        shared history store is unreachable (the last two as the adapter last reported)."""
        stats = self.hub.statistics()
        driver = stats.broker_driver
        broker = ("disconnected" if not stats.broker_connected
                  else "stalled" if driver.stalled else "connected")
        history = driver.history_available
        health: dict[str, JsonValue] = {
            "status": "ok" if broker == "connected" and history else "degraded",
            "node_id": self.hub.node_id, "runtime": self.config.runtime,
            "broker": broker,
            "history": "available" if history else "unavailable",
            "connections": sum(stats.connections.values())}
        if self.config.worker is not None:
            health["worker"] = self.config.worker
        return health

    # -- authentication and the three transports ------------------------------------------

    def _refused(self, transport: _Transport, buckets: TokenBuckets | None, key: str,
                 now: float) -> bool:
        """Answer 429 when `key` is over its rate; whether it was."""
        wait = buckets.take(key, now) if buckets is not None else 0.0
        if wait:
            self._respond(transport, 429, encode_json(
                error_body(ErrorCode.RATE_LIMITED, "rate limited") | {"retry_after": wait}),
                [("content-type", _JSON), ("retry-after", str(max(1, round(wait)))),
                 *self._cors])
        return bool(wait)

    def _peer(self, transport: _Transport, request: RequestReceived) -> str | None:
        """The client's "host:port": the socket's, or whom a trusted proxy forwards."""
        trusted = self.config.trusted_proxies
        return client_peer(transport.peer, request.headers, trusted) if trusted else transport.peer

    def _full(self, transport: _Transport) -> bool:
        """Answer 503 when the node has `max_connections` (counting those being
        authenticated); whether it has."""
        limit = self.config.hub.limits.max_connections
        if limit is None or self.hub.connection_count() + len(self._waiting_auth) < limit:
            return False
        self._refused_connections["node"] += 1
        self._respond(transport, 503, encode_json(error_body(
            ErrorCode.TOO_MANY_CONNECTIONS, f"this node has its {limit} connections")),
            [("content-type", _JSON), ("retry-after", "1"), *self._cors])
        return True

    def _authenticate(self, transport: _Transport, request: RequestReceived, now: float) -> None:
        peer = self._peer(transport, request)
        if self._refused(transport, self._connect_buckets, (peer or "").rpartition(":")[0], now):
            return
        token = request.query.get("token") or bearer_token(request.headers)
        if self.config.custom_authentication:
            request_id = self._new_id()
            self._waiting_auth[request_id] = (transport.id, request)
            self._actions.append(Authenticate(request_id=request_id, request=AuthenticationRequest(
                token=token, path=request.path, query=request.query, headers=request.headers,
                peer=peer)))
            return
        user = None
        if token is not None:
            try:
                if self.config.hub.jwt is None:
                    raise MessageError(ErrorCode.UNAUTHENTICATED, "this server accepts no tokens")
                claims = verify_token(token, self.config.hub.jwt,
                                      now_unix=self._epoch.unix_ms_at(now) / 1000)
                user = user_from_claims(claims)
            except MessageError as error:
                self._respond_json(transport, 401, error_body(error.code, error.message))
                return
        self._accept(transport, request, user, now)

    def _authenticated(self, answer: AuthenticationAnswered, now: float) -> None:
        transport_id, request = self._waiting_auth.pop(answer.request_id, (None, None))
        transport = self._transports.get(transport_id) if transport_id else None
        if transport is None or request is None:
            return  # the client went away meanwhile
        if answer.rejected:
            self._respond_json(transport, 401, error_body(
                ErrorCode.UNAUTHENTICATED, answer.reason or "authentication failed"))
        else:
            self._accept(transport, request, answer.user, now)
        self._collect(transport, now)

    def _accept(self, transport: _Transport, request: RequestReceived, user: User | None,
                now: float) -> None:
        limits = self.config.hub.limits
        per_user = limits.max_connections_per_user
        if user is not None and per_user is not None and not limits.replace_oldest \
                and self.hub.connection_count(user.id) >= per_user:
            self._refused_connections["user"] += 1
            self._respond_json(transport, 429, error_body(
                ErrorCode.TOO_MANY_CONNECTIONS, f"at most {per_user} connections per user"))
            return
        # the node's route key first: any node knows where to send its commands
        connection_id = ConnectionId(f"{self.route}.{self._new_id()}")
        kind = TransportKind({"/ws": "websocket", "/sse": "sse"}.get(request.path, "polling"))
        # WebSocket keepalive is the protocol's Ping, unless the client asks for the JSON
        # ping the Hub sends (browsers cannot see a Ping: the JS client asks)
        json_ping = kind == "websocket" and request.query.get("heartbeat") == "json"
        opened = ConnectionOpened(connection_id=connection_id, user=user, transport=kind,
                                  peer=self._peer(transport, request),
                                  expects_pong=json_ping)
        if kind == "websocket":
            handshake = transport.framing.take_over()  # type: ignore[union-attr]
            hub = self.config.hub
            framing = WebSocketFraming(
                max_message_bytes=hub.limits.max_message_bytes,
                heartbeat=None if json_ping else hub.heartbeat_interval,
                idle_timeout=hub.effective_idle_timeout, compression=self.config.compression)
            transport.framing = framing
            if not framing.accept(handshake, now=now):
                return
        elif kind == "sse":
            transport.framing.take_over()  # type: ignore[union-attr]
            transport.framing = SseFraming(now=now, extra_headers=self._cors,
                                           heartbeat_interval=self.config.sse_heartbeat_interval,
                                           retry_ms=self.config.sse_retry_ms)
        if kind == "polling":
            session = PollSession(connection_id, now=now,
                                  expires_at=now + self.config.poll_session_timeout)
            self._routes[connection_id] = session
        else:
            transport.connection_id = connection_id
            self._routes[connection_id] = transport
        self.hub.handle(opened, now=now)
        self._run_hub()
        if kind == "sse":
            # EventSource resends the id of the last event with one (WHATWG SSE §9.2.4):
            # "epoch:offset:channel" of a channel with history, so that channel recovers.
            last_epoch, _, rest = request.headers.get("last-event-id", "").partition(":")
            last_offset, _, last_channel = rest.partition(":")
            for channel in filter(None, request.query.get("channels", "").split(",")):
                message: dict[str, JsonValue] = {"type": "subscribe", "channel": channel}
                if channel == last_channel and last_offset.isdigit():
                    message["data"] = {"recover": {"epoch": last_epoch,
                                                   "offset": int(last_offset)}}
                self.hub.handle(MessageReceived(connection_id=connection_id, data=message),
                                now=now)
            self._run_hub()
        if kind == "polling":
            self._answer_poll(transport, self._routes[connection_id], now)  # type: ignore[arg-type]

    # -- the Pusher protocol ----------------------------------------------------------------

    def _pusher_connect(self, transport: _Transport, request: RequestReceived,
                        now: float) -> None:
        """`GET /app/{key}`: a WebSocket that speaks the Pusher protocol, on the Hub like
        any other connection; an unknown key or protocol version is refused with the
        close code that stops pusher-js from retrying (4001, 4007)."""
        peer = self._peer(transport, request)
        if self._refused(transport, self._connect_buckets, (peer or "").rpartition(":")[0], now):
            return
        key = request.path.removeprefix("/app/")
        app = next((a for a in self.config.pusher_apps if a.key == key), None)
        handshake = transport.framing.take_over()  # type: ignore[union-attr]
        framing = WebSocketFraming(max_message_bytes=self.config.hub.limits.max_message_bytes)
        transport.framing = framing
        if not framing.accept(handshake, now=now):
            return
        if app is None or request.query.get("protocol") not in pusher_codec.PROTOCOL_VERSIONS:
            code, reason = ((pusher_codec.PusherClose.APP_NOT_FOUND, f"no app with key {key}")
                            if app is None else
                            (pusher_codec.PusherClose.UNSUPPORTED_PROTOCOL,
                             "unsupported protocol version (7 is supported)"))
            framing.send_encoded(frame_message(pusher_codec.error_frame(code, reason)))
            framing.close(code, reason)
            return
        connection_id = ConnectionId(pusher_codec.socket_id_for(self._new_id()))
        transport.connection_id = connection_id
        transport.pusher = app
        self._routes[connection_id] = transport
        self.hub.handle(ConnectionOpened(connection_id=connection_id, user=None, peer=peer,
                                         transport=TransportKind.PUSHER, expects_pong=True),
                        now=now)
        self._run_hub()

    def _pusher_api(self, transport: _Transport, request: RequestReceived, now: float) -> None:
        """The Pusher HTTP API (`/apps/{id}/…`), rate-limited per `auth_key`."""
        if self._refused(transport, self._api_buckets, request.query.get("auth_key", ""), now):
            return
        status, body = handle_pusher_api(
            self.hub, self.config.pusher_apps, request.method, request.path, request.query,
            request.body, now=now, unix_now=self._epoch.unix_ms_at(now) / 1000,
            max_body_bytes=self.config.hub.limits.max_body_bytes)
        self._run_hub()
        self._respond_json(transport, status, body)

    def _refused_for_pusher(self, transport: _Transport, request: RequestReceived) -> bool:
        """Answer 404 to a `/send` or `/close` naming a Pusher connection (its socket id is
        no secret: the app backend and webhooks see it); whether it did."""
        route = self._routes.get(ConnectionId(request.query.get("connection_id", "")))
        if not isinstance(route, _Transport) or route.pusher is None:
            return False
        self._respond_json(transport, 404, error_body(ErrorCode.UNKNOWN_CONNECTION,
                                                       "unknown or expired connection"))
        return True

    def _pusher_in(self, transport: _Transport, data: str | bytes, now: float) -> None:
        """A frame from a Pusher client: to the Hub as a native message, or answered."""
        connection_id, app = transport.connection_id, transport.pusher
        if connection_id is None or app is None:
            return
        inbound = pusher_codec.decode_frame(app, connection_id, data,
                                      max_bytes=self.config.hub.limits.max_message_bytes)
        reply = inbound.reply
        if inbound.user is not None:
            try:
                self.hub.sign_in(connection_id, replace(
                    inbound.user, id=app.hub_user(inbound.user.id)), now=now)
                transport.pusher_user = inbound.user.id
            except MessageError as error:
                reply = pusher_codec.error_frame(error.code, error.message)
        elif inbound.user_channel is not None:
            channel = pusher_codec.USER_CHANNEL_PREFIX + inbound.user_channel
            reply = (pusher_codec.subscription_succeeded(channel)
                     if inbound.user_channel == transport.pusher_user else
                     pusher_codec.subscription_refused(channel, "not signed in as that user"))
        if reply is not None:
            transport.backlog.push(frame_message(reply))
            self._fanned[transport.id] = None
            return
        if inbound.grant is not None:
            self.hub.grant(connection_id, *inbound.grant)
        if inbound.message is not None:
            self.hub.handle(MessageReceived(connection_id=connection_id, data=inbound.message),
                            now=now)

    def _pusher_frame(self, payload: bytes, user_id: str | None = None) -> bytes:
        """The WebSocket frame of a native payload in the Pusher protocol (empty: none)."""
        self._encodings["pusher"] += 1
        return b"".join(frame_message(f) for f in pusher_codec.encode_payload(payload, user_id))

    def _poll(self, transport: _Transport, request: RequestReceived, now: float) -> None:
        session = self._routes.get(ConnectionId(request.query["connection_id"]))
        if not isinstance(session, PollSession):
            if self._forward(transport, request, now):
                return
            self._respond_json(transport, 404, error_body(ErrorCode.UNKNOWN_CONNECTION,
                                                           "unknown or expired connection"))
            return
        try:
            cursor = int(request.query.get("cursor", "0"))
        except ValueError:
            self._respond_json(transport, 400, error_body(ErrorCode.INVALID_FIELD,
                                                           "cursor must be an integer"))
            return
        session.acknowledge(cursor)
        previous = self._transports.get(session.held) if session.held else None
        if previous is not None:
            self._answer_poll(previous, session, now, empty=True)
        if session.pending or session.closed:
            self._answer_poll(transport, session, now)
        else:
            session.hold(transport.id, now + self.config.poll_timeout)
            transport.holding = session.id
            if transport.reply_to is not None:  # tell the asking node to wait for it
                route, request_id = transport.reply_to
                self._actions.append(BrokerPublish(forwarding.node_topic(route),
                                                   forwarding.encode_held(request_id)))

    def _answer_poll(self, transport: _Transport, session: PollSession, now: float,
                     empty: bool = False) -> None:
        body = session.response_body(empty=empty)
        session.release_hold(now, self.config.poll_session_timeout)
        transport.holding = None
        self._respond(transport, 200, body, [("content-type", _JSON), *self._cors])
        if transport.reply_to is None:
            self._dirty[transport.id] = transport
        if session.closed and not empty:
            self._routes.pop(session.id, None)

    def _sweep_poll(self, session: PollSession, now: float) -> None:
        held = self._transports.get(session.held) if session.held else None
        if held is not None and session.held_until <= now:
            self._answer_poll(held, session, now, empty=True)
        elif held is None and session.expires_at <= now:
            del self._routes[session.id]
            if not session.closed:
                self.hub.handle(ConnectionClosed(connection_id=session.id), now=now)
                self._run_hub()

    def _send(self, transport: _Transport, request: RequestReceived, now: float) -> None:
        if self._refused_for_pusher(transport, request):
            return
        connection_id = ConnectionId(request.query.get("connection_id", ""))
        route = self._routes.get(connection_id)
        if route is None and self._forward(transport, request, now):
            return
        if route is None or (isinstance(route, PollSession) and route.closed):
            self._respond_json(transport, 404, error_body(ErrorCode.UNKNOWN_CONNECTION,
                                                           "unknown or expired connection"))
            return
        try:
            messages = longpoll.parse_send_body(request.body,
                                                self.config.hub.limits.max_body_bytes)
        except MessageError as error:
            status = 413 if error.code == ErrorCode.MESSAGE_TOO_LARGE else 400
            self._respond_json(transport, status, error_body(error.code, error.message))
            return
        for message in messages:
            self.hub.handle(MessageReceived(connection_id=connection_id, data=message), now=now)
        self._run_hub()
        if isinstance(route, PollSession) and route.held is None:
            route.release_hold(now, self.config.poll_session_timeout)
        self._respond_json(transport, 202, {"accepted": len(messages)})

    def _close_request(self, transport: _Transport, request: RequestReceived, now: float) -> None:
        """`POST /close`: an SSE or long-poll client leaves now rather than by timeout."""
        if self._refused_for_pusher(transport, request):
            return
        connection_id = ConnectionId(request.query.get("connection_id", ""))
        route = self._routes.get(connection_id)
        if route is None:
            if not self._forward(transport, request, now):
                self._respond_json(transport, 404, error_body(
                    ErrorCode.UNKNOWN_CONNECTION, "unknown or expired connection"))
            return
        self.hub.disconnect(connection_id, 1000, "closed by the client")
        self._run_hub()
        if isinstance(route, PollSession):
            self._routes.pop(connection_id, None)
            held = self._transports.get(route.held) if route.held else None
            if held is not None:
                self._answer_poll(held, route, now)
        self._respond_json(transport, 200, {"closed": True})

    # -- no sticky sessions: requests for another node's connection (forwarding.py) --------

    def _forward(self, transport: _Transport, request: RequestReceived, now: float) -> bool:
        """Send a request for a connection of another node to that node, and keep the
        client waiting for its answer; False when the connection would be ours."""
        owner = forwarding.owner_route(request.query.get("connection_id", ""))
        if owner is None or owner == self.route or transport.reply_to is not None:
            return False
        request_id = self._new_id()
        self._forwards[request_id] = (transport.id, now + self.config.forward_timeout)
        self._forward_counts["sent"] += 1
        self._actions.append(BrokerPublish(forwarding.node_topic(owner), forwarding.encode_request(
            request_id, self.route, request.method, request.path, request.query, request.body)))
        return True

    def _forward_received(self, data: bytes, now: float) -> None:
        """A request forwarded to us (serve it as if its client were here), or the reply
        to one we forwarded (answer our client with it)."""
        message = forwarding.decode_forwarded(data)
        if isinstance(message, forwarding.ForwardedHeld):  # the owner is there: wait longer
            waiting = self._forwards.get(message.request_id)
            if waiting is not None:
                self._forwards[message.request_id] = (
                    waiting[0], now + self.config.poll_timeout + self.config.forward_timeout)
            return
        if isinstance(message, forwarding.ForwardedReply):
            transport_id, _ = self._forwards.pop(message.request_id, (None, 0.0))
            transport = self._transports.get(transport_id) if transport_id else None
            if transport is not None:  # else the client went away, or it was answered 404
                self._forward_counts["answered"] += 1
                self._respond(transport, message.status, message.body, message.headers)
                self._collect(transport, now)
            return
        if message is None:
            return
        self._forward_counts["served"] += 1
        # a socket-less transport: its answer is published (`_reply`), it never times out
        framing = HttpFraming(max_head_bytes=1, max_body_bytes=0, now=now,
                              request_timeout=math.inf)
        transport = _Transport(TransportId(self._new_id()), framing, None, False,
                               reply_to=(message.reply_route, message.request_id))
        self._transports[transport.id] = transport
        request = RequestReceived(method=message.method, target=message.path,
                                  path=message.path, query=message.query, headers={},
                                  body=message.body, raw_head=b"")
        handler = {"/poll": self._poll, "/send": self._send,
                   "/close": self._close_request}.get(message.path)
        if handler is None or (message.path == "/poll" and "connection_id" not in message.query):
            self._respond_json(transport, 404, error_body(404, f"nothing at {message.path}"))
        else:
            handler(transport, request, now)

    def _reply(self, transport: _Transport, status: int, body: bytes,
               headers: list[tuple[str, str]]) -> None:
        """Answer a forwarded request: publish the response to the node that asked."""
        assert transport.reply_to is not None
        route, request_id = transport.reply_to
        self._transports.pop(transport.id, None)
        self._actions.append(BrokerPublish(forwarding.node_topic(route),
                                           forwarding.encode_reply(request_id, status, headers,
                                                                   body)))

    def _expire_forwards(self, now: float) -> None:
        """Answer 404 (4022) to the clients whose connection's node did not answer in time
        (it is gone, or the broker lost the request or its reply)."""
        expired = [request_id for request_id, (_, deadline) in self._forwards.items()
                   if deadline <= now]
        for request_id in expired:
            transport_id, _ = self._forwards.pop(request_id)
            transport = self._transports.get(transport_id)
            if transport is not None:
                self._forward_counts["expired"] += 1
                self._respond_json(transport, 404, error_body(
                    ErrorCode.UNKNOWN_CONNECTION,
                    "unknown or expired connection (its node did not answer)"))
                self._collect(transport, now)

    # -- Hub actions ---------------------------------------------------------------------

    def _run_hub(self) -> None:
        for action in self.hub.actions():
            match action:
                case Deliver():
                    self._deliver(action)
                case Disconnect():
                    self._disconnect(action)
                case ClientEventSent():
                    found = webhook_event(self.config.pusher_apps, action)
                    if found is not None and self.config.pusher_webhook is not None:
                        self._webhook_events.setdefault(found[0], []).append(found[1])
                case (BrokerPublish() | BrokerSubscribe() | BrokerUnsubscribe() | Authorize()
                      | HistoryAppend() | HistoryRead() | SaveReadPosition()):
                    self._actions.append(action)
                case Notify():
                    for queue in self._webhooks:
                        queue.add(action.events, self._now)
                    if self.config.pusher_webhook is not None:
                        for event in action.events:
                            found = presence_event(self.config.pusher_apps, event)
                            if found is not None:
                                self._webhook_events.setdefault(found[0], []).append(found[1])
        for queue in self._webhooks:
            if (post := queue.take(self._now, self._new_id,
                                   self._epoch.unix_ms_at(self._now))) is not None:
                self._actions.append(PostWebhook(post[0], queue.target, post[1]))

    def _deliver(self, action: Deliver) -> None:
        """Frame once per framing kind (and per deflate window), then one backlog append
        per subscriber."""
        ws_frame = sse_chunk = pusher_frame = None
        #: window bits -> the compressed frame (or the plain one) of this message
        deflated: dict[int, bytes] | None = None
        fanned = self._fanned
        routes = self._routes
        limits = self.config.hub.limits
        max_output_bytes = limits.max_output_bytes
        policy = self._policy(action.channel)
        key = (conflation_key(action.channel, action.payload)
               if policy is SlowConsumerPolicy.LATEST else None)
        for connection_id in action.connection_ids:  # the hot loop of a fan-out
            route = routes.get(connection_id)
            if type(route) is not _Transport:
                if isinstance(route, PollSession):
                    if not route.push(action.payload, limits.max_poll_backlog):
                        self._overflow_poll(route, policy, action.channel)
                    self._polls_to_answer[connection_id] = route
                continue  # a PollSession, or gone
            if route.framing.kind is _WEBSOCKET:
                if route.pusher is not None:
                    if action.channel is None:  # to a user or one connection: its own
                        frame = self._pusher_frame(action.payload, route.pusher_user)
                    elif pusher_frame is None:
                        frame = pusher_frame = self._pusher_frame(action.payload)
                    else:
                        frame = pusher_frame
                    if not frame:
                        continue  # nothing the Pusher protocol says
                elif (deflate := route.framing.deflate) is not None:  # type: ignore[union-attr]
                    # compressed once per window size (or sent plain: short, incompressible)
                    bits = deflate.server_max_window_bits
                    found = deflated.get(bits) if deflated else None
                    if found is None:
                        found = compressed_frame(action.payload, bits)
                        if found is not None:
                            self._encodings["websocket-deflate"] += 1
                        elif ws_frame is None:
                            found = ws_frame = frame_message(action.payload)
                            self._encodings["websocket"] += 1
                        else:
                            found = ws_frame
                        if deflated is None:
                            deflated = {}
                        deflated[bits] = found
                    frame = found
                else:
                    if ws_frame is None:
                        ws_frame = frame_message(action.payload)
                        self._encodings["websocket"] += 1
                    frame = ws_frame
            else:
                if sse_chunk is None:
                    sse_chunk = encode_event(action.event_id, action.payload)
                    self._encodings["sse"] += 1
                frame = sse_chunk
            backlog = route.backlog
            if backlog.bytes > max_output_bytes:  # earlier ones still unread
                if policy is SlowConsumerPolicy.DISCONNECT:
                    self._slow(connection_id)
                    continue
                self._drop_oldest(route, action.channel)
            backlog.push(frame, key)
            fanned[route.id] = None

    def _policy(self, channel: str | None) -> SlowConsumerPolicy:
        policy = self._policies.get(channel)
        if policy is None:
            if len(self._policies) > 10_000:
                self._policies.clear()
            policy = self._policies[channel] = find_policy(self.config.slow_consumers, channel)
        return policy

    def _drop_oldest(self, route: _Transport, channel: str | None) -> None:
        """Make room by dropping the oldest waiting messages (the client is told at drain)."""
        route.backlog.drop_oldest(self.config.hub.limits.max_output_bytes // 2, channel)

    def _gap_notices(self, transport: _Transport) -> list[bytes]:
        """`messages.dropped` per channel, ahead of what survived the drops."""
        gaps, transport.backlog.gaps = transport.backlog.gaps or {}, None
        websocket = transport.framing.kind is FramingKind.WEBSOCKET
        pusher = transport.pusher is not None
        return [self._pusher_frame(notice) if pusher else frame_message(notice) if websocket
                else encode_event(None, notice)
                for notice in (self._dropped_notice(c, n) for c, n in gaps.items())]

    def _overflow_poll(self, session: PollSession, policy: SlowConsumerPolicy,
                       channel: str | None) -> None:
        if policy is SlowConsumerPolicy.DISCONNECT:
            self._slow(session.id)
            return
        dropped = session.drop_oldest(self.config.hub.limits.max_poll_backlog // 2)
        self._dropped_messages += dropped
        session.push_front(self._dropped_notice(channel, dropped))  # at the gap's place

    def _dropped_notice(self, channel: str | None, count: int) -> bytes:
        return Message(type=MessageType.EVENT, channel=channel, event="messages.dropped",
                       data={"count": count}).encode()

    def _slow(self, connection_id: ConnectionId) -> None:
        route = self._routes.get(connection_id)
        if route is None or self.hub.connection(connection_id) is None:
            return  # already closing
        self._slow_consumers += 1
        self.hub.disconnect(connection_id, ErrorCode.SLOW_CONSUMER, "slow consumer")
        if isinstance(route, PollSession):
            route.drop_pending()
            return
        # Drop what it could not read and close now: waiting for its close handshake
        # would keep the buffer (and the socket) for a client that does not read.
        del self._routes[connection_id]
        route.connection_id = None
        route.framing.data_to_send()
        route.backlog.drain()
        route.framing.close(pusher_codec.close_code(ErrorCode.SLOW_CONSUMER)
                            if route.pusher else ErrorCode.SLOW_CONSUMER, "slow consumer")
        self._finish(route, self._now)

    def _disconnect(self, action: Disconnect) -> None:
        route = self._routes.get(action.connection_id)
        if route is None:
            return
        if isinstance(route, PollSession):
            route.close(self._closed_message(action))
            self._polls_to_answer[route.id] = route
            return
        del self._routes[action.connection_id]
        route.connection_id = None
        for frame in route.backlog.drain():  # what was sent before the close goes first
            route.framing.send_encoded(frame)  # type: ignore[union-attr]
        if route.framing.kind is FramingKind.SSE:
            route.framing.send_encoded(encode_event(None, self._closed_message(action)))  # type: ignore[union-attr]
        route.framing.close(pusher_codec.close_code(action.code) if route.pusher else action.code,
                            action.reason)
        self._collect(route, self._now)

    def _closed_message(self, action: Disconnect) -> bytes:
        return Message(type=MessageType.EVENT, event="connection.closed",
                       data={"code": action.code, "reason": action.reason}).encode()

    def _polls(self) -> list[PollSession]:
        return [r for r in self._routes.values() if isinstance(r, PollSession)]

    def _finish_call(self) -> None:
        """Answer the polls that got messages, then one Transmit for the sockets with output;
        the Pusher webhook events of the call, one request per app."""
        self._run_hub()
        if self._webhook_events and self.config.pusher_webhook is not None:
            unix_ms = self._epoch.unix_ms_at(self._now)
            target = self.config.pusher_webhook
            for app, events in self._webhook_events.items():
                request_id = self._new_id()
                self._pusher_posts.add(request_id)
                self._actions.append(PostWebhook(request_id, target, pusher_webhook_request(
                    target, app, events, unix_ms)))
            self._webhook_events = {}
        polls, self._polls_to_answer = self._polls_to_answer, {}
        for session in polls.values():
            held = self._transports.get(session.held) if session.held else None
            if held is not None and (session.pending or session.closed):
                self._answer_poll(held, session, self._now)
        dirty, self._dirty = self._dirty, {}
        ready = self._fanned
        for transport in dirty.values():
            if transport.framing.closed:
                self._finish(transport, self._now)
            else:
                ready[transport.id] = None
        if ready:
            self._fanned = {}
            self._actions.append(Transmit(tuple(ready)))
