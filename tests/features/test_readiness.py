"""Readiness apart from liveness: `GET /ready` answers 503 while the broker is away and
while the node drains, `GET /health` stays 200; and the API's default rate lets a busy
backend publish."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from typing import Any

import httpx
import pytest

from realtime_proto.events import BrokerLost, BrokerRestored

from ..brokers.proxy import TcpProxy
from ..core.nodekit import API_KEY, Harness
from ..core.test_node import api, http

REDIS = ("127.0.0.1", 6379)


def status(h: Harness, path: str) -> tuple[int, dict[str, Any]]:
    response = http(h, "GET", path)
    return response.status, json.loads(response.body)


def test_ready_follows_the_broker_and_the_drain_while_health_stays_200() -> None:
    h = Harness()
    early = h.open()  # a socket accepted before the drain (an embedding host's server)
    code, body = status(h, "/ready")
    assert (code, body["ready"], body["draining"]) == (200, True, False)
    h.node.handle(BrokerLost(reason="gone"), now=h.clock.now)
    h.pump()
    code, body = status(h, "/ready")
    assert (code, body["ready"], body["broker"]) == (503, False, "disconnected")
    assert status(h, "/health")[0] == 200
    h.node.handle(BrokerRestored(), now=h.clock.now)
    h.pump()
    assert status(h, "/ready")[0] == 200
    h.node.shutdown(now=h.clock.now)
    h.pump()
    assert early in h.closed  # idle sockets are closed at once ...
    code, body = status(h, "/ready")  # ... and any request still reaching the node is told
    assert (code, body["ready"], body["draining"]) == (503, False, True)


def test_the_default_api_rate_lets_a_busy_backend_publish() -> None:
    h = Harness()  # the default RateLimits
    statuses = {api(h, "POST", "/api/publish", {"channel": "news", "event": "tick",
                                                "data": n}).status for n in range(2500)}
    assert statuses == {200}  # 500/s with a burst of 1000 refused from the 1001st


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _redis_up() -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(REDIS) == 0


@pytest.mark.broker
def test_ready_is_503_while_a_real_process_has_lost_its_broker() -> None:
    if not _redis_up():
        if os.environ.get("CI"):
            pytest.fail("Redis is not answering on 127.0.0.1:6379")
        pytest.skip("Redis is not answering on 127.0.0.1:6379")

    async def scenario() -> None:
        async with TcpProxy(*REDIS) as proxy:
            port = _free_port()
            process = subprocess.Popen(
                [sys.executable, "-m", "realtime_server.cli", "serve", "--port", str(port),
                 "--api-key", API_KEY, "--broker", f"redis://127.0.0.1:{proxy.port}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                    async def until(code: int) -> httpx.Response:
                        """GET /ready until it answers `code` (bounded)."""
                        async with asyncio.timeout(30):
                            while True:
                                assert process.poll() is None
                                try:
                                    response = await client.get("/ready")
                                except httpx.TransportError:
                                    response = None  # not listening yet
                                if response is not None and response.status_code == code:
                                    return response
                                await asyncio.sleep(0.05)
                    assert (await until(200)).json()["broker"] == "connected"
                    proxy.refuse()
                    proxy.cut()  # the broker is gone, and stays gone
                    assert (await until(503)).json()["ready"] is False
                    health = await client.get("/health")
                    assert (health.status_code, health.json()["status"]) == (200, "degraded")
                    proxy.allow()
                    assert (await until(200)).json()["ready"] is True
                process.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(process.wait, 20) == 0
            finally:
                if process.poll() is None:
                    process.kill()
                await asyncio.to_thread(process.communicate, None, 20)
    asyncio.run(scenario())
