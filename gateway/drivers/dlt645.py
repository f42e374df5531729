"""DL/T 645-2007 meter driver: read DIs (a periodic poll is a set of block DIs) and send
protocol events as they are, through :mod:`gateway.protocols.dlt645`.

Relays: :func:`relay_command` builds the remote control (1C) job of a trip or a close
with its validity deadline, :func:`relay_readback` the read of status word 3 and
:func:`relay_position` reads bit 4 (relay open) from its result.

The periodic poll (:data:`POLL_DIS`) reads blocks where a block carries more than one
quantity the gateway keeps: forward energy with its four tariffs (0001FF00), the
phase voltages (0201FF00) and currents (0202FF00); power, power factor, frequency and
reverse energy are single DIs because their blocks add only per-phase values the
gateway does not keep.  A DI the meter answers "no such data" is left out of its
later polls.  Requests carry :attr:`Dlt645Driver.preamble` FE wake-up bytes (the
standard asks for 1 to 4 before a frame).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, time

from gateway.config import Meter, SerialBus
from gateway.drivers.base import MeterDriver, Transaction, WrongAddress
from gateway.drivers.jobs import Job, JobResult, ReadJob, WriteJob
from gateway.errors import LocalProtocolError, RemoteProtocolError
from gateway.protocols.dlt645 import (
    BROADCAST_ADDRESS,
    ErrorBits,
    Framer,
    NegativeReply,
    ReadReply,
    ReadRequest,
    RelayAction,
    RelayControl,
    StatusWord3,
    decode_raw,
    decode_value,
    encode,
    encode_raw,
    quantities,
)
from gateway.protocols.modbus import ratio_factor
from gateway.protocols.quantities import Quantity, Reading

__all__ = [
    "ENERGY_DI",
    "METER_NUMBER_DI",
    "POLL_DIS",
    "RELAY_STATE_DI",
    "Dlt645Driver",
    "Dlt645Reader",
    "meter_clock",
    "meter_clock_read",
    "relay_command",
    "relay_position",
    "relay_readback",
]

ENERGY_DI = 0x0001FF00
"""Forward active energy, total and tariffs 1-4: what billing needs."""

POLL_DIS: tuple[int, ...] = (
    0x00020000,  # reverse active energy total
    0x0201FF00,  # voltages A, B, C
    0x0202FF00,  # currents A, B, C
    0x02030000,  # total active power
    0x02060000,  # total power factor
    0x02800002,  # frequency
    ENERGY_DI,  # forward active energy: total and tariffs 1-4
)
"""DIs of a periodic poll, in order.  Forward energy is read last and the reading is of
the moment it was asked: the reply that may exhaust a balance ends the poll, so a trip
(:data:`~gateway.drivers.jobs.Priority.RELAY`) follows it on the wire after one silent
gap instead of after the rest of the poll."""

METER_NUMBER_DI = 0x04000402
"""Meter number (nameplate), checked at start and daily."""

RELAY_STATE_DI = 0x04000503
"""Status word 3: bit 4 relay open, bit 6 relay command open, bit 12 protect mode."""

_HEADER = 10  # 68, address (6), 68, C, L
_MAX_FRAME = 4 + _HEADER + 255 + 2


class Dlt645Reader:
    """Reads one reply from ``address``: the frame answering a request with control
    ``function`` (and DI ``di`` for a read).  Frames sent towards meters (an adapter's
    echo) are skipped; a frame from another address is :class:`WrongAddress`."""

    def __init__(self, address: str, function: int, di: int | None = None) -> None:
        self.address = address
        self.function = function
        self.di = di
        self._framer = Framer()
        self._buf = bytearray()

    def feed(self, data: bytes) -> object | None:
        before = self._framer.stats.bad_checksums + self._framer.stats.bad_end_bytes
        raws = self._framer.feed_raw(data)
        pending = self._framer.pending  # what the framer holds: the start of a frame
        self._buf = bytearray((self._buf + data)[-pending:]) if pending else bytearray()
        for raw in raws:
            if not raw.control & 0x80:
                continue  # our own request echoed
            if raw.address != self.address:
                raise WrongAddress(f"reply from {raw.address}, asked {self.address}")
            if raw.control & 0x1F != self.function:
                raise RemoteProtocolError(
                    f"reply control {raw.control:02X} to function {self.function:02X}"
                )
            event = decode_raw(raw)
            if isinstance(event, ReadReply) and self.di is not None and event.di != self.di:
                raise RemoteProtocolError(f"reply for DI {event.di:08X}, asked {self.di:08X}")
            return event
        stats = self._framer.stats
        if stats.bad_checksums + stats.bad_end_bytes > before:
            raise RemoteProtocolError(f"bad frame: {stats.last_error}")
        return None

    def needed(self) -> int:
        buf = self._buf
        start = buf.find(0x68)
        if start < 0:
            return _HEADER + 2
        have = len(buf) - start
        if have < _HEADER:
            return _HEADER + 2 - have
        return max(1, _HEADER + buf[start + 9] + 2 - have)


class Dlt645Driver(MeterDriver):
    """A DL/T 645-2007 meter at ``meter.address``."""

    protocol = "dlt645"
    default_retries = 1
    preamble = 4

    def __init__(self, meter: Meter, bus: SerialBus) -> None:
        if meter.address is None:
            raise LocalProtocolError(f"meter {meter.id} has no DL/T 645 address")
        super().__init__(meter, bus)
        self.address = meter.address
        self.poll_dis: list[int] = list(POLL_DIS)
        self.unsupported: set[int] = set()
        self._requests: dict[int, bytes] = {}

    def default_allowance(self) -> float:
        """DL/T 645-2007: a meter answers within 500 ms of the request."""
        return 0.5

    def _read(self, di: int) -> Transaction:
        request = self._requests.get(di)
        if request is None:
            request = encode(ReadRequest(self.address, di), preamble=self.preamble)
            self._requests[di] = request
        address = self.address
        return Transaction(
            request,
            lambda: Dlt645Reader(address, 0x11, di),
            max_reply=_MAX_FRAME,
            key=di,
            stamps=di == ENERGY_DI,
        )

    def plan(self, job: Job) -> Sequence[Transaction]:
        if isinstance(job, ReadJob):
            if job.quantities:
                raise LocalProtocolError("a DL/T 645 read names DIs, not quantities")
            return [self._read(di) for di in (job.dis or self.poll_dis)]
        frame = job.frame
        address = getattr(frame, "address", None)
        function = encode_control(frame)
        request = encode(frame, preamble=self.preamble)  # type: ignore[arg-type]
        if not job.expect_reply or address == BROADCAST_ADDRESS:
            return [Transaction(request, None, key=frame)]
        assert isinstance(address, str)
        return [
            Transaction(
                request, lambda: Dlt645Reader(address, function), max_reply=_MAX_FRAME, key=frame
            )
        ]

    def finish(
        self, job: Job, replies: Sequence[tuple[Transaction, object]], ts_ms: int
    ) -> JobResult:
        if not isinstance(job, ReadJob):
            reply = replies[-1][1] if replies else None
            if isinstance(reply, NegativeReply):
                return JobResult(
                    self.id,
                    False,
                    reply=reply,
                    error=f"refused: {reply.error!r}",
                    cause=f"negative:{int(reply.error):02x}",
                )
            return JobResult(self.id, True, reply=reply)
        values: dict[int, object] = {}
        refused: list[NegativeReply] = []
        mapped: dict[Quantity, int] = {}
        for t, reply in replies:
            if isinstance(reply, NegativeReply):
                refused.append(reply)
                if not job.dis and reply.error & ErrorBits.NO_DATA and isinstance(t.key, int):
                    self.unsupported.add(t.key)
                    if t.key in self.poll_dis and len(self.poll_dis) > 1:
                        self.poll_dis.remove(t.key)
                continue
            if not isinstance(reply, ReadReply):
                raise RemoteProtocolError(f"unexpected reply {reply!r}")
            value = decode_value(reply.di, reply.data)
            values[reply.di] = value
            mapped.update(quantities(reply.di, value))
        reading = None
        if mapped:
            m = self.meter
            scaled = {
                q: int(v * ratio_factor(q, m.ct_ratio, m.pt_ratio)) for q, v in mapped.items()
            }
            reading = Reading(m.id, ts_ms, scaled)
        if refused and (job.dis or not values):
            bits = int(refused[0].error)
            return JobResult(
                self.id,
                False,
                values,
                reading,
                error=f"meter refused: {refused[0].error!r}",
                cause=f"negative:{bits:02x}",
            )
        return JobResult(self.id, True, values, reading)


def encode_control(frame: object) -> int:
    """The function code (bits 4..0 of C) a frame's request carries."""
    return encode_raw(frame).control & 0x1F  # type: ignore[arg-type]


def relay_command(
    meter_id: str, address: str, action: RelayAction, valid_until: datetime
) -> WriteJob:
    """The remote control (1C) job of ``action`` (trip, close-allow, close) to a meter.

    ``valid_until`` is the meter's local wall time (naive) after which it refuses the
    command; password level 02 and password 000000 (the factory setting; a secure
    meter, level 98, needs the master's ciphertext and is not driven from here)."""
    deadline = valid_until.replace(tzinfo=None, microsecond=0)  # the frame holds whole seconds
    return WriteJob(meter_id, RelayControl(address, action, deadline))


def relay_readback(meter_id: str) -> ReadJob:
    """Read status word 3 (the relay's position is bit 4)."""
    return ReadJob(meter_id, (RELAY_STATE_DI,))


def relay_position(result: JobResult) -> bool | None:
    """From a :func:`relay_readback` result: True when the relay is open (tripped),
    False when closed, None when the meter did not say."""
    word = result.values.get(RELAY_STATE_DI) if result.ok else None
    if not isinstance(word, int):
        return None
    return bool(word & StatusWord3.RELAY_OPEN)


def meter_clock_read(meter_id: str) -> ReadJob:
    """Read the meter's date and time (04000101, 04000102): what its deadlines are
    checked against."""
    return ReadJob(meter_id, (0x04000101, 0x04000102))


def meter_clock(result: JobResult) -> datetime | None:
    """The meter's local wall time (naive) from a :func:`meter_clock_read` result."""
    day = result.values.get(0x04000101) if result.ok else None
    at = result.values.get(0x04000102) if result.ok else None
    if not isinstance(day, date) or not isinstance(at, time):
        return None
    return datetime.combine(day, at)
