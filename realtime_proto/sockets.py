"""The Node's sockets and connections, and what its parts share: one object each part
holds (the front door, long-polling, forwarding, the fan-out), so no part reaches into
another's state."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from . import forwarding
from .actions import BrokerPublish, CloseTransport, NodeAction
from .backlog import Backlog
from .config import Epoch, NodeConfig
from .errors import LocalProtocolError
from .events import ConnectionClosed, ConnectionId, TransportId
from .framing import FramingKind
from .framing.http import HttpFraming
from .framing.sse import SseFraming
from .framing.websocket import WebSocketFraming
from .hub import Hub
from .longpoll import PollSession
from .message import JsonValue, encode_json
from .wire import WireCodec

__all__ = ["JSON", "Sockets", "Transport"]

JSON = "application/json"


@dataclass(slots=True, eq=False)
class Transport:
    """One socket (or a request another node forwarded to this one)."""

    id: TransportId
    framing: HttpFraming | WebSocketFraming | SseFraming
    peer: str | None
    secure: bool
    #: the Hub connection this socket carries (WebSocket, SSE)
    connection_id: ConnectionId | None = None
    #: the wire format of its connection (None: plain HTTP requests)
    codec: WireCodec | None = None
    #: the codec's name for the user a frame signed it in as (`HubInputs.user_tag`)
    wire_user: str | None = None
    #: message frames waiting since the adapter last pulled (bounded by the policies)
    backlog: Backlog = field(default_factory=Backlog)
    #: the long-poll connection whose poll this socket holds
    holding: ConnectionId | None = None
    #: (route, request id) of the node that forwarded this request: no socket here, the
    #: answer goes back over the broker
    reply_to: tuple[str, str] | None = None


class Sockets:
    """The sockets, where each Hub connection is carried, and the output of the call."""

    def __init__(self, config: NodeConfig, hub: Hub, *, new_id: Callable[[], str],
                 epoch: Epoch) -> None:
        self.config = config
        self.hub = hub
        self.new_id = new_id
        self.epoch = epoch
        #: the time of the call being served
        self.now = epoch.monotonic_at
        self.transports: dict[TransportId, Transport] = {}
        #: where each Hub connection is: its socket, or its long-poll session
        self.routes: dict[ConnectionId, Transport | PollSession] = {}
        self.actions: list[NodeAction] = []
        #: the last bytes of closed sockets, for the adapter's `data_to_send`
        self.final_output: dict[TransportId, list[bytes]] = {}
        #: sockets whose framing did something (closed, maybe) since the last Transmit
        self.dirty: dict[TransportId, Transport] = {}
        #: sockets that got message frames since the last Transmit (in delivery order)
        self.fanned: dict[TransportId, None] = {}
        self.polls_to_answer: dict[ConnectionId, PollSession] = {}
        self.responses: Counter[int] = Counter()
        #: messages dropped from the backlogs of sockets now closed, and from polls
        self.dropped_messages = 0
        self.shutting_down = False
        origin = config.cors_origin
        #: the same for every answer: built once, shared by every connection
        self.cors = (("access-control-allow-origin", origin),) if origin else ()
        #: the Node's: hand the Hub's pending actions to their parts
        self.run_hub: Callable[[], None] = lambda: None
        #: transport ids issued so far (the last part of each id)
        self._issued = 0

    def new_transport_id(self) -> TransportId:
        """A transport id that says it was issued here: "random#n"."""
        self._issued += 1
        return TransportId(f"{self.new_id()}#{self._issued}")

    def issued(self, transport_id: TransportId) -> bool:
        """Whether this node issued the id (it may have closed its socket since)."""
        _, mark, number = transport_id.rpartition("#")
        return bool(mark) and number.isdigit() and 0 < int(number) <= self._issued

    def check_issued(self, transport_id: TransportId) -> None:
        """Raise for an id this node never issued (one it closed is fine).

        Raises:
            LocalProtocolError: the id was never issued by this node.
        """
        if not self.issued(transport_id):
            raise LocalProtocolError(f"unknown transport id {transport_id!r}: this Node "
                                     "never opened it")

    def respond(self, transport: Transport, status: int, body: bytes,
                headers: list[tuple[str, str]], *, keep_alive: bool = True) -> None:
        """Answer an HTTP request (over the broker when another node forwarded it);
        without `keep_alive`, the connection's last."""
        if transport.reply_to is not None:
            route, request_id = transport.reply_to
            self.transports.pop(transport.id, None)
            self.actions.append(BrokerPublish(forwarding.node_topic(route),
                                              forwarding.encode_reply(request_id, status,
                                                                      headers, body)))
            return
        self.responses[status] += 1
        # once shutting down, every answer is the connection's last (Connection: close)
        transport.framing.respond(status, headers, body, now=self.now,  # type: ignore[union-attr]
                                  keep_alive=keep_alive and not self.shutting_down)

    def respond_json(self, transport: Transport, status: int, body: JsonValue) -> None:
        self.respond(transport, status, encode_json(body), [("content-type", JSON), *self.cors])

    def collect(self, transport: Transport, now: float) -> None:
        """A socket did something: finish it if it closed, else flush it at the call's end."""
        if transport.id not in self.transports:
            return
        if transport.framing.closed:
            self.finish(transport, now)
        else:
            self.dirty[transport.id] = transport

    def finish(self, transport: Transport, now: float) -> None:
        """Forget a socket: its Hub connection closes, its held poll is released."""
        self.transports.pop(transport.id, None)
        self.dirty.pop(transport.id, None)
        self.fanned.pop(transport.id, None)
        self.dropped_messages += transport.backlog.dropped
        connection_id = transport.connection_id
        if connection_id is not None and self.routes.get(connection_id) is transport:
            del self.routes[connection_id]
            self.hub.handle(ConnectionClosed(connection_id=connection_id), now=now)
            self.run_hub()
        if transport.holding is not None:
            session = self.routes.get(transport.holding)
            if isinstance(session, PollSession):
                session.release_hold(now, self.config.poll_session_timeout)
        if transport.framing.kind is FramingKind.WEBSOCKET and transport.backlog.bytes:
            # answers to what came before a protocol violation, ahead of the Close
            for frame in transport.backlog.drain():
                transport.framing.send_encoded(frame)  # type: ignore[union-attr]
        self.final_output[transport.id] = transport.framing.data_to_send()
        self.actions.append(CloseTransport(transport.id))
