"""What HTTP/1.1 requests must pass beyond h11's own parsing (RFC 9112), and the split of
a request-target: the checks HttpFraming applies to every request head."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlsplit

import h11

__all__ = ["head_problem", "split_target", "unsupported_coding"]

# A control character h11 lets through in a field (RFC 9110 §5.5: only HTAB, SP and visible
# characters); CR, LF and NUL it refuses itself.
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TRANSFER_ENCODING = re.compile(rb"\ntransfer-encoding[ \t]*:([^\r\n]*)", re.IGNORECASE)


def head_problem(raw_head: bytes, request: h11.Request) -> str | None:
    """Why a head h11 parsed is still refused (400 and close), or None.

    h11 tolerates these; RFC 9112 lets a server refuse them, and refusing them leaves
    no room for a proxy in front to read the message differently (request smuggling).
    """
    if _CONTROL.search(raw_head) is not None:
        return "control character in the request head"
    if raw_head.count(b"\n") != raw_head.count(b"\r\n"):
        return "bare LF in the request head"  # RFC 9112 §2.2
    if b"\n " in raw_head or b"\n\t" in raw_head:
        return "obs-fold header continuation"  # RFC 9112 §5.2
    lowered = raw_head.lower()
    length_at = lowered.find(b"\ncontent-length:")  # h11 merges equal copies and lists
    if length_at >= 0 and (lowered.find(b"\ncontent-length:", length_at + 1) >= 0
                           or b"," in raw_head[length_at:raw_head.find(b"\n", length_at + 1)]):
        return "more than one Content-Length"
    if b"\ntransfer-encoding:" in lowered:
        if length_at >= 0:
            return "both Transfer-Encoding and Content-Length"  # RFC 9112 §6.1
        if request.http_version == b"1.0":
            return "Transfer-Encoding in an HTTP/1.0 request"  # RFC 9112 §6.1
    return None


def unsupported_coding(raw: bytes) -> tuple[int, str]:
    """The answer to a Transfer-Encoding h11 refused: 400 unless chunked is the final coding.

    Without chunked last the body has no end a server can find (RFC 9112 §6.3), so the
    framing is broken: 400. With chunked last, an earlier coding (gzip) is one this
    server does not implement: 501.
    """
    codings = [coding.strip().lower() for value in _TRANSFER_ENCODING.findall(raw)
               for coding in value.split(b",")]
    if codings and codings[-1] == b"chunked":
        return 501, "unsupported transfer coding"
    return 400, "Transfer-Encoding does not end with chunked"


def split_target(target: str) -> tuple[str, dict[str, str]]:
    """Split a request-target into its percent-decoded path and its query (last value wins)."""
    target = target.partition("#")[0]
    if target.startswith("/") or target == "*":
        raw_path, _, raw_query = target.partition("?")
    else:  # absolute-form (RFC 9112 §3.2.2), as sent to proxies
        parts = urlsplit(target)
        raw_path, raw_query = parts.path or "/", parts.query
    return unquote(raw_path, errors="replace"), dict(parse_qsl(raw_query, keep_blank_values=True))
