"""The distributions as a user gets them: built from this tree, the wheel installed in a
fresh venv with an extra, its `realtime` command serving a subscriber and the HTTP API; then
the behaviour suite it ships, run against the asyncio runtime as an adapter author runs it."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import tarfile
import textwrap
import time
import zipfile
from pathlib import Path

import httpx
import pytest
import websockets

from realtime_behaviour.cases import __all__ as SHIPPED_CASES
from realtime_proto import __version__

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(600)]


def run(*command: str | Path, cwd: Path) -> str:
    result = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True,
                            text=True, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_wheel_installs_and_serves(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", dist, ROOT, cwd=tmp_path)
    [wheel] = dist.glob("*.whl")
    [sdist] = dist.glob("*.tar.gz")
    assert wheel.name == f"realtime_proto-{__version__}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    assert f"realtime_proto-{__version__}.dist-info/licenses/LICENSE" in names
    for packaged in ("realtime_proto/node.py", "realtime_server/static/realtime.js",
                     "realtime_server/static/realtime.min.js",
                     "realtime_behaviour/cases/transports.py",
                     "realtime_server/static/admin.html", "realtime_trio/server.py",
                     "realtime_gevent/server.py", "realtime_brokers/redis_driver.py"):
        assert packaged in names
    with tarfile.open(sdist) as archive:
        top = f"realtime_proto-{__version__}"
        assert {f"{top}/LICENSE", f"{top}/CHANGELOG.md"} <= set(archive.getnames())

    venv = tmp_path / "v"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", f"{wheel}[redis]",
        cwd=tmp_path)
    where = run(venv / "bin" / "python", "-c", "import realtime_asyncio, redis; "
                "print(realtime_asyncio.__file__)", cwd=tmp_path)
    assert where.startswith(str(venv))  # the installed copy, not this tree
    assert run(venv / "bin" / "realtime", "--version", cwd=tmp_path).strip() == (
        f"realtime {__version__}")

    port = free_port()
    process = subprocess.Popen([venv / "bin" / "realtime", "serve", "--port", str(port),
                                "--api-key", "k3y"], cwd=tmp_path, text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        asyncio.run(_talk_to(port, process))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)
    _run_the_shipped_suite(venv, wheel, tmp_path)


async def _talk_to(port: int, process: subprocess.Popen[str]) -> None:
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base) as http:
        deadline = time.monotonic() + 60
        while True:  # until it listens (bounded)
            assert process.poll() is None and time.monotonic() < deadline
            try:
                health = await http.get("/health")
                break
            except httpx.TransportError:
                await asyncio.sleep(0.1)
        assert health.json()["status"] == "ok"
        for script in ("/realtime.js", "/realtime.min.js"):  # packaged beside it
            assert (await http.get(script)).status_code == 200
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
            assert json.loads(await ws.recv())["event"] == "connection.established"
            await ws.send(json.dumps({"type": "subscribe", "channel": "news"}))
            assert json.loads(await ws.recv())["event"] == "subscription.succeeded"
            published = await http.post("/api/publish", headers={"Authorization": "Bearer k3y"},
                                         json={"channel": "news", "event": "headline",
                                               "data": {"title": "wheel"}})
            assert published.status_code == 200
            async with asyncio.timeout(20):
                message = json.loads(await ws.recv())
            assert (message["event"], message["data"]) == ("headline", {"title": "wheel"})


#: what an adapter author writes (docs/adapters.md), here for the asyncio runtime
AUTHOR_CONFTEST = textwrap.dedent("""
    import contextlib

    from realtime_asyncio import RealtimeServer
    from realtime_behaviour import CLOSE_TIMEOUT, Runtime, runtime_fixture


    @contextlib.asynccontextmanager
    async def serve(options):
        server = RealtimeServer(**options)
        await server.start()
        try:
            yield server
        finally:
            await server.aclose(timeout=CLOSE_TIMEOUT)


    runtime = runtime_fixture(Runtime("asyncio", serve, async_callbacks=True))
""")
AUTHOR_TESTS = "from realtime_behaviour.cases import *  # noqa: F403\n"


def _run_the_shipped_suite(venv: Path, wheel: Path, tmp_path: Path) -> None:
    """Without the testing extra the suite says what it needs; with it, every case is
    collected from the installed wheel and a few run against the asyncio runtime."""
    python = venv / "bin" / "python"
    missing = subprocess.run([python, "-c", "import realtime_behaviour"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1
    assert "pip install 'realtime-proto[testing]'" in missing.stderr
    run(python, "-m", "pip", "install", "--quiet", f"{wheel}[testing]", cwd=tmp_path)
    author = tmp_path / "author"
    author.mkdir()
    (author / "conftest.py").write_text(AUTHOR_CONFTEST)
    (author / "test_behaviour.py").write_text(AUTHOR_TESTS)
    pytest_in_venv = (python, "-m", "pytest", "-p", "no:cacheprovider", "-q")
    collected = run(*pytest_in_venv, "--collect-only", cwd=author)
    assert {line.split("::")[1].split("[")[0] for line in collected.splitlines()
            if "::" in line} == set(SHIPPED_CASES)
    where = run(python, "-c", "import realtime_behaviour; print(realtime_behaviour.__file__)",
                cwd=author)
    assert where.startswith(str(venv))  # the installed suite, not this tree's
    passed = run(*pytest_in_venv, "-k", "subscribe_and_receive or shutdown or tls", cwd=author)
    assert "5 passed" in passed, passed
