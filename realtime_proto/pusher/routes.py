"""The Pusher front-door routes: the WebSocket at `/app/{key}` and the HTTP API under
`/apps/{id}/` (and `/users/…`, where the Python SDK posts `terminate_connections`)."""

from __future__ import annotations

from ..admission import Admission
from ..events import ConnectionId, ConnectionOpened, TransportKind
from ..framing import RequestReceived
from ..framing.websocket import WebSocketFraming, frame_message
from ..sockets import Sockets, Transport
from . import codec
from .api import handle_pusher_api
from .wire import PusherCodec

__all__ = ["PusherRoutes"]


class PusherRoutes:
    """The routes of the configured Pusher apps (a `frontdoor.Routes`)."""

    def __init__(self, sockets: Sockets, admission: Admission) -> None:
        self._sockets = sockets
        self._admission = admission
        self._apps = sockets.config.pusher_apps
        #: the wire codec of each app, by key
        self._codecs: dict[str, PusherCodec] = {}
        for app in self._apps:  # the first app of a key, as the SDKs would find it
            self._codecs.setdefault(app.key, PusherCodec(app))

    def serve(self, transport: Transport, request: RequestReceived, now: float) -> bool:
        path, method = request.path, request.method
        if path.startswith("/apps/") or (path.startswith("/users/") and method == "POST"):
            self._api(transport, request, now)
        elif path.startswith("/app/") and method == "GET":
            self._connect(transport, request, now)
        else:
            return False
        return True

    def _connect(self, transport: Transport, request: RequestReceived, now: float) -> None:
        """`GET /app/{key}`: a WebSocket that speaks the Pusher protocol, on the Hub like
        any other connection; an unknown key or protocol version is refused with the
        close code that stops pusher-js from retrying (4001, 4007)."""
        sockets = self._sockets
        peer = self._admission.peer(transport, request)
        if self._admission.overloaded(transport, now) or self._admission.refused_connect(
                transport, peer, now):
            return
        key = request.path.removeprefix("/app/")
        wire = self._codecs.get(key)
        handshake = transport.framing.take_over()  # type: ignore[union-attr]
        framing = WebSocketFraming(max_message_bytes=sockets.config.hub.limits.max_message_bytes)
        transport.framing = framing
        if not framing.accept(handshake, now=now):
            return
        if wire is None or request.query.get("protocol") not in codec.PROTOCOL_VERSIONS:
            code, reason = ((codec.PusherClose.APP_NOT_FOUND, f"no app with key {key}")
                            if wire is None else
                            (codec.PusherClose.UNSUPPORTED_PROTOCOL,
                             "unsupported protocol version (7 is supported)"))
            framing.send_encoded(frame_message(codec.error_frame(code, reason)))
            framing.close(code, reason)
            return
        connection_id = ConnectionId(codec.socket_id_for(sockets.new_id()))
        transport.connection_id = connection_id
        transport.codec = wire
        sockets.routes[connection_id] = transport
        opened = ConnectionOpened(connection_id=connection_id, user=None, peer=peer,
                                  transport=TransportKind.PUSHER, expects_pong=True)
        sockets.hub.handle(opened, now=now)
        sockets.run_hub()

    def _api(self, transport: Transport, request: RequestReceived, now: float) -> None:
        """The Pusher HTTP API (`/apps/{id}/…`), rate-limited per `auth_key`."""
        sockets = self._sockets
        if self._admission.refused_api(transport, request.query.get("auth_key", ""), now):
            return
        status, body = handle_pusher_api(
            sockets.hub, self._apps, request.method, request.path, request.query,
            request.body, now=now, unix_now=sockets.epoch.unix_ms_at(now) / 1000,
            max_body_bytes=sockets.config.hub.limits.max_body_bytes)
        sockets.run_hub()
        sockets.respond_json(transport, status, body)
