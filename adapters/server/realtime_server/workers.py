"""`realtime serve --workers N`: N worker processes on one port, one cluster, one parent.

Each worker is a whole server (asyncio) with its own node id, `<node-id>-w<k>`, that binds
the port with `SO_REUSEPORT`, so Linux spreads new connections over the workers; they join
as one cluster through the configured broker. The parent only supervises: it reserves the
port, forks the workers, restarts one that dies (with backoff, logged) and, on SIGTERM or
SIGINT, has every worker drain as a single server does, then exits 0.

The supervisor itself is runtime-neutral (fork, signals, `waitpid`): it runs whatever
`serve` it is given. Only the asyncio server binds its listener with `SO_REUSEPORT` today,
so `workers_refused` admits that runtime alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from realtime_server.edge import Settings

__all__ = ["Supervisor", "workers_refused"]

log = logging.getLogger("realtime.workers")

#: the first restart delay of a worker that died; doubled per quick death, up to the cap
BACKOFF_MIN = 0.1
BACKOFF_MAX = 10.0
#: a worker that served this long before it died is restarted after BACKOFF_MIN again
STABLE_AFTER = 10.0
#: seconds the workers have to drain after SIGTERM before they are killed
DRAIN_TIMEOUT = 30.0

_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
_PR_SET_PDEATHSIG = 1


def workers_refused(settings: Settings, count: int) -> str | None:
    """Why these settings cannot run `count` workers (one line), or None."""
    if count == 1:
        return None
    if not sys.platform.startswith("linux"):
        return (f"--workers {count} needs Linux, whose SO_REUSEPORT spreads connections "
                "over the workers; run one process per port behind a load balancer instead")
    if settings.runtime != "asyncio":
        return f"--workers {count} runs the asyncio runtime only, not {settings.runtime}"
    if settings.broker.partition("://")[0] == "memory":
        return (f"--workers {count} needs a broker that spans processes (e.g. "
                "redis://127.0.0.1:6379 or nats://127.0.0.1:4222); memory:// lives in one "
                "process")
    return None


class Supervisor:
    """Forks `count` workers that each run `serve(settings)`, and keeps them running."""

    def __init__(self, settings: Settings, count: int,
                 serve: Callable[[Settings], None]) -> None:
        self._settings = settings
        self._count = count
        self._serve = serve
        self._base_id = settings.node_id or f"{socket.gethostname()}-{os.getpid()}"
        self._pids: dict[int, int] = {}  # pid -> worker index
        self._started_at: dict[int, float] = {}  # worker index -> when it was forked
        self._backoff: dict[int, float] = {}  # worker index -> its last restart delay
        self._restart_at: dict[int, float] = {}  # dead worker index -> when to fork it
        self._stopping_since: float | None = None
        self._parent_mask: set[int | signal.Signals] = set()

    def run(self) -> int:
        """Reserve the port, serve until SIGTERM or SIGINT, drain; the exit status.

        Raises:
            OSError: the port cannot be bound.
        """
        with self._reserve_port():
            self._parent_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
            try:
                for index in range(self._count):
                    self._fork(index)
                self._supervise()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, self._parent_mask)
        log.info("all %d workers stopped", self._count)
        return 0

    @contextlib.contextmanager
    def _reserve_port(self) -> Iterator[socket.socket]:
        """Bind (without listening) so that the port is ours, and port 0 is chosen once
        for every worker; listening sockets alone share the connections."""
        host, port = self._settings.host, self._settings.port
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        reserved = socket.socket(family, kind, proto)
        try:
            reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            reserved.bind(address)
            self._settings = replace(self._settings, port=reserved.getsockname()[1])
            yield reserved
        finally:
            reserved.close()

    def _supervise(self) -> None:
        while self._pids or (self._stopping_since is None and self._restart_at):
            now = time.monotonic()
            due = min(self._restart_at.values(), default=now + 1.0)
            received = signal.sigtimedwait(_SIGNALS, max(0.0, min(1.0, due - now)))
            if received is not None and received.si_signo != signal.SIGCHLD:
                self._stop(received.si_signo)
            self._reap(time.monotonic())
            now = time.monotonic()
            if self._stopping_since is None:
                for index, at in list(self._restart_at.items()):
                    if at <= now:
                        del self._restart_at[index]
                        self._fork(index)
            elif now - self._stopping_since > DRAIN_TIMEOUT:
                for pid, index in self._pids.items():
                    log.warning("worker %d (pid %d) did not drain in %.0f s: killed",
                                index, pid, DRAIN_TIMEOUT)
                    self._signal(pid, signal.SIGKILL)

    def _stop(self, signo: int) -> None:
        if self._stopping_since is not None:
            return
        log.info("%s: draining %d workers", signal.Signals(signo).name, len(self._pids))
        self._stopping_since = time.monotonic()
        self._restart_at.clear()
        for pid in self._pids:
            self._signal(pid, signal.SIGTERM)

    def _reap(self, now: float) -> None:
        while self._pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            index = self._pids.pop(pid, None)
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 \
                else f"exited with status {code}"
            if self._stopping_since is not None:
                log.info("worker %d (pid %d) %s", index, pid, how)
                continue
            quick = now - self._started_at[index] < STABLE_AFTER
            delay = min(BACKOFF_MAX, self._backoff.get(index, BACKOFF_MIN / 2) * 2) \
                if quick else BACKOFF_MIN
            self._backoff[index] = delay
            self._restart_at[index] = now + delay
            log.warning("worker %d (pid %d) %s; restarting it in %.1f s", index, pid, how,
                        delay)

    def _fork(self, index: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            self._worker(index, parent)
        self._pids[pid] = index
        self._started_at[index] = time.monotonic()
        log.info("worker %d started (pid %d)", index, pid)

    def _worker(self, index: int, parent: int) -> None:
        """The child: undo the parent's signal set-up, serve, and never return."""
        status = 1
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._parent_mask)
            _exit_with_parent(parent)
            settings = replace(self._settings, node_id=f"{self._base_id}-w{index}",
                               workers="1")
            settings.worker = index
            self._serve(settings)
            status = 0
        except SystemExit as error:
            status = error.code if isinstance(error.code, int) else 1
        except BaseException:
            log.exception("worker %d failed", index)
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)

    @staticmethod
    def _signal(pid: int, signo: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signo)


def _exit_with_parent(parent: int) -> None:
    """Have the kernel send SIGTERM to this worker when the parent dies (even by SIGKILL)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
