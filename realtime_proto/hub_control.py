"""The application's commands on connections and users, on whichever node holds them:
send to one connection, disconnect, revoke subscriptions, terminate a user."""

from __future__ import annotations

from typing import Any

from .channels import validate_channel_name
from .cluster import ClusterState, user_topic
from .envelope import EnvelopeKind
from .errors import ErrorCode, MessageError
from .events import ConnectionId
from .hub_connections import Connections
from .hub_outbox import Outbox
from .hub_subscriptions import Subscriptions
from .message import JsonValue, MessageType, decode_json, encode_json

__all__ = ["MAX_REASON_BYTES", "Control", "is_termination"]

#: the longest close reason a WebSocket close frame carries (RFC 6455 §5.5: 125 bytes
#: of payload, 2 of them the code)
MAX_REASON_BYTES = 123
#: how a user topic carries `terminate_user` to the other nodes: never a message's start
_TERMINATE = b'{"terminate":'


def is_termination(payload: bytes) -> bool:
    """Whether a payload on a user topic is another node's `terminate_user`."""
    return payload.startswith(_TERMINATE)


class Control:
    """Carries out an application command here, or sends it to the node that can (a
    control message `ClusterState.command` addresses), and carries out what other nodes
    forward."""

    def __init__(self, out: Outbox, cluster: ClusterState, connections: Connections,
                 subscriptions: Subscriptions) -> None:
        self._out = out
        self._cluster = cluster
        self._connections = connections
        self._subscriptions = subscriptions
        #: messages sent to users (`send_to_user`)
        self.published = 0

    def send(self, connection_id: ConnectionId, event: str, data: JsonValue,
             now: float) -> str | None:
        """`Hub.send`: the message id, or None when no node can hold that connection."""
        out = self._out
        local = connection_id in out.connections
        owner = None if local else self._cluster.owner(connection_id)
        if not local and owner is None:
            return None
        message_id, payload = out.encode(MessageType.EVENT, now, event=event, data=data)
        if local:
            out.deliver((connection_id,), payload)
        else:
            out.actions.append(self._cluster.command(owner, op="send", n=connection_id,
                                                     p=payload.decode()))
        return message_id

    def send_to_user(self, user_id: str, event: str, data: JsonValue, now: float) -> str:
        """`Hub.send_to_user`: the message id."""
        message_id, payload = self._out.encode(MessageType.EVENT, now, event=event, data=data)
        self.published += 1
        self._out.deliver(self._out.users.get(user_id, ()), payload)
        self._out.actions.append(self._cluster.envelope(user_topic(user_id), EnvelopeKind.USER,
                                                        payload))
        return message_id

    def terminate_user(self, user_id: str, code: int, reason: str) -> int:
        """`Hub.terminate_user`: how many connections were on this node."""
        count = self._connections.drop_user(user_id, code, reason)
        self._out.actions.append(self._cluster.envelope(
            user_topic(user_id), EnvelopeKind.USER,
            _TERMINATE + encode_json({"code": code, "reason": reason}) + b"}"))
        return count

    def terminated(self, payload: bytes, targets: set[ConnectionId] | tuple[()]) -> None:
        """Another node's `terminate_user` (`is_termination`): close the user's
        connections here with its code and reason (4009 when they cannot be read)."""
        try:
            close = decode_json(payload)["terminate"]
            code, reason = int(close["code"]), str(close["reason"])
        except (MessageError, KeyError, TypeError, ValueError):
            code, reason = 4009, "terminated"
        for connection_id in sorted(targets):
            self._connections.drop(self._out.connections[connection_id], code, reason)

    def disconnect_connection(self, connection_id: ConnectionId, code: int, reason: str) -> bool:
        """`Hub.disconnect_connection`."""
        _close_frame(code, reason)
        conn = self._out.connections.get(connection_id)
        if conn is not None:
            self._connections.drop(conn, code, reason)
            return True
        owner = self._cluster.owner(connection_id)
        if owner is None:
            return False
        self._out.actions.append(self._cluster.command(owner, op="disconnect", n=connection_id,
                                                       code=code, r=reason))
        return True

    def disconnect_user(self, user_id: str, code: int, reason: str) -> int:
        """`Hub.disconnect_user`."""
        _close_frame(code, reason)
        self._out.actions.append(self._cluster.command(None, op="disconnect_user", u=user_id,
                                                       code=code, r=reason))
        return self._connections.drop_user(user_id, code, reason)

    def unsubscribe_user(self, user_id: str, channel: str, reason: str, now: float) -> int:
        """`Hub.unsubscribe_user`."""
        validate_channel_name(channel)
        self._out.actions.append(self._cluster.command(None, op="unsubscribe_user", u=user_id,
                                                       c=channel, r=reason))
        return self._subscriptions.revoke_user(user_id, channel, reason, now)

    def forwarded(self, body: dict[str, Any], now: float) -> None:
        """Carry out an application command another node forwarded (`ClusterState.command`)."""
        out = self._out
        try:
            match body.get("op"):
                case "send":
                    connection_id = ConnectionId(str(body["n"]))
                    if connection_id in out.connections:
                        out.deliver((connection_id,), str(body["p"]).encode())
                case "disconnect":
                    conn = out.connections.get(ConnectionId(str(body["n"])))
                    if conn is not None:
                        self._connections.drop(conn, int(body["code"]), str(body["r"]))
                case "disconnect_user":
                    self._connections.drop_user(str(body["u"]), int(body["code"]),
                                                str(body["r"]))
                case "unsubscribe_user":
                    self._subscriptions.revoke_user(str(body["u"]), str(body["c"]),
                                                    str(body["r"]), now)
        except (KeyError, TypeError, ValueError):
            out.errors[ErrorCode.MALFORMED_MESSAGE] += 1  # another node's bug: counted


def _close_frame(code: int, reason: str) -> None:
    """Check that a close code and reason fit a WebSocket close frame.

    Raises:
        MessageError: 4005, naming what is wrong.
    """
    if not isinstance(code, int) or not (code == 1000 or 3000 <= code <= 4999):
        raise MessageError(ErrorCode.INVALID_FIELD, "'code' must be 1000 or 3000-4999")
    if not isinstance(reason, str) or len(reason.encode()) > MAX_REASON_BYTES:
        raise MessageError(ErrorCode.INVALID_FIELD,
                           f"'reason' must be a string of at most {MAX_REASON_BYTES} bytes")
