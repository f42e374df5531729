"""Settlement (gateway.settlement, gateway.tasks.settlement): the monthly snapshot per
account as of 00:00 local of the settlement day, written once; the yearly record with
the closed year's tier total; the calendar task, only on a trusted clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import cbor2
import pytest
from lifecycle_bench import FLAT, Bench, config_yaml, ms
from polling import START, M

from gateway.clock import ManualClock
from gateway.config import parse_config
from gateway.protocols.quantities import Quantity
from gateway.settlement import (
    monthly_moment,
    monthly_snapshot,
    snapshots,
    yearly_moment,
    yearly_record,
)
from gateway.store.ledger import check_balances
from gateway.tasks.settlement import SettlementTask

# START is 2024-06-01 12:00 Shanghai; the July settlement moment (day 1, 00:00 +08:00) is
# 2024-06-30T16:00Z, 29.5 days later.
JULY = 29 * 86_400 + 12 * 3_600
BILLING = '\nbilling: {year_start: "07-01", settlement_day: 1}\n'


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    b = Bench(tmp_path / "gw.db", parse_config(config_yaml(extra=BILLING), "gw.yaml"))
    yield b
    assert b.run(check_balances) == []
    b.close()


def test_moments_are_local_midnight(bench: Bench) -> None:
    at = monthly_moment(bench.config, date(2024, 7, 1))
    assert int(at.timestamp() * 1000) == ms(JULY)
    assert yearly_moment(bench.config, 2024) == at  # year_start 07-01


def test_monthly_snapshot_as_of_the_moment_once(bench: Bench) -> None:
    bench.top_up("A", 1_000_000, "t-A")  # at START: 100 yuan
    bench.post("m1", 0, 0)
    assert bench.post("m1", JULY - 60, 10_000) == 10 * FLAT  # 10 kWh x 0.85 yuan = 85_000
    # after the moment: a reading (charged 1 kWh = 8_500) and a top-up: next month's
    assert bench.post("m1", JULY + 60, 11_000) == 8_500
    month = date(2024, 7, 1)
    with pytest.raises(ValueError, match="due at"):
        bench.run(
            lambda db: monthly_snapshot(
                db, month, ms(JULY) - 1, config=bench.config, book=bench.book
            )
        )
    taken = bench.run(
        lambda db: monthly_snapshot(db, month, ms(JULY + 120), config=bench.config, book=bench.book)
    )
    snap = {s.account: s for s in taken}
    assert sorted(snap) == ["A", "P", "R", "vacancy"]
    a = snap["A"]
    assert (a.period, a.at_ms, a.balance) == ("2024-07", ms(JULY), 1_000_000 - 85_000)
    assert (a.tariff, a.tariff_version, a.year_wh) == ("flat", 1, None)
    charge_id = bench.run(
        lambda db: db.execute("SELECT id FROM ledger WHERE amount = -85000").fetchone()[0]
    )
    assert a.ledger_id == charge_id  # the prefix ends before the charge dated after
    m1 = next(m for m in a.meters if m.meter == "m1")
    assert (m1.ts_ms, m1.energy_wh, m1.status, m1.ratio) == (ms(JULY - 60), 10_000, "active", 1)
    assert {m.meter for m in a.meters} == {"m1", "m2", "c1", "d1"}
    assert next(m for m in a.meters if m.meter == "m2").energy_wh is None  # never read
    # once: taken again later, with more in the ledger, the stored snapshot is returned
    bench.top_up("A", 50_000, "t-A2")
    again = bench.run(
        lambda db: monthly_snapshot(
            db, month, ms(JULY + 7200), config=bench.config, book=bench.book
        )
    )
    assert again == taken
    assert bench.run(lambda db: snapshots(db, "monthly", "2024-07")) == taken
    n = bench.run(lambda db: db.execute("SELECT count(*) FROM settlements").fetchone()[0])
    assert n == 4


def test_yearly_record_holds_the_closed_years_tier_total(bench: Bench) -> None:
    bench.post("r1", 0, 0)
    bench.post("r1", JULY - 60, 3_000_000)  # R: 3000 kWh in the year ending 2024-07-01
    taken = bench.run(
        lambda db: yearly_record(db, 2024, ms(JULY), config=bench.config, book=bench.book)
    )
    r = next(s for s in taken if s.account == "R")
    assert (r.kind, r.period, r.year_wh) == ("yearly", "2024-07-01", 3_000_000)
    # 2760 kWh x 0.5283 + 240 kWh x 0.5783 = 14_581_080 + 1_387_920
    assert r.balance == -(14_581_080 + 1_387_920)


def test_the_closed_years_total_is_kept_at_the_reset(bench: Bench) -> None:
    bench.post("r1", 0, 0)
    bench.post("r1", JULY - 60, 3_000_000)
    # rated after the moment: the tier total resets; the interval JULY-60 .. JULY+60 holds
    # 1000 Wh, split by time at the moment: 500 Wh close the old year, 500 open the new
    bench.post("r1", JULY + 60, 3_001_000)
    # another account whose reset was not kept (a store from before migration 10): unknown
    bench.post("m1", 0, 0)
    bench.post("m1", JULY + 60, 1_000)
    bench.run(lambda db: db.execute("UPDATE rating_year SET closed_wh = NULL,"
                                    " closed_end_ms = NULL WHERE account = 'A'"))  # fmt: skip
    taken = bench.run(
        lambda db: yearly_record(db, 2024, ms(JULY + 120), config=bench.config, book=bench.book)
    )
    by = {s.account: s.year_wh for s in taken}
    assert by["R"] == 3_000_000 + 500 and by["A"] is None
    row = bench.run(
        lambda db: db.execute(
            "SELECT year_wh, closed_wh, closed_end_ms FROM rating_year WHERE account = 'R'"
        ).fetchone()
    )
    assert tuple(row) == (500, 3_000_500, ms(JULY))


def test_the_task_takes_the_latest_moments_once_the_clock_is_trusted(bench: Bench) -> None:
    clock = ManualClock(START + timedelta(seconds=JULY + 90), bench.config.timezone, trusted=False)
    task = SettlementTask(clock, bench.store.writer, bench.config, bench.book, delay_s=60)
    # 30 s after the moment the July snapshot is not due yet (polls in flight land first)
    early = START + timedelta(seconds=JULY + 30)
    assert task.due(early) == [("monthly", date(2024, 6, 1)), ("yearly", 2023)]
    task.tick()
    assert task.status()["suspended"] is True
    assert bench.run(lambda db: db.execute("SELECT count(*) FROM settlements").fetchone()[0]) == 0
    clock.trust("test")
    task.tick()
    assert task.status() == {
        "suspended": False,
        "monthly": "2024-07",
        "yearly": "2024-07-01",
        "failures": 0,
    }
    assert task.due(clock.now()) == []
    count = bench.run(lambda db: db.execute("SELECT count(*) FROM settlements").fetchone()[0])
    assert count == 8  # 4 accounts, monthly and yearly
    # 20 days on: nothing new is due; on 1 August the August snapshot is
    clock.advance(timedelta(days=20))
    assert task.due(clock.now()) == []
    clock.advance(timedelta(days=11))
    assert task.due(clock.now()) == [("monthly", date(2024, 8, 1))]
    task.tick()
    assert task.status()["monthly"] == "2024-08"


def test_the_running_gateway_takes_the_snapshot_at_the_settlement_moment(tmp_path: Path) -> None:
    # A gateway charging m1 (1 Wh a second) across 00:00 of 1 July (Shanghai): the
    # calendar's settlement task snapshots every account as of that moment.
    from polling import sim_yaml, wait_for

    from gateway.poller import PollSettings
    from gateway.runtime import Runtime
    from gateway.sim.config import parse_sim_config
    from gateway.sim.service import Simulator
    from gateway.tasks.attach import attach

    m1 = M("m1", "dl", "dlt645", 1, energy_wh=100_000, watts=3_600, turnaround_ms=5)
    moment = monthly_moment(parse_config(config_yaml(extra=BILLING), "x"), date(2024, 7, 1))
    clock = ManualClock(moment - timedelta(seconds=90))
    sim_config = parse_sim_config(
        sim_yaml([("dl", "dlt645", 38400)], [m1]), "s.yaml", link_dir=str(tmp_path)
    )
    with Simulator(sim_config, clock) as sim:
        text = config_yaml([(m1, "A")], extra=BILLING, port=sim.bus("dl").path)
        config = parse_config(text, "gw.yaml")
        bench = Bench(tmp_path / "gw.db", config)
        bench.top_up("A", 1_000_000, "t-A")  # in credit: the relays leave m1 closed
        bench.close()
        rt = Runtime(
            config,
            store_path=tmp_path / "gw.db",
            clock=clock,
            settings=PollSettings(interval=0, max_power_w=10**9),
            status_socket=None,
            charging=True,
        )
        with rt:
            calendar = attach(rt, interval=0.01)
            try:
                while clock.now() < moment + timedelta(seconds=90):  # the task waits 60 s
                    n = rt.pollers["dl"].readings
                    wait_for(lambda n=n: rt.pollers["dl"].readings > n + 1, 10, "polls")  # type: ignore[misc]
                    clock.advance(15)
                wait_for(
                    lambda: rt.status()["settlement"]["monthly"] == "2024-07",  # type: ignore[index]
                    10,
                    "the July snapshot",
                )
                # the vacancy exception list of the day that ended (none: no vacancy tariff)
                wait_for(
                    lambda: rt.status()["vacancy"]["day"] == "2024-06-30",  # type: ignore[index]
                    10,
                    "the vacancy list",
                )
            finally:
                calendar.stop()
            assert rt.writer is not None
            taken = rt.writer.call(lambda db: snapshots(db, "monthly", "2024-07")).result(10)
            db_rows = rt.writer.call(
                lambda db: db.execute("SELECT id, account, ts_ms, amount FROM ledger").fetchall()
            ).result(10)
            readings = rt.writer.call(
                lambda db: db.execute("SELECT ts_ms, vals, id FROM readings").fetchall()
            ).result(10)
    a = next(s for s in taken if s.account == "A")
    at_ms = int(moment.timestamp() * 1000)
    assert a.at_ms == at_ms and a.tariff == "flat"
    # the position is the last charge dated at or before the moment; the balance re-adds
    before = [r for r in db_rows if r[2] <= at_ms]
    assert before and a.ledger_id == max(r[0] for r in before)
    assert any(r[2] > at_ms for r in db_rows)  # charging went on after it
    assert a.balance == sum(r[3] for r in db_rows if r[1] == "A" and r[0] <= a.ledger_id)
    # m1's register is the last journaled reading dated at or before the moment (two polls
    # may carry the same time of the manual clock)
    last = max((r for r in readings if r[0] <= at_ms), key=lambda r: r[2])
    (snap_m1,) = a.meters
    assert snap_m1.ts_ms == last[0]
    assert snap_m1.energy_wh == cbor2.loads(last[1])[int(Quantity.ENERGY_IMPORT)]
    # and the balance is the top-up less the energy from the first reading to that one,
    # rounded once (flat 0.85 yuan/kWh)
    first = cbor2.loads(min(readings, key=lambda r: r[2])[1])[int(Quantity.ENERGY_IMPORT)]
    used = snap_m1.energy_wh - first
    assert used > 0 and a.balance == 1_000_000 - (2 * used * FLAT + 1000) // 2000
