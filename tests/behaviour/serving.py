"""Start a real server of any runtime on a free loopback port, behind one handle.

The asyncio server runs in the test's own event loop. The trio, gevent and selectors
servers run in a thread of the test process with their own loop (`trio.run`, a gevent
hub, a selector); the handle marshals every call into that loop and waits for the answer,
so a test reads the same whatever the runtime.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from realtime_asyncio import RealtimeServer
from realtime_proto.jwt import encode_hs256

API_KEY = "test-api-key"
SECRET = "test-secret"
TRANSPORTS = ["websocket", "sse", "polling"]
RUNTIMES = ["asyncio", "trio", "gevent", "selectors"]
#: runtimes whose callbacks may be `async def` (gevent and selectors take plain callables)
ASYNC_CALLBACKS = {"asyncio": True, "trio": True, "gevent": False, "selectors": False}
#: seconds a threaded server may take to start or to stop
STARTUP_TIMEOUT = 20.0
#: seconds a server gives its clients to go at shutdown
CLOSE_TIMEOUT = 2.0

T = TypeVar("T")
Call = Callable[[Callable[[], T]], T]


def token(sub: str, *, channels: list[str] | None = None, ttl: int = 600,
          **claims: Any) -> str:
    """A connection token for the test server."""
    body: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + ttl, **claims}
    if channels is not None:
        body["channels"] = channels
    return encode_hs256(body, SECRET)


def flavoured(runtime: str, rule: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    """`rule` as an `async def` where the runtime takes those, else as it is.

    The async version awaits nothing library-specific, so it runs on asyncio and trio.
    """
    if not ASYNC_CALLBACKS[runtime]:
        return rule

    async def answer() -> Any:
        return None

    async def async_rule(connection: Any, channel: str) -> Any:
        await answer()
        return rule(connection, channel)

    return async_rule


def _options(settings: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {"port": 0, "api_key": API_KEY, "jwt_secret": SECRET,
                               "broker": f"memory://test-{uuid.uuid4().hex}"}  # a bus of its own
    options.update(settings)
    return options


@contextlib.asynccontextmanager
async def serving(runtime: str = "asyncio", **settings: Any) -> AsyncIterator[Any]:
    """A server on 127.0.0.1 with an ephemeral port, closed at the end."""
    if runtime == "asyncio":
        server = RealtimeServer(**_options(settings))
        try:
            await server.start()
        except BaseException:
            if server.broker is not None:
                await server.broker.aclose()  # it may have started before the bind failed
            raise
        try:
            yield server
        finally:
            await server.aclose(timeout=CLOSE_TIMEOUT)
        return
    runner = {"trio": _run_trio, "gevent": _run_gevent, "selectors": _run_selectors}[runtime]
    started: concurrent.futures.Future[tuple[Any, Call[Any], Callable[[], None]]] = (
        concurrent.futures.Future())
    finished: concurrent.futures.Future[None] = concurrent.futures.Future()

    def main() -> None:
        try:
            runner(_options(settings), started)
        except BaseException as error:
            if not started.done():
                started.set_exception(error)
            finished.set_exception(error)
        else:
            finished.set_result(None)

    thread = threading.Thread(target=main, name=f"{runtime}-server", daemon=True)
    thread.start()
    server, call, stop = await asyncio.wait_for(asyncio.wrap_future(started), STARTUP_TIMEOUT)
    handle = ThreadedServer(server, call, stop, finished)
    try:
        yield handle
    finally:
        await handle.aclose()
        thread.join(STARTUP_TIMEOUT)


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


def _future_call(schedule: Callable[[Callable[[], None]], object]) -> Call[Any]:
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


def _run_trio(options: dict[str, Any], started: concurrent.futures.Future[Any]) -> None:
    import trio

    from realtime_trio import RealtimeServer as TrioServer

    server = TrioServer(**options)
    server.close_timeout = CLOSE_TIMEOUT

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            token = trio.lowlevel.current_trio_token()

            def call(fn: Callable[[], Any]) -> Any:
                return trio.from_thread.run_sync(fn, trio_token=token)

            def stop() -> None:
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(nursery.cancel_scope.cancel)  # as a caller would

            started.set_result((server, call, stop))

    try:
        trio.run(main)
    except BaseExceptionGroup as group:  # the nursery's (trio groups strictly)
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


def _run_gevent(options: dict[str, Any], started: concurrent.futures.Future[Any]) -> None:
    import gevent
    import gevent.event

    from realtime_gevent import RealtimeServer as GeventServer

    server = GeventServer(**options)
    hub = gevent.get_hub()
    try:
        server.start()
        stopping = gevent.event.Event()
        started.set_result((server, _future_call(hub.loop.run_callback_threadsafe),
                            lambda: hub.loop.run_callback_threadsafe(stopping.set)))
        stopping.wait()
        server.stop(timeout=CLOSE_TIMEOUT)
    finally:
        hub.destroy(destroy_loop=True)


def selectors_module() -> Any:
    """`examples/selectors_adapter/server.py`, which is not a package."""
    name = "selectors_adapter_server"
    module = sys.modules.get(name)
    if module is None:
        path = Path(__file__).parents[2] / "examples" / "selectors_adapter" / "server.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


def _run_selectors(options: dict[str, Any], started: concurrent.futures.Future[Any]) -> None:
    server = selectors_module().SelectorsServer(**options)
    server.close_timeout = CLOSE_TIMEOUT
    server.start()
    started.set_result((server, _future_call(server.call_soon_threadsafe),
                        lambda: server.call_soon_threadsafe(server.stop)))
    server.serve_forever()
