"""The charging state in the store, read and written inside the caller's transaction
(migrations 4 and 8): each meter's rating state, each account's billing-year tier total
and prepaid state; and :func:`post_reading`, the store-only path of one reading.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import cbor2
from sqlite_utils import Database

from gateway.billing import BillingYear, Running, SegmentKey, TariffBook
from gateway.charging.rate import AccountYear, Billing, Rated, RatingRow, rate_reading, when
from gateway.prepaid import PrepaidState, Thresholds
from gateway.protocols.batch import LedgerEntry
from gateway.protocols.quantities import Reading
from gateway.store.account_records import AccountRecord, account_records
from gateway.store.ledger import Charge, journal_with_charges, post_charges
from gateway.store.meters import MeterRecord, meter_records

__all__ = [
    "Charged",
    "Snapshot",
    "closed_year",
    "load_state",
    "load_year",
    "post_reading",
    "read_snapshot",
    "reading_charges",
    "save_closed",
    "save_prepaid",
    "save_state",
    "save_year",
]


@dataclass(frozen=True, slots=True)
class Charged:
    """What one reading's transaction wrote."""

    position: int
    entries: tuple[LedgerEntry, ...]


def _encode_totals(totals: Mapping[SegmentKey, Running]) -> bytes:
    rows = [[t, v, k, r.energy_wh, r.posted] for (t, v, k), r in sorted(totals.items())]
    return cbor2.dumps(rows)


def _decode_totals(blob: bytes) -> dict[SegmentKey, Running]:
    return {
        (str(t), int(v), str(k)): Running(int(e), int(p)) for t, v, k, e, p in cbor2.loads(blob)
    }


def _row(meter: str, ts: Any, energy: Any, totals: Any, slots: Any) -> RatingRow:
    registers = None
    if slots is not None:
        registers = {int(k): int(v) for k, v in cbor2.loads(bytes(slots)).items()}
    return RatingRow(meter, int(ts), int(energy), _decode_totals(bytes(totals)), registers)


def load_state(db: Database, meter: str) -> RatingRow | None:
    """The persisted rating state of ``meter``, if any."""
    row = db.execute(
        "SELECT last_ts_ms, last_energy_wh, totals, last_slots FROM rating_state WHERE meter = ?",
        (meter,),
    ).fetchone()
    return None if row is None else _row(meter, *row)


def save_state(
    db: Database,
    meter: str,
    ts_ms: int,
    energy_wh: int,
    totals: Mapping[SegmentKey, Running],
    slots: Mapping[int, int] | None = None,
) -> None:
    """Persist ``meter``'s rating state (its last reading, per-tariff registers and
    rounding accumulators), in the caller's transaction."""
    blob = None if slots is None else cbor2.dumps(dict(sorted(slots.items())))
    db.execute(
        "INSERT INTO rating_state (meter, last_ts_ms, last_energy_wh, totals, last_slots)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (meter) DO UPDATE SET"
        " last_ts_ms = excluded.last_ts_ms, last_energy_wh = excluded.last_energy_wh,"
        " totals = excluded.totals, last_slots = excluded.last_slots",
        (meter, ts_ms, energy_wh, _encode_totals(totals), blob),
    )


def _ms(instant: datetime | None) -> int | None:
    if instant is None:
        return None
    return (instant - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def load_year(db: Database, account: str) -> AccountYear:
    row = db.execute(
        "SELECT year_wh, year_end_ms FROM rating_year WHERE account = ?", (account,)
    ).fetchone()
    if row is None:
        return AccountYear()
    return AccountYear(int(row[0]), None if row[1] is None else when(int(row[1])))


def save_year(db: Database, account: str, year: AccountYear) -> None:
    db.execute(
        "INSERT INTO rating_year (account, year_wh, year_end_ms) VALUES (?, ?, ?)"
        " ON CONFLICT (account) DO UPDATE SET year_wh = excluded.year_wh,"
        " year_end_ms = excluded.year_end_ms",
        (account, year.year_wh, _ms(year.year_end)),
    )


def closed_year(old: AccountYear, rated: Rated) -> tuple[int, int] | None:
    """(the closed year's tier total, its reset in UTC ms) when ``rated`` crossed the
    account's known yearly reset: the total before it plus this interval's energy before
    the reset (the rating splits its lines there); None when no reset was crossed."""
    new = rated.year
    end = old.year_end
    if new is None or end is None or new.year_end is None or new.year_end <= end:
        return None
    before = sum(line.energy_wh for line in rated.lines if line.t1 <= end)
    ms = _ms(end)
    assert ms is not None
    return old.year_wh + before, ms


def save_closed(db: Database, account: str, closed: tuple[int, int]) -> None:
    """Keep ``closed`` (:func:`closed_year`) on the account's ``rating_year`` row (written
    before, in the same transaction); an earlier year never overwrites a later one."""
    wh, end_ms = closed
    db.execute(
        "UPDATE rating_year SET closed_wh = ?, closed_end_ms = ? WHERE account = ?"
        " AND (closed_end_ms IS NULL OR closed_end_ms <= ?)",
        (wh, end_ms, account, end_ms),
    )


def save_prepaid(
    db: Database, account: str, state: PrepaidState, tripped: bool, balance: int, ts_ms: int
) -> None:
    db.execute(
        "INSERT INTO prepaid_state (account, state, tripped, balance, ts_ms) VALUES"
        " (?, ?, ?, ?, ?) ON CONFLICT (account) DO UPDATE SET state = excluded.state,"
        " tripped = excluded.tripped, balance = excluded.balance, ts_ms = excluded.ts_ms",
        (account, str(state), int(tripped), balance, ts_ms),
    )


def reading_charges(
    billing: Billing, reading: Reading, position: int, rated: Rated
) -> list[Charge]:
    return [
        Charge(
            billing.account,
            reading.ts_ms,
            line.amount,
            f"{billing.meter}:{position}:{i}",
            line.version,
            billing.meter,
        )
        for i, line in enumerate(rated.lines)
    ]


def post_reading(
    db: Database,
    reading: Reading,
    billing: Billing,
    book: TariffBook,
    *,
    engine: ModuleType | None = None,
    calendar: BillingYear | None = None,
) -> Charged:
    """Journal ``reading``, rate it from the stored state and post its charges, in the
    caller's transaction (the store-only path: meter lifecycle, tests).  A running
    :class:`Charger` must :meth:`~Charger.reload` afterwards."""
    position, _ = journal_with_charges(db, reading, ())
    year = load_year(db, billing.account)
    rated = rate_reading(
        load_state(db, billing.meter),
        reading,
        billing,
        book,
        year,
        calendar or BillingYear(timezone=book.calendar.timezone),
        engine=engine,
    )
    if rated.state is not None:
        s = rated.state
        save_state(db, s.meter, s.last_ts_ms, s.last_energy_wh, s.totals, s.slots)
    if rated.year is not None:
        save_year(db, billing.account, rated.year)
        closed = closed_year(year, rated)
        if closed is not None:
            save_closed(db, billing.account, closed)
    if billing.unbilled or not rated.lines:
        return Charged(position, ())
    return Charged(
        position, tuple(post_charges(db, reading_charges(billing, reading, position, rated)))
    )


@dataclass(frozen=True, slots=True)
class Snapshot:
    accounts: list[tuple[str, str, bool, int]]
    states: dict[str, RatingRow]
    years: dict[str, AccountYear]
    prepaid: dict[str, tuple[PrepaidState, bool]]
    thresholds: dict[str, Thresholds]
    records: dict[str, MeterRecord]
    ledger_id: int
    account_records: dict[str, AccountRecord] = field(default_factory=dict)


def read_snapshot(db: Database) -> Snapshot:
    accounts = [
        (str(a), str(t), bool(trip), int(b))
        for a, t, trip, b in db.execute(
            "SELECT id, type, trip_on_arrears, balance FROM accounts ORDER BY id"
        ).fetchall()
    ]
    states = {
        str(m): _row(str(m), ts, e, totals, slots)
        for m, ts, e, totals, slots in db.execute(
            "SELECT meter, last_ts_ms, last_energy_wh, totals, last_slots FROM rating_state"
        ).fetchall()
    }
    years = {
        str(a): AccountYear(int(wh), None if end is None else when(int(end)))
        for a, wh, end in db.execute(
            "SELECT account, year_wh, year_end_ms FROM rating_year"
        ).fetchall()
    }
    prepaid = {
        str(a): (PrepaidState(str(s)), bool(t))
        for a, s, t in db.execute("SELECT account, state, tripped FROM prepaid_state").fetchall()
    }
    thresholds = {
        str(r[0]): Thresholds(*(int(x) for x in r[1:]))
        for r in db.execute(
            "SELECT account, alarm1, alarm2, overdraft_limit, close_allow, emergency_credit"
            " FROM prepaid_thresholds"
        ).fetchall()
    }
    records = {r.meter: r for r in meter_records(db)}
    ledger_id = int(db.execute("SELECT coalesce(max(id), 0) FROM ledger").fetchone()[0])
    return Snapshot(
        accounts, states, years, prepaid, thresholds, records, ledger_id, account_records(db)
    )
