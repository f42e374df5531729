"""The command envelope (master -> gateway, ``.../down/cmd``) and its reply (``.../up/reply``).

A command is a CBOR map with integer keys (``docs/batch-schema.md`` has the table and
a worked example).  The master signs :func:`signing_payload` -- the canonical CBOR of
every field but the signature -- with Ed25519; checking it, the expiry and replays is
the command handler's job, not this codec's.

A command of a kind this gateway does not know still decodes (``kind`` is then a
plain ``int``), so that the gateway can refuse it by id.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, TypeAlias

from gateway.protocols.batch_columns import (
    INT_MAX,
    INT_MIN,
    check_int,
    dumps,
    expect_int,
    expect_map,
    expect_str,
    loads_strict,
)
from gateway.protocols.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "COMMAND_ID_LEN",
    "ENVELOPE_VERSION",
    "SIGNATURE_LEN",
    "ArgValue",
    "Command",
    "CommandKind",
    "CommandReply",
    "ReasonCode",
    "ReplyStatus",
    "decode_command",
    "decode_reply",
    "encode_command",
    "encode_reply",
    "new_command_id",
    "signing_payload",
]

ENVELOPE_VERSION = 1
COMMAND_ID_LEN = 16
SIGNATURE_LEN = 64
_MAX_DEPTH = 16

ArgValue: TypeAlias = "int | str | bytes | bool | list[ArgValue] | dict[str | int, ArgValue] | None"
"""What command arguments and reply results may hold: no floats, no tags."""

# Command keys.
_VERSION, _ID, _GATEWAY, _ISSUED, _EXPIRES, _KIND, _ARGS, _SIGNATURE = range(8)
# Reply keys.
_R_VERSION, _R_ID, _R_STATUS, _R_REASON, _R_TEXT, _R_RESULT = range(6)


class CommandKind(IntEnum):
    """What a command asks for (wire codes, append only)."""

    TOP_UP = 1
    TARIFF = 2
    THRESHOLDS = 3
    PROTECT = 4
    RELAY_TEST = 5
    ACCOUNT_CHANGE = 6
    METER_CHANGE = 7
    TIME_SET = 8
    BACK_FILL = 9
    CONFIG = 10
    FIRMWARE = 11
    RELAY_RESUME = 12
    """Lift a trip-storm stop (after the cause, a wrong tariff say, was put right)."""


class ReplyStatus(IntEnum):
    """Outcome of a command (wire codes)."""

    OK = 0
    REFUSED = 1
    """Not applied: the envelope or the request was not acceptable (see the reason)."""
    FAILED = 2
    """Accepted but could not be carried out."""


class ReasonCode(IntEnum):
    """Why a command was refused or failed (wire codes, append only)."""

    NONE = 0
    UNSIGNED = 1
    BAD_SIGNATURE = 2
    EXPIRED = 3
    REPLAYED = 4
    WRONG_GATEWAY = 5
    UNKNOWN_KIND = 6
    BAD_ARGUMENTS = 7
    MALFORMED = 8
    """The command's bytes could not be decoded (the reply's command id is then empty)."""
    POLICY = 9
    """Refused by a business rule (hoarding limit, protect mode ...)."""
    TIME_UNTRUSTED = 10
    DEVICE = 11
    """A meter or relay did not do what was asked."""
    INTERNAL = 12
    UNAVAILABLE = 13
    """This gateway cannot do it: not supported yet, or the component is not running."""


@dataclass(frozen=True, slots=True)
class Command:
    """One command; ``signature`` is ``None`` while unsigned."""

    command_id: bytes
    gateway_id: str
    issued_at_ms: int
    expires_at_ms: int
    kind: CommandKind | int
    args: dict[str, ArgValue] = field(default_factory=dict)
    signature: bytes | None = None


@dataclass(frozen=True, slots=True)
class CommandReply:
    """The gateway's answer to one command; ``command_id`` is empty if it was unreadable."""

    command_id: bytes
    status: ReplyStatus
    reason: ReasonCode | int = ReasonCode.NONE
    text: str = ""
    result: dict[str, ArgValue] = field(default_factory=dict)


def new_command_id() -> bytes:
    """A fresh random 16-byte command id."""
    return secrets.token_bytes(COMMAND_ID_LEN)


# -- commands -------------------------------------------------------------------------------


def _unsigned_map(cmd: Command) -> dict[int, object]:
    if type(cmd.command_id) is not bytes or len(cmd.command_id) != COMMAND_ID_LEN:
        raise LocalProtocolError(f"command id must be {COMMAND_ID_LEN} bytes")
    if type(cmd.gateway_id) is not str:
        raise LocalProtocolError("command gateway id must be text")
    return {
        _VERSION: ENVELOPE_VERSION,
        _ID: cmd.command_id,
        _GATEWAY: cmd.gateway_id,
        _ISSUED: check_int(cmd.issued_at_ms, "issued_at_ms"),
        _EXPIRES: check_int(cmd.expires_at_ms, "expires_at_ms"),
        _KIND: check_int(cmd.kind, "command kind"),
        _ARGS: _check_args(cmd.args, "command args"),
    }


def signing_payload(cmd: Command) -> bytes:
    """The bytes the master signs: the command without its signature, canonical CBOR.

    Canonical as cbor2 ``canonical=True`` makes it: shortest forms, map keys sorted.
    """
    return dumps(_unsigned_map(cmd), "command", canonical=True)


def encode_command(cmd: Command) -> bytes:
    """The command as CBOR (canonical, the signature last when there is one)."""
    out = _unsigned_map(cmd)
    if cmd.signature is not None:
        if type(cmd.signature) is not bytes or len(cmd.signature) != SIGNATURE_LEN:
            raise LocalProtocolError(f"signature must be {SIGNATURE_LEN} bytes")
        out[_SIGNATURE] = cmd.signature
    return dumps(out, "command", canonical=True)


def decode_command(data: bytes) -> Command:
    """The command in ``data``; RemoteProtocolError for anything else."""
    top = expect_map(loads_strict(data, "command", _MAX_DEPTH), "command", range(8))
    for key in range(_SIGNATURE):
        if key not in top:
            raise RemoteProtocolError(f"command: key {key} missing")
    if type(top[_VERSION]) is not int or top[_VERSION] != ENVELOPE_VERSION:
        raise RemoteProtocolError(f"command: envelope version {top[_VERSION]!r} is not 1")
    command_id = _expect_bytes(top[_ID], "command id", COMMAND_ID_LEN)
    signature = None
    if _SIGNATURE in top:
        signature = _expect_bytes(top[_SIGNATURE], "signature", SIGNATURE_LEN)
    code = expect_int(top[_KIND], "command kind")
    return Command(
        command_id=command_id,
        gateway_id=expect_str(top[_GATEWAY], "command gateway id"),
        issued_at_ms=expect_int(top[_ISSUED], "issued_at_ms"),
        expires_at_ms=expect_int(top[_EXPIRES], "expires_at_ms"),
        kind=CommandKind(code) if code in CommandKind._value2member_map_ else code,
        args=_decode_args(top[_ARGS], "command args"),
        signature=signature,
    )


# -- replies --------------------------------------------------------------------------------


def encode_reply(reply: CommandReply) -> bytes:
    """The reply as CBOR."""
    if type(reply.command_id) is not bytes or len(reply.command_id) not in (0, COMMAND_ID_LEN):
        raise LocalProtocolError(f"reply command id must be empty or {COMMAND_ID_LEN} bytes")
    if type(reply.text) is not str:
        raise LocalProtocolError("reply text must be text")
    try:
        status = ReplyStatus(reply.status)
    except ValueError:
        raise LocalProtocolError(f"unknown reply status {reply.status!r}") from None
    out = {
        _R_VERSION: ENVELOPE_VERSION,
        _R_ID: reply.command_id,
        _R_STATUS: int(status),
        _R_REASON: check_int(reply.reason, "reason"),
        _R_TEXT: reply.text,
        _R_RESULT: _check_args(reply.result, "reply result"),
    }
    return dumps(out, "reply", canonical=True)


def decode_reply(data: bytes) -> CommandReply:
    """The reply in ``data``; RemoteProtocolError for anything else."""
    top = expect_map(loads_strict(data, "reply", _MAX_DEPTH), "reply", range(6))
    for key in range(6):
        if key not in top:
            raise RemoteProtocolError(f"reply: key {key} missing")
    if type(top[_R_VERSION]) is not int or top[_R_VERSION] != ENVELOPE_VERSION:
        raise RemoteProtocolError(f"reply: envelope version {top[_R_VERSION]!r} is not 1")
    command_id = top[_R_ID]
    if type(command_id) is not bytes or len(command_id) not in (0, COMMAND_ID_LEN):
        raise RemoteProtocolError(f"reply: command id must be empty or {COMMAND_ID_LEN} bytes")
    status = ReplyStatus(expect_int(top[_R_STATUS], "reply status", 0, len(ReplyStatus) - 1))
    reason = expect_int(top[_R_REASON], "reply reason")
    return CommandReply(
        command_id=command_id,
        status=status,
        reason=ReasonCode(reason) if reason in ReasonCode._value2member_map_ else reason,
        text=expect_str(top[_R_TEXT], "reply text"),
        result=_decode_args(top[_R_RESULT], "reply result"),
    )


# -- argument values ------------------------------------------------------------------------


def _expect_bytes(obj: object, what: str, length: int) -> bytes:
    if type(obj) is not bytes or len(obj) != length:
        raise RemoteProtocolError(f"{what}: expected {length} bytes")
    return obj


def _check_args(args: Mapping[str, Any], what: str) -> dict[str, Any]:
    if not isinstance(args, Mapping) or not all(type(key) is str for key in args):
        raise LocalProtocolError(f"{what}: expected a map with text keys")
    return {key: _check_value(value, what, 0) for key, value in args.items()}


def _check_value(value: object, what: str, depth: int) -> object:
    if depth > _MAX_DEPTH - 3:
        raise LocalProtocolError(f"{what}: nested too deep")
    if value is None or isinstance(value, bool | str | bytes):
        return value
    if isinstance(value, int):
        return check_int(value, what)
    if isinstance(value, list):
        return [_check_value(item, what, depth + 1) for item in value]
    if isinstance(value, dict):
        if not all(type(key) is str or type(key) is int for key in value):
            raise LocalProtocolError(f"{what}: map keys must be text or integers")
        return {key: _check_value(item, what, depth + 1) for key, item in value.items()}
    raise LocalProtocolError(f"{what}: {type(value).__name__} is not allowed (no floats)")


def _decode_args(obj: object, what: str) -> dict[str, ArgValue]:
    if type(obj) is not dict or not all(type(key) is str for key in obj):
        raise RemoteProtocolError(f"{what}: expected a map with text keys")
    return {key: _decode_value(value, what) for key, value in obj.items()}


def _decode_value(value: object, what: str) -> ArgValue:
    if value is None or type(value) in (bool, str, bytes):
        return value  # type: ignore[return-value]
    if type(value) is int:
        return expect_int(value, what, INT_MIN, INT_MAX)
    if type(value) is list:
        return [_decode_value(item, what) for item in value]
    if type(value) is dict:
        out: dict[str | int, ArgValue] = {}
        for key, item in value.items():
            if type(key) is not str:
                key = expect_int(key, f"{what} key")
            out[key] = _decode_value(item, what)
        return out
    raise RemoteProtocolError(f"{what}: {type(value).__name__} is not allowed")
