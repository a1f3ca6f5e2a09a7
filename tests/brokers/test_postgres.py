"""PostgreSQL: payloads beyond the NOTIFY limit go through the payload table."""

from __future__ import annotations

import os

import asyncpg  # type: ignore[import-untyped]
import pytest

from .support import Recorder, Target, opened, run, subscribed

pytestmark = pytest.mark.broker

SIZES = [100, 7_999, 8_000, 100_000, 1_000_000]


def test_large_payloads_arrive_intact_and_in_order(postgres: Target) -> None:
    binary = [os.urandom(size) for size in SIZES]
    text = [(b'{"t":"' + b"x" * size)[:size] for size in SIZES]  # UTF-8: sent as text
    near_limit = [b"y" * size for size in range(7_970, 8_000, 3)]  # either side of inline
    payloads = [*binary, *text, *near_limit, b"small after large"]

    async def scenario() -> None:
        a, b = Recorder(), Recorder()
        alice, bob = postgres.client(a, "node-a"), postgres.client(b, "node-b")
        try:
            async with opened(alice, bob):
                await subscribed(bob, b, "big")
                for payload in payloads:
                    alice.publish_nowait("big", payload)
                await b.wait_messages(len(payloads), timeout=20)
                received = b.data()
                assert [len(data) for data in received] == [len(data) for data in payloads]
                assert received == payloads
        finally:
            await postgres.cleanup()

    run(scenario())


def test_stored_payloads_are_deleted_after_their_ttl(postgres: Target) -> None:
    async def scenario() -> None:
        a, b = Recorder(), Recorder()
        alice = postgres.client(a, "node-a", payload_ttl="0.2")
        bob = postgres.client(b, "node-b")
        table = f"realtime_payloads_{postgres.name}"
        try:
            async with opened(alice, bob):
                await subscribed(bob, b, "ttl")
                alice.publish_nowait("ttl", b"z" * 20_000)
                await b.wait_messages(1)
                conn = await asyncpg.connect(postgres.url().partition("?")[0])
                try:
                    first = await conn.fetchval(f"SELECT min(id) FROM {table}")
                    assert first is not None
                    # Each large publish deletes rows older than the TTL (at most every
                    # TTL/2): keep publishing until the first row is gone.
                    for sent in range(2, 5000):
                        alice.publish_nowait("ttl", b"z" * 20_000)
                        await b.wait_messages(sent)
                        if not await conn.fetchval(
                            f"SELECT count(*) FROM {table} WHERE id = $1", first
                        ):
                            break
                    else:
                        pytest.fail("the first stored payload was never deleted")
                finally:
                    await conn.close()
        finally:
            await postgres.cleanup()

    run(scenario())
