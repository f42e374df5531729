"""Settlement (domain.md, "Settlement"): the monthly snapshot of every account and the
yearly record at the start of the billing year.

A snapshot is taken *as of* a settlement moment (00:00 local of ``billing.settlement_day``;
for the yearly record 00:00 local of ``billing.year_start``) and holds, per account:

- the **ledger position**: the last entry of the ledger's longest prefix whose entries
  are all dated at or before the moment (an entry dated later ends the prefix; an entry
  of a late reading dated before it, posted after that, counts in the next month);
- the **balance** at that position: the sum of the account's entries up to it, so a
  reconciliation can re-add it from the ledger exactly;
- the **tariff** id and the version in force at the moment;
- per meter of the account (configured, or recorded by the lifecycle: replacements and
  removed meters), its status and ratio, its last journaled registers (x ratio: forward
  total, and the others the reading holds) at or before the moment, and its settlement
  freeze (DL/T 645 0001FF01, or that day's daily freeze; read from 00:05) when one is
  journaled by the time the snapshot is taken;
- for the yearly record, ``year_wh``: the account's billing-year tier total of the year
  that ended: the total the charger kept when it reset it (``rating_year.closed_wh``,
  store migration 10: the total before the reset plus the crossing interval's energy
  before it), or, before any reset, the running total when no rated interval ended after
  the moment; None when neither is known (a reset before migration 10, say).

Each snapshot is written once per (kind, period, account) and never changed: taking it
again returns the stored one, so the calendar task may run it as often as it likes.  The
functions run inside a store-writer transaction the caller owns; money in 0.0001 yuan,
energy in Wh x ratio.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import cbor2
from sqlite_utils import Database

from gateway.billing import TariffBook
from gateway.config.model import GatewayConfig
from gateway.protocols.batch import TaskKind, TaskStatus
from gateway.protocols.quantities import Quantity
from gateway.store.account_records import account_records, effective_accounts
from gateway.store.meters import account_members

__all__ = [
    "MeterSnapshot",
    "Snapshot",
    "SnapshotKind",
    "monthly_moment",
    "monthly_snapshot",
    "snapshots",
    "yearly_moment",
    "yearly_record",
]

_logger = logging.getLogger(__name__)

SnapshotKind = Literal["monthly", "yearly"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ENERGY = int(Quantity.ENERGY_IMPORT)
_REGISTERS = frozenset(
    int(q)
    for q in (
        Quantity.ENERGY_IMPORT,
        Quantity.ENERGY_EXPORT,
        Quantity.ENERGY_COMBINED,
        Quantity.ENERGY_T1,
        Quantity.ENERGY_T2,
        Quantity.ENERGY_T3,
        Quantity.ENERGY_T4,
    )
)


@dataclass(frozen=True, slots=True)
class MeterSnapshot:
    """One meter of an account at the settlement moment."""

    meter: str
    status: str  #: active | removed | replaced | held
    ratio: int
    ts_ms: int | None  #: time of its last reading at or before the moment (None: none)
    energy_wh: int | None  #: that reading's forward register x ratio
    freeze_wh: int | None  #: its settlement (or daily) freeze of the day, when journaled
    #: every energy register of that reading (Quantity code -> Wh x ratio: forward,
    #: reverse, combined, per-tariff 1-4), as journaled
    registers: dict[int, int] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One account at one settlement moment."""

    kind: SnapshotKind
    period: str  #: monthly: ``YYYY-MM`` of the settlement day; yearly: ``YYYY-MM-DD`` it began
    account: str
    at_ms: int  #: the settlement moment, UTC ms
    taken_ms: int  #: when the snapshot was written
    balance: int  #: at the ledger position
    ledger_id: int  #: the ledger position (0: no entry dated at or before the moment)
    tariff: str | None
    tariff_version: int | None  #: None: no version in force at the moment
    year_wh: int | None  #: yearly: the closed year's tier total, when exactly known
    meters: tuple[MeterSnapshot, ...]


def _ms(instant: datetime) -> int:
    return (instant - _EPOCH) // timedelta(milliseconds=1)


def monthly_moment(config: GatewayConfig, month: date) -> datetime:
    """00:00 local of the settlement day of ``month`` (its year and month), aware."""
    day = date(month.year, month.month, config.billing.settlement_day)
    return datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(config.timezone))


def yearly_moment(config: GatewayConfig, year: int) -> datetime:
    """00:00 local of ``billing.year_start`` in ``year``: when a billing year ends and the
    next begins, aware."""
    month, day = config.billing.year_start
    return datetime(year, month, day, tzinfo=ZoneInfo(config.timezone))


def monthly_snapshot(
    db: Database, month: date, ts_ms: int, *, config: GatewayConfig, book: TariffBook
) -> list[Snapshot]:
    """The snapshot of every account at the settlement moment of ``month``, taken once.

    ``ts_ms`` is now; ValueError before the moment.  Accounts in the ledger, by id."""
    at = monthly_moment(config, month)
    return _take(db, "monthly", f"{at:%Y-%m}", at, ts_ms, config, book)


def yearly_record(
    db: Database, year: int, ts_ms: int, *, config: GatewayConfig, book: TariffBook
) -> list[Snapshot]:
    """The record of every account as the billing year ending at :func:`yearly_moment`
    (``year``) closes, with its tier total when exactly known; taken once."""
    at = yearly_moment(config, year)
    return _take(db, "yearly", at.date().isoformat(), at, ts_ms, config, book)


def snapshots(db: Database, kind: SnapshotKind, period: str) -> list[Snapshot]:
    """The stored snapshots of one period, by account."""
    rows = db.execute(
        "SELECT kind, period, account, at_ms, taken_ms, balance, ledger_id, tariff,"
        " tariff_version, year_wh, meters FROM settlements WHERE kind = ? AND period = ?"
        " ORDER BY account",
        (kind, period),
    ).fetchall()
    return [_decode(tuple(row)) for row in rows]


def _decode(row: tuple[Any, ...]) -> Snapshot:
    kind, period, account, at, taken, balance, ledger_id, tariff, version, year, blob = row
    meters = tuple(
        MeterSnapshot(
            str(m[0]),
            str(m[1]),
            int(m[2]),
            m[3],
            m[4],
            m[5],
            {int(k): int(v) for k, v in m[6].items()},
        )
        for m in cbor2.loads(blob)
    )
    return Snapshot(
        kind, period, account, at, taken, balance, ledger_id, tariff, version, year, meters
    )


def _take(
    db: Database,
    kind: SnapshotKind,
    period: str,
    at: datetime,
    ts_ms: int,
    config: GatewayConfig,
    book: TariffBook,
) -> list[Snapshot]:
    at_ms = _ms(at)
    if ts_ms < at_ms:
        raise ValueError(f"{kind} settlement {period} is due at {at.isoformat()}, not before")
    stored = {s.account: s for s in snapshots(db, kind, period)}
    accounts = [str(r[0]) for r in db.execute("SELECT id FROM accounts ORDER BY id")]
    if all(a in stored for a in accounts):
        return [stored[a] for a in accounts]
    position = _position(db, at_ms)
    members = account_members(db, config.meters)
    in_force = effective_accounts(config.accounts, account_records(db))
    tariffs = {a.id: a.tariff for a in in_force}
    out: list[Snapshot] = []
    for account in accounts:
        if account in stored:
            out.append(stored[account])
            continue
        tariff = tariffs.get(account)
        version: int | None = None
        if tariff is not None:
            try:
                version = book.at(tariff, at).version
            except KeyError:
                version = None
        meters = tuple(
            _meter(db, m, status, ratio, at_ms, at, config)
            for m, (status, ratio) in sorted(members.get(account, {}).items())
        )
        year = _year_wh(db, account, at_ms, members.get(account, {})) if kind == "yearly" else None
        snap = Snapshot(
            kind,
            period,
            account,
            at_ms,
            ts_ms,
            _balance(db, account, position),
            position,
            tariff,
            version,
            year,
            meters,
        )
        _store(db, snap)
        out.append(snap)
    _logger.info(
        "settlement %s %s: %d account(s) snapshotted at ledger position %d",
        kind,
        period,
        len(out) - len(stored),
        position,
    )
    return out


def _position(db: Database, at_ms: int) -> int:
    """The last id of the ledger's longest prefix dated at or before ``at_ms``."""
    first_after = db.execute("SELECT min(id) FROM ledger WHERE ts_ms > ?", (at_ms,)).fetchone()
    if first_after[0] is not None:
        return int(first_after[0]) - 1
    last = db.execute("SELECT max(id) FROM ledger").fetchone()
    return int(last[0] or 0)


def _balance(db: Database, account: str, position: int) -> int:
    row = db.execute(
        "SELECT coalesce(sum(amount), 0) FROM ledger WHERE account = ? AND id <= ?",
        (account, position),
    ).fetchone()
    return int(row[0])


def _meter(
    db: Database,
    meter: str,
    status: str,
    ratio: int,
    at_ms: int,
    at: datetime,
    config: GatewayConfig,
) -> MeterSnapshot:
    ts: int | None = None
    energy: int | None = None
    registers: dict[int, int] = {}
    rows = db.execute(
        "SELECT r.ts_ms, r.vals FROM readings r JOIN meters m ON m.id = r.meter"
        " WHERE m.name = ? AND r.ts_ms <= ? ORDER BY r.id DESC",
        (meter, at_ms),
    )
    for row_ts, vals in rows:
        values = cbor2.loads(vals) if vals else {}
        if _ENERGY in values:
            ts, energy = int(row_ts), int(values[_ENERGY])
            registers = {int(k): int(v) for k, v in values.items() if int(k) in _REGISTERS}
            break
    day = at.astimezone(ZoneInfo(config.timezone)).date().isoformat()
    freeze: int | None = None
    for kind in (TaskKind.MONTHLY_FREEZE, TaskKind.DAILY_FREEZE):
        row = db.execute(
            "SELECT t.vals FROM task_results t JOIN meters m ON m.id = t.meter"
            " WHERE m.name = ? AND t.kind = ? AND t.business_day = ? AND t.status IN (?, ?)",
            (meter, int(kind), day, int(TaskStatus.OK), int(TaskStatus.ESTIMATED)),
        ).fetchone()
        values = cbor2.loads(row[0]) if row is not None and row[0] else {}
        if _ENERGY in values:
            freeze = int(values[_ENERGY])
            break
    return MeterSnapshot(meter, status, ratio, ts, energy, freeze, registers)


def _year_wh(
    db: Database, account: str, at_ms: int, meters: Mapping[str, tuple[str, int]]
) -> int | None:
    row = db.execute(
        "SELECT year_wh, year_end_ms, closed_wh, closed_end_ms FROM rating_year WHERE account = ?",
        (account,),
    ).fetchone()
    if row is None:
        return 0
    year_wh, year_end, closed_wh, closed_end = int(row[0]), row[1], row[2], row[3]
    if closed_end is not None and int(closed_end) == at_ms:
        return int(closed_wh)  # kept by the charger at the reset
    if year_end is not None:
        return year_wh if int(year_end) == at_ms else None
    for meter in meters:  # no reset time known: exact only if nothing after the moment
        last = db.execute(
            "SELECT last_ts_ms FROM rating_state WHERE meter = ?", (meter,)
        ).fetchone()
        if last is not None and int(last[0]) > at_ms:
            return None
    return year_wh


def _store(db: Database, snap: Snapshot) -> None:
    meters = [
        [m.meter, m.status, m.ratio, m.ts_ms, m.energy_wh, m.freeze_wh, m.registers]
        for m in snap.meters
    ]
    db.execute(
        "INSERT INTO settlements (kind, period, account, at_ms, taken_ms, balance, ledger_id,"
        " tariff, tariff_version, year_wh, meters) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            snap.kind,
            snap.period,
            snap.account,
            snap.at_ms,
            snap.taken_ms,
            snap.balance,
            snap.ledger_id,
            snap.tariff,
            snap.tariff_version,
            snap.year_wh,
            cbor2.dumps(meters),
        ),
    )
