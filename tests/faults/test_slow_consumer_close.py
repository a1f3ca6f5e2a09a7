"""A slow consumer cut by the default policy reads whole frames, then a 4021 close, when it
reads again within the close grace period (5 s): nothing it is sent ends mid-frame.

A client that does not read for longer than the grace period cannot be given anything: its
socket is aborted then, and it reads what the kernel held (which may end inside a frame),
then EOF. That limit is documented in docs/protocol.md (Slow consumers); no server can
deliver a close frame to a peer that does not read.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

from realtime_behaviour import Runtime
from realtime_behaviour.cases.bad_input import slow_subscriber, with_bystander
from realtime_behaviour.clients import WsClient
from realtime_behaviour.wire import server_frame

#: how long the cut client stops reading: most of the adapters' close grace period (5 s)
STALL = 3.0


def test_a_cut_slow_consumer_that_stalls_within_the_grace_reads_a_whole_4021_close(
        runtime: Runtime) -> None:
    async def scenario(server: Any, good: WsClient) -> None:
        reader, writer = await slow_subscriber(server)
        payload = "y" * 256 * 1024
        async with asyncio.timeout(60):
            while server.node.statistics().slow_consumers == 0:
                server.broadcast("news", "bulk", payload)
                assert (await good.next("bulk"))["data"] == payload
        await asyncio.sleep(STALL)  # the client stalls (a suspended tab, a full CPU)
        try:
            async with asyncio.timeout(30):
                while True:
                    opcode, data = await server_frame(reader)
                    if opcode == 8:
                        break
                    assert opcode == 1 and json.loads(data)["event"] in (
                        "connection.established", "subscription.succeeded", "bulk")
        finally:
            writer.close()
        assert struct.unpack("!H", data[:2])[0] == 4021

    with_bystander(runtime, scenario, max_output_bytes=64 * 1024)
