"""deploy/nginx/realtime.conf in a real nginx, over TLS, in front of two real nodes on Redis.

Every client connects to nginx from its own loopback address (127.0.x.y): nginx forwards
that address, the nodes trust nginx (127.0.0.1) and count each client on its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from realtime_behaviour.certs import client_context, make_certificate
from realtime_proto.jwt import encode_hs256

from ..cluster.nodes import (
    API_KEY,
    SECRET,
    NodeProcess,
    api,
    broker_url,
    eventually,
    free_port,
    require,
    start_nodes,
)

pytestmark = pytest.mark.broker

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "realtime.conf"
#: new connections a node allows one address at once; they never refill during a test
BURST = 10
#: seconds a node holds a poll: short, so that a test waiting for nothing waits little
POLL_TIMEOUT = 3


def nginx_binary() -> str:
    """nginx's path; skip when it is not installed, and fail under CI."""
    found = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if found:
        return found
    problem = "nginx is not installed (scripts/nginx.sh installs Debian's package)"
    if os.environ.get("CI"):
        pytest.fail(f"{problem}; CI must test the nginx configuration")
    pytest.skip(problem)


def render(template: str, values: dict[str, str]) -> str:
    """The template with its ${REALTIME_*} placeholders replaced, as envsubst would."""
    for name, value in values.items():
        template = template.replace("${" + name + "}", value)
    assert re.search(r"\$\{REALTIME_\w+\}", template) is None, "a placeholder is left"
    return template


def start_nginx(directory: Path, nodes: list[NodeProcess], cert: Path, key: Path,
                port: int) -> subprocess.Popen[str]:
    """nginx in the foreground, with its own prefix, pid, logs and temporary files."""
    directory.mkdir()
    (directory / "realtime.conf").write_text(render(TEMPLATE.read_text(), {
        "REALTIME_LISTEN": f"127.0.0.1:{port}", "REALTIME_SERVER_NAME": "localhost",
        "REALTIME_CERT": str(cert), "REALTIME_KEY": str(key),
        "REALTIME_NODE_1": f"127.0.0.1:{nodes[0].port}",
        "REALTIME_NODE_2": f"127.0.0.1:{nodes[1].port}"}))
    temporary = " ".join(f"{kind}_temp_path {directory / kind};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (directory / "nginx.conf").write_text(f"""
        daemon off;
        worker_processes 1;
        {"user root;" if os.geteuid() == 0 else ""}
        pid {directory / "nginx.pid"};
        error_log {directory / "error.log"} warn;
        events {{ worker_connections 1024; }}
        http {{
            access_log {directory / "access.log"};
            {temporary}
            include {directory / "realtime.conf"};
        }}
    """)
    return subprocess.Popen(
        [nginx_binary(), "-p", str(directory), "-c", str(directory / "nginx.conf"),
         "-e", str(directory / "error.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@dataclass
class Stack:
    nodes: list[NodeProcess]
    #: https://127.0.0.1:PORT, nginx
    base: str
    tls: ssl.SSLContext

    def http(self, source: str) -> httpx.AsyncClient:
        """A client of nginx from the loopback address `source`."""
        return httpx.AsyncClient(base_url=self.base, timeout=POLL_TIMEOUT + 10,
                                 transport=httpx.AsyncHTTPTransport(verify=self.tls,
                                                                    local_address=source))

    async def websocket(self, source: str, query: str = "",
                        headers: dict[str, str] | None = None) -> ClientConnection:
        """A WebSocket through nginx from the loopback address `source`."""
        return await websockets.connect(
            f"{self.base.replace('https', 'wss')}/ws{query}", ssl=self.tls,
            local_addr=(source, 0), open_timeout=10, additional_headers=headers)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    nginx_binary()
    require("redis")
    directory = tmp_path_factory.mktemp("nginx")
    cert, key = make_certificate(directory)
    nodes = start_nodes(broker_url("redis"), 2, "--trusted-proxy", "127.0.0.1",
                        "--connection-rate", "0.001", "--connection-burst", str(BURST),
                        "--poll-timeout", str(POLL_TIMEOUT))
    nginx = None
    try:
        port = free_port()
        nginx = start_nginx(directory / "nginx", nodes, cert, key, port)
        tls = client_context(cert)
        deadline = time.monotonic() + 30
        while not _healthy(f"https://127.0.0.1:{port}/health", tls):
            if nginx.poll() is not None or time.monotonic() > deadline:
                nginx.kill()
                raise AssertionError(f"nginx did not serve: {nginx.communicate()[1]}"
                                     f"{(directory / 'nginx' / 'error.log').read_text()}")
            time.sleep(0.05)
        yield Stack(nodes, f"https://127.0.0.1:{port}", tls)
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.communicate(timeout=10)
        for node in nodes:
            node.stop()


def _healthy(url: str, tls: ssl.SSLContext) -> bool:
    try:
        return httpx.get(url, verify=tls, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def token(user: str) -> str:
    return encode_hs256({"sub": user, "exp": int(time.time()) + 600,
                         "channels": ["private-*", "presence-*"]}, SECRET)


async def event(ws: ClientConnection, name: str) -> dict[str, Any]:
    """The next message named `name` on a WebSocket (others are skipped)."""
    async with asyncio.timeout(15):
        while (message := json.loads(await ws.recv())).get("event") != name:
            pass
    return dict(message)


class Poller:
    """A long-poll client that counts its polls."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.polls = 0
        self.connection_id = ""
        self.cursor = 0

    async def open(self) -> None:
        response = await self.http.get("/poll")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["messages"][0]["event"] == "connection.established"
        self.connection_id, self.cursor = body["connection_id"], body["cursor"]

    async def send(self, message: dict[str, Any]) -> None:
        response = await self.http.post("/send", json=message,
                                        params={"connection_id": self.connection_id})
        assert response.status_code == 202, response.text

    async def until(self, name: str) -> dict[str, Any]:
        """Poll until a message named `name` comes (at most 5 polls)."""
        for _ in range(5):
            response = await self.http.get("/poll", params={
                "connection_id": self.connection_id, "cursor": self.cursor})
            # a poll that reached another node would be 404 with 4022
            assert response.status_code == 200, response.text
            self.polls += 1
            body = response.json()
            self.cursor = body["cursor"]
            for message in body["messages"]:
                if message.get("event") == name:
                    return dict(message)
        raise AssertionError(f"no {name} in 5 polls")


async def sends_answered(node: NodeProcess) -> float:
    """The node's `202` answers so far: the `POST /send` calls it took."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{node.base}/metrics")).text
    return sum(float(row.rsplit(" ", 1)[1]) for row in text.splitlines()
               if row.startswith("realtime_http_responses_total{") and 'status="202"' in row)


def test_websocket_sse_and_long_poll_receive_a_publish_through_nginx(stack: Stack) -> None:
    async def scenario() -> None:
        channel = f"news-{uuid.uuid4().hex[:8]}"
        ws = await stack.websocket("127.0.1.1")
        await ws.send(json.dumps({"type": "subscribe", "channel": channel}))
        await event(ws, "subscription.succeeded")
        async with stack.http("127.0.1.2") as sse_http, stack.http("127.0.1.3") as poll_http, \
                stack.http("127.0.1.4") as backend:
            lines: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

            async def read_sse() -> None:
                async with sse_http.stream("GET", "/sse", params={"channels": channel}) as sse:
                    assert sse.headers["content-type"].startswith("text/event-stream")
                    async for line in sse.aiter_lines():
                        if line.startswith("data: "):
                            lines.put_nowait(json.loads(line[6:]))

            async def sse_event(name: str) -> dict[str, Any]:
                async with asyncio.timeout(15):
                    while (message := await lines.get()).get("event") != name:
                        pass
                return message

            reader = asyncio.create_task(read_sse())
            await sse_event("subscription.succeeded")
            poller = Poller(poll_http)
            await poller.open()
            await poller.send({"type": "subscribe", "channel": channel})
            await poller.until("subscription.succeeded")

            published = await backend.post("/api/publish", json={
                "channel": channel, "event": "headline", "data": {"n": 1}},
                headers={"Authorization": f"Bearer {API_KEY}"})
            assert published.status_code == 200, published.text
            by_ws = await event(ws, "headline")
            by_sse = await sse_event("headline")
            by_poll = await poller.until("headline")
            assert by_ws["data"] == by_sse["data"] == by_poll["data"] == {"n": 1}
            assert poller.polls >= 2  # and every one reached the node that holds the queue
            reader.cancel()
        await ws.close()
    asyncio.run(scenario())


def test_each_sse_and_long_poll_client_stays_on_its_node(stack: Stack) -> None:
    """Clients of many addresses spread over both nodes; each one's later requests (polls,
    POST /send) reach the node that opened its connection."""
    async def one_client(source: str, channel: str) -> None:
        async with stack.http(source) as http:
            poller = Poller(http)
            await poller.open()
            await poller.send({"type": "subscribe", "channel": channel})
            await poller.until("subscription.succeeded")
            await poller.send({"type": "subscribe", "channel": f"{channel}-more"})
            assert (await poller.until("subscription.succeeded"))["channel"] == f"{channel}-more"
            async with http.stream("GET", "/sse") as sse:
                lines = sse.aiter_lines()
                async with asyncio.timeout(15):
                    while not (line := await anext(lines)).startswith("data: "):
                        pass
                    connection_id = json.loads(line[6:])["data"]["connection_id"]
                    sent = await http.post("/send", params={"connection_id": connection_id},
                                           json={"type": "subscribe", "channel": channel})
                    assert sent.status_code == 202, sent.text
                    while not (line := await anext(lines)).startswith("data: "):
                        pass
                    assert json.loads(line[6:])["event"] == "subscription.succeeded"
            assert (await http.post("/close", params={
                "connection_id": poller.connection_id})).status_code == 200

    async def scenario() -> None:
        channel = f"spread-{uuid.uuid4().hex[:8]}"
        before = [await sends_answered(node) for node in stack.nodes]
        await asyncio.gather(*(one_client(f"127.0.2.{n}", channel) for n in range(1, 17)))
        sends = [await sends_answered(node) - count
                 for node, count in zip(stack.nodes, before, strict=True)]
        # 3 sends per client, each on its client's node; both nodes had clients (16
        # addresses all on one node would be a 2^-15 chance)
        assert sum(sends) == 3 * 16 and all(sends), sends
    asyncio.run(scenario())


def test_presence_spans_two_nodes_behind_nginx(stack: Stack) -> None:
    async def subscribers(room: str) -> list[int]:
        """The room's subscribers on each node, asked of each node directly."""
        async with httpx.AsyncClient() as http:
            return [(await api(http, node, "GET", f"channels/{room}")).json()["subscribers"]
                    for node in stack.nodes]

    async def scenario() -> None:
        room = f"presence-room-{uuid.uuid4().hex[:8]}"
        alice = await stack.websocket("127.0.3.1", f"?token={token('alice')}")
        await alice.send(json.dumps({"type": "subscribe", "channel": room}))
        await event(alice, "presence.sync")
        # least_conn sends the next WebSocket to the node that has none
        bob = await stack.websocket("127.0.3.2", f"?token={token('bob')}")
        await bob.send(json.dumps({"type": "subscribe", "channel": room}))
        await event(bob, "presence.sync")
        assert await subscribers(room) == [1, 1], "alice and bob are on different nodes"
        # bob joined on the other node: alice hears it through the broker
        joined = await event(alice, "user.joined")
        assert joined["data"]["user_id"] == "bob"
        async with stack.http("127.0.3.3") as http:
            async def members() -> bool:
                answer = await http.get(f"/api/channels/{room}/members",
                                        headers={"Authorization": f"Bearer {API_KEY}"})
                return {m["user_id"] for m in answer.json()["members"]} == {"alice", "bob"}
            await eventually(members)
        await alice.close()
        await bob.close()
    asyncio.run(scenario())


def test_nginx_is_trusted_so_each_client_has_its_own_connection_limit(stack: Stack) -> None:
    async def connect(source: str, headers: dict[str, str] | None = None,
                      ) -> ClientConnection | int:
        try:
            return await stack.websocket(source, headers=headers)
        except InvalidStatus as error:
            return error.response.status_code

    async def scenario() -> None:
        # 5 x BURST clients, each from its own address: none is refused
        many = await asyncio.gather(*(connect(f"127.0.4.{n}") for n in range(1, 5 * BURST + 1)))
        assert [c for c in many if isinstance(c, int)] == []
        # one address, however it forges its headers, has BURST connections per node
        one = [await connect("127.0.5.1", {"X-Forwarded-For": f"198.51.100.{n}",
                                           "Forwarded": f"for=198.51.100.{n}"})
               for n in range(3 * BURST)]
        refused = [c for c in one if isinstance(c, int)]
        assert set(refused) == {429} and len(refused) >= BURST, one
        await asyncio.gather(*(c.close() for c in [*many, *one] if not isinstance(c, int)))
    asyncio.run(scenario())
