"""The Charger's rating on the fast path: :class:`Rating` over a
:class:`~gateway.charging.fast.rater.BatchRater` (see :mod:`gateway.charging.fast`).

How :class:`Rating` maps an :class:`Outcome` to the reference's ``Rated``: status rated /
unbilled -> ``rated`` (with the new ``AccountYear(o.year_wh, o.year_end)``, ``o.lines``
and ``o.amount``), baseline / no_tariff -> ``baseline``, deferred and no_energy as they
are, error -> :class:`~gateway.errors.RatingError` (nothing changed, as when
``rate_reading`` raises); the meter's new ``RatingRow`` is the rater's ``last()``,
``totals()`` and ``registers()`` (the accumulators ever used: a key still at zero is
not listed, as it changes nothing).
"""

from __future__ import annotations

import logging
from datetime import date
from types import ModuleType

from gateway.billing import BillingYear, TariffBook
from gateway.charging.fast.rater import BatchRater
from gateway.charging.rate import AccountYear, Billing, Rated, RatingRow
from gateway.config.model import AccountType
from gateway.errors import RatingError
from gateway.fastpath import layout as L
from gateway.fastpath.tables import to_us
from gateway.poller import REGISTER_RANGE_WH
from gateway.prepaid import PrepaidState, Thresholds
from gateway.protocols.quantities import Reading

__all__ = ["Rating"]

_logger = logging.getLogger("gateway.charging")


class Rating:
    """The Charger's rating state and per-reading rating (see the module docstring): one
    :class:`BatchRater`, filled at (re)load, rating each reading as
    :func:`~gateway.charging.rate.rate_reading` would.  The caller holds the Charger's lock."""

    def __init__(
        self, book: TariffBook, calendar: BillingYear, *, engine: ModuleType | None = None
    ) -> None:
        self.rater = BatchRater(book, engine=engine, calendar=calendar)
        self._billing: dict[str, Billing] = {}  # what each meter's row was added for

    def add_account(
        self,
        account: str,
        account_type: AccountType,
        *,
        trip_on_arrears: bool,
        thresholds: Thresholds,
        year: AccountYear,
        opened: date | None,
    ) -> None:
        """Add an account's tier state (``year``, as stored) and opening day."""
        self.rater.add_account(
            account,
            account_type=account_type,
            thresholds=thresholds,  # the rater's prepaid state is not used
            trip_on_arrears=trip_on_arrears,
            year_wh=year.year_wh,
            year_end_us=None if year.year_end is None else to_us(year.year_end),
            opened=opened,
            state=PrepaidState.NORMAL,
        )

    def add_meter(self, billing: Billing, row: RatingRow | None) -> None:
        """Add a billed meter with its stored rating state (None: no baseline yet)."""
        slots = row.slots if row is not None else None
        self.rater.add_meter(
            billing.meter,
            billing.account,
            billing.tariff,
            rollover_wh=REGISTER_RANGE_WH * billing.ratio if billing.dlt645 else 0,
            ratio=billing.ratio,
            last=None if row is None else (row.last_ts_ms, row.last_energy_wh),
            registers=() if slots is None else [slots.get(j) for j in range(1, L.NREG + 1)],
            totals=None if row is None else row.totals,
        )
        self._billing[billing.meter] = billing

    def row(self, meter: str) -> RatingRow | None:
        """The meter's rating state as ``rate_reading`` keeps it (None: no baseline)."""
        rater = self.rater
        if meter not in rater.meter_index:
            return None
        last = rater.last(meter)
        if last is None:
            return None
        return RatingRow(meter, last[0], last[1], rater.totals(meter), rater.registers(meter))

    def year(self, account: str) -> AccountYear:
        """The account's billing-year tier state."""
        if account not in self.rater.account_index:
            return AccountYear()
        return AccountYear(self.rater.year_wh(account), self.rater.year_end(account))

    def forget(self, meter: str) -> None:
        """The meter's baseline and accumulators are dropped (it left billing)."""
        billing = self._billing.get(meter)
        if billing is not None:
            self.add_meter(billing, None)

    def rate(self, reading: Reading, billing: Billing) -> tuple[Rated, AccountYear]:
        """Rate ``reading`` (a batch of one): what ``rate_reading`` gives for the state
        held, and the account's tier state before it (to tell a closed year)."""
        if self._billing.get(billing.meter) != billing:  # not loaded as billed so
            self.add_meter(billing, self.row(billing.meter))
        before = self.year(billing.account)
        o = self.rater.rate_one(reading)
        status = o.status
        if status in ("rated", "unbilled"):
            return Rated(
                "rated",
                self.row(billing.meter),
                AccountYear(o.year_wh, o.year_end),
                o.lines,
                o.amount,
            ), before
        if status in ("baseline", "no_tariff"):
            if status == "no_tariff":  # stored, not charged (as rate_reading logs it)
                _logger.warning(
                    "meter %s: not rated: no version of %s in force", billing.meter, billing.tariff
                )
            return Rated("baseline", self.row(billing.meter)), before
        if status in ("deferred", "no_energy"):
            return Rated(status), before
        raise RatingError(f"{billing.meter} at {reading.ts_ms}: {status} {o.error or ''}".strip())
