"""Broker drivers for realtime_proto: they move bytes between the nodes of a cluster.

``open_broker(url, listener, node_id=...)`` picks a driver by URL scheme and imports its
client library only then:

=====================================  ============================================
``memory://`` or ``memory://NAME``     in-process bus (the embedded default)
``redis://…``, ``rediss://…``          Redis Pub/Sub (redis-py asyncio)
``nats://…``                           NATS core subjects (nats-py)
``amqp://…``, ``amqps://…``            RabbitMQ: one direct exchange, a queue per node
``postgresql://…``, ``postgres://…``   PostgreSQL LISTEN/NOTIFY (asyncpg)
=====================================  ============================================

Every driver runs under the same supervisor (:mod:`realtime_brokers.supervisor`): one
ordered, bounded command queue, reconnection with backoff, re-subscription and an
end-to-end probe. See ``docs/brokers.md``.
"""

from __future__ import annotations

import importlib

from .api import (
    BrokerClient,
    BrokerError,
    BrokerListener,
    BrokerOptions,
    BrokerStatistics,
    BrokerUnavailable,
)

__all__ = [
    "SCHEMES",
    "BrokerClient",
    "BrokerError",
    "BrokerListener",
    "BrokerOptions",
    "BrokerStatistics",
    "BrokerUnavailable",
    "open_broker",
]

SCHEMES: dict[str, str] = {
    "memory": "memory_driver",
    "redis": "redis_driver",
    "rediss": "redis_driver",
    "nats": "nats_driver",
    "amqp": "amqp_driver",
    "amqps": "amqp_driver",
    "postgresql": "postgres_driver",
    "postgres": "postgres_driver",
}
"""URL scheme → driver module in this package."""

_EXTRAS = {
    "redis_driver": "redis",
    "nats_driver": "nats",
    "amqp_driver": "rabbitmq",
    "postgres_driver": "postgresql",
}


def open_broker(
    url: str,
    listener: BrokerListener,
    *,
    node_id: str,
    options: BrokerOptions | None = None,
) -> BrokerClient:
    """A client for the broker at ``url``, not yet connected (``await client.start()``).

    Args:
        url: selects the driver by scheme; :class:`BrokerOptions` fields given as query
            parameters (``?probe_interval=1``) override ``options``.
        listener: receives messages and connection loss and recovery, on the loop.
        node_id: this server process's id, used in the private probe topic and in the
            connection names the broker shows.
        options: defaults for the shared options.

    Returns:
        The client; it imported only its own broker's client library.

    Raises:
        ValueError: unknown scheme, or a bad option.
        BrokerError: the broker's client library is not installed.
    """
    from .supervisor import SupervisedClient
    from .urls import split_options

    scheme = url.partition(":")[0].lower()
    module_name = SCHEMES.get(scheme)
    if module_name is None or "://" not in url:
        known = ", ".join(f"{name}://" for name in SCHEMES)
        raise ValueError(f"unsupported broker URL {url.partition('?')[0]!r}; use one of {known}")
    rest, merged = split_options(url, options or BrokerOptions())
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
    except ImportError as exc:
        extra = _EXTRAS.get(module_name, "all")
        raise BrokerError(
            f"the {scheme} broker needs its client library: "
            f"pip install 'realtime-proto[{extra}]' ({exc})"
        ) from exc
    driver = module.create_driver(rest, node_id=node_id, options=merged)
    return SupervisedClient(driver, listener, node_id=node_id, options=merged)
