"""The Hub's subscriptions: subscribe and unsubscribe, authorization in flight, tokens
that expire, and the channels' local subscribers (the broker topics follow them)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, assert_never

from .actions import Authorize
from .channels import AuthRules, ChannelKind, channel_kind, pattern_matches
from .cluster import ClusterState, channel_topic
from .config import Epoch, HubConfig
from .connection import Connection, PendingAuthorization, SubscribeOptions
from .errors import ErrorCode, MessageError
from .events import AuthorizationAnswered, User
from .hub_history import ChannelHistory
from .hub_outbox import Outbox
from .hub_presence import Presence
from .jwt import verify_token
from .subscription_states import SubscriptionInput, SubscriptionState, state_of, transition

__all__ = ["REVOKED_EVENT", "Subscriptions"]

#: the event that tells a connection the application ended its subscription
REVOKED_EVENT = "subscription.revoked"


class Subscriptions:
    """Every subscription of this node's connections, each following the transition table
    of `subscription_states`; owns the authorizations in flight."""

    def __init__(self, config: HubConfig, out: Outbox, cluster: ClusterState,
                 history: ChannelHistory, presence: Presence, *,
                 new_id: Callable[[], str], epoch: Epoch) -> None:
        self._config = config
        self._out = out
        self._cluster = cluster
        self._history = history
        self._presence = presence
        self._new_id = new_id
        self._epoch = epoch
        self.rules = AuthRules()
        #: request id -> the subscription waiting for the application's answer
        self._pending: dict[str, PendingAuthorization] = {}

    def _move(self, conn: Connection, channel: str,
              event: SubscriptionInput) -> SubscriptionState:
        """Check a step against the transition table (`LocalProtocolError` if it has none)."""
        return transition(state_of(conn, channel), event)

    def subscribe(self, conn: Connection, channel: str, options: Any, now: float) -> None:
        """A client's `subscribe` (the channel name checked).

        Raises:
            MessageError: what the client did wrong or is not allowed.
        """
        request = SubscribeOptions.parse(options)
        state = state_of(conn, channel)
        match state:
            case SubscriptionState.SUBSCRIBED:
                self._move(conn, channel, SubscriptionInput.REPEAT)
                self._again(conn, channel, request, now)
            case SubscriptionState.AUTHORIZING:
                self._move(conn, channel, SubscriptionInput.REPEAT)
            case SubscriptionState.IDLE:
                self._new(conn, channel, request, now)
            case _:
                assert_never(state)

    def _again(self, conn: Connection, channel: str, request: SubscribeOptions,
               now: float) -> None:
        """A subscribe to a channel the connection is in: a new token, a replay, or just
        `subscription.succeeded` again."""
        if request.token is not None and conn.channel_expiry and \
                channel in conn.channel_expiry and conn.user is not None:
            _, expires_ms = self._token(conn.user, channel, request.token, now)
            self._expires(conn, channel, expires_ms, now)  # a refresh
        if not self._history.replay(conn, channel, request, now):
            self._out.reply(conn, "subscription.succeeded", {}, now, channel)
            self._presence.sync(conn, channel, now)

    def _new(self, conn: Connection, channel: str, request: SubscribeOptions,
             now: float) -> None:
        limits = self._config.limits
        if len(conn.channels) + len(conn.pending) >= limits.max_subscriptions:
            raise MessageError(ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                               f"at most {limits.max_subscriptions} subscriptions")
        if not channel_kind(channel).needs_authorization:
            self._join(conn, channel, None, request, now)
            return
        if channel in conn.grants:  # a Pusher client's signature
            member = conn.grants[channel]
            self._join(conn, channel, member.info if member else None, request, now)
            return
        if conn.user is None:
            raise MessageError(ErrorCode.UNAUTHENTICATED, f"{channel} needs an authenticated user")
        if any(pattern_matches(pattern, channel) for pattern in conn.user.channels):
            self._join(conn, channel, conn.user.info, request, now)
            return
        if request.token is not None:
            info, expires_ms = self._token(conn.user, channel, request.token, now)
            self._expires(conn, channel, expires_ms, now)
            self._join(conn, channel, info, request, now)
            return
        rule = self.rules.find(channel)
        if rule is None or rule.callback is None:
            raise MessageError(ErrorCode.FORBIDDEN, f"no rule allows {channel}")
        if len(conn.pending) >= limits.max_pending_authorizations:
            raise MessageError(ErrorCode.TOO_MANY_PENDING, "too many authorizations in flight")
        self._move(conn, channel, SubscriptionInput.ASK)
        request_id = self._new_id()
        conn.pending[channel] = request_id
        self._pending[request_id] = PendingAuthorization(
            conn.id, channel, now + self._config.authorization_timeout, request)
        self._out.actions.append(Authorize(request_id=request_id, callback=rule.callback,
                                           connection=conn.info(), channel=channel))

    def _token(self, user: User, channel: str, token: str,
               now: float) -> tuple[Mapping[str, Any], int | None]:
        """Check a per-channel token (`sub` = this user, `channel` = this channel); its info
        and its `exp` (Unix ms), if any.

        Raises:
            MessageError: 4003 when the token is bad or for another user or channel.
        """
        if self._config.jwt is None:
            raise MessageError(ErrorCode.FORBIDDEN, "this server accepts no subscription tokens")
        try:
            claims = verify_token(token, self._config.jwt,
                                  now_unix=self._epoch.unix_ms_at(now) / 1000)
        except MessageError as error:
            raise MessageError(ErrorCode.FORBIDDEN, error.message) from None
        if str(claims.get("sub")) != user.id or claims.get("channel") != channel:
            raise MessageError(ErrorCode.FORBIDDEN, "token for another user or channel")
        info = claims.get("info")
        exp = claims.get("exp")
        expires_ms = round(exp * 1000) if isinstance(exp, int | float) and \
            not isinstance(exp, bool) else None
        return (info if isinstance(info, dict) else user.info), expires_ms

    def _expires(self, conn: Connection, channel: str, expires_ms: int | None,
                 now: float) -> None:
        """Set when a subscription token's `exp` ends the subscription (None: never)."""
        if expires_ms is not None:
            if conn.channel_expiry is None:
                conn.channel_expiry = {}
            conn.channel_expiry[channel] = (
                now + (expires_ms - self._out.unix_ms(now)) / 1000, False)
        elif conn.channel_expiry:
            conn.channel_expiry.pop(channel, None)

    def sweep(self, conn: Connection, now: float) -> None:
        """End the subscriptions whose token expired (`subscription.revoked`), and ask,
        `refresh_lead` seconds before, for a new token (`subscription.refresh_required`:
        subscribe again with it)."""
        assert conn.channel_expiry is not None
        for channel, (expires_at, asked) in list(conn.channel_expiry.items()):
            if now >= expires_at:
                self.leave(conn, channel, now)
                self._out.reply(conn, REVOKED_EVENT, {"reason": "token expired"}, now, channel)
            elif not asked and now >= expires_at - self._config.refresh_lead:
                conn.channel_expiry[channel] = (expires_at, True)
                self._out.reply(conn, "subscription.refresh_required",
                                {"expires_in": round(expires_at - now, 3)}, now, channel)

    def answered(self, answer: AuthorizationAnswered) -> None:
        """The application's authorization callback answered."""
        pending = self._pending.pop(answer.request_id, None)
        conn = self._out.connections.get(pending.connection_id) if pending else None
        if pending is None or conn is None:
            return  # late: the connection left or the request timed out
        channel, now = pending.channel, self._out.now
        allowed = answer.error is None and answer.allowed
        self._move(conn, channel,
                   SubscriptionInput.ALLOW if allowed else SubscriptionInput.REFUSE)
        del conn.pending[channel]
        if answer.error is not None:
            self._out.error(conn, ErrorCode.INTERNAL_ERROR, "authorization failed", now, channel)
        elif not answer.allowed:
            self._out.error(conn, ErrorCode.FORBIDDEN, f"not allowed to join {channel}", now,
                            channel)
        else:
            info = answer.info if answer.info is not None else (conn.user.info if conn.user else {})
            self._add(conn, channel, info, pending.options, now)

    def sweep_pending(self, now: float) -> None:
        """Refuse the authorizations the application did not answer in time."""
        for request_id, pending in list(self._pending.items()):
            if pending.deadline <= now:
                del self._pending[request_id]
                conn = self._out.connections[pending.connection_id]
                self._move(conn, pending.channel, SubscriptionInput.REFUSE)
                del conn.pending[pending.channel]
                self._out.error(conn, ErrorCode.FORBIDDEN, "authorization timed out", now,
                                pending.channel)

    def _join(self, conn: Connection, channel: str, info: Mapping[str, Any] | None,
              request: SubscribeOptions, now: float) -> None:
        self._move(conn, channel, SubscriptionInput.JOIN)
        self._add(conn, channel, info, request, now)

    def _add(self, conn: Connection, channel: str, info: Mapping[str, Any] | None,
             request: SubscribeOptions, now: float) -> None:
        """Make the connection a subscriber (the step is checked) and answer it."""
        conn.channels.add(channel)
        subscribers = self._out.subscribers.setdefault(channel, {})
        if not subscribers:
            self._out.actions.append(self._cluster.subscribe(channel_topic(channel), now))
            if channel_kind(channel) is not ChannelKind.PRESENCE:
                self._out.actions.extend(self._cluster.occupy(channel, True))
        subscribers[conn.id] = None
        if (counts := self._cluster.counts) is not None:
            counts.count(channel, len(subscribers))
        self._history.join(conn, channel, info, request, now)

    def unsubscribe(self, conn: Connection, channel: str, now: float) -> None:
        """A client's `unsubscribe`.

        Raises:
            MessageError: 4010 when it is not subscribed to the channel.
        """
        if channel not in conn.channels:
            raise MessageError(ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {channel}")
        self.leave(conn, channel, now)
        self._out.reply(conn, "unsubscription.succeeded", {}, now, channel)

    def leave(self, conn: Connection, channel: str, now: float) -> None:
        """End a subscription (the step is checked): the broker topic and the channel's
        history go with its last local subscriber, the presence membership with it."""
        self._move(conn, channel, SubscriptionInput.LEAVE)
        out = self._out
        conn.channels.discard(channel)
        if conn.channel_expiry:
            conn.channel_expiry.pop(channel, None)
        self._history.streams.cancel(channel, conn.id)
        subscribers = out.subscribers[channel]
        del subscribers[conn.id]
        if (counts := self._cluster.counts) is not None:
            counts.count(channel, len(subscribers))
        if not subscribers:
            del out.subscribers[channel]
            self._history.streams.forget(channel)
            out.actions.append(self._cluster.unsubscribe(channel_topic(channel)))
            if channel_kind(channel) is not ChannelKind.PRESENCE:
                out.actions.extend(self._cluster.occupy(channel, False))
        self._presence.exit(conn, channel, now)
        conn.revoke(channel)

    def _void(self, conn: Connection, channel: str) -> None:
        """Forget an authorization in flight (its answer, when it comes, is ignored)."""
        self._move(conn, channel, SubscriptionInput.LEAVE)
        self._pending.pop(conn.pending.pop(channel), None)

    def revoke_user(self, user_id: str, channel: str, reason: str, now: float) -> int:
        """End a user's subscriptions (or authorizations in flight) to a channel on this
        node, each with `subscription.revoked`; how many there were."""
        count = 0
        for connection_id in sorted(self._out.users.get(user_id, ())):
            conn = self._out.connections[connection_id]
            state = state_of(conn, channel)
            match state:
                case SubscriptionState.AUTHORIZING:
                    self._void(conn, channel)
                case SubscriptionState.SUBSCRIBED:
                    self.leave(conn, channel, now)
                case SubscriptionState.IDLE:
                    continue
                case _:
                    assert_never(state)
            self._out.reply(conn, REVOKED_EVENT, {"reason": reason}, now, channel)
            count += 1
        return count

    def close(self, conn: Connection, now: float) -> None:
        """The connection closed: every subscription and authorization of it ends."""
        for channel in list(conn.pending):
            self._void(conn, channel)
        for channel in sorted(conn.channels):
            self.leave(conn, channel, now)
