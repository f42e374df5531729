"""Pure-Python twin of the compiled fast path (``_engine.pyx``).

Both must give identical results to the unit; every fast-path test runs against both.

The rounding rule (design.md, "Money and energy"): for each meter and tariff segment
the charge posted is round(cumulative energy x price) minus what was already posted,
so many small intervals cost exactly what their sum costs.  Energy is in Wh, prices
in 0.0001 yuan per kWh, money in 0.0001 yuan; rounding is half up.
"""

from __future__ import annotations

from array import array

__all__ = ["ENERGY_MAX_WH", "PRICE_MAX", "charge_batch", "cumulative_cost", "posted_charge"]

ENERGY_MAX_WH = 10**12
"""Largest cumulative energy accepted (1e9 kWh), so products stay inside int64."""
PRICE_MAX = 10**6
"""Largest price accepted: 100 yuan per kWh, in 0.0001 yuan."""


def cumulative_cost(cum_wh: int, price: int) -> int:
    """round_half_up(cum_wh / 1000 kWh x price), in 0.0001 yuan."""
    if not 0 <= cum_wh <= ENERGY_MAX_WH:
        raise ValueError(f"cumulative energy out of range: {cum_wh}")
    if not 0 <= price <= PRICE_MAX:
        raise ValueError(f"price out of range: {price}")
    return (cum_wh * price + 500) // 1000


def posted_charge(cum_wh: int, price: int, posted: int) -> int:
    """The charge to post now: cost of the cumulative energy minus what is posted."""
    return cumulative_cost(cum_wh, price) - posted


def charge_batch(cum_wh: array[int], price: array[int], posted: array[int]) -> array[int]:
    """Vector form: ``posted`` is updated in place; the charges are returned."""
    n = len(cum_wh)
    if len(price) != n or len(posted) != n:
        raise ValueError("charge_batch: arrays differ in length")
    out = array("q", bytes(8 * n))
    for i in range(n):
        total = cumulative_cost(cum_wh[i], price[i])
        out[i] = total - posted[i]
        posted[i] = total
    return out
