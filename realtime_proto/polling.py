"""Long-polling on the Node: the sessions (`longpoll.PollSession`) behind `GET /poll`,
`POST /send` and `POST /close`, their held requests and their expiry.

`/send` and `/close` also serve SSE and native WebSocket connections: SSE has no
upstream of its own. A request naming another node's connection is forwarded to it
(`forwarder.py`)."""

from __future__ import annotations

from collections.abc import Callable

from . import forwarding, longpoll
from .actions import BrokerPublish
from .api import error_body
from .config import NodeConfig
from .errors import ErrorCode, MessageError
from .events import ConnectionClosed, ConnectionId, MessageReceived
from .framing import RequestReceived
from .longpoll import PollSession
from .sockets import JSON, Sockets, Transport

__all__ = ["LongPolling"]

#: forwards a request to the node that holds its connection; False when none would
Forward = Callable[[Transport, RequestReceived, float], bool]


class LongPolling:
    """The long-poll sessions of one node, and the HTTP calls of the clients without a
    WebSocket."""

    def __init__(self, sockets: Sockets, forward: Forward) -> None:
        self._sockets = sockets
        self._forward = forward


    @property
    def _config(self) -> NodeConfig:
        return self._sockets.config  # read each time: the Node's may be replaced
    def sessions(self) -> list[PollSession]:
        """The open sessions."""
        return [r for r in self._sockets.routes.values() if isinstance(r, PollSession)]

    def open(self, connection_id: ConnectionId, now: float) -> PollSession:
        """A new session (the caller opens its Hub connection, then answers its request)."""
        session = PollSession(connection_id, now=now,
                              expires_at=now + self._config.poll_session_timeout)
        self._sockets.routes[connection_id] = session
        return session

    def serve(self, transport: Transport, request: RequestReceived, now: float) -> None:
        """A request another node forwarded: `/poll`, `/send` or `/close` (else 404)."""
        handler = {"/poll": self.poll, "/send": self.send,
                   "/close": self.close_request}.get(request.path)
        if handler is None or (request.path == "/poll" and "connection_id" not in request.query):
            self._sockets.respond_json(transport, 404, error_body(
                404, f"nothing at {request.path}"))
        else:
            handler(transport, request, now)

    def poll(self, transport: Transport, request: RequestReceived, now: float) -> None:
        """`GET /poll?connection_id=…&cursor=…`: answered now, or held until messages come."""
        sockets = self._sockets
        session = sockets.routes.get(ConnectionId(request.query["connection_id"]))
        if not isinstance(session, PollSession):
            if not self._forward(transport, request, now):
                self._unknown(transport)
            return
        try:
            cursor = int(request.query.get("cursor", "0"))
        except ValueError:
            sockets.respond_json(transport, 400, error_body(ErrorCode.INVALID_FIELD,
                                                            "cursor must be an integer"))
            return
        session.acknowledge(cursor)
        previous = sockets.transports.get(session.held) if session.held else None
        if previous is not None:
            self.answer(previous, session, now, empty=True)
        if session.pending or session.closed:
            self.answer(transport, session, now)
        else:
            session.hold(transport.id, now + self._config.poll_timeout)
            transport.holding = session.id
            if transport.reply_to is not None:  # tell the asking node to wait for it
                route, request_id = transport.reply_to
                sockets.actions.append(BrokerPublish(forwarding.node_topic(route),
                                                     forwarding.encode_held(request_id)))

    def answer(self, transport: Transport, session: PollSession, now: float,
               empty: bool = False) -> None:
        """Answer a poll with what is queued past its cursor (or nothing)."""
        sockets = self._sockets
        body = session.response_body(empty=empty)
        session.release_hold(now, self._config.poll_session_timeout)
        transport.holding = None
        sockets.respond(transport, 200, body, [("content-type", JSON), *sockets.cors])
        if transport.reply_to is None:
            sockets.dirty[transport.id] = transport
        if session.closed and not empty:
            sockets.routes.pop(session.id, None)

    def answer_ready(self) -> None:
        """Answer the held polls of the sessions that got messages (or closed) in this call."""
        sockets = self._sockets
        polls, sockets.polls_to_answer = sockets.polls_to_answer, {}
        for session in polls.values():
            held = sockets.transports.get(session.held) if session.held else None
            if held is not None and (session.pending or session.closed):
                self.answer(held, session, sockets.now)

    def sweep(self, now: float) -> None:
        """Answer the polls held too long, and close the sessions no poll came for."""
        sockets = self._sockets
        for session in self.sessions():
            held = sockets.transports.get(session.held) if session.held else None
            if held is not None and session.held_until <= now:
                self.answer(held, session, now, empty=True)
            elif held is None and session.expires_at <= now:
                del sockets.routes[session.id]
                if not session.closed:
                    sockets.hub.handle(ConnectionClosed(connection_id=session.id), now=now)
                    sockets.run_hub()

    def send(self, transport: Transport, request: RequestReceived, now: float) -> None:
        """`POST /send?connection_id=…`: one message or an array of them, for the Hub."""
        sockets = self._sockets
        found = self._command_route(transport, request, now)
        if found is None:
            return
        connection_id, route = found
        if isinstance(route, PollSession) and route.closed:
            self._unknown(transport)
            return
        try:
            messages = longpoll.parse_send_body(request.body,
                                                self._config.hub.limits.max_body_bytes)
        except MessageError as error:
            status = 413 if error.code == ErrorCode.MESSAGE_TOO_LARGE else 400
            sockets.respond_json(transport, status, error_body(error.code, error.message))
            return
        for message in messages:
            sockets.hub.handle(MessageReceived(connection_id=connection_id, data=message),
                               now=now)
        sockets.run_hub()
        if isinstance(route, PollSession) and route.held is None:
            route.release_hold(now, self._config.poll_session_timeout)
        sockets.respond_json(transport, 202, {"accepted": len(messages)})

    def close_request(self, transport: Transport, request: RequestReceived, now: float) -> None:
        """`POST /close`: an SSE or long-poll client leaves now rather than by timeout."""
        sockets = self._sockets
        found = self._command_route(transport, request, now)
        if found is None:
            return
        connection_id, route = found
        sockets.hub.disconnect(connection_id, 1000, "closed by the client")
        sockets.run_hub()
        if isinstance(route, PollSession):
            sockets.routes.pop(connection_id, None)
            held = sockets.transports.get(route.held) if route.held else None
            if held is not None:
                self.answer(held, route, now)
        sockets.respond_json(transport, 200, {"closed": True})

    def _command_route(self, transport: Transport, request: RequestReceived, now: float
                       ) -> tuple[ConnectionId, Transport | PollSession] | None:
        """The connection a `/send` or `/close` names, when it is on this node and takes
        native HTTP commands; otherwise None, the request answered: forwarded to the node
        that holds the connection, or 404 (unknown, expired, or a codec without native
        HTTP commands: a Pusher socket id is no secret)."""
        connection_id = ConnectionId(request.query.get("connection_id", ""))
        route = self._sockets.routes.get(connection_id)
        if route is None and self._forward(transport, request, now):
            return None
        if route is None or (isinstance(route, Transport) and route.codec is not None
                             and not route.codec.http_commands):
            self._unknown(transport)
            return None
        return connection_id, route

    def _unknown(self, transport: Transport) -> None:
        self._sockets.respond_json(transport, 404, error_body(ErrorCode.UNKNOWN_CONNECTION,
                                                              "unknown or expired connection"))
