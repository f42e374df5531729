"""Restart reconciliation of the relay controller, against the simulator: each state a
restart can find, set up exactly.  The charger's side is a stand-in driven by the test
(the states a kill leaves cannot be set up through the real charger on demand;
``test_relays_kill.py`` kills a real ``gateway run`` for that, and ``test_relays_e2e.py``
runs everything else through the real charger)."""

from __future__ import annotations

from pathlib import Path

from polling import M, wait_for
from relaybench import relay_bench

from gateway.prepaid import PrepaidState
from gateway.protocols.quantities import EventCode

DL = [("dl", "dlt645", 38400)]
FAST = "relays: {confirm_delay_s: 0.1, confirm_attempts: 3, close_mode: allow}\n"
DUE, MAY_CLOSE = PrepaidState.DUE_TO_TRIP, PrepaidState.MAY_CLOSE


def dl(n: int) -> M:
    return M(f"d{n}", "dl", "dlt645", n, energy_wh=1_000_000, watts=3_600, turnaround_ms=5)


def test_restart_reconciles_the_meters_with_the_ledger(tmp_path: Path) -> None:
    extra = FAST.replace("allow", "direct") + "polling: {interval_s: 1}\n"  # recheck: 5 s
    names = "ABCDE"
    ms = [(dl(i), a) for i, a in enumerate(names, 1)]
    with relay_bench(tmp_path, DL, ms, list(names), extra) as b:
        # what a restart may find: A due, relay closed; B due, already open (not remembered:
        # its record was lost); C may close, still open; D in credit but open (its tripping
        # reading lost in a kill, or opened by hand); E open, not above the close-allow level
        b.relays.stop()
        for meter in ("d2", "d3", "d4", "d5"):
            b.sim.meter(meter).physics.open_relay(b.clock.now())  # type: ignore[attr-defined]
        b.charger.states.update({"A": DUE, "B": DUE, "C": MAY_CLOSE})
        b.charger.balances.update({"A": -5, "B": -9, "C": 20_000, "D": 50_000, "E": -3})
        b.relays.start()
        b.wait_event(EventCode.RELAY_TRIPPED, "d1")
        b.wait_event(EventCode.RELAY_CLOSED, "d3")
        wait_for(lambda: b.charger.closed == ["C"], 10, "charger told C closed")
        assert not b.relay_closed("d4")  # not at once: the polls may charge it first
        event = b.wait_event(EventCode.RELAY_CLOSED, "d4")  # after the recheck
        assert event.detail["reason"] == "restart" and event.detail["balance"] == 50_000
        closed = {m: b.relay_closed(m) for m in ("d1", "d2", "d3", "d4", "d5")}
        assert closed == {"d1": False, "d2": False, "d3": True, "d4": True, "d5": False}
        # B's trip was not remembered (its record lost in the kill): recorded now, not resent
        (found,) = b.codes(EventCode.RELAY_TRIPPED, "d2")
        assert found.detail == {"account": "B", "balance": -9, "reason": "restart", "sends": 0}
        assert "control-trip" not in b.sim.truth("d2")["meters"]["d2"]["counters"]
        assert b.codes(EventCode.RELAY_CLOSED, "d5") == []
