"""``gateway frame``: decode and encode DL/T 645-2007 frames, for technicians.

``gateway frame decode HEX...`` prints one JSON object per frame found (FE preamble,
spaces and garbage allowed).  ``gateway frame encode read|read-address|time|relay``
prints a frame as spaced hex.  Exact decimals are printed as JSON numbers as sent
(``12345.67``, never a float's ``12345.670000000002``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import IntFlag
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.errors import GatewayError, RemoteProtocolError
from gateway.protocols import dlt645 as d

__all__ = ["FrameInputError", "configure", "decode_hex", "run", "to_json"]

_ACTIONS = {a.name.lower().replace("_", "-"): a for a in d.RelayAction}


class FrameInputError(GatewayError):
    """The frame tool was given input it cannot use."""


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    dec = sub.add_parser("decode", help="print each frame in HEX as one JSON object per line")
    dec.add_argument("hex", nargs="+", metavar="HEX", help="frame bytes in hex; spaces allowed")

    enc = sub.add_parser("encode", help="build a frame and print it as hex")
    kinds = enc.add_subparsers(dest="kind", metavar="KIND", required=True)

    def kind(name: str, help_text: str) -> argparse.ArgumentParser:
        p = kinds.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--preamble", type=int, default=0, help="FE wake-up bytes (default 0)")
        return p

    p = kind("read", "read data (11)")
    p.add_argument("--address", required=True, help="12-digit meter address")
    p.add_argument("--di", required=True, help="data identifier, 8 hex digits DI3..DI0")
    p = kind("read-address", "read the address of the one meter on the line (13)")
    p.add_argument("--address", default=d.WILDCARD_ADDRESS, help="default: AAAAAAAAAAAA")
    p = kind("time", "broadcast time (08): ss mm hh DD MM YY, low byte first")
    p.add_argument("--at", required=True, help="ISO date-time; an offset is converted to --tz")
    p.add_argument("--tz", default="Asia/Shanghai", help="the meters' time zone")
    p = kind("relay", "remote control (1C): trip, close, alarm, protect")
    p.add_argument("--address", required=True, help="12-digit meter address")
    p.add_argument("--action", required=True, choices=sorted(_ACTIONS))
    p.add_argument("--password", default="000000", help="6 hex digits, high first")
    p.add_argument("--level", default="02", help="password level, 2 hex digits (default 02)")
    p.add_argument("--operator", default="00000000", help="operator code, 8 hex digits")
    p.add_argument(
        "--valid-until",
        required=True,
        help="deadline: ISO date-time, or +N[s|m|h] from now in --tz",
    )
    p.add_argument("--tz", default="Asia/Shanghai", help="the meters' time zone")


def run(args: argparse.Namespace) -> int:
    if args.action == "decode":
        lines, note = decode_hex(" ".join(args.hex))
        for line in lines:
            print(line)
        if note:
            print(note, file=sys.stderr)
        return 0
    print(_encode(args))
    return 0


# --- decode -----------------------------------------------------------------------


def decode_hex(text: str) -> tuple[list[str], str | None]:
    """Every frame in ``text`` (hex) as a JSON line, and a note on what was skipped.

    Raises :class:`FrameInputError` when ``text`` is not hex or holds no frame.
    """
    compact = re.sub(r"\s+", "", text)
    try:
        data = bytes.fromhex(compact)
    except ValueError as exc:
        raise FrameInputError(f"not hex: {text!r}") from exc
    framer = d.Framer()
    raws = framer.feed_raw(data)
    framer.flush()
    s = framer.stats
    if not raws:
        raise FrameInputError(
            f"no frame found in {len(data)} bytes ({s.bad_checksums} bad checksums, "
            f"{s.truncated} truncated, {s.dropped_bytes} bytes of garbage)"
        )
    note = None
    if s.dropped_bytes:
        note = (
            f"skipped {s.dropped_bytes} bytes ({s.bad_checksums} bad checksums, "
            f"{s.truncated} truncated)"
        )
    return [to_json(_describe(raw)) for raw in raws], note


def _describe(raw: d.RawFrame) -> dict[str, object]:
    out: dict[str, object] = {"control": raw.control, "address": raw.address}
    try:
        event = d.decode_raw(raw)
    except RemoteProtocolError as exc:
        out.update(type="InvalidFrame", data=raw.data.hex(), invalid=str(exc))
        return out
    out["type"] = type(event).__name__
    match event:
        case d.ReadRequest(_, di, blocks, since):
            out["di"] = f"{di:08X}"
            out.update(_name(di))
            if blocks is not None:
                out["blocks"] = blocks
            if since is not None:
                out["since"] = since
        case d.ReadReply(_, di, data, more) | d.ReadFollowUpReply(_, di, data, _, more):
            out["di"] = f"{di:08X}"
            out.update(_value(di, data))
            out["more"] = more
            if isinstance(event, d.ReadFollowUpReply):
                out["seq"] = event.seq
        case d.ReadFollowUp(_, di, seq):
            out.update(di=f"{di:08X}", seq=seq)
        case d.WriteRequest(_, di, data, level, password, operator):
            out["di"] = f"{di:08X}"
            out.update(_value(di, data))
            out.update(level=f"{level:02X}", password=password, operator=operator)
        case d.NegativeReply(_, function, error):
            out.update(function=function, error=error)
        case d.BroadcastTime(at, _):
            out["at"] = at
        case d.FreezeRequest(_, minute, hour, day, month):
            out.update(minute=minute, hour=hour, day=day, month=month)
        case d.ChangeBaudRequest(_, baud) | d.ChangeBaudReply(_, baud):
            out["baud"] = baud
        case d.RelayControl(_, action, valid_until, level, password, operator):
            out.update(action=action.name.lower().replace("_", "-"), valid_until=valid_until)
            out.update(level=f"{level:02X}", password=password, operator=operator)
        case d.SecureRelayControl(_, ciphertext, password, operator):
            out.update(level="98", password=password, operator=operator)
            out["ciphertext"] = ciphertext.hex()
        case d.UnknownFrame(_, _, data):
            out["data"] = data.hex()
    return out


def _name(di: int) -> dict[str, object]:
    entry = d.find(di)
    return {"name": entry.name if entry else None}


def _value(di: int, data: bytes) -> dict[str, object]:
    entry = d.find(di)
    if entry is None:
        return {"name": None, "value": data.hex(), "unit": None}
    try:
        value: object = entry.decode(data)
    except RemoteProtocolError as exc:
        return {"name": entry.name, "value": data.hex(), "unit": entry.unit, "invalid": str(exc)}
    return {"name": entry.name, "value": value, "unit": entry.unit}


def to_json(obj: object) -> str:
    """JSON with exact decimals as numbers, flags as objects of named bits, times as ISO."""
    if isinstance(obj, IntFlag):
        bits: dict[str, object] = {"raw": int(obj)}
        for member in type(obj):
            bits[str(member.name).lower()] = member in obj
        return to_json(bits)
    if isinstance(obj, Decimal):
        return format(obj, "f")
    if isinstance(obj, datetime | date | time):
        return json.dumps(obj.isoformat())
    if isinstance(obj, dict):
        items = (f"{json.dumps(str(k))}: {to_json(v)}" for k, v in obj.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(obj, list | tuple):
        return "[" + ", ".join(to_json(v) for v in obj) + "]"
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return json.dumps(obj)
    if isinstance(obj, int):
        return str(int(obj))
    raise TypeError(f"cannot print {obj!r} as JSON")


# --- encode -----------------------------------------------------------------------


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise FrameInputError(f"unknown time zone {name!r}") from exc


def _when(text: str, tz: str) -> datetime:
    """ISO date-time (an offset is converted to ``tz``) or ``+N[s|m|h]`` from now."""
    zone = _zone(tz)
    rel = re.fullmatch(r"\+(\d+)([smh]?)", text)
    if rel:
        seconds = int(rel.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[rel.group(2)]
        at = datetime.now(zone) + timedelta(seconds=seconds)
        return at.replace(tzinfo=None, microsecond=0)
    try:
        at = datetime.fromisoformat(text)
    except ValueError as exc:
        raise FrameInputError(f"not an ISO date-time: {text!r}") from exc
    if at.tzinfo is not None:
        at = at.astimezone(zone).replace(tzinfo=None)
    return at


def _hex_field(text: str, digits: int, what: str) -> str:
    if not re.fullmatch(rf"[0-9A-Fa-f]{{{digits}}}", text):
        raise FrameInputError(f"{what} must be {digits} hex digits, not {text!r}")
    return text.upper()


def _address(text: str) -> str:
    if not re.fullmatch(r"[0-9Aa]{12}", text):
        raise FrameInputError(f"address must be 12 digits, not {text!r}")
    return text.upper()


def _encode(args: argparse.Namespace) -> str:
    if not 0 <= args.preamble <= 16:
        raise FrameInputError("--preamble must be 0..16")
    event: d.Event
    if args.kind == "read":
        di = int(_hex_field(args.di, 8, "--di"), 16)
        event = d.ReadRequest(_address(args.address), di)
    elif args.kind == "read-address":
        event = d.ReadAddressRequest(_address(args.address))
    elif args.kind == "time":
        event = d.BroadcastTime(_when(args.at, args.tz))
    else:
        level = int(_hex_field(args.level, 2, "--level"), 16)
        password = _hex_field(args.password, 6, "--password")
        operator = _hex_field(args.operator, 8, "--operator")
        until = _when(args.valid_until, args.tz)
        event = d.RelayControl(
            _address(args.address), _ACTIONS[args.action], until, level, password, operator
        )
    return d.encode(event, preamble=args.preamble).hex(" ").upper()
