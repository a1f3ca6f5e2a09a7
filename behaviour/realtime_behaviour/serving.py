"""The hook a runtime plugs into the suite, and one handle on the server whatever it runs on.

A `Runtime` says how to serve: `serve(options)` is an async context manager that starts a
server with those keyword options (a free port included), yields it, and stops it at the
end. A server whose loop is the test's asyncio loop yields the server itself; any other
loop runs in a thread through `threaded`, and the test gets a `ThreadedServer` that
marshals every call into that loop, so a test reads the same whatever the runtime.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from realtime_proto.jwt import encode_hs256

API_KEY = "test-api-key"
SECRET = "test-secret"
TRANSPORTS = ["websocket", "sse", "polling"]
#: seconds a threaded server may take to start or to stop
STARTUP_TIMEOUT = 20.0
#: seconds a server gives its clients to go at shutdown
CLOSE_TIMEOUT = 2.0

T = TypeVar("T")
#: runs a function in the server's loop and returns its result (blocking the caller)
Call = Callable[[Callable[[], T]], T]
#: what `serve` gets: the server's keyword options; what it yields: the server's handle
Serve = Callable[[dict[str, Any]], AbstractAsyncContextManager[Any]]
#: what a threaded runner reports once it listens: (server, call, stop)
Ready = Callable[[Any, Call[Any], Callable[[], None]], None]
#: a threaded runner: build the server from the options, start it, call `ready`, then run
#: the loop until `stop` (which another thread calls) ends it
Runner = Callable[[dict[str, Any], Ready], None]


@dataclass(frozen=True)
class Runtime:
    """A server runtime under test.

    `name` is what the server's `/health` reports as its runtime; `async_callbacks` whether
    its authorization callbacks may be `async def`; `tls` whether it serves TLS.
    """

    name: str
    serve: Serve
    async_callbacks: bool = False
    tls: bool = True

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a Runtime needs the name its /health reports")


def runtime_fixture(*runtimes: Runtime) -> Any:
    """The `runtime` fixture every case takes: each case runs once per runtime given.

    Assign it in a conftest: `runtime = runtime_fixture(MY_RUNTIME)`.
    """
    if not runtimes:
        raise ValueError("runtime_fixture needs at least one Runtime")

    @pytest.fixture(params=runtimes, ids=[runtime.name for runtime in runtimes],
                    name="runtime")
    def runtime(request: pytest.FixtureRequest) -> Runtime:
        """The runtime the server under test runs on."""
        chosen: Runtime = request.param
        return chosen

    return runtime


def server_options(settings: dict[str, Any]) -> dict[str, Any]:
    """The options a test server starts with: an ephemeral port, the test credentials, a
    memory bus of its own, then `settings`."""
    options: dict[str, Any] = {"port": 0, "api_key": API_KEY, "jwt_secret": SECRET,
                               "broker": f"memory://test-{uuid.uuid4().hex}"}
    options.update(settings)
    return options


def serving(runtime: Runtime, **settings: Any) -> AbstractAsyncContextManager[Any]:
    """A server of `runtime` on 127.0.0.1 with an ephemeral port, closed at the end."""
    return runtime.serve(server_options(settings))


def token(sub: str, *, channels: list[str] | None = None, ttl: int = 600,
          **claims: Any) -> str:
    """A connection token for the test server."""
    body: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + ttl, **claims}
    if channels is not None:
        body["channels"] = channels
    return encode_hs256(body, SECRET)


def flavoured(runtime: Runtime,
              rule: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    """`rule` as an `async def` where the runtime takes those, else as it is.

    The async version awaits nothing library-specific, so it runs on asyncio and trio.
    """
    if not runtime.async_callbacks:
        return rule

    async def answer() -> Any:
        return None

    async def async_rule(connection: Any, channel: str) -> Any:
        await answer()
        return rule(connection, channel)

    return async_rule


def threaded(run: Runner, name: str = "server") -> Serve:
    """`serve` for a server whose loop runs in a thread of its own: `run(options, ready)`
    builds and starts it, calls `ready(server, call, stop)`, and returns when stopped."""

    @contextlib.asynccontextmanager
    async def serve(options: dict[str, Any]) -> AsyncIterator[ThreadedServer]:
        started: concurrent.futures.Future[tuple[Any, Call[Any], Callable[[], None]]] = (
            concurrent.futures.Future())
        finished: concurrent.futures.Future[None] = concurrent.futures.Future()

        def ready(server: Any, call: Call[Any], stop: Callable[[], None]) -> None:
            started.set_result((server, call, stop))

        def main() -> None:
            try:
                run(options, ready)
            except BaseException as error:
                if not started.done():
                    started.set_exception(error)
                finished.set_exception(error)
            else:
                finished.set_result(None)

        thread = threading.Thread(target=main, name=f"{name}-server", daemon=True)
        thread.start()
        server, call, stop = await asyncio.wait_for(asyncio.wrap_future(started),
                                                    STARTUP_TIMEOUT)
        handle = ThreadedServer(server, call, stop, finished)
        try:
            yield handle
        finally:
            await handle.aclose()
            thread.join(STARTUP_TIMEOUT)

    return serve


class ThreadedServer:
    """The handle on a server running in another thread: every call is marshalled."""

    def __init__(self, server: Any, call: Call[Any], stop: Callable[[], None],
                 finished: concurrent.futures.Future[None]) -> None:
        self.server = server
        self.call = call
        self.port: int = server.port
        self.node = _NodeProxy(self)
        self._stop = stop
        self._finished = finished

    async def aclose(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop the server the runtime's own way and wait until its thread is done (it
        gives clients the `close_timeout` it was started with)."""
        if not self._finished.done():
            self._stop()
        await asyncio.wait_for(asyncio.wrap_future(self._finished), STARTUP_TIMEOUT)

    def broadcast(self, *args: Any, **kwargs: Any) -> str:
        return str(self.call(lambda: self.server.broadcast(*args, **kwargs)))

    def send_to_user(self, *args: Any, **kwargs: Any) -> str:
        return str(self.call(lambda: self.server.send_to_user(*args, **kwargs)))

    def send(self, *args: Any, **kwargs: Any) -> str | None:
        result: str | None = self.call(lambda: self.server.send(*args, **kwargs))
        return result

    def members(self, channel: str) -> Any:
        return self.call(lambda: self.server.members(channel))

    def channels(self) -> dict[str, int]:
        result: dict[str, int] = self.call(self.server.channels)
        return result

    def connection(self, connection_id: str) -> Any:
        return self.call(lambda: self.server.connection(connection_id))

    def channel(self, pattern: str) -> _RuleProxy:
        return _RuleProxy(self, pattern)


def in_server(server: Any, read: Callable[[Any], T]) -> T:
    """`read(the server object)`, run in the server's own loop when it has a thread."""
    if isinstance(server, ThreadedServer):
        result: T = server.call(lambda: read(server.server))
        return result
    return read(server)


class _RuleProxy:
    def __init__(self, handle: ThreadedServer, pattern: str) -> None:
        self._handle = handle
        self._pattern = pattern

    def authorize(self, callback: Callable[[Any, str], Any]) -> None:
        server = self._handle.server
        self._handle.call(lambda: server.channel(self._pattern).authorize(callback))


class _NodeProxy:
    def __init__(self, handle: ThreadedServer) -> None:
        self._handle = handle

    def statistics(self) -> Any:
        return self._handle.call(self._handle.server.node.statistics)


def future_call(schedule: Callable[[Callable[[], None]], object]) -> Call[Any]:
    """A blocking call into a loop, given that loop's thread-safe `call_soon`."""

    def call(fn: Callable[[], Any]) -> Any:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as error:
                future.set_exception(error)

        schedule(run)
        return future.result(STARTUP_TIMEOUT)

    return call
