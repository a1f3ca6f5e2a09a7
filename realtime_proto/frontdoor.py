"""The front door: every HTTP request a socket brings, routed to the part that answers
it; the HTTP API for backends (`api.py`), health, readiness, metrics and static files.

Routes of another protocol (the Pusher ones, `pusher/routes.py`) come first, as
`Routes` objects, so adding a protocol adds a route object, not a branch here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from .actions import HistoryRead
from .admission import Admission
from .api import bearer_token, error_body, handle_api, reads_channel
from .config import NodeConfig, StaticFile
from .events import HistoryLoaded, TransportId
from .framing import RequestReceived
from .message import JsonValue, encode_json
from .metrics import render_metrics
from .polling import LongPolling
from .sockets import JSON, Sockets, Transport
from .statistics import NodeStatistics

__all__ = ["FrontDoor", "Routes"]

#: the one method of each fixed endpoint: any other is answered 405 with Allow (RFC 9110 §15.5.6)
_ALLOWED_METHODS = {"/ws": "GET", "/sse": "GET", "/poll": "GET", "/health": "GET",
                    "/metrics": "GET", "/send": "POST", "/close": "POST"}


class Routes(Protocol):
    """Routes of their own (another protocol's), asked before the native ones."""

    def serve(self, transport: Transport, request: RequestReceived, now: float) -> bool:
        """Answer the request if it is one of these routes; whether it was."""


class FrontDoor:
    """The HTTP requests of one node."""

    def __init__(self, sockets: Sockets, admission: Admission, polling: LongPolling,
                 statistics: Callable[[], NodeStatistics], routes: Sequence[Routes] = ()
                 ) -> None:
        self._sockets = sockets
        self._admission = admission
        self._polling = polling
        self._statistics = statistics
        self._routes = routes
        #: `GET …/reads` requests waiting for the shared store: request id -> (socket, channel)
        self._reads_asked: dict[str, tuple[TransportId, str]] = {}


    @property
    def _config(self) -> NodeConfig:
        return self._sockets.config  # read each time: the Node's may be replaced
    def request(self, transport: Transport, request: RequestReceived, now: float) -> None:
        """Answer one request (or hold it, or turn its socket into a connection)."""
        sockets = self._sockets
        path, method = request.path, request.method
        if method == "OPTIONS":
            sockets.respond(transport, 204, b"", [
                *sockets.cors, ("access-control-allow-methods", "GET, POST, OPTIONS"),
                ("access-control-allow-headers", "authorization, content-type"),
                ("access-control-max-age", "600")])
        elif any(routes.serve(transport, request, now) for routes in self._routes):
            pass
        elif path.startswith("/api/"):
            self._api(transport, request, now)
        elif path == "/health" and method == "GET":
            sockets.respond_json(transport, 200, self._health())
        elif path == "/ready" and method == "GET":
            ready = sockets.hub.statistics().broker_connected and not sockets.shutting_down
            sockets.respond_json(transport, 200 if ready else 503, self._health() | {
                "ready": ready, "draining": sockets.shutting_down})
        elif path == "/metrics" and method == "GET":
            sockets.respond(transport, 200, render_metrics(self._statistics()),
                            [("content-type", "text/plain; version=0.0.4")])
        elif (path in ("/ws", "/sse") and method == "GET") or (
                path == "/poll" and method == "GET" and "connection_id" not in request.query):
            self._admission.connect(transport, request, now)
        elif path == "/poll" and method == "GET":
            self._polling.poll(transport, request, now)
        elif path == "/send" and method == "POST":
            self._polling.send(transport, request, now)
        elif path == "/close" and method == "POST":
            self._polling.close_request(transport, request, now)
        elif method in ("GET", "HEAD") and (static := self._static(path)) is not None:
            # HttpFraming leaves the body out of a HEAD answer and keeps its length
            sockets.respond(transport, 200, static.body, [
                ("content-type", static.content_type), ("cache-control", "no-cache")])
        elif (allowed := _ALLOWED_METHODS.get(path)) is not None:
            sockets.respond(transport, 405, encode_json(error_body(
                405, f"{path} takes {allowed} only")), [
                ("content-type", JSON), ("allow", allowed), *sockets.cors])
        else:
            sockets.respond_json(transport, 404, error_body(404, f"nothing at {path}"))

    def _api(self, transport: Transport, request: RequestReceived, now: float) -> None:
        """`/api/…` (`api.py`); the reads of a channel whose history is shared wait for
        the store, which has every node's."""
        sockets = self._sockets
        method, path = request.method, request.path
        if self._admission.refused_api(transport, bearer_token(request.headers) or "", now):
            return
        status, body = handle_api(sockets.hub, self._config.api_key, method, path,
                                  request.headers, request.body, now=now,
                                  max_body_bytes=self._config.hub.limits.max_body_bytes,
                                  statistics=self._stats_json)
        sockets.run_hub()
        channel = reads_channel(method, path) if status == 200 else None
        rule = sockets.hub.shared_history_rule(channel) if channel is not None else None
        if channel is not None and rule is not None:
            request_id = sockets.new_id()
            self._reads_asked[request_id] = (transport.id, channel)
            sockets.actions.append(HistoryRead(request_id=request_id, channel=channel,
                                               since=None, limit=0, ttl=rule.ttl))
            return
        sockets.respond_json(transport, status, body)

    def asked_reads(self, request_id: str) -> bool:
        """Whether a `HistoryLoaded` answers a `GET /api/channels/{channel}/reads`."""
        return request_id in self._reads_asked

    def reads_answered(self, answer: HistoryLoaded) -> None:
        """Answer `GET /api/channels/{channel}/reads` with what the store keeps too."""
        sockets = self._sockets
        transport_id, channel = self._reads_asked.pop(answer.request_id)
        sockets.hub.remember_reads(channel, answer.reads)
        transport = sockets.transports.get(transport_id)
        if transport is not None:
            sockets.respond_json(transport, 200, {"reads": sockets.hub.reads(channel)})
            sockets.collect(transport, sockets.now)

    def _static(self, path: str) -> StaticFile | None:
        files = self._config.static_files
        return files.get(path) or (files.get(path + "index.html") if path.endswith("/") else None)

    def _stats_json(self) -> JsonValue:
        """`GET /api/stats`: the counters the admin page shows."""
        stats = self._statistics()
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
        hub = self._sockets.hub
        stats = hub.statistics()
        driver = stats.broker_driver
        broker = ("disconnected" if not stats.broker_connected
                  else "stalled" if driver.stalled else "connected")
        history = driver.history_available
        health: dict[str, JsonValue] = {
            "status": "ok" if broker == "connected" and history else "degraded",
            "node_id": hub.node_id, "runtime": self._config.runtime,
            "broker": broker,
            "history": "available" if history else "unavailable",
            "connections": sum(stats.connections.values())}
        if self._config.worker is not None:
            health["worker"] = self._config.worker
        return health
