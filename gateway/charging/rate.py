"""The rating of one reading of one meter: the charging rules, pure (no I/O, no clock).

:func:`rate_reading` is the one function that turns a meter's previous rating state, a
reading and the account's billing-year state into charge lines and the new states; the
:func:`~gateway.charging.post_reading` calls it from the store, and it is the reference
the :class:`~gateway.charging.Charger`'s fast path (:mod:`gateway.charging.fast`, which
rates in memory under its lock) is tested against, to the unit.  The rules are in
:mod:`gateway.charging`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from types import ModuleType

from gateway.billing import (
    BillingYear,
    ChargeLine,
    Interval,
    MeterState,
    Running,
    SegmentKey,
    TariffBook,
    rate,
)
from gateway.config.model import Account, GatewayConfig, TouTariff
from gateway.poller import REGISTER_RANGE_WH
from gateway.protocols.quantities import (
    FLAG_DISCONTINUITY,
    FLAG_ROLLOVER,
    FLAG_TIME_UNTRUSTED,
    Quantity,
    Reading,
)
from gateway.store.ledger import VACANCY
from gateway.store.meters import MeterRecord

__all__ = ["AccountYear", "Billing", "Rated", "RatingRow", "billing_of", "rate_reading", "when"]

_logger = logging.getLogger("gateway.charging")

_SLOT_QUANTITIES = {
    1: Quantity.ENERGY_T1,
    2: Quantity.ENERGY_T2,
    3: Quantity.ENERGY_T3,
    4: Quantity.ENERGY_T4,
}
_REGISTER_STEP_WH = 10  # a DL/T 645 register holds whole 10 Wh (XXXXXX.XX kWh)


@dataclass(frozen=True, slots=True)
class RatingRow:
    """One meter's rating state (``rating_state``): its last rated reading (time, forward
    energy x ratio, per-tariff registers x ratio) and its rounding accumulators."""

    meter: str
    last_ts_ms: int
    last_energy_wh: int
    totals: Mapping[SegmentKey, Running]
    slots: Mapping[int, int] | None = None  #: tariff registers 1-4; None: none kept


@dataclass(frozen=True, slots=True)
class Billing:
    """How one meter is billed: its account, tariff and register ratio."""

    meter: str
    account: str
    tariff: str
    unbilled: bool
    dlt645: bool
    ratio: int
    opened: date | None = None  #: the account's opening day (tier proration)


def billing_of(
    config: GatewayConfig,
    meter: str,
    record: MeterRecord | None,
    accounts: Iterable[Account] | None = None,
) -> Billing | None:
    """How ``meter`` is billed whatever its standing (the Charger leaves held, removed and
    replaced meters out of ``Charger.billing``): as configured, with the recorded account
    and ratio; a meter with no account is the vacancy account's at
    ``billing.vacancy_tariff``.  ``accounts``: the accounts in force (default the
    configuration's; :func:`gateway.store.account_records.effective_accounts`).  None: not
    billed (no tariff)."""
    m = next((x for x in config.meters if x.id == meter), None)
    if (m is None and record is None) or (m is not None and m.role == "gate"):
        return None  # unknown, or an area's gate meter (关口表): never billed
    account_id = record.account if record is not None else m.account if m is not None else None
    ratio = record.ratio if record is not None else m.ratio if m is not None else 1
    account = next((a for a in (accounts or config.accounts) if a.id == account_id), None)
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


@dataclass(frozen=True, slots=True)
class AccountYear:
    """An account's billing-year tier state (``rating_year``)."""

    year_wh: int = 0  #: consumption of all its meters in the billing year, Wh
    year_end: datetime | None = None  #: when the total resets (UTC); None: not yet known


@dataclass(frozen=True, slots=True)
class Rated:
    """What rating one reading gave (:func:`rate_reading`).

    ``status``: ``no_energy`` (nothing to rate), ``baseline`` (the reading starts a new
    baseline: first, discontinuity, fall, no tariff in force), ``deferred`` (time-of-use
    with an untrusted clock) or ``rated``.
    """

    status: str
    state: RatingRow | None = None  #: the meter's new rating state; None: unchanged
    year: AccountYear | None = None  #: the account's new tier state; None: unchanged
    lines: tuple[ChargeLine, ...] = ()
    amount: int = 0  #: charged to the account (0 when unbilled), 0.0001 yuan


def when(ts_ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ts_ms)


def _registers(reading: Reading) -> dict[int, int] | None:
    values = reading.values
    if not all(q in values for q in _SLOT_QUANTITIES.values()):
        return None
    return {slot: values[q] for slot, q in _SLOT_QUANTITIES.items()}


def _slot_deltas(
    prev: Mapping[int, int] | None,
    now: Mapping[int, int] | None,
    delta: int,
    span: int | None,
    ratio: int,
) -> dict[int, int] | None:
    """Per-slot energy since ``prev``; None when either lacks registers, one fell, or
    their sum disagrees with the total by more than the registers' resolution."""
    if prev is None or now is None:
        return None
    out: dict[int, int] = {}
    for slot, value in now.items():
        d = value - prev.get(slot, value)
        if d < 0 and span is not None:
            d += span
        if d < 0:
            return None
        out[slot] = d
    if abs(sum(out.values()) - delta) > _REGISTER_STEP_WH * ratio * len(out):
        return None
    return out


def rate_reading(
    prev: RatingRow | None,
    reading: Reading,
    billing: Billing,
    book: TariffBook,
    year: AccountYear,
    calendar: BillingYear,
    *,
    engine: ModuleType | None = None,
) -> Rated:
    """Rate ``reading`` of ``billing.meter`` after ``prev`` with the account's ``year``.

    Pure: the caller keeps the returned state and year and posts the lines.
    """
    energy = reading.values.get(Quantity.ENERGY_IMPORT)
    if energy is None:
        return Rated("no_energy")
    registers = _registers(reading)
    totals: Mapping[SegmentKey, Running] = prev.totals if prev is not None else {}
    base = RatingRow(billing.meter, reading.ts_ms, energy, totals, registers)
    if prev is None or reading.flags & FLAG_DISCONTINUITY:
        return Rated("baseline", base)
    untrusted = bool(reading.flags & FLAG_TIME_UNTRUSTED)
    if untrusted:  # its time may be anything: the state keeps the last trusted one
        base = replace(base, last_ts_ms=prev.last_ts_ms)
    delta = energy - prev.last_energy_wh
    span: int | None = None
    if reading.flags & FLAG_ROLLOVER and billing.dlt645:
        span = REGISTER_RANGE_WH * billing.ratio
        if delta < 0:
            delta += span
    if delta < 0:  # a fall the poller did not flag: no credit, a new baseline
        return Rated("baseline", base)
    if untrusted and any(isinstance(v, TouTariff) for v in book.versions(billing.tariff)):
        return Rated("deferred")  # rated at the first trusted reading
    t0 = when(prev.last_ts_ms)
    # untrusted: the energy is rated at the last trusted time (a zero-length interval)
    t1 = t0 if untrusted else max(t0, when(reading.ts_ms))
    year_end = year.year_end or calendar.end_of(t0)
    state = MeterState(
        billing.meter,
        billing.account,
        billing.tariff,
        year_wh=year.year_wh,
        thresholds=calendar.thresholds(book, billing.tariff, billing.opened, t0),
        year_end=year_end,
        totals=totals,
    )
    slot_wh = _slot_deltas(prev.slots, registers, delta, span, billing.ratio)
    try:
        rating = rate(state, Interval(t0, t1, delta, slot_wh), book, engine=engine)
    except KeyError as exc:  # no tariff version in force: stored, not charged
        _logger.warning("meter %s: not rated: %s", billing.meter, exc)
        return Rated("baseline", base)
    after = rating.state
    new_year = AccountYear(after.year_wh, after.year_end or calendar.end_of(t1))
    row = RatingRow(billing.meter, base.last_ts_ms, energy, dict(after.totals), registers)
    amount = 0 if billing.unbilled else rating.amount
    return Rated("rated", row, new_year, rating.lines, amount)
