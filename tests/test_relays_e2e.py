"""Relays wired as ``gateway run`` wires them (Runtime with charging): the simulator's
meters are polled, their energy charged, and the charger's state changes trip and close
their relays.  Events are read from the store."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from polling import M, wait_for
from relaybench import charged_bench

from gateway.clock import ManualClock
from gateway.prepaid import PrepaidState
from gateway.protocols.quantities import EventCode

DL = [("dl", "dlt645", 38400)]
# accounts open at balance 0: an overdraft limit of 10 keeps them from being due at once
LEVELS = "billing: {thresholds: {alarm1: 0, alarm2: 0, overdraft_limit: 10}}\n"
FAST = LEVELS + "relays: {confirm_delay_s: 0.1}\n"
TRIP_REQUEST_BYTES = 32  # 4 FE + 68 A0..A5 68 1C 10 + 16 data bytes + CS 16


def dl(n: int) -> M:
    return M(f"d{n}", "dl", "dlt645", n, energy_wh=1_000_000, watts=3_600, turnaround_ms=5)


def test_run_out_trips_before_the_next_poll_and_a_top_up_closes(tmp_path: Path) -> None:
    ms = [(dl(1), "A"), (dl(2), "B"), (dl(3), None)]
    with charged_bench(tmp_path, DL, ms, ["A", "B"], FAST) as b:
        b.top_up("A", 1_000, "t1")
        b.top_up("B", 100_000, "t2")
        b.step(60)  # 60 Wh at 0.85 yuan/kWh: 510; A at 490
        assert b.charger.balance("A") == 490 and b.relay_closed("d1")
        b.step(60)  # A at -20: beyond the overdraft limit (10), due to trip
        event = b.wait_event(EventCode.RELAY_TRIPPED, "d1")
        assert event.detail["balance"] == -20 and event.detail["account"] == "A"
        assert b.charger.state("A") == PrepaidState.DUE_TO_TRIP
        assert not b.relay_closed("d1") and b.relay_closed("d2")
        # the trip went out right after the poll that took the balance below zero: the
        # request before it on the wire is that poll's last, no other poll in between
        log = [e for e in b.sim.bus("dl").log if e.direction == "request"]
        i = next(i for i, e in enumerate(log) if e.nbytes == TRIP_REQUEST_BYTES)
        assert log[i].address == dl(1).address
        assert [e.address for e in log[i - 7 : i]] == [dl(1).address] * 7  # a whole poll
        # tripped: the meter measures nothing while the calendar moves on
        energy = {m: b.energy(m) for m in ("d1", "d2")}
        b.step(600)
        assert b.energy("d1") == energy["d1"] and b.energy("d2") == energy["d2"] + 600
        balance = b.charger.balance("A")
        b.step(600)
        assert b.charger.balance("A") == balance  # nothing to charge
        # a top-up: close-allow; the tenant presses the button
        b.top_up("A", 100_000, "t3")
        wait_for(lambda: b.sim.truth("d1")["meters"]["d1"]["close_allowed"], 10, "close-allow")
        assert not b.relay_closed("d1")
        assert b.sim.control("d1", "button", {})["closed"] is True
        closed = b.wait_event(EventCode.RELAY_CLOSED, "d1")
        assert closed.detail["balance"] == balance + 100_000 and closed.detail["mode"] == "allow"
        wait_for(lambda: b.charger.state("A") != PrepaidState.MAY_CLOSE, 10, "charger told")
        assert b.charger.state("A") not in (PrepaidState.DUE_TO_TRIP, PrepaidState.MAY_CLOSE)
        before = b.energy("d1")
        b.step(60)
        assert b.energy("d1") == before + 60
        status = b.runtime.status()["relays"]
        assert isinstance(status, dict) and status["alarms"] == [] and status["trips"] == 1


def test_protect_charges_without_tripping_and_the_night_waits_for_morning(
    tmp_path: Path,
) -> None:
    clock = ManualClock(datetime(2024, 6, 1, 13, 58, tzinfo=UTC))  # 21:58 in Shanghai
    extra = LEVELS + "relays: {confirm_delay_s: 0.1, quiet_hours: {from: '22:00', to: '07:00'}}\n"
    accounts = ["{id: P, type: prepaid, tariff: flat, protect: true}", "N"]
    ms = [(dl(1), "P"), (dl(2), "N")]
    with charged_bench(tmp_path, DL, ms, accounts, extra, clock=clock) as b:
        assert b.relays.protected("P") and not b.relays.protected("N")
        b.top_up("N", 1_000, "t1")
        b.step(60)  # 21:59: P below zero (protected); N at 490
        assert b.charger.state("P") == PrepaidState.DUE_TO_TRIP
        b.step(120)  # 22:01: N below zero, at night
        delayed = b.wait_event(EventCode.TRIP_DELAYED, "d2")
        assert delayed.detail["until"] == "2024-06-02T07:00:00+08:00"
        b.step(3600)  # 23:01: both still charged, neither tripped
        assert b.relay_closed("d1") and b.relay_closed("d2")
        assert b.charger.balance("N") == 1_000 - 8_500 * (60 + 120 + 3600) // 1000
        assert b.charger.balance("P") == -8_500 * (60 + 120 + 3600) // 1000
        assert b.events(EventCode.RELAY_TRIPPED) == []
        clock.set(datetime(2024, 6, 1, 23, 0, 30, tzinfo=UTC))  # 07:00:30
        event = b.wait_event(EventCode.RELAY_TRIPPED, "d2")
        assert event.detail["reason"] == "quiet-ended" and not b.relay_closed("d2")
        time.sleep(0.5)
        assert b.relay_closed("d1")  # protected, still
        b.relays.set_protect("P", False)
        event = b.wait_event(EventCode.RELAY_TRIPPED, "d1")
        assert event.detail["reason"] == "protect-lifted" and not b.relay_closed("d1")


def test_the_storm_guard_stops_a_mass_trip_caused_by_a_wrong_tariff(tmp_path: Path) -> None:
    # five tenants on a tariff over a hundred times too expensive: all run out at once
    wrong = (
        "  - {id: wrong, version: 1, effective: '2024-01-01T00:00:00+08:00', kind: flat,"
        " price: 1000000}\n"
    )
    accounts = [f"{{id: T{i}, type: prepaid, tariff: wrong}}" for i in range(1, 6)]
    storm = "storm: {share_pct: 30, window_s: 300, min_accounts: 3}"
    extra = LEVELS + f"relays: {{confirm_delay_s: 0.1, {storm}}}\n"
    ms = [(dl(i), f"T{i}") for i in range(1, 6)]
    with charged_bench(tmp_path, DL, ms, accounts, extra, tariffs=wrong) as b:
        for i in range(1, 6):
            b.top_up(f"T{i}", 10_000, f"t{i}")
        b.step(60)  # 60 Wh x 100 yuan/kWh = 6 yuan each: every account below zero
        storm = b.wait_event(EventCode.TRIP_STORM)
        assert storm.detail["accounts"] == 3 and storm.detail["of"] == 5
        wait_for(lambda: len(b.events(EventCode.RELAY_TRIPPED)) == 2, 20, "two trips out")
        time.sleep(0.5)
        assert sum(not b.relay_closed(f"d{i}") for i in range(1, 6)) == 2
        assert all(b.charger.state(f"T{i}") == PrepaidState.DUE_TO_TRIP for i in range(1, 6))
        status = b.runtime.status()["relays"]
        assert isinstance(status, dict)
        assert status["storm"]["stopped"] is True  # type: ignore[index]
        assert [a["kind"] for a in status["alarms"]] == ["trip_storm"]  # type: ignore[union-attr]
        b.step(60)  # charging goes on; no more trips
        assert len(b.events(EventCode.RELAY_TRIPPED)) == 2


def test_a_refused_trip_is_retried_then_an_alarm(tmp_path: Path) -> None:
    extra = LEVELS + "relays: {confirm_delay_s: 0.1, confirm_attempts: 2}\n"
    with charged_bench(tmp_path, DL, [(dl(1), "A")], ["A"], extra) as b:
        b.sim.control("d1", "set_protect", {"on": True})  # the meter's own protect mode
        b.step(60)
        event = b.wait_event(EventCode.RELAY_UNCONFIRMED, "d1")
        assert event.detail["sends"] == 2 and event.detail["cause"] == "negative:01"
        assert event.detail["balance"] == -510 and event.detail["position"] == "closed"
        assert b.relay_closed("d1")
        status = b.runtime.status()["relays"]
        assert isinstance(status, dict)
        assert [(a["kind"], a["meter"]) for a in status["alarms"]] == [("unconfirmed", "d1")]  # type: ignore[union-attr]
