"""The Python client against a real server: channels, presence, reconnect, recovery."""

from __future__ import annotations

import asyncio
import json
import time

from realtime_asyncio import RealtimeClient, RealtimeServer
from realtime_proto.client import (
    MAX_RETRY_AFTER,
    ChannelMessage,
    ClientProtocol,
    ClientState,
    MessagesLost,
    Subscribed,
    busy_retry_after,
)
from realtime_proto.jwt import encode_hs256

from ..brokers.proxy import TcpProxy

SECRET = "client-secret"


def token(user: str) -> str:
    return encode_hs256({"sub": user, "exp": int(time.time()) + 600,
                         "channels": ["private-*", "presence-*"]}, SECRET)


def server(port: int = 0, **options: object) -> RealtimeServer:
    return RealtimeServer(port=port, api_key="k", jwt_secret=SECRET, **options)


def test_channels_client_events_and_presence() -> None:
    async def scenario() -> None:
        node = server()
        await node.start()
        url = f"ws://127.0.0.1:{node.port}"
        async with RealtimeClient(url, token=token("alice")) as alice, \
                RealtimeClient(url, token=lambda: token("bob")) as bob:
            news = alice.subscribe("news")
            await asyncio.wait_for(news.subscribed.wait(), 10)
            node.broadcast("news", "headline", {"n": 1})
            assert (await news.next("headline", timeout=10)).data == {"n": 1}
            room_a, room_b = alice.subscribe("presence-room"), bob.subscribe("presence-room")
            joined: asyncio.Queue[object] = asyncio.Queue()
            room_a.on("user.joined", lambda data: joined.put_nowait(data))
            for room in (room_a, room_b):
                await asyncio.wait_for(room.subscribed.wait(), 10)
            async with asyncio.timeout(10):
                while set(room_a.members) != {"alice", "bob"}:
                    await asyncio.sleep(0.01)
            room_b.send("typing", {})
            message = await room_a.next("typing", timeout=10)
            assert message.message["user_id"] == "bob"
            refused = alice.subscribe("private-x.no")  # the JWT claim allows private-*
            await asyncio.wait_for(refused.subscribed.wait(), 10)
            assert refused.error is None
        await node.aclose()
    asyncio.run(scenario())


def test_reconnect_resubscribes_flushes_queued_sends_and_recovers() -> None:
    async def scenario() -> None:
        first = server(history="private-*=100:60")
        await first.start()
        port = first.port
        calls = []

        def fresh_token() -> str:
            calls.append(1)
            return token("carol")
        client = RealtimeClient(f"ws://127.0.0.1:{port}", token=fresh_token,
                                backoff_min=0.05, backoff_max=0.2)
        await client.connect()
        feed = client.subscribe("private-feed")
        await asyncio.wait_for(feed.subscribed.wait(), 10)
        first.broadcast("private-feed", "n", 1)
        assert (await feed.next("n", timeout=10)).data == 1
        # the server drops the connection; messages published meanwhile are recovered
        first.node.hub.disconnect(client.connection_id, 1012, "restart")  # type: ignore[arg-type]
        first.pump()
        first.broadcast("private-feed", "n", 2)
        first.broadcast("private-feed", "n", 3)
        got = [(await feed.next("n", timeout=10)).data for _ in range(2)]
        assert got == [2, 3]
        assert len(calls) >= 2  # the token function ran again for the reconnect
        # now the whole server restarts on the same port: a new epoch, resubscribed
        await first.aclose()
        feed.send("hello", "queued while offline")
        second = server(port=port, history="private-*=100:60")
        listener = RealtimeClient(f"ws://127.0.0.1:{port}", token=token("dave"))
        await second.start()
        await listener.connect()
        heard = listener.subscribe("private-feed")
        await asyncio.wait_for(heard.subscribed.wait(), 10)
        async with asyncio.timeout(20):
            while client.state is not ClientState.CONNECTED or "private-feed" not in \
                    second.channels() or second.channels()["private-feed"] < 2:
                await asyncio.sleep(0.02)
        # the send queued while offline reached the new server after the reconnect
        await asyncio.wait_for(_until(lambda: second.node.hub.statistics().published >= 1), 10)
        second.broadcast("private-feed", "n", 4)
        assert (await feed.next("n", timeout=10)).data == 4
        await client.close()
        await listener.close()
        await second.aclose()
    asyncio.run(scenario())


def test_a_refused_token_fails_without_retrying() -> None:
    async def scenario() -> None:
        node = server()
        await node.start()
        client = RealtimeClient(f"ws://127.0.0.1:{node.port}", token="forged.token.x",
                                backoff_min=0.01)
        states: list[ClientState] = []
        client.on("state", states.append)
        runner = asyncio.ensure_future(client.connect(timeout=5))
        async with asyncio.timeout(10):
            while client.state is not ClientState.FAILED:
                await asyncio.sleep(0.01)
        runner.cancel()
        assert client.attempts == 1 and states[-1] is ClientState.FAILED
        await client.close()
        await node.aclose()
    asyncio.run(scenario())


def test_disconnected_by_the_backend_fails_without_retrying_and_revoked_channels_end() -> None:
    async def scenario() -> None:
        node = server()
        await node.start()
        client = RealtimeClient(f"ws://127.0.0.1:{node.port}", token=token("mallory"),
                                backoff_min=0.01, backoff_max=0.02)
        await client.connect()
        feed = client.subscribe("private-feed")
        await asyncio.wait_for(feed.subscribed.wait(), 10)
        errors: list[object] = []
        feed.on("subscription.error", errors.append)
        assert node.unsubscribe_user("mallory", "private-feed", "no access") == 1
        async with asyncio.timeout(10):
            await _until(lambda: errors)
        assert "private-feed" not in client.channels
        assert (feed.error.code, feed.error.message) == (4003, "no access")  # type: ignore[union-attr]
        states: list[ClientState] = []
        client.on("state", states.append)
        assert node.disconnect_user("mallory", reason="banned") == 1
        async with asyncio.timeout(10):
            await _until(lambda: client.state is ClientState.FAILED)
        assert client.attempts == 1 and states == [ClientState.FAILED]
        await client.close()
        await node.aclose()
    asyncio.run(scenario())


def test_an_expiring_token_is_refreshed_by_the_token_function_without_a_gap() -> None:
    async def scenario() -> None:
        node = server(refresh_lead=2.0)
        await node.start()
        calls = 0

        def short_lived() -> str:
            nonlocal calls
            calls += 1
            if calls > 4:
                raise RuntimeError("backend down")
            return encode_hs256({"sub": "dora", "exp": int(time.time()) + 4,
                                 "channels": ["private-*"]}, SECRET)
        client = RealtimeClient(f"ws://127.0.0.1:{node.port}", token=short_lived,
                                backoff_min=0.01, backoff_max=0.02)
        refreshed: list[object] = []
        client.on("message", lambda m: refreshed.append(m)
                  if m.event == "connection.refreshed" else None)
        await client.connect()
        feed = client.subscribe("private-feed")
        await asyncio.wait_for(feed.subscribed.wait(), 10)
        got: list[object] = []
        feed.on("n", lambda data, message: got.append(data))
        sent = 0
        async with asyncio.timeout(20):
            while len(refreshed) < 3:  # tokens live 3-4 s, refreshed 2 s before
                node.broadcast("private-feed", "n", sent)
                sent += 1
                await asyncio.sleep(0.2)
            await _until(lambda: len(got) == sent)
        assert got == list(range(sent)) and client.attempts == 1
        # the fifth call fails: closed with 4001 at expiry, then failed, no loop
        async with asyncio.timeout(15):
            await _until(lambda: client.state is ClientState.FAILED)
        assert calls == 6 and client.attempts == 2
        await client.close()
        await node.aclose()
    asyncio.run(scenario())


def test_a_busy_server_s_retry_after_delays_the_next_attempt() -> None:
    async def scenario() -> None:
        node = server(max_handshakes_per_second=0.5)  # one handshake every 2 s
        await node.start()
        async with TcpProxy("127.0.0.1", node.port) as front, \
                RealtimeClient(f"ws://127.0.0.1:{node.port}"):  # takes the one handshake
            client = RealtimeClient(f"ws://127.0.0.1:{front.port}", backoff_min=0.01,
                                    backoff_max=0.02, jitter=lambda: 0.0)
            seen: list[float | None] = []
            client.on("state", lambda state: seen.append(client.retry_after)
                      if state is ClientState.RECONNECTING else None)
            await client.connect(timeout=10)  # refused with 503 + Retry-After: 1 or 2, then in
            [retry_after] = seen
            assert retry_after in (1.0, 2.0) and client.attempts == 2
            assert client.retry_after is None
            first, second = front.accepted
            assert second - first >= retry_after  # not the 10-20 ms backoff
            await client.close()
        await node.aclose()
    asyncio.run(scenario())


def test_busy_retry_after_reads_a_503_or_429_retry_after_in_seconds() -> None:
    assert busy_retry_after(503, [(b"content-type", b"x"), (b"retry-after", b"2")]) == 2.0
    assert busy_retry_after(429, [(b"Retry-After", b"1.5")]) == 1.5
    assert busy_retry_after(503, []) is None  # a proxy's 503: the ordinary backoff
    assert busy_retry_after(401, [(b"retry-after", b"2")]) is None
    for value in (b"Wed, 21 Oct 2026 07:28:00 GMT", b"0", b"-1", b"nan", b"inf"):
        assert busy_retry_after(503, [(b"retry-after", value)]) is None


def test_client_protocol_waits_a_busy_server_s_retry_after_instead_of_the_backoff() -> None:
    jitters = iter([0.0, 0.5, 0.0, 0.0])
    protocol = ClientProtocol(jitter=lambda: next(jitters), backoff_min=0.5, backoff_max=20)
    protocol.connection_lost(now=10, retry_after=3)
    assert (protocol.state, protocol.next_attempt_at, protocol.retry_after) \
        == (ClientState.RECONNECTING, 13, 3)
    protocol.connection_lost(now=20, retry_after=2)  # plus a random share of up to half of it
    assert protocol.next_attempt_at == 22.5
    protocol.connection_lost(now=30, retry_after=3600)
    assert (protocol.next_attempt_at, protocol.retry_after) == (30 + MAX_RETRY_AFTER, 3600)
    protocol.connection_lost(now=40)  # the fourth failure in a row: 0.5 s * 2**3, jittered
    assert (protocol.next_attempt_at, protocol.retry_after) == (42, None)
    protocol.connection_lost(now=50, retry_after=1, refused=True)  # a refused token ends it
    assert protocol.state is ClientState.FAILED and protocol.retry_after is None
    assert protocol.next_deadline() is None


async def _until(check: object) -> None:
    while not check():  # type: ignore[operator]
        await asyncio.sleep(0.01)


# The server reports lost messages with `messages.lost` (docs/protocol.md). These tests check
# the CLIENT'S REACTION: the event is injected with `broadcast`/`send`, and the gap it reports
# is real — those messages were published with `exclude`, so they are in the channel's
# history but never reached the client.

def test_client_reaction_to_messages_lost_replays_the_gap_once_and_holds_sends() -> None:
    async def scenario() -> None:
        node = server(history="private-hist.*=100:60")

        async def allow(connection: object, channel: str) -> bool:
            await asyncio.sleep(0)  # a pending authorization, as with a real lookup
            return True
        node.channel("private-hist.*").authorize(allow)
        await node.start()
        url = f"ws://127.0.0.1:{node.port}"
        plain = {"exp": int(time.time()) + 600}  # no `channels` claim: the rule decides
        async with RealtimeClient(url, token=encode_hs256({"sub": "alice", **plain}, SECRET)) \
                as alice, RealtimeClient(url, token=encode_hs256({"sub": "bob", **plain},
                                                                 SECRET)) as bob:
            room, heard = alice.subscribe("private-hist.1"), bob.subscribe("private-hist.1")
            for channel in (room, heard):
                await asyncio.wait_for(channel.subscribed.wait(), 10)
            seen: list[object] = []
            room.on("n", lambda data, message: seen.append(data))
            answers: list[Subscribed] = []
            room.on("subscription.succeeded", answers.append)
            left: list[object] = []
            room.on("unsubscription.succeeded", lambda *args: left.append(args))
            reports: list[tuple[object, ...]] = []
            alice.on("messages.lost", lambda channel, data: reports.append(
                (channel, data, room.recovering)))
            # a send while the channel recovers waits for the new subscription
            room.on("messages.lost", lambda data, message: room.send("note", "during"))
            for n in range(1, 7):
                node.broadcast("private-hist.1", "n", n,
                               exclude=alice.connection_id if n in (3, 4) else None)
            got = [await room.next("n", timeout=10) for _ in range(4)]
            assert [m.data for m in got] == [1, 2, 5, 6]
            epoch, first = got[1].message["epoch"], got[1].message["offset"] + 1
            assert got[2].message["offset"] == first + 2
            lost = {"count": 2, "epoch": epoch, "from": first, "to": first + 1}
            node.broadcast("private-hist.1", "messages.lost", lost,
                           exclude=bob.connection_id)
            assert [(await room.next("n", timeout=10)).data for _ in range(2)] == [3, 4]
            assert (await heard.next("note", timeout=10)).data == "during"
            node.broadcast("private-hist.1", "n", 7)
            assert (await room.next("n", timeout=10)).data == 7
            assert seen == [1, 2, 5, 6, 3, 4, 7]  # each once: the replay's 5, 6 are not repeated
            assert reports == [("private-hist.1", lost, True)]
            assert [a.recovered for a in answers] == [True]
            assert left == [] and not room.recovering and room.error is None
            assert node.node.hub.statistics().recoveries == {True: 1}
        await node.aclose()
    asyncio.run(scenario())


def test_client_reaction_to_messages_lost_it_cannot_recover_reports_it() -> None:
    async def scenario() -> None:
        node = server(history="hist.*=100:60")
        await node.start()
        url = f"ws://127.0.0.1:{node.port}"
        async with RealtimeClient(url) as client, \
                RealtimeClient(url, auto_recover=False) as manual:
            reports: list[tuple[object, ...]] = []
            for who in (client, manual):
                who.on("messages.lost", lambda channel, data, who=who: reports.append(
                    (who is client, channel, data)))
            node.send(client.connection_id or "", "messages.lost", {"count": 3})
            room, plain = manual.subscribe("hist.1"), client.subscribe("plain.1")
            for channel in (room, plain):
                await asyncio.wait_for(channel.subscribed.wait(), 10)
            node.broadcast("hist.1", "n", 1)
            one = await room.next("n", timeout=10)
            lost = {"count": 1, "epoch": one.message["epoch"], "from": one.message["offset"],
                    "to": one.message["offset"]}
            node.broadcast("hist.1", "messages.lost", lost)  # auto_recover is off
            node.broadcast("plain.1", "messages.lost", lost)  # no history on this channel
            assert (await room.next("messages.lost", timeout=10)).data == lost
            assert (await plain.next("messages.lost", timeout=10)).data == lost
            assert reports == [(True, None, {"count": 3}), (False, "hist.1", lost),
                               (True, "plain.1", lost)]
            assert not room.recovering and not plain.recovering
            assert node.node.hub.statistics().recoveries == {}
        await node.aclose()
    asyncio.run(scenario())


def test_client_reaction_to_messages_lost_the_history_no_longer_holds() -> None:
    async def scenario() -> None:
        node = server(history="tiny.*=3:60")
        await node.start()
        async with RealtimeClient(f"ws://127.0.0.1:{node.port}") as client:
            room = client.subscribe("tiny.1")
            await asyncio.wait_for(room.subscribed.wait(), 10)
            answers: list[Subscribed] = []
            room.on("subscription.succeeded", answers.append)
            for n in range(1, 8):
                node.broadcast("tiny.1", "n", n,
                               exclude=client.connection_id if 2 <= n <= 6 else None)
            one, seven = [await room.next("n", timeout=10) for _ in range(2)]
            assert (one.data, seven.data) == (1, 7)
            first = one.message["offset"] + 1
            node.broadcast("tiny.1", "messages.lost",
                           {"count": 5, "epoch": one.message["epoch"], "from": first,
                            "to": first + 4})
            async with asyncio.timeout(10):
                while not answers:
                    await asyncio.sleep(0.01)
            assert [a.recovered for a in answers] == [False]
            node.broadcast("tiny.1", "n", 8)
            # the stream keeps 3 (6, 7 and the injected notice): what is left of the gap,
            # 6, is replayed once, nothing seen is repeated, then 8
            assert [(await room.next("n", timeout=10)).data for _ in range(2)] == [6, 8]
        await node.aclose()
    asyncio.run(scenario())


def _event(channel: str, event: str, data: object = None, **fields: object) -> str:
    return json.dumps({"type": "event", "channel": channel, "event": event, "data": data,
                       **fields})


def _joined(protocol: ClientProtocol, channel: str, epoch: str, head: int) -> None:
    protocol.connection_made(now=0)
    protocol.receive(_event("", "connection.established", {"connection_id": "c"}), now=0)
    protocol.subscribe(channel)
    protocol.receive(_event(channel, "subscription.succeeded",
                            {"epoch": epoch, "offset": head}), now=0)
    protocol.messages_to_send()


def test_client_protocol_recovery_cut_short_and_a_second_loss() -> None:
    protocol = ClientProtocol(jitter=lambda: 0.0)
    _joined(protocol, "h", "e1", 10)
    delivered = [protocol.receive(_event("h", "n", n, offset=n, epoch="e1"), now=0)
                 for n in (11, 14, 15)]
    assert all(len(events) == 1 for events in delivered)
    events = protocol.receive(_event("h", "messages.lost",
                                     {"count": 2, "epoch": "e1", "from": 12, "to": 13}), now=0)
    assert isinstance(events[-1], MessagesLost) and events[-1].recovering
    assert [json.loads(m) for m in protocol.messages_to_send()] == [  # asked again, joined
        {"type": "subscribe", "channel": "h", "data": {"recover": {"epoch": "e1", "offset": 11}}}]
    # the subscription still speaks: another loss, from before the recovery's start
    protocol.receive(_event("h", "messages.lost",
                            {"count": 1, "epoch": "e1", "from": 9, "to": 9}), now=0)
    assert protocol.messages_to_send() == []
    protocol.send("h", "note", 1)  # held until the channel is joined again
    assert protocol.messages_to_send() == []
    answer = protocol.receive(_event("h", "subscription.succeeded",
                                     {"epoch": "e1", "offset": 15, "recovered": True}), now=0)
    assert answer == [Subscribed(channel="h", recovered=True)]
    # the held note, then a second recovery for the second loss
    assert [json.loads(m) for m in protocol.messages_to_send()] == [
        {"type": "event", "channel": "h", "event": "note", "data": 1},
        {"type": "subscribe", "channel": "h", "data": {"recover": {"epoch": "e1", "offset": 8}}}]
    protocol.receive(_event("h", "subscription.succeeded",
                            {"epoch": "e1", "offset": 15, "recovered": True}), now=0)
    replay = [protocol.receive(_event("h", "n", n, offset=n, epoch="e1"), now=0)
              for n in (9, 10, 11, 12)]
    assert [[e.data for e in events if isinstance(e, ChannelMessage)] for events in replay] \
        == [[9], [10], [], [12]]
    # the connection ends mid-replay: the next subscribe asks from the last one delivered
    protocol.connection_lost(now=0)
    protocol.connection_made(now=1)
    protocol.receive(_event("", "connection.established", {"connection_id": "d"}), now=1)
    assert [json.loads(m) for m in protocol.messages_to_send()] == [
        {"type": "subscribe", "channel": "h", "data": {"recover": {"epoch": "e1", "offset": 12}}}]
