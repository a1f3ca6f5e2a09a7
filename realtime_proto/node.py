"""The Node: bytes in, I/O actions out; the one object an adapter drives.

It keeps the adapter's verbs and the pump, and hands each concern to its part: the
front door (`frontdoor.py`: routes and the HTTP API; `admission.py`: authentication and
new connections; `sse.py`), long-polling (`polling.py`), requests for another node's
connection (`forwarder.py`), the fan-out (`fanout.py`), webhooks (`hooks.py`). What they
share is `sockets.Sockets`; a client protocol is a codec (`wire.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import assert_never

from . import forwarding
from .actions import (
    Authorize,
    BrokerPublish,
    BrokerSubscribe,
    BrokerUnsubscribe,
    ClientEventSent,
    Deliver,
    DeliverBundle,
    Disconnect,
    HistoryAppend,
    HistoryRead,
    NodeAction,
    Notify,
    SaveReadPosition,
    Transmit,
)
from .admission import Admission
from .config import Epoch, NodeConfig
from .errors import MessageError
from .events import (
    AuthenticationAnswered,
    EnvelopeReceived,
    HistoryLoaded,
    MessageReceived,
    NodeEvent,
    TransportId,
    WebhookPosted,
)
from .fanout import Fanout
from .forwarder import Forwarder
from .framing import MessageIn, PeerClosed, RequestReceived, Violation
from .framing.http import HttpFraming
from .frontdoor import FrontDoor, Routes
from .gcpause import gc_paused
from .hooks import Webhooks
from .hub import Hub
from .polling import LongPolling
from .pusher.routes import PusherRoutes
from .sockets import Sockets, Transport
from .statistics import NodeStatistics

__all__ = ["Node"]

#: the Hub actions that write to sockets (their order per socket is kept)
_TO_SOCKETS = (Deliver, DeliverBundle, Disconnect)


class Node:
    """Everything between the sockets and the application, for one server process.

    `receive_data`, `receive_eof`, `handle` and `tick` never raise because of what a
    peer or the broker sent. After every call, drain `actions()`; for each socket of a
    `Transmit` pull `data_to_send(transport_id)`; after a `CloseTransport` write what was pulled
    and close the socket. Not thread-safe: one loop drives it.
    """

    def __init__(self, config: NodeConfig, *, new_id: Callable[[], str], epoch: Epoch,
                 jitter: Callable[[], float] = lambda: 0.5) -> None:
        self.hub = Hub(config.hub, new_id=new_id, epoch=epoch)
        self._epoch = epoch
        sockets = self._sockets = Sockets(config, self.hub, new_id=new_id, epoch=epoch)
        sockets.run_hub = self._run_hub
        #: the shared maps under their old names (bench/memprofile.py measures them)
        self._transports = sockets.transports
        self._routes = sockets.routes
        self._fanout = Fanout(sockets)
        self._webhooks = Webhooks(sockets, jitter)
        self._forwarder = Forwarder(sockets)
        self._polling = LongPolling(sockets, self._forwarder.forward)
        self._forwarder.serve = self._polling.serve
        self._admission = Admission(sockets, self._polling)
        routes: list[Routes] = []
        if config.pusher_apps:
            routes.append(PusherRoutes(sockets, self._admission))
        self._front_door = FrontDoor(sockets, self._admission, self._polling,
                                     self.statistics, routes)
        self._bytes_in = 0
        self._bytes_out = 0
        #: this node's route key (the Hub's): the prefix of its connection ids, and its
        #: broker topic
        self.route = self.hub.route
        sockets.actions.append(BrokerSubscribe(forwarding.node_topic(self.route)))
        self._run_hub()

    @property
    def config(self) -> NodeConfig:
        """The node's configuration (replaceable: `ServerBase` turns on its own
        authentication after building the Node)."""
        return self._sockets.config

    @config.setter
    def config(self, config: NodeConfig) -> None:
        self._sockets.config = config

    # -- the adapter's verbs -------------------------------------------------------------

    def open_connection(self, *, now: float, peer: str | None = None,
                        secure: bool = False) -> TransportId:
        """Register a new socket; its id for every later call."""
        transport_id = self._sockets.new_transport_id()
        limits = self.config.hub.limits
        framing = HttpFraming(max_head_bytes=limits.max_head_bytes,
                              max_body_bytes=limits.max_body_bytes, now=now)
        self._transports[transport_id] = Transport(transport_id, framing, peer, secure)
        return transport_id

    @gc_paused
    def receive_data(self, transport_id: TransportId, data: bytes, *, now: float) -> None:
        """Bytes arrived on a socket. Input for a socket the Node closed is ignored (it
        races with the close: `closed` tells).

        Raises:
            LocalProtocolError: `transport_id` was never opened by this Node.
        """
        self._sockets.now = now
        transport = self._transports.get(transport_id)
        if transport is None:
            self._sockets.check_issued(transport_id)
        else:
            self._bytes_in += len(data)
            transport.framing.receive_data(data, now=now)
            self._pump(transport, now)
        self._finish_call()

    @gc_paused
    def receive_eof(self, transport_id: TransportId, *, now: float) -> None:
        """The peer closed its side, or the socket failed (ignored once the Node closed it).

        Raises:
            LocalProtocolError: `transport_id` was never opened by this Node.
        """
        self._sockets.now = now
        transport = self._transports.get(transport_id)
        if transport is None:
            self._sockets.check_issued(transport_id)
        else:
            transport.framing.receive_eof(now=now)
            self._pump(transport, now)
            if transport.id in self._transports:
                self._sockets.finish(transport, now)
        self._finish_call()

    @gc_paused
    def handle(self, event: NodeEvent, *, now: float) -> None:
        """Feed an application, broker or callback event."""
        self._sockets.now = now
        if isinstance(event, AuthenticationAnswered):
            self._admission.authenticated(event, now)
        elif isinstance(event, WebhookPosted):
            self._webhooks.answered(event, now)
        elif isinstance(event, HistoryLoaded) and self._front_door.asked_reads(event.request_id):
            self._front_door.reads_answered(event)
        elif type(event) is EnvelopeReceived and forwarding.is_node_topic(event.topic):
            self._forwarder.received(event.data, now)
        else:
            self.hub.handle(event, now=now)
        self._finish_call()

    @gc_paused
    def tick(self, *, now: float) -> None:
        """Let time pass; call at `next_deadline()`."""
        self._sockets.now = now
        if now >= self.hub.next_deadline():
            for transport in list(self._transports.values()):
                deadline = transport.framing.next_deadline()
                if deadline is not None and deadline <= now:
                    transport.framing.tick(now=now)
                    self._pump(transport, now)
            self._polling.sweep(now)
            self._admission.sweep(now)
            self._forwarder.expire(now)
        self.hub.tick(now=now)
        self._finish_call()

    def next_deadline(self) -> float:
        """When `tick` next has work to do (monotonic seconds)."""
        return self._webhooks.next_deadline(self.hub.next_deadline())

    def actions(self) -> list[NodeAction]:
        """Drain the actions produced so far, including those of calls made on `hub`.

        While a fan-out goes out in chunks, each call after the one that handed out a
        chunk's `Transmit` (`partial`) delivers the next chunk: call it until it is empty."""
        fanout = self._fanout
        while fanout.rest is not None and not self._sockets.fanned:
            fanout.continue_fanout(to_the_end=False)
        self._finish_call()
        sockets = self._sockets
        actions, sockets.actions = sockets.actions, []
        return actions

    def data_to_send(self, transport_id: TransportId) -> list[bytes]:
        """Drain the bytes waiting for one socket (after its `CloseTransport`, its last
        ones once, then nothing).

        Raises:
            LocalProtocolError: `transport_id` was never opened by this Node.
        """
        final_output = self._sockets.final_output
        final = final_output.pop(transport_id, None) if final_output else None
        if final is not None:
            self._bytes_out += sum(map(len, final))
            return final
        transport = self._transports.get(transport_id)
        if transport is None:
            self._sockets.check_issued(transport_id)
            return []
        # the framing's own output (handshake, pongs, heartbeats) first, then messages
        chunks = transport.framing.data_to_send()
        backlog = transport.backlog
        if backlog.gaps:
            chunks += self._fanout.gap_notices(transport)
        if chunks:
            self._bytes_out += sum(map(len, chunks))
        if backlog.bytes:  # the common case of a fan-out: only this
            self._bytes_out += backlog.bytes
            chunks = chunks + backlog.drain() if chunks else backlog.drain()
        return chunks

    def closed(self, transport_id: TransportId) -> bool:
        """Whether the Node has closed this socket (it said so with `CloseTransport`).
        Calls for a closed socket are allowed and do nothing: an adapter's read may race
        with the close.

        Raises:
            LocalProtocolError: `transport_id` was never opened by this Node.
        """
        if transport_id in self._transports:
            return False
        self._sockets.check_issued(transport_id)
        return True

    def shutdown(self, *, now: float, code: int = 1001,
                 reason: str = "server shutting down") -> None:
        """Close every client connection (WebSocket 1001, SSE ended, polls answered)."""
        self._sockets.shutting_down = True
        for connection_id in self.hub.connection_ids():
            self.hub.disconnect(connection_id, code, reason)
        self._run_hub()
        for transport in list(self._transports.values()):
            if transport.connection_id is None and transport.holding is None:
                transport.framing.close(code, reason)
                self._sockets.finish(transport, now)
        self._finish_call()

    def statistics(self) -> NodeStatistics:
        """A snapshot of the counters."""
        transports = self._transports.values()
        sessions = self._polling.sessions()
        return NodeStatistics(
            node_id=self.hub.node_id, runtime=self.config.runtime,
            transports=len(self._transports), poll_sessions=len(sessions),
            held_polls=sum(1 for session in sessions if session.held is not None),
            encodings=dict(self._fanout.encodings), slow_consumers=self._fanout.slow_consumers,
            pusher_webhooks=self._webhooks.pusher_statistics(),
            dropped_messages=self._sockets.dropped_messages + sum(
                t.backlog.dropped for t in transports),
            backlogs={str(t.connection_id): t.backlog.bytes for t in transports
                      if t.backlog.bytes and t.connection_id},
            http_responses=dict(self._sockets.responses), bytes_in=self._bytes_in,
            bytes_out=self._bytes_out, hub=self.hub.statistics(), worker=self.config.worker,
            forwarded=dict(self._forwarder.counts), webhooks=self._webhooks.statistics(),
            refused_connections=dict(self._admission.refused_connections))

    # -- the pump ------------------------------------------------------------------------

    def _pump(self, transport: Transport, now: float) -> None:
        while events := transport.framing.events():
            for event in events:
                match event:
                    case RequestReceived():
                        self._front_door.request(transport, event, now)
                    case MessageIn():
                        self._frame_in(transport, event.data, now)
                    case PeerClosed() | Violation():
                        self._run_hub()  # the answers to the messages before it
                        self._sockets.finish(transport, now)
                        return
                    case _:
                        assert_never(event)
            self._run_hub()
        self._sockets.collect(transport, now)

    def _frame_in(self, transport: Transport, data: str | bytes, now: float) -> None:
        """A frame from a client: decoded by its codec into the Hub's inputs, or answered."""
        connection_id, codec = transport.connection_id, transport.codec
        if connection_id is None or codec is None:
            return
        inbound = codec.decode(connection_id, transport.wire_user, data,
                               max_bytes=self.config.hub.limits.max_message_bytes)
        reply = inbound.reply
        if inbound.user is not None:
            try:
                self.hub.sign_in(connection_id, inbound.user, now=now)
                transport.wire_user = inbound.user_tag
            except MessageError as error:
                reply = codec.error(error.code, error.message)
        if reply is not None:
            transport.backlog.push(reply)
            self._sockets.fanned[transport.id] = None
            return
        if inbound.grant is not None:
            self.hub.grant(connection_id, *inbound.grant)
        if inbound.message is not None:
            self.hub.handle(MessageReceived(connection_id=connection_id, data=inbound.message),
                            now=now)

    def _run_hub(self) -> None:
        """Hand the Hub's actions to their parts (or on to the adapter)."""
        sockets = self._sockets
        actions = self.hub.actions()
        last = None  # the last action that reaches sockets: it may go out in chunks
        if actions:
            if self._fanout.rest is not None:  # more came behind a chunked fan-out: the rest first
                self._fanout.continue_fanout(to_the_end=True)
            if sockets.config.fanout_chunk:
                last = next((a for a in reversed(actions) if type(a) in _TO_SOCKETS), None)
        run: list[Deliver] = []  # messages in a row to the same connections
        for action in actions:
            if type(action) is Deliver and action is not last:
                if run and (action.connection_ids is not run[0].connection_ids
                            or action.channel != run[0].channel):
                    self._deliver_run(run)
                    run = []
                run.append(action)
                continue
            if run:
                self._deliver_run(run)
                run = []
            match action:
                case Deliver():
                    self._fanout.fan_out(action)
                case DeliverBundle():
                    self._fanout.deliver(action.connection_ids, action.channel, action.payloads)
                case Disconnect():
                    self._fanout.disconnect(action)
                case ClientEventSent():
                    self._webhooks.client_event(action, sockets.now)
                case (BrokerPublish() | BrokerSubscribe() | BrokerUnsubscribe() | Authorize()
                      | HistoryAppend() | HistoryRead() | SaveReadPosition()):
                    sockets.actions.append(action)
                case Notify():
                    self._webhooks.notify(action, sockets.now)
                case _:
                    assert_never(action)
        if run:
            self._deliver_run(run)
        self._webhooks.take(sockets.now)

    def _deliver_run(self, run: list[Deliver]) -> None:
        """Messages in a row to the same connections on the same channel, in one pass."""
        self._fanout.deliver(run[0].connection_ids, run[0].channel,
                             [action.payload for action in run],
                             [action.event_id for action in run])

    def _finish_call(self) -> None:
        """Answer the polls that got messages, then one Transmit for the sockets with output."""
        self._run_hub()
        sockets = self._sockets
        self._polling.answer_ready()
        dirty, sockets.dirty = sockets.dirty, {}
        ready = sockets.fanned
        for transport in dirty.values():
            if transport.framing.closed:
                sockets.finish(transport, sockets.now)
            else:
                ready[transport.id] = None
        if ready:
            sockets.fanned = {}
            sockets.actions.append(Transmit(tuple(ready), partial=self._fanout.rest is not None))
