"""The envelope checks on their own: any bytes give a reply, never an exception; the
checks come in their documented order; the clock rules."""

from __future__ import annotations

import dataclasses

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from gateway.commands.envelope import MAX_VALIDITY_MS, check_envelope, check_time
from gateway.commands.keys import public_key_bytes, sign, verify
from gateway.protocols.command import (
    Command,
    CommandKind,
    CommandReply,
    ReasonCode,
    encode_command,
)

KEY = Ed25519PrivateKey.generate()
PUBLIC = public_key_bytes(KEY)
T0 = 1_795_000_000_000


def cmd(kind: CommandKind = CommandKind.TOP_UP, gateway: str = "gw-01", **kw: object) -> Command:
    base = Command(b"\x07" * 16, gateway, T0, T0 + 300_000, kind, {"account": "A"})
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def reason(payload: bytes, public: bytes | None = PUBLIC) -> ReasonCode | int | None:
    out = check_envelope(payload, gateway_id="gw-01", public_key=public)
    return out.reason if isinstance(out, CommandReply) else None


@given(st.binary(max_size=300))
def test_any_bytes_give_a_reply_or_a_command(data: bytes) -> None:
    out = check_envelope(data, gateway_id="gw-01", public_key=PUBLIC)
    assert isinstance(out, CommandReply | Command)
    if isinstance(out, CommandReply):
        assert out.reason in (
            ReasonCode.MALFORMED,
            ReasonCode.UNSIGNED,
            ReasonCode.WRONG_GATEWAY,
            ReasonCode.BAD_SIGNATURE,
            ReasonCode.POLICY,
        )


def test_the_checks_come_in_order() -> None:
    good = sign(cmd(), KEY)
    assert reason(encode_command(good)) is None
    assert reason(b"\xff") == ReasonCode.MALFORMED
    assert reason(encode_command(good), public=None) == ReasonCode.UNSIGNED
    # unsigned and for another gateway: unsigned first
    assert reason(encode_command(cmd(gateway="other"))) == ReasonCode.UNSIGNED
    # for another gateway and forged: wrong gateway first
    forged = sign(cmd(gateway="other"), Ed25519PrivateKey.generate())
    assert reason(encode_command(forged)) == ReasonCode.WRONG_GATEWAY
    assert reason(encode_command(sign(cmd(), Ed25519PrivateKey.generate()))) == (
        ReasonCode.BAD_SIGNATURE
    )
    # signed, but valid longer than a day (or not at all)
    long = sign(cmd(expires_at_ms=T0 + MAX_VALIDITY_MS + 1), KEY)
    assert reason(encode_command(long)) == ReasonCode.POLICY
    backwards = sign(cmd(expires_at_ms=T0), KEY)
    assert reason(encode_command(backwards)) == ReasonCode.POLICY
    # every field is signed: change any and the signature fails
    for change in ({"issued_at_ms": T0 - 1}, {"kind": CommandKind.PROTECT}, {"args": {}}):
        assert not verify(dataclasses.replace(good, **change), PUBLIC)  # type: ignore[arg-type]


def test_the_clock_rules() -> None:
    top_up, time_set = cmd(), cmd(CommandKind.TIME_SET)
    assert check_time(top_up, now_ms=T0 + 299_999, trusted=True, issued_floor=None) is None
    late = check_time(top_up, now_ms=T0 + 300_000, trusted=True, issued_floor=None)
    assert late is not None and late.reason == ReasonCode.EXPIRED
    untrusted = check_time(top_up, now_ms=T0, trusted=False, issued_floor=None)
    assert untrusted is not None and untrusted.reason == ReasonCode.TIME_UNTRUSTED
    # untrusted: a time-set is taken whatever the clock says, unless older than the floor
    assert check_time(time_set, now_ms=0, trusted=False, issued_floor=T0) is None
    stale = check_time(time_set, now_ms=0, trusted=False, issued_floor=T0 + 1)
    assert stale is not None and stale.reason == ReasonCode.EXPIRED
