"""Behind a trusted reverse proxy, each forwarded client has its own connection limit."""

from __future__ import annotations

import asyncio

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from realtime_asyncio import RealtimeServer
from realtime_proto.actions import AuthenticationRequest

CLIENTS = 150
BURST = 100


async def connect_all(port: int, source: str) -> tuple[list[ClientConnection], list[int]]:
    """Open one WebSocket per client from `source`, each forwarded for its own address;
    the open connections and the statuses of the refused ones."""
    opened: list[ClientConnection] = []
    refused: list[int] = []
    for client in range(CLIENTS):
        try:
            opened.append(await websockets.connect(
                f"ws://127.0.0.1:{port}/ws", local_addr=(source, 0), open_timeout=10,
                additional_headers={"X-Forwarded-For": f"203.0.113.{client}"}))
        except InvalidStatus as error:
            refused.append(error.response.status_code)
    return opened, refused


def test_many_clients_through_a_trusted_proxy_are_not_limited_as_one() -> None:
    async def scenario() -> None:
        # 127.0.0.1 is the trusted proxy; 127.0.0.2 is a client that forges the header.
        # The refill is so slow that only the burst counts, however long the test takes.
        server = RealtimeServer(port=0, api_key="k", trusted_proxy=["127.0.0.1"],
                                connection_rate=0.001, connection_burst=BURST)
        peers: list[str | None] = []

        @server.authenticate
        def authenticate(request: AuthenticationRequest) -> None:
            peers.append(request.peer)  # and the connection is anonymous

        await server.start()
        try:
            opened, refused = await connect_all(server.port, "127.0.0.1")
            assert (len(opened), refused) == (CLIENTS, [])
            assert set(peers) == {f"203.0.113.{n}:0" for n in range(CLIENTS)}
            forged, refused = await connect_all(server.port, "127.0.0.2")
            assert (len(forged), refused) == (BURST, [429] * (CLIENTS - BURST))
            # the forger's connections carry its own address, whatever the header said
            assert len(peers) == CLIENTS + BURST
            assert all(str(peer).startswith("127.0.0.2:") for peer in peers[CLIENTS:])
            await asyncio.gather(*(ws.close() for ws in [*opened, *forged]))
        finally:
            await server.aclose()
    asyncio.run(scenario())
