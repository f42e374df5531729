"""The daily vacancy exception list (domain.md, "Account types": a meter drawing energy
with no tenant is charged to the vacancy account "and listed daily as an exception").

:meth:`VacancyTask.tick` (on the calendar's tick thread) does nothing while the clock is
untrusted.  Once trusted, ``delay_s`` after local midnight it lists the day that ended:
the meters charged to :data:`~gateway.store.ledger.VACANCY` that day
(:func:`~gateway.store.ledger.vacancy_exceptions`, by the charges' times), each as one
:attr:`~gateway.protocols.quantities.EventCode.VACANCY_EXCEPTION` event (detail: day,
charges, amount) dated at the day's end, so the master receives the list in the
batches like any meter event; and the day in ``vacancy_lists`` (store migration 10),
in the same durable transaction, so each day is listed once, also across restarts.  A
day with no exception writes no event (only its row).  Only the latest day is listed,
not every day missed while the gateway was off.  ``gateway status`` shows the latest
list under ``vacancy``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlite_utils import Database

from gateway.clock import Clock
from gateway.config import GatewayConfig
from gateway.protocols.batch import MeterEvent
from gateway.protocols.quantities import EventCode
from gateway.store.ledger import journal_with_charges, vacancy_exceptions
from gateway.store.writer import StoreWriter

__all__ = ["VacancyList", "VacancyTask", "list_day"]

_logger = logging.getLogger(__name__)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class VacancyList:
    """One day's exception list; money in 0.0001 yuan."""

    day: str  #: local ISO day
    meters: tuple[tuple[str, int, int], ...]  #: (meter, charges, amount), by meter
    amount: int  #: the day's total charged to the vacancy account
    taken_ms: int  #: when it was listed
    new: bool  #: listed by this call (False: found listed already)


def _ms(instant: datetime) -> int:
    return (instant - _EPOCH) // timedelta(milliseconds=1)


def list_day(db: Database, day: date, config: GatewayConfig, ts_ms: int) -> VacancyList:
    """List ``day`` once (in the caller's transaction): its events and its row; a day
    listed already is read back (no second event)."""
    start = datetime.combine(day, time(), config.tz)
    end = datetime.combine(day + timedelta(days=1), time(), config.tz)
    end_ms = _ms(end)
    rows = tuple((m, n, amount) for m, n, amount in vacancy_exceptions(db, _ms(start), end_ms) if m)
    iso = day.isoformat()
    found = db.execute(
        "SELECT taken_ms, amount FROM vacancy_lists WHERE day = ?", (iso,)
    ).fetchone()
    if found is not None:
        return VacancyList(iso, rows, int(found[1]), int(found[0]), False)
    total = sum(amount for _, _, amount in rows)
    for meter, charges, amount in rows:
        detail: dict[int | str, int | str] = {"day": iso, "charges": charges, "amount": amount}
        event = MeterEvent(meter, end_ms, int(EventCode.VACANCY_EXCEPTION), detail)
        journal_with_charges(db, event, ())
        _logger.warning(
            "vacancy exception %s: meter %s drew %d charges, %d to the vacancy account",
            iso,
            meter,
            charges,
            amount,
        )
    db.execute(
        "INSERT INTO vacancy_lists (day, taken_ms, meters, amount) VALUES (?, ?, ?, ?)",
        (iso, ts_ms, len(rows), total),
    )
    _logger.info("vacancy list %s: %d meter(s), %d in total", iso, len(rows), total)
    return VacancyList(iso, rows, total, ts_ms, True)


class VacancyTask:
    """The daily vacancy exception list of ``writer``'s store (see the module)."""

    def __init__(
        self,
        clock: Clock,
        writer: StoreWriter,
        config: GatewayConfig,
        *,
        delay_s: float = 60.0,
        timeout: float = 120.0,
    ) -> None:
        self.clock = clock
        self.writer = writer
        self.config = config
        self.delay = timedelta(seconds=delay_s)
        self.timeout = timeout
        self.done: set[str] = set()  #: days listed (or found listed)
        self.last: VacancyList | None = None
        self.suspended = False
        self.failures = 0

    def due(self, now: datetime) -> date | None:
        """The day that ended ``delay_s`` before ``now`` (local), unless listed."""
        day = (now - self.delay).astimezone(self.config.tz).date() - timedelta(days=1)
        return None if day.isoformat() in self.done else day

    def tick(self, now: datetime | None = None) -> None:
        """List the day due at ``now`` (default: the clock's); blocks for the write."""
        now = now or self.clock.now()
        if not self.clock.trusted:
            if not self.suspended:
                _logger.warning("vacancy list suspended: time untrusted")
            self.suspended = True
            return
        self.suspended = False
        day = self.due(now)
        if day is None:
            return
        ts_ms, config = _ms(now), self.config
        try:
            listed = self.writer.call(
                lambda db: list_day(db, day, config, ts_ms), durable=True
            ).result(self.timeout)
        except Exception as exc:  # logged; the next tick tries again
            self.failures += 1
            _logger.error("vacancy list %s failed: %s", day, exc)
            return
        self.done.add(listed.day)
        self.last = listed

    def status(self) -> dict[str, object]:
        last = self.last
        return {
            "suspended": self.suspended,
            "day": last.day if last else None,
            "meters": {m: {"charges": n, "amount": a} for m, n, a in last.meters} if last else {},
            "amount": last.amount if last else 0,
            "failures": self.failures,
        }
