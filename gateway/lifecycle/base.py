"""What the lifecycle operations share: their results, the steps each of them takes
(checks, the operation's log row, the event, the final reading) and :func:`billing_of`.
The underscored helpers are the package's own (imported by :mod:`.swap` and
:mod:`.hard_cases`), not an API.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType

import cbor2
from sqlite_utils import Database

from gateway.billing import BillingYear, Running, SegmentKey, TariffBook
from gateway.charging import Billing, Charged, billing_of, post_reading
from gateway.errors import LifecycleRefused
from gateway.protocols.batch import LedgerEntry, MeterEvent
from gateway.protocols.quantities import EventCode, Quantity, Reading
from gateway.store.ledger import (
    EntryKind,
    TopUp,
    apply_top_up,
    balance_of,
    journal_with_charges,
)
from gateway.store.meters import MeterRecord, chargeable, record_of

__all__ = ["DeadMeterResult", "RemovalResult", "ReplacementResult", "billing_of"]

_logger = logging.getLogger("gateway.lifecycle")

_OPEN = ("active", "held")


@dataclass(frozen=True, slots=True)
class RemovalResult:
    """What :func:`remove_meter` did; money in 0.0001 yuan."""

    meter: str
    account: str
    final_position: int  #: journal position of the final reading
    final_wh: int  #: the final register x ratio
    charged: int  #: charged for the last interval (>= 0)
    refunded: int  #: paid back (>= 0)
    balance: int  #: the account's balance afterwards
    entries: tuple[LedgerEntry, ...]  #: the charges, then the refund


@dataclass(frozen=True, slots=True)
class ReplacementResult:
    """What :func:`replace_meter` or :func:`change_ct` did."""

    old: str
    new: str  #: the same as ``old`` for a CT change
    account: str
    final_position: int | None  #: None: the old meter was settled dead before
    initial_position: int  #: journal position of the new meter's initial reading
    charged: int  #: charged for the old meter's last interval
    carried: int  #: rounding accumulators carried to the new meter
    year_wh: int  #: the account's billing-year total, going on
    balance: int
    entries: tuple[LedgerEntry, ...]


@dataclass(frozen=True, slots=True)
class DeadMeterResult:
    """What :func:`settle_dead_meter` did."""

    meter: str
    account: str
    position: int  #: journal position of the manual or estimated reading
    energy_wh: int  #: the energy charged for (since the last rated reading)
    estimated: bool
    charged: int
    balance: int
    approved_by: str
    reason: str
    entries: tuple[LedgerEntry, ...]


# --- the shared steps ---------------------------------------------------------------------


def _energy(reading: Reading, what: str) -> int:
    energy = reading.values.get(Quantity.ENERGY_IMPORT)
    if energy is None:
        raise LifecycleRefused(f"{what} of meter {reading.meter} has no forward energy")
    return energy


def _open_record(db: Database, meter: str, billing: Billing) -> MeterRecord | None:
    if billing.meter != meter:
        raise LifecycleRefused(f"billing of {billing.meter} given for meter {meter}")
    record = record_of(db, meter)
    if record is not None and record.status not in _OPEN:
        raise LifecycleRefused(f"meter {meter} is {record.status}")
    return record


def _begin(db: Database, kind: str, meter: str, ts_ms: int, reference: str | None) -> str:
    ref = reference or f"{kind}:{meter}:{ts_ms}"
    if db.execute("SELECT 1 FROM lifecycle_ops WHERE reference = ?", (ref,)).fetchone():
        raise LifecycleRefused(f"{ref} was already done")
    return ref


def _log(db: Database, ref: str, kind: str, meter: str, ts_ms: int, detail: object) -> None:
    db.execute(
        "INSERT INTO lifecycle_ops (reference, kind, meter, ts_ms, result) VALUES (?, ?, ?, ?, ?)",
        (ref, kind, meter, ts_ms, cbor2.dumps(detail)),
    )


def _event(
    db: Database, meter: str, ts_ms: int, code: EventCode, detail: dict[int | str, int | str]
) -> int:
    position, _ = journal_with_charges(db, MeterEvent(meter, ts_ms, int(code), detail), ())
    _logger.info(
        "event %s meter=%s %s", code.name, meter, " ".join(f"{k}={v}" for k, v in detail.items())
    )
    return position


def _final(
    db: Database,
    reading: Reading,
    billing: Billing,
    book: TariffBook,
    engine: ModuleType | None,
    calendar: BillingYear | None,
) -> Charged:
    """The final reading: rated and charged, unless the meter is held (journaled only)."""
    if reading.meter != billing.meter:
        raise LifecycleRefused(f"a reading of {reading.meter} given for meter {billing.meter}")
    _energy(reading, "the final reading")
    if chargeable(db, billing.meter):
        return post_reading(db, reading, billing, book, engine=engine, calendar=calendar)
    position, _ = journal_with_charges(db, reading, ())
    return Charged(position, ())


def _charged(entries: tuple[LedgerEntry, ...]) -> int:
    return -sum(e.amount for e in entries)


def _balance(db: Database, account: str) -> int:
    balance = balance_of(db, account)
    if balance is None:
        raise LifecycleRefused(f"no account {account!r} in the ledger")
    return balance


def _refund(
    db: Database, ref: str, account: str, amount: int, ts_ms: int, reason: str, operator: str
) -> LedgerEntry:
    """Pay ``amount`` (> 0) back to the tenant: one REFUND entry, its ledger id
    ``refund:<ref>``."""
    top_up = TopUp(
        f"refund:{ref}", account, EntryKind.REFUND, -amount, ts_ms, reason=reason, operator=operator
    )
    result = apply_top_up(db, top_up)
    if result.entry is None or not result.applied:
        raise LifecycleRefused(f"refund refused: {result.refused or 'already applied'}")
    return result.entry


def _year_wh(db: Database, account: str) -> int:
    row = db.execute("SELECT year_wh FROM rating_year WHERE account = ?", (account,)).fetchone()
    return 0 if row is None else int(row[0])


def _merge(
    into: dict[SegmentKey, Running], more: dict[SegmentKey, Running]
) -> dict[SegmentKey, Running]:
    out = dict(into)
    for key, run in more.items():
        have = out.get(key, Running())
        out[key] = Running(have.energy_wh + run.energy_wh, have.posted + run.posted)
    return out


def _settled_dead(db: Database, meter: str) -> bool:
    row = db.execute(
        "SELECT 1 FROM lifecycle_ops WHERE meter = ? AND kind = 'dead'", (meter,)
    ).fetchone()
    return row is not None
