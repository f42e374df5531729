"""The periodic poll of one bus: which meter next, what its answer means, when it fails.

A :class:`Poller` is the :class:`~gateway.drivers.bus.Scheduler` of one bus and runs
on that bus's thread (it never blocks: readings and events go to the store writer's
queue).  Every meter is polled every :attr:`PollSettings.interval` seconds; an interval
of 0 polls continuously, as fast as the line allows, in round-robin order.  Queued
jobs (relay, on-demand, tasks) always go first: the bus asks the poller only when its
queue is empty.  A meter's own ``poll_interval_s`` (configuration) replaces the interval
for that meter alone.

Communication failure (domain.md).  A poll fails when the meter did not communicate
(no answer, garbled, wrong address); a negative reply is an answer.  After
:attr:`PollSettings.fail_after` consecutive failed polls the meter is *flagged* with
a cause hint - ``no-answer`` (meter dead or unpowered), ``bus-silent`` (no meter on
the bus answers: the line), ``garbled`` (wiring, baud rate), ``wrong-address`` - and a
:attr:`~gateway.protocols.quantities.EventCode.COMM_FAILURE` event is written.  A
flagged meter is re-probed (once, no retries) after ``backoff_base`` seconds, then
twice as long each time up to ``backoff_max``, so it costs the others next to nothing;
a meter whose own interval is longer waits at least that interval (a probe never comes
more often than a poll would).  When it answers, :attr:`~EventCode.COMM_RESTORED` is
written and normal polling resumes.

Energy registers (no false consumption).  Each reading's energy registers are
compared with the meter's previous ones:

- a register that fell by more than half its range (DL/T 645: 999999.99 kWh wraps to
  0; the range is 10^9 Wh x CT x PT) *rolled over*: event REGISTER_ROLLOVER, reading
  flagged :data:`~gateway.protocols.quantities.FLAG_ROLLOVER` (consumption = new +
  range - old);
- any other fall, or a rise faster than :attr:`PollSettings.max_power_w` x ratio
  allows, is a discontinuity: event ENERGY_BACKWARDS or ENERGY_JUMP, reading flagged
  :data:`~gateway.protocols.quantities.FLAG_DISCONTINUITY` (no consumption may be
  computed across it), and the meter number is checked at once;
- the meter number (DL/T 645 DI 04000402) is read at start and every
  ``number_check_every`` seconds; a change is event METER_NUMBER_CHANGED (old, new)
  and the next reading is flagged FLAG_DISCONTINUITY unless the one that revealed the
  swap already was.  Until a person confirms the new meter (:meth:`Poller.confirm`)
  its status shows ``swapped``; a new number a work order recorded is confirmed at
  once (the charger's number listener, wired by :class:`gateway.runtime.Runtime`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from gateway.clock import Clock
from gateway.config import Polling
from gateway.drivers.base import COMM_CAUSES, MeterDriver
from gateway.drivers.dlt645 import METER_NUMBER_DI
from gateway.drivers.jobs import Job, JobResult, ReadJob
from gateway.protocols.batch import MeterEvent
from gateway.protocols.quantities import (
    FLAG_DISCONTINUITY,
    FLAG_ROLLOVER,
    FLAG_TIME_UNTRUSTED,
    EventCode,
    Quantity,
    Reading,
)

__all__ = [
    "ENERGY_QUANTITIES",
    "REGISTER_RANGE_WH",
    "Journal",
    "MeterState",
    "PollSettings",
    "Poller",
]

_logger = logging.getLogger(__name__)

ENERGY_QUANTITIES = frozenset(
    {
        Quantity.ENERGY_IMPORT,
        Quantity.ENERGY_EXPORT,
        Quantity.ENERGY_T1,
        Quantity.ENERGY_T2,
        Quantity.ENERGY_T3,
        Quantity.ENERGY_T4,
    }
)
"""Cumulative registers checked for rollover and jumps (combined energy is signed)."""

REGISTER_RANGE_WH = 1_000_000_000
"""A DL/T 645 energy register (XXXXXX.XX kWh) wraps here, before CT/PT."""


class Journal(Protocol):
    """Where readings and events go (the store, or a list in tests); never blocks."""

    def submit(self, record: Reading | MeterEvent) -> None: ...


@dataclass(frozen=True, slots=True)
class PollSettings:
    """How a bus polls its meters (one object for every bus of a gateway)."""

    interval: float = 15.0
    """Seconds between polls of one meter; 0: continuously, as fast as the line allows.
    A meter's configured ``poll_interval_s`` replaces it for that meter."""
    fail_after: int = 3
    """Consecutive failed polls before a meter is flagged."""
    backoff_base: float = 30.0
    """Seconds before the first re-probe of a flagged meter (doubling each time)."""
    backoff_max: float = 900.0
    """Longest wait between re-probes of a flagged meter."""
    number_check_every: float = 86_400.0
    """Seconds between meter-number checks (DL/T 645)."""
    max_power_w: int = 100_000
    """Above this power (x CT x PT) an energy rise is impossible: a jump."""

    @classmethod
    def from_config(cls, polling: Polling) -> PollSettings:
        """The settings the configuration's ``polling`` section asks for."""
        return cls(
            interval=polling.interval_s,
            fail_after=polling.fail_after,
            backoff_base=polling.backoff_s,
        )


@dataclass(slots=True)
class MeterState:
    """What the poller knows about one meter (monotonic seconds)."""

    driver: MeterDriver
    interval: float = 15.0
    """Seconds between its polls (its own ``poll_interval_s`` or the bus's)."""
    due: float = 0.0
    polls: int = 0
    ok_polls: int = 0
    failures: int = 0
    """Consecutive failed polls."""
    flagged: bool = False
    flagged_since: float | None = None
    cause: str | None = None
    error: str | None = None
    probes: int = 0
    energy: dict[Quantity, int] = field(default_factory=dict)
    energy_ts_ms: int | None = None
    last_flags: int = 0
    number: str | None = None
    number_due: float | None = 0.0
    """When to check the meter number; None: the meter has none (or not DL/T 645)."""
    number_changed: bool = False
    discontinuity_pending: bool = False

    @property
    def id(self) -> str:
        return self.driver.id


class Poller:
    """Scheduler of one bus's periodic polls (runs on the bus thread)."""

    def __init__(
        self,
        bus_name: str,
        drivers: Mapping[str, MeterDriver],
        journal: Journal,
        clock: Clock,
        settings: PollSettings = PollSettings(),
        *,
        known_numbers: Mapping[str, str] | None = None,
        on_event: Callable[[MeterEvent], None] | None = None,
    ) -> None:
        self.bus_name = bus_name
        self.journal = journal
        self.clock = clock
        self.settings = settings
        self.on_event = on_event
        self.meters: dict[str, MeterState] = {}
        known = known_numbers or {}
        for i, (meter_id, driver) in enumerate(drivers.items()):
            own = driver.meter.poll_interval_s
            interval = settings.interval if own is None else own
            state = MeterState(driver, interval=interval, due=i * 1e-9)
            if driver.protocol != "dlt645":
                state.number_due = None
            state.number = known.get(meter_id)
            self.meters[meter_id] = state
        self.readings = 0
        self.events = 0

    # --- Scheduler ----------------------------------------------------------------

    def next_job(self, now: float) -> tuple[Job | None, float]:
        best: MeterState | None = None
        for state in self.meters.values():
            if state.number_due is not None and state.number_due <= now and not state.flagged:
                state.number_due = None  # until its answer reschedules it
                return ReadJob(state.id, (METER_NUMBER_DI,)), 0.0
            if best is None or state.due < best.due:
                best = state
        if best is None:
            return None, 3600.0
        if best.due > now:
            return None, best.due - now
        best.driver.flagged = best.flagged
        return ReadJob(best.id), 0.0

    def job_done(self, job: Job, result: JobResult, now: float) -> None:
        state = self.meters.get(job.meter_id)
        if state is None:
            return
        if isinstance(job, ReadJob) and job.dis == (METER_NUMBER_DI,):
            self._number_done(state, result, now)
            return
        state.polls += 1
        if result.cause == "port-error":
            state.due = now  # the bus reopens its port; poll again then
            return
        if not result.ok and result.cause in COMM_CAUSES:
            self._failed(state, result, now)
            return
        if state.flagged:
            self._restored(state, now)
        state.failures = 0
        state.probes = 0
        state.ok_polls += 1
        state.due = now + state.interval
        if result.reading is not None:
            self._store(state, result.reading, now)

    # --- answers ------------------------------------------------------------------

    def _store(self, state: MeterState, reading: Reading, now: float) -> None:
        flags = reading.flags
        if not self.clock.trusted:
            flags |= FLAG_TIME_UNTRUSTED
        flags |= self._check_energy(state, reading, now)
        if state.discontinuity_pending:
            flags |= FLAG_DISCONTINUITY
            state.discontinuity_pending = False
        if flags != reading.flags:
            reading = replace(reading, flags=flags)
        state.last_flags = flags
        self.journal.submit(reading)
        self.readings += 1

    def _check_energy(self, state: MeterState, reading: Reading, now: float) -> int:
        flags = 0
        ratio = state.driver.meter.ratio
        wraps = state.driver.protocol == "dlt645"
        span = REGISTER_RANGE_WH * ratio
        elapsed_ms = 1000
        if state.energy_ts_ms is not None:
            elapsed_ms = max(1000, reading.ts_ms - state.energy_ts_ms)
        most = self.settings.max_power_w * ratio * elapsed_ms // 3_600_000 + 20 * ratio
        for q, new in reading.values.items():
            if q not in ENERGY_QUANTITIES:
                continue
            old = state.energy.get(q)
            state.energy[q] = new
            if old is None or new == old:
                continue
            detail: dict[int | str, int | str] = {"quantity": q.name, "old": old, "new": new}
            if new < old and wraps and old - new > span // 2 and new + span - old <= most:
                flags |= FLAG_ROLLOVER
                self._event(state.id, reading.ts_ms, EventCode.REGISTER_ROLLOVER, detail)
                continue
            if new < old:
                flags |= FLAG_DISCONTINUITY
                self._event(state.id, reading.ts_ms, EventCode.ENERGY_BACKWARDS, detail)
            elif new - old > most:
                flags |= FLAG_DISCONTINUITY
                self._event(state.id, reading.ts_ms, EventCode.ENERGY_JUMP, detail)
        state.energy_ts_ms = reading.ts_ms
        if flags & FLAG_DISCONTINUITY and state.driver.protocol == "dlt645":
            state.number_due = now  # was the meter swapped?
        return flags

    def _number_done(self, state: MeterState, result: JobResult, now: float) -> None:
        if result.cause is not None and result.cause.startswith("negative"):
            state.number_due = None  # the meter keeps no number: never ask again
            return
        if not result.ok:
            state.number_due = now + max(state.interval, 60.0)
            return
        state.number_due = now + self.settings.number_check_every
        number = result.values.get(METER_NUMBER_DI)
        if not isinstance(number, str):
            return
        if state.number is not None and number != state.number:
            detail: dict[int | str, int | str] = {"old": state.number, "new": number}
            state.number_changed = True  # before the event: its journal may confirm it at once
            self._event(state.id, self._ts_ms(), EventCode.METER_NUMBER_CHANGED, detail)
            if not state.last_flags & FLAG_DISCONTINUITY:
                state.discontinuity_pending = True
        state.number = number

    def confirm(self, meter_id: str) -> None:
        """A person confirmed the meter now at this place (after a swap)."""
        self.meters[meter_id].number_changed = False

    # --- failures -----------------------------------------------------------------

    def _failed(self, state: MeterState, result: JobResult, now: float) -> None:
        state.failures += 1
        state.error = result.error
        state.cause = self._hint(state, result.cause or "no-answer")
        if state.flagged:
            state.due = now + self._backoff(state, state.probes)
            state.probes += 1
            return
        state.due = now + state.interval
        if state.failures >= self.settings.fail_after:
            state.flagged = True
            state.flagged_since = now
            state.probes = 1
            state.due = now + self._backoff(state, 0)
            detail: dict[int | str, int | str] = {
                "cause": state.cause,
                "polls": state.failures,
                "error": (result.error or "")[:200],
            }
            self._event(state.id, self._ts_ms(), EventCode.COMM_FAILURE, detail)

    def _backoff(self, state: MeterState, probes: int) -> float:
        """Seconds before a flagged meter's next probe after ``probes`` probes: the base
        (never less than the meter's own interval) doubled per probe, up to the cap (or
        the base, if longer)."""
        base = max(self.settings.backoff_base, state.interval)
        return float(min(max(self.settings.backoff_max, base), base * 2**probes))

    def _hint(self, state: MeterState, cause: str) -> str:
        """``bus-silent`` when no meter of a bus of several answers any more."""
        if cause != "no-answer" or len(self.meters) < 2:
            return cause
        if all(s.failures > 0 for s in self.meters.values()):
            return "bus-silent"
        return cause

    def _restored(self, state: MeterState, now: float) -> None:
        down = now - (state.flagged_since or now)
        detail: dict[int | str, int | str] = {"polls": state.failures, "seconds": int(down)}
        if state.cause:
            detail["cause"] = state.cause
        state.flagged = False
        state.flagged_since = None
        state.cause = state.error = None
        state.driver.flagged = False
        self._event(state.id, self._ts_ms(), EventCode.COMM_RESTORED, detail)

    # --- output -------------------------------------------------------------------

    def _ts_ms(self) -> int:
        return int(self.clock.now().timestamp() * 1000)

    def _event(
        self, meter: str, ts_ms: int, code: EventCode, detail: dict[int | str, int | str]
    ) -> None:
        event = MeterEvent(meter, ts_ms, int(code), detail)
        self.journal.submit(event)
        self.events += 1
        _logger.info(
            "event %s meter=%s %s",
            code.name,
            meter,
            " ".join(f"{k}={v}" for k, v in detail.items()),
        )
        if self.on_event is not None:
            self.on_event(event)

    def status(self) -> dict[str, object]:
        """JSON-able: counts and the flagged meters with their hints."""
        flagged = [
            {
                "meter": s.id,
                "cause": s.cause,
                "failures": s.failures,
                "error": s.error,
            }
            for s in self.meters.values()
            if s.flagged
        ]
        swapped = [s.id for s in self.meters.values() if s.number_changed]
        return {
            "meters": len(self.meters),
            "polls": sum(s.polls for s in self.meters.values()),
            "ok_polls": sum(s.ok_polls for s in self.meters.values()),
            "readings": self.readings,
            "events": self.events,
            "flagged": flagged,
            "swapped": swapped,
        }
