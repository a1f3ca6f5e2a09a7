"""Broker servers of the fault tests' own, on free ports, that a test may kill and restart.

Never the shared servers of the machine: each `OwnServer` starts its own process (or
PostgreSQL cluster) in a temporary directory, `crash()` kills it without warning, and
`restart()` brings it back on the same port. Every process started here is ended by its
pid in `stop()`.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

__all__ = ["OwnServer", "own_server"]

#: seconds a server may take to accept connections after (re)starting
_START_TIMEOUT = 20.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, process: subprocess.Popen[bytes] | None, what: str) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"{what} is not listening on {port}")


class OwnServer:
    """One broker server process of a test: `url`, `crash()`, `restart()`, `stop()`."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.port = _free_port()
        self._dir = directory
        self._process: subprocess.Popen[bytes] | None = None
        if kind == "postgresql":
            self._init_postgres()
        self._start()

    @property
    def url(self) -> str:
        """The broker URL of this server."""
        return {
            "redis": f"redis://127.0.0.1:{self.port}/0",
            "nats": f"nats://127.0.0.1:{self.port}",
            "postgresql": f"postgresql://postgres@127.0.0.1:{self.port}/postgres",
        }[self.kind]

    def crash(self) -> None:
        """Kill the server at once (SIGKILL; PostgreSQL: an immediate shutdown, which
        kills every backend the same way) and wait until it is gone."""
        if self.kind == "postgresql":
            self._pg_ctl("stop", "-m", "immediate")
            return
        assert self._process is not None
        self._process.send_signal(signal.SIGKILL)
        self._process.wait(timeout=10)
        self._process = None

    def restart(self) -> None:
        """Start the server again on the same port (its data is kept)."""
        self._start()

    def stop(self) -> None:
        """End the server (whatever state it is in) and remove its files."""
        if self.kind == "postgresql":
            self._pg_ctl("stop", "-m", "immediate", check=False)
        elif self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(timeout=10)
        self._process = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def _start(self) -> None:
        if self.kind == "redis":
            command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                       "--save", "", "--appendonly", "no", "--dir", str(self._dir)]
        elif self.kind == "nats":
            command = ["nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-js",
                       "-sd", str(self._dir / "jetstream")]
        else:
            self._pg_ctl("start", "-w", "-l", str(self._dir / "postgresql.log"), "-o",
                         f"-p {self.port} -k {self._dir} -c listen_addresses=127.0.0.1 "
                         "-c fsync=off")
            _wait_listening(self.port, None, "postgresql")
            return
        with (self._dir / f"{self.kind}.log").open("ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=log,
                                             stdin=subprocess.DEVNULL)
        _wait_listening(self.port, self._process, self.kind)

    # -- PostgreSQL: a cluster of its own, run as the postgres user ----------------------

    def _init_postgres(self) -> None:
        binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not binaries or os.geteuid() != 0 or shutil.which("runuser") is None:
            pytest.skip("an own PostgreSQL cluster needs initdb and root (runuser)")
        self._bin = Path(binaries[-1]).parent
        shutil.chown(self._dir, "postgres")
        subprocess.run(["runuser", "-u", "postgres", "--", str(self._bin / "initdb"), "-D",
                        str(self._dir / "data"), "-A", "trust", "-U", "postgres",
                        "--no-sync", "-E", "UTF8"], check=True, capture_output=True)

    def _pg_ctl(self, *args: str, check: bool = True) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(self._bin / "pg_ctl"), "-D",
                        str(self._dir / "data"), *args], check=check, capture_output=True,
                       timeout=60, stdin=subprocess.DEVNULL)


def own_server(kind: str) -> OwnServer:
    """Start an own server of `kind` (skipped when its program is not installed), its
    files in a new directory under the system's temporary directory (which the postgres
    user can reach, unlike pytest's), removed by `stop()`."""
    program = {"redis": "redis-server", "nats": "nats-server"}.get(kind)
    if program is not None and shutil.which(program) is None:
        pytest.skip(f"{program} is not installed")
    return OwnServer(kind, Path(tempfile.mkdtemp(prefix=f"rt-faults-{kind}-")))
