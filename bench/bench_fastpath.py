"""Nanoseconds per reading of the rating kernel, compiled vs. its pure twin, one run.

Run: ``.venv/bin/python bench/bench_fastpath.py [--batches N] [--meters M]``.

A realistic mix: 4 buses x 32 meters (``--meters``), each its own prepaid tenant, a
third on a flat tariff, a third on time of use (half of these with per-tariff
registers, as DL/T 645 meters keep them) and a third on a tiered tariff whose first
threshold the tenants cross during the run; readings every 15 s per meter, round robin,
from Friday 21:58 local so intervals straddle the 22:00 time-of-use boundary, in
batches of 200 readings.  The same readings go through each build from the same
initial state; each build's charges must equal the other's (exit 1 otherwise).

Figures:

- **kernel ns/reading**: ``rate_batch`` alone on prepared arrays (the tables built).
- **BatchRater.rate ns/reading**: from ``Reading`` objects to the kernel's arrays and
  back (tables, fallbacks to Python included), outcomes not materialised; with the
  Charger's billing-year rules (a quarter of the tenants opened this year: their
  prorated thresholds are worked out in Python at their first tiered reading).
- **with outcomes**: plus building every reading's ``Outcome`` (charge lines as
  ``ChargeLine`` objects with datetimes): what a caller wanting everything pays.
- **batches of 1**: the same readings one at a time, outcomes included (a caller that
  rates each reading as it comes, as the Charger does).
- **rate_reading ns/reading**: the Python reference (``gateway.charging``'s
  ``rate_reading``, one call per reading, which rates with ``gateway.billing.rate``; the
  Charger's rating before Step 8); its amounts must equal the BatchRater's.

The last line printed is JSON.  Goal: compiled kernel >= 20x faster than the twin.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from types import MappingProxyType, ModuleType
from typing import Any
from zoneinfo import ZoneInfo

from gateway import fastpath
from gateway.billing import BillingYear, TariffBook, TouSeason
from gateway.charging import AccountYear, Billing, RatingRow, rate_reading
from gateway.charging.fast import BatchRater
from gateway.config.model import FlatTariff, TieredTariff, TouSlot, TouTariff
from gateway.fastpath import _engine_py, layout
from gateway.fastpath.tables import to_us
from gateway.prepaid import Thresholds
from gateway.protocols.quantities import Quantity, Reading

__all__ = ["main"]

SH = ZoneInfo("Asia/Shanghai")
START = datetime(2026, 3, 6, 21, 58, tzinfo=SH)  # a Friday, two minutes before 22:00
BATCH = 200
EVERY_MS = 15_000
JAN1 = datetime(2026, 1, 1, tzinfo=SH)
BOOK = TariffBook(
    [
        FlatTariff("flat", 1, JAN1, 6128),
        TouTariff(
            "tou",
            1,
            JAN1,
            (
                TouSlot(dtime(0), 4),
                TouSlot(dtime(8), 2),
                TouSlot(dtime(11), 1),
                TouSlot(dtime(13), 3),
                TouSlot(dtime(19), 2),
                TouSlot(dtime(22), 4),
            ),
            {1: 12000, 2: 9000, 3: 6000, 4: 3000},
        ),
        TieredTariff("res", 1, JAN1, (2_760_000, 4_800_000), (5283, 5783, 8283)),
    ],
    seasons={"tou": (TouSeason((1, 1), MappingProxyType({"weekend": (TouSlot(dtime(0), 3),)})),)},
)
TARIFFS = ("flat", "tou", "res")


def meters(n: int) -> list[tuple[str, str, bool]]:
    """(meter id, tariff, keeps per-tariff registers)."""
    return [(f"m{k}", TARIFFS[k % 3], k % 6 == 1) for k in range(n)]


def readings(n_meters: int, batches: int) -> list[list[Reading]]:
    """Round robin over the meters, 15 s apart per meter, ~1.5 kW each."""
    out: list[list[Reading]] = []
    t0 = to_us(START) // 1000
    energy = [1_000_000 + 37 * k for k in range(n_meters)]
    regs = [[250_000 + k, 250_000, 250_000, 250_000] for k in range(n_meters)]
    ms = meters(n_meters)
    total = BATCH * batches
    flat: list[Reading] = []
    for r in range(total):
        k = r % n_meters
        rnd = r // n_meters + 1
        step = 6 + (r % 3 == 0)  # 6 or 7 Wh per 15 s
        energy[k] += step
        values = {Quantity.ENERGY_IMPORT: energy[k]}
        if ms[k][2]:
            ts_local = START + timedelta(milliseconds=rnd * EVERY_MS)
            slot = 2 if ts_local.hour < 22 else 4
            regs[k][slot - 1] += step
            for j, q in enumerate(
                (Quantity.ENERGY_T1, Quantity.ENERGY_T2, Quantity.ENERGY_T3, Quantity.ENERGY_T4)
            ):
                values[q] = regs[k][j]
        flat.append(Reading(ms[k][0], t0 + rnd * EVERY_MS + 3 * k, values))
    for b in range(batches):
        out.append(flat[b * BATCH : (b + 1) * BATCH])
    return out


def rater(engine: ModuleType, n_meters: int, calendar: BillingYear | None = None) -> BatchRater:
    """Every tenant prepaid; with ``calendar`` a quarter of them opened this year
    (prorated tier thresholds, worked out in Python at their first tiered reading)."""
    r = BatchRater(BOOK, engine=engine, calendar=calendar)
    levels = Thresholds(alarm1=100_000, alarm2=50_000, overdraft_limit=0, close_allow=0)
    t0 = to_us(START) // 1000
    for k, (meter, tariff, _) in enumerate(meters(n_meters)):
        r.add_account(
            f"A{k}",
            account_type="prepaid",
            thresholds=levels,
            trip_on_arrears=True,
            balance=10_000_000,
            year_wh=2_759_000 + 10 * k,  # the first tier ends within the run
            year_end_us=to_us(datetime(2027, 1, 1, tzinfo=SH)),
            opened=date(2026, 2, 1) if k % 4 == 2 else None,
        )
        regs = [250_000 + k, 250_000, 250_000, 250_000] if k % 6 == 1 else []
        r.add_meter(meter, f"A{k}", tariff, last=(t0 + 3 * k, 1_000_000 + 37 * k), registers=regs)
    return r


def to_arrays(r: BatchRater, batch: list[Reading]) -> layout.Batch:
    arrays = layout.Batch(len(batch))
    for i, reading in enumerate(batch):
        arrays.r_meter[i] = r.meter_index[reading.meter]
        arrays.r_ts[i] = reading.ts_ms
        arrays.r_energy[i] = reading.values[Quantity.ENERGY_IMPORT]
        for j, q in enumerate(
            (Quantity.ENERGY_T1, Quantity.ENERGY_T2, Quantity.ENERGY_T3, Quantity.ENERGY_T4)
        ):
            arrays.r_reg[i * layout.NREG + j] = reading.values.get(q, -1)
    return arrays


def kernel_ns(
    engine: ModuleType, n_meters: int, batches: list[list[Reading]]
) -> tuple[float, list[int]]:
    """ns per reading of rate_batch alone, and every reading's amount."""
    r = rater(engine, n_meters)
    prepared = [to_arrays(r, b) for b in batches]
    first = prepared[0].r_ts[0]
    last = prepared[-1].r_ts[BATCH - 1]
    r.tables.cover(first * 1000 - 3_600_000_000, last * 1000)
    outs = [layout.Out(BATCH, 4 * BATCH + layout.MAX_PARTS) for _ in prepared]
    gc.disable()
    spent = 0
    for arrays, out in zip(prepared, outs, strict=True):
        t = time.perf_counter_ns()
        stop = engine.rate_batch(r.tables.tables, r.state, arrays, out, 0)
        spent += time.perf_counter_ns() - t
        if stop != BATCH:
            raise SystemExit(f"kernel stopped at {stop}: status {out.status[stop]}")
    gc.enable()
    amounts = [a for out in outs for a in out.amount]
    return spent / (len(batches) * BATCH), amounts


def rater_ns(engine: ModuleType, n_meters: int, batches: list[list[Reading]]) -> dict[str, Any]:
    """ns per reading of BatchRater.rate, without and with materialising outcomes."""
    r = rater(engine, n_meters, BillingYear())
    gc.disable()
    t = time.perf_counter_ns()
    results = [r.rate(b) for b in batches]
    spent = time.perf_counter_ns() - t
    t = time.perf_counter_ns()
    amounts = [o.amount for res in results for o in res]
    outcomes = time.perf_counter_ns() - t
    gc.enable()
    n = sum(len(b) for b in batches)
    return {
        "rate_ns": spent / n,
        "with_outcomes_ns": (spent + outcomes) / n,
        "amounts": amounts,
        "fallbacks": dict(r.fallbacks),
    }


def charger_ns(n_meters: int, batches: list[list[Reading]]) -> tuple[float, list[int]]:
    """ns per reading of the Charger's rating today (gateway.charging.rate_reading, one
    call per reading, its state kept as the Charger keeps it), and every amount."""
    calendar = BillingYear()
    t0 = to_us(START) // 1000
    year_end = datetime(2027, 1, 1, tzinfo=SH).astimezone(UTC)
    billing, rows, years = {}, {}, {}
    for k, (meter, tariff, registers) in enumerate(meters(n_meters)):
        opened = date(2026, 2, 1) if k % 4 == 2 else None
        billing[meter] = Billing(meter, f"A{k}", tariff, False, registers, 1, opened)
        slots = {1: 250_000 + k, 2: 250_000, 3: 250_000, 4: 250_000} if registers else None
        rows[meter] = RatingRow(meter, t0 + 3 * k, 1_000_000 + 37 * k, {}, slots)
        years[f"A{k}"] = AccountYear(2_759_000 + 10 * k, year_end)
    amounts: list[int] = []
    gc.disable()
    t = time.perf_counter_ns()
    for batch in batches:
        for reading in batch:
            b = billing[reading.meter]
            rated = rate_reading(rows[reading.meter], reading, b, BOOK, years[b.account], calendar)
            if rated.state is not None:
                rows[reading.meter] = rated.state
            if rated.year is not None:
                years[b.account] = rated.year
            amounts.append(rated.amount)
    spent = time.perf_counter_ns() - t
    gc.enable()
    return spent / len(amounts), amounts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=50, help="batches of 200 readings (50)")
    parser.add_argument("--meters", type=int, default=128, help="meters (128: 4 buses x 32)")
    args = parser.parse_args(argv)
    compiled, kind, reason = fastpath.load("compiled")
    assert kind == "compiled", reason
    batches = readings(args.meters, args.batches)
    k_compiled, amounts_c = kernel_ns(compiled, args.meters, batches)
    k_twin, amounts_t = kernel_ns(_engine_py, args.meters, batches)
    r_compiled = rater_ns(compiled, args.meters, batches)
    r_twin = rater_ns(_engine_py, args.meters, batches)
    ref, amounts_ref = charger_ns(args.meters, batches)
    singles = [[r] for b in batches for r in b]
    one_compiled = rater_ns(compiled, args.meters, singles)
    one_twin = rater_ns(_engine_py, args.meters, singles)
    same = amounts_c == amounts_t and r_compiled["amounts"] == r_twin["amounts"] == amounts_ref
    same = same and one_compiled["amounts"] == one_twin["amounts"] == amounts_ref
    ratio = k_twin / k_compiled
    print(f"readings        {len(batches) * BATCH} in batches of {BATCH}, {args.meters} meters")
    print(
        f"kernel          compiled {k_compiled:8.0f} ns/reading   twin {k_twin:8.0f}   x{ratio:.1f}"
    )
    print(
        f"BatchRater.rate compiled {r_compiled['rate_ns']:8.0f} ns/reading   "
        f"twin {r_twin['rate_ns']:8.0f}   x{r_twin['rate_ns'] / r_compiled['rate_ns']:.1f}"
    )
    print(
        f"  + outcomes    compiled {r_compiled['with_outcomes_ns']:8.0f} ns/reading   "
        f"twin {r_twin['with_outcomes_ns']:8.0f}"
    )
    print(
        f"  batches of 1  compiled {one_compiled['with_outcomes_ns']:8.0f} ns/reading   "
        f"twin {one_twin['with_outcomes_ns']:8.0f}   (with outcomes)"
    )
    print(f"rate_reading    {ref:8.0f} ns/reading (the Charger's rating today, per reading)")
    print(f"fallbacks       {r_compiled['fallbacks']}; charges identical: {same}")
    print(
        json.dumps(
            {
                "bench": "fastpath",
                "readings": len(batches) * BATCH,
                "batch": BATCH,
                "meters": args.meters,
                "kernel_ns_compiled": round(k_compiled, 1),
                "kernel_ns_twin": round(k_twin, 1),
                "kernel_ratio": round(ratio, 1),
                "rate_ns_compiled": round(r_compiled["rate_ns"], 1),
                "rate_ns_twin": round(r_twin["rate_ns"], 1),
                "with_outcomes_ns_compiled": round(r_compiled["with_outcomes_ns"], 1),
                "with_outcomes_ns_twin": round(r_twin["with_outcomes_ns"], 1),
                "batch1_with_outcomes_ns_compiled": round(one_compiled["with_outcomes_ns"], 1),
                "batch1_with_outcomes_ns_twin": round(one_twin["with_outcomes_ns"], 1),
                "rate_reading_ns": round(ref, 1),
                "fallbacks": r_compiled["fallbacks"],
                "identical": same,
                "goal_20x": ratio >= 20,
                "python": platform.python_version(),
                "machine": platform.machine(),
            }
        )
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
