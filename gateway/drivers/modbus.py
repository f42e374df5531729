"""Modbus RTU meter driver: a poll is the cheapest block reads of the meter's profile
(:func:`~gateway.protocols.modbus_plan.plan_reads`), decoded exactly with CT/PT
applied; a write job sends a :class:`~gateway.protocols.modbus.WriteRequest` as is.

Request frames are built once per planned read and reused.  pymodbus builds and
parses the frames (inside :mod:`gateway.protocols.modbus`); it never touches the
port, so its missing t3.5 pacing does not matter: the bus paces.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.config import Meter, SerialBus
from gateway.drivers import profiles
from gateway.drivers.base import MeterDriver, Transaction, WrongAddress
from gateway.drivers.jobs import Job, JobResult, ReadJob
from gateway.errors import LocalProtocolError, RemoteProtocolError
from gateway.protocols.modbus import (
    ModbusExceptionReply,
    ReadReply,
    ReadRequest,
    ReplyReader,
    WriteRequest,
    encode_request,
)
from gateway.protocols.modbus_plan import Plan, plan_reads
from gateway.protocols.quantities import Quantity, Reading

__all__ = ["ModbusDriver", "ModbusReader"]

_EXCEPTION_SIZE = 5


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
        if raw[0] == self.request.unit:
            exception = len(raw) >= 2 and bool(raw[1] & 0x80)
            if len(raw) < (_EXCEPTION_SIZE if exception else self.size):
                return None  # still arriving: decode once it can be whole
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
        return plan, transactions

    def plan(self, job: Job) -> Sequence[Transaction]:
        if isinstance(job, ReadJob):
            if job.dis:
                raise LocalProtocolError("a Modbus read names quantities, not DIs")
            return self._plan(tuple(sorted(set(job.quantities))))[1]
        frame = job.frame
        if not isinstance(frame, WriteRequest):
            raise LocalProtocolError(f"a Modbus write job carries a WriteRequest, not {frame!r}")
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
        plan = self._plan(tuple(sorted(set(job.quantities))))[0]
        if len(replies) < len(plan.requests):
            return JobResult(self.id, False)
        registers = []
        for _, reply in replies:
            if not isinstance(reply, ReadReply):
                raise RemoteProtocolError(f"unexpected reply {reply!r}")
            registers.append(reply.registers)
        m = self.meter
        values = plan.decode(registers, self.profile.word_order, ct=m.ct_ratio, pt=m.pt_ratio)
        return JobResult(self.id, True, reading=Reading(m.id, ts_ms, values))
