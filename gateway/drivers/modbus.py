"""Modbus RTU meter driver: a poll is the cheapest block reads of the meter's profile
(:func:`~gateway.protocols.modbus_plan.plan_reads`), decoded exactly with CT/PT
applied; a write job sends a :class:`~gateway.protocols.modbus.WriteRequest` as is, or
reads raw registers (a :class:`~gateway.protocols.modbus.ReadRequest`, FC03/FC04) or one
coil (:class:`CoilRead`, FC01) and gives the reply.

Relays (the profile's :class:`~gateway.drivers.profiles.RelaySpec`): :func:`relay_command`
builds the write that opens or closes it (FC05 coil, FC06 holding register),
:func:`relay_readback` the read of the same coil or register, and
:func:`relay_position` says from its result whether the relay is open.

Request frames are built once per planned read and reused.  pymodbus builds the
frames and parses anything unusual (inside :mod:`gateway.protocols.modbus`); it never
touches the port, so its missing t3.5 pacing does not matter: the bus paces.

Hot path.  A whole, well-formed read reply (right unit, function, byte count and CRC)
is unpacked directly, and its registers are decoded with integer arithmetic from
factors computed once per planned read (:class:`_Field`): the float32's exact
``as_integer_ratio()`` times the exact factor, rounded half to even - the very value
:func:`~gateway.protocols.modbus.decode_register` gives with Fractions (the tests
check it), at a fraction of the CPU time.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.config import Meter, SerialBus
from gateway.drivers import profiles
from gateway.drivers.base import MeterDriver, Transaction, WrongAddress
from gateway.drivers.jobs import Job, JobResult, ReadJob, WriteJob
from gateway.drivers.profiles import RelaySpec
from gateway.errors import LocalProtocolError, RemoteProtocolError
from gateway.protocols.modbus import (
    DataType,
    ModbusExceptionReply,
    ReadReply,
    ReadRequest,
    RegisterSpec,
    ReplyReader,
    WordOrder,
    WriteRequest,
    encode_request,
    ratio_factor,
)
from gateway.protocols.modbus_plan import Plan, plan_reads
from gateway.protocols.quantities import Quantity, Reading

__all__ = [
    "CoilRead",
    "CoilReply",
    "ModbusDriver",
    "ModbusReader",
    "relay_command",
    "relay_position",
    "relay_readback",
]

_EXCEPTION_SIZE = 5


@dataclass(frozen=True, slots=True)
class _Field:
    """One register of a planned read, ready for integer decoding."""

    quantity: Quantity
    offset: int
    """Word offset in the reply."""
    type: DataType
    little: bool
    num: int
    den: int

    @classmethod
    def of(cls, spec: RegisterSpec, start: int, order: WordOrder, ct: int, pt: int) -> _Field:
        factor = spec.factor * ratio_factor(spec.quantity, ct, pt)
        little = order is WordOrder.LITTLE
        return cls(
            spec.quantity,
            spec.address - start,
            spec.type,
            little,
            factor.numerator,
            factor.denominator,
        )

    def decode(self, regs: Sequence[int]) -> int:
        o = self.offset
        t = self.type
        if t.words == 2:
            hi, lo = (regs[o + 1], regs[o]) if self.little else (regs[o], regs[o + 1])
            raw = hi << 16 | lo
            if t is DataType.FLOAT32:
                (x,) = _FLOAT.unpack(raw.to_bytes(4, "big"))
                if not math.isfinite(x):
                    raise RemoteProtocolError(f"float32 register is not finite: {raw:08x} = {x}")
                n, d = x.as_integer_ratio()
                return _round_half_even(n * self.num, d * self.den)
            if t is DataType.INT32 and raw & 0x8000_0000:
                raw -= 1 << 32
        else:
            raw = regs[o]
            if t is DataType.INT16 and raw & 0x8000:
                raw -= 1 << 16
        return _round_half_even(raw * self.num, self.den)


_FLOAT = struct.Struct(">f")


def _round_half_even(a: int, b: int) -> int:
    """``a / b`` (b > 0) rounded to the nearest integer, ties to even (as ``round``)."""
    q, r = divmod(a, b)
    twice = 2 * r
    if twice > b or (twice == b and q & 1):
        q += 1
    return q


def _crc_ok(frame: bytes) -> bool:
    from pymodbus.framer import FramerRTU

    return bool(FramerRTU.check_CRC(frame[:-2], int.from_bytes(frame[-2:], "big")))


class ModbusReader:
    """One reply to ``request``; a whole valid frame from another unit is WrongAddress."""

    def __init__(self, request: ReadRequest | WriteRequest) -> None:
        self.request = request
        self.size = request.reply_size
        self._raw = bytearray()

    def feed(self, data: bytes) -> object | None:
        """The reply (a :class:`ModbusExceptionReply` instance for an exception reply)."""
        raw = self._raw
        raw += data
        request = self.request
        if raw[0] == request.unit:
            exception = len(raw) >= 2 and bool(raw[1] & 0x80)
            if len(raw) < (_EXCEPTION_SIZE if exception else self.size):
                return None  # still arriving: decode once it can be whole
            if (
                isinstance(request, ReadRequest)
                and len(raw) == self.size
                and raw[1] == request.function_code
                and raw[2] == 2 * request.count
                and _crc_ok(bytes(raw))
            ):
                registers = struct.unpack(f">{request.count}H", raw[3:-2])
                return ReadReply(request.unit, request.function_code, registers)
        try:
            reply = ReplyReader(self.request).feed(bytes(raw))
        except ModbusExceptionReply as exc:
            return exc
        if reply is None and len(raw) >= self.size:
            frame = bytes(raw[: self.size])
            if frame[0] != self.request.unit and _crc_ok(frame):
                raise WrongAddress(f"reply from unit {frame[0]}, asked {self.request.unit}")
        return reply

    def needed(self) -> int:
        raw = self._raw
        if len(raw) >= 2 and raw[0] == self.request.unit and raw[1] & 0x80:
            return max(1, _EXCEPTION_SIZE - len(raw))
        return max(1, self.size - len(raw))


@dataclass(frozen=True, slots=True)
class CoilRead:
    """Read one coil (FC01) of ``unit`` at ``address`` (a relay declared as a coil)."""

    unit: int
    address: int

    def encode(self) -> bytes:
        body = struct.pack(">BBHH", self.unit, 1, self.address, 1)
        return body + _crc(body)


@dataclass(frozen=True, slots=True)
class CoilReply:
    """The state of the coil a :class:`CoilRead` asked for (1 on, 0 off)."""

    unit: int
    value: int


def _crc(body: bytes) -> bytes:
    from pymodbus.framer import FramerRTU

    return int(FramerRTU.compute_CRC(body)).to_bytes(2, "big")


class CoilReader:
    """The reply to a :class:`CoilRead`: 6 bytes (unit, 01, 1, bits, CRC) or an exception."""

    size = 6

    def __init__(self, request: CoilRead) -> None:
        self.request = request
        self._raw = bytearray()

    def feed(self, data: bytes) -> object | None:
        raw = self._raw
        raw += data
        unit = self.request.unit
        if len(raw) >= 2 and raw[0] == unit and raw[1] == 0x81:
            if len(raw) < _EXCEPTION_SIZE:
                return None
            if not _crc_ok(bytes(raw[:_EXCEPTION_SIZE])):
                raise RemoteProtocolError("bad CRC in an exception reply")
            return ModbusExceptionReply(unit, 1, raw[2])
        if len(raw) < self.size:
            return None
        frame = bytes(raw[: self.size])
        if not _crc_ok(frame):
            raise RemoteProtocolError("bad CRC in a read-coil reply")
        if frame[0] != unit:
            raise WrongAddress(f"reply from unit {frame[0]}, asked {unit}")
        if frame[1] != 1 or frame[2] != 1:
            raise RemoteProtocolError(f"unexpected read-coil reply {frame.hex()}")
        return CoilReply(unit, frame[3] & 1)

    def needed(self) -> int:
        raw = self._raw
        if len(raw) >= 2 and raw[1] & 0x80:
            return max(1, _EXCEPTION_SIZE - len(raw))
        return max(1, self.size - len(raw))


def relay_command(meter_id: str, unit: int, relay: RelaySpec, *, open_: bool) -> WriteJob:
    """The write that opens (trips, ``open_``) or closes the relay of a meter."""
    value = relay.off_value if open_ else relay.on_value
    fc = 5 if relay.kind == "coil" else 6
    return WriteJob(meter_id, WriteRequest(unit, fc, relay.address, value))


def relay_readback(meter_id: str, unit: int, relay: RelaySpec) -> WriteJob:
    """The read of the relay's coil (FC01) or holding register (FC03)."""
    if relay.kind == "coil":
        return WriteJob(meter_id, CoilRead(unit, relay.address))
    return WriteJob(meter_id, ReadRequest(unit, 3, relay.address, 1))


def relay_position(result: JobResult, relay: RelaySpec) -> bool | None:
    """From a :func:`relay_readback` result: True open, False closed, None unknown (no
    answer, or a value that is neither the profile's on nor its off value)."""
    reply = result.reply if result.ok else None
    if isinstance(reply, CoilReply):
        value = reply.value
    elif isinstance(reply, ReadReply) and len(reply.registers) == 1:
        value = reply.registers[0]
    else:
        return None
    if value == relay.off_value:
        return True
    if value == relay.on_value:
        return False
    return None


class ModbusDriver(MeterDriver):
    """A Modbus RTU meter: ``meter.unit_id`` with the register map ``meter.profile``."""

    protocol = "modbus"
    default_retries = 1

    def __init__(self, meter: Meter, bus: SerialBus) -> None:
        if meter.unit_id is None or meter.profile is None:
            raise LocalProtocolError(f"meter {meter.id} needs unit_id and profile")
        self.profile = profiles.get(meter.profile)
        super().__init__(meter, bus)
        self.unit = meter.unit_id
        self._plans: dict[tuple[Quantity, ...], tuple[Plan, list[Transaction]]] = {}
        self._fields: dict[tuple[Quantity, ...], list[list[_Field]]] = {}
        self.poll_plan = self._plan(())[0]

    def default_allowance(self) -> float:
        """Three times the profile's turnaround plus 50 ms (Modbus sets no limit)."""
        return 3 * self.profile.turnaround_ms / 1000 + 0.05

    def _plan(self, wanted: tuple[Quantity, ...]) -> tuple[Plan, list[Transaction]]:
        cached = self._plans.get(wanted)
        if cached is not None:
            return cached
        p = self.profile
        registers = [p.register(q) for q in wanted] if wanted else list(p.registers)
        plan = plan_reads(
            registers, self.line, turnaround=p.turnaround_ms / 1000, max_registers=p.max_registers
        )
        transactions = []
        for read in plan.requests:
            request = read.request(self.unit, p.function_code)
            transactions.append(
                Transaction(
                    encode_request(request),
                    lambda r=request: ModbusReader(r),  # type: ignore[misc]
                    max_reply=request.reply_size,
                    key=read,
                )
            )
        self._plans[wanted] = (plan, transactions)
        m = self.meter
        self._fields[wanted] = [
            [
                _Field.of(spec, read.start, p.word_order, m.ct_ratio, m.pt_ratio)
                for spec in read.registers
            ]
            for read in plan.requests
        ]
        return plan, transactions

    def plan(self, job: Job) -> Sequence[Transaction]:
        if isinstance(job, ReadJob):
            if job.dis:
                raise LocalProtocolError("a Modbus read names quantities, not DIs")
            return self._plan(tuple(sorted(set(job.quantities))))[1]
        frame = job.frame
        if isinstance(frame, CoilRead):
            if frame.unit != self.unit:
                raise LocalProtocolError(f"read of unit {frame.unit} on meter unit {self.unit}")
            return [
                Transaction(
                    frame.encode(), lambda: CoilReader(frame), max_reply=CoilReader.size, key=frame
                )
            ]
        if not isinstance(frame, WriteRequest | ReadRequest):
            raise LocalProtocolError(
                f"a Modbus write job carries a WriteRequest, ReadRequest or CoilRead, not {frame!r}"
            )
        if frame.unit != self.unit:
            raise LocalProtocolError(f"write to unit {frame.unit} on meter unit {self.unit}")
        reader = None if not job.expect_reply else (lambda: ModbusReader(frame))
        return [Transaction(encode_request(frame), reader, max_reply=frame.reply_size, key=frame)]

    def finish(
        self, job: Job, replies: Sequence[tuple[Transaction, object]], ts_ms: int
    ) -> JobResult:
        for _, reply in replies:
            if isinstance(reply, ModbusExceptionReply):
                return JobResult(
                    self.id,
                    False,
                    reply=reply,
                    error=str(reply),
                    cause=f"negative:{reply.code:02x}",
                )
        if not isinstance(job, ReadJob):
            return JobResult(self.id, True, reply=replies[-1][1] if replies else None)
        wanted = tuple(sorted(set(job.quantities)))
        plan = self._plan(wanted)[0]
        if len(replies) < len(plan.requests):
            return JobResult(self.id, False)
        values: dict[Quantity, int] = {}
        for (_, reply), read, fields in zip(
            replies, plan.requests, self._fields[wanted], strict=True
        ):
            if not isinstance(reply, ReadReply) or len(reply.registers) != read.count:
                raise RemoteProtocolError(f"unexpected reply {reply!r}")
            for f in fields:
                values[f.quantity] = f.decode(reply.registers)
        return JobResult(self.id, True, reading=Reading(self.meter.id, ts_ms, values))
