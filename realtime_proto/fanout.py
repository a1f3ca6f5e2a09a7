"""The fan-out: the Hub's deliveries into every subscriber's backlog, encoded once per
wire codec (`wire.py`), with the slow-consumer policies; and the closes the Hub asks for."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from .actions import Deliver, Disconnect
from .backlog import SlowConsumerPolicy, conflation_key, find_policy
from .config import NodeConfig
from .errors import ErrorCode
from .events import ConnectionId
from .longpoll import PollSession
from .message import Message, MessageType
from .sockets import Sockets, Transport
from .wire import WireCodec

__all__ = ["Fanout", "closed_message"]


class Fanout:
    """Deliveries and disconnections of the Hub, onto the sockets and polls of `sockets`."""

    def __init__(self, sockets: Sockets) -> None:
        self._sockets = sockets
        #: encodings made, by codec name
        self.encodings: Counter[str] = Counter()
        #: connections closed for not reading fast enough
        self.slow_consumers = 0
        self._policies: dict[str | None, SlowConsumerPolicy] = {}
        #: the fan-out going out in chunks (`NodeConfig.fanout_chunk`): its action and the
        #: index of the first subscriber not yet reached
        self.rest: tuple[Deliver, int] | None = None

    @property
    def _config(self) -> NodeConfig:
        return self._sockets.config  # read each time: the Node's may be replaced

    def fan_out(self, action: Deliver) -> None:
        """Deliver the last of a call's actions that reach sockets (chunks are on): in
        chunks when it is large and alone (nothing queued yet in this call), so that the
        adapter can write the first subscribers' sockets before the last ones are reached.
        Under load, messages come several to a call and go out whole, coalesced per socket."""
        chunk = self._config.fanout_chunk
        connection_ids = action.connection_ids
        if self.rest is None and not self._sockets.fanned and len(connection_ids) > chunk:
            self.rest = (action, chunk)
            connection_ids = connection_ids[:chunk]
        self.deliver(connection_ids, action.channel, (action.payload,), (action.event_id,))

    def continue_fanout(self, *, to_the_end: bool) -> None:
        """Deliver the next chunk of the fan-out going out in chunks, or all that is left."""
        assert self.rest is not None
        action, start = self.rest
        connection_ids = action.connection_ids
        end = len(connection_ids) if to_the_end else start + self._config.fanout_chunk
        # set first: a callback inside `deliver` (a slow consumer's close) may finish it
        self.rest = (action, end) if end < len(connection_ids) else None
        self.deliver(connection_ids[start:end], action.channel, (action.payload,),
                     (action.event_id,))

    def deliver(self, connection_ids: Sequence[ConnectionId], channel: str | None,
                payloads: Sequence[bytes],
                event_ids: Sequence[str | None] | None = None) -> None:
        """Deliver messages to the same connections on the same channel, in order: each
        encoded once per codec, then one backlog append per subscriber. `event_ids`, when
        given, has one SSE event id (or None) per payload."""
        sockets = self._sockets
        fanned = sockets.fanned
        routes = sockets.routes
        limits = sockets.config.hub.limits  # not `_config`: a property read per message
        max_output_bytes = limits.max_output_bytes
        direct = channel is None
        policy = self._policy(channel)
        latest = policy is SlowConsumerPolicy.LATEST
        for index, payload in enumerate(payloads):
            event_id = event_ids[index] if event_ids else None
            #: codec -> this message's bytes in it; with no channel (to one connection or
            #: one user) the bytes may name the user: (codec, user) -> bytes, no shortcut
            frames: dict[object, bytes] = {}
            last_codec: WireCodec | None = None
            last_frame = b""
            key = conflation_key(channel, payload) if latest else None
            for connection_id in connection_ids:  # the hot loop of a fan-out
                route = routes.get(connection_id)
                if type(route) is not Transport:
                    if isinstance(route, PollSession):
                        if not route.push(payload, limits.max_poll_backlog):
                            self._overflow_poll(route, policy, channel)
                        sockets.polls_to_answer[connection_id] = route
                    continue  # a PollSession, or gone
                codec = route.codec
                if codec is last_codec:
                    frame = last_frame
                else:
                    assert codec is not None
                    user = route.wire_user if direct else None
                    cache_key = codec if user is None else (codec, user)
                    found = frames.get(cache_key)
                    if found is None:
                        found = frames[cache_key] = self._encode(codec, payload, event_id,
                                                                 user, frames)
                    frame = found
                    if not direct:
                        last_codec, last_frame = codec, frame
                if not frame:
                    continue  # nothing this protocol says
                backlog = route.backlog
                if backlog.bytes > max_output_bytes:  # earlier ones still unread
                    if policy is SlowConsumerPolicy.DISCONNECT:
                        self._slow(connection_id)
                        continue
                    backlog.drop_oldest(max_output_bytes // 2, channel)
                backlog.push(frame, key)
                fanned[route.id] = None

    def _encode(self, codec: WireCodec, payload: bytes, event_id: str | None,
                user: str | None, frames: dict[object, bytes]) -> bytes:
        """One codec's bytes of a message (its fallback's when it declines), counted."""
        frame = codec.encode(payload, event_id, user)
        if frame is not None:
            self.encodings[codec.name] += 1
            return frame
        fallback = codec.fallback
        assert fallback is not None, f"{codec.name} declined with no fallback"
        cache_key = fallback if user is None else (fallback, user)
        found = frames.get(cache_key)
        if found is None:
            found = frames[cache_key] = self._encode(fallback, payload, event_id, user, frames)
        return found

    def _policy(self, channel: str | None) -> SlowConsumerPolicy:
        policy = self._policies.get(channel)
        if policy is None:
            if len(self._policies) > 10_000:
                self._policies.clear()
            policy = self._policies[channel] = find_policy(self._config.slow_consumers, channel)
        return policy

    def gap_notices(self, transport: Transport) -> list[bytes]:
        """`messages.dropped` per channel, ahead of what survived the drops."""
        gaps, transport.backlog.gaps = transport.backlog.gaps or {}, None
        codec = transport.codec
        assert codec is not None
        return [codec.notice(_dropped_notice(c, n)) for c, n in gaps.items()]

    def _overflow_poll(self, session: PollSession, policy: SlowConsumerPolicy,
                       channel: str | None) -> None:
        if policy is SlowConsumerPolicy.DISCONNECT:
            self._slow(session.id)
            return
        dropped = session.drop_oldest(self._config.hub.limits.max_poll_backlog // 2)
        self._sockets.dropped_messages += dropped
        session.push_front(_dropped_notice(channel, dropped))  # at the gap's place

    def _slow(self, connection_id: ConnectionId) -> None:
        sockets = self._sockets
        route = sockets.routes.get(connection_id)
        if route is None or sockets.hub.connection(connection_id) is None:
            return  # already closing
        self.slow_consumers += 1
        sockets.hub.disconnect(connection_id, ErrorCode.SLOW_CONSUMER, "slow consumer")
        if isinstance(route, PollSession):
            route.drop_pending()
            return
        # Drop what it could not read and close now: waiting for its close handshake
        # would keep the buffer (and the socket) for a client that does not read.
        del sockets.routes[connection_id]
        route.connection_id = None
        route.framing.data_to_send()
        route.backlog.drain()
        assert route.codec is not None
        route.framing.close(route.codec.close_code(ErrorCode.SLOW_CONSUMER), "slow consumer")
        sockets.finish(route, sockets.now)

    def disconnect(self, action: Disconnect) -> None:
        """Close a connection as the Hub asks: what was sent before goes first."""
        sockets = self._sockets
        route = sockets.routes.get(action.connection_id)
        if route is None:
            return
        if isinstance(route, PollSession):
            route.close(closed_message(action.code, action.reason))
            sockets.polls_to_answer[route.id] = route
            return
        del sockets.routes[action.connection_id]
        route.connection_id = None
        for frame in route.backlog.drain():  # what was sent before the close goes first
            route.framing.send_encoded(frame)  # type: ignore[union-attr]
        assert route.codec is not None
        if goodbye := route.codec.goodbye(closed_message(action.code, action.reason)):
            route.framing.send_encoded(goodbye)  # type: ignore[union-attr]
        route.framing.close(route.codec.close_code(action.code), action.reason)
        sockets.collect(route, sockets.now)


def closed_message(code: int, reason: str) -> bytes:
    """The native `connection.closed` message."""
    return Message(type=MessageType.EVENT, event="connection.closed",
                   data={"code": code, "reason": reason}).encode()


def _dropped_notice(channel: str | None, count: int) -> bytes:
    return Message(type=MessageType.EVENT, channel=channel, event="messages.dropped",
                   data={"count": count}).encode()
