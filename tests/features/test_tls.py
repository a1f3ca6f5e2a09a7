"""TLS: wss:// and https:// on the same port, with a certificate the test makes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import websockets

from realtime_asyncio import RealtimeServer
from realtime_behaviour.certs import client_context, make_certificate


def test_wss_and_https_with_a_generated_certificate(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    context = client_context(cert)

    async def scenario() -> None:
        server = RealtimeServer(port=0, api_key="k", tls_cert=str(cert), tls_key=str(key))
        await server.start()
        try:
            async with websockets.connect(f"wss://127.0.0.1:{server.port}/ws",
                                          ssl=context) as ws:
                assert json.loads(await ws.recv())["event"] == "connection.established"
                await ws.send(json.dumps({"type": "subscribe", "channel": "news"}))
                await ws.recv()
                async with httpx.AsyncClient(verify=context) as http:
                    base = f"https://127.0.0.1:{server.port}"
                    assert (await http.get(f"{base}/health")).json()["status"] == "ok"
                    published = await http.post(f"{base}/api/publish",
                                                headers={"Authorization": "Bearer k"},
                                                json={"channel": "news", "event": "e",
                                                      "data": "secret"})
                    assert published.status_code == 200
                message = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert message["data"] == "secret"
            async with httpx.AsyncClient() as plain:
                refused = False
                try:
                    await plain.get(f"http://127.0.0.1:{server.port}/health")
                except httpx.HTTPError:
                    refused = True  # plain HTTP on the TLS port fails the handshake
                assert refused
            async with httpx.AsyncClient(verify=context) as http:  # and the server goes on
                health = await http.get(f"https://127.0.0.1:{server.port}/health")
                assert health.status_code == 200
        finally:
            await server.aclose(timeout=1)
    asyncio.run(scenario())
