"""What every runtime reads at its edge: settings, clocks, ids and static files."""

from __future__ import annotations

import base64
import math
import mimetypes
import os
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TypeVar

from realtime_brokers import BrokerStatistics
from realtime_brokers.history import HistoryStatistics, store_url
from realtime_proto import Epoch, HubConfig, Limits, NodeConfig, StaticFile
from realtime_proto.backlog import SlowConsumerPolicy, SlowConsumerRule
from realtime_proto.config import RateLimits, WebhookConfig
from realtime_proto.events import BrokerReported
from realtime_proto.forwarded import parse_networks
from realtime_proto.history import HistoryRule
from realtime_proto.jwt import JwtConfig
from realtime_proto.pusher.apps import parse_apps
from realtime_proto.pusher.codec import CACHE_RULES
from realtime_proto.ratelimit import Rate
from realtime_proto.webhook import WebhookTarget

__all__ = [
    "CLIENT_FILES",
    "Bounds",
    "Settings",
    "broker_report",
    "build_node_config",
    "client_script",
    "load_static_files",
    "new_epoch",
    "new_node_id",
    "random_id",
    "server_ssl_context",
]

T = TypeVar("T")

#: files larger than this are not served from memory
_MAX_STATIC_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Bounds:
    """The finite values a numeric option may take."""

    low: float
    high: float = math.inf
    #: the low end itself is excluded (a duration must be more than 0 seconds)
    above: bool = False

    def admit(self, value: float) -> bool:
        """Whether `value` is in range."""
        return (math.isfinite(value) and value <= self.high
                and (value > self.low if self.above else value >= self.low))

    def __str__(self) -> str:
        if self.high != math.inf:
            return f"between {self.low:g} and {self.high:g}"
        return f"more than {self.low:g}" if self.above else f"at least {self.low:g}"


_SECONDS = Bounds(0, above=True)
_COUNT = Bounds(1)
_RATE = Bounds(0)  # 0: no limit

#: the range of every numeric option
BOUNDS: dict[str, Bounds] = {
    "port": Bounds(0, 65535),  # 0: any free port
    **dict.fromkeys(["heartbeat_interval", "idle_timeout", "authorization_timeout",
                     "presence_heartbeat_interval", "presence_ttl", "poll_timeout",
                     "poll_session_timeout", "sse_heartbeat_interval",
                     "auth_webhook_timeout", "history_timeout"], _SECONDS),
    "auth_webhook_cache": Bounds(0),  # 0: ask every time
    **dict.fromkeys(["max_message_bytes", "max_subscriptions", "max_output_bytes",
                     "max_poll_backlog", "max_body_bytes", "message_burst", "subscribe_burst",
                     "connection_burst", "api_burst", "history_max_pending"], _COUNT),
    **dict.fromkeys(["message_rate", "subscribe_rate", "connection_rate", "api_rate",
                     "max_handshakes_per_second"], _RATE),
    "broker_bundle_bytes": Bounds(0),  # 0: no bundling
}

#: the values of every option that is one of a few words
CHOICES: dict[str, tuple[str, ...]] = {
    "log_level": ("debug", "info", "warning", "error"),
    "log_format": ("text", "json"),
    "runtime": ("asyncio", "trio", "gevent"),
}


@dataclass(kw_only=True)
class Settings:
    """Every option of `realtime serve` and of the embedding API, with its default."""

    host: str = "127.0.0.1"
    port: int = 6001
    broker: str = "memory://"
    api_key: str | None = None
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    static_dir: str | None = None
    log_level: str = "info"
    log_format: str = "text"
    node_id: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    runtime: str = "asyncio"
    cors_origin: str | None = "*"
    heartbeat_interval: float = 25.0
    idle_timeout: float | None = None
    authorization_timeout: float = 10.0
    presence_heartbeat_interval: float = 5.0
    presence_ttl: float = 15.0
    poll_timeout: float = 25.0
    poll_session_timeout: float = 30.0
    sse_heartbeat_interval: float = 15.0
    max_message_bytes: int = 64 * 1024
    max_subscriptions: int = 128
    max_output_bytes: int = 1024 * 1024
    max_poll_backlog: int = 1000
    max_body_bytes: int = 1024 * 1024
    message_rate: float = 50.0
    message_burst: float = 100.0
    subscribe_rate: float = 10.0
    subscribe_burst: float = 50.0
    connection_rate: float = 20.0
    connection_burst: float = 100.0
    #: reverse proxies (addresses, CIDR ranges) whose Forwarded / X-Forwarded-For name the client
    trusted_proxy: tuple[str, ...] = ()
    api_rate: float = 10_000.0
    api_burst: float = 20_000.0
    history: str = ""
    history_store: str = "auto"
    history_timeout: float = 5.0
    history_max_pending: int = 10_000
    #: None: by broker (`bundle_bytes`)
    broker_bundle_bytes: int | None = None
    slow_consumers: str = ""
    #: Pusher apps as ID:KEY:SECRET (repeatable); kept out of the repr: secrets
    pusher_app: tuple[str, ...] = field(default=(), repr=False)
    pusher_webhook: str | None = None
    auth_webhook: str | None = None
    auth_webhook_timeout: float = 3.0
    auth_webhook_cache: float = 30.0
    #: worker processes sharing the port (`auto`: one per core); `realtime serve` only
    workers: str = "1"
    # -- the control plane: presence events out to the backend (docs/webhooks.md)
    webhook: tuple[str, ...] = ()
    webhook_secret: str | None = None
    webhook_settle: float = 1.0
    webhook_max_queue: int = 10_000
    #: presence, connections (both: `presence,connections`)
    webhook_events: tuple[str, ...] = ("presence",)
    #: channel patterns whose client events go to the webhooks too
    webhook_client_events: tuple[str, ...] = ()
    refresh_lead: float = 30.0
    max_connections: int = 0
    max_connections_per_user: int = 0
    #: new connections admitted per second from all clients together (0: no limit)
    max_handshakes_per_second: float = 0.0
    per_user_limit_policy: str = "refuse"
    #: permessage-deflate on native WebSocket connections (off until measured worth it)
    compression: bool = False
    #: True when no key was given and one was generated (the CLI prints it once)
    api_key_generated: bool = field(init=False, default=False)
    #: this process's index among `--workers` (set by their supervisor), else None
    worker: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        for name in self.names():
            self.check(name, getattr(self, name))
        if self.api_key is None:
            self.api_key = secrets.token_urlsafe(24)
            self.api_key_generated = True
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        for flag, path in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key)):
            if path and not os.access(path, os.R_OK):
                raise ValueError(f"{flag}: cannot read {path}")
        store_url(self.history_store, self.broker)  # a bad value fails here, not at start
        worker_count(self.workers)

    @staticmethod
    def check(name: str, value: T) -> T:
        """`value` if it is in the option's range or among its choices.

        Raises:
            ValueError: it is not.
        """
        bounds, choices = BOUNDS.get(name), CHOICES.get(name)
        if (bounds is not None and isinstance(value, int | float)
                and not isinstance(value, bool) and not bounds.admit(value)):
            raise ValueError(f"{name} must be {bounds}, not {value!r}")
        if choices is not None and value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
        return value

    @classmethod
    def names(cls) -> list[str]:
        """The option names, in declaration order."""
        return [f.name for f in fields(cls) if f.init]


#: a fan-out met alone goes out in chunks of this many sockets, each written before the
#: next is queued (`NodeConfig.fanout_chunk`): ~50 µs of the core's work ahead of the first
#: write (against ~10 µs per socket write), and ~10 µs of the core's time per chunk on top
#: (`bench/firstwrite.py`: 32 cost twice as much for no gain in the median)
FANOUT_CHUNK = 64

#: the largest bundle when --broker-bundle-bytes is not given: under PostgreSQL's NOTIFY
#: limit (8000 bytes) there; the other brokers take megabytes, and a larger bundle spreads
#: their cost per broker message over more publishes
POSTGRESQL_BUNDLE_BYTES = 7000
BUNDLE_BYTES = 32 * 1024


def bundle_bytes(settings: Settings) -> int:
    """The largest broker message that bundles publishes, for these settings' broker."""
    if settings.broker_bundle_bytes is not None:
        return settings.broker_bundle_bytes
    scheme = settings.broker.partition("://")[0]
    return POSTGRESQL_BUNDLE_BYTES if scheme.startswith("postgres") else BUNDLE_BYTES


def build_node_config(settings: Settings, node_id: str, *, runtime: str) -> NodeConfig:
    """The core's configuration for these settings.

    Raises:
        ConfigError: a value is out of range.
    """
    limits = Limits(max_message_bytes=settings.max_message_bytes,
                    max_subscriptions=settings.max_subscriptions,
                    max_output_bytes=settings.max_output_bytes,
                    max_poll_backlog=settings.max_poll_backlog,
                    max_body_bytes=settings.max_body_bytes,
                    max_connections=settings.max_connections or None,
                    max_connections_per_user=settings.max_connections_per_user or None,
                    replace_oldest=_replace_oldest(settings.per_user_limit_policy))
    def rate(name: str) -> Rate | None:
        per_second = getattr(settings, f"{name}_rate")
        return Rate(per_second, getattr(settings, f"{name}_burst")) if per_second > 0 else None

    events = set(settings.webhook_events)
    if events - {"presence", "connections"}:
        raise ValueError(f"webhook events {sorted(events)}: use presence and/or connections")
    handshakes = settings.max_handshakes_per_second
    rates = RateLimits(messages=rate("message"), subscriptions=rate("subscribe"),
                       connections=rate("connection"), api_calls=rate("api"),
                       handshakes=Rate(handshakes, max(1.0, handshakes)) if handshakes else None)
    history = parse_history(settings.history)
    if settings.pusher_app:
        history += CACHE_RULES  # the last event of Pusher cache channels
    hub = HubConfig(node_id=node_id, rates=rates, history=history,
                    shared_history=history_store(settings) is not None,
                    jwt=jwt_config(settings),
                    report_events=bool(settings.pusher_webhook and settings.pusher_app),
                    share_subscription_counts=bool(settings.pusher_app),
                    heartbeat_interval=settings.heartbeat_interval,
                    idle_timeout=settings.idle_timeout,
                    authorization_timeout=settings.authorization_timeout,
                    presence_heartbeat_interval=settings.presence_heartbeat_interval,
                    presence_ttl=settings.presence_ttl, limits=limits,
                    history_timeout=settings.history_timeout,
                    history_max_pending=settings.history_max_pending,
                    broker_bundle_bytes=bundle_bytes(settings),
                    presence_webhooks=(bool(settings.webhook) and "presence" in events)
                    or bool(settings.pusher_webhook and settings.pusher_app),
                    connection_webhooks=bool(settings.webhook) and "connections" in events,
                    client_event_webhooks=settings.webhook_client_events
                    if settings.webhook else (),
                    webhook_settle=settings.webhook_settle,
                    refresh_lead=settings.refresh_lead)
    webhooks = WebhookConfig(urls=settings.webhook, secret=settings.webhook_secret,
                             max_queue=settings.webhook_max_queue) if settings.webhook else None
    return NodeConfig(hub=hub, api_key=settings.api_key, webhooks=webhooks,
                      poll_timeout=settings.poll_timeout,
                      pusher_apps=parse_apps(settings.pusher_app),
                      pusher_webhook=pusher_webhook_config(settings),
                      poll_session_timeout=settings.poll_session_timeout,
                      sse_heartbeat_interval=settings.sse_heartbeat_interval,
                      cors_origin=settings.cors_origin, runtime=runtime,
                      slow_consumers=parse_rules(settings.slow_consumers, _policy),
                      trusted_proxies=parse_networks(settings.trusted_proxy),
                      static_files=load_static_files(settings.static_dir),
                      worker=settings.worker, compression=settings.compression,
                      fanout_chunk=FANOUT_CHUNK)


def pusher_webhook_config(settings: Settings) -> WebhookConfig | None:
    """Pusher webhooks: queued and retried like the native ones (`webhook-max-queue`).

    Raises:
        ValueError: the URL is not http:// or https://.
    """
    if not settings.pusher_webhook:
        return None
    WebhookTarget.parse(settings.pusher_webhook)  # a bad URL is refused at start
    return WebhookConfig(urls=(settings.pusher_webhook,), max_queue=settings.webhook_max_queue)


def _replace_oldest(policy: str) -> bool:
    """`--per-user-limit-policy`: refuse (the new connection) or oldest (closed)."""
    if policy not in ("refuse", "oldest"):
        raise ValueError(f"per-user limit policy {policy!r}: use refuse or oldest")
    return policy == "oldest"


def jwt_config(settings: Settings) -> JwtConfig | None:
    """Token checking for these settings; None when no secret or key is set.

    Raises:
        ValueError: the public key file cannot be read.
    """
    if settings.jwt_secret is None and settings.jwt_public_key is None:
        return None
    public_key = None
    if settings.jwt_public_key is not None:
        try:
            public_key = Path(settings.jwt_public_key).read_text()
        except OSError as error:
            raise ValueError(f"cannot read --jwt-public-key: {error}") from None
    return JwtConfig(secret=settings.jwt_secret, public_key=public_key,
                     audience=settings.jwt_audience, issuer=settings.jwt_issuer)


def parse_rules(text: str, make: Callable[[str, str], T]) -> tuple[T, ...]:
    """`pattern=value,…` as rules, each made by `make(pattern, value)`.

    Raises:
        ValueError: an item does not have that shape, or `make` refuses its value.
    """
    rules = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        pattern, equals, value = item.rpartition("=")
        if not equals or not pattern:
            raise ValueError(f"rule {item!r} is not pattern=value")
        rules.append(make(pattern, value))
    return tuple(rules)


def _history(pattern: str, value: str) -> HistoryRule:
    size, _, ttl = value.partition(":")
    try:
        return HistoryRule(pattern, int(size), float(ttl))
    except ValueError:
        raise ValueError(f"history rule {pattern}={value} is not pattern=size:ttl") from None


def _policy(pattern: str, value: str) -> SlowConsumerRule:
    try:
        return SlowConsumerRule(pattern, SlowConsumerPolicy(value))
    except ValueError:
        choices = ", ".join(p.value for p in SlowConsumerPolicy)
        raise ValueError(f"slow-consumer policy {value!r}: use one of {choices}") from None


def history_store(settings: Settings) -> str | None:
    """The URL of the store shared by the cluster for channel history; None when history
    stays in each node's memory (no history rules, ``local``, or a broker that cannot
    store with ``auto``).

    Raises:
        ValueError: the setting is neither ``local``, ``auto`` nor a store URL.
    """
    if not settings.history and not settings.pusher_app:  # (Pusher cache channels keep one)
        return None
    return store_url(settings.history_store, settings.broker)


def parse_history(text: str) -> tuple[HistoryRule, ...]:
    """`pattern=size:ttl,…` (e.g. `private-room.*=100:300`) as history rules."""
    return parse_rules(text, _history)


def broker_report(statistics: BrokerStatistics,
                  history: HistoryStatistics | None = None) -> BrokerReported:
    """The driver's (and the history service's) counters as the event that carries them
    into /metrics and /health."""
    history = history or HistoryStatistics(available=True, queued=0, overflowed=0)
    return BrokerReported(published=statistics.published, received=statistics.received,
                          dropped=statistics.dropped, queued=statistics.queued,
                          reconnects=statistics.reconnects,
                          publish_latency=statistics.publish_latency,
                          stalled=statistics.stalled, history_available=history.available,
                          history_queued=history.queued, history_overflowed=history.overflowed)


def new_epoch() -> Epoch:
    """Read both clocks once: the only wall-clock read of a process."""
    return Epoch(time.monotonic(), int(time.time() * 1000))


def new_node_id() -> str:
    """A node id unique per process start: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class _RandomPool(threading.local):
    """Bytes from `os.urandom`, read 4 KiB at a time: one system call per 341 ids, not
    one per id (a request id on every publish to a channel with shared history). One pool
    per thread; a forked child starts with an empty one, so it never hands out its
    parent's bytes."""

    def __init__(self) -> None:
        self.data = b""
        self.used = 0

    def take(self, count: int) -> bytes:
        used = self.used
        if used + count > len(self.data):
            self.data, used = os.urandom(4096), 0
        self.used = used + count
        return self.data[used:used + count]


_pool = _RandomPool()
os.register_at_fork(after_in_child=lambda: setattr(_pool, "data", b""))


def random_id() -> str:
    """An unguessable id of 16 URL-safe characters (96 random bits): connection ids double
    as the key of SSE/long-poll sends."""
    return base64.urlsafe_b64encode(_pool.take(12)).decode()


def server_ssl_context(settings: Settings, *,
                       context_class: type[ssl.SSLContext] = ssl.SSLContext,
                       ) -> ssl.SSLContext | None:
    """The TLS context for --tls-cert/--tls-key, or None to serve plain TCP.

    Args:
        settings: where the certificate chain and key are.
        context_class: the context type (gevent passes its cooperative `SSLContext`).

    Raises:
        OSError: a file cannot be read.
        ssl.SSLError: the certificate or key is invalid, or they do not match.
    """
    if not settings.tls_cert:
        return None
    context = context_class(ssl.PROTOCOL_TLS_SERVER)  # secure defaults, TLS 1.2 or later
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


#: The JavaScript client's files, served at `/NAME`, and where each is in the source tree
#: (the wheel packages them in `static/`): the ES module and the build for a plain
#: `<script>` tag.
CLIENT_FILES = {"realtime.js": "realtime.js", "realtime.min.js": "dist/realtime.min.js"}


def client_script(name: str = "realtime.js") -> Path | None:
    """Where a file of the JavaScript client (a key of `CLIENT_FILES`) is: packaged beside
    us, or in the source tree."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "static" / name,
                      here.parents[2] / "clients" / "js" / CLIENT_FILES[name]):
        if candidate.is_file():
            return candidate
    return None


def load_static_files(directory: str | os.PathLike[str] | None) -> dict[str, StaticFile]:
    """Read a directory's files into memory, keyed by URL path, plus the JavaScript client
    (`/realtime.js`, `/realtime.min.js`) and the admin page at `/admin`."""
    admin = Path(__file__).parent / "static" / "admin.html"
    files: dict[str, StaticFile] = {"/admin": _static(admin)}
    for name in CLIENT_FILES:
        script = client_script(name)
        if script is not None:
            files["/" + name] = _static(script)
    if directory is None:
        return files
    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f"static directory {root} does not exist")
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if (path.is_file() and path.stat().st_size <= _MAX_STATIC_BYTES
                and not any(part.startswith((".", "__")) for part in relative.parts)
                and path.suffix != ".py"):
            files["/" + relative.as_posix()] = _static(path)
    return files


def _static(path: Path) -> StaticFile:
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if content_type.startswith("text/") or content_type.endswith("javascript"):
        content_type += "; charset=utf-8"
    return StaticFile(content_type=content_type, body=path.read_bytes())


def worker_count(value: str) -> int:
    """The number of workers `--workers` asks for: `auto` is the cores this process may
    run on.

    Raises:
        ValueError: neither `auto` nor a positive integer.
    """
    if value == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else os.cpu_count() or 1
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"--workers must be a positive integer or auto, not {value!r}")
    return count
