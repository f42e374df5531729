"""The settlement calendar task: the monthly snapshot and the yearly record, on time.

:meth:`SettlementTask.tick` (on the calendar's tick thread, like the other daily tasks)
does nothing while the clock is untrusted.  Once trusted, it takes the snapshot of the
latest monthly settlement moment that has passed (00:00 local of
``billing.settlement_day``) and the record of the latest billing-year start (00:00 local
of ``billing.year_start``), each once, ``delay_s`` after the moment (polls in flight at
the moment and their charges land first; the snapshot is as of the moment anyway): a
snapshot already stored is only read back (:mod:`gateway.settlement`), so after a
restart the tick is a cheap no-op.  Each runs in
one durable store-writer transaction.  A moment missed while the gateway was off is
taken as of that moment when it starts (the ledger and journal say what it was); only
the latest month is taken, not every month missed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date, datetime, timedelta

from gateway.billing import TariffBook
from gateway.clock import Clock
from gateway.config import GatewayConfig
from gateway.settlement import (
    Snapshot,
    monthly_moment,
    monthly_snapshot,
    yearly_moment,
    yearly_record,
)
from gateway.store.writer import StoreWriter

__all__ = ["SettlementTask"]

_logger = logging.getLogger(__name__)


class SettlementTask:
    """Monthly snapshots and yearly records of the accounts in ``writer``'s store."""

    def __init__(
        self,
        clock: Clock,
        writer: StoreWriter,
        config: GatewayConfig,
        book: TariffBook | None = None,
        *,
        books: Callable[[], TariffBook] | None = None,
        delay_s: float = 60.0,
        timeout: float = 120.0,
    ) -> None:
        self.clock = clock
        self.writer = writer
        self.config = config
        self.book = book or TariffBook.from_config(config)
        self.books = books  #: the book in force now (the charger's, with commanded versions)
        self.delay = timedelta(seconds=delay_s)
        self.timeout = timeout
        self.done: set[tuple[str, str]] = set()  #: (kind, period) taken (or found) already
        self.last: dict[str, str] = {}  #: kind -> its latest period taken
        self.suspended = False
        self.failures = 0

    def due(self, now: datetime) -> list[tuple[str, date | int]]:
        """(kind, month or year) of the latest moments passed ``delay_s`` before ``now``
        and not yet taken."""
        now = now - self.delay
        local = now.astimezone(self.config.tz)
        month = date(local.year, local.month, 1)
        if now < monthly_moment(self.config, month):
            month = (
                date(local.year - 1, 12, 1)
                if local.month == 1
                else month.replace(month=local.month - 1)
            )
        year = local.year if now >= yearly_moment(self.config, local.year) else local.year - 1
        out: list[tuple[str, date | int]] = []
        if ("monthly", f"{month:%Y-%m}") not in self.done:
            out.append(("monthly", month))
        if ("yearly", yearly_moment(self.config, year).date().isoformat()) not in self.done:
            out.append(("yearly", year))
        return out

    def tick(self, now: datetime | None = None) -> None:
        """Take what is due at ``now`` (default: the clock's); blocks for the writes."""
        now = now or self.clock.now()
        if not self.clock.trusted:
            if not self.suspended:
                _logger.warning("settlement suspended: time untrusted")
            self.suspended = True
            return
        self.suspended = False
        ts_ms = int(now.timestamp() * 1000)
        for kind, when in self.due(now):
            taken = self._take(kind, when, ts_ms)
            if taken is None:
                continue
            period = taken[0].period if taken else self._period(kind, when)
            self.done.add((kind, period))
            self.last[kind] = period

    def _period(self, kind: str, when: date | int) -> str:
        if kind == "monthly":
            assert isinstance(when, date)
            return f"{monthly_moment(self.config, when):%Y-%m}"
        assert isinstance(when, int)
        return yearly_moment(self.config, when).date().isoformat()

    def _take(self, kind: str, when: date | int, ts_ms: int) -> list[Snapshot] | None:
        config, book = self.config, self.books() if self.books is not None else self.book
        try:
            if kind == "monthly":
                assert isinstance(when, date)
                month = when
                future = self.writer.call(
                    lambda db: monthly_snapshot(db, month, ts_ms, config=config, book=book),
                    durable=True,
                )
            else:
                assert isinstance(when, int)
                year = when
                future = self.writer.call(
                    lambda db: yearly_record(db, year, ts_ms, config=config, book=book),
                    durable=True,
                )
            return future.result(self.timeout)
        except Exception as exc:  # logged; the next tick tries again
            self.failures += 1
            _logger.error("settlement %s %s failed: %s", kind, when, exc)
            return None

    def status(self) -> dict[str, object]:
        return {
            "suspended": self.suspended,
            "monthly": self.last.get("monthly"),
            "yearly": self.last.get("yearly"),
            "failures": self.failures,
        }
