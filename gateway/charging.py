"""Charging: each reading's charge posted in the same durable transaction as the reading
(design.md, data flow: reading -> rating -> ledger + journal in one transaction).

A :class:`Charger` is the poller's :class:`~gateway.poller.Journal`. Events and readings
of meters that are not charged go to the store writer as before. A reading of a meter
whose account has a tariff becomes one ``StoreWriter.call(..., durable=True)``: inside
it the meter's rating state is read from the ``rating_state`` table (migration 4), the
interval since the previous reading is rated (:func:`gateway.billing.rate`), and the
reading, its charges and the new state are written; the writer rolls all of it back if
any part fails, so there is never a reading without its charge nor a charge twice. A
charge's ledger reference is ``<meter>:<reading position>:<line>``, unique among charges
(migration 4), so a replay cannot double-charge.

Rules: the first reading of a meter is its baseline (no charge); no consumption across
:data:`~gateway.protocols.quantities.FLAG_DISCONTINUITY` (the reading is the new
baseline); a rollover's consumption is new + range - old; an unbilled account is never
charged (its state still advances); a meter with no account, or an account with no
tariff, is not charged; an interval with no tariff version in force is journaled
uncharged (logged) and its reading becomes the baseline. While the clock is untrusted a
time-of-use tariff is not rated: the baseline stays at the last trusted reading and the
whole stretch is rated, by time, at the first trusted reading (flat and tiered tariffs
are rated at once). The billing-year tier total is kept per account (``rating_year``),
shared by its meters.

Not done here: per-tariff registers (``slot_wh``), the yearly tier reset and prorated
thresholds (``MeterState.year_end`` / ``thresholds`` stay None), charging the vacancy
account for meters with no tenant.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import ModuleType

import cbor2
from sqlite_utils import Database

from gateway.billing import Interval, MeterState, Running, SegmentKey, TariffBook, rate
from gateway.config.model import GatewayConfig, TouTariff
from gateway.poller import REGISTER_RANGE_WH
from gateway.protocols.batch import LedgerEntry, MeterEvent
from gateway.protocols.quantities import (
    FLAG_DISCONTINUITY,
    FLAG_ROLLOVER,
    FLAG_TIME_UNTRUSTED,
    Quantity,
    Reading,
)
from gateway.store.ledger import Charge, journal_with_charges, post_charges
from gateway.store.writer import StoreWriter

__all__ = ["Billing", "Charged", "Charger", "RatingRow", "load_state", "post_reading", "save_state"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RatingRow:
    """One meter's persisted rating state (``rating_state``)."""

    meter: str
    last_ts_ms: int
    last_energy_wh: int
    totals: dict[SegmentKey, Running]


@dataclass(frozen=True, slots=True)
class Charged:
    """What one reading's transaction wrote."""

    position: int
    entries: tuple[LedgerEntry, ...]


@dataclass(frozen=True, slots=True)
class Billing:
    """How one meter is billed: its account, tariff and register ratio."""

    meter: str
    account: str
    tariff: str
    unbilled: bool
    dlt645: bool
    ratio: int


def _encode_totals(totals: Mapping[SegmentKey, Running]) -> bytes:
    rows = [[t, v, k, r.energy_wh, r.posted] for (t, v, k), r in sorted(totals.items())]
    return cbor2.dumps(rows)


def _decode_totals(blob: bytes) -> dict[SegmentKey, Running]:
    return {
        (str(t), int(v), str(k)): Running(int(e), int(p)) for t, v, k, e, p in cbor2.loads(blob)
    }


def load_state(db: Database, meter: str) -> RatingRow | None:
    """The persisted rating state of ``meter``, if any."""
    row = db.execute(
        "SELECT last_ts_ms, last_energy_wh, totals FROM rating_state WHERE meter = ?",
        (meter,),
    ).fetchone()
    if row is None:
        return None
    return RatingRow(meter, int(row[0]), int(row[1]), _decode_totals(bytes(row[2])))


def _year_wh(db: Database, account: str) -> int:
    row = db.execute("SELECT year_wh FROM rating_year WHERE account = ?", (account,)).fetchone()
    return 0 if row is None else int(row[0])


def save_state(
    db: Database, meter: str, ts_ms: int, energy_wh: int, totals: Mapping[SegmentKey, Running]
) -> None:
    """Persist ``meter``'s rating state (its last reading and rounding accumulators), in the
    caller's transaction."""
    db.execute(
        "INSERT INTO rating_state (meter, last_ts_ms, last_energy_wh, totals) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (meter) DO UPDATE SET last_ts_ms = excluded.last_ts_ms,"
        " last_energy_wh = excluded.last_energy_wh, totals = excluded.totals",
        (meter, ts_ms, energy_wh, _encode_totals(totals)),
    )


def _when(ts_ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ts_ms)


def post_reading(
    db: Database,
    reading: Reading,
    billing: Billing,
    book: TariffBook,
    *,
    engine: ModuleType | None = None,
) -> Charged:
    """Journal ``reading``, rate it and post its charges, in the caller's transaction."""
    position, _ = journal_with_charges(db, reading, ())
    energy = reading.values.get(Quantity.ENERGY_IMPORT)
    if energy is None:
        return Charged(position, ())
    prev = load_state(db, billing.meter)
    totals = prev.totals if prev is not None else {}
    if prev is None or reading.flags & FLAG_DISCONTINUITY:
        save_state(db, billing.meter, reading.ts_ms, energy, totals)
        return Charged(position, ())
    delta = energy - prev.last_energy_wh
    if delta < 0 and reading.flags & FLAG_ROLLOVER and billing.dlt645:
        delta += REGISTER_RANGE_WH * billing.ratio
    if delta < 0:  # a fall the poller did not flag: no credit, a new baseline
        save_state(db, billing.meter, reading.ts_ms, energy, totals)
        return Charged(position, ())
    t0 = _when(prev.last_ts_ms)
    t1 = max(t0, _when(reading.ts_ms))
    if reading.flags & FLAG_TIME_UNTRUSTED and any(
        isinstance(v, TouTariff) for v in book.versions(billing.tariff)
    ):
        return Charged(position, ())  # deferred: rated at the first trusted reading
    state = MeterState(
        billing.meter,
        billing.account,
        billing.tariff,
        year_wh=_year_wh(db, billing.account),
        totals=totals,
    )
    try:
        rating = rate(state, Interval(t0, t1, delta), book, engine=engine)
    except KeyError as exc:  # no tariff version in force: stored, not charged
        _logger.warning("meter %s: not rated: %s", billing.meter, exc)
        save_state(db, billing.meter, reading.ts_ms, energy, totals)
        return Charged(position, ())
    db.execute(
        "INSERT INTO rating_year (account, year_wh) VALUES (?, ?) ON CONFLICT (account)"
        " DO UPDATE SET year_wh = excluded.year_wh",
        (billing.account, rating.state.year_wh),
    )
    save_state(db, billing.meter, reading.ts_ms, energy, dict(rating.state.totals))
    if billing.unbilled:
        return Charged(position, ())
    charges = [
        Charge(
            billing.account,
            reading.ts_ms,
            line.amount,
            f"{billing.meter}:{position}:{i}",
            line.version,
            billing.meter,
        )
        for i, line in enumerate(rating.lines)
    ]
    return Charged(position, tuple(post_charges(db, charges)))


class Charger:
    """The poller's journal: readings of charged meters posted with their charges."""

    def __init__(
        self,
        writer: StoreWriter,
        config: GatewayConfig,
        book: TariffBook | None = None,
        *,
        engine: ModuleType | None = None,
    ) -> None:
        self.writer = writer
        self.book = book or TariffBook.from_config(config)
        self.engine = engine
        self.billing: dict[str, Billing] = {}
        accounts = {a.id: a for a in config.accounts}
        buses = {b.name: b for b in config.serial_buses}
        for meter in config.meters:
            account = accounts.get(meter.account) if meter.account else None
            if account is None or account.tariff is None:
                continue
            bus = buses.get(meter.bus)
            self.billing[meter.id] = Billing(
                meter.id,
                account.id,
                account.tariff,
                account.type == "unbilled",
                bus is not None and bus.protocol == "dlt645",
                meter.ratio,
            )
        self.posted = 0
        self.failed = 0

    def submit(self, record: Reading | MeterEvent) -> None:
        billing = self.billing.get(record.meter) if isinstance(record, Reading) else None
        if billing is None:
            self.writer.submit(record)
            return
        self.post(record, billing)  # type: ignore[arg-type]

    def post(self, reading: Reading, billing: Billing) -> Future[Charged]:
        """Queue the reading's durable transaction; its future."""

        def run(db: Database) -> Charged:
            return post_reading(db, reading, billing, self.book, engine=self.engine)

        future = self.writer.call(run, durable=True)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: Future[Charged]) -> None:
        exc = future.exception()
        if exc is None:
            self.posted += 1
            return
        self.failed += 1
        _logger.error("charging failed (reading not stored): %s", exc)

    def status(self) -> dict[str, object]:
        return {"meters": len(self.billing), "posted": self.posted, "failed": self.failed}
