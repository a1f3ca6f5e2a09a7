"""Broker URL handling shared by the drivers: query options and safe display.

Every broker URL may carry the :class:`~.api.BrokerOptions` fields as query parameters
(``redis://127.0.0.1:6379/0?probe_interval=1&queue_size=500``); they are taken out before
the URL reaches the client library. Drivers take their own parameters out the same way.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .api import BrokerOptions

__all__ = ["display_address", "split_options", "take_query"]

_OPTION_TYPES: dict[str, type] = {
    field.name: (int if field.name == "queue_size" else float)
    for field in dataclasses.fields(BrokerOptions)
}


def take_query(url: str, names: frozenset[str] | set[str]) -> tuple[str, dict[str, str]]:
    """Remove the query parameters in ``names`` from ``url``; return the rest and them."""
    parts = urlsplit(url)
    taken: dict[str, str] = {}
    kept: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in names:
            taken[key] = value
        else:
            kept.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(kept))), taken


def split_options(url: str, base: BrokerOptions) -> tuple[str, BrokerOptions]:
    """Apply the :class:`BrokerOptions` query parameters of ``url`` on top of ``base``."""
    rest, taken = take_query(url, frozenset(_OPTION_TYPES))
    changes: dict[str, int | float] = {}
    for key, text in taken.items():
        try:
            changes[key] = _OPTION_TYPES[key](text)
        except ValueError:
            raise ValueError(f"broker URL option {key}={text!r} is not a number") from None
    return rest, dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def display_address(url: str) -> str:
    """``url`` without user name, password and query, safe to log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
