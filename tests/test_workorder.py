"""A swap done with a work order (domain.md, "Meter lifecycle, the hard cases"): a
replacement or addition may record the new meter's nameplate number (store migration
11); the poller's METER_NUMBER_CHANGED to that number is journaled as the work order's,
not held, and the poller stops showing the meter ``swapped``.  A different number is
held as before."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path

import cbor2
import pytest
from lifecycle_bench import Bench
from lifecycle_bench import config_yaml as lifecycle_config
from polling import START, wait_for
from sqlite_utils import Database
from test_charging import FUND, PRICE, half_up, reg
from test_charging_hold import swap_bench

from gateway.cli import main
from gateway.clock import ManualClock
from gateway.errors import StoreError
from gateway.lifecycle import billing_in, replace_meter
from gateway.protocols.quantities import EventCode, Quantity, Reading
from gateway.runtime import Runtime
from gateway.sim.service import Simulator
from gateway.store.meters import (
    MeterRecord,
    expects_number,
    is_meter_number,
    meter_records,
    record_of,
    set_record,
)
from gateway.store.migrations import JOURNAL

T0 = 1_717_200_000_000
NUMBER = "990000000001"


def test_migration_11_records_a_meter_number() -> None:
    db = Database(memory=True)
    JOURNAL.apply(db, T0)
    set_record(db, MeterRecord("m1", "A", "active", 1, T0, meter_number=NUMBER))
    set_record(db, MeterRecord("m2", "A", "active", 1, T0))
    assert [r.meter_number for r in meter_records(db)] == [NUMBER, None]
    assert expects_number(record_of(db, "m1"), NUMBER)
    assert not expects_number(record_of(db, "m1"), "990000000002")
    assert not expects_number(record_of(db, "m2"), NUMBER)
    held = MeterRecord("m1", "A", "held", 1, T0, meter_number=NUMBER)
    assert not expects_number(held, NUMBER) and not expects_number(None, NUMBER)
    for bad in ("99000000001", "9900000000011", "99000000000x", "９９0000000001"):
        assert not is_meter_number(bad)
        with pytest.raises(StoreError, match="12 digits"):
            set_record(db, MeterRecord("m3", "A", "active", 1, T0, meter_number=bad))
    assert record_of(db, "m3") is None


# --- end to end: the simulator's swap after (or before) the work order ---------------------


def step(rt: Runtime, clock: ManualClock, seconds: int) -> None:
    clock.advance(timedelta(seconds=seconds))
    now = int(clock.now().timestamp() * 1000)
    poller = rt.pollers["dl"]
    wait_for(
        lambda: all((s.energy_ts_ms or -1) >= now for s in poller.meters.values()), 10, "polled"
    )


def truth(sim: Simulator, meter: str) -> int:
    return int(sim.truth(meter)["meters"][meter]["energy_import_wh"])


def number_events(rt: Runtime) -> list[dict[str, object]]:
    assert rt.writer is not None and rt.writer.flush(10)
    with sqlite3.connect(rt.store_path) as conn:
        rows = conn.execute(
            "SELECT e.detail FROM events e JOIN meters m ON m.id = e.meter"
            " WHERE m.name = 'sw' AND e.code = ? ORDER BY e.id",
            (int(EventCode.METER_NUMBER_CHANGED),),
        ).fetchall()
    return [cbor2.loads(row[0]) for row in rows]


def swap_with_work_order(rt: Runtime, sim: Simulator, clock: ManualClock, number: str) -> int:
    """The technician's swap: the line quiet (buses stopped), the new meter (register 1 kWh,
    nameplate 990000000001) fitted, its work order (a replacement under the same id, with
    ``number``) done through the charger, the line back.  The old meter's final register."""
    charger = rt.charger
    assert charger is not None
    for bus in rt.buses.values():
        bus.stop()
    assert charger.wait_idle(10)
    final = reg(truth(sim, "sw"))
    sim.control("sw", "swap", {"meter_number": NUMBER, "energy_import_wh": 1_000})
    ts_ms = int(clock.now().timestamp() * 1000)

    def work_order(db: Database) -> object:
        billing = billing_in(db, rt.config, "sw")
        assert billing is not None
        return replace_meter(
            db,
            "sw",
            Reading("sw", ts_ms, {Quantity.ENERGY_IMPORT: final}),
            "sw",
            Reading("sw", ts_ms, {Quantity.ENERGY_IMPORT: 1_000}),
            billing=billing,
            book=charger.book,
            reason="work order 31: meter replaced",
            ts_ms=ts_ms,
            calendar=charger.calendar,
            meter_number=number,
        )

    charger.apply(work_order).result(10)
    for bus in rt.buses.values():
        bus.start()
    poller = rt.pollers["dl"]
    wait_for(lambda: poller.meters["sw"].number == NUMBER, 10, "the new number read")
    return final


def record(path: Path) -> MeterRecord | None:
    with sqlite3.connect(path) as conn:
        return record_of(Database(conn), "sw")


def test_a_swap_with_its_work_order_is_not_held(tmp_path: Path) -> None:
    with swap_bench(tmp_path) as (rt, sim, clock):
        charger, poller = rt.charger, rt.pollers["dl"]
        assert charger is not None
        step(rt, clock, 0)
        step(rt, clock, 600)
        old = poller.meters["sw"].number
        assert old is not None and old != NUMBER
        final = swap_with_work_order(rt, sim, clock, NUMBER)
        # the poller saw the number change; the charger found it the work order's: journaled
        # once, with the match, and not held; the poller no longer shows it swapped
        assert number_events(rt) == [{"old": old, "new": NUMBER, "work_order": "matched"}]
        assert "sw" in charger.billing and charger.status()["held"] == []
        assert poller.status()["swapped"] == []
        found = record(tmp_path / "gw.db")
        assert found is not None and (found.status, found.meter_number) == ("active", NUMBER)
        step(rt, clock, 600)  # the new meter: 600 Wh, charged from its baseline
        for bus in rt.buses.values():
            bus.stop()
        assert charger.wait_idle(10)
        pre = final - reg(5_000_000)
        post = reg(truth(sim, "sw")) - 1_000
        used_ok = reg(truth(sim, "ok")) - reg(7_000)
        assert pre >= 600 and post >= 600
        # one rounding accumulator for the position across the replacement
        assert charger.balance("A") == FUND - half_up(pre + post, PRICE) - half_up(used_ok, PRICE)


def test_a_different_number_is_held_as_without_a_work_order(tmp_path: Path) -> None:
    with swap_bench(tmp_path) as (rt, sim, clock):
        charger, poller = rt.charger, rt.pollers["dl"]
        assert charger is not None
        step(rt, clock, 0)
        step(rt, clock, 300)
        final = swap_with_work_order(rt, sim, clock, "990000000002")  # not the one fitted
        wait_for(lambda: "sw" not in charger.billing, 10, "the swapped meter held")
        assert charger.status()["held"] == ["sw"] and poller.status()["swapped"] == ["sw"]
        events = number_events(rt)
        assert [e["new"] for e in events] == [NUMBER] and "work_order" not in events[0]
        step(rt, clock, 300)  # ok is charged, sw (held) is not
        for bus in rt.buses.values():
            bus.stop()
        assert charger.wait_idle(10)
        used_ok = reg(truth(sim, "ok")) - reg(7_000)
        pre = final - reg(5_000_000)  # the old meter's final reading, charged by the work order
        assert pre >= 300 and truth(sim, "sw") >= 1_300
        assert charger.balance("A") == FUND - half_up(pre, PRICE) - half_up(used_ok, PRICE)
        found = record(tmp_path / "gw.db")
        assert found is not None and found.status == "held"


# --- the technician's command line ---------------------------------------------------------


def test_cli_records_the_meter_number(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, cfg = tmp_path / "gw.db", tmp_path / "gw.yaml"
    cfg.write_text(lifecycle_config())
    Bench(path).close()
    common = ["--config", str(cfg), "--store", str(path), "--at", START.isoformat(), "--json"]
    replace = ["meter", "replace", *common, "m1", "m1", "--final-kwh", "0", "--initial-kwh", "1"]
    assert main([*replace, "--meter-number", "99000000001", "--reason", "swap"]) == 2
    assert "12 digits" in capsys.readouterr().err
    assert main([*replace, "--meter-number", NUMBER, "--reason", "work order 31"]) == 0
    assert json.loads(capsys.readouterr().out)["new"] == "m1"
    add = ["meter", "add", *common, "m2", "--initial-kwh", "2"]
    assert main([*add, "--meter-number", "990000000002", "--reason", "new"]) == 0
    assert json.loads(capsys.readouterr().out)["meter_number"] == "990000000002"
    bench = Bench(path)
    try:
        records = {r.meter: r for r in bench.run(meter_records)}
    finally:
        bench.close()
    assert records["m1"].meter_number == NUMBER and records["m1"].status == "active"
    assert records["m2"].meter_number == "990000000002"
