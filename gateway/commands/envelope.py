"""The checks of a command's envelope, in order; the first that fails is the reply.

1. ``MALFORMED``: the bytes are not a command envelope (the reply's id is empty).
2. ``UNSIGNED``: no signature -- or no public key configured, which refuses everything.
3. ``WRONG_GATEWAY``: the command names another gateway.
4. ``BAD_SIGNATURE``: the signature is not the master's over the signing payload.
5. ``POLICY``: valid for longer than :data:`MAX_VALIDITY_MS` (an id must be remembered
   until it expires; a week-long command would make the replay guard a week long).
6. ``EXPIRED`` / ``TIME_UNTRUSTED``, by the gateway's clock (:func:`check_time`):

   - clock trusted: refused once ``now >= expires_at``.
   - clock untrusted (a concentrator may boot with any time, design.md "Time"): the
     expiry cannot be judged, so only ``TIME_SET`` is taken -- it is how the master
     gives the gateway its time -- and every other kind is refused ``TIME_UNTRUSTED``.
     A time-set issued before the newest command already carried out is refused
     ``EXPIRED``: an old signed time-set replayed later cannot wind the clock back.

The replay check (7, ``REPLAYED``) needs the store: :mod:`gateway.commands.replay`.
"""

from __future__ import annotations

from gateway.errors import GatewayError
from gateway.protocols.command import (
    Command,
    CommandKind,
    CommandReply,
    ReasonCode,
    ReplyStatus,
    decode_command,
)

from .keys import verify

__all__ = ["MAX_VALIDITY_MS", "check_envelope", "check_time", "refused"]

MAX_VALIDITY_MS = 86_400_000
"""The longest a command may be valid (``expires_at - issued_at``): one day."""


def refused(command_id: bytes, reason: ReasonCode, text: str) -> CommandReply:
    return CommandReply(command_id, ReplyStatus.REFUSED, reason, text)


def check_envelope(
    payload: bytes, *, gateway_id: str, public_key: bytes | None
) -> Command | CommandReply:
    """The command in ``payload`` if checks 1-5 pass, else the refusal to send."""
    try:
        cmd = decode_command(payload)
    except GatewayError as exc:
        return refused(b"", ReasonCode.MALFORMED, f"not a command envelope: {exc}")
    ident = cmd.command_id
    if public_key is None:
        text = "no public key is configured (commands.public_key): every command is refused"
        return refused(ident, ReasonCode.UNSIGNED, text)
    if cmd.signature is None:
        return refused(ident, ReasonCode.UNSIGNED, "the command is not signed")
    if cmd.gateway_id != gateway_id:
        text = f"the command is for gateway {cmd.gateway_id!r}, this is {gateway_id!r}"
        return refused(ident, ReasonCode.WRONG_GATEWAY, text)
    if not verify(cmd, public_key):
        return refused(ident, ReasonCode.BAD_SIGNATURE, "the signature is not the master's")
    validity = cmd.expires_at_ms - cmd.issued_at_ms
    if not 0 < validity <= MAX_VALIDITY_MS:
        text = f"valid for {validity} ms: must be more than 0 and at most {MAX_VALIDITY_MS}"
        return refused(ident, ReasonCode.POLICY, text)
    return cmd


def check_time(
    cmd: Command, *, now_ms: int, trusted: bool, issued_floor: int | None
) -> CommandReply | None:
    """Check 6 against the gateway's clock; None: in time."""
    ident = cmd.command_id
    if trusted:
        if now_ms >= cmd.expires_at_ms:
            late = now_ms - cmd.expires_at_ms
            return refused(
                ident, ReasonCode.EXPIRED, f"expired {late} ms ago by the gateway's clock"
            )
        return None
    if cmd.kind != CommandKind.TIME_SET:
        text = "the gateway's time is not trusted: only a time-set is taken until it is"
        return refused(ident, ReasonCode.TIME_UNTRUSTED, text)
    if issued_floor is not None and cmd.issued_at_ms < issued_floor:
        text = "a time-set issued before a command already carried out (an old one replayed?)"
        return refused(ident, ReasonCode.EXPIRED, text)
    return None
