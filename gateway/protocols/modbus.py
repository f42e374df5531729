"""Modbus RTU meters, sans-IO: register specs, their exact decoding, and RTU frames.

A meter's register holds a raw number (float32, int32, uint32, int16 or uint16 in
one or two 16-bit words).  :func:`decode_register` turns it into an exact integer in
its :class:`~gateway.protocols.quantities.Quantity`'s unit::

    value = round_half_even(raw x scale x unit factor x CT/PT ratio)

Every factor is a :class:`~fractions.Fraction`.  A float32 is converted with
``Fraction(float(x))``, which is exact (every float32 is a binary fraction a double
holds exactly), so the only rounding is the final one, half to even.  NaN and
infinities are a :class:`~gateway.protocols.errors.RemoteProtocolError`.

Frames are pymodbus's: requests are built and replies parsed with its PDU classes,
``DecodePDU`` and ``FramerRTU`` (CRC included), imported on first use so that code
needing only register specs does not load pymodbus.  Every error a reply can cause
is a :class:`RemoteProtocolError`; a Modbus exception reply is the subclass
:class:`ModbusExceptionReply`, which names its exception code.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from gateway.protocols.errors import LocalProtocolError, RemoteProtocolError
from gateway.protocols.quantities import UNITS, Quantity

if TYPE_CHECKING:
    from pymodbus.framer import FramerRTU
    from pymodbus.pdu import DecodePDU

__all__ = [
    "EXCEPTION_NAMES",
    "READ_REQUEST_SIZE",
    "UNIT_FACTORS",
    "DataType",
    "ModbusExceptionReply",
    "ReadReply",
    "ReadRequest",
    "RegisterSpec",
    "ReplyReader",
    "WordOrder",
    "WriteReply",
    "WriteRequest",
    "decode_register",
    "decode_reply",
    "decode_request",
    "encode_exception",
    "encode_reply",
    "encode_request",
    "ratio_factor",
    "raw_value",
    "read_reply_size",
    "unit_factor",
]


class DataType(StrEnum):
    """How a register's words encode its number."""

    FLOAT32 = "float32"
    INT32 = "int32"
    UINT32 = "uint32"
    INT16 = "int16"
    UINT16 = "uint16"

    @property
    def words(self) -> int:
        """16-bit registers this type occupies."""
        return 1 if self in (DataType.INT16, DataType.UINT16) else 2


class WordOrder(StrEnum):
    """Order of the two words of a 32-bit value (bytes within a word are always big-endian)."""

    BIG = "big"
    """High word first (Modbus convention; Eastron, Chint)."""
    LITTLE = "little"
    """Low word first ("word swapped")."""


# (meter's unit, quantity's unit) -> exact factor.
UNIT_FACTORS: dict[tuple[str, str], Fraction] = {
    ("Wh", "Wh"): Fraction(1),
    ("kWh", "Wh"): Fraction(1000),
    ("MWh", "Wh"): Fraction(1_000_000),
    ("W", "W"): Fraction(1),
    ("kW", "W"): Fraction(1000),
    ("var", "var"): Fraction(1),
    ("kvar", "var"): Fraction(1000),
    ("VA", "VA"): Fraction(1),
    ("kVA", "VA"): Fraction(1000),
    ("V", "dV"): Fraction(10),
    ("dV", "dV"): Fraction(1),
    ("kV", "dV"): Fraction(10_000),
    ("A", "mA"): Fraction(1000),
    ("mA", "mA"): Fraction(1),
    ("Hz", "cHz"): Fraction(100),
    ("cHz", "cHz"): Fraction(1),
    ("1", "milli"): Fraction(1000),
    ("milli", "milli"): Fraction(1),
}
"""Exact conversions from a meter's unit into a quantity's unit (``"1"``: a plain ratio)."""

_CT_QUANTITIES = frozenset(
    {
        Quantity.ENERGY_IMPORT,
        Quantity.ENERGY_EXPORT,
        Quantity.ENERGY_COMBINED,
        Quantity.ENERGY_T1,
        Quantity.ENERGY_T2,
        Quantity.ENERGY_T3,
        Quantity.ENERGY_T4,
        Quantity.POWER,
        Quantity.REACTIVE_POWER,
        Quantity.APPARENT_POWER,
        Quantity.CURRENT_A,
        Quantity.CURRENT_B,
        Quantity.CURRENT_C,
    }
)
_PT_QUANTITIES = (_CT_QUANTITIES - {Quantity.CURRENT_A, Quantity.CURRENT_B, Quantity.CURRENT_C}) | {
    Quantity.VOLTAGE_A,
    Quantity.VOLTAGE_B,
    Quantity.VOLTAGE_C,
}


def unit_factor(unit: str, quantity: Quantity) -> Fraction:
    """Exact factor from ``unit`` into ``quantity``'s unit; LocalProtocolError if none."""
    try:
        return UNIT_FACTORS[(unit, UNITS[quantity])]
    except KeyError:
        known = sorted(src for src, dst in UNIT_FACTORS if dst == UNITS[quantity])
        raise LocalProtocolError(
            f"cannot convert {unit!r} into {UNITS[quantity]} for {quantity.name};"
            f" known units: {', '.join(known)}"
        ) from None


def ratio_factor(quantity: Quantity, ct: int | Fraction = 1, pt: int | Fraction = 1) -> Fraction:
    """The instrument-transformer ratio that multiplies ``quantity``.

    Current x CT; voltage x PT; energy and power (active, reactive, apparent) x CT x PT;
    frequency and power factor are not scaled.
    """
    factor = Fraction(1)
    if quantity in _CT_QUANTITIES:
        factor *= Fraction(ct)
    if quantity in _PT_QUANTITIES:
        factor *= Fraction(pt)
    return factor


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    """Where a meter keeps one quantity and how to read it."""

    quantity: Quantity = field(metadata={"doc": "what the register measures (Quantity name)"})
    address: int = field(metadata={"doc": "first register address, 0-based protocol address"})
    type: DataType = field(metadata={"doc": "float32, int32, uint32, int16 or uint16"})
    unit: str = field(
        metadata={"doc": "the meter's unit after scaling (kWh, Wh, V, A, kW, W, Hz, 1 ...)"}
    )
    scale: Fraction = field(
        default=Fraction(1),
        metadata={"doc": "exact factor from the raw number to the meter's unit (e.g. 1/10)"},
    )

    def __post_init__(self) -> None:
        if not 0 <= self.address <= 0xFFFF - (self.words - 1):
            raise LocalProtocolError(f"{self.quantity.name}: address {self.address} out of range")
        if not isinstance(self.scale, Fraction) or self.scale == 0:
            raise LocalProtocolError(f"{self.quantity.name}: scale must be a non-zero Fraction")
        unit_factor(self.unit, self.quantity)  # refuses an unknown unit now, not at decode time

    @property
    def words(self) -> int:
        """Registers this value occupies."""
        return self.type.words

    @property
    def end(self) -> int:
        """One past the last register address."""
        return self.address + self.words

    @property
    def factor(self) -> Fraction:
        """Exact factor from the raw number into the quantity's unit (before CT/PT)."""
        return self.scale * unit_factor(self.unit, self.quantity)


def raw_value(words: Sequence[int], type_: DataType, word_order: WordOrder) -> Fraction:
    """The exact number held by ``words`` (16-bit each) as ``type_`` in ``word_order``."""
    if len(words) != type_.words:
        raise RemoteProtocolError(f"{type_} needs {type_.words} registers, got {len(words)}")
    if any(not 0 <= w <= 0xFFFF for w in words):
        raise RemoteProtocolError(f"register words out of range: {list(words)}")
    ordered = list(words) if word_order is WordOrder.BIG else list(reversed(words))
    data = b"".join(w.to_bytes(2, "big") for w in ordered)
    if type_ is DataType.FLOAT32:
        (number,) = struct.unpack(">f", data)
        if not math.isfinite(number):
            raise RemoteProtocolError(f"float32 register is not finite: {data.hex()} = {number}")
        return Fraction(number)  # exact: a float32 widened to a double loses nothing
    signed = type_ in (DataType.INT16, DataType.INT32)
    return Fraction(int.from_bytes(data, "big", signed=signed))


def decode_register(
    spec: RegisterSpec,
    words: Sequence[int],
    word_order: WordOrder = WordOrder.BIG,
    *,
    ct: int | Fraction = 1,
    pt: int | Fraction = 1,
) -> int:
    """``words`` of ``spec`` as an integer in its quantity's unit, CT/PT applied.

    One rounding, half to even, after all exact multiplications.
    """
    exact = raw_value(words, spec.type, word_order) * spec.factor
    exact *= ratio_factor(spec.quantity, ct, pt)
    return round(exact)


# --- RTU frames -------------------------------------------------------------------

READ_REQUEST_SIZE = 8
"""Bytes of an FC03/FC04 request: unit, function, address (2), count (2), CRC (2)."""

EXCEPTION_NAMES: dict[int, str] = {
    0x01: "ILLEGAL_FUNCTION",
    0x02: "ILLEGAL_DATA_ADDRESS",
    0x03: "ILLEGAL_DATA_VALUE",
    0x04: "SERVER_DEVICE_FAILURE",
    0x05: "ACKNOWLEDGE",
    0x06: "SERVER_DEVICE_BUSY",
    0x07: "NEGATIVE_ACKNOWLEDGE",
    0x08: "MEMORY_PARITY_ERROR",
    0x0A: "GATEWAY_PATH_UNAVAILABLE",
    0x0B: "GATEWAY_TARGET_FAILED_TO_RESPOND",
}
"""Modbus exception codes (Modbus application protocol v1.1b3, section 7)."""

_READ_FCS = (3, 4)
_WRITE_FCS = (5, 6)
_COIL_ON = 0xFF00


def read_reply_size(count: int) -> int:
    """Bytes of the reply to a read of ``count`` registers: unit, fc, byte count, data, CRC."""
    return 5 + 2 * count


class ModbusExceptionReply(RemoteProtocolError):
    """The meter answered with a Modbus exception; ``code`` and ``name`` say which."""

    def __init__(self, unit: int, function_code: int, code: int) -> None:
        self.unit = unit
        self.function_code = function_code
        self.code = code
        self.name = EXCEPTION_NAMES.get(code, f"UNKNOWN_EXCEPTION_{code}")
        super().__init__(
            f"unit {unit} refused function {function_code}: exception {code} {self.name}"
        )


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """Read ``count`` holding (FC03) or input (FC04) registers from ``address``."""

    unit: int
    function_code: int
    address: int
    count: int

    def __post_init__(self) -> None:
        _check_unit(self.unit)
        if self.function_code not in _READ_FCS:
            raise LocalProtocolError(f"read function code must be 3 or 4: {self.function_code}")
        if not 1 <= self.count <= 125:
            raise LocalProtocolError(f"register count must be 1..125: {self.count}")
        if not 0 <= self.address <= 0x10000 - self.count:
            raise LocalProtocolError(f"registers {self.address}+{self.count} past 65535")

    @property
    def reply_size(self) -> int:
        """Bytes of a normal reply."""
        return read_reply_size(self.count)


@dataclass(frozen=True, slots=True)
class ReadReply:
    """The registers a meter returned, in order from the request's address."""

    unit: int
    function_code: int
    registers: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """Write one coil (FC05, value 0 or 1) or one holding register (FC06)."""

    unit: int
    function_code: int
    address: int
    value: int

    def __post_init__(self) -> None:
        _check_unit(self.unit)
        if self.function_code not in _WRITE_FCS:
            raise LocalProtocolError(f"write function code must be 5 or 6: {self.function_code}")
        if not 0 <= self.address <= 0xFFFF:
            raise LocalProtocolError(f"address out of range: {self.address}")
        top = 1 if self.function_code == 5 else 0xFFFF
        if not 0 <= self.value <= top:
            raise LocalProtocolError(f"value {self.value} out of range 0..{top}")

    @property
    def reply_size(self) -> int:
        """Bytes of a normal reply (an echo of the request)."""
        return 8


@dataclass(frozen=True, slots=True)
class WriteReply:
    """The meter's echo of a write."""

    unit: int
    function_code: int
    address: int
    value: int


Request = ReadRequest | WriteRequest
Reply = ReadReply | WriteReply


def _check_unit(unit: int) -> None:
    if not 1 <= unit <= 247:
        raise LocalProtocolError(f"unit id must be 1..247 (0 is broadcast): {unit}")


@functools.cache
def _framer(is_server: bool) -> FramerRTU:
    from pymodbus.framer import FramerRTU
    from pymodbus.pdu import DecodePDU

    return FramerRTU(DecodePDU(is_server))


def _decoder(is_server: bool) -> DecodePDU:
    return _framer(is_server).decoder


def _pdu(message: Request | Reply) -> Any:
    from pymodbus.pdu import bit_message as bits
    from pymodbus.pdu import register_message as regs

    unit = message.unit
    if isinstance(message, ReadRequest):
        cls = (
            regs.ReadHoldingRegistersRequest
            if message.function_code == 3
            else regs.ReadInputRegistersRequest
        )
        return cls(address=message.address, count=message.count, dev_id=unit)
    if isinstance(message, ReadReply):
        rcls = (
            regs.ReadHoldingRegistersResponse
            if message.function_code == 3
            else regs.ReadInputRegistersResponse
        )
        return rcls(registers=list(message.registers), dev_id=unit)
    if message.function_code == 5:
        wcls = (
            bits.WriteSingleCoilRequest
            if isinstance(message, WriteRequest)
            else bits.WriteSingleCoilResponse
        )
        return wcls(address=message.address, bits=[bool(message.value)], dev_id=unit)
    scls = (
        regs.WriteSingleRegisterRequest
        if isinstance(message, WriteRequest)
        else regs.WriteSingleRegisterResponse
    )
    return scls(address=message.address, registers=[message.value], dev_id=unit)


def encode_request(request: Request) -> bytes:
    """The RTU frame of ``request`` (unit, PDU, CRC), built by pymodbus."""
    return bytes(_framer(False).buildFrame(_pdu(request)))


def encode_reply(reply: Reply) -> bytes:
    """The RTU frame of a meter's reply (used by the simulator and tests)."""
    if isinstance(reply, ReadReply) and not 1 <= len(reply.registers) <= 125:
        raise LocalProtocolError(f"a read reply carries 1..125 registers: {len(reply.registers)}")
    if isinstance(reply, ReadReply) and any(not 0 <= r <= 0xFFFF for r in reply.registers):
        raise LocalProtocolError("register values must be 0..65535")
    return bytes(_framer(True).buildFrame(_pdu(reply)))


def encode_exception(unit: int, function_code: int, code: int) -> bytes:
    """The RTU frame of a Modbus exception reply (used by the simulator and tests)."""
    from pymodbus.pdu import ExceptionResponse

    _check_unit(unit)
    return bytes(_framer(True).buildFrame(ExceptionResponse(function_code, code, device_id=unit)))


def _frame_size(data: bytes, decoder: DecodePDU) -> int | None:
    """Length of the frame ``data`` starts with, or None while too few bytes are in."""
    if len(data) < 2:
        return None
    pdu_class = decoder.lookupPduClass(data)
    if pdu_class is None:
        raise RemoteProtocolError(f"unknown function code 0x{data[1]:02X}")
    size = int(pdu_class.calculateRtuFrameSize(data))
    return size or None


def _check_crc(frame: bytes) -> None:
    from pymodbus.framer import FramerRTU

    if not FramerRTU.check_CRC(frame[:-2], int.from_bytes(frame[-2:], "big")):
        expected = FramerRTU.compute_CRC(frame[:-2])
        raise RemoteProtocolError(
            f"bad CRC in {frame.hex(' ')}: got {frame[-2:].hex()}, expected {expected:04x}"
        )


class ReplyReader:
    """Bytes from the line in, the reply to ``request`` out (sans-IO).

    :meth:`feed` returns ``None`` until a whole frame is in.  Bytes before a frame
    that cannot start the awaited reply (line noise, another unit) are skipped and
    counted in :attr:`dropped`.  Bad CRC, a wrong length and an exception reply
    raise :class:`RemoteProtocolError` (an exception reply as
    :class:`ModbusExceptionReply`).
    """

    def __init__(self, request: Request) -> None:
        self.request = request
        self.dropped = 0
        self._buffer = b""

    def feed(self, data: bytes) -> Reply | None:
        """Add received bytes; the decoded reply once it is complete."""
        self._buffer += data
        want = (self.request.unit, self.request.function_code)
        while self._buffer:
            head = self._buffer[:2]
            if len(head) == 2 and (head[0], head[1] & 0x7F) == want:
                break
            if len(head) == 1 and head[0] == want[0]:
                return None
            self._buffer = self._buffer[1:]
            self.dropped += 1
        request = self.request
        if (
            isinstance(request, ReadRequest)
            and len(self._buffer) >= 3
            and not self._buffer[1] & 0x80
            and self._buffer[2] != 2 * request.count
        ):
            raise RemoteProtocolError(
                f"asked for {request.count} registers, reply announces {self._buffer[2]} bytes"
            )
        try:
            size = _frame_size(self._buffer, _decoder(False))
        except (ValueError, IndexError) as exc:  # pragma: no cover - pymodbus internals
            raise RemoteProtocolError(f"cannot size frame {self._buffer.hex(' ')}") from exc
        if size is None or len(self._buffer) < size:
            return None
        frame, self._buffer = self._buffer[:size], self._buffer[size:]
        return _decode_reply_frame(self.request, frame)

    @property
    def pending(self) -> bytes:
        """Bytes received but not yet part of a frame."""
        return self._buffer


def _decode_reply_frame(request: Request, frame: bytes) -> Reply:
    _check_crc(frame)
    pdu = _decoder(False).decode(frame[1:-2])
    if pdu is None:
        raise RemoteProtocolError(f"pymodbus cannot decode {frame.hex(' ')}")
    if pdu.function_code & 0x80:
        raise ModbusExceptionReply(frame[0], pdu.function_code & 0x7F, pdu.exception_code)
    if isinstance(request, ReadRequest):
        if len(frame) != request.reply_size or frame[2] != 2 * request.count:
            raise RemoteProtocolError(
                f"asked for {request.count} registers, reply carries {frame[2]} bytes"
            )
        return ReadReply(request.unit, request.function_code, tuple(pdu.registers))
    value = (1 if pdu.bits[0] else 0) if request.function_code == 5 else pdu.registers[0]
    reply = WriteReply(request.unit, request.function_code, pdu.address, value)
    if (reply.address, reply.value) != (request.address, request.value):
        raise RemoteProtocolError(f"write echo {reply} does not match {request}")
    return reply


def decode_reply(request: Request, frame: bytes) -> Reply:
    """Decode one whole reply frame to ``request``; RemoteProtocolError if it is not one."""
    reader = ReplyReader(request)
    reply = reader.feed(frame)
    if reply is None:
        raise RemoteProtocolError(f"truncated reply: {frame.hex(' ')}")
    if reader.dropped or reader.pending:
        raise RemoteProtocolError(
            f"reply has {reader.dropped} stray bytes before and"
            f" {len(reader.pending)} after the frame"
        )
    return reply


def decode_request(frame: bytes) -> Request:
    """Decode one whole request frame (the meter's side: simulator and tests)."""
    decoder = _decoder(True)
    try:
        size = _frame_size(frame, decoder)
    except (ValueError, IndexError) as exc:  # pragma: no cover - pymodbus internals
        raise RemoteProtocolError(f"cannot size frame {frame.hex(' ')}") from exc
    if size is None or size != len(frame):
        raise RemoteProtocolError(f"not one whole request frame: {frame.hex(' ')}")
    _check_crc(frame)
    pdu = decoder.decode(frame[1:-2])
    if pdu is None:
        raise RemoteProtocolError(f"pymodbus cannot decode {frame.hex(' ')}")
    fc = int(pdu.function_code)
    try:
        if fc in _READ_FCS:
            return ReadRequest(frame[0], fc, pdu.address, pdu.count)
        if fc == 5:
            coil = int.from_bytes(frame[4:6], "big")
            if coil not in (0, _COIL_ON):
                raise RemoteProtocolError(f"coil value must be 0x0000 or 0xFF00: 0x{coil:04X}")
            return WriteRequest(frame[0], fc, pdu.address, 1 if coil else 0)
        if fc == 6:
            return WriteRequest(frame[0], fc, pdu.address, pdu.registers[0])
    except LocalProtocolError as exc:
        raise RemoteProtocolError(f"invalid request {frame.hex(' ')}: {exc}") from exc
    raise RemoteProtocolError(f"unsupported function code {fc}")
