"""Each broker driver's throughput, and what the broker bridge costs: messages/s from a
publisher to a subscriber through the broker, both clients direct (asyncio) against both
through `BrokerBridge` (how trio, gevent and the selectors adapter reach the asyncio
broker clients: one thread hop each way). The brokers and their URLs are
``broker_clients.py``'s, as in scenario 6 (which measures the driver between two processes,
against the bare client library).

    .venv/bin/python bench/bridge.py [--messages 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import broker_clients

from realtime_brokers import open_broker
from realtime_brokers.bridge import BrokerBridge

PAYLOAD = b'{"o":"n1","s":1,"k":"c"}\n' + b"x" * 100


class Counter:
    def __init__(self, expected: int, done: asyncio.Event) -> None:
        self.expected, self.done, self.got = expected, done, 0

    def message_received(self, topic: str, data: bytes) -> None:
        self.got += 1
        if self.got == self.expected:
            self.done.set()

    def connection_lost(self, reason: str) -> None: ...
    def connection_restored(self) -> None: ...


async def started_bridge(url: str, listener: Any, node_id: str) -> BrokerBridge:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[BaseException | None] = loop.create_future()
    bridge = BrokerBridge(url, listener, node_id=node_id, call_soon=loop.call_soon_threadsafe)
    bridge.start(lambda error: ready.set_result(error))
    error = await ready
    if error is not None:
        raise error
    return bridge


async def closed_bridge(bridge: BrokerBridge) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    bridge.close(lambda: done.set_result(None))
    await done


async def measure(url: str, count: int, bridged: bool) -> float:
    done = asyncio.Event()
    counter = Counter(count, done)
    quiet = Counter(-1, asyncio.Event())
    make: Callable[..., Any] = started_bridge if bridged else _started_client
    sub = await make(url, counter, "sub")
    pub = await make(url, quiet, "pub")
    sub.subscribe_nowait("c:bench")
    await asyncio.sleep(0.5)  # subscriptions are made asynchronously
    start = time.perf_counter()
    for _ in range(count):
        pub.publish_nowait("c:bench", PAYLOAD)
    await asyncio.wait_for(done.wait(), 300)
    elapsed = time.perf_counter() - start
    for client in (pub, sub):
        await (closed_bridge(client) if bridged else client.aclose())
    return count / elapsed


async def _started_client(url: str, listener: Any, node_id: str) -> Any:
    client = open_broker(url, listener, node_id=node_id)
    await client.start()
    return client


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    # below the driver's outage queue (10,000): all are queued before the first is sent
    parser.add_argument("--messages", type=int, default=5_000)
    args = parser.parse_args()
    print("| broker | direct (msg/s) | through the bridge (msg/s) | bridge / direct |")
    print("|---|---|---|---|")
    name = uuid.uuid4().hex[:8]
    for kind in ("memory", *broker_clients.KINDS):
        url = broker_clients.driver_url(kind, name)
        direct = await measure(url, args.messages, bridged=False)
        bridged = await measure(url, args.messages, bridged=True)
        print(f"| {url.partition(':')[0]} | {direct:,.0f} | {bridged:,.0f} | "
              f"{bridged / direct:.2f} |", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
