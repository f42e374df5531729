"""Meter physics: exact integration, relay, wrap, tariffs, clock drift, freezes, swap, solar."""

from __future__ import annotations

import json
from datetime import UTC, datetime, time, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.clock import ManualClock
from gateway.sim.physics import (
    ConstantLoad,
    DailyCurveLoad,
    MeterPhysics,
    RandomLoad,
    make_load,
)

T0 = datetime(2024, 6, 1, 4, 0, tzinfo=UTC)  # 12:00 Asia/Shanghai
SLOTS = [(time(0), 4), (time(8), 2), (time(12), 3), (time(18), 1)]


def meter(load: object = ConstantLoad(1000), now: datetime = T0, **kw: object) -> MeterPhysics:
    return MeterPhysics(meter_number="000000000001", load=load, now=now, **kw)  # type: ignore[arg-type]


# --- loads -------------------------------------------------------------------------


def test_random_load_is_seeded_per_minute() -> None:
    a, b, c = RandomLoad(1000, 7), RandomLoad(1000, 7), RandomLoad(1000, 8)
    instants = [T0 + timedelta(minutes=i) for i in range(60)]
    assert [a.power_at(t) for t in instants] == [b.power_at(t) for t in instants]
    assert [a.power_at(t) for t in instants] != [c.power_at(t) for t in instants]
    assert a.power_at(T0) == a.power_at(T0 + timedelta(seconds=59))
    assert all(800 <= a.power_at(t) <= 1200 for t in instants)
    assert len({a.power_at(t) for t in instants}) > 10


def test_daily_curve_is_linear_in_local_time_and_wraps() -> None:
    # 06:00 local 0 W, 12:00 local 600 W; across midnight back to 0 at 06:00
    curve = DailyCurveLoad(((360, 0), (720, 600)))
    local = datetime(2024, 6, 1, 9, 0, tzinfo=curve._zone)  # type: ignore[attr-defined]
    assert curve.power_at(local) == 300
    assert curve.power_at(local.replace(hour=12)) == 600
    assert curve.power_at(local.replace(hour=0)) == 600 - 600 * 720 // 1080
    assert curve.power_at(local.replace(hour=9, second=59)) == 300


def test_make_load_kinds_and_errors() -> None:
    assert make_load("constant", watts=5) == ConstantLoad(5)
    assert make_load("random", mean_watts=5, seed=1, spread_watts=2) == RandomLoad(5, 1, 2)
    assert make_load("daily", points=[[0, 1], [60, 2]]).power_at(T0) in (1, 2)
    with pytest.raises(ValueError, match="unknown load kind"):
        make_load("sine")
    with pytest.raises(ValueError, match="needs 'watts'"):
        make_load("constant")
    with pytest.raises(ValueError, match="no parameter 'wats'"):
        make_load("constant", watts=1, wats=2)
    with pytest.raises(ValueError, match="distinct"):
        make_load("daily", points=[[0, 1], [0, 2]])


# --- exact integration ----------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    watts=st.integers(-5000, 5000),
    steps=st.lists(st.integers(1, 400_000_000), min_size=1, max_size=40),
)
def test_many_small_steps_equal_one_big_step(watts: int, steps: list[int]) -> None:
    small = meter(ConstantLoad(watts), tou_slots=SLOTS)
    t = T0
    for us in steps:
        t += timedelta(microseconds=us)
        small.advance(t)
    big = meter(ConstantLoad(watts), tou_slots=SLOTS)
    big.advance(t)
    assert small.truth(t) == big.truth(t)
    total_us = (t - T0) // timedelta(microseconds=1)
    expect = abs(watts) * total_us // 3_600_000_000
    assert (small.energy_import_wh if watts > 0 else small.energy_export_wh) == expect


def test_random_load_small_steps_equal_big_step() -> None:
    load = RandomLoad(1500, seed=3, spread_watts=1000)
    a, b = meter(load, tou_slots=SLOTS), meter(load, tou_slots=SLOTS)
    end = T0 + timedelta(hours=30)
    t = T0
    while t < end:
        t += timedelta(seconds=37.3)
        a.advance(t)
    b.advance(t)
    assert a.truth(t) == b.truth(t)
    # the same integral by hand: per minute, power x 60 s (first minute starts at T0)
    minutes = int((t - T0).total_seconds() // 60)
    uj = sum(load.power_at(T0 + timedelta(minutes=i)) * 60_000_000 for i in range(minutes))
    uj += load.power_at(T0 + timedelta(minutes=minutes)) * (
        (t - T0) // timedelta(microseconds=1) - minutes * 60_000_000
    )
    assert a.energy_import_wh == uj // 3_600_000_000


def test_one_hour_at_one_kilowatt_is_one_kilowatt_hour() -> None:
    m = meter(ConstantLoad(1000))
    m.advance(T0 + timedelta(hours=1) - timedelta(microseconds=1))
    assert m.energy_import_wh == 999
    m.advance(T0 + timedelta(hours=1))
    assert m.energy_import_wh == 1000
    m.advance(T0)  # backwards: ignored
    assert m.energy_import_wh == 1000


def test_power_current_follow_load() -> None:
    m = meter(ConstantLoad(2156), phases=1, voltage_dv=2200, power_factor_milli=980)
    assert m.power_w == 2156
    assert m.current_ma == 10000  # 2156 / (220.0 x 0.98) = 10.000 A
    three = meter(ConstantLoad(6468), phases=3)
    assert three.current_ma == 10000


# --- relay --------------------------------------------------------------------------


def test_open_relay_stops_power_and_energy() -> None:
    m = meter(ConstantLoad(3600))
    m.advance(T0 + timedelta(seconds=1))
    assert m.energy_import_wh == 1
    m.open_relay(T0 + timedelta(hours=1))
    assert (m.energy_import_wh, m.power_w, m.current_ma, m.relay_closed) == (3600, 0, 0, False)
    m.advance(T0 + timedelta(days=3))
    assert m.energy_import_wh == 3600
    m.close_relay(T0 + timedelta(days=3))
    assert m.power_w == 3600
    m.advance(T0 + timedelta(days=3, hours=1))
    assert m.energy_import_wh == 7200


def test_meter_without_relay_refuses() -> None:
    m = meter(has_relay=False)
    with pytest.raises(ValueError, match="no relay"):
        m.open_relay()
    assert m.relay_closed


# --- wrap -----------------------------------------------------------------------------


def test_register_wraps_at_999999_99_kwh() -> None:
    m = meter(ConstantLoad(36_000), energy_import_wh=999_999_990)  # 999999.99 kWh
    m.advance(T0 + timedelta(seconds=1))  # +10 Wh
    assert m.energy_import_wh == 0
    m.advance(T0 + timedelta(seconds=1.5))  # +5 Wh
    assert m.energy_import_wh == 5
    assert sum(m.tariff_wh) % 1_000_000_000 == m.energy_import_wh


def test_export_wraps_too() -> None:
    m = meter(ConstantLoad(-36_000), energy_export_wh=999_999_995)
    m.advance(T0 + timedelta(seconds=1))
    assert (m.energy_export_wh, m.energy_import_wh) == (5, 0)


# --- tariffs ----------------------------------------------------------------------


def test_tariff_registers_follow_slots_in_meter_local_time_and_sum_to_import() -> None:
    m = meter(ConstantLoad(1000), tou_slots=SLOTS)  # starts 12:00 local
    m.advance(T0 + timedelta(hours=24))
    # 12-18 flat(3) 6 kWh, 18-24 sharp(1) 6, 00-08 valley(4) 8, 08-12 peak(2) 4
    assert m.tariff_wh == [6000, 4000, 6000, 8000]
    assert sum(m.tariff_wh) == m.energy_import_wh == 24000


def test_tariffs_use_the_meters_drifted_clock() -> None:
    # meter clock 30 min ahead: its 18:00 is real 17:30 local
    m = meter(ConstantLoad(1000), tou_slots=SLOTS, clock_offset_s=1800)
    m.advance(T0 + timedelta(hours=6))  # real 12:00-18:00 = meter 12:30-18:30
    assert m.tariff_wh == [500, 0, 5500, 0]


def test_slot_table_wraps_before_first_slot() -> None:
    m = meter(ConstantLoad(1000), tou_slots=[(time(8), 2), (time(22), 4)])
    assert m.tariff_at(datetime(2024, 6, 1, 3, 0)) == 4
    assert m.tariff_at(datetime(2024, 6, 1, 8, 0)) == 2


def test_tou_slot_errors() -> None:
    with pytest.raises(ValueError, match=r"1\.\.4"):
        meter(tou_slots=[(time(0), 5)])
    with pytest.raises(ValueError, match="same time"):
        meter(tou_slots=[(time(0), 1), (time(0), 2)])


# --- clock and freezes ------------------------------------------------------------


def test_meter_clock_offset_and_drift() -> None:
    m = meter(drift_ppm=100, clock_offset_s=-2.5)
    assert m.meter_time(T0) == T0 - timedelta(seconds=2.5)
    later = T0 + timedelta(days=10)  # 864000 s x 100 ppm = 86.4 s fast
    assert m.meter_time(later) == later + timedelta(seconds=86.4 - 2.5)
    assert str(m.meter_time(later).tzinfo) == "Asia/Shanghai"
    m.set_meter_time(later, datetime(2024, 6, 11, 12, 0))  # naive: meter-local
    assert m.meter_time(later) == later
    m.set_drift(later, drift_ppm=0, offset_s=60)
    assert m.meter_time(later + timedelta(days=1)) == later + timedelta(days=1, seconds=60)


def test_daily_freeze_at_the_meters_own_midnight_crossing_year_end() -> None:
    clock = ManualClock(datetime(2024, 12, 31, 23, 59))  # local
    # meter 90 s ahead: its 00:00 is real 23:58:30
    m = meter(ConstantLoad(3600), now=clock.now(), clock_offset_s=90, energy_import_wh=500)
    assert m.daily_freezes == []
    clock.advance(timedelta(seconds=29))  # real 23:59:29, meter 00:00:59
    m.advance(clock.now())
    assert m.daily_freezes == []  # meter already past midnight at start: nothing to freeze
    m2 = meter(ConstantLoad(3600), now=clock.now(), clock_offset_s=-90, energy_import_wh=500)
    clock.advance(timedelta(seconds=90))  # real 00:00:59 local; meter 23:59:29
    m2.advance(clock.now())
    assert m2.daily_freezes == []
    clock.advance(timedelta(seconds=31))  # real 00:01:30; meter 00:00:00 exactly
    m2.advance(clock.now())
    [freeze] = m2.daily_freezes
    assert freeze.at == datetime(2025, 1, 1, 0, 0, tzinfo=m2.tz)
    assert freeze.import_wh == 500 + 121  # 121 s at 3600 W
    assert m2.settlement_freezes == [freeze]  # settlement day 1


def test_daily_freeze_with_drift_under_manual_clock() -> None:
    start = datetime(2024, 12, 31, 12, 0)  # local noon
    clock = ManualClock(start)
    m = meter(ConstantLoad(1000), now=clock.now(), drift_ppm=1000)  # +1 ms per s
    # meter midnight after 12 h of real time x (1 + 1e-3): real 43200/1.001 s
    clock.advance(timedelta(seconds=43156))
    m.advance(clock.now())
    assert m.daily_freezes == []
    clock.advance(timedelta(seconds=1))  # real 43157 s -> meter 43200.157 s
    m.advance(clock.now())
    [f] = m.daily_freezes
    assert f.at.isoformat() == "2025-01-01T00:00:00+08:00"
    # frozen at real 43200/1.001 = 43156.843 s after noon; 1 kW
    assert f.import_wh == 43156843157 * 1000 // 3_600_000_000 == 11988


def test_62_deep_history_and_12_settlements() -> None:
    m = meter(ConstantLoad(1000), tou_slots=SLOTS)
    m.advance(T0 + timedelta(days=400))
    assert len(m.daily_freezes) == 62
    assert len(m.settlement_freezes) == 12
    newest = m.daily_freezes[0]
    assert newest.at.date() == (T0 + timedelta(days=400)).astimezone(m.tz).date()
    days = [f.at.date() for f in m.daily_freezes]
    assert days == [days[0] - timedelta(days=i) for i in range(62)]
    assert all(
        f.import_wh - g.import_wh == 24000
        for f, g in zip(m.daily_freezes, m.daily_freezes[1:], strict=False)
    )
    assert all(sum(f.tariff_wh) == f.import_wh for f in m.daily_freezes)
    assert all(f.at.day == 1 and f.at.hour == 0 for f in m.settlement_freezes)


def test_settlement_day_other_than_first() -> None:
    m = meter(ConstantLoad(1000), settlement_day=15)
    m.advance(T0 + timedelta(days=50))
    assert [f.at.date().isoformat() for f in m.settlement_freezes] == ["2024-07-15", "2024-06-15"]


def test_freeze_now() -> None:
    m = meter(ConstantLoad(3600))
    f = m.freeze_now(T0 + timedelta(seconds=100, microseconds=5))
    assert f.import_wh == 100
    assert f.at.second == 0
    assert m.daily_freezes == []


# --- swap, solar, truth ------------------------------------------------------------


def test_swap_installs_a_new_meter() -> None:
    m = meter(ConstantLoad(3600))
    m.advance(T0 + timedelta(days=2))
    assert m.daily_freezes
    m.swap(T0 + timedelta(days=2), "000000000777", 12_345)
    assert (m.meter_number, m.energy_import_wh, m.tariff_wh) == (
        "000000000777",
        12_345,
        [12_345, 0, 0, 0],
    )
    assert m.daily_freezes == [] and m.settlement_freezes == []
    m.advance(T0 + timedelta(days=2, seconds=1))
    assert m.energy_import_wh == 12_346
    with pytest.raises(ValueError, match="4 registers"):
        m.swap(T0 + timedelta(days=3), "x", 1, tariff_wh=[1])


def test_solar_negative_power_fills_export_register() -> None:
    m = meter(ConstantLoad(-2000), tou_slots=SLOTS)
    assert m.power_w == -2000 and m.current_ma < 0
    m.advance(T0 + timedelta(hours=3))
    assert (m.energy_import_wh, m.energy_export_wh, m.tariff_wh) == (0, 6000, [0, 0, 0, 0])


def test_truth_is_json() -> None:
    m = meter(ConstantLoad(1000), tou_slots=SLOTS)
    truth = m.truth(T0 + timedelta(days=1, hours=1))
    assert json.loads(json.dumps(truth)) == truth
    assert truth["energy_import_wh"] == 25000
    assert truth["daily_freezes"][0]["at"] == "2024-06-02T00:00:00+08:00"


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        meter(now=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="phases"):
        meter(phases=2)
    with pytest.raises(ValueError, match="settlement_day"):
        meter(settlement_day=31)
