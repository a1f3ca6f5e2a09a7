"""Whom a trusted reverse proxy forwards: `Forwarded` (RFC 7239) and `X-Forwarded-For`."""

from __future__ import annotations

import pytest

from realtime_proto.errors import ConfigError
from realtime_proto.forwarded import client_peer, parse_networks

TRUSTED = parse_networks(["127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8"])
PROXY = "10.1.2.3:40000"


def peer(headers: dict[str, str], socket_peer: str | None = PROXY) -> str | None:
    return client_peer(socket_peer, headers, TRUSTED)


@pytest.mark.parametrize(("headers", "expected"), [
    ({"x-forwarded-for": "203.0.113.7"}, "203.0.113.7:0"),
    ({"x-forwarded-for": "203.0.113.7, 10.9.9.9"}, "203.0.113.7:0"),  # a second proxy
    ({"x-forwarded-for": "203.0.113.7:5555"}, "203.0.113.7:5555"),
    ({"forwarded": "for=203.0.113.7"}, "203.0.113.7:0"),
    ({"forwarded": 'for="203.0.113.7:4711";proto=https;by=10.1.2.3'}, "203.0.113.7:4711"),
    ({"forwarded": "FOR=203.0.113.7"}, "203.0.113.7:0"),  # parameter names ignore case
])
def test_ipv4_clients_of_a_trusted_proxy(headers: dict[str, str], expected: str) -> None:
    assert peer(headers) == expected


@pytest.mark.parametrize(("headers", "expected"), [
    ({"x-forwarded-for": "2001:db8::17"}, "2001:db8::17:0"),
    ({"x-forwarded-for": "2001:DB8:0::17"}, "2001:db8::17:0"),  # normalised: one bucket
    ({"x-forwarded-for": "[2001:db8::17]:8080"}, "2001:db8::17:8080"),
    ({"forwarded": 'for="[2001:db8:cafe::17]:4711"'}, "2001:db8:cafe::17:4711"),
    ({"forwarded": 'for="[2001:db8::17]", for="[fd00::1]"'}, "2001:db8::17:0"),
    ({"x-forwarded-for": "::ffff:203.0.113.7"}, "203.0.113.7:0"),  # IPv4-mapped
])
def test_ipv6_clients_of_a_trusted_proxy(headers: dict[str, str], expected: str) -> None:
    assert peer(headers) == expected


def test_an_ipv6_proxy_is_trusted_by_its_address() -> None:
    assert peer({"x-forwarded-for": "203.0.113.7"}, "::1:40000") == "203.0.113.7:0"
    assert peer({"x-forwarded-for": "203.0.113.7"}, "::ffff:10.0.0.5:40000") == "203.0.113.7:0"


def test_quoted_values_may_escape_and_hold_separators() -> None:
    assert peer({"forwarded": 'for="[::1]:80"'}) == "::1:80"  # trusted, but the leftmost
    assert peer({"forwarded": 'for="[::1]:80"'}, "203.0.113.1:1") == "203.0.113.1:1"
    assert peer({"forwarded": 'for="\\[2001:db8::1\\]:80"'}) == "2001:db8::1:80"
    # a `,` or `;` inside another pair's quoted value splits nothing
    assert peer({"forwarded": 'for=192.0.2.60;ext="a,b;c", for=10.0.0.9'}) == "192.0.2.60:0"


@pytest.mark.parametrize(("value", "expected"), [
    ("for=_hidden", "_hidden:0"),
    ('for="_gazonk:_port"', "_gazonk:0"),  # an obfuscated port is no number
    ("for=unknown", "unknown:0"),
    # a proxy that does not say whom it forwards: the walk stops there, at `unknown`
    ("for=203.0.113.7, proto=https", "unknown:0"),
    # an identifier cannot be a trusted proxy: what is left of it is never believed
    ("for=198.51.100.1, for=_hidden", "_hidden:0"),
])
def test_obfuscated_and_unknown_nodes(value: str, expected: str) -> None:
    assert peer({"forwarded": value}) == expected


def test_the_walk_skips_every_trusted_hop_and_stops_at_the_first_untrusted_one() -> None:
    # the client forged the two leftmost entries; only the proxies' entries are believed
    value = "1.1.1.1, 127.0.0.1, 198.51.100.9, 10.0.0.2, 10.0.0.1"
    assert peer({"x-forwarded-for": value}) == "198.51.100.9:0"
    # every hop trusted: the leftmost is the client
    assert peer({"x-forwarded-for": "10.0.0.7, 10.0.0.8"}) == "10.0.0.7:0"


def test_an_untrusted_peer_cannot_choose_its_address() -> None:
    headers = {"x-forwarded-for": "203.0.113.7", "forwarded": "for=203.0.113.7"}
    assert peer(headers, "198.51.100.1:5000") == "198.51.100.1:5000"
    assert client_peer(PROXY, headers, ()) == PROXY  # nothing trusted
    assert peer(headers, None) is None
    assert peer(headers, "not-an-address:1") == "not-an-address:1"


def test_a_trusted_peer_without_headers_is_the_client() -> None:
    assert peer({}) == PROXY


def test_several_header_lines_join_into_one_list() -> None:
    # HttpFraming joins repeated fields with ", ": a client's own line, then the proxy's
    assert peer({"x-forwarded-for": "6.6.6.6, 203.0.113.7"}) == "203.0.113.7:0"
    assert peer({"forwarded": "for=6.6.6.6, for=203.0.113.7"}) == "203.0.113.7:0"


def test_both_headers_must_name_the_same_client() -> None:
    agreeing = {"forwarded": 'for=6.6.6.6, for="[2001:db8::5]"',
                "x-forwarded-for": "2001:db8::5"}
    assert peer(agreeing) == "2001:db8::5:0"
    # a proxy that appends only X-Forwarded-For and passes the client's Forwarded on:
    # the forged Forwarded disagrees, and neither is believed
    forged = {"forwarded": "for=6.6.6.6", "x-forwarded-for": "203.0.113.7"}
    assert peer(forged) == PROXY


@pytest.mark.parametrize("headers", [
    {"x-forwarded-for": "203.0.113.7, not an address"},
    {"x-forwarded-for": ""},
    {"x-forwarded-for": "[2001:db8::1"},
    {"forwarded": 'for="203.0.113.7'},  # an unterminated quote swallows the rest
    {"forwarded": "for"},
    {"forwarded": "for=203.0.113.7 junk"},
    # a malformed Forwarded cannot make a forged X-Forwarded-For count
    {"forwarded": 'for="x, for=203.0.113.7', "x-forwarded-for": "6.6.6.6"},
])
def test_a_header_that_cannot_be_read_is_not_believed(headers: dict[str, str]) -> None:
    assert peer(headers) == PROXY


def test_networks_are_parsed_once_and_bad_ones_refused() -> None:
    assert [str(n) for n in parse_networks(["10.0.0.0/8", " ::1 ", "192.168.1.7/24"])] == [
        "10.0.0.0/8", "::1/128", "192.168.1.0/24"]
    assert parse_networks("10.0.0.0/8, ::1") == parse_networks(["10.0.0.0/8", "::1"])
    with pytest.raises(ConfigError, match=r"'10\.0\.0\.0/33' is not an address or CIDR range"):
        parse_networks(["10.0.0.0/33"])
    with pytest.raises(ConfigError, match=r"trusted proxy 'proxy\.local'"):
        parse_networks(["proxy.local"])
