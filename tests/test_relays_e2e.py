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
BOTH = [("dl", "dlt645", 38400), ("mb", "modbus", 38400)]
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
        # the operator tops up the held accounts but one, and resumes tripping
        held = [i for i in range(1, 6) if b.relay_closed(f"d{i}")]
        for i in held[:-1]:
            b.top_up(f"T{i}", 10_000_000, f"fix{i}")
        b.relays.resume()
        event = b.wait_event(EventCode.RELAY_TRIPPED, f"d{held[-1]}")
        assert event.detail["reason"] == "resume"
        time.sleep(0.5)
        assert sum(not b.relay_closed(f"d{i}") for i in range(1, 6)) == 3
        assert b.runtime.status()["relays"]["alarms"] == []  # type: ignore[index]


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
        # later rounds (after 1 s, 2 s ...) while still due; the meter's protect is lifted
        b.sim.control("d1", "set_protect", {"on": False})
        event = b.wait_event(EventCode.RELAY_TRIPPED, "d1")
        assert event.detail["reason"] == "retry" and not b.relay_closed("d1")
        assert len(b.events(EventCode.RELAY_UNCONFIRMED)) == 1  # one alarm event, not per round
        assert b.runtime.status()["relays"]["alarms"] == []  # type: ignore[index]


def test_modbus_relay_and_direct_close(tmp_path: Path) -> None:
    # account A: a DL/T 645 meter and an ADW300 (Modbus relay register); close direct
    adw = M("a1", "mb", "modbus", 1, energy_wh=1_000_000, watts=3_600, profile="adw300")
    ms = [(dl(1), "A"), (adw, "A")]
    extra = LEVELS + "relays: {confirm_delay_s: 0.1, close_mode: direct}\n"
    with charged_bench(tmp_path, BOTH, ms, ["A"], extra) as b:
        b.top_up("A", 1_500, "t1")
        b.step(60)  # two meters: 120 Wh, 1020; A at 480
        b.step(60)
        for meter in ("d1", "a1"):  # d1's reading took A to -30, beyond the overdraft
            event = b.wait_event(EventCode.RELAY_TRIPPED, meter)
            assert event.detail["balance"] == -30
        assert b.charger.balance("A") == -540  # a1's energy before the trip: charged too
        assert not b.relay_closed("d1") and not b.relay_closed("a1")
        energy = {m: b.energy(m) for m in ("d1", "a1")}
        b.step(600)
        assert {m: b.energy(m) for m in ("d1", "a1")} == energy
        b.top_up("A", 100_000, "t2")
        for meter in ("d1", "a1"):
            event = b.wait_event(EventCode.RELAY_CLOSED, meter)
            assert event.detail["mode"] == "direct" and event.detail["balance"] == 99_460
        assert b.relay_closed("d1") and b.relay_closed("a1")
        wait_for(lambda: b.charger.state("A") == PrepaidState.NORMAL, 10, "charger told")
        b.step(60)
        assert {m: b.energy(m) for m in ("d1", "a1")} == {m: e + 60 for m, e in energy.items()}


def test_a_top_up_at_night_cancels_the_delayed_trip(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2024, 6, 1, 15, 30, tzinfo=UTC))  # 23:30 in Shanghai
    extra = LEVELS + "relays: {confirm_delay_s: 0.1, quiet_hours: {from: '22:00', to: '07:00'}}\n"
    with charged_bench(tmp_path, DL, [(dl(1), "A")], ["A"], extra, clock=clock) as b:
        b.step(60)
        b.wait_event(EventCode.TRIP_DELAYED, "d1")
        assert b.relays.status()["delayed"] == {"A": "2024-06-02T07:00:00+08:00"}
        b.top_up("A", 1_000_000, "t1")  # 100 yuan: enough for the night (8 h x 3.6 kW)
        wait_for(lambda: b.charger.state("A") == PrepaidState.NORMAL, 10, "back to normal")
        assert b.relays.status()["delayed"] == {}
        clock.set(datetime(2024, 6, 1, 23, 30, tzinfo=UTC))  # 07:30
        b.polled_after(int(clock.now().timestamp() * 1000))
        time.sleep(0.5)
        assert b.relay_closed("d1") and b.events(EventCode.RELAY_TRIPPED) == []


def test_protect_set_by_command_is_remembered(tmp_path: Path) -> None:
    with charged_bench(tmp_path, DL, [(dl(1), "A")], ["A"], FAST) as b:
        b.relays.set_protect("A", True)
    with charged_bench(tmp_path, DL, [(dl(1), "A")], ["A"], FAST) as b:  # a restart
        assert b.relays.protected("A")
        b.step(60)  # A below zero: charged, not tripped
        assert b.charger.state("A") == PrepaidState.DUE_TO_TRIP
        time.sleep(0.5)
        assert b.relay_closed("d1") and b.relays.status()["blocked"] == {"A": "protect"}


def test_relay_test_trips_and_closes(tmp_path: Path) -> None:
    ms = [(dl(1), "A"), (dl(2), "B")]
    with charged_bench(tmp_path, DL, ms, ["A", "B"], FAST) as b:
        b.top_up("A", 100_000, "t1")
        result = b.relays.test("d1").result(30)
        assert result["ok"] is True and result["tripped"] and result["closed"]
        assert b.relay_closed("d1")
        counters = b.sim.truth("d1")["meters"]["d1"]["counters"]
        assert counters["control-trip"] == 1 and counters["control-close"] == 1
        assert b.relays.test("nope").result(1) == {
            "meter": "nope",
            "ok": False,
            "error": "no such meter with a relay",
        }
        b.step(60)  # B below zero: due, tripped; a relay test must not close it
        b.wait_event(EventCode.RELAY_TRIPPED, "d2")
        assert b.relays.test("d2").result(1)["error"] == "account is tripped or due"
        b.relays.set_protect("A", True)
        assert b.relays.test("d1").result(1)["error"] == "account in protect mode"
        assert not b.relay_closed("d2") and b.relay_closed("d1")


def test_a_meter_whose_clock_is_a_day_ahead_is_tripped_by_its_own_clock(
    tmp_path: Path,
) -> None:
    with charged_bench(tmp_path, DL, [(dl(1), "A")], ["A"], FAST) as b:
        b.sim.control("d1", "drift", {"offset_s": 86_400})
        b.step(60)  # A due; the first trip's deadline is yesterday by the meter's clock
        event = b.wait_event(EventCode.RELAY_TRIPPED, "d1")
        assert event.detail["sends"] == 2 and not b.relay_closed("d1")
        counters = b.sim.truth("d1")["meters"]["d1"]["counters"]
        assert counters["control-refused-expired"] == 1 and counters["control-trip"] == 1
        assert b.events(EventCode.RELAY_UNCONFIRMED) == []


def test_no_trips_on_listed_holidays(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2025, 10, 2, 4, 0, tzinfo=UTC))  # 12:00, a holiday
    extra = (
        "billing: {holidays: [2025-10-01, 2025-10-02, 2025-10-03],"
        " thresholds: {alarm1: 0, alarm2: 0, overdraft_limit: 10}}\n"
        "relays: {confirm_delay_s: 0.1, quiet_on_holidays: true}\n"
    )
    with charged_bench(tmp_path, DL, [(dl(1), "A")], ["A"], extra, clock=clock) as b:
        b.step(60)
        delayed = b.wait_event(EventCode.TRIP_DELAYED, "d1")
        assert delayed.detail["until"] == "2025-10-04T00:00:00+08:00"
        clock.set(datetime(2025, 10, 3, 15, 59, tzinfo=UTC))  # 23:59 on the last holiday
        time.sleep(0.5)
        assert b.relay_closed("d1")
        clock.set(datetime(2025, 10, 3, 16, 0, 1, tzinfo=UTC))  # the first working day
        event = b.wait_event(EventCode.RELAY_TRIPPED, "d1")
        assert event.detail["reason"] == "quiet-ended" and not b.relay_closed("d1")
