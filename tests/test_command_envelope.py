"""Command envelope and reply: signing payload, round trips, hostile input, the doc example."""

from __future__ import annotations

import contextlib
import dataclasses
import re
from pathlib import Path

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocols.batch_columns import INT_MAX, INT_MIN
from gateway.protocols.command import (
    ArgValue,
    Command,
    CommandKind,
    CommandReply,
    ReasonCode,
    ReplyStatus,
    decode_command,
    decode_reply,
    encode_command,
    encode_reply,
    new_command_id,
    signing_payload,
)
from gateway.protocols.errors import LocalProtocolError, RemoteProtocolError

DOC = Path(__file__).resolve().parents[1] / "docs" / "batch-schema.md"


def golden(name: str) -> bytes:
    """The hex block after ``<!-- golden: name -->`` in the doc, comments stripped."""
    match = re.search(rf"<!-- golden: {name} -->\s*```\w*\n(.*?)```", DOC.read_text(), re.S)
    assert match, f"no golden block {name!r} in {DOC}"
    hex_text = "".join(line.split("#")[0] for line in match.group(1).splitlines())
    return bytes.fromhex(hex_text.replace(" ", ""))


TOP_UP = Command(
    command_id=bytes(range(16)),
    gateway_id="gw-01",
    issued_at_ms=1_795_000_000_000,
    expires_at_ms=1_795_000_300_000,
    kind=CommandKind.TOP_UP,
    args={"account": "A-101", "amount": 1_000_000, "topup_id": "T-0001"},
    signature=b"\x5a" * 64,
)


def test_documented_command_decodes_and_encodes_byte_for_byte() -> None:
    data = golden("command")
    assert decode_command(data) == TOP_UP
    assert encode_command(TOP_UP) == data


def test_documented_signing_payload_is_the_envelope_without_the_signature() -> None:
    data = golden("command")
    signature_at = data.index(bytes.fromhex("07 58 40"))
    assert signing_payload(TOP_UP) == b"\xa7" + data[1:signature_at]


def test_documented_reply() -> None:
    reply = CommandReply(bytes(range(16)), ReplyStatus.OK, result={"balance": 1_523_400})
    assert decode_reply(golden("reply")) == reply
    assert encode_reply(reply) == golden("reply")


def test_signing_payload_excludes_the_signature_and_is_deterministic() -> None:
    unsigned = dataclasses.replace(TOP_UP, signature=None)
    other_signature = dataclasses.replace(TOP_UP, signature=b"\x01" * 64)
    reordered = dataclasses.replace(TOP_UP, args=dict(reversed(list(TOP_UP.args.items()))))
    payload = signing_payload(TOP_UP)
    assert signing_payload(unsigned) == payload
    assert signing_payload(other_signature) == payload
    assert signing_payload(reordered) == payload  # canonical: map keys sorted
    assert b"\x5a" * 64 not in payload
    assert 7 not in cbor2.loads(payload)
    assert cbor2.dumps(cbor2.loads(payload), canonical=True) == payload
    # every signed field changes the payload
    for change in (
        {"command_id": bytes(16)},
        {"gateway_id": "gw-02"},
        {"issued_at_ms": 1},
        {"expires_at_ms": 1},
        {"kind": CommandKind.TARIFF},
        {"args": {"account": "A-101", "amount": 1_000_001, "topup_id": "T-0001"}},
    ):
        assert signing_payload(dataclasses.replace(TOP_UP, **change)) != payload, change


def test_unsigned_command_round_trips_without_key_7() -> None:
    unsigned = dataclasses.replace(TOP_UP, signature=None)
    data = encode_command(unsigned)
    assert 7 not in cbor2.loads(data)
    assert data == signing_payload(unsigned)
    assert decode_command(data) == unsigned


def test_unknown_kind_still_decodes_as_a_plain_int() -> None:
    future = dataclasses.replace(TOP_UP, kind=99)
    decoded = decode_command(encode_command(future))
    assert decoded.kind == 99
    assert not isinstance(decoded.kind, CommandKind)
    assert isinstance(decode_command(encode_command(TOP_UP)).kind, CommandKind)


# -- round trips ---------------------------------------------------------------------------

scalars = st.one_of(
    st.integers(INT_MIN, INT_MAX),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=8),
    st.binary(max_size=8),
    st.booleans(),
    st.none(),
)
arg_values: st.SearchStrategy[ArgValue] = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=4) | st.integers(-3, 3), inner, max_size=3)
    ),
    max_leaves=10,
)
arg_maps = st.dictionaries(st.text(max_size=6), arg_values, max_size=4)
commands = st.builds(
    Command,
    st.binary(min_size=16, max_size=16),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=10),
    st.integers(INT_MIN, INT_MAX),
    st.integers(INT_MIN, INT_MAX),
    st.sampled_from(CommandKind) | st.integers(0, 500),
    arg_maps,
    st.none() | st.binary(min_size=64, max_size=64),
)


@settings(max_examples=150, deadline=None)
@given(commands)
def test_commands_round_trip(cmd: Command) -> None:
    assert decode_command(encode_command(cmd)) == cmd


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from([b"", bytes(16)]),
    st.sampled_from(ReplyStatus),
    st.sampled_from(ReasonCode) | st.integers(0, 1000),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=20),
    arg_maps,
)
def test_replies_round_trip(
    command_id: bytes, status: ReplyStatus, reason: int, text: str, result: dict[str, ArgValue]
) -> None:
    reply = CommandReply(command_id, status, reason, text, result)
    assert decode_reply(encode_reply(reply)) == reply


def test_new_command_ids_are_16_random_bytes() -> None:
    ids = {new_command_id() for _ in range(10)}
    assert len(ids) == 10
    assert all(len(command_id) == 16 for command_id in ids)


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"command_id": b"short"}, "16 bytes"),
        ({"signature": b"\x00" * 63}, "64 bytes"),
        ({"args": {"price": 0.5}}, "float is not allowed"),
        ({"args": {1: "x"}}, "text keys"),
        ({"issued_at_ms": 2**63}, "signed 64-bit"),
    ],
)
def test_encoding_refuses_what_the_envelope_cannot_carry(
    change: dict[str, object], reason: str
) -> None:
    with pytest.raises(LocalProtocolError, match=reason):
        encode_command(dataclasses.replace(TOP_UP, **change))  # type: ignore[arg-type]


def envelope(**changes: object) -> bytes:
    fields: dict[object, object] = dict(cbor2.loads(encode_command(TOP_UP)))
    for key, value in changes.items():
        number = int(key[1:])
        if value is None:
            del fields[number]
        else:
            fields[number] = value
    return cbor2.dumps(fields)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (envelope(k0=2), "envelope version 2"),
        (envelope(k1=b"x" * 15), "command id: expected 16 bytes"),
        (envelope(k1="0123456789abcdef"), "command id: expected 16 bytes"),
        (envelope(k3=None), "key 3 missing"),
        (envelope(k4=1.5), "expires_at_ms: expected an integer"),
        (envelope(k5=True), "command kind: expected an integer"),
        (envelope(k6={"a": 0.5}), "float is not allowed"),
        (envelope(k6={1: 2}), "text keys"),
        (envelope(k7=b"\x00" * 65), "signature: expected 64 bytes"),
        (envelope(k8=0), "unknown key 8"),
        (encode_command(TOP_UP) + b"\x00", "after the CBOR item"),
        (cbor2.dumps([1, 2]), "expected a map"),
    ],
)
def test_malformed_commands_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=re.escape(reason)):
        decode_command(data)


def test_reply_refuses_unknown_status_and_bad_id() -> None:
    good = dict(cbor2.loads(encode_reply(CommandReply(bytes(16), ReplyStatus.FAILED))))
    with pytest.raises(RemoteProtocolError, match="reply status"):
        decode_reply(cbor2.dumps({**good, 2: 3}))
    with pytest.raises(RemoteProtocolError, match="command id"):
        decode_reply(cbor2.dumps({**good, 1: b"\x00" * 5}))
    with pytest.raises(LocalProtocolError):
        encode_reply(CommandReply(b"\x00" * 5, ReplyStatus.OK))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_decode_or_raise_remote_protocol_error(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_command(data)
    with contextlib.suppress(RemoteProtocolError):
        decode_reply(data)


@settings(max_examples=200, deadline=None)
@given(commands, st.data())
def test_bit_flips_and_truncations_decode_or_raise(cmd: Command, data: st.DataObject) -> None:
    encoded = bytearray(encode_command(cmd))
    with pytest.raises(RemoteProtocolError):
        decode_command(bytes(encoded[: data.draw(st.integers(0, len(encoded) - 1))]))
    bit = data.draw(st.integers(0, len(encoded) * 8 - 1))
    encoded[bit // 8] ^= 1 << (bit % 8)
    with contextlib.suppress(RemoteProtocolError):
        decode_command(bytes(encoded))
