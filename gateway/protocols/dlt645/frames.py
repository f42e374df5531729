"""DL/T 645-2007 frames as frozen dataclass events: :func:`encode` and :func:`decode_frame`.

A frame on the line is ``[FE…] 68 A0..A5 68 C L DATA CS 16``.  :class:`RawFrame` is
that envelope with the +0x33 offset removed; the events below give its DATA a
meaning according to the control code C.  Meter times are the meter's wall clock:
naive datetimes, years 2000-2099.  Values are kept as raw bytes in the events
(``ReadReply.data``); :mod:`.dataids` turns them into numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum, IntFlag

from gateway.protocols.dlt645 import _construct as _c
from gateway.protocols.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "BAUD_CODES",
    "BROADCAST_ADDRESS",
    "WILDCARD_ADDRESS",
    "BroadcastTime",
    "ChangeBaudReply",
    "ChangeBaudRequest",
    "ErrorBits",
    "Event",
    "FreezeReply",
    "FreezeRequest",
    "NegativeReply",
    "RawFrame",
    "ReadAddressReply",
    "ReadAddressRequest",
    "ReadFollowUp",
    "ReadFollowUpReply",
    "ReadReply",
    "ReadRequest",
    "RelayAction",
    "RelayControl",
    "RelayReply",
    "SecureRelayControl",
    "UnknownFrame",
    "WriteReply",
    "WriteRequest",
    "build_raw",
    "decode_frame",
    "decode_raw",
    "encode",
    "encode_raw",
    "parse_raw",
]

BROADCAST_ADDRESS = "999999999999"
"""Broadcast address (time sync, freeze): meters act and do not answer."""
WILDCARD_ADDRESS = "AAAAAAAAAAAA"
"""Wildcard address of a read-address request (one meter on the line)."""

PREAMBLE = 0xFE
SECURE_LEVEL = 0x98
"""Password level of a secure (ESAM) command: the rest of the data is ciphertext."""

BAUD_CODES: dict[int, int] = {
    600: 0x02,
    1200: 0x04,
    2400: 0x08,
    4800: 0x10,
    9600: 0x20,
    19200: 0x40,
}
"""Baud rate -> feature word Z of a change-baud command (17)."""
_BAUD_BY_CODE = {code: baud for baud, code in BAUD_CODES.items()}


class ErrorBits(IntFlag):
    """The error byte of a negative reply (D1, D4, DC…), bit by bit."""

    OTHER = 0x01
    NO_DATA = 0x02
    """No such data (DI unknown to this meter)."""
    AUTHORITY = 0x04
    """Wrong password or not authorised."""
    BAUD_UNCHANGEABLE = 0x08
    YEAR_ZONES_EXCEEDED = 0x10
    DAY_SLOTS_EXCEEDED = 0x20
    TARIFFS_EXCEEDED = 0x40


class RelayAction(IntEnum):
    """N1, the control type of a remote control command (1C)."""

    TRIP = 0x1A
    CLOSE_ALLOW = 0x1B
    """Permit the tenant to close the relay with the meter's button."""
    CLOSE = 0x1C
    """Close the relay directly."""
    ALARM = 0x2A
    ALARM_RELEASE = 0x2B
    PROTECT = 0x3A
    """Protect mode (保电): the meter refuses trips."""
    PROTECT_RELEASE = 0x3B


@dataclass(frozen=True, slots=True)
class RawFrame:
    """One frame's envelope; ``data`` has the +0x33 offset removed."""

    address: str
    control: int
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """Read data (11).  ``blocks`` and ``since`` ask for load-curve records."""

    address: str
    di: int
    blocks: int | None = None
    since: datetime | None = None


@dataclass(frozen=True, slots=True)
class ReadReply:
    """Answer to a read (91; B1 when ``more`` frames follow).  ``data`` follows the DI."""

    address: str
    di: int
    data: bytes
    more: bool = False


@dataclass(frozen=True, slots=True)
class ReadFollowUp:
    """Read the next frame of a long answer (12); ``seq`` counts from 1."""

    address: str
    di: int
    seq: int


@dataclass(frozen=True, slots=True)
class ReadFollowUpReply:
    """Answer to a follow-up read (92; B2 when ``more`` frames follow)."""

    address: str
    di: int
    data: bytes
    seq: int
    more: bool = False


@dataclass(frozen=True, slots=True)
class ReadAddressRequest:
    """Read the address of the one meter on the line (13)."""

    address: str = WILDCARD_ADDRESS


@dataclass(frozen=True, slots=True)
class ReadAddressReply:
    """A meter's address (93)."""

    address: str


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """Write data (14): DI, password level, password, operator code, then the data."""

    address: str
    di: int
    data: bytes
    level: int = 2
    password: str = "000000"
    operator: str = "00000000"


@dataclass(frozen=True, slots=True)
class WriteReply:
    """A write was accepted (94)."""

    address: str


@dataclass(frozen=True, slots=True)
class NegativeReply:
    """An error reply (D1, D4, DC…): ``function`` is the request's code (bits 4..0)."""

    address: str
    function: int
    error: ErrorBits


@dataclass(frozen=True, slots=True)
class BroadcastTime:
    """Broadcast time (08): ``ss mm hh DD MM YY`` low first; no meter answers."""

    at: datetime
    address: str = BROADCAST_ADDRESS


@dataclass(frozen=True, slots=True)
class FreezeRequest:
    """Freeze (16) at ``mm hh DD MM``; ``None`` is the 99 wildcard (all ``None``: now)."""

    address: str
    minute: int | None = None
    hour: int | None = None
    day: int | None = None
    month: int | None = None


@dataclass(frozen=True, slots=True)
class FreezeReply:
    """A freeze command was accepted (96)."""

    address: str


@dataclass(frozen=True, slots=True)
class ChangeBaudRequest:
    """Change the line's baud rate (17)."""

    address: str
    baud: int


@dataclass(frozen=True, slots=True)
class ChangeBaudReply:
    """The meter changes to ``baud`` after this answer (97)."""

    address: str
    baud: int


@dataclass(frozen=True, slots=True)
class RelayControl:
    """Remote control (1C) in plain text: trip, close, alarm, protect…"""

    address: str
    action: RelayAction
    valid_until: datetime
    level: int = 2
    password: str = "000000"
    operator: str = "00000000"


@dataclass(frozen=True, slots=True)
class SecureRelayControl:
    """Remote control (1C) for a secure meter (level 98): the master's ciphertext."""

    address: str
    ciphertext: bytes
    password: str = "000000"
    operator: str = "00000000"


@dataclass(frozen=True, slots=True)
class RelayReply:
    """A remote control command was carried out (9C)."""

    address: str


@dataclass(frozen=True, slots=True)
class UnknownFrame:
    """A well-formed frame whose control code this codec does not model."""

    address: str
    control: int
    data: bytes


Event = (
    ReadRequest
    | ReadReply
    | ReadFollowUp
    | ReadFollowUpReply
    | ReadAddressRequest
    | ReadAddressReply
    | WriteRequest
    | WriteReply
    | NegativeReply
    | BroadcastTime
    | FreezeRequest
    | FreezeReply
    | ChangeBaudRequest
    | ChangeBaudReply
    | RelayControl
    | SecureRelayControl
    | RelayReply
    | UnknownFrame
)


# --- envelope ---------------------------------------------------------------------


def parse_raw(frame: bytes) -> RawFrame:
    """One frame (leading FE bytes allowed, nothing after 16) -> its envelope."""
    start = 0
    while start < len(frame) and frame[start] == PREAMBLE:
        start += 1
    try:
        parsed = _c.ENVELOPE.parse(frame[start:] if start else frame)
    except _c.ConstructError as exc:
        raise RemoteProtocolError(f"not a DL/T 645 frame: {exc}") from exc
    body = parsed.body.value
    return RawFrame(body.address, body.control, body.data)


def build_raw(raw: RawFrame, *, preamble: int = 0) -> bytes:
    """An envelope -> bytes on the line, after ``preamble`` FE wake-up bytes."""
    if not 0 <= raw.control <= 0xFF:
        raise LocalProtocolError(f"control code {raw.control} is not a byte")
    try:
        built: bytes = _c.ENVELOPE.build(
            {"body": {"value": {"address": raw.address, "control": raw.control, "data": raw.data}}}
        )
    except _c.ConstructError as exc:
        raise LocalProtocolError(f"cannot build frame: {exc}") from exc
    return bytes([PREAMBLE]) * preamble + built


# --- events -> envelope -----------------------------------------------------------


def _di(di: int) -> bytes:
    if not 0 <= di <= 0xFFFFFFFF:
        raise LocalProtocolError(f"DI {di:#x} is not 4 bytes")
    return di.to_bytes(4, "little")


def _byte(value: int, what: str) -> bytes:
    if not 0 <= value <= 0xFF:
        raise LocalProtocolError(f"{what} {value} is not a byte")
    return bytes([value])


def _bcd1(value: int | None, what: str) -> bytes:
    if value is None:
        return b"\x99"
    if not 0 <= value <= 98:
        raise LocalProtocolError(f"{what} {value} is not 0..98")
    return _c.int_to_bcd(value, 1)


def _header(level: int, password: str, operator: str) -> bytes:
    try:
        built: bytes = _c.WRITE_HEADER.build(
            {"level": level, "password": password, "operator": operator}
        )
    except _c.ConstructError as exc:
        raise LocalProtocolError(f"bad password level, password or operator: {exc}") from exc
    return built


def _datetime6(at: datetime) -> bytes:
    try:
        return _c.encode_datetime6(at)
    except _c.ConstructError as exc:
        raise LocalProtocolError(str(exc)) from exc


def encode_raw(event: Event) -> RawFrame:
    """An event -> its envelope (control code and offset-free data)."""
    match event:
        case ReadRequest(address, di, blocks, since):
            data = _di(di)
            if blocks is not None:
                data += _byte(blocks, "block count")
                if since is not None:
                    if since.second:
                        raise LocalProtocolError("a load-curve start time has no seconds")
                    data += _datetime6(since)[1:]  # mm hh DD MM YY
            elif since is not None:
                raise LocalProtocolError("a read with a start time needs a block count")
            return RawFrame(address, 0x11, data)
        case ReadReply(address, di, data, more):
            return RawFrame(address, 0xB1 if more else 0x91, _di(di) + data)
        case ReadFollowUp(address, di, seq):
            return RawFrame(address, 0x12, _di(di) + _byte(seq, "sequence"))
        case ReadFollowUpReply(address, di, data, seq, more):
            return RawFrame(address, 0xB2 if more else 0x92, _di(di) + data + _byte(seq, "seq"))
        case ReadAddressRequest(address):
            return RawFrame(address, 0x13)
        case ReadAddressReply(address):
            return RawFrame(address, 0x93, _address_bytes(address))
        case WriteRequest(address, di, data, level, password, operator):
            return RawFrame(address, 0x14, _di(di) + _header(level, password, operator) + data)
        case WriteReply(address):
            return RawFrame(address, 0x94)
        case NegativeReply(address, function, error):
            if not 0 <= function <= 0x1F:
                raise LocalProtocolError(f"function {function:#x} is not 5 bits")
            if not 0 <= error <= 0xFFFF:
                raise LocalProtocolError(f"error {int(error):#x} is not 1 or 2 bytes")
            size = 1 if error <= 0xFF else 2
            return RawFrame(address, 0xC0 | function, int(error).to_bytes(size, "little"))
        case BroadcastTime(at, address):
            return RawFrame(address, 0x08, _datetime6(at))
        case FreezeRequest(address, minute, hour, day, month):
            data = (
                _bcd1(minute, "minute")
                + _bcd1(hour, "hour")
                + _bcd1(day, "day")
                + _bcd1(month, "month")
            )
            return RawFrame(address, 0x16, data)
        case FreezeReply(address):
            return RawFrame(address, 0x96)
        case ChangeBaudRequest(address, baud) | ChangeBaudReply(address, baud):
            code = BAUD_CODES.get(baud)
            if code is None:
                raise LocalProtocolError(f"baud rate {baud} is not one of {sorted(BAUD_CODES)}")
            control = 0x17 if isinstance(event, ChangeBaudRequest) else 0x97
            return RawFrame(address, control, bytes([code]))
        case RelayControl(address, action, valid_until, level, password, operator):
            if level == SECURE_LEVEL:
                raise LocalProtocolError("level 98 commands are ciphertext: SecureRelayControl")
            data = (
                _header(level, password, operator)
                + _byte(int(action), "action")
                + b"\x00"
                + _datetime6(valid_until)
            )
            return RawFrame(address, 0x1C, data)
        case SecureRelayControl(address, ciphertext, password, operator):
            return RawFrame(address, 0x1C, _header(SECURE_LEVEL, password, operator) + ciphertext)
        case RelayReply(address):
            return RawFrame(address, 0x9C)
        case UnknownFrame(address, control, data):
            return RawFrame(address, control, data)
    raise LocalProtocolError(f"not a DL/T 645 event: {event!r}")


def encode(event: Event, *, preamble: int = 0) -> bytes:
    """An event -> bytes on the line, after ``preamble`` FE wake-up bytes."""
    return build_raw(encode_raw(event), preamble=preamble)


def _address_bytes(address: str) -> bytes:
    try:
        return _c.hex_le_to_bytes(address, 6)
    except _c.ConstructError as exc:
        raise LocalProtocolError(f"address {address!r}: {exc}") from exc


# --- envelope -> events -----------------------------------------------------------


def _need(raw: RawFrame, size: int, *, at_least: bool = False) -> None:
    n = len(raw.data)
    if n < size if at_least else n != size:
        more = "at least " if at_least else ""
        raise RemoteProtocolError(
            f"control {raw.control:02X} needs {more}{size} data bytes, got {n}"
        )


def _read_di(data: bytes) -> int:
    return int.from_bytes(data[:4], "little")


def _dec_read_request(raw: RawFrame) -> Event:
    n = len(raw.data)
    if n not in (4, 5, 10):
        raise RemoteProtocolError(f"a read request has 4, 5 or 10 data bytes, not {n}")
    blocks = raw.data[4] if n >= 5 else None
    since = None
    if n == 10:
        mm, hh, dd, mo, yy = (_c.bcd_to_int(raw.data[i : i + 1]) for i in range(5, 10))
        since = _c.datetime_from_fields(yy, mo, dd, hh, mm)
    return ReadRequest(raw.address, _read_di(raw.data), blocks, since)


def _dec_read_reply(raw: RawFrame) -> Event:
    _need(raw, 4, at_least=True)
    return ReadReply(raw.address, _read_di(raw.data), raw.data[4:], raw.control == 0xB1)


def _dec_follow_up(raw: RawFrame) -> Event:
    _need(raw, 5)
    return ReadFollowUp(raw.address, _read_di(raw.data), raw.data[4])


def _dec_follow_up_reply(raw: RawFrame) -> Event:
    _need(raw, 5, at_least=True)
    d = raw.data
    return ReadFollowUpReply(raw.address, _read_di(d), d[4:-1], d[-1], raw.control == 0xB2)


def _dec_read_address(raw: RawFrame) -> Event:
    _need(raw, 0)
    return ReadAddressRequest(raw.address)


def _dec_read_address_reply(raw: RawFrame) -> Event:
    _need(raw, 6)
    inner = _c.bytes_to_hex_le(raw.data)
    if inner != raw.address:
        raise RemoteProtocolError(f"address {inner} in the data differs from {raw.address}")
    return ReadAddressReply(raw.address)


def _dec_write(raw: RawFrame) -> Event:
    _need(raw, 12, at_least=True)
    h = _c.WRITE_HEADER.parse(raw.data[4:12])
    return WriteRequest(
        raw.address, _read_di(raw.data), raw.data[12:], h.level, h.password, h.operator
    )


def _dec_time(raw: RawFrame) -> Event:
    _need(raw, 6)
    ss, mm, hh, dd, mo, yy = (_c.bcd_to_int(raw.data[i : i + 1]) for i in range(6))
    return BroadcastTime(_c.datetime_from_fields(yy, mo, dd, hh, mm, ss), raw.address)


def _dec_freeze(raw: RawFrame) -> Event:
    _need(raw, 4)
    fields = [None if b == 0x99 else _c.bcd_to_int(bytes([b])) for b in raw.data]
    return FreezeRequest(raw.address, *fields)


def _baud(raw: RawFrame) -> int:
    _need(raw, 1)
    baud = _BAUD_BY_CODE.get(raw.data[0])
    if baud is None:
        raise RemoteProtocolError(f"baud feature word {raw.data[0]:#04x} names no rate")
    return baud


def _dec_relay(raw: RawFrame) -> Event:
    _need(raw, 8, at_least=True)
    if raw.data[0] == SECURE_LEVEL:
        h = _c.WRITE_HEADER.parse(raw.data[:8])
        return SecureRelayControl(raw.address, raw.data[8:], h.password, h.operator)
    _need(raw, 16)
    p = _c.RELAY_PAYLOAD.parse(raw.data)
    if p.n2:
        raise RemoteProtocolError(f"remote control N2 is {p.n2:#04x}, not 00")
    try:
        action = RelayAction(p.action)
    except ValueError as exc:
        raise RemoteProtocolError(f"unknown remote control type {p.action:#04x}") from exc
    return RelayControl(raw.address, action, p.valid_until, p.level, p.password, p.operator)


def _empty(cls: type[WriteReply | FreezeReply | RelayReply]) -> Callable[[RawFrame], Event]:
    def dec(raw: RawFrame) -> Event:
        _need(raw, 0)
        return cls(raw.address)

    return dec


_DECODERS: dict[int, Callable[[RawFrame], Event]] = {
    0x11: _dec_read_request,
    0x91: _dec_read_reply,
    0xB1: _dec_read_reply,
    0x12: _dec_follow_up,
    0x92: _dec_follow_up_reply,
    0xB2: _dec_follow_up_reply,
    0x13: _dec_read_address,
    0x93: _dec_read_address_reply,
    0x14: _dec_write,
    0x94: _empty(WriteReply),
    0x08: _dec_time,
    0x16: _dec_freeze,
    0x96: _empty(FreezeReply),
    0x17: lambda raw: ChangeBaudRequest(raw.address, _baud(raw)),
    0x97: lambda raw: ChangeBaudReply(raw.address, _baud(raw)),
    0x1C: _dec_relay,
    0x9C: _empty(RelayReply),
}


def decode_raw(raw: RawFrame) -> Event:
    """An envelope -> its event; :class:`UnknownFrame` for control codes not modelled.

    Raises :class:`RemoteProtocolError` when the data does not fit the control code.
    """
    if not _c.is_address(raw.address):
        raise RemoteProtocolError(f"address {raw.address} is not BCD")
    decoder = _DECODERS.get(raw.control)
    try:
        if decoder is not None:
            return decoder(raw)
        if raw.control & 0xE0 == 0xC0:
            if len(raw.data) not in (1, 2):
                raise RemoteProtocolError(f"an error reply has 1 or 2 data bytes, got {raw.data!r}")
            error = ErrorBits(int.from_bytes(raw.data, "little"))
            return NegativeReply(raw.address, raw.control & 0x1F, error)
    except _c.ConstructError as exc:
        raise RemoteProtocolError(f"control {raw.control:02X}: {exc}") from exc
    return UnknownFrame(raw.address, raw.control, raw.data)


def decode_frame(frame: bytes) -> Event:
    """One frame's bytes (leading FE allowed) -> its event, or :class:`RemoteProtocolError`."""
    return decode_raw(parse_raw(frame))
