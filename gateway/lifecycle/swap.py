"""Meters in and out of service: add (加表), remove (减表), replace (换表) and a CT-ratio
change (a replacement of the meter by itself), each in the caller's transaction."""

from __future__ import annotations

import logging
from dataclasses import replace
from types import ModuleType

from sqlite_utils import Database

from gateway.billing import BillingYear, TariffBook
from gateway.charging import Billing, load_state, save_state
from gateway.errors import LifecycleRefused
from gateway.lifecycle.base import (  # the package's shared steps
    _OPEN,
    RemovalResult,
    ReplacementResult,
    _balance,
    _begin,
    _charged,
    _energy,
    _event,
    _final,
    _log,
    _merge,
    _open_record,
    _refund,
    _settled_dead,
    _year_wh,
)
from gateway.protocols.quantities import EventCode, Reading
from gateway.store.ledger import journal_with_charges
from gateway.store.meters import MeterRecord, is_meter_number, record_of, set_record

__all__ = ["add_meter", "change_ct", "remove_meter", "replace_meter"]

_logger = logging.getLogger("gateway.lifecycle")


# --- add -----------------------------------------------------------------------------------


def add_meter(
    db: Database,
    meter: str,
    initial: Reading,
    *,
    billing: Billing,
    reason: str,
    ts_ms: int,
    operator: str = "",
    reference: str | None = None,
    meter_number: str | None = None,
) -> MeterRecord:
    """Add ``meter`` (加表) to ``billing.account`` with ``billing.ratio``: ``initial`` (its
    start register x ratio, read at installation) is its baseline, nothing is charged up
    to it.  A meter removed before may be added again (to any account): its rounding
    accumulators start afresh.  A meter in service is refused; one polled already keeps
    its newer baseline.  ``meter_number``: its nameplate number (12 digits), recorded so
    that the poller's METER_NUMBER_CHANGED to it is not held (the work order's swap)."""
    if not reason.strip():
        raise LifecycleRefused("adding a meter needs a reason")
    _check_number(meter_number)
    if billing.meter != meter or initial.meter != meter:
        raise LifecycleRefused(f"billing and reading must be meter {meter}'s")
    initial_wh = _energy(initial, "the start reading")
    record = record_of(db, meter)
    state = load_state(db, meter)
    in_service = record is not None and record.status in _OPEN
    if in_service or (record is None and state is not None and state.last_ts_ms > initial.ts_ms):
        raise LifecycleRefused(f"meter {meter} is in service already")
    ref = _begin(db, "add", meter, ts_ms, reference)
    journal_with_charges(db, initial, ())
    save_state(db, meter, initial.ts_ms, initial_wh, {})
    added = MeterRecord(
        meter,
        billing.account,
        "active",
        billing.ratio,
        ts_ms,
        reason=reason,
        meter_number=meter_number,
    )
    set_record(db, added)
    detail: dict[str, object] = {
        "account": billing.account,
        "initial_wh": initial_wh,
        "ratio": billing.ratio,
    }
    if meter_number is not None:
        detail["meter_number"] = meter_number
    _log(db, ref, "add", meter, ts_ms, {**detail, "reason": reason, "operator": operator})
    _logger.info(
        "meter %s added to account %s: ratio %d, start %d Wh (%s)",
        meter,
        billing.account,
        billing.ratio,
        initial_wh,
        reason,
    )
    return added


def _check_number(meter_number: str | None) -> None:
    if meter_number is not None and not is_meter_number(meter_number):
        raise LifecycleRefused(f"meter number {meter_number!r} must be 12 digits")


# --- removal ------------------------------------------------------------------------------


def remove_meter(
    db: Database,
    meter: str,
    final: Reading,
    *,
    billing: Billing,
    book: TariffBook,
    refund: bool,
    reason: str,
    ts_ms: int,
    operator: str = "",
    reference: str | None = None,
    engine: ModuleType | None = None,
    calendar: BillingYear | None = None,
) -> RemovalResult:
    """Charge ``final``, record ``meter`` removed, refund a positive balance if asked."""
    if not reason.strip():
        raise LifecycleRefused("a removal needs a reason")
    _open_record(db, meter, billing)
    ref = _begin(db, "remove", meter, ts_ms, reference)
    done = _final(db, final, billing, book, engine, calendar)
    entries = list(done.entries)
    refunded = 0
    balance = _balance(db, billing.account)
    if refund and balance > 0:
        entry = _refund(db, ref, billing.account, balance, ts_ms, reason, operator)
        entries.append(entry)
        refunded, balance = balance, entry.balance_after
    final_wh = _energy(final, "the final reading")
    set_record(
        db,
        MeterRecord(meter, billing.account, "removed", billing.ratio, ts_ms, reason=reason),
    )
    charged = _charged(done.entries)
    detail: dict[int | str, int | str] = {
        "account": billing.account,
        "final_wh": final_wh,
        "charged": charged,
        "refund": refunded,
        "balance": balance,
        "reason": reason,
    }
    _event(db, meter, ts_ms, EventCode.METER_REMOVED, detail)
    _log(db, ref, "remove", meter, ts_ms, {**detail, "operator": operator})
    return RemovalResult(
        meter, billing.account, done.position, final_wh, charged, refunded, balance, tuple(entries)
    )


# --- replacement and CT change ------------------------------------------------------------


def replace_meter(
    db: Database,
    old: str,
    old_final: Reading | None,
    new: str,
    new_initial: Reading,
    *,
    billing: Billing,
    book: TariffBook,
    reason: str,
    ts_ms: int,
    new_billing: Billing | None = None,
    operator: str = "",
    reference: str | None = None,
    engine: ModuleType | None = None,
    calendar: BillingYear | None = None,
    meter_number: str | None = None,
) -> ReplacementResult:
    """Replace ``old`` by ``new`` on the same account (see the module's description).

    ``billing`` is the old meter's; ``new_billing`` the new one's (default: the old one's
    with the new id: same tariff, ratio and protocol).  ``old_final`` may be None only for
    a meter settled dead before (:func:`settle_dead_meter`).  ``new == old`` is a new
    meter at the same position (a site label as id): done as :func:`change_ct` with the
    new billing's ratio.  ``meter_number``: the new meter's nameplate number (12 digits),
    recorded with its record: the poller's METER_NUMBER_CHANGED to it is the work order's
    swap, not held (:func:`gateway.store.meters.expects_number`).
    """
    if not reason.strip():
        raise LifecycleRefused("a replacement needs a reason")
    _check_number(meter_number)
    nb = new_billing or replace(billing, meter=new)
    if new == old:  # a new meter at the same position (the id is a site label)
        if old_final is None:
            raise LifecycleRefused(f"meter {old} needs a final reading")
        return change_ct(
            db,
            old,
            old_final,
            new_initial,
            billing=billing,
            new_ratio=nb.ratio,
            book=book,
            reason=reason,
            ts_ms=ts_ms,
            operator=operator,
            reference=reference,
            engine=engine,
            calendar=calendar,
            meter_number=meter_number,
        )
    if nb.meter != new or nb.account != billing.account:
        raise LifecycleRefused(f"the new meter {new} must be billed to account {billing.account}")
    if new_initial.meter != new:
        raise LifecycleRefused(f"a reading of {new_initial.meter} given for meter {new}")
    initial_wh = _energy(new_initial, "the initial reading")
    if old_final is None:
        record = record_of(db, old)
        if (
            billing.meter != old
            or record is None
            or record.status != "removed"
            or not (_settled_dead(db, old))
        ):
            raise LifecycleRefused(f"meter {old} needs a final reading (or settle it as dead)")
    else:
        _open_record(db, old, billing)
    taken = record_of(db, new)
    if taken is not None and taken.status in ("removed", "replaced"):
        raise LifecycleRefused(f"meter {new} is {taken.status}")
    ref = _begin(db, "replace", old, ts_ms, reference)
    done = _final(db, old_final, billing, book, engine, calendar) if old_final is not None else None
    old_state = load_state(db, old)
    carried = dict(old_state.totals) if old_state is not None else {}
    new_state = load_state(db, new)
    totals = _merge(dict(new_state.totals) if new_state is not None else {}, carried)
    position, _ = journal_with_charges(db, new_initial, ())
    if new_state is not None and new_state.last_ts_ms > new_initial.ts_ms:
        # the new meter was polled (and charged) since: its newer reading stays the baseline
        save_state(db, new, new_state.last_ts_ms, new_state.last_energy_wh, totals, new_state.slots)
    else:
        save_state(db, new, new_initial.ts_ms, initial_wh, totals)
    if old_state is not None:  # its accumulators moved: counted once, on the new meter
        save_state(db, old, old_state.last_ts_ms, old_state.last_energy_wh, {})
    set_record(
        db,
        MeterRecord(
            old, billing.account, "replaced", billing.ratio, ts_ms, replaced_by=new, reason=reason
        ),
    )
    set_record(
        db,
        MeterRecord(
            new,
            nb.account,
            "active",
            nb.ratio,
            ts_ms,
            replaces=old,
            reason=reason,
            meter_number=meter_number,
        ),
    )
    entries = done.entries if done is not None else ()
    year_wh = _year_wh(db, billing.account)
    balance = _balance(db, billing.account)
    detail: dict[int | str, int | str] = {
        "account": billing.account,
        "new": new,
        "final_wh": _energy(old_final, "") if old_final is not None else -1,
        "initial_wh": initial_wh,
        "charged": _charged(entries),
        "carried": len(carried),
        "year_wh": year_wh,
        "reason": reason,
    }
    if meter_number is not None:
        detail["meter_number"] = meter_number
    _event(db, old, ts_ms, EventCode.METER_REPLACED, detail)
    _log(db, ref, "replace", old, ts_ms, {**detail, "operator": operator})
    return ReplacementResult(
        old,
        new,
        billing.account,
        done.position if done is not None else None,
        position,
        _charged(entries),
        len(carried),
        year_wh,
        balance,
        entries,
    )


def change_ct(
    db: Database,
    meter: str,
    final_at_old_ratio: Reading,
    initial_at_new_ratio: Reading,
    *,
    billing: Billing,
    new_ratio: int,
    book: TariffBook,
    reason: str,
    ts_ms: int,
    operator: str = "",
    reference: str | None = None,
    engine: ModuleType | None = None,
    calendar: BillingYear | None = None,
    meter_number: str | None = None,
) -> ReplacementResult:
    """A CT-ratio change: final at the old ratio charged, the baseline at the new one.

    ``billing`` is the meter's at the OLD ratio; both readings are register x their ratio.
    The meter's record becomes active with ``new_ratio`` (a held meter is thereby
    confirmed: the technician is at the meter).  ``meter_number``: the nameplate number
    of a new meter fitted under the same id (:func:`replace_meter`), recorded as there;
    without it the number recorded before is kept.
    """
    _check_number(meter_number)
    if type(new_ratio) is not int or new_ratio < 1:
        raise LifecycleRefused("the new ratio must be a positive integer")
    if not reason.strip():
        raise LifecycleRefused("a CT change needs a reason")
    if initial_at_new_ratio.meter != meter:
        raise LifecycleRefused(f"a reading of {initial_at_new_ratio.meter} given for {meter}")
    initial_wh = _energy(initial_at_new_ratio, "the initial reading")
    if initial_at_new_ratio.ts_ms < final_at_old_ratio.ts_ms:
        raise LifecycleRefused("the initial reading is dated before the final one")
    before = _open_record(db, meter, billing)
    if meter_number is None and before is not None:
        meter_number = before.meter_number
    ref = _begin(db, "ct", meter, ts_ms, reference)
    done = _final(db, final_at_old_ratio, billing, book, engine, calendar)
    state = load_state(db, meter)
    totals = dict(state.totals) if state is not None else {}
    position, _ = journal_with_charges(db, initial_at_new_ratio, ())
    save_state(db, meter, initial_at_new_ratio.ts_ms, initial_wh, totals)
    set_record(
        db,
        MeterRecord(
            meter,
            billing.account,
            "active",
            new_ratio,
            ts_ms,
            reason=reason,
            meter_number=meter_number,
        ),
    )
    year_wh = _year_wh(db, billing.account)
    charged = _charged(done.entries)
    detail: dict[int | str, int | str] = {
        "account": billing.account,
        "new": meter,
        "old_ratio": billing.ratio,
        "new_ratio": new_ratio,
        "final_wh": _energy(final_at_old_ratio, ""),
        "initial_wh": initial_wh,
        "charged": charged,
        "reason": reason,
    }
    if meter_number is not None:
        detail["meter_number"] = meter_number
    _event(db, meter, ts_ms, EventCode.METER_REPLACED, detail)
    _log(db, ref, "ct", meter, ts_ms, {**detail, "operator": operator})
    return ReplacementResult(
        meter,
        meter,
        billing.account,
        done.position,
        position,
        charged,
        len(totals),
        year_wh,
        _balance(db, billing.account),
        done.entries,
    )
