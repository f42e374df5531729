"""Meter lifecycle (domain.md, "Meter lifecycle" and "the hard cases"): add, remove,
replace, change the CT ratio, settle a dead meter, confirm a meter whose number changed.

Each function runs inside ONE store-writer transaction the caller owns and takes its
Database (``writer.call(lambda db: remove_meter(db, ...), durable=True)``): the final
reading, its charges, a refund, the new baseline, the meter records
(:mod:`gateway.store.meters`), the event and the operation's log row are committed
together or not at all.  After any of them the caller calls ``runtime.charger.reload()``.
In a running gateway a reading of the meter rated in memory between the transaction and
that reload would still be charged on the old state: poll the meter no more meanwhile
(or hold the charger's lock across both).

- :func:`add_meter` (加表): the start reading is the baseline and the account and ratio
  are recorded; a meter removed before may go to another account.
- :func:`remove_meter`: the final reading is rated and charged
  (:func:`gateway.charging.post_reading`), the meter is recorded *removed* (never charged
  again) and, with ``refund=True``, a positive balance of its account is paid back by a
  REFUND entry that brings it to 0 (arrears stay on the account).  If the account has
  other meters the refund is the caller's explicit choice.  Event METER_REMOVED.
- :func:`replace_meter`: the old meter's final reading is charged; the new meter's
  initial reading is its baseline (nothing is charged across the swap); the old meter's
  rounding accumulators move to the new one (added to any it has), so the position's
  charges keep one rounding and never drift; the tier total is the account's
  (``rating_year``) and simply goes on.  Event METER_REPLACED on the old meter.
- :func:`change_ct`: a replacement of the meter by itself: the final reading at the old
  ratio is charged, the initial reading at the new ratio is the baseline, the new ratio
  recorded.  Event METER_REPLACED with both ratios.
- :func:`settle_dead_meter`: a meter that no longer answers is settled from its last
  rated reading either by an approved manual final reading (its register x ratio, read
  off the display by a person) or by an estimated back-charge (追补: the energy a person
  estimated it used since), journaled as a reading flagged FLAG_ESTIMATED and charged
  like any other; then the meter is recorded removed (a replacement may follow with
  ``old_final=None``).  Event DEAD_METER_SETTLED with who approved it and why.
- :func:`confirm_meter`: a meter *held* because its nameplate number changed without a
  work order (:func:`gateway.store.meters.hold`; charging journals its readings but does
  not charge them) is confirmed by a person: charging resumes from the reading where the
  new meter showed up (the held stretch is charged) or, with ``charge_held=False``, from
  its latest reading (the held stretch is not).  The caller also calls
  ``Poller.confirm(meter)``.

``calendar`` is the billing year (``Charger.calendar``: ``billing.year_start``; default
01-01) under which the final interval is rated.  Money and energy are integers (0.0001
yuan, Wh x ratio as journaled).  Every operation is logged once by its reference
(default ``<kind>:<meter>:<ts_ms>``); a repeat, or an operation on a meter already
removed or replaced, raises :class:`~gateway.errors.LifecycleRefused` and writes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from types import ModuleType

import cbor2
from sqlite_utils import Database

from gateway.billing import BillingYear, Running, SegmentKey, TariffBook
from gateway.charging import Billing, Charged, load_state, post_reading, save_state
from gateway.config.model import GatewayConfig
from gateway.errors import LifecycleRefused
from gateway.protocols.batch import LedgerEntry, MeterEvent
from gateway.protocols.quantities import (
    FLAG_DISCONTINUITY,
    FLAG_ESTIMATED,
    EventCode,
    Quantity,
    Reading,
)
from gateway.store.ledger import (
    VACANCY,
    EntryKind,
    TopUp,
    apply_top_up,
    balance_of,
    journal_with_charges,
)
from gateway.store.meters import MeterRecord, chargeable, record_of, set_record

__all__ = [
    "DeadMeterResult",
    "RemovalResult",
    "ReplacementResult",
    "add_meter",
    "billing_of",
    "change_ct",
    "confirm_meter",
    "remove_meter",
    "replace_meter",
    "settle_dead_meter",
]

_logger = logging.getLogger(__name__)

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


# --- helpers ------------------------------------------------------------------------------


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


def billing_of(config: GatewayConfig, meter: str, record: MeterRecord | None) -> Billing | None:
    """How ``meter`` is billed whatever its standing (the Charger leaves held, removed and
    replaced meters out of ``Charger.billing``): as configured, with the recorded account
    and ratio; a meter with no account is the vacancy account's at
    ``billing.vacancy_tariff``.  None: not billed (no tariff)."""
    m = next((x for x in config.meters if x.id == meter), None)
    if (m is None and record is None) or (m is not None and m.role == "gate"):
        return None  # unknown, or an area's gate meter (关口表): never billed
    account_id = record.account if record is not None else m.account if m is not None else None
    ratio = record.ratio if record is not None else m.ratio if m is not None else 1
    account = next((a for a in config.accounts if a.id == account_id), None)
    tariff = account.tariff if account is not None else None
    if account_id is None:
        account_id, tariff = VACANCY, config.billing.vacancy_tariff
    if tariff is None:
        return None
    bus = next((b for b in config.serial_buses if m is not None and b.name == m.bus), None)
    return Billing(
        meter,
        account_id,
        tariff,
        account is not None and account.type == "unbilled",
        bus is not None and bus.protocol == "dlt645",
        ratio,
        account.opened if account is not None else None,
    )


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
        top_up = TopUp(
            f"refund:{ref}",
            billing.account,
            EntryKind.REFUND,
            -balance,
            ts_ms,
            reason=reason,
            operator=operator,
        )
        result = apply_top_up(db, top_up)
        if result.entry is None or not result.applied:
            raise LifecycleRefused(f"refund refused: {result.refused or 'already applied'}")
        entries.append(result.entry)
        refunded, balance = balance, result.entry.balance_after
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


def _settled_dead(db: Database, meter: str) -> bool:
    row = db.execute(
        "SELECT 1 FROM lifecycle_ops WHERE meter = ? AND kind = 'dead'", (meter,)
    ).fetchone()
    return row is not None


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
) -> ReplacementResult:
    """Replace ``old`` by ``new`` on the same account (see the module's description).

    ``billing`` is the old meter's; ``new_billing`` the new one's (default: the old one's
    with the new id: same tariff, ratio and protocol).  ``old_final`` may be None only for
    a meter settled dead before (:func:`settle_dead_meter`).  ``new == old`` is a new
    meter at the same position (a site label as id): done as :func:`change_ct` with the
    new billing's ratio.
    """
    if not reason.strip():
        raise LifecycleRefused("a replacement needs a reason")
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
        db, MeterRecord(new, nb.account, "active", nb.ratio, ts_ms, replaces=old, reason=reason)
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
) -> ReplacementResult:
    """A CT-ratio change: final at the old ratio charged, the baseline at the new one.

    ``billing`` is the meter's at the OLD ratio; both readings are register x their ratio.
    The meter's record becomes active with ``new_ratio`` (a held meter is thereby
    confirmed: the technician is at the meter).
    """
    if type(new_ratio) is not int or new_ratio < 1:
        raise LifecycleRefused("the new ratio must be a positive integer")
    if not reason.strip():
        raise LifecycleRefused("a CT change needs a reason")
    if initial_at_new_ratio.meter != meter:
        raise LifecycleRefused(f"a reading of {initial_at_new_ratio.meter} given for {meter}")
    initial_wh = _energy(initial_at_new_ratio, "the initial reading")
    if initial_at_new_ratio.ts_ms < final_at_old_ratio.ts_ms:
        raise LifecycleRefused("the initial reading is dated before the final one")
    _open_record(db, meter, billing)
    ref = _begin(db, "ct", meter, ts_ms, reference)
    done = _final(db, final_at_old_ratio, billing, book, engine, calendar)
    state = load_state(db, meter)
    totals = dict(state.totals) if state is not None else {}
    position, _ = journal_with_charges(db, initial_at_new_ratio, ())
    save_state(db, meter, initial_at_new_ratio.ts_ms, initial_wh, totals)
    set_record(db, MeterRecord(meter, billing.account, "active", new_ratio, ts_ms, reason=reason))
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


# --- dead meter -----------------------------------------------------------------------------


def settle_dead_meter(
    db: Database,
    meter: str,
    *,
    final_wh: int | None,
    estimated_wh: int | None,
    approved_by: str,
    reason: str,
    billing: Billing,
    book: TariffBook,
    ts_ms: int,
    reference: str | None = None,
    engine: ModuleType | None = None,
    calendar: BillingYear | None = None,
) -> DeadMeterResult:
    """Settle a dead meter up to ``ts_ms`` from its last rated reading, then remove it.

    Exactly one of ``final_wh`` (an approved manual final reading: register x ratio) and
    ``estimated_wh`` (an estimated back-charge, 追补: energy since the last reading) is
    given.  The settlement is a reading at ``ts_ms`` (flagged FLAG_ESTIMATED for an
    estimate) charged through :func:`gateway.charging.post_reading`, approved by a person:
    it is charged even if the meter was held.
    """
    if (final_wh is None) == (estimated_wh is None):
        raise LifecycleRefused("give either a manual final reading or an estimate, not both")
    if not approved_by.strip() or not reason.strip():
        raise LifecycleRefused("a dead-meter settlement needs who approved it and a reason")
    _open_record(db, meter, billing)
    last = load_state(db, meter)
    if last is None:
        raise LifecycleRefused(f"meter {meter} has no rated reading to settle from")
    if ts_ms < last.last_ts_ms:
        raise LifecycleRefused(f"meter {meter} was read after {ts_ms}")
    if final_wh is not None:
        if type(final_wh) is not int or final_wh < last.last_energy_wh:
            raise LifecycleRefused(
                f"the final reading {final_wh} Wh is below the last one ({last.last_energy_wh} Wh)"
            )
        energy, flags = final_wh, 0
    else:
        assert estimated_wh is not None
        if type(estimated_wh) is not int or estimated_wh < 0:
            raise LifecycleRefused("the estimate must be a non-negative integer of Wh")
        energy, flags = last.last_energy_wh + estimated_wh, FLAG_ESTIMATED
    ref = _begin(db, "dead", meter, ts_ms, reference)
    reading = Reading(meter, ts_ms, {Quantity.ENERGY_IMPORT: energy}, flags)
    done = post_reading(db, reading, billing, book, engine=engine, calendar=calendar)
    set_record(
        db,
        MeterRecord(
            meter, billing.account, "removed", billing.ratio, ts_ms, reason=f"dead: {reason}"
        ),
    )
    charged = _charged(done.entries)
    balance = _balance(db, billing.account)
    used = energy - last.last_energy_wh
    detail: dict[int | str, int | str] = {
        "account": billing.account,
        "energy_wh": used,
        "estimated": int(estimated_wh is not None),
        "register_wh": energy,
        "charged": charged,
        "balance": balance,
        "approved_by": approved_by,
        "reason": reason,
    }
    _event(db, meter, ts_ms, EventCode.DEAD_METER_SETTLED, detail)
    _log(db, ref, "dead", meter, ts_ms, detail)
    return DeadMeterResult(
        meter,
        billing.account,
        done.position,
        used,
        estimated_wh is not None,
        charged,
        balance,
        approved_by,
        reason,
        done.entries,
    )


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
) -> MeterRecord:
    """Add ``meter`` (加表) to ``billing.account`` with ``billing.ratio``: ``initial`` (its
    start register x ratio, read at installation) is its baseline, nothing is charged up
    to it.  A meter removed before may be added again (to any account): its rounding
    accumulators start afresh.  A meter in service is refused; one polled already keeps
    its newer baseline."""
    if not reason.strip():
        raise LifecycleRefused("adding a meter needs a reason")
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
    added = MeterRecord(meter, billing.account, "active", billing.ratio, ts_ms, reason=reason)
    set_record(db, added)
    detail = {"account": billing.account, "initial_wh": initial_wh, "ratio": billing.ratio}
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


# --- number changed without a work order --------------------------------------------------


def _readings(db: Database, meter: str) -> list[tuple[int, int, int]]:
    """(ts_ms, flags, forward energy) of the meter's journaled readings, newest first."""
    rows = db.execute(
        "SELECT r.ts_ms, r.flags, r.vals FROM readings r JOIN meters m ON m.id = r.meter"
        " WHERE m.name = ? ORDER BY r.id DESC",
        (meter,),
    )
    out: list[tuple[int, int, int]] = []
    code = int(Quantity.ENERGY_IMPORT)
    for ts, flags, vals in rows:
        values = cbor2.loads(vals) if vals else {}
        if code in values:
            out.append((int(ts), int(flags), int(values[code])))
    return out


def confirm_meter(
    db: Database,
    meter: str,
    *,
    approved_by: str,
    reason: str,
    ts_ms: int,
    charge_held: bool = True,
    reference: str | None = None,
) -> MeterRecord:
    """A person confirms the held ``meter`` (its number changed without a work order).

    Its baseline becomes the reading where the new meter showed up (the newest one flagged
    FLAG_DISCONTINUITY; the next reading charges everything since), or with
    ``charge_held=False`` its newest reading (the held stretch is not charged).
    """
    if not approved_by.strip() or not reason.strip():
        raise LifecycleRefused("a confirmation needs who approved it and a reason")
    record = record_of(db, meter)
    if record is None or record.status != "held":
        raise LifecycleRefused(f"meter {meter} is not held")
    ref = _begin(db, "confirm", meter, ts_ms, reference)
    readings = _readings(db, meter)
    base = next((r for r in readings if r[1] & FLAG_DISCONTINUITY), None) if charge_held else None
    base = base or (readings[0] if readings else None)
    state = load_state(db, meter)
    if base is not None:
        save_state(db, meter, base[0], base[2], state.totals if state is not None else {})
    confirmed = replace(record, status="active", since_ms=ts_ms, reason=reason)
    set_record(db, confirmed)
    detail: dict[int | str, int | str] = {
        "approved_by": approved_by,
        "reason": reason,
        "charge_held": int(charge_held),
        "baseline_wh": base[2] if base is not None else -1,
    }
    _log(db, ref, "confirm", meter, ts_ms, detail)
    _logger.info(
        "meter %s confirmed by %s (charge held: %s): %s", meter, approved_by, charge_held, reason
    )
    return confirmed
