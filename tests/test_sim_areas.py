"""Transformer areas: the gate meter sees customers + technical loss + theft, exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.sim.areas import AreaLoad, area_truth, make_gate, snapshot
from gateway.sim.physics import ConstantLoad, MeterPhysics, RandomLoad

T0 = datetime(2024, 6, 1, 16, 0, tzinfo=UTC)  # 00:00 Asia/Shanghai
HOUR = timedelta(hours=1)


def customer(number: int, load: object, **kw: object) -> MeterPhysics:
    return MeterPhysics(meter_number=f"{number:012d}", load=load, now=T0, **kw)  # type: ignore[arg-type]


def test_gate_is_customers_plus_loss_plus_theft() -> None:
    shop, flat = customer(1, ConstantLoad(1000)), customer(2, ConstantLoad(2000))
    gate = make_gate(
        [shop, flat], meter_number="000000000100", now=T0, loss_permille=50, theft_watts=300
    )
    assert gate.power_w == 3000 + 150 + 300
    before = snapshot(gate, [shop, flat], T0)
    after = snapshot(gate, [shop, flat], T0 + 24 * HOUR)
    truth = area_truth(before, after)
    assert (truth.supply_wh, truth.sales_wh, truth.loss_wh) == (82_800, 72_000, 10_800)
    assert truth.loss_ppm == 10_800 * 1_000_000 // 82_800  # 13.04 %
    assert gate.daily_freezes[0].import_wh == 82_800  # the gate's own 00:00 freeze
    assert truth.as_dict()["loss_wh"] == 10_800


def test_a_trip_reaches_the_gate_at_its_instant() -> None:
    shop, flat = customer(1, ConstantLoad(1000)), customer(2, ConstantLoad(2000))
    gate = make_gate(
        [shop, flat], meter_number="000000000100", now=T0, loss_permille=50, theft_watts=300
    )
    flat.open_relay(T0 + 6 * HOUR)  # the gate was never advanced by anyone else
    shop.advance(T0 + 20 * HOUR)
    flat.close_relay(T0 + 20 * HOUR)
    gate.advance(T0 + 24 * HOUR)
    # 6 h of 3450 W, 14 h of 1000 + 50 + 300, 4 h of 3450 W
    assert gate.energy_import_wh == 6 * 3450 + 14 * 1350 + 4 * 3450
    assert gate.power_w == 3450


def test_solar_feed_in_counts_as_supply_and_gate_reverse_as_sales() -> None:
    home, roof = customer(1, ConstantLoad(1000)), customer(2, ConstantLoad(-3000))
    gate = make_gate([home, roof], meter_number="000000000100", now=T0, loss_permille=100)
    before = snapshot(gate, [home, roof], T0)
    after = snapshot(gate, [home, roof], T0 + 10 * HOUR)
    assert gate.power_w == -1800  # net -2000 W flows back, 200 W lost on the way
    assert (gate.energy_import_wh, gate.energy_export_wh) == (0, 18_000)
    truth = area_truth(before, after)
    assert truth.supply_wh == 30_000  # gate forward 0 + roof feed-in
    assert truth.sales_wh == 10_000 + 18_000  # home forward + gate reverse
    assert truth.loss_wh == 2_000


def test_truth_survives_a_swap_and_a_register_wrap() -> None:
    shop = customer(1, ConstantLoad(3600), energy_import_wh=999_999_000)
    gate = make_gate([shop], meter_number="000000000100", now=T0, theft_watts=36)
    before = snapshot(gate, [shop], T0)
    shop.advance(T0 + HOUR)
    assert shop.energy_import_wh == 2_600  # wrapped past 999999.99 kWh
    shop.swap(T0 + 2 * HOUR, "000000000009", 50)
    after = snapshot(gate, [shop], T0 + 3 * HOUR)
    assert shop.energy_import_wh == 50 + 3_600
    truth = area_truth(before, after)
    assert (truth.sales_wh, truth.supply_wh, truth.loss_wh) == (10_800, 10_908, 108)


def test_random_customers_integrate_on_the_same_grid() -> None:
    customers = [customer(i, RandomLoad(800 + 100 * i, seed=i, spread_watts=700)) for i in range(5)]
    gate = make_gate(customers, meter_number="000000000100", now=T0)
    assert gate.load.step_s == 60  # type: ignore[attr-defined]
    before = snapshot(gate, customers, T0)
    t = T0
    for _ in range(200):
        t += timedelta(seconds=431)
        snapshot(gate, customers, t)
    truth = area_truth(before, snapshot(gate, customers, t))
    # no loss, no theft: the gate's integral is the customers' sum, each register
    # rounding down its own remainder (< 1 Wh per customer)
    assert 0 <= truth.loss_wh < len(customers)
    twin_customers = [
        customer(i, RandomLoad(800 + 100 * i, seed=i, spread_watts=700)) for i in range(5)
    ]
    twin = make_gate(twin_customers, meter_number="000000000100", now=T0)
    twin.advance(t)
    assert twin.total_import_wh == gate.total_import_wh


def test_constant_area_has_no_grid_and_checks_its_parameters() -> None:
    assert AreaLoad([customer(1, ConstantLoad(5))]).step_s is None
    with pytest.raises(ValueError, match="loss_permille"):
        AreaLoad([], loss_permille=1000)
    with pytest.raises(ValueError, match="theft_watts"):
        AreaLoad([], theft_watts=-1)
    gate = make_gate([], meter_number="000000000100", now=T0)
    assert not gate.has_relay
    empty = area_truth(snapshot(gate, [], T0), snapshot(gate, [], T0 + HOUR))
    assert empty.loss_ppm is None
    with pytest.raises(ValueError, match="different areas"):
        area_truth(snapshot(gate, [], T0), snapshot(gate, [customer(1, ConstantLoad(1))], T0))
