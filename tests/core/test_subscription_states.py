"""The subscription lifecycle's transition table, walked pair by pair and through a Hub."""

from __future__ import annotations

from itertools import product
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realtime_proto import Epoch, Hub, HubConfig, User
from realtime_proto.actions import Authorize
from realtime_proto.errors import LocalProtocolError
from realtime_proto.events import (
    AuthorizationAnswered,
    ConnectionClosed,
    ConnectionId,
    ConnectionOpened,
    MessageReceived,
)
from realtime_proto.subscription_states import (
    SUBSCRIPTION_MACHINE,
    TRANSITIONS,
    SubscriptionInput,
    SubscriptionState,
    state_of,
    transition,
)
from realtime_proto.testing import FakeClock, counter_ids

State, Input = SubscriptionState, SubscriptionInput
PAIRS = list(product(State, Input))
CHANNEL = "private-room"


def test_every_pair_is_a_step_or_a_misuse() -> None:
    steps = 0
    for state, event in PAIRS:
        if (state, event) in TRANSITIONS:
            assert transition(state, event) is TRANSITIONS[state, event]
            steps += 1
        else:
            with pytest.raises(LocalProtocolError, match=event.name):
                transition(state, event)
    assert steps == len(TRANSITIONS) == 8


@given(st.permutations(PAIRS))
def test_any_order_of_every_pair_gives_the_same_answers(order: list[tuple[State, Input]]) -> None:
    """The table has no hidden state: every pair, in any order, answers as on its own."""
    for state, event in order:
        expected = TRANSITIONS.get((state, event))
        if expected is None:
            with pytest.raises(LocalProtocolError):
                transition(state, event)
        else:
            assert transition(state, event) is expected


def test_every_state_is_reachable_and_can_end() -> None:
    reached = {State.IDLE}
    frontier = [State.IDLE]
    while frontier:
        state = frontier.pop()
        for (before, _), after in TRANSITIONS.items():
            if before is state and after not in reached:
                reached.add(after)
                frontier.append(after)
    assert reached == set(State)
    for state in State:  # from anywhere, one step back to IDLE
        assert state is State.IDLE or TRANSITIONS[state, Input.LEAVE] is State.IDLE


class Driven:
    """One connection and one private channel on a real Hub, with the model beside it."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.hub = Hub(HubConfig(authorization_timeout=3), new_id=counter_ids("m"),
                       epoch=Epoch(self.clock.now, 1_700_000_000_000))
        self.hub.channel("private-*").authorize(lambda conn, channel: True)
        self.conn = ConnectionId("c1")
        self.hub.handle(ConnectionOpened(connection_id=self.conn, expects_pong=False,
                                         user=User(id="alice", info={}, channels=())),
                        now=self.clock.now)
        self.model = State.IDLE
        self.granted = False
        self.was_subscribed = False
        self.request_ids: list[str] = []
        self.visited: set[tuple[State, Input]] = set()
        self.hub.actions()

    def expect(self, event: Input) -> None:
        self.visited.add((self.model, event))
        self.model = TRANSITIONS[self.model, event]
        if self.model is State.IDLE and event is Input.LEAVE and self.was_subscribed:
            self.granted = False  # leaving forgets the signature's grant

    def client(self, message: dict[str, Any]) -> None:
        self.hub.handle(MessageReceived(connection_id=self.conn, data=message),
                        now=self.clock.now)
        self.request_ids += [a.request_id for a in self.hub.actions() if isinstance(a, Authorize)]

    def answer(self, allowed: bool) -> None:
        if not self.request_ids:
            return
        if self.model is State.AUTHORIZING:
            self.expect(Input.ALLOW if allowed else Input.REFUSE)
        self.hub.handle(AuthorizationAnswered(request_id=self.request_ids[-1], allowed=allowed),
                        now=self.clock.now)

    def step(self, op: str) -> None:
        self.was_subscribed = self.model is State.SUBSCRIBED
        match op:
            case "grant":  # a Pusher client's signature for the channel
                self.hub.grant(self.conn, CHANNEL, None)
                self.granted = True
            case "subscribe":
                if self.model is State.IDLE:
                    self.expect(Input.JOIN if self.granted else Input.ASK)
                else:
                    self.expect(Input.REPEAT)
                self.client({"type": "subscribe", "channel": CHANNEL})
            case "allow":
                self.answer(True)
            case "refuse":
                self.answer(False)
            case "timeout":
                if self.model is State.AUTHORIZING:
                    self.expect(Input.REFUSE)
                self.clock.advance(4)
                self.hub.tick(now=self.clock.now)
            case "unsubscribe":  # a client's mistake when not subscribed: an error, no step
                if self.model is State.SUBSCRIBED:
                    self.expect(Input.LEAVE)
                self.client({"type": "unsubscribe", "channel": CHANNEL})
            case "revoke":
                if self.model is not State.IDLE:
                    self.expect(Input.LEAVE)
                self.hub.unsubscribe_user("alice", CHANNEL, now=self.clock.now)
        self.hub.actions()

    def check(self) -> None:
        conn = self.hub._connections[self.conn]
        assert state_of(conn, CHANNEL) is self.model
        subscribers = self.hub.connection_ids(channel=CHANNEL)
        assert subscribers == ([self.conn] if self.model is State.SUBSCRIBED else [])


OPS = ["grant", "subscribe", "allow", "refuse", "timeout", "unsubscribe", "revoke"]


@settings(max_examples=300)
@given(st.lists(st.sampled_from(OPS), max_size=40))
def test_the_hub_follows_the_table(ops: list[str]) -> None:
    driven = Driven()
    for op in ops:
        driven.step(op)
        driven.check()
    driven.hub.handle(ConnectionClosed(connection_id=driven.conn), now=driven.clock.now)
    assert driven.hub.channels() == {}


def test_a_walk_through_the_hub_takes_every_step_of_the_table() -> None:
    driven = Driven()
    walk = ["subscribe", "subscribe", "allow", "subscribe", "unsubscribe",  # ask, allow, leave
            "subscribe", "refuse", "subscribe", "timeout",                 # refused, timed out
            "subscribe", "revoke",                                         # voided in flight
            "grant", "subscribe", "revoke"]                                # joined at once
    for op in walk:
        driven.step(op)
        driven.check()
    assert driven.visited == set(TRANSITIONS)


def test_a_step_the_table_does_not_have_raises_and_changes_nothing() -> None:
    driven = Driven()
    conn = driven.hub._connections[driven.conn]
    with pytest.raises(LocalProtocolError, match="LEAVE is not allowed in state IDLE"):
        driven.hub._subscriptions.leave(conn, CHANNEL, driven.clock.now)
    driven.check()
    assert driven.hub.actions() == []


def test_the_design_document_shows_the_table_the_code_holds() -> None:
    design = Path(__file__).resolve().parents[2] / "docs" / "design.md"
    assert SUBSCRIPTION_MACHINE.markdown() in design.read_text(encoding="utf-8")
