"""`realtime serve --workers N`: real worker processes on one port, on real brokers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from realtime_behaviour.clients import Client, WsClient, connect
from realtime_proto.errors import ConfigError
from realtime_server.cli import resolve_settings
from realtime_server.edge import worker_count

from .nodes import API_KEY, SECRET, TTL, broker_url, eventually, free_port, require
from .test_processes import token

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="--workers needs Linux (SO_REUSEPORT)")


class Workers:
    """One `realtime serve --workers N` parent process on a free port."""

    def __init__(self, broker: str, count: int, log: Path, *extra: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.count = count
        self.log = log
        command = [sys.executable, "-m", "realtime_server.cli", "serve",
                   "--workers", str(count), "--port", str(self.port), "--broker", broker,
                   "--node-id", "wk", "--api-key", API_KEY, "--jwt-secret", SECRET,
                   "--presence-ttl", str(TTL), "--presence-heartbeat-interval", "1",
                   "--connection-rate", "0", "--api-rate", "0", "--message-rate", "0",
                   "--poll-timeout", "2", *extra]
        self._log_file = log.open("w")
        self.process = subprocess.Popen(command, stdout=self._log_file,
                                        stderr=subprocess.STDOUT)

    def children(self) -> set[int]:
        """The worker pids (Linux: the parent's children in /proc)."""
        pid = self.process.pid
        with contextlib.suppress(FileNotFoundError):
            return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
        return set()

    def health(self) -> dict[str, Any] | None:
        """`/health` over a new TCP connection (so the kernel picks a worker anew)."""
        try:
            response = httpx.get(f"{self.base}/health", timeout=2)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    def wait_every_worker(self, timeout: float = 30.0) -> None:
        """Until `/health` has been answered by every worker."""
        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        while seen != set(range(self.count)):
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"only workers {seen} answered"
            health = self.health()
            if health is not None:
                seen.add(health["worker"])
            else:
                time.sleep(0.05)  # not listening yet: the next connection may be refused too

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log_file.close()
        return self.process.wait()


@contextlib.contextmanager
def workers(broker: str, log: Path, *extra: str, count: int = 2) -> Iterator[Workers]:
    server = Workers(broker, count, log, *extra)
    try:
        server.wait_every_worker()
        yield server
    finally:
        server.stop()


async def connections_by_worker(http: httpx.AsyncClient, server: Workers) -> dict[int, float]:
    """Each worker's `realtime_connections{transport="websocket"}`, read from the
    `worker` label of `/metrics` answered over new connections until all have answered."""
    found: dict[int, float] = {}
    async with asyncio.timeout(15):
        while len(found) < server.count:
            response = await http.get(f"{server.base}/metrics",
                                      headers={"connection": "close"})
            for line in response.text.splitlines():
                if line.startswith("realtime_connections{") and 'transport="websocket"' in line:
                    worker = int(line.partition('worker="')[2].partition('"')[0])
                    found[worker] = float(line.rsplit(" ", 1)[1])
    return found


async def api(http: httpx.AsyncClient, server: Workers, method: str, path: str,
              body: object = None) -> httpx.Response:
    response = await http.request(method, f"{server.base}/api/{path}", json=body,
                                  headers={"Authorization": f"Bearer {API_KEY}",
                                           "connection": "close"})
    assert response.status_code == 200, response.text
    return response


async def heard_by_all(http: httpx.AsyncClient, server: Workers, clients: list[Client],
                       path: str, body: dict[str, Any], event: str) -> None:
    """Repeat an API call (each on a new connection, so on any worker) until every client
    has the event: a worker's broker subscription takes effect a moment after the
    client's acknowledgement."""
    for client in clients:
        async with asyncio.timeout(15):
            while True:
                await api(http, server, "POST", path, body)
                with contextlib.suppress(TimeoutError):
                    await client.next(event, timeout=0.3)
                    break


@contextlib.asynccontextmanager
async def ws_clients(port: int, users: list[str]) -> AsyncIterator[list[Client]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(connect("websocket", port, token=token(user)))
               for user in users]


@pytest.mark.parametrize("kind", ["redis", "nats"])
def test_workers_are_one_server(kind: str, tmp_path: Path) -> None:
    require(kind)
    users = [f"u{n}" for n in range(16)]

    async def scenario(server: Workers) -> None:
        async with httpx.AsyncClient() as http, ws_clients(server.port, users) as clients:
            by_worker = await connections_by_worker(http, server)
            assert sum(by_worker.values()) == len(users)
            assert all(count > 0 for count in by_worker.values()), by_worker  # both serve
            for client in clients:
                ack = await client.subscribe("presence-lobby")
                assert ack["event"] == "subscription.succeeded", ack

            async def everyone_present() -> bool:  # asked of any worker
                response = await api(http, server, "GET", "channels/presence-lobby/members")
                return {m["user_id"] for m in response.json()["members"]} == set(users)

            await eventually(everyone_present)
            await heard_by_all(http, server, clients, "publish",
                               {"channel": "presence-lobby", "event": "news", "data": 1}, "news")
            for user, client in zip(users, clients, strict=True):
                await heard_by_all(http, server, [client], f"users/{user}/send",
                                   {"event": "direct", "data": user}, "direct")
                assert client.seen[-1]["data"] == user

    with workers(broker_url(kind), tmp_path / "serve.log") as server:
        asyncio.run(scenario(server))


def test_a_killed_worker_is_restarted_and_serves_again(tmp_path: Path) -> None:
    require("redis")
    with workers(broker_url("redis"), tmp_path / "serve.log") as server:
        before = server.children()
        assert len(before) == 2
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while not (len(server.children()) == 2 and victim not in server.children()):
            assert time.monotonic() < deadline, server.children()
            time.sleep(0.05)
        server.wait_every_worker()  # the new process answers as its worker index
        assert "was killed by SIGKILL; restarting it" in server.log.read_text()

        async def connects() -> None:
            async with ws_clients(server.port, ["a", "b", "c", "d"]) as clients:
                assert all(client.connection_id for client in clients)

        asyncio.run(connects())
        assert server.process.poll() is None


def test_sigterm_drains_every_worker_and_the_parent_exits_0(tmp_path: Path) -> None:
    require("redis")
    with workers(broker_url("redis"), tmp_path / "serve.log") as server:
        pids = server.children()

        async def scenario() -> None:
            async with httpx.AsyncClient() as http, \
                    ws_clients(server.port, [f"u{n}" for n in range(12)]) as clients:
                by_worker = await connections_by_worker(http, server)
                assert all(count > 0 for count in by_worker.values()), by_worker
                server.process.send_signal(signal.SIGTERM)
                for client in clients:
                    assert isinstance(client, WsClient)
                    assert await client.wait_closed() == 1001  # each worker's own drain

        asyncio.run(scenario())
        assert server.process.wait(timeout=30) == 0
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or \
                "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
        assert "all 2 workers stopped" in server.log.read_text()


def test_workers_refuse_the_memory_broker() -> None:
    result = subprocess.run([sys.executable, "-m", "realtime_server.cli", "serve",
                             "--workers", "2", "--port", str(free_port())],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "memory://" in result.stderr and "--workers 2" in result.stderr


def test_workers_option_from_flags_environment_and_file(tmp_path: Path) -> None:
    config = tmp_path / "realtime.toml"
    config.write_text("workers = 3\n")
    assert resolve_settings({}, {}, str(config)).workers == "3"
    assert resolve_settings({}, {"REALTIME_WORKERS": "auto"}, str(config)).workers == "auto"
    assert resolve_settings({"workers": "2"}, {"REALTIME_WORKERS": "auto"}, None).workers == "2"
    assert worker_count("auto") == len(os.sched_getaffinity(0))
    for bad in ("0", "-1", "many"):
        with pytest.raises(ConfigError, match="--workers must be a positive integer or auto"):
            resolve_settings({"workers": bad}, {}, None)


def test_long_polling_needs_no_stickiness_across_workers(tmp_path: Path) -> None:
    require("redis")

    async def scenario(server: Workers) -> None:
        unpooled = httpx.Limits(max_keepalive_connections=0)  # each request: any worker
        async with httpx.AsyncClient(timeout=30, limits=unpooled) as http:
            opened = (await http.get(f"{server.base}/poll",
                                     params={"token": token("poller")})).json()
            poll_id, cursor = opened["connection_id"], opened["cursor"]
            subscribed = await http.post(f"{server.base}/send", params={"connection_id": poll_id},
                                         json={"type": "subscribe", "channel": "private-feed"})
            assert subscribed.status_code == 202, subscribed.text
            numbers: list[int] = []

            async def poll() -> list[dict[str, Any]]:
                nonlocal cursor
                response = await http.get(f"{server.base}/poll", params={
                    "connection_id": poll_id, "cursor": str(cursor)})
                assert response.status_code == 200, response.text
                cursor = response.json()["cursor"]
                return list(response.json()["messages"])

            async with asyncio.timeout(30):  # until the publishing worker reaches the poller's
                while not [m for m in await poll() if m.get("event") == "probe"]:
                    await api(http, server, "POST", "publish",
                              {"channel": "private-feed", "event": "probe"})
            async with asyncio.timeout(30):
                for n in range(20):
                    await api(http, server, "POST", "publish",
                              {"channel": "private-feed", "event": "n", "data": n})
                    while len(numbers) <= n:
                        numbers += [m["data"] for m in await poll() if m.get("event") == "n"]
            assert numbers == list(range(20))

    with workers(broker_url("redis"), tmp_path / "serve.log") as server:
        asyncio.run(scenario(server))


def test_an_embedded_server_refuses_workers() -> None:
    from realtime_asyncio import RealtimeServer

    with pytest.raises(ValueError, match="workers is an option of `realtime serve`"):
        RealtimeServer(workers="2")


def test_a_client_recovers_history_on_whichever_worker_it_reconnects_to(tmp_path: Path) -> None:
    require("redis")
    channel = f"room.{uuid.uuid4().hex[:8]}"

    async def scenario(server: Workers) -> None:
        async with httpx.AsyncClient() as http:
            async with connect("websocket", server.port) as first:
                await first.send({"type": "subscribe", "channel": channel})
                position = (await first.next("subscription.succeeded"))["data"]
                await heard_by_all(http, server, [first], "publish",
                                   {"channel": channel, "event": "probe"}, "probe")
                with contextlib.suppress(TimeoutError):  # a probe still on its way
                    while True:
                        await first.next(timeout=0.5)
                last = max(m["offset"] for m in first.seen if m.get("event") == "probe")
            await api(http, server, "POST", "batch", {"messages": [
                {"channel": channel, "event": "n", "data": n} for n in range(5)]})
            for _ in range(6):  # each reconnection lands on either worker
                async with connect("websocket", server.port) as again:
                    await again.send({"type": "subscribe", "channel": channel, "data": {
                        "recover": {"epoch": position["epoch"], "offset": last}}})
                    answer = (await again.next("subscription.succeeded"))["data"]
                    assert (answer["recovered"], answer["replayed"]) == (True, 5), answer
                    missed = [await again.next("n") for _ in range(5)]
                    assert [m["data"] for m in missed] == list(range(5))

    with workers(broker_url("redis"), tmp_path / "serve.log",
                 "--history", "room.*=100:300") as server:
        asyncio.run(scenario(server))
