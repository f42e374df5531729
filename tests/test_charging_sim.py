"""Time of use by the meter's own registers, end to end: a simulated DL/T 645 meter
(CT 50/5 = 10) whose load jumps at 08:00 is polled by the gateway (block 0001FF00: total
and tariffs 1-4) across the valley -> peak boundary in one interval.  The charge follows
the meter's per-tariff registers, not an apportioning by time."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from polling import wait_for

from gateway.clock import ManualClock
from gateway.config import parse_config
from gateway.poller import PollSettings
from gateway.runtime import Runtime
from gateway.sim.config import parse_sim_config
from gateway.sim.service import Simulator

VALLEY, PEAK = 2979, 10853
CT = 10
START = datetime(2024, 6, 3, 7, 50, tzinfo=ZoneInfo("Asia/Shanghai")).astimezone(UTC)

SIM = """
buses:
  - {name: dl, link: dl, protocol: dlt645, baud: 38400, parity: E}
meters:
  - id: m1
    bus: dl
    address: "000000000001"
    turnaround_ms: 5
    energy_import_wh: 500_000
    # 1200 W until 08:00, then 7200 W falling slowly: most of the energy is after 08:00
    load: {kind: daily, points: [[0, 1200], [479, 1200], [480, 7200]]}
    tou_slots: [{start: "00:00", tariff: 4}, {start: "08:00", tariff: 2},
                {start: "20:00", tariff: 4}]
"""

GATEWAY = f"""
gateway_id: gw
serial_buses:
  - {{name: dl, port: '{{port}}', protocol: dlt645, baud: 38400, parity: E}}
meters:
  - {{id: m1, bus: dl, address: "000000000001", ct_ratio: {CT}, account: B}}
accounts:
  - {{id: B, type: postpaid, tariff: tou}}
tariffs:
  - id: tou
    version: 1
    effective: "2024-01-01T00:00:00+08:00"
    kind: tou
    slots: [{{start: "00:00", slot: 4}}, {{start: "08:00", slot: 2}}, {{start: "20:00", slot: 4}}]
    prices: {{1: 1, 2: {PEAK}, 3: 1, 4: {VALLEY}}}
uplink: {{host: localhost}}
"""


def cost(wh: int, price: int) -> int:
    return (2 * wh * price + 1000) // 2000


def reg(wh: int) -> int:
    return wh // 10 * 10  # a register holds whole 10 Wh


def test_an_interval_across_a_slot_boundary_is_split_by_the_meters_registers(
    tmp_path: Path,
) -> None:
    clock = ManualClock(START)
    sim_config = parse_sim_config(SIM, "s.yaml", link_dir=str(tmp_path))
    path = tmp_path / "gw.db"
    with Simulator(sim_config, clock) as sim:
        config = parse_config(GATEWAY.replace("{port}", sim.bus("dl").path), "gw.yaml")
        rt = Runtime(
            config,
            store_path=path,
            clock=clock,
            # one poll an hour (real time): no poll is in flight when the clock moves, so no
            # reading carries the old time with the new energy; the test asks for the next
            settings=PollSettings(interval=3600, max_power_w=10**9),
            status_socket=None,
            charging=True,
        )
        with rt:
            state = rt.pollers["dl"].meters["m1"]

            def read_since(ms: int) -> bool:
                return (state.energy_ts_ms or -1) >= ms

            wait_for(lambda: read_since(int(START.timestamp() * 1000)), 10, "the baseline")
            clock.advance(timedelta(minutes=20))  # 07:50 -> 08:10 in one interval
            end_ms = int(clock.now().timestamp() * 1000)
            state.due = 0.0  # poll it now
            wait_for(lambda: read_since(end_ms), 10, "a reading at 08:10")
            for bus in rt.buses.values():
                bus.stop()
            truth = sim.truth("m1")["meters"]["m1"]
            assert rt.charger is not None and rt.charger.wait_idle(10)
            balance = rt.charger.balance("B")
    # the baseline at 07:50 had T1 = the initial energy and T2 = T4 = 0 (the clock stood)
    t1, t2, t3, t4 = truth["tariff_wh"]
    assert t1 == 500_000 and t3 == 0
    valley, peak = reg(t4) * CT, reg(t2) * CT
    # 10 min x 1200 W = 200 Wh valley; about 10 min x 7100 W peak
    assert valley == 2_000 and peak > 5 * valley
    expected = cost(valley, VALLEY) + cost(peak, PEAK)
    assert balance == -expected
    # by time (constant power) it would have been half and half: a different bill
    total = (reg(truth["energy_import_wh"]) - reg(500_000)) * CT
    assert total == valley + peak
    half = total // 2
    assert expected != cost(half, VALLEY) + cost(total - half, PEAK)
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT -amount FROM ledger WHERE account = 'B'").fetchall()
    finally:
        conn.close()
    assert sorted(a for (a,) in rows) == sorted([cost(valley, VALLEY), cost(peak, PEAK)])
