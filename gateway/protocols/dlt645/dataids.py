"""DL/T 645-2007 data identifiers (DI): name, data format, unit, and exact values.

:func:`decode_value` turns the bytes after a DI into a value, :func:`encode_value` does
the reverse (the simulator uses it).  Values are exact, never float:

* numbers: ``int`` for formats without decimals, :class:`~decimal.Decimal` with the
  format's decimals otherwise (``XXXXXX.XX`` gives ``Decimal("12345.67")``);
* blocks (``FF`` DIs): a ``dict`` of the parts present, in order (``total``, ``t1``…;
  meters with fewer tariffs send fewer parts);
* status words: an :class:`~enum.IntFlag` with named bits (unknown bits kept);
* dates, times and freeze times: ``date``, ``time``, naive ``datetime`` (meter clock);
* meter numbers: a string of digits; ASCII fields: ``str`` (sent low byte first).

Status-word bits beyond those in domain.md follow DL/T 645-2007 and its 2013 amendment
as far as we know them; treat bits not used by the gateway as informative.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from enum import IntFlag

from gateway.protocols.dlt645 import _construct as _c
from gateway.protocols.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DATA_IDS",
    "Ascii",
    "BcdDate",
    "BcdTime",
    "Block",
    "DataId",
    "Digits",
    "FreezeTime",
    "Number",
    "Record",
    "Scalar",
    "StatusWord",
    "StatusWord1",
    "StatusWord2",
    "StatusWord3",
    "UnknownDataId",
    "Value",
    "decode_value",
    "encode_value",
    "find",
]

Scalar = int | Decimal | str | date | time | datetime
"""One value (``datetime`` is also a ``date``; an ``IntFlag`` is also an ``int``)."""
Value = Scalar | Mapping[str, Scalar]
"""A decoded value: a scalar, or the named parts of a block or record."""


class UnknownDataId(RemoteProtocolError):
    """A meter sent a DI this table does not describe."""


class StatusWord1(IntFlag):
    """Meter running status word 1 (04000501)."""

    DEMAND_INTERVAL = 1 << 1
    CLOCK_BATTERY_LOW = 1 << 2
    STANDBY_BATTERY_LOW = 1 << 3
    ACTIVE_POWER_REVERSE = 1 << 4
    REACTIVE_POWER_REVERSE = 1 << 5
    CONTROL_LOOP_ERROR = 1 << 8
    ESAM_ERROR = 1 << 9
    PROGRAM_ERROR = 1 << 12
    STORAGE_FAULT = 1 << 13
    OVERDRAFT = 1 << 14
    CLOCK_FAULT = 1 << 15


class StatusWord2(IntFlag):
    """Meter running status word 2 (04000502): power direction per phase."""

    A_ACTIVE_REVERSE = 1 << 0
    B_ACTIVE_REVERSE = 1 << 1
    C_ACTIVE_REVERSE = 1 << 2
    A_REACTIVE_REVERSE = 1 << 4
    B_REACTIVE_REVERSE = 1 << 5
    C_REACTIVE_REVERSE = 1 << 6


class StatusWord3(IntFlag):
    """Meter running status word 3 (04000503): relay, supply, prepaid and protect state."""

    DAY_TABLE_2 = 1 << 0
    SUPPLY_AUXILIARY = 1 << 1
    SUPPLY_BATTERY = 1 << 2
    PROGRAMMING_ALLOWED = 1 << 3
    RELAY_OPEN = 1 << 4
    ZONE_TABLE_2 = 1 << 5
    RELAY_COMMAND_OPEN = 1 << 6
    PRE_TRIP_ALARM = 1 << 7
    PREPAID_ENERGY = 1 << 8
    """The meter keeps its own prepaid wallet in kWh (bits 8-9 = 01)."""
    PREPAID_MONEY = 1 << 9
    """The meter keeps its own prepaid wallet in money (bits 8-9 = 10)."""
    PRICE_TABLE_2 = 1 << 10
    STEP_TABLE_2 = 1 << 11
    PROTECT_MODE = 1 << 12


def _remote(exc: Exception) -> RemoteProtocolError:
    return RemoteProtocolError(str(exc))


@dataclass(frozen=True, slots=True)
class Number:
    """BCD number of ``digits`` digits with ``decimals`` of them after the point."""

    digits: int
    decimals: int = 0
    signed: bool = False

    @property
    def size(self) -> int:
        return (self.digits + 1) // 2

    def decode(self, data: bytes) -> int | Decimal:
        _size(data, self.size)
        n = _c.bcd_to_int(data, signed=self.signed)
        return Decimal(n).scaleb(-self.decimals) if self.decimals else n

    def encode(self, value: Value) -> bytes:
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            raise LocalProtocolError(f"{value!r} is not a number")
        scaled = Decimal(value).scaleb(self.decimals)
        if not scaled.is_finite() or scaled != scaled.to_integral_value():
            raise LocalProtocolError(f"{value} has more than {self.decimals} decimals")
        return _c.int_to_bcd(int(scaled), self.size, signed=self.signed)


@dataclass(frozen=True, slots=True)
class Block:
    """An ``FF`` block: up to ``len(names)`` parts of one format, in order."""

    part: Number
    names: tuple[str, ...]

    def decode(self, data: bytes) -> dict[str, Scalar]:
        size = self.part.size
        count, rest = divmod(len(data), size)
        if rest or not 1 <= count <= len(self.names):
            raise RemoteProtocolError(
                f"a block of {len(data)} bytes is not 1..{len(self.names)} parts of {size}"
            )
        return {
            self.names[i]: self.part.decode(data[i * size : (i + 1) * size]) for i in range(count)
        }

    def encode(self, value: Value) -> bytes:
        if not isinstance(value, Mapping) or not value:
            raise LocalProtocolError(f"a block needs a mapping of parts, not {value!r}")
        if tuple(value) != self.names[: len(value)]:
            raise LocalProtocolError(f"block parts must be a prefix of {self.names}")
        return b"".join(self.part.encode(v) for v in value.values())


@dataclass(frozen=True, slots=True)
class Record:
    """Named BCD fields of one byte each, low byte first (e.g. settlement day ``DDhh``)."""

    fields: tuple[str, ...]

    def decode(self, data: bytes) -> dict[str, Scalar]:
        _size(data, len(self.fields))
        return {name: _c.bcd_to_int(data[i : i + 1]) for i, name in enumerate(self.fields)}

    def encode(self, value: Value) -> bytes:
        if not isinstance(value, Mapping) or tuple(value) != self.fields:
            raise LocalProtocolError(f"a record needs the fields {self.fields}")
        return b"".join(Number(2).encode(value[name]) for name in self.fields)


@dataclass(frozen=True, slots=True)
class StatusWord:
    """A status word of ``size`` bytes, low first, into named bits."""

    flags: type[IntFlag]
    size: int = 2

    def decode(self, data: bytes) -> IntFlag:
        _size(data, self.size)
        return self.flags(int.from_bytes(data, "little"))

    def encode(self, value: Value) -> bytes:
        if not isinstance(value, int) or not 0 <= value < 1 << (8 * self.size):
            raise LocalProtocolError(f"{value!r} is not a {self.size}-byte status word")
        return int(value).to_bytes(self.size, "little")


@dataclass(frozen=True, slots=True)
class BcdDate:
    """``YYMMDDWW`` (WW = weekday, 0 = Sunday), sent ``WW DD MM YY``."""

    size: int = 4

    def decode(self, data: bytes) -> date:
        _size(data, 4)
        ww, dd, mm, yy = (_c.bcd_to_int(data[i : i + 1]) for i in range(4))
        if ww > 6:
            raise RemoteProtocolError(f"weekday {ww} is not 0..6")
        return _c.datetime_from_fields(yy, mm, dd).date()

    def encode(self, value: Value) -> bytes:
        if not isinstance(value, date) or isinstance(value, datetime):
            raise LocalProtocolError(f"{value!r} is not a date")
        if not 2000 <= value.year <= 2099:
            raise LocalProtocolError(f"{value} is outside 2000..2099")
        fields = (value.isoweekday() % 7, value.day, value.month, value.year - 2000)
        return b"".join(_c.int_to_bcd(v, 1) for v in fields)


@dataclass(frozen=True, slots=True)
class BcdTime:
    """``hhmmss``, sent ``ss mm hh``."""

    size: int = 3

    def decode(self, data: bytes) -> time:
        _size(data, 3)
        ss, mm, hh = (_c.bcd_to_int(data[i : i + 1]) for i in range(3))
        return _c.datetime_from_fields(0, 1, 1, hh, mm, ss).time()

    def encode(self, value: Value) -> bytes:
        if not isinstance(value, time) or value.microsecond or value.tzinfo:
            raise LocalProtocolError(f"{value!r} is not a naive time in whole seconds")
        return b"".join(_c.int_to_bcd(v, 1) for v in (value.second, value.minute, value.hour))


@dataclass(frozen=True, slots=True)
class FreezeTime:
    """``YYMMDDhhmm`` (a freeze's time), sent ``mm hh DD MM YY``."""

    size: int = 5

    def decode(self, data: bytes) -> datetime:
        _size(data, 5)
        mm, hh, dd, mo, yy = (_c.bcd_to_int(data[i : i + 1]) for i in range(5))
        return _c.datetime_from_fields(yy, mo, dd, hh, mm)

    def encode(self, value: Value) -> bytes:
        if not isinstance(value, datetime) or value.second:
            raise LocalProtocolError(f"{value!r} is not a datetime in whole minutes")
        return _c.encode_datetime6(value)[1:]


@dataclass(frozen=True, slots=True)
class Digits:
    """``size`` bytes of BCD read as a string of digits, high digit first (meter numbers)."""

    size: int

    def decode(self, data: bytes) -> str:
        _size(data, self.size)
        text = _c.bytes_to_hex_le(data)
        if not text.isdigit():
            raise RemoteProtocolError(f"{text} is not BCD digits")
        return text

    def encode(self, value: Value) -> bytes:
        if not isinstance(value, str) or len(value) != 2 * self.size or not value.isdigit():
            raise LocalProtocolError(f"{value!r} is not {2 * self.size} digits")
        return _c.hex_le_to_bytes(value, self.size)


@dataclass(frozen=True, slots=True)
class Ascii:
    """``size`` ASCII characters sent low byte first (reversed), padded with NUL or space."""

    size: int

    def decode(self, data: bytes) -> str:
        _size(data, self.size)
        try:
            return data[::-1].strip(b"\x00\xff ").decode("ascii")
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError(f"{data.hex(' ')} is not ASCII") from exc

    def encode(self, value: Value) -> bytes:
        if not isinstance(value, str) or not value.isascii() or len(value) > self.size:
            raise LocalProtocolError(f"{value!r} is not ASCII of at most {self.size} chars")
        return value.encode("ascii").rjust(self.size, b"\x00")[::-1]


Format = Number | Block | Record | StatusWord | BcdDate | BcdTime | FreezeTime | Digits | Ascii


def _size(data: bytes, size: int) -> None:
    if len(data) != size:
        raise RemoteProtocolError(f"expected {size} data bytes, got {len(data)}")


@dataclass(frozen=True, slots=True)
class DataId:
    """One data identifier: ``di`` is DI3..DI0 as an integer (``0x02010100``)."""

    di: int
    name: str
    format: Format
    unit: str | None = None

    def decode(self, data: bytes) -> Value:
        """The value in ``data`` (the bytes after the DI, offset removed)."""
        try:
            return self.format.decode(data)
        except _c.ConstructError as exc:
            raise _remote(exc) from exc

    def encode(self, value: Value) -> bytes:
        """The bytes that carry ``value`` after the DI."""
        try:
            return self.format.encode(value)
        except _c.ConstructError as exc:
            raise LocalProtocolError(str(exc)) from exc


# --- the table --------------------------------------------------------------------

_TARIFF_NAMES = ("total", *(f"t{i}" for i in range(1, 64)))
_PHASES = ("a", "b", "c")
_TOTAL_PHASES = ("total", *_PHASES)

_ENERGY_FAMILIES = (
    (0x0000, "combined active energy", "kWh", True),
    (0x0001, "forward active energy", "kWh", False),
    (0x0002, "reverse active energy", "kWh", False),
    (0x0003, "combined reactive energy 1", "kvarh", True),
    (0x0004, "combined reactive energy 2", "kvarh", True),
    (0x0005, "quadrant I reactive energy", "kvarh", False),
    (0x0006, "quadrant II reactive energy", "kvarh", False),
    (0x0007, "quadrant III reactive energy", "kvarh", False),
    (0x0008, "quadrant IV reactive energy", "kvarh", False),
)


def _energy() -> list[DataId]:
    out = []
    for family, label, unit, signed in _ENERGY_FAMILIES:
        part = Number(8, 2, signed)
        for di0 in range(0x0D):
            when = f", settlement -{di0}" if di0 else ""
            base = (family << 16) | di0
            out.append(DataId(base, f"{label}, total{when}", part, unit))
            for tariff in range(1, 5):
                out.append(
                    DataId(base | tariff << 8, f"{label}, tariff {tariff}{when}", part, unit)
                )
            block = Block(part, _TARIFF_NAMES)
            out.append(DataId(base | 0xFF00, f"{label}, total and tariffs{when}", block, unit))
    return out


def _per_phase(di2: int, label: str, fmt: Number, unit: str | None, total: bool) -> list[DataId]:
    base = 0x02000000 | di2 << 16
    names = _TOTAL_PHASES if total else _PHASES
    out = [DataId(base | 0xFF00, f"{label}, block", Block(fmt, names), unit)]
    for i, name in enumerate(names):
        out.append(DataId(base | (i if total else i + 1) << 8, f"{label}, {name}", fmt, unit))
    return out


def _variables() -> list[DataId]:
    kw = Number(6, 4, True)
    return [
        *_per_phase(0x01, "voltage", Number(4, 1), "V", total=False),
        *_per_phase(0x02, "current", Number(6, 3, True), "A", total=False),
        *_per_phase(0x03, "active power", kw, "kW", total=True),
        *_per_phase(0x04, "reactive power", kw, "kvar", total=True),
        *_per_phase(0x05, "apparent power", kw, "kVA", total=True),
        *_per_phase(0x06, "power factor", Number(4, 3, True), None, total=True),
        *_per_phase(0x07, "phase angle", Number(4, 1), "°", total=False),
        DataId(0x02800001, "neutral current", Number(6, 3, True), "A"),
        DataId(0x02800002, "frequency", Number(4, 2), "Hz"),
        DataId(0x02800003, "one-minute mean active power", kw, "kW"),
        DataId(0x02800004, "current active demand", kw, "kW"),
        DataId(0x02800005, "current reactive demand", kw, "kvar"),
        DataId(0x02800006, "current apparent demand", kw, "kVA"),
        DataId(0x02800007, "meter temperature", Number(4, 1, True), "°C"),
        DataId(0x02800008, "clock battery voltage", Number(4, 2), "V"),
        DataId(0x02800009, "meter-reading battery voltage", Number(4, 2), "V"),
        DataId(0x0280000A, "internal battery working time", Number(8), "min"),
        DataId(0x0280000B, "current step price", Number(8, 4), "yuan/kWh"),
    ]


def _parameters() -> list[DataId]:
    money = Number(8, 2)
    return [
        DataId(0x04000101, "date", BcdDate()),
        DataId(0x04000102, "time", BcdTime()),
        DataId(0x04000103, "demand period", Number(2), "min"),
        DataId(0x04000104, "demand slide time", Number(2), "min"),
        DataId(0x04000306, "current transformer ratio", Number(6)),
        DataId(0x04000307, "voltage transformer ratio", Number(6)),
        DataId(0x04000401, "communication address", Digits(6)),
        DataId(0x04000402, "meter number", Digits(6)),
        DataId(0x04000403, "asset code", Ascii(32)),
        DataId(0x04000404, "rated voltage", Ascii(6)),
        DataId(0x04000405, "rated current", Ascii(6)),
        DataId(0x04000406, "maximum current", Ascii(6)),
        DataId(0x04000409, "active constant", Number(6), "imp/kWh"),
        DataId(0x0400040B, "meter model", Ascii(10)),
        DataId(0x0400040C, "production date", Ascii(10)),
        DataId(0x0400040D, "protocol version", Ascii(16)),
        DataId(0x04000501, "status word 1", StatusWord(StatusWord1)),
        DataId(0x04000502, "status word 2", StatusWord(StatusWord2)),
        DataId(0x04000503, "status word 3", StatusWord(StatusWord3)),
        *(
            DataId(0x04000B00 | i, f"settlement day {i}", Record(("hour", "day")))
            for i in (1, 2, 3)
        ),
        DataId(0x04001001, "alarm amount 1", money, "yuan"),
        DataId(0x04001002, "alarm amount 2", money, "yuan"),
        DataId(0x04001003, "overdraft limit", money, "yuan"),
        DataId(0x04001004, "hoarding limit", money, "yuan"),
        DataId(0x04001005, "close-allow amount", money, "yuan"),
        DataId(0x00900100, "remaining energy", money, "kWh"),
        DataId(0x00900101, "overdrawn energy", money, "kWh"),
        DataId(0x00900200, "remaining money", money, "yuan"),
        DataId(0x00900201, "overdrawn money", money, "yuan"),
    ]


def _freezes() -> list[DataId]:
    out = []
    block = Block(Number(8, 2), _TARIFF_NAMES)
    for n in range(1, 0x3F):
        out.append(DataId(0x05060000 | n, f"daily freeze -{n}, time", FreezeTime()))
        label = f"daily freeze -{n}, forward active energy"
        out.append(DataId(0x05060100 | n, label, block, "kWh"))
        label = f"daily freeze -{n}, reverse active energy"
        out.append(DataId(0x05060200 | n, label, block, "kWh"))
    return out


def _table() -> dict[int, DataId]:
    table: dict[int, DataId] = {}
    for entry in (*_energy(), *_variables(), *_parameters(), *_freezes()):
        if entry.di in table:
            raise AssertionError(f"duplicate DI {entry.di:08X}")
        table[entry.di] = entry
    return table


DATA_IDS: Mapping[int, DataId] = _table()
"""Every DI this codec knows, by DI3..DI0 as an integer."""


def find(di: int) -> DataId | None:
    """The table entry of ``di``, or ``None``."""
    return DATA_IDS.get(di)


def decode_value(di: int, data: bytes) -> Value:
    """The value a meter sent for ``di``; :class:`RemoteProtocolError` if it does not fit."""
    entry = DATA_IDS.get(di)
    if entry is None:
        raise UnknownDataId(f"unknown data identifier {di:08X}")
    return entry.decode(data)


def encode_value(di: int, value: Value) -> bytes:
    """The bytes that carry ``value`` for ``di``; :class:`LocalProtocolError` if impossible."""
    entry = DATA_IDS.get(di)
    if entry is None:
        raise LocalProtocolError(f"unknown data identifier {di:08X}")
    return entry.encode(value)
