"""Configuration values for the Hub and the Node: frozen and validated when built."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import final

from .backlog import SlowConsumerRule
from .errors import ConfigError
from .forwarded import Network
from .history import HistoryRule
from .jwt import JwtConfig
from .pusher.apps import PusherApp
from .ratelimit import Rate

__all__ = ["Epoch", "HubConfig", "Limits", "NodeConfig", "RateLimits", "StaticFile",
           "WebhookConfig"]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Every bound the server keeps; the defaults are documented in docs/configuration.md."""

    #: largest message a client may send (bytes)
    max_message_bytes: int = 64 * 1024
    #: channels one connection may be subscribed to
    max_subscriptions: int = 128
    #: authorizations in flight on one connection
    max_pending_authorizations: int = 16
    #: bytes queued for one socket before it counts as a slow consumer
    max_output_bytes: int = 1024 * 1024
    #: messages queued for one long-poll connection before it counts as a slow consumer
    max_poll_backlog: int = 1000
    #: HTTP request head size
    max_head_bytes: int = 16 * 1024
    #: HTTP request body size (API calls and `POST /send`)
    max_body_bytes: int = 1024 * 1024
    #: client connections on this node (None: no limit); past it, 503 at the door
    max_connections: int | None = None
    #: connections of one user across the cluster (None: no limit); past it, the new one
    #: is refused (429, 4013) or the user's oldest, on any node, is closed (`replace_oldest`)
    max_connections_per_user: int | None = None
    #: at `max_connections_per_user`, close the user's oldest connection (4013) instead
    #: of refusing the new one
    replace_oldest: bool = False

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if value is not None and not isinstance(value, bool) and value < 1:
                raise ConfigError(f"limit {item.name} must be at least 1")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimits:
    """Token-bucket rates, counted per node; None switches one off."""

    #: messages a connection may send
    messages: Rate | None = Rate(50, 100)
    #: subscribe requests a connection may make
    subscriptions: Rate | None = Rate(10, 50)
    #: new connections (WebSocket, SSE, long-poll) from one IP address
    connections: Rate | None = Rate(20, 100)
    #: HTTP API calls with one API key
    api_calls: Rate | None = Rate(10_000, 20_000)
    #: new connections this node admits from all clients together (admission control
    #: for reconnect storms); past it, 503 with Retry-After before the upgrade
    handshakes: Rate | None = None


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class HubConfig:
    """What the Hub needs: identity, timings and limits."""

    node_id: str = "node"
    #: seconds of client silence before the server sends `ping`
    heartbeat_interval: float = 25.0
    #: seconds of client silence before the connection is closed (None: 2 x heartbeat + 10)
    idle_timeout: float | None = None
    #: seconds an authorization callback may take
    authorization_timeout: float = 10.0
    #: seconds between presence heartbeats to the other nodes
    presence_heartbeat_interval: float = 5.0
    #: seconds of silence after which another node's presence members are removed
    presence_ttl: float = 15.0
    #: how often the periodic sweep (timeouts, heartbeats) runs
    sweep_interval: float = 1.0
    #: seconds between two `typing` signals of one user on one channel (more coalesce)
    typing_interval: float = 1.0
    limits: Limits = field(default_factory=Limits)
    rates: RateLimits = field(default_factory=RateLimits)
    #: channels that keep history (for recovery), by pattern
    history: tuple[HistoryRule, ...] = ()
    #: keep history in a store shared by every node (the adapter answers `HistoryAppend`
    #: and `HistoryRead`), so that clients recover on any node; False: in this node's memory
    shared_history: bool = False
    #: seconds a shared-history append or read may take: past it, the publish goes out
    #: without a position (and the channel's epoch ends), the subscription without history,
    #: so that local subscribers never wait long for a store that does not answer
    history_timeout: float = 5.0
    #: shared-history appends waiting for the store at most; past it the oldest is given
    #: up on as if it had timed out (bounded memory during an outage)
    history_max_pending: int = 10_000
    #: how connection and subscription tokens are verified (None: no tokens accepted)
    jwt: JwtConfig | None = None
    #: largest broker message that bundles several publishes to one topic made in one
    #: call (a burst, `POST /api/batch`); 0: one broker message per publish. Under
    #: PostgreSQL's NOTIFY limit (8000) by default.
    broker_bundle_bytes: int = 7000
    #: share each channel's number of subscribers with the other nodes (announced at most
    #: once per sweep), so that `Hub.subscription_count` counts every node's (the Pusher
    #: API's `subscription_count`)
    share_subscription_counts: bool = False
    #: report the client events received here (`ClientEventSent`), for Pusher webhooks
    #: (their presence events come from `presence_webhooks`, like the native ones)
    report_events: bool = False
    #: report presence transitions (`channel.occupied`, `member.added`, …) as `Notify`
    #: actions, once per cluster (`realtime_proto.reporter`); every node alike
    presence_webhooks: bool = False
    #: seconds a presence change must last before it is reported (shorter flaps are not)
    webhook_settle: float = 1.0
    #: report `connection.opened` / `connection.closed` of users' connections (`Notify`)
    connection_webhooks: bool = False
    #: report the client events of channels these patterns match (`Notify`)
    client_event_webhooks: tuple[str, ...] = ()
    #: seconds before a connection's credentials expire that it is asked to refresh them
    #: (`connection.refresh_required`)
    refresh_lead: float = 30.0

    def __post_init__(self) -> None:
        if not self.node_id:
            raise ConfigError("node_id must not be empty")
        if self.broker_bundle_bytes < 0:
            raise ConfigError("broker_bundle_bytes must not be negative")
        if self.history_max_pending < 1:
            raise ConfigError("history_max_pending must be at least 1")
        for name in ("heartbeat_interval", "authorization_timeout", "sweep_interval",
                     "presence_heartbeat_interval", "presence_ttl", "history_timeout",
                     "webhook_settle", "refresh_lead"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.presence_ttl <= self.presence_heartbeat_interval:
            raise ConfigError("presence_ttl must be longer than presence_heartbeat_interval")
        if self.idle_timeout is not None and self.idle_timeout <= self.heartbeat_interval:
            raise ConfigError("idle_timeout must be longer than heartbeat_interval")

    @property
    def effective_idle_timeout(self) -> float:
        """The idle timeout in force."""
        if self.idle_timeout is not None:
            return self.idle_timeout
        return 2 * self.heartbeat_interval + 10.0


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class StaticFile:
    """A file served as it is (the example chat, `/realtime.js`)."""

    content_type: str
    body: bytes


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookConfig:
    """Where the events go and how they are delivered."""

    #: http:// or https:// URLs; each gets every event
    urls: tuple[str, ...]
    #: the HMAC key of `X-Realtime-Signature` (None: requests are not signed)
    secret: str | None = None
    #: events in one POST at most
    max_batch: int = 100
    #: seconds the first event of a batch waits for others
    max_delay: float = 0.005
    #: events waiting per URL at most; past it the oldest are dropped (and counted)
    max_queue: int = 10_000
    #: the first retry's delay (seconds); doubles per failed attempt, up to `backoff_max`,
    #: with jitter (each delay is 50-100 % of its ceiling)
    backoff_min: float = 0.5
    backoff_max: float = 30.0

    def __post_init__(self) -> None:
        if not self.urls:
            raise ConfigError("webhooks need at least one URL")
        if self.max_batch < 1 or self.max_queue < self.max_batch:
            raise ConfigError("webhook max_batch must be at least 1 and max_queue at least that")
        if self.max_delay < 0 or self.backoff_min <= 0 or self.backoff_max < self.backoff_min:
            raise ConfigError("webhook delays must be positive, backoff_max >= backoff_min")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """Everything a Node needs, on top of the Hub's configuration."""

    hub: HubConfig = field(default_factory=HubConfig)
    #: the HTTP API key (None: the API refuses every call)
    api_key: str | None = None
    #: ask the application (an `Authenticate` action) instead of checking JWTs
    custom_authentication: bool = False
    #: seconds a long-poll request is held when nothing is queued
    poll_timeout: float = 25.0
    #: seconds without a poll after which a long-poll connection is closed
    poll_session_timeout: float = 30.0
    #: seconds between SSE comment heartbeats
    sse_heartbeat_interval: float = 15.0
    #: SSE `retry:` advice to the browser, in milliseconds
    sse_retry_ms: int = 3000
    #: Access-Control-Allow-Origin for browsers on other origins (None: no CORS headers)
    cors_origin: str | None = "*"
    #: path → file, served on GET
    static_files: Mapping[str, StaticFile] = field(default_factory=dict)
    #: Pusher applications served at `/app/{key}` and `/apps/{id}/` (none: not served)
    pusher_apps: tuple[PusherApp, ...] = ()
    #: where Pusher webhooks go and how they are retried (None: nowhere; `secret` unused:
    #: each app signs with its own); needs `hub.report_events`
    pusher_webhook: WebhookConfig | None = None
    #: the runtime name reported in /metrics and /health
    runtime: str = "unknown"
    #: slow-consumer policies by channel pattern (the default is to disconnect)
    slow_consumers: tuple[SlowConsumerRule, ...] = ()
    #: reverse proxies whose `Forwarded` / `X-Forwarded-For` name the client (for the
    #: per-address connection limit, authentication and logs); none by default
    trusted_proxies: tuple[Network, ...] = ()
    #: this process's index among the workers of `realtime serve --workers`, else None
    #: (a `worker` field in /health and label in /metrics)
    worker: int | None = None
    #: seconds a request forwarded to the node holding its connection waits for the answer
    #: (a poll that node holds: on top of poll_timeout); then 404 with 4022
    forward_timeout: float = 5.0
    #: where presence events go (`docs/webhooks.md`); needs `hub.presence_webhooks`
    webhooks: WebhookConfig | None = None
    #: agree to permessage-deflate (RFC 7692) on native WebSocket connections whose
    #: client offers it; a broadcast is compressed once per window size
    compression: bool = False
    #: a fan-out to more sockets than this, met when nothing else waits in the call, goes
    #: out in chunks of this many: each `actions()` returns a partial `Transmit` for one
    #: (0: every fan-out is queued whole before its `Transmit`)
    fanout_chunk: int = 0

    def __post_init__(self) -> None:
        hub = self.hub
        if self.fanout_chunk < 0:
            raise ConfigError(f"fanout_chunk must be 0 (off) or positive, not {self.fanout_chunk}")
        if self.webhooks is not None and not (
                hub.presence_webhooks or hub.connection_webhooks or hub.client_event_webhooks):
            raise ConfigError("webhooks need events: hub.presence_webhooks, "
                              "connection_webhooks or client_event_webhooks")
        if self.poll_timeout <= 0 or self.poll_session_timeout <= self.poll_timeout:
            raise ConfigError("poll_session_timeout must be longer than poll_timeout (> 0)")
        if self.sse_heartbeat_interval <= 0:
            raise ConfigError("sse_heartbeat_interval must be positive")


@final
@dataclass(frozen=True, slots=True)
class Epoch:
    """Maps monotonic seconds to Unix milliseconds, read once at the edge."""

    monotonic_at: float
    unix_ms: int

    def unix_ms_at(self, now: float) -> int:
        """Unix milliseconds at monotonic time `now`; never jumps with the wall clock."""
        return self.unix_ms + round((now - self.monotonic_at) * 1000)
