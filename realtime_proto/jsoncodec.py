"""Compact JSON as UTF-8 bytes: orjson when it is installed (the `speedups` extra), the
standard library otherwise, with the same results wherever JSON allows.

orjson encodes a message's data about ten times faster than the standard library, and the
publish path spends much of its time there. Whatever orjson refuses goes to the standard
library, which decides: integers beyond 64 bits, circular or very deep structures. Two
differences remain: orjson writes NaN and infinities as `null` (the standard library
writes `NaN`, which JSON does not allow), and it encodes a few more types (enums of any
base, UUIDs).

Decoding (`loads_exact`) takes orjson for bytes only when its result is certain to be the
standard library's: orjson turns integers beyond 64 bits into floats, so text that may hold
one (19 digits in a row where a number can start) goes to the standard library, as does
whatever orjson refuses (the standard library then decides, or says what is wrong).
"""

from __future__ import annotations

import json
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from types import ModuleType
from typing import Any

orjson: ModuleType | None
try:
    import orjson
except ImportError:  # pragma: no cover - the speedups extra is optional
    orjson = None

__all__ = ["dumps", "loads_exact", "quote"]

#: dict keys that are not strings become strings (as in `json`); dataclasses and datetimes
#: are refused (as by `json`) instead of encoded
_OPTIONS = (0 if orjson is None else orjson.OPT_NON_STR_KEYS
            | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME)

_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
#: CPython's C encoder built once (`JSONEncoder.encode` builds one per call), without the
#: circular-reference check, whose state would be shared by every thread: a circular value
#: ends in RecursionError, and `_COMPACT` then says what is wrong
_C_COMPACT = c_make_encoder(None, _COMPACT.default, encode_basestring, None, ":", ",",
                            False, False, True) if c_make_encoder is not None else None


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON.

    Raises:
        TypeError: a value JSON cannot hold; ValueError: a circular reference.
    """
    if orjson is not None:
        try:
            return orjson.dumps(value, option=_OPTIONS)  # type: ignore[no-any-return]
        except TypeError:  # orjson.JSONEncodeError: let the standard library decide
            pass
    if _C_COMPACT is not None and type(value) is not str:
        try:
            return "".join(_C_COMPACT(value, 0)).encode()
        except RecursionError:
            pass  # circular, or deeper than the C stack allows: the checked encoder decides
    return _COMPACT.encode(value).encode()


def quote(text: str) -> bytes:
    """A JSON string literal, UTF-8."""
    if orjson is not None:
        return orjson.dumps(text)  # type: ignore[no-any-return]
    return encode_basestring(text).encode()


#: JSON text mapped so that an integer of 19 digits or more shows as `:` and 19 `0`: digits
#: become `0`; what may stand before a number (`:`, `[`, `,`, a minus sign) becomes `:`;
#: whitespace goes (`_SPACE`); the rest becomes `x`. (Digits in a string may match too:
#: then the standard library decodes, which is only slower.)
_NUMBER_SHAPE = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x3A if byte in b":[,-" else 0x78
                      for byte in range(256))
_SPACE = b" \t\r\n"
_LONG_INTEGER = b":" + b"0" * 19


def loads_exact(raw: bytes) -> Any:
    """JSON bytes decoded by orjson when that gives what `json.loads` would give.

    Raises:
        LookupError: orjson is not installed, refuses the text, or might decode it
            differently (a long integer): decode it with the standard library.
    """
    if orjson is None or _LONG_INTEGER in b":" + raw.translate(_NUMBER_SHAPE, _SPACE):
        raise LookupError("the standard library decides")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise LookupError("the standard library decides") from None
