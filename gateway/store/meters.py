"""A meter's standing where the store knows better than the configuration (migrations 7, 11).

The configuration lists the meters and their accounts; the meter lifecycle
(:mod:`gateway.lifecycle`) records here what happened since: a meter *removed* (no
further charging), *replaced* by another (``replaced_by``), *held* (its nameplate number
changed without a work order: its readings are journaled but not charged until a person
confirms) or *active* again.  A meter with no row is as the configuration says.  A
replacement or addition may record the new meter's nameplate number (``meter_number``,
12 digits, migration 11): the poller's METER_NUMBER_CHANGED to that number is the work
order's own swap (:func:`expects_number`), not a swap without a work order.

The functions run inside a transaction the caller owns (a ``StoreWriter.call``).
:func:`chargeable` is what charging asks before rating a reading.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from sqlite_utils import Database

from gateway.config.model import Meter
from gateway.errors import StoreError

__all__ = [
    "MeterRecord",
    "MeterStatus",
    "account_members",
    "chargeable",
    "expects_number",
    "hold",
    "is_meter_number",
    "meter_records",
    "record_of",
    "set_record",
]

MeterStatus = Literal["active", "removed", "replaced", "held"]
_STATUSES = ("active", "removed", "replaced", "held")
_COLUMNS = "meter, account, status, ratio, since_ms, replaced_by, replaces, reason, meter_number"


@dataclass(frozen=True, slots=True)
class MeterRecord:
    """One meter's recorded standing."""

    meter: str
    account: str | None  #: the account it was charged to (a replacement: the old one's)
    status: MeterStatus
    ratio: int  #: CT x PT ratio in force (a CT change records the new one)
    since_ms: int  #: when the status took effect
    replaced_by: str | None = None  #: replaced: the meter that took its place
    replaces: str | None = None  #: a replacement: the meter it took the place of
    reason: str = ""
    meter_number: str | None = None  #: the nameplate number its work order gave (12 digits)


def is_meter_number(text: object) -> bool:
    """Whether ``text`` is a nameplate number as DL/T 645 DI 04000402 holds it: 12 digits."""
    return isinstance(text, str) and len(text) == 12 and text.isascii() and text.isdigit()


def expects_number(record: MeterRecord | None, number: object) -> bool:
    """Whether ``number`` (a METER_NUMBER_CHANGED's new number) is the one the meter's
    work order recorded for the active meter at this place."""
    return (
        record is not None
        and record.status == "active"
        and record.meter_number is not None
        and record.meter_number == number
    )


def _record(row: tuple[object, ...]) -> MeterRecord:
    meter, account, status, ratio, since, by, replaces, reason, number = row
    if status not in _STATUSES:
        raise StoreError(f"meter {meter}: unknown status {status!r}")
    return MeterRecord(
        str(meter),
        None if account is None else str(account),
        status,  # type: ignore[arg-type]
        int(ratio),  # type: ignore[call-overload]
        int(since),  # type: ignore[call-overload]
        None if by is None else str(by),
        None if replaces is None else str(replaces),
        str(reason),
        None if number is None else str(number),
    )


def record_of(db: Database, meter: str) -> MeterRecord | None:
    """The recorded standing of ``meter`` (None: as the configuration says)."""
    row = db.execute(f"SELECT {_COLUMNS} FROM meter_records WHERE meter = ?", (meter,)).fetchone()
    return None if row is None else _record(tuple(row))


def meter_records(db: Database) -> list[MeterRecord]:
    """Every recorded meter, by id."""
    rows = db.execute(f"SELECT {_COLUMNS} FROM meter_records ORDER BY meter").fetchall()
    return [_record(tuple(row)) for row in rows]


def set_record(db: Database, record: MeterRecord) -> None:
    """Write ``record`` (replacing the meter's earlier one)."""
    if record.status not in _STATUSES:
        raise StoreError(f"meter {record.meter}: unknown status {record.status!r}")
    if type(record.ratio) is not int or record.ratio < 1:
        raise StoreError(f"meter {record.meter}: ratio must be a positive integer")
    if record.meter_number is not None and not is_meter_number(record.meter_number):
        raise StoreError(f"meter {record.meter}: meter number must be 12 digits")
    db.execute(
        f"INSERT OR REPLACE INTO meter_records ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            record.meter,
            record.account,
            record.status,
            record.ratio,
            record.since_ms,
            record.replaced_by,
            record.replaces,
            record.reason,
            record.meter_number,
        ),
    )


def account_members(
    db: Database, configured: Iterable[Meter]
) -> dict[str, dict[str, tuple[MeterStatus, int]]]:
    """account -> meter -> (status, ratio) of every meter ever on it: the ``configured``
    meters with an account (active, at their configured ratio), overridden by the
    records (whatever their status, under the recorded account)."""
    out: dict[str, dict[str, tuple[MeterStatus, int]]] = {}
    records = {r.meter: r for r in meter_records(db)}
    for m in configured:
        if m.account is not None and m.id not in records:
            out.setdefault(m.account, {})[m.id] = ("active", m.ratio)
    for r in records.values():
        if r.account is not None:
            out.setdefault(r.account, {})[r.meter] = (r.status, r.ratio)
    return out


def chargeable(db: Database, meter: str) -> bool:
    """Whether a reading of ``meter`` may be rated and charged: not removed, replaced or
    held (a meter with no record is chargeable)."""
    row = db.execute("SELECT status FROM meter_records WHERE meter = ?", (meter,)).fetchone()
    return row is None or row[0] == "active"


def hold(
    db: Database, meter: str, *, account: str | None, ratio: int, ts_ms: int, why: str
) -> None:
    """Hold ``meter``: its nameplate number changed without a work order; its readings are
    journaled, not charged, until :func:`gateway.lifecycle.confirm_meter`.  A removed or
    replaced meter stays so; a held one keeps its first hold time."""
    found = record_of(db, meter)
    if found is not None and found.status != "active":
        return
    set_record(db, MeterRecord(meter, account, "held", ratio, ts_ms, reason=why))
