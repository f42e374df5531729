"""Hypothesis: any split of the same consumption into intervals costs the same."""

from __future__ import annotations

import itertools
from datetime import datetime, time, timedelta
from types import ModuleType
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.billing import Interval, MeterState, Rating, TariffBook, rate
from gateway.config.model import FlatTariff, TieredTariff, TouSlot, TouTariff

SH = ZoneInfo("Asia/Shanghai")
JAN1 = datetime(2026, 1, 1, tzinfo=SH)
SLOTS = (TouSlot(time(0), 4), TouSlot(time(8), 2), TouSlot(time(22), 4))
TOU_V1 = TouTariff("tou", 1, JAN1, SLOTS, {2: 9001, 4: 2999})
# a new version at 00:30 on 1 July, inside the span the tests cover
TOU_V2 = TouTariff("tou", 2, datetime(2026, 7, 1, 0, 30, tzinfo=SH), SLOTS, {2: 9333, 4: 3117})
TIERED = TieredTariff("res", 1, JAN1, (2_760_000, 4_800_000), (5283, 5783, 8283))
FLAT = FlatTariff("flat", 1, JAN1, 6129)
BOOK = TariffBook([TOU_V1, TOU_V2, TIERED, FLAT])
START = datetime(2026, 6, 30, 20, tzinfo=SH)  # 20:00: across 22:00, midnight and v2
MINUTES = 300  # until 01:00


def run(st0: MeterState, intervals: list[Interval], engine: ModuleType) -> list[Rating]:
    out, state = [], st0
    for iv in intervals:
        r = rate(state, iv, BOOK, engine=engine)
        out.append(r)
        state = r.state
    return out


def energy_by_segment(ratings: list[Rating]) -> dict[tuple[str, int, str], int]:
    seg: dict[tuple[str, int, str], int] = {}
    for r in ratings:
        for ln in r.lines:
            key = (ln.tariff_id, ln.version, ln.key)
            seg[key] = seg.get(key, 0) + ln.energy_wh
    return seg


def cut(total: int, points: list[int]) -> list[tuple[int, int]]:
    edges = [0, *sorted(set(points)), total]
    return [(a, b) for a, b in itertools.pairwise(edges)]


@settings(max_examples=60)
@given(
    power=st.integers(0, 5_000),  # Wh per minute, constant
    points=st.lists(st.integers(1, MINUTES - 1), max_size=12),
)
def test_tou_constant_power_any_split_costs_the_same(
    engine: ModuleType, power: int, points: list[int]
) -> None:
    # Constant power, cut at whole minutes (slots and versions change on whole minutes):
    # time apportioning is exact, so the split and the whole rate the same segments.
    def at(m: int) -> datetime:
        return START + timedelta(minutes=m)

    split = [Interval(at(a), at(b), power * (b - a)) for a, b in cut(MINUTES, points)]
    whole = [Interval(at(0), at(MINUTES), power * MINUTES)]
    st0 = MeterState("m", "A", "tou")
    by_split, by_whole = run(st0, split, engine), run(st0, whole, engine)
    assert energy_by_segment(by_split) == energy_by_segment(by_whole)
    assert sum(r.amount for r in by_split) == sum(r.amount for r in by_whole)
    assert by_split[-1].state.totals == by_whole[-1].state.totals


@settings(max_examples=80)
@given(
    tariff=st.sampled_from(["res", "flat"]),
    year=st.integers(0, 6_000_000),
    parts=st.lists(st.integers(0, 1_500_000), min_size=1, max_size=20),
)
def test_energy_split_costs_the_same(
    engine: ModuleType, tariff: str, year: int, parts: list[int]
) -> None:
    # Flat and tiered prices depend on energy only: any split of the total costs what
    # the total costs in one interval, tier crossings included.
    st0 = MeterState("m", "A", tariff, year_wh=year)
    t = datetime(2026, 8, 1, tzinfo=SH)
    split = [
        Interval(t + timedelta(minutes=i), t + timedelta(minutes=i + 1), e)
        for i, e in enumerate(parts)
    ]
    whole = [Interval(t, t + timedelta(minutes=len(parts)), sum(parts))]
    by_split, by_whole = run(st0, split, engine), run(st0, whole, engine)
    assert sum(r.amount for r in by_split) == sum(r.amount for r in by_whole)
    assert energy_by_segment(by_split) == energy_by_segment(by_whole)
    assert by_split[-1].state.year_wh == year + sum(parts)


@settings(max_examples=60)
@given(
    steps=st.lists(st.tuples(st.integers(1, 600), st.integers(0, 100_000)), min_size=1, max_size=15)
)
def test_no_drift_whatever_the_intervals(engine: ModuleType, steps: list[tuple[int, int]]) -> None:
    # Arbitrary intervals (minutes, Wh) across slots, midnight and a version change:
    # every Wh is rated once, and what is posted per segment is exactly
    # round_half_up(its cumulative energy x price / 1000).
    t = START
    ivs = []
    for minutes, wh in steps:
        ivs.append(Interval(t, t + timedelta(minutes=minutes), wh))
        t += timedelta(minutes=minutes)
    ratings = run(MeterState("m", "A", "tou"), ivs, engine)
    seg = energy_by_segment(ratings)
    assert sum(seg.values()) == sum(wh for _, wh in steps)
    prices = {1: TOU_V1.prices, 2: TOU_V2.prices}
    expected = sum(
        (wh * prices[v][int(k.split(":")[1])] + 500) // 1000 for (_, v, k), wh in seg.items()
    )
    assert sum(r.amount for r in ratings) == expected
