"""Accounts opened, changed and closed after the configuration was written (the master's
ACCOUNT_CHANGE command): kept in the store (:mod:`gateway.store.account_records`, store
migration 10), so a restart keeps them; the configuration is the starting point.

- :func:`open_account`: a new account (or a closed one opened again) with its type,
  tariff, trip-on-arrears flag and opening day (tier proration); balance 0.
- :func:`change_account`: another tariff, type or trip flag, from now on: the next
  interval of each of its meters (from its last reading) is rated the new way.
- :func:`close_account`: its meters must have been removed first; a positive balance is
  paid back by a REFUND entry that brings it to 0; arrears are refused (settle them
  first: a closed account cannot be topped up by the tenant any more).

Each runs inside ONE store-writer transaction the caller owns (through
:meth:`gateway.charging.Charger.apply`, which reloads the charger after it), is logged
once by its reference in ``lifecycle_ops`` (a repeat is refused) and raises
:class:`~gateway.errors.LifecycleRefused` and writes nothing when it cannot be done.
:func:`billing_in` is how a meter is billed with the recorded accounts applied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlite_utils import Database

from gateway.billing import TariffBook
from gateway.charging import Billing
from gateway.config.model import Account, AccountType, GatewayConfig
from gateway.errors import LifecycleRefused
from gateway.lifecycle.base import _begin, _log, _refund, billing_of
from gateway.protocols.batch import LedgerEntry
from gateway.store.account_records import (
    AccountRecord,
    account_record,
    account_records,
    effective_accounts,
    set_account_record,
)
from gateway.store.ledger import (
    VACANCY,
    balance_of,
    ensure_account,
)
from gateway.store.meters import account_members, record_of

__all__ = [
    "AccountResult",
    "accounts_in_force",
    "billing_in",
    "change_account",
    "close_account",
    "open_account",
]

_logger = logging.getLogger("gateway.lifecycle")
_TYPES = ("prepaid", "postpaid", "unbilled")


@dataclass(frozen=True, slots=True)
class AccountResult:
    """An account after :func:`open_account`, :func:`change_account` or
    :func:`close_account`; money in 0.0001 yuan."""

    account: str
    status: str  #: open | closed
    type: str
    tariff: str | None
    trip_on_arrears: bool
    opened: str | None  #: ISO day
    refunded: int  #: paid back on closing (>= 0)
    balance: int
    entries: tuple[LedgerEntry, ...] = ()


def accounts_in_force(db: Database, config: GatewayConfig) -> dict[str, Account]:
    """The configuration's accounts with the records applied (closed ones left out)."""
    return {a.id: a for a in effective_accounts(config.accounts, account_records(db))}


def billing_in(db: Database, config: GatewayConfig, meter: str) -> Billing | None:
    """:func:`~gateway.lifecycle.billing_of` ``meter`` with its record and the accounts in
    force."""
    return billing_of(config, meter, record_of(db, meter), accounts_in_force(db, config).values())


def _check(
    config: GatewayConfig, book: TariffBook, kind: str, tariff: str | None, trip: bool
) -> None:
    if kind not in _TYPES:
        raise LifecycleRefused(f"type {kind!r}: expected one of {', '.join(_TYPES)}")
    if tariff is None and kind != "unbilled":
        raise LifecycleRefused(f"a {kind} account needs a tariff")
    if tariff is not None and not book.versions(tariff):
        raise LifecycleRefused(f"no tariff {tariff!r} on this gateway")
    if trip and kind != "prepaid":
        raise LifecycleRefused("only a prepaid account trips on arrears")


def _result(
    db: Database, r: AccountRecord, refunded: int = 0, entries: tuple[LedgerEntry, ...] = ()
) -> AccountResult:
    balance = balance_of(db, r.id)
    return AccountResult(
        r.id,
        r.status,
        r.type,
        r.tariff,
        r.trip_on_arrears,
        None if r.opened is None else r.opened.isoformat(),
        refunded,
        0 if balance is None else balance,
        entries,
    )


def _today(config: GatewayConfig, ts_ms: int) -> date:
    instant = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ts_ms)
    return instant.astimezone(ZoneInfo(config.timezone)).date()


def open_account(
    db: Database,
    account: str,
    *,
    type: AccountType,
    tariff: str | None,
    trip_on_arrears: bool,
    opened: date | None,
    config: GatewayConfig,
    book: TariffBook,
    reason: str,
    ts_ms: int,
    reference: str | None = None,
) -> AccountResult:
    """Open ``account`` (balance 0; a closed one is opened again with its ledger kept)."""
    if not account.strip() or account == VACANCY:
        raise LifecycleRefused(f"account id {account!r} cannot be opened")
    if not reason.strip():
        raise LifecycleRefused("opening an account needs a reason")
    _check(config, book, type, tariff, trip_on_arrears)
    if account in accounts_in_force(db, config):
        raise LifecycleRefused(f"account {account} is open already")
    balance = balance_of(db, account)
    if balance not in (None, 0):
        raise LifecycleRefused(f"account {account} still holds {balance} in the ledger")
    ref = _begin(db, "account-open", account, ts_ms, reference)
    day = opened or _today(config, ts_ms)
    ensure_account(
        db, account, type, trip_on_arrears=trip_on_arrears, opened_day=day, opened_ms=ts_ms
    )
    record = AccountRecord(account, type, tariff, trip_on_arrears, day, "open", ts_ms, reason)
    set_account_record(db, record)
    _log(db, ref, "account-open", account, ts_ms, {"type": type, "tariff": tariff or ""})
    _logger.info("account %s opened: %s, tariff %s (%s)", account, type, tariff, reason)
    return _result(db, record)


def change_account(
    db: Database,
    account: str,
    *,
    type: AccountType | None = None,
    tariff: str | None = None,
    trip_on_arrears: bool | None = None,
    config: GatewayConfig,
    book: TariffBook,
    reason: str,
    ts_ms: int,
    reference: str | None = None,
) -> AccountResult:
    """Change the type, tariff or trip flag of an open ``account`` (None: unchanged)."""
    if not reason.strip():
        raise LifecycleRefused("changing an account needs a reason")
    found = accounts_in_force(db, config).get(account)
    if found is None or account == VACANCY:
        raise LifecycleRefused(f"no open account {account!r} to change")
    if type is None and tariff is None and trip_on_arrears is None:
        raise LifecycleRefused("nothing to change: give type, tariff or trip_on_arrears")
    kind = type or found.type
    new_tariff = tariff if tariff is not None else found.tariff
    trip = trip_on_arrears if trip_on_arrears is not None else found.trip_on_arrears
    if type is not None and type != "prepaid" and trip_on_arrears is None:
        trip = False  # no longer prepaid: nothing to trip for
    _check(config, book, kind, new_tariff, trip)
    ref = _begin(db, "account-change", account, ts_ms, reference)
    stored = account_record(db, account)
    opened = stored.opened if stored is not None else found.opened
    record = AccountRecord(account, kind, new_tariff, trip, opened, "open", ts_ms, reason)
    ensure_account(
        db,
        account,
        kind,
        trip_on_arrears=trip,
        opened_day=opened or _today(config, ts_ms),
        opened_ms=ts_ms,
    )
    set_account_record(db, record)
    detail = {"type": kind, "tariff": new_tariff or "", "trip": int(trip), "reason": reason}
    _log(db, ref, "account-change", account, ts_ms, detail)
    _logger.info(
        "account %s changed: %s, tariff %s, trip %s (%s)", account, kind, new_tariff, trip, reason
    )
    return _result(db, record)


def _meters_of(db: Database, config: GatewayConfig, account: str) -> list[str]:
    """The meters still in service on ``account`` (configured or recorded)."""
    billed = (m for m in config.meters if m.role != "gate")
    members = account_members(db, billed).get(account, {})
    return sorted(m for m, (status, _) in members.items() if status in ("active", "held"))


def close_account(
    db: Database,
    account: str,
    *,
    config: GatewayConfig,
    reason: str,
    ts_ms: int,
    operator: str = "",
    reference: str | None = None,
) -> AccountResult:
    """Close ``account``: no meter left on it, a positive balance refunded to 0."""
    if not reason.strip():
        raise LifecycleRefused("closing an account needs a reason")
    found = accounts_in_force(db, config).get(account)
    if found is None or account == VACANCY:
        raise LifecycleRefused(f"no open account {account!r} to close")
    meters = _meters_of(db, config, account)
    if meters:
        raise LifecycleRefused(f"account {account} still has meters: remove {', '.join(meters)}")
    balance = balance_of(db, account) or 0
    if balance < 0:
        raise LifecycleRefused(f"account {account} is in arrears ({balance}): settle it first")
    ref = _begin(db, "account-close", account, ts_ms, reference)
    entries: list[LedgerEntry] = []
    if balance > 0:
        entries.append(_refund(db, ref, account, balance, ts_ms, reason, operator))
    stored = account_record(db, account)
    record = AccountRecord(
        account,
        found.type,
        found.tariff,
        found.trip_on_arrears,
        stored.opened if stored is not None else found.opened,
        "closed",
        ts_ms,
        reason,
    )
    set_account_record(db, record)
    _log(db, ref, "account-close", account, ts_ms, {"refund": balance, "reason": reason})
    _logger.info("account %s closed, %d refunded (%s)", account, balance, reason)
    return _result(db, record, balance, tuple(entries))
