"""The money core: tariffs and rating, pure and in integers (Wh, 0.0001 yuan).

No I/O here: the ledger (``gateway.store.ledger``) posts what :func:`rate` returns.
"""

from __future__ import annotations

from gateway.billing.rating import (
    Adjustment,
    ChargeLine,
    Interval,
    MeterState,
    Rating,
    Rerating,
    Running,
    SegmentKey,
    rate,
    rerate,
)
from gateway.billing.tariffs import (
    DayCalendar,
    DayType,
    TariffBook,
    TouSeason,
    prorated_thresholds,
    slot_table,
)
from gateway.billing.year import BillingYear

__all__ = [
    "Adjustment",
    "BillingYear",
    "ChargeLine",
    "DayCalendar",
    "DayType",
    "Interval",
    "MeterState",
    "Rating",
    "Rerating",
    "Running",
    "SegmentKey",
    "TariffBook",
    "TouSeason",
    "prorated_thresholds",
    "rate",
    "rerate",
    "slot_table",
]
