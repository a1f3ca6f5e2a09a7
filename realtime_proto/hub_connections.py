"""The Hub's connections: open and close, users (and their limit across the cluster),
credentials that expire, heartbeats and idle timeouts."""

from __future__ import annotations

from .actions import Disconnect
from .cluster import ClusterState, user_topic
from .config import HubConfig
from .connection import Connection
from .errors import ErrorCode, LocalProtocolError, MessageError
from .events import ConnectionId, ConnectionOpened, User
from .hub_outbox import Outbox
from .hub_subscriptions import Subscriptions
from .hub_webhooks import WebhookEvents
from .jwt import user_from_claims, verify_token
from .message import JsonValue, MessageType
from .presence import CONNECTIONS, Member
from .ratelimit import TokenBucket

__all__ = ["Connections"]


class Connections:
    """Opens and closes this node's connections (the tables are the `Outbox`'s) and keeps
    them alive: pings, idle timeouts, expiring credentials and their refresh."""

    def __init__(self, config: HubConfig, out: Outbox, cluster: ClusterState,
                 subscriptions: Subscriptions, webhooks: WebhookEvents) -> None:
        self._config = config
        self._out = out
        self._cluster = cluster
        self._subscriptions = subscriptions
        self._webhooks = webhooks
        #: connections closed for a newer one of the same user (`replace_oldest`)
        self.replaced = 0

    def open(self, event: ConnectionOpened, now: float) -> None:
        """A new connection: `connection.established`, and its user counted.

        Raises:
            LocalProtocolError: a connection with that id is open already.
        """
        if event.connection_id in self._out.connections:
            raise LocalProtocolError(f"connection {event.connection_id!r} is already open")
        rates = self._config.rates
        conn = Connection(id=event.connection_id, user=event.user, transport=event.transport,
                          peer=event.peer, expects_pong=event.expects_pong,
                          connected_at=now, last_activity_at=now,
                          message_bucket=TokenBucket(rates.messages, now)
                          if rates.messages else None,
                          subscribe_bucket=TokenBucket(rates.subscriptions, now)
                          if rates.subscriptions else None)
        self._out.connections[conn.id] = conn
        if conn.user is not None:
            self._expires(conn, conn.user.expires_ms, now)
            self._add_user(conn, conn.user.id, now)
            self._webhooks.connection("connection.opened", conn, now)
            if self._config.limits.max_connections_per_user is not None:
                self._limit_user(conn, conn.user.id, now)
        self._out.reply(conn, "connection.established", {
            "connection_id": conn.id,
            "user_id": conn.user.id if conn.user else None,
            "heartbeat": self._config.heartbeat_interval,
        }, now)

    def sign_in(self, conn: Connection, user: User, now: float) -> None:
        """Give a connection its user after it opened (`Hub.sign_in`).

        Raises:
            MessageError: 4003 when it has another user already.
        """
        if conn.user is not None:
            if conn.user.id == user.id:
                return
            raise MessageError(ErrorCode.FORBIDDEN, "signed in as another user already")
        conn.user = user
        self._add_user(conn, user.id, now)

    def _add_user(self, conn: Connection, user_id: str, now: float) -> None:
        local = self._out.users.setdefault(user_id, set())
        if not local:
            self._out.actions.append(self._cluster.subscribe(user_topic(user_id), now))
        local.add(conn.id)

    def _limit_user(self, conn: Connection, user_id: str, now: float) -> None:
        """Count a user's new connection cluster-wide (an entry of the presence table's
        `CONNECTIONS`, announced like presence) and, over `max_connections_per_user`
        (with `replace_oldest`: the Node refuses it at the door otherwise), close the
        user's oldest connection, on whichever node holds it."""
        out = self._out
        _, announced = self._cluster.join(CONNECTIONS, conn.id, Member(
            user_id=user_id, info={"at": out.unix_ms(now)}))
        out.actions.extend(announced)
        table, limit = self._cluster.presence, self._config.limits.max_connections_per_user
        if limit is None or table.count(CONNECTIONS, user_id) <= limit:
            return
        oldest = table.oldest(CONNECTIONS, user_id, but=(self._config.node_id, conn.id))
        if oldest is None:
            return
        node, connection_id = oldest
        self.replaced += 1
        reason = "replaced by a newer connection of the same user"
        local = out.connections.get(ConnectionId(connection_id))
        if node == self._config.node_id and local is not None:
            self.drop(local, ErrorCode.TOO_MANY_CONNECTIONS, reason)
        elif node != self._config.node_id:
            out.actions.append(self._cluster.command(
                node, op="disconnect", n=connection_id, code=int(ErrorCode.TOO_MANY_CONNECTIONS),
                r=reason))

    def remove(self, conn: Connection) -> None:
        """A connection closed: its subscriptions end, its user topic goes with the user's
        last connection here."""
        out = self._out
        del out.connections[conn.id]
        self._webhooks.connection("connection.closed", conn, out.now)
        if self._config.limits.max_connections_per_user is not None and conn.user is not None:
            out.actions.extend(self._cluster.leave(CONNECTIONS, conn.id)[1])
        self._subscriptions.close(conn, out.now)
        if conn.user is not None:
            local = out.users[conn.user.id]
            local.discard(conn.id)
            if not local:
                del out.users[conn.user.id]
                out.actions.append(self._cluster.unsubscribe(user_topic(conn.user.id)))

    def drop(self, conn: Connection, code: int, reason: str) -> None:
        """Close a connection from the server's side."""
        self.remove(conn)
        self._out.actions.append(Disconnect(conn.id, code, reason))

    def drop_user(self, user_id: str, code: int, reason: str) -> int:
        """Close a user's connections on this node; how many."""
        chosen = sorted(self._out.users.get(user_id, ()))
        for connection_id in chosen:
            self.drop(self._out.connections[connection_id], code, reason)
        return len(chosen)

    def sweep(self, now: float) -> None:
        """Expired credentials and subscription tokens, pings and idle timeouts."""
        out = self._out
        idle_timeout = self._config.effective_idle_timeout
        heartbeat = self._config.heartbeat_interval
        for conn in list(out.connections.values()):
            if conn.expires_at is not None and self._expiring(conn, now):
                continue
            if conn.channel_expiry:
                self._subscriptions.sweep(conn, now)
            if not conn.expects_pong:
                continue
            idle = now - conn.last_activity_at
            if idle >= idle_timeout:
                out.errors[ErrorCode.IDLE_TIMEOUT] += 1
                self.drop(conn, ErrorCode.IDLE_TIMEOUT, "idle timeout")
            elif idle >= heartbeat and not conn.pinged:
                conn.pinged = True
                _, payload = out.encode(MessageType.PING, now)
                out.deliver((conn.id,), payload)

    def _expires(self, conn: Connection, expires_ms: int | None, now: float) -> None:
        """Set when a connection's credentials expire (Unix ms, or None: never)."""
        conn.expires_at = None if expires_ms is None else (
            now + (expires_ms - self._out.unix_ms(now)) / 1000)
        conn.refresh_asked = False

    def _expiring(self, conn: Connection, now: float) -> bool:
        """Close a connection whose credentials expired (True), or ask it, `refresh_lead`
        seconds before, to refresh them."""
        assert conn.expires_at is not None
        if now >= conn.expires_at:
            self._out.errors[ErrorCode.UNAUTHENTICATED] += 1
            self.drop(conn, ErrorCode.UNAUTHENTICATED, "token expired")
            return True
        if not conn.refresh_asked and now >= conn.expires_at - self._config.refresh_lead:
            conn.refresh_asked = True
            self._out.reply(conn, "connection.refresh_required",
                            {"expires_in": round(conn.expires_at - now, 3)}, now)
        return False

    def refresh(self, conn: Connection, data: JsonValue, now: float) -> None:
        """`{"type": "refresh", "data": {"token": T}}`: new credentials for the same user.

        Raises:
            MessageError: 4007 without a token; 4001 when the token is bad or expired, or
                the connection has none to refresh (the connection stays as it was).
        """
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise MessageError(ErrorCode.MISSING_FIELD, "'data.token' (a string) is required")
        if conn.user is None or self._config.jwt is None:
            raise MessageError(ErrorCode.UNAUTHENTICATED, "this connection has no token")
        user = user_from_claims(verify_token(token, self._config.jwt,
                                             now_unix=self._out.unix_ms(now) / 1000))
        if user.id != conn.user.id:
            self._out.errors[ErrorCode.UNAUTHENTICATED] += 1
            self.drop(conn, ErrorCode.UNAUTHENTICATED, "the new token is for another user")
            return
        self._expires(conn, user.expires_ms, now)
        self._out.reply(conn, "connection.refreshed", {
            "expires_in": None if conn.expires_at is None else round(conn.expires_at - now, 3)},
            now)
