"""Rate limits are counted per node: a client that spreads over N nodes gets N allowances
(docs/production.md says so; this shows it on real nodes and brokers)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from realtime_behaviour.clients import connect

from .nodes import API_KEY, broker_url, require, start_nodes


@pytest.mark.parametrize("kind", ["redis", "postgresql"])
def test_each_node_counts_its_own_api_calls_and_client_messages(kind: str) -> None:
    require(kind)
    nodes = start_nodes(broker_url(kind), 2, "--api-rate", "0.01", "--api-burst", "3",
                        "--message-rate", "0.01", "--message-burst", "2")

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            for node in nodes:  # three calls each: the second node did not see the first's
                statuses = [(await http.get(f"{node.base}/api/channels", headers={
                    "Authorization": f"Bearer {API_KEY}"})).status_code for _ in range(4)]
                assert statuses == [200, 200, 200, 429]
            refused = await http.get(f"{nodes[0].base}/api/channels",
                                     headers={"Authorization": f"Bearer {API_KEY}"})
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        for node in nodes:  # a connection's messages: two pings, then 4029
            async with connect("websocket", node.port) as client:
                for _ in range(3):
                    await client.send({"type": "ping"})
                error = await client.next(type="error")
                assert error["data"]["code"] == 4029 and error["data"]["retry_after"] > 0
                assert len([m for m in client.seen if m.get("type") == "pong"]) == 2

    try:
        asyncio.run(scenario())
    finally:
        for node in nodes:
            node.stop()
