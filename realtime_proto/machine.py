"""Transition tables: the one description of a state machine that its code consults.

A `Machine` maps (state, input) to the next state. An object keeps its state and asks
the machine for the next one at each input; a pair the table lacks is a misuse by the
caller and raises `LocalProtocolError`. The same table is walked by the tests and
rendered in docs/design.md, so code, tests and documentation cannot drift apart.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Generic, TypeVar

from .errors import LocalProtocolError

__all__ = ["Machine"]

S = TypeVar("S", bound=enum.Enum)
I = TypeVar("I", bound=enum.Enum)  # noqa: E741 - the input type


class Machine(Generic[S, I]):
    """A transition table over the members of a state enum and an input enum."""

    __slots__ = ("inputs", "name", "peer_inputs", "states", "table")

    def __init__(self, name: str, states: type[S], inputs: type[I],
                 table: Mapping[tuple[S, I], S], *, peer_inputs: Iterable[I] = ()) -> None:
        """Args:
            name: what the machine is, for error messages (the class it drives).
            states: the enum of its states.
            inputs: the enum of its inputs.
            table: (state, input) -> next state, for every allowed pair.
            peer_inputs: inputs that come from the peer or the object itself (a request
                read, a violation, a timeout), never from a caller's call: the table says
                where they lead, but a caller cannot be refused them.

        Raises:
            ValueError: a key or a target is not a member of the given enums.
        """
        for (state, event), target in table.items():
            if not (isinstance(state, states) and isinstance(target, states)
                    and isinstance(event, inputs)):
                raise ValueError(f"{name}: ({state!r}, {event!r}) -> {target!r} is not "
                                 f"over {states.__name__} and {inputs.__name__}")
        self.name = name
        self.states: tuple[S, ...] = tuple(states)
        self.inputs: tuple[I, ...] = tuple(inputs)
        self.table: Mapping[tuple[S, I], S] = MappingProxyType(dict(table))
        self.peer_inputs = frozenset(peer_inputs)

    def advance(self, state: S, event: I) -> S:
        """The state after `event` in `state`.

        Raises:
            LocalProtocolError: the table has no such pair.
        """
        try:
            return self.table[state, event]
        except KeyError:
            raise LocalProtocolError(
                f"{self.name}: {event.name} is not allowed in state {state.name}") from None

    def allows(self, state: S, event: I) -> bool:
        """Whether the table has (state, event)."""
        return (state, event) in self.table

    def stays(self, state: S, event: I) -> S:
        """`state`, after checking that the table keeps it there on `event`; for a hot
        path that tests `state` by identity instead of consulting the table each time.

        Raises:
            ValueError: the table does not keep `state` on `event`.
        """
        if self.table.get((state, event)) is not state:
            raise ValueError(f"{self.name}: {event.name} does not keep {state.name}")
        return state

    def markdown(self) -> str:
        """The table as Markdown: a row per state, a column per input, the next state in
        each cell, "—" where the input is refused (peer inputs in italics)."""
        def head(event: I) -> str:
            name = event.name.lower()
            return f"*{name}*" if event in self.peer_inputs else f"`{name}`"

        lines = ["| state | " + " | ".join(head(event) for event in self.inputs) + " |",
                 "|---" * (len(self.inputs) + 1) + "|"]
        for state in self.states:
            cells = [self.table[state, event].name.lower() if (state, event) in self.table
                     else "—" for event in self.inputs]
            lines.append(f"| **{state.name.lower()}** | " + " | ".join(cells) + " |")
        return "\n".join(lines)
