"""What the fuzz targets share: their settings, the documented error codes, and strategies
for hostile JSON (wrong types per field, huge integers, deep nesting, lone surrogates,
bytes that are not UTF-8, near-valid text)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from realtime_proto.config import RateLimits

#: examples per target: about 200 in the suite, more with FUZZ_EXAMPLES=20000
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))

fuzz_settings = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)

#: no rate limit gets in the way of the inputs (4029 is not what these targets test)
NO_RATES = RateLimits(messages=None, subscriptions=None, connections=None, api_calls=None)

_PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

#: the codes of the error table in docs/protocol.md: every error a client sees is one
DOCUMENTED_CODES = frozenset(
    int(code) for code in re.findall(r"^\| (\d{4}) \|", _PROTOCOL.read_text(), re.MULTILINE))

#: the WebSocket close codes the same page names (RFC 6455 ones and the table's)
CLOSE_CODES = DOCUMENTED_CODES | {1000, 1001, 1002, 1007}

MESSAGE_TYPES = ("event", "subscribe", "unsubscribe", "error", "ping", "pong")
FIELDS = ("id", "type", "channel", "event", "data", "timestamp", "user_id", "offset", "epoch")
_LONE = re.compile("[\ud800-\udfff]")

# -- values -----------------------------------------------------------------------------

#: any code point, lone surrogates included
any_text = st.text(st.characters(exclude_categories=()), max_size=20)

huge_ints = st.one_of(
    st.integers(),
    st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**100, -(10**300)]),
)

scalars = st.one_of(
    st.none(), st.booleans(), huge_ints,
    st.floats(allow_nan=True, allow_infinity=True), any_text,
)

json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(any_text, inner, max_size=4)),
    max_leaves=12,
)

channel_names = st.one_of(
    st.sampled_from(["news", "private-room", "presence-room", "private-", "a" * 201, ""]),
    st.from_regex(r"(private-|presence-)?[A-Za-z0-9_\-=@,.;:]{1,12}", fullmatch=True),
    any_text,
)

event_names = st.one_of(st.sampled_from(["typing", "read", "message.sent", ""]), any_text)

subscribe_options = st.one_of(
    json_values,
    st.fixed_dictionaries({}, optional={
        "recover": st.one_of(json_values, st.fixed_dictionaries(
            {"epoch": st.one_of(any_text, json_values), "offset": huge_ints})),
        "history": st.one_of(huge_ints, json_values),
        "token": st.one_of(any_text, json_values),
    }),
)

#: per field, plausible values mixed with any type at all
_FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "id": st.one_of(any_text, json_values),
    "type": st.one_of(st.sampled_from(MESSAGE_TYPES), any_text, json_values),
    "channel": st.one_of(channel_names, json_values),
    "event": st.one_of(event_names, json_values),
    "data": st.one_of(json_values, subscribe_options,
                      st.fixed_dictionaries({"position": st.one_of(huge_ints, json_values)})),
    "timestamp": st.one_of(huge_ints, json_values),
    "user_id": st.one_of(any_text, json_values),
    "offset": st.one_of(huge_ints, json_values),
    "epoch": st.one_of(any_text, json_values),
}

#: message-shaped objects: some fields, each of a random type, and unknown keys
_shaped = st.fixed_dictionaries(
    {}, optional=_FIELD_VALUES,
).flatmap(lambda fields: st.dictionaries(any_text, json_values, max_size=2).map(
    lambda extra: {**extra, **fields}))

#: valid messages of each type but for one field (or none), which gets any value
_plausible = st.builds(
    lambda kind, channel, event, data, field, value: {
        "type": kind, "channel": channel, "event": event, "data": data,
        **({field: value} if field else {})},
    st.sampled_from(MESSAGE_TYPES),
    st.sampled_from(["news", "private-room", "presence-room"]),
    st.sampled_from(["typing", "read", "message.sent"]),
    _FIELD_VALUES["data"],
    st.sampled_from([None, *FIELDS]),
    json_values,
)

messages = st.one_of(_shaped, _plausible)

# -- text -------------------------------------------------------------------------------


def serialize(value: Any, ascii_only: bool) -> str:
    """JSON text for a value; with `ascii_only`, lone surrogates become `\\udXXX` escapes."""
    return json.dumps(value, ensure_ascii=ascii_only)


@st.composite
def mutated(draw: st.DrawFn, text: str) -> str:
    """Near-valid text: `text` cut short, with a character dropped, inserted or swapped."""
    if not text:
        return draw(any_text)
    at = draw(st.integers(0, len(text)))
    how = draw(st.sampled_from(["cut", "drop", "insert", "replace", "repeat"]))
    piece = draw(st.sampled_from(['"', "{", "}", "[", "]", ",", ":", "\\", "\\u", "\\ud800",
                                  "0", "-", "e9999", "null", "\x00"]) | any_text)
    match how:
        case "cut":
            return text[:at]
        case "drop":
            return text[:at] + text[at + 1:]
        case "insert":
            return text[:at] + piece + text[at:]
        case "replace":
            return text[:at] + piece + text[at + len(piece):]
        case _:
            return text[:at] + text[at:] * 2


def event_with(data: str) -> str:
    """A client event on private-room whose `data` is the JSON text `data`."""
    return '{"type":"event","channel":"private-room","event":"e","data":' + data + "}"


@st.composite
def deep_nesting(draw: st.DrawFn) -> str:
    """An array or object nested hundreds to thousands of levels deep (as `data`)."""
    depth = draw(st.integers(1, 5000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    inner = opener * depth + closer * depth
    return draw(st.sampled_from([
        inner,
        event_with(inner),
        '{"type":"subscribe","channel":"news","data":' + inner + "}",
    ]))


huge_literals = st.integers(1, 6000).map(lambda n: event_with("9" * n))


@st.composite
def message_texts(draw: st.DrawFn) -> str:
    """JSON text of a message-shaped object, maybe mutated."""
    text = serialize(draw(messages), ascii_only=draw(st.booleans()))
    return draw(st.one_of(st.just(text), mutated(text)))


#: what a client may put in one message: text or bytes, valid, near-valid or garbage
raw_inputs: st.SearchStrategy[str | bytes] = st.one_of(
    message_texts(),
    message_texts(),
    deep_nesting(),
    huge_literals,
    any_text,
    st.binary(max_size=64),
    message_texts().map(lambda text: text.encode("utf-8", "surrogatepass")),
    message_texts().map(lambda text: text.encode("utf-16", "surrogatepass")),
)

# -- an oracle for the first layer of decoding ------------------------------------------


def _strings_and_depth(value: Any) -> tuple[list[str], int]:
    """Every string of a decoded JSON value (keys included), and how deep it nests."""
    strings, deepest = [], 0
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            strings.append(item)
        elif isinstance(item, list | dict):
            deepest = max(deepest, depth + 1)
            children = [*item, *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return strings, deepest


#: nesting past which the JSON decoder may give up (RecursionError: 4000) or not, as deep
#: as the stack is when it runs; the answer to deeper text is not decided here
UNDECIDED_DEPTH = 250


def has_lone_surrogate(value: Any) -> bool:
    """Whether a decoded JSON value holds a string with a lone surrogate (keys included)."""
    return any(_LONE.search(s) for s in _strings_and_depth(value)[0])


def parsed(raw: str | bytes) -> tuple[set[int] | None, Any]:
    """What JSON decoding alone decides about text from a peer: (the error codes it may
    get, empty when it passes, None when undecided; the decoded value). Written from the
    protocol page, not from the server's code: 4002 not UTF-8 (a lone surrogate cannot be
    UTF-8 either), 4000 not JSON."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return {4002}, None
    try:
        value = json.loads(raw)
    except RecursionError:
        return None, None
    except ValueError:
        return {4000}, None
    if has_lone_surrogate(value):
        return {4002}, None
    depth = _strings_and_depth(value)[1]
    return (set() if depth < UNDECIDED_DEPTH else None), value


def decoded(raw: str | bytes) -> tuple[set[int] | None, Any]:
    """`parsed`, then what makes a message: 4004 not an object, 4007 no type, 4005 a type
    that is not a string, 4006 an unknown type."""
    codes, value = parsed(raw)
    if codes is None or codes:
        return codes, None
    if not isinstance(value, dict):
        return {4004}, value
    kind = value.get("type")
    if kind is None:
        return {4007}, value
    if not isinstance(kind, str):
        return {4005}, value
    if kind not in MESSAGE_TYPES:
        return {4006}, value
    return set(), value
