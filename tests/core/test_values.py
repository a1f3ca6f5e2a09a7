"""Values and pure functions: messages, channel rules, tokens, presence, envelopes."""

from __future__ import annotations

import json
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realtime_proto import (
    ErrorCode,
    Message,
    MessageError,
    MessageType,
    TransportKind,
    User,
    jsoncodec,
)
from realtime_proto.channels import AuthRules, ChannelKind, channel_kind, validate_channel_name
from realtime_proto.envelope import EnvelopeKind, Outgoing, Received, SequenceWindow, decode, encode
from realtime_proto.events import ConnectionId, ConnectionOpened
from realtime_proto.jwt import decode_hs256, encode_hs256, user_from_claims
from realtime_proto.presence import Entry, Member, PresenceTable

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10)


@settings(max_examples=40)
@given(data=json_values, channel=st.none() | st.text(min_size=1), event=st.none() | st.text())
def test_message_round_trips_through_json_and_dict(data: object, channel: str | None,
                                                   event: str | None) -> None:
    message = Message(type=MessageType.EVENT, id="m1", channel=channel, event=event, data=data,
                      timestamp=1_700_000_000_000)
    assert Message.from_json(message.to_json()) == message
    assert Message.from_json(message.encode()) == message
    assert Message.from_dict(message.to_dict()) == message


def test_message_is_immutable_and_has_the_seed_format() -> None:
    message = Message(type=MessageType.EVENT, id="msg_1", channel="chat.room.1",
                      event="message.sent", data={"text": "Hello!"}, timestamp=1234567890)
    assert json.loads(message.to_json()) == {
        "id": "msg_1", "type": "event", "channel": "chat.room.1", "event": "message.sent",
        "data": {"text": "Hello!"}, "timestamp": 1234567890}
    with pytest.raises(AttributeError):
        message.id = "other"  # type: ignore[misc]


@pytest.mark.parametrize(("raw", "code"), [
    (b"{", ErrorCode.MALFORMED_MESSAGE), (b"\xc3\x28", ErrorCode.INVALID_UTF8),
    (b"[]", ErrorCode.NOT_AN_OBJECT), (b"null", ErrorCode.NOT_AN_OBJECT),
    (b'{"type":"x"}', ErrorCode.UNKNOWN_TYPE), (b'{"type":["event"]}', ErrorCode.INVALID_FIELD),
    (b'{"type":"event","id":5}', ErrorCode.INVALID_FIELD),
    (b'{"type":"event","timestamp":"now"}', ErrorCode.INVALID_FIELD),
    (b'{"type":"event","timestamp":true}', ErrorCode.INVALID_FIELD),
    (b'{"type":"unsubscribe"}', ErrorCode.MISSING_FIELD),
    (b'{"type":"ping","data":"' + b"x" * 100 + b'"}', ErrorCode.MESSAGE_TOO_LARGE),
])
def test_message_validation_codes(raw: bytes, code: int) -> None:
    with pytest.raises(MessageError) as caught:
        Message.from_json(raw, max_bytes=64)
    assert caught.value.code == code


@pytest.mark.parametrize(("name", "kind"), [
    ("news", ChannelKind.PUBLIC), ("private-chat.1", ChannelKind.PRIVATE),
    ("presence-room.1", ChannelKind.PRESENCE), ("privateish", ChannelKind.PUBLIC)])
def test_channel_kinds(name: str, kind: ChannelKind) -> None:
    assert channel_kind(name) is kind


@pytest.mark.parametrize("name", ["", "a b", "a/b", "é", "x" * 201, "a*b"])
def test_invalid_channel_names(name: str) -> None:
    with pytest.raises(MessageError) as caught:
        validate_channel_name(name)
    assert caught.value.code == ErrorCode.INVALID_CHANNEL_NAME


def test_most_specific_pattern_wins_and_unmatched_has_no_rule() -> None:
    rules = AuthRules()
    for pattern in ("private-*", "private-chat.*", "private-chat.vip-*", "*"):
        rules.channel(pattern).authorize(lambda conn, ch, p=pattern: p)
    chosen = rules.find("private-chat.vip-1")
    assert chosen is not None and chosen.pattern == "private-chat.vip-*"
    assert rules.find("private-x").pattern == "private-*"  # type: ignore[union-attr]
    assert AuthRules().find("private-x") is None


def test_jwt_accepts_valid_and_refuses_forged_expired_and_other_algorithms() -> None:
    token = encode_hs256({"sub": "alice", "exp": 2000, "channels": ["private-*"],
                          "info": {"n": 1}}, "k")
    user = user_from_claims(decode_hs256(token, "k", now_unix=1000))
    assert (user.id, user.channels, dict(user.info)) == ("alice", ("private-*",), {"n": 1})
    refusals = [
        lambda: decode_hs256(token, "other", now_unix=1000),
        lambda: decode_hs256(token, "k", now_unix=3000),
        lambda: decode_hs256(token[:-4] + "AAAA", "k", now_unix=1000),
        lambda: decode_hs256("a.b", "k", now_unix=1000),
        lambda: decode_hs256("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "k", now_unix=1000),
        lambda: user_from_claims({"sub": ""}),
        lambda: user_from_claims({"sub": "a", "channels": "private-*"}),
    ]
    for refuse in refusals:
        with pytest.raises(MessageError) as caught:
            refuse()
        assert caught.value.code == ErrorCode.UNAUTHENTICATED


def test_presence_counts_users_not_connections_across_nodes() -> None:
    table = PresenceTable()
    alice = Member(user_id="alice", info={"a": 1})

    def entry(node: str, conn: str) -> Entry:
        return Entry(channel="presence-x", node_id=node, connection_id=conn, member=alice)
    assert table.add(entry("n1", "c1")) is True
    assert table.add(entry("n2", "c2")) is False
    assert table.remove("presence-x", "n1", "c1") is None
    assert table.remove_node("n2") == [("presence-x", alice)]
    assert table.members("presence-x") == []
    table.add(entry("n1", "c1"))
    joined, left = table.replace_node("n2", [entry("n2", "c9")])
    assert (joined, left) == ([], [])
    joined, left = table.replace_node("n1", [])
    assert (joined, left) == ([], [])  # still present through n2
    assert [m.user_id for m in table.members("presence-x")] == ["alice"]


def test_envelope_round_trip_and_sequence_window() -> None:
    alone = Outgoing("c:x", 7, EnvelopeKind.CHANNEL, b'{"a":1}', exclude="c1", sent_ms=5,
                     position=("ep", 3))
    assert decode(encode(b'"n1"', 7, [alone])) == Received(
        "n1", EnvelopeKind.CHANNEL, 7, [b'{"a":1}'], 5, 7, ["c1"], [("ep", 3)])
    with pytest.raises(MessageError):
        decode(b"garbage")
    window = SequenceWindow()
    assert window.accept("n1", "t", 1) == (0, 0)
    assert window.accept("n1", "t", 1) == (1, 0)
    assert window.accept("n1", "t", 4) == (0, 2)
    assert window.accept("n1", "t", 3, count=4) == (2, 0)  # 3 and 4 seen, 5 and 6 new
    assert window.accept("n1", "t", 7) == (0, 0)
    assert (window.duplicates, window.lost) == (3, 2)


def test_user_info_is_frozen_and_still_encodes_as_json() -> None:
    source = {"name": "Ada", "tags": ["x"]}
    user = User(id="u1", info=source)
    source["name"] = "changed"  # the user holds its own copy
    assert user.info == {"name": "Ada", "tags": ["x"]}
    with pytest.raises(TypeError):
        user.info["name"] = "Eve"  # type: ignore[index]
    with pytest.raises(TypeError):
        user.info.update(name="Eve")  # type: ignore[attr-defined]
    assert json.loads(jsoncodec.dumps({"info": user.info})) == {"info": user.info}
    assert json.dumps(user.info) == '{"name": "Ada", "tags": ["x"]}'
    assert pickle.loads(pickle.dumps(user)) == user
    assert User(id="u2").info == {}


def test_connection_opened_takes_a_transport_kind() -> None:
    assert ConnectionOpened(connection_id=ConnectionId("c1")).transport is TransportKind.MEMORY
    named = ConnectionOpened(connection_id=ConnectionId("c1"),
                             transport="sse")  # type: ignore[arg-type]
    assert named.transport is TransportKind.SSE
    with pytest.raises(ValueError, match="not a valid TransportKind"):
        ConnectionOpened(connection_id=ConnectionId("c1"),
                         transport="carrier-pigeon")  # type: ignore[arg-type]
