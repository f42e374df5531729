"""``gateway status`` (human output) shows the relays as readable lines: per account its
balance, prepaid state, tripped / protected, its meters' relay positions; the storm
guard; alarms.  A runtime with charging and relays polls the simulator; its status is
served on a real Unix socket and asked by ``gateway status`` as a process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from polling import M
from relaybench import charged_bench

from gateway.protocols.quantities import EventCode
from gateway.status import StatusServer

LEVELS = "billing: {thresholds: {alarm1: 0, alarm2: 0, overdraft_limit: 10}}\n"
EXTRA = LEVELS + "relays: {confirm_delay_s: 0.1, confirm_attempts: 2, storm: {min_accounts: 10}}\n"


def dl(n: int) -> M:
    return M(f"d{n}", "dl", "dlt645", n, energy_wh=1_000_000, watts=3_600, turnaround_ms=5)


def test_status_prints_the_relays_per_account(tmp_path: Path) -> None:
    accounts = ["A", "B", "{id: P, type: prepaid, tariff: flat, protect: true}", "N"]
    ms = [(dl(1), "A"), (dl(2), "B"), (dl(3), "P"), (dl(4), "N")]
    with charged_bench(tmp_path, [("dl", "dlt645", 38400)], ms, accounts, EXTRA) as b:
        b.top_up("N", 1_000_000, "n1")
        b.sim.control("d2", "set_protect", {"on": True})  # d2 refuses the trip: an alarm
        b.step(60)  # 60 Wh at 0.85 yuan/kWh each: A, B, P at -0.0510 yuan, due to trip
        b.wait_event(EventCode.RELAY_TRIPPED, "d1")
        b.wait_event(EventCode.RELAY_UNCONFIRMED, "d2")
        sock = tmp_path / "status.sock"
        server = StatusServer(sock, b.runtime.status)
        server.start()
        try:
            out = subprocess.run(
                [sys.executable, "-m", "gateway", "status", "--socket", str(sock)],
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            server.stop()
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert not any(line.startswith("relays: {") for line in lines)  # no JSON dump
    assert any(
        line.startswith("relays: 4 meters with a relay, close mode allow;") for line in lines
    )
    assert "  account A: balance -0.0510 yuan, due to trip, TRIPPED; relays d1 open" in lines
    assert "  account B: balance -0.0510 yuan, due to trip, not tripped; relays d2 closed" in lines
    assert (
        "  account P: balance -0.0510 yuan, due to trip, not tripped, protected; relays d3 closed"
        in lines
    )
    assert "  account N: balance 99.9490 yuan, normal, not tripped; relays d4 closed" in lines
    assert "  storm guard: 3 of 4 accounts due recently, tripping on" in lines
    alarms = [line for line in lines if line.startswith("  ALARM unconfirmed at ")]
    assert len(alarms) == 1
    assert "meter d2, account B, action trip, position closed, cause negative:01" in alarms[0]
