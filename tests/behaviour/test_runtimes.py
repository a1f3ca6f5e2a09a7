"""What every runtime does at its edges: shutdown, start-up failures, TLS, the CLI, and
gevent under monkey-patching."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from realtime_brokers import BrokerUnavailable

from .clients import PollClient, SseClient, WsClient, connect
from .serving import API_KEY, CLOSE_TIMEOUT, ThreadedServer, serving

REALTIME = [sys.executable, "-m", "realtime_asyncio.cli"]
TIMEOUT = 20.0


def test_shutdown_says_goodbye_on_every_transport(runtime: str) -> None:
    async def scenario() -> None:
        async with serving(runtime) as server, \
                connect("websocket", server.port) as ws, \
                connect("sse", server.port) as sse, \
                connect("polling", server.port) as poll:
            assert isinstance(ws, WsClient) and isinstance(sse, SseClient)
            assert isinstance(poll, PollClient)
            async with asyncio.timeout(TIMEOUT):  # a poll is answered only if one is held
                while not _held_polls(server):
                    await asyncio.sleep(0.01)
            await server.aclose(timeout=CLOSE_TIMEOUT)
            assert await ws.wait_closed() == 1001
            for client in (sse, poll):
                goodbye = await client.next("connection.closed")
                assert goodbye["data"]["code"] == 1001
                async with asyncio.timeout(TIMEOUT):
                    await client.ended.wait()
    asyncio.run(scenario())


def _held_polls(server: Any) -> int:
    """Long-polls the server holds."""
    def count(node: Any) -> int:
        return int(node.statistics().held_polls)
    if isinstance(server, ThreadedServer):
        return int(server.call(lambda: count(server.server.node)))
    return count(server.node)


def test_start_fails_with_the_cause(runtime: str) -> None:
    async def scenario() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            with pytest.raises(OSError):
                async with serving(runtime, port=taken.getsockname()[1]):
                    pass
        with pytest.raises(BrokerUnavailable):
            async with serving(runtime, broker="redis://127.0.0.1:9/0?connect_timeout=2"):
                pass
    asyncio.run(scenario())


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1: (cert file, key file)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_tls_serves_wss_and_https(runtime: str, certificate: tuple[str, str]) -> None:
    if runtime == "selectors":
        pytest.skip("the selectors example leaves TLS out (see its docstring)")
    cert, key = certificate
    context = ssl.create_default_context(cafile=cert)

    async def scenario() -> None:
        async with serving(runtime, tls_cert=cert, tls_key=key) as server:
            async with websockets.connect(f"wss://127.0.0.1:{server.port}/ws",
                                          ssl=context) as ws:
                established = json.loads(await ws.recv())
                assert established["event"] == "connection.established"
                await ws.send(json.dumps({"type": "subscribe", "channel": "news"}))
                assert json.loads(await ws.recv())["event"] == "subscription.succeeded"
                server.broadcast("news", "secure", "x" * 100_000)
                assert json.loads(await ws.recv())["data"] == "x" * 100_000
            async with httpx.AsyncClient(verify=context) as http:
                response = await http.get(f"https://127.0.0.1:{server.port}/health")
                assert response.json()["runtime"] == runtime
            with socket.create_connection(("127.0.0.1", server.port)) as plain:
                plain.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # not TLS
                status = await asyncio.to_thread(_health_over_tls, server.port, context)
                assert status == 200  # a confused client hurts nobody else
    asyncio.run(scenario())


def _health_over_tls(port: int, context: ssl.SSLContext) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return int(tls.recv(4096).split()[1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Process:
    """A server in a subprocess; its stderr is read by a thread, so no wait can hang."""

    def __init__(self, command: list[str], port: int) -> None:
        self.popen = subprocess.Popen(command, text=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)
        self.stderr: list[str] = []
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read, args=(port,), daemon=True)
        self._reader.start()
        if not self._listening.wait(TIMEOUT):
            self.kill()
            raise AssertionError("the server did not start: " + "".join(self.stderr))

    def _read(self, port: int) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.stderr.append(line)
            if f"serving on 127.0.0.1:{port}" in line:
                self._listening.set()

    def finish(self) -> tuple[int, str, str]:
        """Wait for the exit: (status, stdout, stderr)."""
        status = self.popen.wait(TIMEOUT)
        self._reader.join(TIMEOUT)
        assert self.popen.stdout is not None
        return status, self.popen.stdout.read(), "".join(self.stderr)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(TIMEOUT)
        for pipe in (self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                pipe.close()


async def _goodbye(port: int, process: _Process, signum: int) -> int | None:
    """Connect a WebSocket client, signal the server, return the close code it sees."""
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
        assert json.loads(await ws.recv())["event"] == "connection.established"
        await ws.send(json.dumps({"type": "subscribe", "channel": "news"}))
        await ws.recv()
        async with httpx.AsyncClient() as http:
            response = await http.post(f"http://127.0.0.1:{port}/api/publish",
                                       headers={"Authorization": f"Bearer {API_KEY}"},
                                       json={"channel": "news", "event": "hi", "data": 1})
        assert response.status_code == 200
        assert json.loads(await ws.recv())["event"] == "hi"
        process.popen.send_signal(signum)
        try:
            async with asyncio.timeout(TIMEOUT):
                async for _ in ws:
                    pass
        except websockets.ConnectionClosed:
            pass
        return ws.close_code


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("cli_runtime", ["trio", "gevent"])
def test_cli_serves_each_runtime_until_a_signal(cli_runtime: str, signum: int) -> None:
    port = _free_port()
    process = _Process([*REALTIME, "serve", "--runtime", cli_runtime, "--port", str(port),
                        "--api-key", API_KEY], port)
    try:
        assert asyncio.run(_goodbye(port, process, signum)) == 1001
        status, stdout, stderr = process.finish()
        assert status == 0
        assert stdout == ""  # the CLI prints nothing extra
        assert "Traceback" not in stderr
    finally:
        process.kill()


@pytest.mark.parametrize("cli_runtime", ["trio", "gevent"])
def test_cli_port_in_use_is_one_clear_line(cli_runtime: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([*REALTIME, "serve", "--runtime", cli_runtime, "--port",
                                 str(port)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"realtime: error: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in result.stderr


MONKEY_PATCHED = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()

    import logging, sys
    logging.basicConfig(level="INFO", stream=sys.stderr)
    from realtime_gevent import RealtimeServer

    server = RealtimeServer(port=int(sys.argv[1]), broker=sys.argv[2], api_key=sys.argv[3])
    server.channel("private-*").authorize(lambda conn, channel: True)
    server.run()
""")


@pytest.mark.parametrize("broker", ["memory://", "redis://localhost:6379/0?prefix=rt-monkey:"])
def test_gevent_works_monkey_patched(broker: str, tmp_path: Path) -> None:
    if broker.startswith("redis"):
        try:
            socket.create_connection(("127.0.0.1", 6379), timeout=1.0).close()
        except OSError:
            if os.environ.get("CI"):
                raise
            pytest.skip("redis server not reachable at 127.0.0.1:6379")
    script = tmp_path / "patched.py"
    script.write_text(MONKEY_PATCHED)
    port = _free_port()
    process = _Process([sys.executable, str(script), str(port), broker, API_KEY], port)
    try:
        assert asyncio.run(_goodbye(port, process, signal.SIGTERM)) == 1001
        status, _, stderr = process.finish()
        assert status == 0
        assert "Traceback" not in stderr
    finally:
        process.kill()

