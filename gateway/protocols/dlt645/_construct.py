"""Private construct definitions for DL/T 645-2007: envelope, +0x33, BCD, checksum.

Nothing outside ``gateway.protocols.dlt645`` imports this module: the rest of the code
sees typed functions and frozen dataclasses.  Construct errors are turned into
:class:`RemoteProtocolError` (parsing) or :class:`LocalProtocolError` (building) by
the typed functions in :mod:`.frames` and :mod:`.dataids`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from construct import (
    Adapter,
    Bytes,
    Checksum,
    Const,
    ConstructError,
    GreedyBytes,
    Int8ub,
    Prefixed,
    RawCopy,
    Struct,
    Terminated,
    ValidationError,
    this,
)

__all__ = [
    "ENVELOPE",
    "RELAY_PAYLOAD",
    "WRITE_HEADER",
    "ConstructError",
    "bcd_to_int",
    "bytes_to_hex_le",
    "checksum",
    "datetime_from_fields",
    "hex_le_to_bytes",
    "int_to_bcd",
    "is_address",
    "minus33",
    "plus33",
]

_PLUS33 = bytes((i + 0x33) & 0xFF for i in range(256))
_MINUS33 = bytes((i - 0x33) & 0xFF for i in range(256))
_BCD_BYTE = {((v // 10) << 4) | (v % 10): v for v in range(100)}


def plus33(data: bytes) -> bytes:
    """Add the line offset 0x33 to every byte (what goes on the wire)."""
    return data.translate(_PLUS33)


def minus33(data: bytes) -> bytes:
    """Remove the line offset 0x33 from every byte (what a meter meant)."""
    return data.translate(_MINUS33)


def checksum(data: bytes | bytearray) -> int:
    """CS: the sum of the bytes from the first 0x68 through DATA, mod 256."""
    return sum(data) & 0xFF


def bcd_to_int(data: bytes, *, signed: bool = False) -> int:
    """Decode BCD sent low byte first; with ``signed``, bit 7 of the top byte is the sign.

    Raises :class:`ValidationError` on a nibble above 9.
    """
    value = 0
    negative = False
    last = len(data) - 1
    for i in range(last, -1, -1):
        byte = data[i]
        if signed and i == last and byte & 0x80:
            negative = True
            byte &= 0x7F
        digits = _BCD_BYTE.get(byte)
        if digits is None:
            raise ValidationError(f"not BCD: {data.hex(' ')}")
        value = value * 100 + digits
    return -value if negative else value


def int_to_bcd(value: int, size: int, *, signed: bool = False) -> bytes:
    """Encode ``value`` as ``size`` bytes of BCD, low byte first.

    Raises :class:`ValidationError` when the value does not fit (a signed value has
    one bit less in its top byte, so its top digit is at most 7).
    """
    magnitude = -value if value < 0 else value
    if value < 0 and not signed:
        raise ValidationError(f"{value} is negative in an unsigned format")
    out = bytearray(size)
    for i in range(size):
        magnitude, low = divmod(magnitude, 10)
        magnitude, high = divmod(magnitude, 10)
        out[i] = (high << 4) | low
    if magnitude:
        raise ValidationError(f"{value} does not fit in {size} BCD bytes")
    if signed:
        if out[-1] & 0x80:
            raise ValidationError(f"{value} does not fit in {size} signed BCD bytes")
        if value < 0:
            out[-1] |= 0x80
    return bytes(out)


def bytes_to_hex_le(data: bytes) -> str:
    """Bytes sent low first -> the hex string a person reads (high first, upper case)."""
    return data[::-1].hex().upper()


def hex_le_to_bytes(text: str, size: int) -> bytes:
    """The inverse of :func:`bytes_to_hex_le`; ``text`` must have ``2 * size`` hex digits."""
    if len(text) != 2 * size:
        raise ValidationError(f"{text!r} is not {2 * size} hex digits")
    try:
        return bytes.fromhex(text)[::-1]
    except ValueError as exc:
        raise ValidationError(f"{text!r} is not hex") from exc


def datetime_from_fields(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    """A naive datetime (the meter's wall clock) from BCD fields; 2-digit years are 20YY."""
    try:
        return datetime(2000 + year, month, day, hour, minute, second)
    except ValueError as exc:
        raise ValidationError(str(exc)) from exc


class _Address(Adapter):  # type: ignore[misc]
    """6 bytes, low first <-> 12 characters: digits, or ``A`` (the read-address wildcard)."""

    def _decode(self, obj: bytes, context: Any, path: str) -> str:
        text = obj[::-1].hex().upper()
        if not is_address(text):
            raise ValidationError(f"address {obj.hex(' ')} is not BCD", path=path)
        return text

    def _encode(self, obj: str, context: Any, path: str) -> bytes:
        text = obj.upper()
        if len(text) != 12 or not is_address(text):
            raise ValidationError(f"address {obj!r} is not 12 digits", path=path)
        return bytes.fromhex(text)[::-1]


def is_address(text: str) -> bool:
    """12 characters of digits or ``A`` (the wildcard), as :func:`bytes_to_hex_le` gives."""
    return all(c in "0123456789A" for c in text)


class _Offset33(Adapter):  # type: ignore[misc]
    """Every DATA byte is sent +0x33 (mod 256)."""

    def _decode(self, obj: bytes, context: Any, path: str) -> bytes:
        return obj.translate(_MINUS33)

    def _encode(self, obj: bytes, context: Any, path: str) -> bytes:
        return bytes(obj).translate(_PLUS33)


class _HexLE(Adapter):  # type: ignore[misc]
    """N bytes low first <-> 2N hex digits high first (passwords, operator codes)."""

    def _decode(self, obj: bytes, context: Any, path: str) -> str:
        return bytes_to_hex_le(obj)

    def _encode(self, obj: str, context: Any, path: str) -> bytes:
        return hex_le_to_bytes(obj, self.subcon.length)


class _DateTime6(Adapter):  # type: ignore[misc]
    """``ss mm hh DD MM YY`` BCD, low (seconds) first <-> naive datetime."""

    def _decode(self, obj: bytes, context: Any, path: str) -> datetime:
        fields = [bcd_to_int(obj[i : i + 1]) for i in range(6)]
        ss, mm, hh, dd, mo, yy = fields
        return datetime_from_fields(yy, mo, dd, hh, mm, ss)

    def _encode(self, obj: datetime, context: Any, path: str) -> bytes:
        return encode_datetime6(obj)


def encode_datetime6(at: datetime) -> bytes:
    """``ss mm hh DD MM YY`` for a naive datetime in 2000..2099 (seconds kept, µs refused)."""
    if at.tzinfo is not None:
        raise ValidationError("meter times are wall-clock times: give a naive datetime")
    if not 2000 <= at.year <= 2099 or at.microsecond:
        raise ValidationError(f"{at.isoformat()} cannot be sent (year 2000-2099, whole seconds)")
    fields = (at.second, at.minute, at.hour, at.day, at.month, at.year - 2000)
    return bytes(int_to_bcd(v, 1)[0] for v in fields)


ENVELOPE = Struct(
    "body"
    / RawCopy(
        Struct(
            Const(b"\x68"),
            "address" / _Address(Bytes(6)),
            Const(b"\x68"),
            "control" / Int8ub,
            "data" / Prefixed(Int8ub, _Offset33(GreedyBytes)),
        )
    ),
    "checksum" / Checksum(Int8ub, checksum, this.body.data),
    Const(b"\x16"),
    Terminated,
)
"""One frame without its FE preamble; ``data`` is already offset-corrected."""

WRITE_HEADER = Struct(
    "level" / Int8ub,
    "password" / _HexLE(Bytes(3)),
    "operator" / _HexLE(Bytes(4)),
)
"""PA, P0..P2, C0..C3: what precedes the data of a write (14) or a relay command (1C)."""

RELAY_PAYLOAD = Struct(
    "level" / Int8ub,
    "password" / _HexLE(Bytes(3)),
    "operator" / _HexLE(Bytes(4)),
    "action" / Int8ub,
    "n2" / Int8ub,
    "valid_until" / _DateTime6(Bytes(6)),
    Terminated,
)
"""Data of a plain-text remote control command (1C), 16 bytes."""

__all__ += ["encode_datetime6"]
