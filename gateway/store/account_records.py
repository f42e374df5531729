"""Accounts where the store knows better than the configuration (migration 10).

The configuration lists the accounts; accounts opened, changed or closed since (by the
master's ACCOUNT_CHANGE command, :mod:`gateway.lifecycle.accounts`) are recorded here
and win over it, the way :mod:`gateway.store.meters` records win for meters.  An
account with no row is as the configuration says.  :func:`effective_accounts` is the
configuration's list with the records applied (closed accounts left out).

The functions taking a ``db`` run inside a transaction the caller owns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import date
from typing import Literal

from sqlite_utils import Database

from gateway.config.model import Account, AccountType
from gateway.errors import StoreError

__all__ = [
    "AccountRecord",
    "AccountStatus",
    "account_record",
    "account_records",
    "effective_accounts",
    "set_account_record",
]

AccountStatus = Literal["open", "closed"]
_TYPES = ("prepaid", "postpaid", "unbilled")
_COLUMNS = "id, type, tariff, trip_on_arrears, opened, status, since_ms, reason"


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """One account as last opened or changed by command."""

    id: str
    type: AccountType
    tariff: str | None  #: None: unbilled, or no tariff
    trip_on_arrears: bool
    opened: date | None  #: local opening day (tier proration); None: long ago
    status: AccountStatus
    since_ms: int  #: when the last change took effect
    reason: str = ""


def _record(row: tuple[object, ...]) -> AccountRecord:
    ident, kind, tariff, trip, opened, status, since, reason = row
    if kind not in _TYPES or status not in ("open", "closed"):
        raise StoreError(f"account {ident}: bad record ({kind!r}, {status!r})")
    return AccountRecord(
        str(ident),
        kind,  # type: ignore[arg-type]
        None if tariff is None else str(tariff),
        bool(trip),
        None if opened is None else date.fromisoformat(str(opened)),
        status,
        int(since),  # type: ignore[call-overload]
        str(reason),
    )


def account_record(db: Database, account: str) -> AccountRecord | None:
    """The recorded account (None: as the configuration says)."""
    row = db.execute(f"SELECT {_COLUMNS} FROM account_records WHERE id = ?", (account,)).fetchone()
    return None if row is None else _record(tuple(row))


def account_records(db: Database) -> dict[str, AccountRecord]:
    """Every recorded account, by id."""
    rows = db.execute(f"SELECT {_COLUMNS} FROM account_records ORDER BY id").fetchall()
    return {r.id: r for r in (_record(tuple(row)) for row in rows)}


def set_account_record(db: Database, record: AccountRecord) -> None:
    """Write ``record`` (replacing the account's earlier one)."""
    if record.type not in _TYPES:
        raise StoreError(f"account {record.id}: unknown type {record.type!r}")
    db.execute(
        f"INSERT OR REPLACE INTO account_records ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            record.id,
            record.type,
            record.tariff,
            int(record.trip_on_arrears),
            None if record.opened is None else record.opened.isoformat(),
            record.status,
            record.since_ms,
            record.reason,
        ),
    )


def effective_accounts(
    configured: Iterable[Account], records: Mapping[str, AccountRecord]
) -> list[Account]:
    """The configured accounts with the records applied: type, tariff, trip flag and
    opening day from the record; accounts only recorded added; closed ones left out.
    By id."""
    out: dict[str, Account] = {a.id: a for a in configured}
    for r in records.values():
        if r.status == "closed":
            out.pop(r.id, None)
            continue
        base = out.get(r.id) or Account(r.id, r.type, r.tariff, r.trip_on_arrears, name=r.id)
        out[r.id] = replace(
            base, type=r.type, tariff=r.tariff, trip_on_arrears=r.trip_on_arrears, opened=r.opened
        )
    return [out[k] for k in sorted(out)]
