"""The lifecycle of one subscription (a connection and a channel), as a transition table.

The Hub's `Subscriptions` reads the current state off the connection (`state_of`) and asks
`transition` for the next one before it changes anything, so a step the table does not
allow is a bug in the caller and raises `LocalProtocolError`, never a silent change.
What a client may get wrong (unsubscribing from a channel it is not in) is answered with
an `error` message before the table is consulted.

    IDLE ──JOIN──────────────────────────────▶ SUBSCRIBED ──REPEAT──▶ SUBSCRIBED
      │                                          ▲   │
      └─ASK─▶ AUTHORIZING ──ALLOW────────────────┘   └──LEAVE──▶ IDLE
                 │  └─REPEAT─▶ AUTHORIZING
                 └─REFUSE, LEAVE─▶ IDLE
"""

from __future__ import annotations

import enum

from .connection import Connection
from .machine import Machine

__all__ = ["SUBSCRIPTION_MACHINE", "TRANSITIONS", "SubscriptionInput", "SubscriptionState",
           "state_of", "transition"]


class SubscriptionState(enum.Enum):
    """Where a connection stands with one channel."""

    #: not subscribed, nothing in flight
    IDLE = "idle"
    #: the application's authorization callback has not answered yet
    AUTHORIZING = "authorizing"
    #: among the channel's subscribers
    SUBSCRIBED = "subscribed"


class SubscriptionInput(enum.Enum):
    """What can happen to a subscription."""

    #: a subscribe the Hub authorized itself (a public channel, a signature, the user's
    #: own channels, a subscription token)
    JOIN = "join"
    #: a subscribe that waits for the application's authorization callback
    ASK = "ask"
    #: the application allowed it
    ALLOW = "allow"
    #: the application refused it, its callback failed or did not answer in time
    REFUSE = "refuse"
    #: a subscribe while subscribed or authorizing (a token refresh, a replay, a repeat)
    REPEAT = "repeat"
    #: unsubscribed, revoked by the application, its token expired, or the connection closed
    LEAVE = "leave"


_S, _I = SubscriptionState, SubscriptionInput

SUBSCRIPTION_MACHINE = Machine("subscription", SubscriptionState, SubscriptionInput, {
    (_S.IDLE, _I.JOIN): _S.SUBSCRIBED,
    (_S.IDLE, _I.ASK): _S.AUTHORIZING,
    (_S.AUTHORIZING, _I.ALLOW): _S.SUBSCRIBED,
    (_S.AUTHORIZING, _I.REFUSE): _S.IDLE,
    (_S.AUTHORIZING, _I.REPEAT): _S.AUTHORIZING,
    (_S.AUTHORIZING, _I.LEAVE): _S.IDLE,
    (_S.SUBSCRIBED, _I.REPEAT): _S.SUBSCRIBED,
    (_S.SUBSCRIBED, _I.LEAVE): _S.IDLE,
})
#: (state, input) -> the next state; every other pair is a misuse
TRANSITIONS = SUBSCRIPTION_MACHINE.table


def state_of(conn: Connection, channel: str) -> SubscriptionState:
    """The state of a connection's subscription to a channel."""
    if channel in conn.channels:
        return SubscriptionState.SUBSCRIBED
    if channel in conn.pending:
        return SubscriptionState.AUTHORIZING
    return SubscriptionState.IDLE


#: the state after an input; raises `LocalProtocolError` for a step the table lacks
transition = SUBSCRIPTION_MACHINE.advance
