"""Rating golden cases, arithmetic in the comments; every money test on both fast paths.

Prices are 0.0001 yuan per kWh, energy Wh, amounts 0.0001 yuan:
amount = round_half_up(Wh x price / 1000).  Local time is Asia/Shanghai (UTC+8).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from types import MappingProxyType, ModuleType
from zoneinfo import ZoneInfo

import pytest

from gateway.billing import (
    ChargeLine,
    DayCalendar,
    Interval,
    MeterState,
    Running,
    TariffBook,
    TouSeason,
    rate,
)
from gateway.config.model import FlatTariff, Meter, TieredTariff, TouSlot, TouTariff

SH = ZoneInfo("Asia/Shanghai")
JAN1 = datetime(2026, 1, 1, tzinfo=SH)

# sharp 1.2000, peak 0.9000, flat 0.6000, valley 0.3000 yuan/kWh
TOU = TouTariff(
    "tou",
    1,
    JAN1,
    (
        TouSlot(time(0), 4),  # 00:00 valley
        TouSlot(time(8), 2),  # 08:00 peak
        TouSlot(time(11), 1),  # 11:00 sharp
        TouSlot(time(13), 3),  # 13:00 flat
        TouSlot(time(19), 2),  # 19:00 peak
        TouSlot(time(22), 4),  # 22:00 valley until 08:00 next day
    ),
    {1: 12000, 2: 9000, 3: 6000, 4: 3000},
)
# weekends: flat all day
WEEKEND = TouSeason((1, 1), MappingProxyType({"weekend": (TouSlot(time(0), 3),)}))
FLAT_V1 = FlatTariff("flat", 1, JAN1, 6128)
FLAT_V2 = FlatTariff("flat", 2, datetime(2026, 7, 1, tzinfo=SH), 6500)
# residential tiers: 2760 and 4800 kWh a year; 0.5283, +0.05, +0.30 yuan/kWh
TIERED = TieredTariff("res", 1, JAN1, (2_760_000, 4_800_000), (5283, 5783, 8283))
TIERED_V2 = TieredTariff(
    "res", 2, datetime(2026, 9, 1, tzinfo=SH), TIERED.thresholds, (5300, 5800, 8300)
)

BOOK = TariffBook(
    [TOU, FLAT_V1, FLAT_V2, TIERED, TIERED_V2],
    calendar=DayCalendar(holidays=frozenset({date(2026, 5, 1)})),
    seasons={"tou": (WEEKEND,)},
)


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=SH)


def state(tariff: str, meter: str = "m1", account: str = "A", **kw: object) -> MeterState:
    return MeterState(meter, account, tariff, **kw)  # type: ignore[arg-type]


def summary(lines: tuple[ChargeLine, ...]) -> list[tuple[str, int, str, int, int]]:
    return [(ln.tariff_id, ln.version, ln.key, ln.energy_wh, ln.amount) for ln in lines]


def test_tou_across_2200(engine: ModuleType) -> None:
    # Monday 2026-03-02 21:40 -> 22:30 local, 1000 Wh, no per-tariff registers.
    # 50 minutes: 20 in peak (until 22:00), 30 in valley.
    # peak   1000 x 20/50 = 400 Wh x 9000 / 1000 = 3600
    # valley 1000 x 30/50 = 600 Wh x 3000 / 1000 = 1800
    assert at(2026, 3, 2).weekday() == 0
    r = rate(
        state("tou"),
        Interval(at(2026, 3, 2, 21, 40), at(2026, 3, 2, 22, 30), 1000),
        BOOK,
        engine=engine,
    )
    assert summary(r.lines) == [("tou", 1, "slot:2", 400, 3600), ("tou", 1, "slot:4", 600, 1800)]
    assert r.lines[0].t0 == at(2026, 3, 2, 21, 40).astimezone(UTC)
    assert r.lines[0].t1 == r.lines[1].t0 == at(2026, 3, 2, 22).astimezone(UTC)
    assert r.lines[0].price == 9000 and all(ln.apportioned for ln in r.lines)
    assert r.amount == 5400
    assert r.state.totals == {
        ("tou", 1, "slot:2"): Running(400, 3600),
        ("tou", 1, "slot:4"): Running(600, 1800),
    }
    assert r.state.year_wh == 1000


def test_tou_per_tariff_registers_used_when_kept(engine: ModuleType) -> None:
    # Same interval; the DL/T 645 meter's own registers say peak 300 Wh, valley 700 Wh.
    # peak 300 x 9000 / 1000 = 2700; valley 700 x 3000 / 1000 = 2100
    iv = Interval(at(2026, 3, 2, 21, 40), at(2026, 3, 2, 22, 30), 1000, slot_wh={2: 300, 4: 700})
    r = rate(state("tou"), iv, BOOK, engine=engine)
    assert summary(r.lines) == [("tou", 1, "slot:2", 300, 2700), ("tou", 1, "slot:4", 700, 2100)]
    assert not any(ln.apportioned for ln in r.lines)


def test_tou_across_midnight_same_slot_is_one_line(engine: ModuleType) -> None:
    # Tuesday 23:00 -> Wednesday 01:00: valley both sides of midnight -> one line
    # 2000 Wh x 3000 / 1000 = 6000
    iv = Interval(at(2026, 3, 3, 23), at(2026, 3, 4, 1), 2000)
    r = rate(state("tou"), iv, BOOK, engine=engine)
    assert summary(r.lines) == [("tou", 1, "slot:4", 2000, 6000)]
    assert (r.lines[0].t0, r.lines[0].t1) == (iv.t0.astimezone(UTC), iv.t1.astimezone(UTC))


def test_tou_across_midnight_into_a_weekend(engine: ModuleType) -> None:
    # Friday 2026-03-06 23:00 -> Saturday 01:00, 2000 Wh, estimated (a communication gap).
    # Friday 23:00-24:00 valley: 1000 Wh x 3000 / 1000 = 3000
    # Saturday (weekend table, flat all day) 00:00-01:00: 1000 Wh x 6000 / 1000 = 6000
    assert at(2026, 3, 6).weekday() == 4
    iv = Interval(at(2026, 3, 6, 23), at(2026, 3, 7, 1), 2000, estimated=True)
    r = rate(state("tou"), iv, BOOK, engine=engine)
    assert summary(r.lines) == [("tou", 1, "slot:4", 1000, 3000), ("tou", 1, "slot:3", 1000, 6000)]
    assert all(ln.estimated for ln in r.lines)
    # Holiday 2026-05-01 is a Friday but has no own table: the working table applies
    # (the season has none either -> the tariff's slots): 12:00-14:00 = sharp 1 h, flat 1 h
    # 1000 x 12000 / 1000 = 12000; 1000 x 6000 / 1000 = 6000
    r = rate(
        state("tou"), Interval(at(2026, 5, 1, 12), at(2026, 5, 1, 14), 2000), BOOK, engine=engine
    )
    assert summary(r.lines) == [("tou", 1, "slot:1", 1000, 12000), ("tou", 1, "slot:3", 1000, 6000)]


def test_tier_boundary_inside_one_interval(engine: ModuleType) -> None:
    # The account has used 2_759_400 Wh this year; 1000 Wh more crosses 2_760_000.
    # tier 1: 600 Wh x 5283 / 1000 = 3169.8 -> 3170
    # tier 2: 400 Wh x 5783 / 1000 = 2313.2 -> 2313
    t0 = at(2026, 8, 1, 10)
    st = state("res", year_wh=2_759_400)
    r = rate(st, Interval(t0, t0 + timedelta(minutes=10), 1000), BOOK, engine=engine)
    assert summary(r.lines) == [("res", 1, "tier:1", 600, 3170), ("res", 1, "tier:2", 400, 2313)]
    # constant power: the crossing is 6 of 10 minutes in
    assert r.lines[0].t1 == r.lines[1].t0 == (t0 + timedelta(minutes=6)).astimezone(UTC)
    assert r.amount == 5483 and r.state.year_wh == 2_760_400
    # across both thresholds at once with prorated thresholds (account opened 1 July):
    # 1_391_342 and 2_419_726 Wh; from 1_391_000 Wh, 1_100_000 Wh more:
    # tier 1:       342 Wh x 5283 / 1000 = 1806.786  -> 1807
    # tier 2: 1_028_384 Wh x 5783 / 1000 = 5947144.672 -> 5947145
    # tier 3:    71_274 Wh x 8283 / 1000 = 590362.542 -> 590363
    st = state("res", year_wh=1_391_000, thresholds=(1_391_342, 2_419_726))
    r = rate(st, Interval(t0, t0 + timedelta(hours=1), 1_100_000), BOOK, engine=engine)
    assert summary(r.lines) == [
        ("res", 1, "tier:1", 342, 1807),
        ("res", 1, "tier:2", 1_028_384, 5_947_145),
        ("res", 1, "tier:3", 71_274, 590_363),
    ]


def test_prorated_thresholds_for_another_tier_count_give_way(engine: ModuleType) -> None:
    # thresholds prorated for three tiers, on a version with two: the version's own apply
    # (an IndexError before).  From 2_759_400 Wh, 1000 Wh: as in the case above, 5483.
    t0 = at(2026, 8, 1, 10)
    st = state("res", year_wh=2_759_400, thresholds=(1, 2, 3))
    r = rate(st, Interval(t0, t0 + timedelta(minutes=10), 1000), BOOK, engine=engine)
    assert summary(r.lines) == [("res", 1, "tier:1", 600, 3170), ("res", 1, "tier:2", 400, 2313)]


def test_tariff_change_inside_an_interval(engine: ModuleType) -> None:
    # 2026-06-30 23:00 -> 07-01 01:00, 2000 Wh; version 2 takes effect at 07-01 00:00.
    # v1: 1000 Wh x 6128 / 1000 = 6128; v2: 1000 Wh x 6500 / 1000 = 6500
    r = rate(
        state("flat"), Interval(at(2026, 6, 30, 23), at(2026, 7, 1, 1), 2000), BOOK, engine=engine
    )
    assert summary(r.lines) == [("flat", 1, "flat", 1000, 6128), ("flat", 2, "flat", 1000, 6500)]
    assert r.lines[0].t1 == FLAT_V2.effective.astimezone(UTC)


def test_ct_ratio_50_5(engine: ModuleType) -> None:
    # CT 50/5 A -> ratio 10.  Register went 1234.56 -> 1246.90 kWh: 12.34 kWh = 12_340 Wh
    # x 10 = 123_400 Wh at 0.6128 yuan/kWh: 123_400 x 6128 / 1000 = 756_195.2 -> 756_195
    # (75.6195 yuan)
    ratio = Meter("m1", "bus1", ct_ratio=10).ratio
    delta_wh = 1_246_900 - 1_234_560
    iv = Interval(at(2026, 3, 2, 9), at(2026, 3, 2, 10), delta_wh * ratio)
    r = rate(state("flat"), iv, BOOK, engine=engine)
    assert summary(r.lines) == [("flat", 1, "flat", 123_400, 756_195)]


def test_thousand_one_wh_intervals_cost_exactly_one_kwh(engine: ModuleType) -> None:
    # 1 Wh at 0.6128 yuan/kWh = 6.128 units: alone it would round to 6, x1000 = 6000.
    # The rounding rule posts round(cum x price) - posted: the sum is exactly 6128.
    st = state("flat")
    t = at(2026, 3, 2)
    amounts: list[int] = []
    for _ in range(1000):
        r = rate(st, Interval(t, t + timedelta(seconds=6), 1), BOOK, engine=engine)
        amounts.extend(ln.amount for ln in r.lines)
        st, t = r.state, t + timedelta(seconds=6)
    assert sum(amounts) == 6128
    assert set(amounts) == {6, 7}  # 128 of the posts carry the carried-over unit
    assert amounts.count(7) == 128
    assert st.totals == {("flat", 1, "flat"): Running(1000, 6128)}


def test_zero_energy_gives_no_lines_and_bad_input_is_refused(engine: ModuleType) -> None:
    r = rate(state("tou"), Interval(at(2026, 3, 2, 21), at(2026, 3, 2, 23), 0), BOOK, engine=engine)
    assert r.lines == () and r.state.year_wh == 0
    with pytest.raises(ValueError, match="negative"):
        rate(state("flat"), Interval(at(2026, 3, 2), at(2026, 3, 2, 1), -1), BOOK)
    with pytest.raises(ValueError, match="before it starts"):
        rate(state("flat"), Interval(at(2026, 3, 2, 1), at(2026, 3, 2), 1), BOOK)
    # a zero-length interval (two readings at one instant) keeps its energy
    r = rate(state("flat"), Interval(at(2026, 3, 2), at(2026, 3, 2), 5), BOOK, engine=engine)
    assert summary(r.lines) == [("flat", 1, "flat", 5, 31)]  # 5 x 6128 / 1000 = 30.64 -> 31


def test_a_long_apportioned_interval_is_marked_estimated(engine: ModuleType) -> None:
    # Readings 2 h apart with a 15 min gap limit: split by time across 22:00, estimated.
    iv = Interval(at(2026, 3, 2, 21), at(2026, 3, 2, 23), 2000)
    gap = timedelta(minutes=15)
    r = rate(state("tou"), iv, BOOK, max_gap=gap, engine=engine)
    assert [ln.estimated for ln in r.lines] == [True, True]
    # the meter's own per-tariff registers are not an estimate, however long the gap
    iv = Interval(iv.t0, iv.t1, 2000, slot_wh={2: 1200, 4: 800})
    r = rate(state("tou"), iv, BOOK, max_gap=gap, engine=engine)
    assert [ln.estimated for ln in r.lines] == [False, False]
    # within the limit: not estimated
    iv = Interval(at(2026, 3, 2, 21, 50), at(2026, 3, 2, 22, 5), 150)
    r = rate(state("tou"), iv, BOOK, max_gap=gap, engine=engine)
    assert summary(r.lines) == [("tou", 1, "slot:2", 100, 900), ("tou", 1, "slot:4", 50, 150)]
    assert not any(ln.estimated for ln in r.lines)


def test_time_shares_round_half_up_and_sum_exactly(engine: ModuleType) -> None:
    # 21:50 -> 22:05, 100 Wh: peak 10 of 15 min = 66.67 Wh -> 67, valley the rest, 33
    # 67 x 9000 / 1000 = 603; 33 x 3000 / 1000 = 99
    iv = Interval(at(2026, 3, 2, 21, 50), at(2026, 3, 2, 22, 5), 100)
    r = rate(state("tou"), iv, BOOK, engine=engine)
    assert summary(r.lines) == [("tou", 1, "slot:2", 67, 603), ("tou", 1, "slot:4", 33, 99)]


def test_tier_crossing_and_version_change_in_one_interval(engine: ModuleType) -> None:
    # 08-31 23:00 -> 09-01 01:00, 2000 Wh; tiered v2 from 09-01 00:00; year at 2_759_500.
    # v1 hour, 1000 Wh: 500 Wh tier 1 (to 2_760_000) x 5283 / 1000 = 2641.5 -> 2642
    #                   500 Wh tier 2 x 5783 / 1000 = 2891.5 -> 2892
    # v2 hour, 1000 Wh: the year is at 2_760_500, tier 2: 1000 x 5800 / 1000 = 5800
    st = state("res", year_wh=2_759_500)
    r = rate(st, Interval(at(2026, 8, 31, 23), at(2026, 9, 1, 1), 2000), BOOK, engine=engine)
    assert summary(r.lines) == [
        ("res", 1, "tier:1", 500, 2642),
        ("res", 1, "tier:2", 500, 2892),
        ("res", 2, "tier:2", 1000, 5800),
    ]


def test_yearly_tier_reset_inside_an_interval(engine: ModuleType) -> None:
    # The tier total resets at 2027-01-01 00:00 local; the account (opened mid-year,
    # prorated first threshold 1_391_342 Wh) stands at 1_391_000 Wh.
    # 2026-12-31 23:00 -> 2027-01-01 01:00, 2000 Wh, 1000 Wh each side of the reset:
    # (tiered version 2 is in force: 0.5300 / 0.5800 / 0.8300 yuan/kWh)
    # 2026: 342 Wh tier 1 x 5300 / 1000 = 1812.6 -> 1813
    #       658 Wh tier 2 x 5800 / 1000 = 3816.4 -> 3816
    # 2027: total restarts at 0, the tariff's own thresholds: 1000 Wh tier 1.
    #       Tier 1's accumulator goes on: cum 1342 Wh x 5300 / 1000 = 7112.6 -> 7113,
    #       minus 1813 posted = 5300
    st = state(
        "res",
        year_wh=1_391_000,
        thresholds=(1_391_342, 2_419_726),
        year_end=at(2027, 1, 1),
    )
    r = rate(st, Interval(at(2026, 12, 31, 23), at(2027, 1, 1, 1), 2000), BOOK, engine=engine)
    assert summary(r.lines) == [
        ("res", 2, "tier:1", 342, 1813),
        ("res", 2, "tier:2", 658, 3816),
        ("res", 2, "tier:1", 1000, 5300),
    ]
    assert (r.state.year_wh, r.state.thresholds, r.state.year_end) == (1000, None, None)
    # an interval starting at the reset: the whole of it is in the new year
    r = rate(st, Interval(at(2027, 1, 1), at(2027, 1, 1, 1), 400), BOOK, engine=engine)
    assert summary(r.lines) == [("res", 2, "tier:1", 400, 2120)]  # 400 x 5300 / 1000
    assert r.state.year_wh == 400


def test_naive_times_are_refused_and_empty_registers_mean_none(engine: ModuleType) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        rate(state("flat"), Interval(datetime(2026, 3, 2), datetime(2026, 3, 2, 1), 1), BOOK)
    # no registers reported: apportioned by time (see test_tou_across_2200)
    iv = Interval(at(2026, 3, 2, 21, 40), at(2026, 3, 2, 22, 30), 1000, slot_wh={})
    r = rate(state("tou"), iv, BOOK, engine=engine)
    assert summary(r.lines) == [("tou", 1, "slot:2", 400, 3600), ("tou", 1, "slot:4", 600, 1800)]
    # registers on a flat tariff are not used: the total is
    iv = Interval(at(2026, 3, 2, 21), at(2026, 3, 2, 22), 1000, slot_wh={2: 900})
    r = rate(state("flat"), iv, BOOK, engine=engine)
    assert summary(r.lines) == [("flat", 1, "flat", 1000, 6128)] and r.lines[0].apportioned


def test_lines_are_not_joined_across_the_yearly_reset(engine: ModuleType) -> None:
    # flat tariff, 1000 Wh over 23:00 -> 01:00 across the reset: two lines of 500 Wh
    # (flat version 2, 0.6500 yuan/kWh) 500 x 6500 / 1000 = 3250 each, on one accumulator:
    # cum 1000 Wh -> 6500, minus 3250 posted = 3250
    st = state("flat", year_wh=77, year_end=at(2027, 1, 1))
    r = rate(st, Interval(at(2026, 12, 31, 23), at(2027, 1, 1, 1), 1000), BOOK, engine=engine)
    assert summary(r.lines) == [("flat", 2, "flat", 500, 3250), ("flat", 2, "flat", 500, 3250)]
    assert r.lines[0].t1 == at(2027, 1, 1).astimezone(UTC) and r.state.year_wh == 500
