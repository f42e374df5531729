"""Meters' clocks: read once a day, corrected within the time rules of domain.md.

Only when the gateway's own time is trusted (design.md): an untrusted clock never
reads nor sets a meter's clock.  :class:`TimeTrust` trusts the system clock once the
kernel says NTP keeps it synchronized (a master time command may trust it too).

Once a day per DL/T 645 meter (from :attr:`TimeSyncSettings.check_from`, never from
23:55 to 00:10 local nor near the settlement moment, judged by the gateway's time and
by the meter's), the meter's date and time (04000101, 04000102) are read and its
offset computed in whole seconds:

- ``|offset| <= threshold_s`` (5 s): nothing.
- ``<= broadcast_max_s`` (5 min): broadcast time (08).  The frame goes to the
  broadcast address 99..99 (the codec's ``BroadcastTime`` takes an address, but
  meters - and the simulator - act on 08 only when broadcast), so it sets every meter
  of the bus to the gateway's time.  That is right for all of them - each accepts it
  only if it is within its own small-correction window - but a meter accepts few
  broadcasts a day, so a bus gets at most one broadcast a day, sent for the first
  meter that needs it.  Each meter it was meant for is read again: corrected, or
  (refused, or the bus's broadcast already used today) written individually.
- larger: an individual password-level write of 04000101 then 04000102.

Each correction is one event, ``CLOCK_CORRECTED`` (method, offset_s, after_s: the
offset read back); a meter found off that could not be corrected gets one
``CLOCK_DRIFT`` (offset_s, reason).  Meters other than DL/T 645 keep no clock the
gateway can set and are skipped.  The broadcast day is kept in memory: after a
restart a bus may get a second broadcast that day (meters refuse extra ones and the
individual write then corrects them).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import ctypes.util
import logging
import time as _time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from gateway.clock import Clock
from gateway.drivers.jobs import BusHandle, Job, JobResult, Priority, ReadJob, WriteJob
from gateway.protocols.batch import HealthKind, HealthRecord, MeterEvent
from gateway.protocols.dlt645 import BroadcastTime, WriteRequest, encode_value
from gateway.protocols.quantities import EventCode
from gateway.tasks.model import Journal, TaskMeter

__all__ = [
    "DATE_DI",
    "TIME_DI",
    "TimeSync",
    "TimeSyncSettings",
    "TimeTrust",
    "in_quiet_window",
    "kernel_clock_synchronized",
]

_logger = logging.getLogger(__name__)

DATE_DI = 0x04000101
"""Meter date ``YYMMDDWW``."""
TIME_DI = 0x04000102
"""Meter time ``hhmmss``."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class TimeSyncSettings:
    """Limits of the daily clock check (times are local business time)."""

    threshold_s: int = 5
    """Offsets up to this are left alone."""
    broadcast_max_s: int = 300
    """Offsets up to this are corrected by broadcast time; larger by a write."""
    check_from: time = time(0, 30)
    """The day's check starts at this local time."""
    before_midnight: timedelta = timedelta(minutes=5)
    """No check or correction this long before 00:00 ..."""
    after_midnight: timedelta = timedelta(minutes=10)
    """... nor this long after it (the daily freeze)."""
    settlement_day: int = 1
    settlement_hour: int = 0
    settlement_guard: timedelta = timedelta(minutes=15)
    """No check or correction this close to the settlement moment."""
    retry_s: int = 1800
    """A meter that did not answer is tried again after this long (the same day)."""
    password_level: int = 2
    password: str = "000000"
    operator: str = "00000000"
    max_meters_per_bus: int = 64
    """Meters checked per bus and tick.  The default takes a whole bus at once, so that
    its one broadcast of the day serves every meter that needs it (about 0.5 s of bus
    time per meter at 2400 baud, once a day); meters past it wait for the next tick."""
    job_timeout_s: float = 60.0


_TIME_ERROR = 5
"""adjtimex(2) clock state: the kernel clock is not synchronized."""


def kernel_clock_synchronized() -> bool | None:
    """Whether the kernel says its clock is kept synchronized (by an NTP daemon:
    adjtimex(2) returns a clock state other than TIME_ERROR); None where it cannot be
    asked.  A read-only query: no privilege needed."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        adjtimex = ctypes.CDLL(name, use_errno=True).adjtimex
    except (OSError, AttributeError):
        return None
    timex = ctypes.create_string_buffer(512)  # struct timex (about 208 bytes), modes = 0
    state = int(adjtimex(timex))
    if state < 0:
        return None
    return state != _TIME_ERROR


class TimeTrust:
    """Trusts the clock once the kernel clock is NTP-synchronized (asked at each tick).

    Call :meth:`tick` where the calendar services tick.  Trust is never withdrawn here:
    a clock that was synchronized stays close for long after NTP is lost.  The moment
    it becomes trusted is journalled as a health record (time source ``ntp``).
    """

    def __init__(
        self,
        clock: Clock,
        journal: Journal | None = None,
        probe: Callable[[], bool | None] = kernel_clock_synchronized,
    ) -> None:
        self.clock = clock
        self.journal = journal
        self.probe = probe

    def tick(self, now: datetime | None = None) -> None:
        if self.clock.trusted or not self.probe():
            return
        self.clock.trust("ntp")
        _logger.info("the gateway's time is trusted: the kernel clock is NTP-synchronized")
        if self.journal is not None:
            ts_ms = (self.clock.now() - _EPOCH) // timedelta(milliseconds=1)
            values: dict[str, int | str] = {"trusted": 1, "source": "ntp"}
            self.journal.submit(HealthRecord(ts_ms, int(HealthKind.TIME_SOURCE), values))


def in_quiet_window(local: datetime, settings: TimeSyncSettings) -> bool:
    """Whether wall time ``local`` is too close to midnight or the settlement moment."""
    wall = local.replace(tzinfo=None)
    since = wall - datetime.combine(wall.date(), time(0))
    if since < settings.after_midnight or since >= timedelta(days=1) - settings.before_midnight:
        return True
    month = date(wall.year, wall.month, 1)
    nxt = (month + timedelta(days=32)).replace(day=1)
    for first in (month, nxt):
        moment = datetime(
            first.year, first.month, settings.settlement_day, settings.settlement_hour
        )
        if abs(wall - moment) < settings.settlement_guard:
            return True
    return False


class TimeSync:
    """The daily clock check of the DL/T 645 ``meters``; call :meth:`tick` from one thread."""

    def __init__(
        self,
        clock: Clock,
        meters: Sequence[TaskMeter],
        bus_for: Callable[[str], BusHandle],
        journal: Journal,
        settings: TimeSyncSettings | None = None,
    ) -> None:
        self.clock = clock
        self.meters = [m for m in meters if m.protocol == "dlt645" and m.address]
        self.bus_for = bus_for
        self.journal = journal
        self.settings = settings or TimeSyncSettings()
        self._day: date | None = None
        self._done: set[str] = set()
        self._retry_at: dict[str, datetime] = {}
        self._broadcast_day: dict[str, date] = {}
        self.offsets: dict[str, int] = {}
        """The last offset read of each meter, seconds (+: the meter is ahead)."""
        self.corrections = 0
        self.suspended = False

    # --- the tick ---------------------------------------------------------------------

    def tick(self, now: datetime | None = None) -> None:
        """Check the meters that are due at ``now``; blocks for the reads and writes."""
        now = now or self.clock.now()
        if not self.clock.trusted:
            if not self.suspended:
                _logger.warning("meter clocks are not checked: the gateway's time is untrusted")
            self.suspended = True
            return
        self.suspended = False
        local = self.clock.local(now)
        today = local.date()
        if today != self._day:
            self._day = today
            self._done.clear()
            self._retry_at.clear()
        s = self.settings
        if local.time().replace(tzinfo=None) < s.check_from or in_quiet_window(local, s):
            return
        by_bus: dict[str, list[TaskMeter]] = {}
        for m in self.meters:
            if m.id in self._done or self._retry_at.get(m.id, now) > now:
                continue
            group = by_bus.setdefault(self.bus_for(m.id).name, [])
            if len(group) < s.max_meters_per_bus:
                group.append(m)
        if not by_bus:
            return
        offsets = self._read_clocks([m for group in by_bus.values() for m in group], now)
        for bus, group in by_bus.items():
            self._correct(bus, [m for m in group if m.id in offsets], offsets, now, today)

    def _read_clocks(self, meters: Sequence[TaskMeter], now: datetime) -> dict[str, int]:
        """Offsets of the meters that answered and need a correction now (the others
        are done for the day, or retried later)."""
        found = self._offsets(meters)
        s = self.settings
        out: dict[str, int] = {}
        for m in meters:
            offset = found.get(m.id)
            if isinstance(offset, JobResult):
                if (offset.cause or "").startswith("negative"):
                    _logger.info("meter %s refuses its clock DIs: not checked", m.id)
                    self._done.add(m.id)
                else:
                    self._retry_at[m.id] = now + timedelta(seconds=s.retry_s)
                continue
            assert offset is not None
            self.offsets[m.id] = offset
            if abs(offset) <= s.threshold_s:
                self._done.add(m.id)
            elif in_quiet_window(self.clock.local(now) + timedelta(seconds=offset), s):
                self._retry_at[m.id] = now + timedelta(seconds=s.retry_s)  # its own midnight
            else:
                out[m.id] = offset
        return out

    def _offsets(self, meters: Sequence[TaskMeter]) -> dict[str, int | JobResult]:
        """Each meter's clock offset (seconds), or the failed read's result."""
        stamps: dict[str, datetime] = {}

        def stamp(meter: str) -> Callable[[concurrent.futures.Future[JobResult]], None]:
            def done(_: concurrent.futures.Future[JobResult]) -> None:
                stamps[meter] = self.clock.now()

            return done

        jobs: list[tuple[str, Job]] = [(m.id, ReadJob(m.id, (DATE_DI, TIME_DI))) for m in meters]
        futures = []
        for meter, job in jobs:
            future = self.bus_for(meter).submit(job, Priority.TASK)
            future.add_done_callback(stamp(meter))
            futures.append(future)
        results = self._wait(jobs, futures)
        out: dict[str, int | JobResult] = {}
        for (meter, _), result in zip(jobs, results, strict=True):
            day, at = result.values.get(DATE_DI), result.values.get(TIME_DI)
            if not result.ok or not isinstance(day, date) or not isinstance(at, time):
                out[meter] = result if not result.ok else _failed(meter, "no date or time")
                continue
            reference = self.clock.local(stamps.get(meter) or self.clock.now())
            wall = reference.replace(tzinfo=None, microsecond=0)
            out[meter] = int((datetime.combine(day, at) - wall).total_seconds())
        return out

    # --- corrections ------------------------------------------------------------------

    def _correct(
        self,
        bus: str,
        meters: Sequence[TaskMeter],
        offsets: dict[str, int],
        now: datetime,
        today: date,
    ) -> None:
        s = self.settings
        small = [m for m in meters if abs(offsets[m.id]) <= s.broadcast_max_s]
        write = [m for m in meters if abs(offsets[m.id]) > s.broadcast_max_s]
        if small and self._broadcast_day.get(bus) != today:
            self._broadcast_day[bus] = today
            sent = self._run(
                [(small[0].id, WriteJob(small[0].id, BroadcastTime(self._wall()), False))]
            )
            after = self._offsets(small) if sent[0].ok else {}
            for m in small:
                residual = after.get(m.id)
                if isinstance(residual, int) and abs(residual) <= s.threshold_s:
                    self._corrected(m, "broadcast", offsets[m.id], residual)
                else:
                    write.append(m)
        else:
            write.extend(small)
        for m in write:
            self._write(m, offsets[m.id], now)

    def _write(self, meter: TaskMeter, offset: int, now: datetime) -> None:
        assert meter.address is not None
        s = self.settings
        failure: JobResult | None = None
        for di in (DATE_DI, TIME_DI):
            wall = self._wall()  # computed just before each write is queued
            value = wall.date() if di == DATE_DI else wall.time()
            request = WriteRequest(
                meter.address, di, encode_value(di, value), s.password_level, s.password, s.operator
            )
            result = self._run([(meter.id, WriteJob(meter.id, request))])[0]
            if not result.ok:
                failure = result
                break
        if failure is not None and not (failure.cause or "").startswith("negative"):
            self._retry_at[meter.id] = now + timedelta(seconds=s.retry_s)  # no answer: later
            return
        self._done.add(meter.id)
        if failure is not None:
            self._drift(meter, offset, f"write refused: {failure.error}")
            return
        after = self._offsets([meter]).get(meter.id)
        if isinstance(after, int) and abs(after) <= s.threshold_s:
            self._corrected(meter, "write", offset, after)
        else:
            self._drift(meter, offset, "still off after the write")

    def _corrected(self, meter: TaskMeter, method: str, offset: int, after: int) -> None:
        self._done.add(meter.id)
        self.offsets[meter.id] = after
        self.corrections += 1
        detail: dict[int | str, int | str] = {
            "method": method,
            "offset_s": offset,
            "after_s": after,
        }
        _logger.info("meter %s clock corrected by %s: was %+d s", meter.id, method, offset)
        self._event(meter, EventCode.CLOCK_CORRECTED, detail)

    def _drift(self, meter: TaskMeter, offset: int, reason: str) -> None:
        _logger.warning("meter %s clock is %+d s off: %s", meter.id, offset, reason)
        self._event(meter, EventCode.CLOCK_DRIFT, {"offset_s": offset, "reason": reason[:200]})

    def _event(self, meter: TaskMeter, code: EventCode, detail: dict[int | str, int | str]) -> None:
        ts_ms = (self.clock.now() - _EPOCH) // timedelta(milliseconds=1)
        self.journal.submit(MeterEvent(meter.id, ts_ms, int(code), detail))

    # --- helpers ----------------------------------------------------------------------

    def _wall(self) -> datetime:
        """The gateway's local wall time now, to the nearest second (what meters are set to)."""
        local = self.clock.local() + timedelta(microseconds=500_000)
        return local.replace(tzinfo=None, microsecond=0)

    def _run(self, jobs: Sequence[tuple[str, Job]]) -> list[JobResult]:
        futures = [self.bus_for(meter).submit(job, Priority.TASK) for meter, job in jobs]
        return self._wait(jobs, futures)

    def _wait(
        self,
        jobs: Sequence[tuple[str, Job]],
        futures: Sequence[concurrent.futures.Future[JobResult]],
    ) -> list[JobResult]:
        deadline = _time.monotonic() + self.settings.job_timeout_s
        out: list[JobResult] = []
        for (meter, _), future in zip(jobs, futures, strict=True):
            try:
                out.append(future.result(max(0.0, deadline - _time.monotonic())))
            except concurrent.futures.TimeoutError:
                future.cancel()
                out.append(_failed(meter, "timed out", "timeout"))
            except concurrent.futures.CancelledError:
                out.append(_failed(meter, "bus stopped", "cancelled"))
        return out

    def status(self) -> dict[str, object]:
        """JSON-able: trust, meters checked today, corrections since start, large offsets."""
        offsets = list(self.offsets.items())  # the tick thread may be changing it
        off = {m: o for m, o in offsets if abs(o) > self.settings.threshold_s}
        return {
            "suspended": self.suspended,
            "checked_today": len(self._done),
            "meters": len(self.meters),
            "corrections": self.corrections,
            "off": off,
        }


def _failed(meter: str, error: str, cause: str = "garbled") -> JobResult:
    return JobResult(meter, False, error=error, cause=cause)
