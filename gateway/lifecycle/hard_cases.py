"""The hard cases: a dead meter settled (an approved manual final reading or an estimated
back-charge, 追补), and a meter held because its number changed without a work order,
confirmed by a person."""

from __future__ import annotations

import logging
from dataclasses import replace
from types import ModuleType

import cbor2
from sqlite_utils import Database

from gateway.billing import BillingYear, TariffBook
from gateway.charging import Billing, load_state, post_reading, save_state
from gateway.errors import LifecycleRefused
from gateway.lifecycle.base import (  # the package's shared steps
    DeadMeterResult,
    _balance,
    _begin,
    _charged,
    _event,
    _log,
    _open_record,
)
from gateway.protocols.quantities import (
    FLAG_DISCONTINUITY,
    FLAG_ESTIMATED,
    EventCode,
    Quantity,
    Reading,
)
from gateway.store.meters import MeterRecord, record_of, set_record

__all__ = ["confirm_meter", "settle_dead_meter"]

_logger = logging.getLogger("gateway.lifecycle")


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
