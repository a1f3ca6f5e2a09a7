"""Channel kinds, name rules and authorization rules registered by pattern."""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, final

from .errors import ErrorCode, MessageError

__all__ = [
    "MAX_CHANNEL_NAME_LENGTH",
    "AuthRules",
    "ChannelKind",
    "ChannelRule",
    "channel_kind",
    "pattern_matches",
    "validate_channel_name",
]

MAX_CHANNEL_NAME_LENGTH = 200
_NAME = re.compile(r"[A-Za-z0-9_\-=@,.;:]+")
#: names that passed `validate_channel_name` (a bounded memo of a pure check)
_VALID_NAMES: set[str] = set()
_PATTERN = re.compile(r"[A-Za-z0-9_\-=@,.;:*]+")


class ChannelKind(enum.Enum):
    """What a channel's name prefix makes it."""

    #: anyone may subscribe
    PUBLIC = "public"
    #: `private-…`: needs authorization
    PRIVATE = "private"
    #: `presence-…`: needs authorization; members are tracked
    PRESENCE = "presence"

    @property
    def needs_authorization(self) -> bool:
        """True for private and presence channels."""
        return self is not ChannelKind.PUBLIC


def channel_kind(name: str) -> ChannelKind:
    """The kind of a channel, from its name."""
    if name.startswith("private-"):
        return ChannelKind.PRIVATE
    if name.startswith("presence-"):
        return ChannelKind.PRESENCE
    return ChannelKind.PUBLIC


def validate_channel_name(name: str) -> str:
    """Return the name if it follows the rules.

    Raises:
        MessageError: 4008 when the name is empty, too long or has other characters.
    """
    if name in _VALID_NAMES:  # the publish path checks the same few names over and over
        return name
    if len(name) > MAX_CHANNEL_NAME_LENGTH:
        raise MessageError(
            ErrorCode.INVALID_CHANNEL_NAME,
            f"channel name longer than {MAX_CHANNEL_NAME_LENGTH} characters",
        )
    if not _NAME.fullmatch(name):
        raise MessageError(
            ErrorCode.INVALID_CHANNEL_NAME,
            "channel names use only letters, digits and _-=@,.;:",
        )
    if len(_VALID_NAMES) >= 4096:
        _VALID_NAMES.clear()
    _VALID_NAMES.add(name)
    return name


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


def pattern_matches(pattern: str, name: str) -> bool:
    """Whether a channel pattern (`*` = any run of characters) matches a name."""
    return _compile(pattern).fullmatch(name) is not None


#: callback(connection_info, channel) -> bool | dict (presence info) | awaitable of either
AuthorizeCallback = Callable[[Any, str], Any]


@final
@dataclass(slots=True)
class ChannelRule:
    """An authorization rule for the channels matching one pattern."""

    pattern: str
    callback: AuthorizeCallback | None = None
    _regex: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not _PATTERN.fullmatch(self.pattern):
            raise MessageError(ErrorCode.INVALID_CHANNEL_NAME, f"bad pattern {self.pattern!r}")
        self._regex = _compile(self.pattern)

    @property
    def specificity(self) -> tuple[int, int]:
        """More literal characters first, then fewer wildcards."""
        wildcards = self.pattern.count("*")
        return (len(self.pattern) - wildcards, -wildcards)

    def matches(self, name: str) -> bool:
        """Whether this rule applies to the channel."""
        return self._regex.fullmatch(name) is not None

    def authorize(self, callback: AuthorizeCallback) -> AuthorizeCallback:
        """Register the callback that decides; usable as a decorator.

        The callback gets a `ConnectionInfo` and the channel name and returns True,
        False, or a dict of presence info (meaning allowed); it may be async. The core
        never calls it: it asks the adapter to, through an `Authorize` action.
        """
        self.callback = callback
        return callback


class AuthRules:
    """Rules by pattern; the most specific matching rule wins."""

    def __init__(self) -> None:
        self._rules: dict[str, ChannelRule] = {}

    def channel(self, pattern: str) -> ChannelRule:
        """The rule for a pattern, created on first use."""
        rule = self._rules.get(pattern)
        if rule is None:
            rule = self._rules[pattern] = ChannelRule(pattern)
        return rule

    def find(self, name: str) -> ChannelRule | None:
        """The most specific rule with a callback that matches the channel."""
        matching = [r for r in self._rules.values() if r.callback is not None and r.matches(name)]
        return max(matching, key=lambda r: r.specificity, default=None)
