"""Mapping topics to broker names without collisions.

Topics use ``A-Za-z0-9_-=@,.;:`` and may be about 210 characters long, but a driver accepts
any string. Each broker restricts its names differently:

* NATS subjects treat ``.``, ``*`` and ``>`` specially: :func:`escape` keeps a safe set of
  characters and writes every other UTF-8 byte as ``%XX``. It is reversible, so the subject
  names its topic exactly. A subject prefix must be plain tokens (:func:`subject_prefix`).
* AMQP routing keys are at most 255 bytes and PostgreSQL channel names at most 63:
  :func:`bounded_name` keeps a topic that fits and replaces a longer one by a digest. Those
  drivers carry the real topic with each message and drop what does not match, so even a
  digest collision could not deliver one topic's message to another's subscriber.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from urllib.parse import unquote_to_bytes

__all__ = ["bounded_name", "escape", "subject_prefix", "unescape"]

_UNSAFE = re.compile(rb"[^A-Za-z0-9_=@,;:-]")


@functools.lru_cache(maxsize=4096)
def escape(topic: str) -> str:
    """``topic`` as a single NATS subject token: only ``A-Za-z0-9_-=@,;:`` and ``%XX``."""
    escaped = _UNSAFE.sub(lambda match: b"%%%02X" % match[0][0], topic.encode("utf-8"))
    return escaped.decode("ascii") if escaped else "%"


@functools.lru_cache(maxsize=4096)
def unescape(token: str) -> str:
    """The topic :func:`escape` made ``token`` from."""
    return "" if token == "%" else unquote_to_bytes(token).decode("utf-8")


def subject_prefix(prefix: str) -> str:
    """``prefix`` if it is NATS subject tokens that :func:`escape` leaves as they are.

    Raises:
        ValueError: an empty token, a wildcard or another character that needs escaping.
    """
    if not all(token and escape(token) == token for token in prefix.split(".")):
        raise ValueError(f"NATS subject prefix {prefix!r} must be plain tokens")
    return prefix


def bounded_name(prefix: str, topic: str, limit: int) -> str:
    """``prefix + topic`` if that fits in ``limit`` UTF-8 bytes, else ``prefix + "~"`` and a
    digest of the topic (at most 53 bytes more)."""
    name = prefix + topic
    if len(name.encode("utf-8")) <= limit:
        return name
    digest = base64.b32encode(hashlib.sha256(topic.encode("utf-8")).digest())
    name = prefix + "~" + digest.decode("ascii").rstrip("=").lower()
    if len(name.encode("utf-8")) > limit:
        raise ValueError(f"name prefix {prefix!r} is too long for a {limit}-byte name")
    return name
