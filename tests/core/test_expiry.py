"""Expiring connections: refresh asked before `exp`, refreshed, or closed with 4001."""

from __future__ import annotations

from typing import Any

from realtime_proto import HubConfig, User
from realtime_proto.jwt import JwtConfig, encode_hs256
from realtime_proto.testing import Cluster

SECRET = "expiry-secret"
CONFIG = HubConfig(jwt=JwtConfig(secret=SECRET), refresh_lead=2.0)


def _setup(lifetime: float = 5.0) -> tuple[Cluster, Any, float]:
    cluster = Cluster(1, seed=0, config=CONFIG)
    now = cluster.clock.now  # the simulation's Unix time is its clock, in ms
    conn = cluster.connect("n1", User(id="ann", expires_ms=round((now + lifetime) * 1000)))
    return cluster, conn, now


def _token(sub: str, exp: float) -> str:
    return encode_hs256({"sub": sub, "exp": exp}, SECRET)


def _events(cluster: Cluster, conn: Any) -> list[tuple[str | None, Any]]:
    return [(m.get("event"), m.get("data")) for m in cluster.transports["n1"].take(conn)
            if m.get("type") in ("event", "error")]


def test_refresh_is_asked_before_expiry_and_extends_the_connection() -> None:
    cluster, conn, start = _setup()
    cluster.transports["n1"].take(conn)
    cluster.run_for(2.5)
    assert _events(cluster, conn) == []
    cluster.run_for(1.0)  # expiry at +5, asked 2 s before (at the first sweep after +3)
    [(event, data)] = _events(cluster, conn)
    assert event == "connection.refresh_required" and 1.0 < data["expires_in"] <= 2.0
    cluster.send("n1", conn, {"type": "refresh", "data": {"token": _token("ann", start + 9)}})
    assert _events(cluster, conn) == [("connection.refreshed", {"expires_in": 5.5})]
    cluster.run_for(2.0)  # past the first expiry: still open
    assert conn not in cluster.transports["n1"].closed
    assert _events(cluster, conn) == []
    cluster.run_for(2.0)
    assert [e for e, _ in _events(cluster, conn)] == ["connection.refresh_required"]
    cluster.run_for(2.0)  # no second refresh: closed at the new expiry
    assert cluster.transports["n1"].closed[conn] == (4001, "token expired")
    assert cluster.hub("n1").connection(conn) is None


def test_a_token_for_another_user_closes_and_a_bad_one_is_an_error() -> None:
    cluster, conn, start = _setup()
    cluster.transports["n1"].take(conn)
    cluster.send("n1", conn, {"type": "refresh", "data": {}})
    assert _events(cluster, conn)[0][1]["code"] == 4007
    forged = encode_hs256({"sub": "ann", "exp": start + 60}, "not-the-secret")
    for bad in (forged, _token("ann", start - 1)):  # forged, expired
        cluster.send("n1", conn, {"type": "refresh", "data": {"token": bad}})
        [(_, error)] = _events(cluster, conn)
        assert error["code"] == 4001
    assert conn not in cluster.transports["n1"].closed  # still open, until it expires
    cluster.send("n1", conn, {"type": "refresh", "data": {"token": _token("bob", start + 60)}})
    assert cluster.transports["n1"].closed[conn] == (4001, "the new token is for another user")


def test_connections_without_exp_and_anonymous_ones_never_expire() -> None:
    cluster = Cluster(1, seed=0, config=CONFIG)
    forever = cluster.connect("n1", User(id="ann"))
    anonymous = cluster.connect("n1")
    cluster.run_for(50)  # (under the idle timeout)
    assert cluster.transports["n1"].closed == {}
    cluster.send("n1", anonymous, {"type": "refresh", "data": {"token": _token("x", 1e12)}})
    assert [d["code"] for e, d in _events(cluster, anonymous) if e is None] == [4001]
    assert forever not in cluster.transports["n1"].closed


def _channel_token(channel: str, exp: float, sub: str = "ann") -> str:
    return encode_hs256({"sub": sub, "channel": channel, "exp": exp}, SECRET)


def test_a_subscription_token_expires_unless_the_client_subscribes_again_with_a_new_one() -> None:
    cluster = Cluster(1, seed=0, config=CONFIG)
    start = cluster.clock.now
    conn = cluster.connect("n1", User(id="ann"))
    doc = "private-doc.1"
    cluster.send("n1", conn, {"type": "subscribe", "channel": doc,
                              "data": {"token": _channel_token(doc, start + 5)}})
    assert [e for e, _ in _events(cluster, conn)][-1] == "subscription.succeeded"
    cluster.run_for(3.5)
    [(event, data)] = _events(cluster, conn)
    assert event == "subscription.refresh_required" and 1.0 < data["expires_in"] <= 2.0
    other = _channel_token("private-doc.2", start + 60)  # for another channel: refused
    cluster.send("n1", conn, {"type": "subscribe", "channel": doc, "data": {"token": other}})
    assert _events(cluster, conn)[0][1]["code"] == 4003
    cluster.send("n1", conn, {"type": "subscribe", "channel": doc,
                              "data": {"token": _channel_token(doc, start + 9)}})
    assert [e for e, _ in _events(cluster, conn)] == ["subscription.succeeded"]
    cluster.run_for(2.0)  # past the first exp: still subscribed
    assert conn in cluster.hub("n1").connection_ids(channel=doc)
    cluster.run_for(4.0)  # no new token: the subscription ends, the connection stays
    events = _events(cluster, conn)
    assert events[-1] == ("subscription.revoked", {"reason": "token expired"})
    assert conn not in cluster.hub("n1").connection_ids(channel=doc)
    assert conn not in cluster.transports["n1"].closed
