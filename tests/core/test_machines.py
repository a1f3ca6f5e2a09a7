"""The transition tables against the objects they drive: every (state, input) pair.

For each machine, every input has a driver: a call that performs it on the real object.
A caller's input the table lacks must raise LocalProtocolError and change nothing; one it
has must land the object in the table's state. Inputs from the peer (a request read, a
Close frame, a violation, a timeout) cannot be refused, so they are driven only where the
table has them. The exhaustive test reaches every state and tries every input there;
the hypothesis test walks random sequences.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realtime_proto.errors import LocalProtocolError
from realtime_proto.events import ConnectionId, TransportId
from realtime_proto.framing.http import HTTP_MACHINE, HttpFraming, HttpInput
from realtime_proto.framing.sse import SSE_MACHINE, SseFraming, SseInput
from realtime_proto.framing.websocket import (
    WEBSOCKET_MACHINE,
    WebSocketFraming,
    WebSocketInput,
    frame_message,
)
from realtime_proto.longpoll import POLL_MACHINE, PollInput, PollSession
from realtime_proto.machine import Machine
from realtime_proto.testing.peers import WebSocketPeer

REQUEST = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"
_KEY = b"\x01\x02\x03\x04"


def masked(opcode: int, payload: bytes) -> bytes:
    """One masked client frame (RFC 6455 §5.3), payload under 126 bytes."""
    body = bytes(byte ^ _KEY[i % 4] for i, byte in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + _KEY + body


class Clock:
    """A `now` that moves on at every call, so timers can run out."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 100.0
        return self.now


@dataclass
class Subject:
    """A machine, a factory of the object it drives, and a driver per input."""

    machine: Machine[Any, Any]
    make: Callable[[Clock], Any]
    drivers: dict[enum.Enum, Callable[[Any, Clock], object]]


HTTP = Subject(HTTP_MACHINE, lambda clock: HttpFraming(now=clock.now), {
    HttpInput.DATA: lambda f, clock: f.receive_data(b"", now=clock.now),
    HttpInput.EOF: lambda f, clock: f.receive_eof(now=clock.now),
    HttpInput.REQUEST: lambda f, clock: f.receive_data(REQUEST, now=clock.now),
    HttpInput.RESPOND: lambda f, clock: f.respond(200, [], b"ok"),
    HttpInput.TAKE_OVER: lambda f, clock: f.take_over(),
    HttpInput.CLOSE: lambda f, clock: f.close(),
})

WEBSOCKET = Subject(WEBSOCKET_MACHINE, lambda clock: WebSocketFraming(close_timeout=5.0), {
    WebSocketInput.ACCEPT: lambda f, clock: f.accept(
        WebSocketPeer().handshake_bytes("/ws"), now=clock.now),
    WebSocketInput.REJECT: lambda f, clock: f.accept(REQUEST, now=clock.now),
    WebSocketInput.DATA: lambda f, clock: f.receive_data(masked(0x1, b"hi"), now=clock.now),
    WebSocketInput.EOF: lambda f, clock: f.receive_eof(now=clock.now),
    WebSocketInput.SEND: lambda f, clock: f.send_encoded(frame_message(b"x")),
    WebSocketInput.CLOSE: lambda f, clock: f.close(1000),
    WebSocketInput.PEER_CLOSE: lambda f, clock: f.receive_data(
        masked(0x8, b"\x03\xe8"), now=clock.now),
    # an unmasked frame from a client breaks RFC 6455 §5.1
    WebSocketInput.FAIL: lambda f, clock: f.receive_data(b"\x81\x02hi", now=clock.now),
    WebSocketInput.TIMEOUT: lambda f, clock: f.tick(now=clock()),
})

SSE = Subject(SSE_MACHINE, lambda clock: SseFraming(now=clock.now), {
    SseInput.DATA: lambda f, clock: f.receive_data(b"noise", now=clock.now),
    SseInput.EOF: lambda f, clock: f.receive_eof(now=clock.now),
    SseInput.SEND: lambda f, clock: f.send_encoded(b"5\r\nhello\r\n"),
    SseInput.CLOSE: lambda f, clock: f.close(),
})

POLL = Subject(POLL_MACHINE, lambda clock: PollSession(
    ConnectionId("c1"), now=clock.now, expires_at=clock.now + 30), {
    PollInput.HOLD: lambda s, clock: s.hold(TransportId("t1"), until=clock.now + 10),
    PollInput.RELEASE: lambda s, clock: s.release_hold(clock.now, 30.0),
    PollInput.PUSH: lambda s, clock: s.push(b"{}", max_backlog=1000),
    PollInput.CLOSE: lambda s, clock: s.close(b'{"type":"connection.closed"}'),
})

SUBJECTS = {"http": HTTP, "websocket": WEBSOCKET, "sse": SSE, "poll": POLL}


def step(subject: Subject, obj: Any, event: enum.Enum, clock: Clock) -> bool:
    """Drive `event` and check the object against the table; False if not driven
    (a peer input the table does not have in the current state)."""
    machine, state = subject.machine, obj.state
    if machine.allows(state, event):
        subject.drivers[event](obj, clock)
        assert obj.state is machine.table[state, event], (state, event)
        return True
    if event in machine.peer_inputs:
        return False
    with pytest.raises(LocalProtocolError):
        subject.drivers[event](obj, clock)
    assert obj.state is state, (state, event)
    return True


def replay(subject: Subject, path: list[enum.Enum]) -> tuple[Any, Clock]:
    clock = Clock()
    obj = subject.make(clock)
    for event in path:
        assert step(subject, obj, event, clock)
    return obj, clock


@pytest.mark.parametrize("name", SUBJECTS)
def test_every_input_has_a_driver(name: str) -> None:
    subject = SUBJECTS[name]
    assert set(subject.drivers) == set(subject.machine.inputs)


@pytest.mark.parametrize("name", SUBJECTS)
def test_every_pair_of_every_reachable_state(name: str) -> None:
    """Reach each state by the shortest path of allowed inputs, then try every input
    there; every state of the enum must be reachable."""
    subject = SUBJECTS[name]
    machine = subject.machine
    start = subject.make(Clock()).state
    paths: dict[Any, list[enum.Enum]] = {start: []}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        for event in machine.inputs:
            target = machine.table.get((state, event))
            if target is not None and target not in paths:
                paths[target] = [*paths[state], event]
                queue.append(target)
    assert set(paths) == set(machine.states)
    for state, path in paths.items():
        for event in machine.inputs:
            obj, clock = replay(subject, path)
            assert obj.state is state
            step(subject, obj, event, clock)


@pytest.mark.parametrize("name", SUBJECTS)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_random_walks_agree_with_the_table(name: str, data: st.DataObject) -> None:
    subject = SUBJECTS[name]
    clock = Clock()
    obj = subject.make(clock)
    walk = data.draw(st.lists(st.sampled_from(subject.machine.inputs), max_size=25))
    for event in walk:
        step(subject, obj, event, clock)


def test_a_refused_pair_names_the_machine_the_input_and_the_state() -> None:
    framing = WebSocketFraming()
    with pytest.raises(LocalProtocolError,
                       match="WebSocketFraming: SEND is not allowed in state CONNECTING"):
        framing.send_encoded(frame_message(b"x"))


def test_a_table_over_foreign_members_is_refused() -> None:
    foreign: dict[Any, Any] = {(HttpInput.DATA, WebSocketInput.DATA): HttpInput.DATA}
    with pytest.raises(ValueError, match="not over HttpInput and HttpInput"):
        Machine("bad", HttpInput, HttpInput, foreign)


def test_closed_sessions_drop_pushes_but_keep_the_final_message() -> None:
    session = PollSession(ConnectionId("c1"), now=0.0, expires_at=30.0)
    session.close(b'"bye"')
    session.push(b'"late"', max_backlog=10)
    assert session.response_body() == b'{"connection_id":"c1","cursor":1,"messages":["bye"]}'


def test_markdown_renders_every_state_and_input() -> None:
    text = WEBSOCKET_MACHINE.markdown()
    assert text.count("\n") == len(WEBSOCKET_MACHINE.states) + 1
    assert "| **open** |" in text and "*peer_close*" in text and "`send`" in text


@pytest.mark.parametrize("name", SUBJECTS)
def test_the_design_document_shows_the_tables_the_code_holds(name: str) -> None:
    design = Path(__file__).resolve().parents[2] / "docs" / "design.md"
    assert SUBJECTS[name].machine.markdown() in design.read_text(encoding="utf-8")
