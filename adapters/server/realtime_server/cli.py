"""The `realtime` command: flags over REALTIME_* environment over a TOML file over defaults."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import tomllib
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any, NoReturn

from realtime_proto import __version__
from realtime_proto.errors import ConfigError
from realtime_server.edge import Bounds, Settings, new_node_id

__all__ = ["JsonFormatter", "main", "resolve_settings"]

_HELP = {
    "host": "address to listen on",
    "port": "port to listen on",
    "broker": "broker URL: memory://, redis://, nats://, amqp://, postgresql://",
    "api_key": "key for the HTTP API (Authorization: Bearer KEY); generated and printed "
               "when not given",
    "jwt_secret": "HS256 secret that signs connection tokens",
    "jwt_public_key": "PEM file with the public key of RS256 or ES256 tokens",
    "jwt_audience": "the `aud` tokens must name (default: not checked)",
    "jwt_issuer": "the `iss` tokens must have (default: not checked)",
    "static_dir": "directory served at / (the example chat, your own pages)",
    "log_level": "debug, info, warning or error",
    "log_format": "text (one line per record) or json (one JSON object per line: time, "
                  "level, logger, message, node_id, and connection_id and user_id where "
                  "they apply)",
    "node_id": "this node's id in a cluster (default: host-pid-random)",
    "tls_cert": "PEM certificate chain: serve https:// and wss://",
    "tls_key": "PEM private key for --tls-cert",
    "runtime": "asyncio, trio or gevent",
    "cors_origin": "Access-Control-Allow-Origin for other origins ('' to disable)",
    "heartbeat_interval": "seconds of client silence before the server pings",
    "idle_timeout": "seconds of client silence before closing (default 2 x heartbeat + 10)",
    "authorization_timeout": "seconds an authorization callback may take",
    "presence_heartbeat_interval": "seconds between presence heartbeats to other nodes",
    "presence_ttl": "seconds after which a silent node's presence members are removed",
    "poll_timeout": "seconds a long-poll request is held",
    "poll_session_timeout": "seconds without a poll before a long-poll connection closes",
    "sse_heartbeat_interval": "seconds between SSE comment heartbeats",
    "max_message_bytes": "largest message a client may send",
    "max_subscriptions": "channels per connection",
    "max_output_bytes": "bytes queued per socket before it is dropped as a slow consumer",
    "max_poll_backlog": "messages queued per long-poll connection before it is dropped",
    "max_body_bytes": "largest HTTP request body (API, POST /send)",
    "message_rate": "messages per second a connection may send (0: no limit)",
    "message_burst": "messages a connection may send at once",
    "subscribe_rate": "subscribe requests per second per connection (0: no limit)",
    "subscribe_burst": "subscribe requests at once per connection",
    "connection_rate": "new connections per second from one IP address (0: no limit)",
    "connection_burst": "new connections at once from one IP address",
    "trusted_proxy": "address or CIDR range of a reverse proxy whose Forwarded or "
                     "X-Forwarded-For names the client (repeatable; environment and TOML: "
                     "a comma list, a list)",
    "api_rate": "HTTP API calls per second per API key (0: no limit)",
    "api_burst": "HTTP API calls at once per API key",
    "history": "channels that keep history for recovery: pattern=size:ttl,… "
               "(e.g. 'private-room.*=100:300')",
    "history_store": "where history is kept: auto (shared in the broker's server when it is "
                     "Redis, PostgreSQL or NATS with JetStream, else local), local (each "
                     "node's memory), or a store URL (redis://…, postgresql://…, nats://…) "
                     "shared by every node",
    "history_timeout": "seconds a shared history store may take to place a publish or answer "
                       "a read: then the message goes out without an offset (and the "
                       "channel's epoch ends), the subscription without history",
    "history_max_pending": "publishes waiting for the shared history store at most; past "
                           "it the oldest goes out without an offset",
    "broker_bundle_bytes": "largest broker message bundling publishes to one channel made "
                           "together (a burst, POST /api/batch); 0: one broker message per "
                           "publish (default: 7000 on PostgreSQL, 32768 on the others)",
    "auth_webhook": "URL the server POSTs {connection_id, user_id, channel, info} to, to ask "
                    "whether a connection may join a private or presence channel",
    "auth_webhook_timeout": "seconds the auth webhook may take (then: refused with 4500)",
    "auth_webhook_cache": "seconds an auth webhook answer is reused for the same user and channel",
    "pusher_app": "serve the Pusher Channels protocol for an app: ID:KEY:SECRET (repeatable; "
                  "pusher-js connects to /app/KEY, the Pusher SDKs call /apps/ID/…)",
    "pusher_webhook": "URL the server POSTs Pusher webhooks to (channel_occupied/vacated, "
                      "member_added/removed, client_event), signed with the app's secret, "
                      "retried with back-off",
    "slow_consumers": "slow-consumer policy by channel: pattern=disconnect|drop_oldest|latest,… "
                      "(default: disconnect with 4021)",
    "workers": "worker processes sharing the port, joined through the broker (auto: one "
               "per core; Linux, asyncio, not memory://)",
    # -- the control plane (docs/webhooks.md)
    "webhook": "URL that gets the presence events (channel.occupied, channel.vacated, "
               "member.added, member.removed) as signed JSON POSTs, once per cluster "
               "(repeatable; environment and TOML: a comma list, a list)",
    "webhook_secret": "key of the X-Realtime-Signature HMAC-SHA256 of each webhook body",
    "webhook_settle": "seconds a presence change must last before it is reported",
    "webhook_max_queue": "webhook events waiting per URL at most (then the oldest are "
                         "dropped and counted)",
    "webhook_events": "which events go to the webhooks: presence (default), connections "
                      "(connection.opened / connection.closed of users' connections); "
                      "repeatable or a comma list",
    "webhook_client_events": "channel pattern whose client events go to the webhooks too "
                             "(repeatable or a comma list)",
    "refresh_lead": "seconds before a connection token's exp that the client is asked to "
                    "refresh it (connection.refresh_required); at exp it is closed with 4001",
    "max_connections": "client connections on this node (0: no limit); past it: 503 before "
                       "the upgrade",
    "max_connections_per_user": "connections of one user across the cluster (0: no limit); "
                                "past it, see --per-user-limit-policy",
    "max_handshakes_per_second": "new connections this node admits per second from all "
                                 "clients together (0: no limit); past it: 503 with "
                                 "Retry-After before the upgrade (reconnect storms)",
    "per_user_limit_policy": "at --max-connections-per-user: refuse (the new connection: 429 "
                             "with 4013) or oldest (the user's oldest is closed with 4013)",
    "compression": "offer permessage-deflate (RFC 7692) to WebSocket clients on /ws: a "
                   "broadcast is compressed once for every subscriber (environment: 1/0, "
                   "true/false; TOML: a boolean)",
}

#: the words an on/off option takes in the environment
_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True,
             "0": False, "false": False, "no": False, "off": False}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        _fail(message, status=2)


def _fail(message: str, status: int = 1) -> NoReturn:
    print(f"realtime: error: {message}", file=sys.stderr)
    raise SystemExit(status)


def _option_types() -> dict[str, type]:
    hints = typing.get_type_hints(Settings)
    result = {}
    for name in Settings.names():
        hint = hints[name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        result[name] = tuple if typing.get_origin(hint) is tuple else args[0] if args else hint
    return result


def _convert(name: str, value: Any, kind: type, source: str) -> Any:
    if kind is bool:  # on/off options: a flag, a TOML boolean, or a word
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOLEANS:
            return _BOOLEANS[value.strip().lower()]
        raise ConfigError(f"{source}: {name} must be true or false, not {value!r}")
    if value is None or (isinstance(value, kind) and not isinstance(value, bool)):
        return value
    if kind is tuple:  # a list: repeated flags, a TOML list, or items separated by commas
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list) and all(isinstance(item, str) for item in items):
            return tuple(part.strip() for item in items for part in item.split(",")
                         if part.strip())
        raise ConfigError(f"{source}: {name} must be a list of strings, not {value!r}")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # `workers = 2` in TOML
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            pass
    raise ConfigError(f"{source}: {name} must be {kind.__name__}, not {value!r}")


def _flag_type(name: str, kind: type) -> Callable[[str], Any]:
    """Convert and check one flag's value, so that argparse refuses it (exit 2)."""
    def convert(text: str) -> Any:
        try:
            return Settings.check(name, _convert(name, text, kind, "command line"))
        except (ConfigError, ValueError) as error:
            raise argparse.ArgumentTypeError(str(error).removeprefix("command line: ")) from None
    convert.__name__ = kind.__name__  # what argparse names in its own messages
    return convert


def _with_default(name: str) -> str:
    default = next(f.default for f in fields(Settings) if f.name == name)
    if default is None or default in ("", ()):  # the help says what happens without it
        return _HELP[name]
    return f"{_HELP[name]} (default: {default})"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="realtime", description="realtime_proto server")
    parser.add_argument("--version", action="version", version=f"realtime {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="run a server",
        description="Run a realtime server. Every option can also be set as an environment "
                    "variable REALTIME_<NAME> (e.g. REALTIME_PORT) or in the TOML file of "
                    "--config; flags win over the environment, which wins over the file.")
    serve.error = parser.error  # type: ignore[method-assign]
    serve.add_argument("--config", help="TOML file with any of the options below "
                                        "(default: $REALTIME_CONFIG)")
    for name, kind in _option_types().items():
        if kind is bool:  # a switch: present means on
            serve.add_argument("--" + name.replace("_", "-"), dest=name, default=None,
                               action="store_const", const=True, help=_HELP[name])
            continue
        serve.add_argument("--" + name.replace("_", "-"), dest=name, default=None,
                           action="append" if kind is tuple else "store",
                           type=str if kind is tuple else _flag_type(name, kind),
                           metavar="ITEM" if kind is tuple else kind.__name__.upper(),
                           help=_with_default(name))
    token = commands.add_parser(
        "token", help="print an HS256 connection token (for testing)",
        description="Print an HS256 connection token signed with the server's --jwt-secret.")
    token.error = parser.error  # type: ignore[method-assign]
    secret = os.environ.get("REALTIME_JWT_SECRET")
    token.add_argument("--secret", required=secret is None, default=secret,
                       help="the HS256 secret the server checks tokens with (its "
                            "--jwt-secret; default: $REALTIME_JWT_SECRET)")
    token.add_argument("--sub", required=True, help="the user id (the `sub` claim)")
    token.add_argument("--channels", default="",
                       help="comma-separated channel patterns the user may join "
                            "(default: none, only public channels)")
    token.add_argument("--ttl", type=_ttl, default=3600,
                       help="seconds until it expires (default: %(default)s)")
    return parser


_TTL = Bounds(1)


def _ttl(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ttl must be int, not {text!r}") from None
    if not _TTL.admit(value):
        raise argparse.ArgumentTypeError(f"ttl must be {_TTL}, not {value}")
    return value


def resolve_settings(flags: Mapping[str, Any], environ: Mapping[str, str],
                     config_path: str | None) -> Settings:
    """Merge the sources in order of precedence.

    Raises:
        ConfigError: a value has the wrong type, an unknown key, or the file is unreadable.
    """
    types = _option_types()
    layers: list[tuple[str, Mapping[str, Any]]] = []
    path = config_path or environ.get("REALTIME_CONFIG")
    if path:
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"cannot read config file {path}: {error}") from None
        unknown = sorted(set(data) - set(types))
        if unknown:
            raise ConfigError(f"{path}: unknown option(s) {', '.join(unknown)}")
        layers.append((path, data))
    layers.append(("environment", {name: environ[f"REALTIME_{name.upper()}"]
                                   for name in types if f"REALTIME_{name.upper()}" in environ}))
    layers.append(("command line", {k: v for k, v in flags.items() if v is not None}))
    merged: dict[str, Any] = {}
    for source, values in layers:
        for name, value in values.items():
            merged[name] = _convert(name, value, types[name], source)
    for name in ("api_key", "jwt_secret", "jwt_public_key", "jwt_audience", "jwt_issuer",
                 "auth_webhook", "pusher_webhook", "webhook_secret",
                 "tls_cert", "tls_key", "static_dir", "cors_origin"):
        if merged.get(name) == "" and name != "cors_origin":
            merged[name] = None
    if merged.get("cors_origin") == "":
        merged["cors_origin"] = None
    try:
        return Settings(**merged)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `realtime` command."""
    args = _parser().parse_args(argv)
    if args.command == "token":
        import time

        from realtime_proto.jwt import encode_hs256

        claims: dict[str, Any] = {"sub": args.sub, "exp": int(time.time()) + args.ttl}
        if args.channels:
            claims["channels"] = args.channels.split(",")
        print(encode_hs256(claims, args.secret))
        return
    flags = {name: getattr(args, name) for name in Settings.names()}
    try:
        settings = resolve_settings(flags, os.environ, args.config)
    except ConfigError as error:
        _fail(str(error))
    settings.node_id = settings.node_id or new_node_id()
    _configure_logging(settings, settings.node_id)
    _serve_workers(settings)


def _serve_workers(settings: Settings) -> None:
    """`--workers N`: one process serves, or a supervisor forks N (`workers.py`)."""
    from realtime_server.edge import worker_count

    from .workers import Supervisor, workers_refused

    count = worker_count(settings.workers)
    if count == 1:
        _serve(settings)
        return
    refused = workers_refused(settings, count)
    if refused is not None:
        _fail(refused, status=2)
    if settings.api_key_generated:
        print(f"realtime: generated API key (use --api-key to choose one): "
              f"{settings.api_key}", flush=True)
    try:
        status = Supervisor(settings, count, _serve_worker).run()
    except OSError as error:
        _fail(f"cannot listen on {settings.host}:{settings.port}: {error.strerror or error}")
    raise SystemExit(status)


def _serve_worker(settings: Settings) -> None:
    """One worker of `--workers`: its log lines name its own node id."""
    _configure_logging(settings, settings.node_id or "")
    _serve(settings)


#: what a record may carry (`extra=`) that a JSON line includes
_CONTEXT = ("connection_id", "user_id", "channel")


class JsonFormatter(logging.Formatter):
    """One JSON object per record and line: `time` (ISO 8601, UTC), `level`, `logger`,
    `message`, `node_id`, the record's `connection_id`, `user_id` and `channel` when
    given, and `exception` (the traceback, one string) when there is one."""

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(), "logger": record.name,
            "message": record.getMessage(), "node_id": self.node_id}
        for key in _CONTEXT:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _configure_logging(settings: Settings, node_id: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter(node_id))
        logging.captureWarnings(True)  # warnings too, as JSON lines
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)


_RUNTIMES = {"asyncio": "realtime_asyncio", "trio": "realtime_trio",
             "gevent": "realtime_gevent"}


def _serve(settings: Settings) -> None:
    from realtime_brokers import BrokerError

    runtime = settings.runtime
    try:
        Server: Any = importlib.import_module(_RUNTIMES[runtime]).RealtimeServer
    except ImportError as error:
        _fail(f"the {runtime} runtime is not installed: {error}")
    try:
        server = Server(settings)
        if settings.api_key_generated:
            print(f"realtime: generated API key (use --api-key to choose one): "
                  f"{settings.api_key}", flush=True)
        server.run()
    except OSError as error:
        _fail(f"cannot listen on {settings.host}:{settings.port}: {error.strerror or error}")
    except (BrokerError, ConfigError, ValueError) as error:
        _fail(str(error))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
