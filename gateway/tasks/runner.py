"""The collection tasks of every meter and business day, driven by the calendar clock.

The runtime calls :meth:`TaskRunner.tick` every few seconds (or runs a
:class:`TickThread`).  A tick queues the reads that are due at
:attr:`~gateway.drivers.jobs.Priority.TASK` on the meters' buses (periodic polls
wait; relay commands and on-demand reads go first), waits for them, and journals a
:class:`~gateway.protocols.batch.TaskResult` per meter, task kind and business day:

- **daily freeze** (DL/T 645): from 00:05 local, the last daily freeze (05060001
  time, 05060101 energy); OK when its time is the day's 00:00, else tried again after
  15, 30, 60, 60 ... minutes (``retry_delays``) through the day, FAILED when the day
  ends.  A meter without freezes (Modbus) gets its registers at 00:00 interpolated
  from the gateway's own readings: ESTIMATED.
- **settlement freeze** (0001FF01) on the settlement day: OK when it equals that
  day's daily freeze (both taken at 00:00; a stale block from last month differs).
- **load curve**: points every 15 minutes from the gateway's own readings
  (:mod:`gateway.tasks.curves`); at the day's end ESTIMATED if every point of the
  day was made, else FAILED.
- **back-fill**: at the first tick, after a gap of ticks, after the time becomes
  trusted and each new day, every DL/T 645 meter's days without an OK daily freeze
  (up to 62 days back) are searched in its freeze history (:mod:`.backfill`) one
  probe per meter and tick.

Nothing is read from 23:55 to 00:05 (a freeze at a meter's midnight would move its
history under the reads).  While the clock is not trusted nothing runs: the first
such tick journals a health record saying why.  Freeze times are meter time and are
compared with the business day's 00:00 as wall time.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time as _time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Protocol

from gateway.clock import Clock
from gateway.drivers.jobs import BusHandle, JobResult, Priority, ReadJob
from gateway.protocols.batch import (
    HealthKind,
    HealthRecord,
    MeterEvent,
    TaskKind,
    TaskResult,
    TaskStatus,
)
from gateway.protocols.quantities import Quantity, Reading
from gateway.tasks.backfill import Backfill
from gateway.tasks.curves import CurveBuilder
from gateway.tasks.model import (
    SETTLEMENT_BLOCK_DI,
    Journal,
    TaskHistory,
    TaskMeter,
    TaskSettings,
    block_values,
    freeze_block_di,
    freeze_time_di,
)

__all__ = ["ObservedJournal", "PollJournal", "TaskRunner", "TickThread"]

_logger = logging.getLogger(__name__)

_DONE = (TaskStatus.OK, TaskStatus.ESTIMATED)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class _Pending:
    """A task of one meter for one day that is not done yet."""

    kind: TaskKind
    day: date
    next_at: datetime
    failures: int = 0
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class _Work:
    meter: TaskMeter
    what: str  # "daily" | "monthly" | "backfill"
    job: ReadJob
    n: int = 0


class PollJournal(Protocol):
    """Where a poller puts readings and events (:class:`gateway.poller.Journal`)."""

    def submit(self, record: Reading | MeterEvent) -> None: ...


class ObservedJournal:
    """A journal that also shows every reading to ``observe`` (give it to the pollers)."""

    def __init__(self, inner: PollJournal, observe: Callable[[Reading], None]) -> None:
        self.inner = inner
        self.observe = observe

    def submit(self, record: Reading | MeterEvent) -> None:
        self.inner.submit(record)
        if isinstance(record, Reading):
            self.observe(record)


class TaskRunner:
    """Collection tasks of ``meters``; :meth:`tick` from one thread, the rest from any."""

    def __init__(
        self,
        clock: Clock,
        meters: Sequence[TaskMeter],
        bus_for: Callable[[str], BusHandle],
        journal: Journal,
        settings: TaskSettings | None = None,
        *,
        history: TaskHistory | None = None,
    ) -> None:
        self.clock = clock
        self.settings = s = settings or TaskSettings()
        self.meters = {m.id: m for m in meters}
        self.bus_for = bus_for
        self.journal = journal
        self.history = history
        self.curves = CurveBuilder(
            journal,
            clock.tz,
            {m.id: m.ratio for m in meters},
            step_s=s.curve_step_s,
            max_gap_s=s.curve_max_gap_s,
            midnight_gap_s=s.estimate_max_gap_s,
        )
        self._lock = threading.Lock()
        self._status: dict[tuple[str, TaskKind, date], TaskStatus] = {}
        self._freezes: dict[tuple[str, date], dict[Quantity, int]] = {}
        self._daily: dict[str, _Pending] = {}
        self._monthly: dict[str, _Pending] = {}
        self._backfill: dict[str, Backfill] = {}
        self._day: date | None = None
        self._last_tick: datetime | None = None
        self._history_loaded = False
        self._backfill_wanted = False
        self.suspended: str | None = None
        self.jobs = 0
        self.failed_jobs = 0

    # --- wiring -----------------------------------------------------------------------

    def observe(self, reading: Reading) -> None:
        """A reading the gateway stored (any thread, cheap): curve points, midnight values."""
        self.curves.observe(reading)

    def request_backfill(self) -> None:
        """Search the back-fill window again at the next tick (any thread; a master's command)."""
        self._backfill_wanted = True

    def tee(self, inner: PollJournal) -> ObservedJournal:
        """``inner`` that also feeds :meth:`observe`: the journal to give the pollers."""
        return ObservedJournal(inner, self.observe)

    # --- the tick ---------------------------------------------------------------------

    def tick(self, now: datetime | None = None) -> None:
        """Do what is due at ``now`` (default: the clock's now); blocks for its reads."""
        now = now or self.clock.now()
        if not self.clock.trusted:
            self._suspend(now, "time untrusted")
            return
        resumed = self.suspended is not None
        wanted, self._backfill_wanted = self._backfill_wanted, False
        if resumed:
            _logger.info(
                "collection tasks resume: the time is trusted (%s)", self.clock.trust_source
            )
            self.suspended = None
        today = self.clock.business_day(now)
        if not self._history_loaded:
            self._load_history(today)
        if self._day is None or today != self._day:
            if self._day is not None and today > self._day:
                self._close_days(self._day, today)
            self._start_day(today)
            self._schedule_backfill(today)
        elif (
            resumed
            or wanted
            or (
                self._last_tick is not None
                and (now - self._last_tick).total_seconds() > self.settings.gap_s
            )
        ):
            self._schedule_backfill(today)
        self._last_tick = now
        self._estimate(today)
        work = self._plan(now)
        if work:
            for item, result in zip(work, self._run(work), strict=True):
                self._handle(item, result, now, today)

    def _suspend(self, now: datetime, why: str) -> None:
        if self.suspended == why:
            return
        self.suspended = why
        self._last_tick = None
        _logger.warning("collection tasks suspended: %s", why)
        values: dict[str, int | str] = {"trusted": 0, "tasks": "suspended", "reason": why}
        self.journal.submit(HealthRecord(_ms(now), int(HealthKind.TIME_SOURCE), values))

    # --- days -------------------------------------------------------------------------

    def _window(self, today: date) -> list[date]:
        """Days the back-fill looks at, newest first (today not included)."""
        return [today - timedelta(days=k) for k in range(1, self.settings.backfill_days)]

    def _load_history(self, today: date) -> None:
        self._history_loaded = True
        if self.history is None:
            return
        days = [today, *self._window(today)]
        for meter in self.meters.values():
            kinds = [TaskKind.DAILY_FREEZE, TaskKind.MONTHLY_FREEZE, TaskKind.CURVE]
            for day in days:
                for kind in kinds if day == today else kinds[:1]:
                    entry = self.history.task_result(meter.id, kind, day)
                    if entry is None or not isinstance(entry[1], TaskResult):
                        continue
                    result = entry[1]
                    self._status[(meter.id, kind, day)] = TaskStatus(result.status)
                    if kind is TaskKind.DAILY_FREEZE and day == today and result.values:
                        self._freezes[(meter.id, day)] = dict(result.values)

    def _start_day(self, today: date) -> None:
        self._day = today
        first = self.clock.day_start(today) + _offset(self.settings.freeze_from)
        self._daily.clear()
        self._monthly.clear()
        settlement = today.day == self.settings.settlement_day
        for meter in self.meters.values():
            if not meter.keeps_freezes:
                continue
            if self.status_of(meter.id, TaskKind.DAILY_FREEZE, today) not in _DONE:
                self._daily[meter.id] = _Pending(TaskKind.DAILY_FREEZE, today, first)
            if settlement and self.status_of(meter.id, TaskKind.MONTHLY_FREEZE, today) not in _DONE:
                self._monthly[meter.id] = _Pending(TaskKind.MONTHLY_FREEZE, today, first)
        with self._lock:
            for key in [k for k in self._freezes if k[1] != today]:
                del self._freezes[key]
            oldest = today - timedelta(days=self.settings.backfill_days + 1)
            for old in [k for k in self._status if k[2] < oldest]:
                del self._status[old]

    def _close_days(self, first: date, today: date) -> None:
        """Record what days ``first`` .. ``today - 1`` ended with (at most the back-fill
        window: a clock that jumped years writes no year of failures)."""
        day = max(first, today - timedelta(days=self.settings.backfill_days))
        while day < today:
            start_ms = _ms(self.clock.day_start(day))
            for meter in self.meters.values():
                m = meter.id
                kinds = [TaskKind.DAILY_FREEZE]
                if day.day == self.settings.settlement_day:
                    kinds.append(TaskKind.MONTHLY_FREEZE)
                for kind in kinds:
                    if self.status_of(m, kind, day) in _DONE:
                        continue
                    values = None if meter.keeps_freezes else self.curves.midnight(m, day)
                    if values:
                        self._record(
                            TaskResult(m, kind, day, TaskStatus.ESTIMATED, start_ms, values)
                        )
                    else:
                        self._record(TaskResult(m, kind, day, TaskStatus.FAILED, None))
                if self.status_of(m, TaskKind.CURVE, day) is None:
                    made = self.curves.points(m, day) >= self.curves.expected_points(day)
                    status = TaskStatus.ESTIMATED if made else TaskStatus.FAILED
                    self._record(TaskResult(m, TaskKind.CURVE, day, status, None))
            day += timedelta(days=1)
        self.curves.forget(today - timedelta(days=1))  # yesterday stays for the status

    def _schedule_backfill(self, today: date) -> None:
        window = self._window(today)
        for meter in self.meters.values():
            if not meter.keeps_freezes:
                continue
            missing = [
                d
                for d in window
                if self.status_of(meter.id, TaskKind.DAILY_FREEZE, d) is not TaskStatus.OK
            ]
            if missing:
                self._backfill[meter.id] = Backfill(meter.id, today, missing)
            else:
                self._backfill.pop(meter.id, None)

    def _estimate(self, today: date) -> None:
        """Midnight values of meters without freezes, once the readings allow."""
        kinds = [TaskKind.DAILY_FREEZE]
        if today.day == self.settings.settlement_day:
            kinds.append(TaskKind.MONTHLY_FREEZE)
        for meter in self.meters.values():
            if meter.keeps_freezes:
                continue
            for kind in kinds:
                if self.status_of(meter.id, kind, today) in _DONE:
                    continue
                values = self.curves.midnight(meter.id, today)
                if values:
                    start_ms = _ms(self.clock.day_start(today))
                    result = TaskResult(
                        meter.id, kind, today, TaskStatus.ESTIMATED, start_ms, values
                    )
                    self._record(result)

    # --- reads --------------------------------------------------------------------------

    def _plan(self, now: datetime) -> list[_Work]:
        if self.settings.quiet(self.clock.local(now)):
            return []
        work: list[_Work] = []
        taken: set[str] = set()
        per_bus: dict[str, int] = {}

        def add(meter: TaskMeter, what: str, job: ReadJob, n: int = 0) -> None:
            bus = self.bus_for(meter.id).name
            if per_bus.get(bus, 0) >= self.settings.max_jobs_per_bus:
                return
            per_bus[bus] = per_bus.get(bus, 0) + 1
            taken.add(meter.id)
            work.append(_Work(meter, what, job, n))

        for m, pending in self._daily.items():
            if pending.next_at <= now:
                add(self.meters[m], "daily", ReadJob(m, (freeze_time_di(1), freeze_block_di(1))))
        for m, pending in self._monthly.items():
            if m in taken or pending.next_at > now or (m, pending.day) not in self._freezes:
                continue
            add(self.meters[m], "monthly", ReadJob(m, (SETTLEMENT_BLOCK_DI,)))
        for m, search in list(self._backfill.items()):
            if m in taken or (search.retry_at is not None and search.retry_at > now):
                continue
            n = search.next_probe()
            if n is None:
                self._finish_backfill(search)
                continue
            add(self.meters[m], "backfill", ReadJob(m, (freeze_time_di(n), freeze_block_di(n))), n)
        return work

    def _run(self, work: Sequence[_Work]) -> list[JobResult]:
        futures = [self.bus_for(w.meter.id).submit(w.job, Priority.TASK) for w in work]
        deadline = _time.monotonic() + self.settings.job_timeout_s
        results: list[JobResult] = []
        for w, future in zip(work, futures, strict=True):
            try:
                result = future.result(max(0.0, deadline - _time.monotonic()))
            except concurrent.futures.TimeoutError:
                future.cancel()
                result = JobResult(w.meter.id, False, error="task read timed out", cause="timeout")
            except concurrent.futures.CancelledError:
                result = JobResult(w.meter.id, False, error="bus stopped", cause="cancelled")
            self.jobs += 1
            if not result.ok:
                self.failed_jobs += 1
            results.append(result)
        return results

    def _handle(self, work: _Work, result: JobResult, now: datetime, today: date) -> None:
        meter = work.meter
        if work.what == "backfill":
            search = self._backfill.get(meter.id)
            if search is None:
                return
            if result.ok:
                day = self._freeze_read(meter, result, work.n, today)
                search.seen(work.n, day)
            elif (result.cause or "").startswith("negative"):
                search.seen(work.n, None)  # no such freeze: the history is shorter
            else:
                search.failures += 1
                search.retry_at = now + timedelta(
                    seconds=self.settings.retry_delay(search.failures)
                )
            if search.next_probe() is None:
                self._finish_backfill(search)
            return
        pending = (self._daily if work.what == "daily" else self._monthly).get(meter.id)
        if pending is None:
            return
        if work.what == "daily" and result.ok:
            self._freeze_read(meter, result, 1, today)
        elif work.what == "monthly" and result.ok:
            self._settlement_read(meter, result, pending)
        if self.status_of(meter.id, pending.kind, pending.day) in _DONE:
            (self._daily if work.what == "daily" else self._monthly).pop(meter.id, None)
            return
        pending.failures += 1
        pending.last_error = result.error or "freeze not taken yet"
        pending.next_at = now + timedelta(seconds=self.settings.retry_delay(pending.failures))

    def _freeze_read(self, meter: TaskMeter, result: JobResult, n: int, today: date) -> date | None:
        """Record a freeze read at position ``n`` for its own day; that day (None if the
        reply held no freeze time)."""
        at = result.values.get(freeze_time_di(n))
        if not isinstance(at, datetime):
            return None
        day = at.date()
        values = block_values(result.values.get(freeze_block_di(n)), meter.ratio)
        if at.time() != time(0) or values is None or day > today or self._is_ok(meter.id, day):
            return day
        start_ms = _ms(self.clock.day_start(day))
        self._record(
            TaskResult(meter.id, TaskKind.DAILY_FREEZE, day, TaskStatus.OK, start_ms, values)
        )
        if day == today:
            with self._lock:
                self._freezes[(meter.id, day)] = values
            self._daily.pop(meter.id, None)
        search = self._backfill.get(meter.id)
        if search is not None:
            search.found(day)
        return day

    def _settlement_read(self, meter: TaskMeter, result: JobResult, pending: _Pending) -> None:
        values = block_values(result.values.get(SETTLEMENT_BLOCK_DI), meter.ratio)
        with self._lock:
            daily = self._freezes.get((meter.id, pending.day))
        if values is None or daily is None:
            return
        if values.get(Quantity.ENERGY_IMPORT) != daily.get(Quantity.ENERGY_IMPORT):
            return  # last month's block: the meter has not settled yet
        start_ms = _ms(self.clock.day_start(pending.day))
        status = TaskStatus.OK
        self._record(
            TaskResult(meter.id, TaskKind.MONTHLY_FREEZE, pending.day, status, start_ms, values)
        )

    def _finish_backfill(self, search: Backfill) -> None:
        self._backfill.pop(search.meter, None)
        if search.absent:
            _logger.info(
                "meter %s keeps no freeze for %d missed day(s), oldest %s",
                search.meter,
                len(search.absent),
                min(search.absent),
            )

    # --- results ----------------------------------------------------------------------

    def _record(self, result: TaskResult) -> None:
        with self._lock:
            self._status[(result.meter, result.kind, result.business_day)] = result.status
        self.journal.submit(result)

    def _is_ok(self, meter: str, day: date) -> bool:
        return self.status_of(meter, TaskKind.DAILY_FREEZE, day) is TaskStatus.OK

    def status_of(self, meter: str, kind: TaskKind, day: date) -> TaskStatus | None:
        """The recorded status of a task (None: nothing recorded yet)."""
        with self._lock:
            return self._status.get((meter, kind, day))

    def completion(self, day: date | None = None) -> dict[str, object]:
        """Task completion of business ``day`` (default: today), for ``gateway status``.

        Per kind: expected meters, ok, estimated, failed, pending (nothing recorded
        yet) and ``rate`` = (ok + estimated) / expected.
        """
        day = day or self.clock.business_day()
        kinds = [TaskKind.DAILY_FREEZE, TaskKind.CURVE]
        if day.day == self.settings.settlement_day:
            kinds.insert(1, TaskKind.MONTHLY_FREEZE)
        out: dict[str, object] = {"day": day.isoformat()}
        for kind in kinds:
            counts = {s.name.lower(): 0 for s in TaskStatus}
            pending = 0
            for m in self.meters:
                status = self.status_of(m, kind, day)
                if status is None:
                    pending += 1
                else:
                    counts[status.name.lower()] += 1
            expected = len(self.meters)
            collected = counts["ok"] + counts["estimated"]
            entry: dict[str, object] = {"expected": expected, **counts, "pending": pending}
            entry["rate"] = round(collected / expected, 4) if expected else None
            if kind is TaskKind.CURVE:
                entry["points"] = sum(self.curves.points(m, day) for m in self.meters)
                entry["points_expected"] = self.curves.expected_points(day) * expected
            out[kind.name.lower()] = entry
        return out

    def status(self) -> dict[str, object]:
        """JSON-able: trust, today's completion, pending retries and back-fill."""
        return {
            "suspended": self.suspended,
            "today": self.completion() if self.clock.trusted else None,
            "retrying": sorted(m for m, p in list(self._daily.items()) if p.failures),
            "backfill": {m: len(s.missing) for m, s in list(self._backfill.items())},
            "jobs": self.jobs,
            "failed_jobs": self.failed_jobs,
            "curve_points": self.curves.points_made,
        }


class TickThread:
    """Calls each of ``ticks`` every ``interval`` seconds on its own thread until stopped.

    An exception in a tick is logged and the thread carries on.
    """

    def __init__(
        self, ticks: Iterable[Callable[[], object]], interval: float = 10.0, name: str = "tasks"
    ) -> None:
        self.ticks = list(ticks)
        self.interval = interval
        self.name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> TickThread:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def signal(self) -> None:
        """Ask the thread to stop after the tick in hand, without waiting."""
        self._stop.set()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop after the tick in hand (its reads may take a while)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            for tick in self.ticks:
                if self._stop.is_set():
                    break
                try:
                    tick()
                except Exception:
                    _logger.exception("%s: a tick failed", self.name)
            self._stop.wait(self.interval)


def _ms(instant: datetime) -> int:
    return (instant - _EPOCH) // timedelta(milliseconds=1)


def _offset(at: time) -> timedelta:
    return timedelta(hours=at.hour, minutes=at.minute, seconds=at.second)
