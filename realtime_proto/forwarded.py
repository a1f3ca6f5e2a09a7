"""The client behind trusted reverse proxies: `Forwarded` (RFC 7239) and `X-Forwarded-For`.

A proxy appends the address it received a request from to these headers. Only a trusted
proxy's word counts, so the list is read from the right: each address that is itself a
trusted proxy is skipped, and the first one that is not is the client (anything further
left was written by the client and may be forged).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from .errors import ConfigError

__all__ = ["Network", "client_peer", "parse_networks"]

Network = IPv4Network | IPv6Network

#: RFC 7239 §6.3 obfuscated identifiers (`_hidden`), and `unknown` (§6.2)
_IDENTIFIER = re.compile(r"_[A-Za-z0-9._-]+|unknown", re.ASCII)
#: one `name=value` pair of a `Forwarded` element (or none) and the separator after it
_PAIR = re.compile(r'\s*(?:([^=;,\s"]+)=("(?:[^"\\]|\\.)*"|[^;,\s"]*)\s*)?([;,]|\Z)')


def parse_networks(items: Iterable[str] | str) -> tuple[Network, ...]:
    """Addresses and CIDR ranges (`10.0.0.0/8`, `::1`), or one string of them separated
    by commas, as networks.

    Raises:
        ConfigError: an item is neither.
    """
    networks = []
    for item in items.split(",") if isinstance(items, str) else items:
        try:
            networks.append(ip_network(item.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"trusted proxy {item!r} is not an address or CIDR range") from None
    return tuple(networks)


def client_peer(peer: str | None, headers: Mapping[str, str],
                trusted: tuple[Network, ...]) -> str | None:
    """The client's "host:port" for a request that came from the socket `peer` ("host:port").

    When the peer is a trusted proxy and the request says whom it forwards (`Forwarded`,
    `X-Forwarded-For`), that client: an address, an obfuscated identifier (`_hidden`) or
    `unknown`, with the port the proxy gave or 0. Otherwise, or when a header cannot be
    read, or the two headers name different clients, `peer` itself.
    """
    if peer is None or not _is_trusted(peer.rpartition(":")[0], trusted):
        return peer
    found = {_walk(chain, trusted) for chain in (_forwarded_chain(headers.get("forwarded")),
                                                 _list_chain(headers.get("x-forwarded-for")))
             if chain is not None}
    if len(found) != 1:
        return peer  # neither header, or they disagree: believe only the socket
    client = found.pop()
    return peer if client is None else f"{client[0]}:{client[1]}"


def _walk(chain: list[str], trusted: tuple[Network, ...]) -> tuple[str, str] | None:
    """From the right, the first node that is not a trusted proxy (the leftmost when all
    are), as (host, port); None when a node on the way cannot be read."""
    client = None
    for text in reversed(chain):
        node = _node(text)
        if node is None:
            return None
        host, port = node
        client = str(host), port
        if isinstance(host, str) or not any(host in network for network in trusted):
            return client
    return client


def _node(text: str) -> tuple[IPv4Address | IPv6Address | str, str] | None:
    """`host`, `host:port`, `[v6]`, `[v6]:port` as (address or identifier, port: digits
    or "0"); None when the host is neither an address nor an identifier."""
    text = text.strip()
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            return None
        port = port[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    port = port if port.isdigit() else "0"
    try:
        return _address(host), port
    except ValueError:
        return (host, port) if _IDENTIFIER.fullmatch(host) else None


@lru_cache(maxsize=1024)
def _address(host: str) -> IPv4Address | IPv6Address:
    """The address `host` names (IPv4-mapped IPv6 as IPv4); remembered, since a proxy's
    own address comes with every request.

    Raises:
        ValueError: `host` is not an address.
    """
    address = ip_address(host)
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
    return address


def _is_trusted(host: str, trusted: tuple[Network, ...]) -> bool:
    try:
        address = _address(host)
    except ValueError:
        return False
    return any(address in network for network in trusted)


def _list_chain(value: str | None) -> list[str] | None:
    """X-Forwarded-For: addresses separated by commas."""
    return None if value is None else value.split(",")


def _forwarded_chain(value: str | None) -> list[str] | None:
    """Each element's `for=` value, unquoted (`unknown` when an element has none, so the
    walk stops there); `[""]`, which no walk reads, when the header is malformed; None
    when it is absent."""
    if value is None:
        return None
    chain: list[str] = []
    node, position = "unknown", 0
    while (match := _PAIR.match(value, position)) is not None:
        name, raw, separator = match.groups()
        if name is not None and name.lower() == "for":
            node = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
        if separator != ";":
            chain.append(node)
            node = "unknown"
        if not separator:
            return chain
        position = match.end()
    return [""]
