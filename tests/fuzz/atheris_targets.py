"""Coverage-guided fuzzing (atheris, libFuzzer) of the two decoders that read other
parties' bytes. Not a pytest module: run it by hand, with atheris installed
(`pip install atheris`), for as long as you like:

    python tests/fuzz/atheris_targets.py envelope CORPUS_DIR -max_total_time=120
    python tests/fuzz/atheris_targets.py message CORPUS_DIR -atheris_runs=500000

CORPUS_DIR is libFuzzer's corpus (keep it out of the checkout); a missing one is created
with valid seeds (the JSON decoder is C, so coverage alone would hardly find a header).
Any other libFuzzer flag works too (`-dict=`, `-jobs=`). A crash prints the input and
writes it to `crash-…` in the current directory, or under `-artifact_prefix=`.

- `envelope`: `envelope.decode` returns a well-formed envelope or raises MessageError,
  then a Hub with a subscriber takes the same bytes from the broker without raising.
- `message`: a client message into a Hub with a subscribed connection: no exception
  escapes, a bad message gets one `error` with a documented code, and what
  `decode_json` returns can always be encoded again.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from realtime_proto import Epoch, ErrorCode, Hub, HubConfig, User
    from realtime_proto.config import RateLimits
    from realtime_proto.envelope import EnvelopeKind, Outgoing, decode, encode
    from realtime_proto.errors import MessageError
    from realtime_proto.events import ConnectionId, EnvelopeReceived
    from realtime_proto.message import decode_json, encode_json
    from realtime_proto.testing import FakeClock, MemoryTransport, counter_ids

_CODES = {int(code) for code in ErrorCode}
_NO_RATES = RateLimits(messages=None, subscriptions=None, connections=None, api_calls=None)


def _hub() -> tuple[Hub, MemoryTransport, ConnectionId]:
    clock = FakeClock(0.0)
    hub = Hub(HubConfig(node_id="n1", rates=_NO_RATES), new_id=counter_ids("m"),
              epoch=Epoch(clock.now, 1_700_000_000_000))
    hub.channel("private-*").authorize(lambda connection, channel: True)
    clients = MemoryTransport(hub, clock=clock, new_id=counter_ids("c"))
    connection = clients.connect(User(id="alice"))
    for channel in ("news", "private-room"):
        clients.send(connection, {"type": "subscribe", "channel": channel})
    clients.take(connection)
    return hub, clients, connection


def envelope(data: bytes) -> None:
    """One broker message: decoded alone, then handed to a Hub on two topics."""
    try:
        received = decode(data)
    except MessageError:
        pass
    else:
        assert received.payloads and received.origin.isprintable()
    hub, _, _ = _hub()
    for topic in ("c:news", "_cluster"):
        hub.handle(EnvelopeReceived(topic=topic, data=data), now=0.0)
        hub.actions()  # payloads go to clients as they are: nothing to parse here


def message(data: bytes) -> None:
    """One client message, as bytes and (when it is UTF-8) as text."""
    try:
        value = decode_json(data)
    except MessageError:
        pass
    else:
        encode_json(value)
    _, clients, connection = _hub()
    inputs: list[str | bytes] = [data]
    with contextlib.suppress(UnicodeDecodeError):
        inputs.append(data.decode())
    for raw in inputs:
        clients.send(connection, raw)
        for reply in clients.take(connection):
            if reply["type"] == "error":
                assert reply["data"]["code"] in _CODES, reply


TARGETS = {"envelope": envelope, "message": message}

_PAYLOAD = b'{"id":"m.1","type":"event","channel":"news","event":"e","data":{"a":[1]}}'
SEEDS = {
    "envelope": [
        encode(b'"n2"', 0, [Outgoing("c:news", 7, EnvelopeKind.CHANNEL, _PAYLOAD, "c-1", 5,
                                  ("E1", 3))]),
        encode(b'"n2"', 0, [Outgoing("c:news", 7 + i, EnvelopeKind.CHANNEL, _PAYLOAD,
                                  "c-1" if i else None, 5, ("E1", i) if i else None)
                         for i in range(3)]),
        encode(b'"n3"', 0, [Outgoing("_cluster", 1, EnvelopeKind.CONTROL, body) for body in (
            b'{"t":"join","c":"presence-a","n":"c9","u":"bob","i":{"x":1}}',
            b'{"t":"state","e":[["presence-a","c9","bob",{}]]}',
            b'{"t":"leave","c":"presence-a","n":"c9"}', b'{"t":"sync?","to":"n1"}')]),
    ],
    "message": [
        b'{"type":"subscribe","channel":"private-room","data":{"recover":{"epoch":"e",'
        b'"offset":1},"history":2,"token":"t"}}',
        b'{"type":"event","channel":"private-room","event":"read","data":{"position":4}}',
        b'{"type":"event","channel":"private-room","event":"typing","data":"\\ud83d"}',
        b'{"type":"unsubscribe","channel":"news"}', b'{"type":"ping","id":"1"}',
    ],
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [CORPUS] [libFuzzer flags]")
    name = sys.argv.pop(1)
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
        corpus = Path(sys.argv[1])
        if not corpus.exists():
            corpus.mkdir(parents=True)
            for number, seed in enumerate(SEEDS[name]):
                (corpus / f"seed-{number}").write_bytes(seed)
    atheris.Setup(sys.argv, TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
