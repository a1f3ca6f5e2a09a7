"""A TCP proxy for fault tests: put it between a client and a real server, then break things.

Self-contained (standard library only), so broker, adapter and cluster tests can share it::

    async with TcpProxy("127.0.0.1", 6379) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}"
        ...
        proxy.cut()          # reset every open connection, as if the server died
        proxy.refuse()       # new connections are reset at once ...
        proxy.allow()        # ... until allowed again
        proxy.swallow()      # connections stay open but every byte is silently dropped
        proxy.swallow(False) # forward again (connections made meanwhile stay dead)

:class:`TcpProxy` runs on the caller's asyncio loop. :class:`ThreadedTcpProxy` runs one on
its own thread and loop, for tests on trio, gevent or plain threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

__all__ = ["TcpProxy", "ThreadedTcpProxy"]

_T = TypeVar("_T")
_CHUNK = 65536


class _Link:
    """One proxied connection: the client side and, unless swallowed, the server side."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.server: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        for writer in (self.client, self.server):
            if writer is not None:
                writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port`` until told otherwise."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = 0
        #: when each connection was accepted (the loop's clock)
        self.accepted: list[float] = []
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._refusing = False
        self._swallowing = False
        self._changed = asyncio.Event()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def connections(self) -> int:
        """Open proxied connections."""
        return len(self._links)

    async def wait_connections(self, count: int, timeout: float = 10.0) -> None:
        """Wait until at least ``count`` connections are open."""
        async with asyncio.timeout(timeout):
            while len(self._links) < count:
                self._changed.clear()
                await self._changed.wait()

    def cut(self) -> int:
        """Reset every open connection (both sides); return how many there were."""
        links = list(self._links)
        for link in links:
            link.abort()
        self._links.clear()
        return len(links)

    def refuse(self, refusing: bool = True) -> None:
        """Reset new connections as soon as they are accepted (or stop doing so)."""
        self._refusing = refusing

    def allow(self) -> None:
        """Forward new connections again."""
        self._refusing = False

    def swallow(self, swallowing: bool = True) -> None:
        """Keep every connection open but drop all bytes, both ways (or forward again)."""
        self._swallowing = swallowing

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted.append(asyncio.get_running_loop().time())
        if self._refusing:
            writer.transport.abort()
            return
        link = _Link(writer)
        self._links.add(link)
        self._changed.set()
        try:
            if self._swallowing:
                await self._discard(reader)
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                return
            link.server = up_writer
            if link not in self._links:  # cut while connecting
                return
            link.tasks = [
                asyncio.create_task(self._pipe(reader, up_writer)),
                asyncio.create_task(self._pipe(up_reader, writer)),
            ]
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            link.abort()
            self._links.discard(link)
            self._changed.set()

    async def _discard(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            while await reader.read(_CHUNK):
                pass

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                if self._swallowing:
                    continue
                writer.write(data)
                await writer.drain()


class ThreadedTcpProxy:
    """A :class:`TcpProxy` on a thread of its own; every method is blocking and thread-safe."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self._loop = asyncio.new_event_loop()
        self._proxy: TcpProxy | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._args = (target_host, target_port, host)

    def start(self) -> ThreadedTcpProxy:
        self._thread.start()
        target_host, target_port, host = self._args

        async def make() -> TcpProxy:
            return await TcpProxy(target_host, target_port, host=host).start()

        self._proxy = self._run(make)
        return self

    @property
    def port(self) -> int:
        assert self._proxy is not None, "start() first"
        return self._proxy.port

    def _run(self, make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        return asyncio.run_coroutine_threadsafe(make(), self._loop).result(timeout=30)

    def _proxy_call(self, action: Callable[[TcpProxy], _T]) -> _T:
        proxy = self._proxy
        assert proxy is not None, "start() first"

        async def run() -> _T:
            return action(proxy)

        return self._run(run)

    def cut(self) -> int:
        return self._proxy_call(lambda proxy: proxy.cut())

    def refuse(self, refusing: bool = True) -> None:
        self._proxy_call(lambda proxy: proxy.refuse(refusing))

    def allow(self) -> None:
        self._proxy_call(lambda proxy: proxy.allow())

    def swallow(self, swallowing: bool = True) -> None:
        self._proxy_call(lambda proxy: proxy.swallow(swallowing))

    @property
    def connections(self) -> int:
        return self._proxy_call(lambda proxy: proxy.connections)

    def close(self) -> None:
        if self._proxy is not None:
            proxy = self._proxy
            self._run(proxy.aclose)
            self._proxy = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> ThreadedTcpProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
