"""What this project's runtimes do beyond the shipped suite: the `realtime serve --runtime`
command, and gevent under monkey-patching."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import httpx
import pytest
import websockets

from realtime_behaviour import API_KEY

REALTIME = [sys.executable, "-m", "realtime_server.cli"]
TIMEOUT = 20.0


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

