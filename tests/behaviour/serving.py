"""The project's four runtimes, registered with the behaviour suite the way an outside
adapter registers its own (`docs/adapters.md`), and `serving` by runtime name.

The asyncio server runs in the test's own event loop. The trio, gevent and selectors
servers run in a thread of the test process with their own loop (`trio.run`, a gevent
hub, a selector), behind the suite's `ThreadedServer` handle.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from realtime_asyncio import RealtimeServer
from realtime_behaviour import CLOSE_TIMEOUT, Ready, Runtime, future_call, threaded
from realtime_behaviour import serving as serving_runtime


@contextlib.asynccontextmanager
async def _serve_asyncio(options: dict[str, Any]) -> AsyncIterator[RealtimeServer]:
    server = RealtimeServer(**options)
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


def _run_trio(options: dict[str, Any], ready: Ready) -> None:
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

            ready(server, call, stop)

    try:
        trio.run(main)
    except BaseExceptionGroup as group:  # the nursery's (trio groups strictly)
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


def _run_gevent(options: dict[str, Any], ready: Ready) -> None:
    import gevent
    import gevent.event

    from realtime_gevent import RealtimeServer as GeventServer

    server = GeventServer(**options)
    hub = gevent.get_hub()
    try:
        server.start()
        stopping = gevent.event.Event()
        ready(server, future_call(hub.loop.run_callback_threadsafe),
              lambda: hub.loop.run_callback_threadsafe(stopping.set))
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


def _run_selectors(options: dict[str, Any], ready: Ready) -> None:
    server = selectors_module().SelectorsServer(**options)
    server.close_timeout = CLOSE_TIMEOUT
    server.start()
    ready(server, future_call(server.call_soon_threadsafe),
          lambda: server.call_soon_threadsafe(server.stop))
    server.serve_forever()


#: by name; callbacks may be `async def` on asyncio and trio; the selectors example has no TLS
BY_NAME = {runtime.name: runtime for runtime in (
    Runtime("asyncio", _serve_asyncio, async_callbacks=True),
    Runtime("trio", threaded(_run_trio, "trio"), async_callbacks=True),
    Runtime("gevent", threaded(_run_gevent, "gevent")),
    Runtime("selectors", threaded(_run_selectors, "selectors"), tls=False),
)}
RUNTIMES = list(BY_NAME)


def serving(runtime: str | Runtime = "asyncio",
            **settings: Any) -> AbstractAsyncContextManager[Any]:
    """A server of the runtime (or runtime name) on 127.0.0.1 with an ephemeral port."""
    return serving_runtime(BY_NAME[runtime] if isinstance(runtime, str) else runtime,
                           **settings)
