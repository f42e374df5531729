"""``gateway run`` killed with SIGKILL around trips (the moment a relay opens, and at
random moments while accounts run out), with a top-up written while it is down: after
the last restart the relays in the simulator match the ledger's state."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from polling import M, sim_yaml, wait_for
from relaybench import gateway_text

from gateway.clock import SystemClock
from gateway.protocols.quantities import EventCode
from gateway.sim.config import parse_sim_config
from gateway.sim.service import Simulator
from gateway.store import Store
from gateway.store.journal import JournalReader
from gateway.store.ledger import EntryKind, Ledger, LedgerReader, TopUp

BUSES = [("dl", "dlt645", 38400)]
# 36 kW: 10 Wh/s, 85 (0.0001 yuan) a second at 0.85 yuan/kWh
METERS = [
    M(f"d{i}", "dl", "dlt645", i, energy_wh=1_000_000, watts=36_000, turnaround_ms=5)
    for i in (1, 2)
]
OVERDRAFT = {"A": 300, "B": 1_200}  # A runs out about 4 s after the first poll, B 14 s
ACCOUNTS = [
    f"{{id: {a}, type: prepaid, tariff: flat, thresholds: {{overdraft_limit: {o}}}}}"
    for a, o in OVERDRAFT.items()
]
EXTRA = (
    "billing: {thresholds: {alarm1: 0, alarm2: 0}}\n"
    "relays: {close_mode: direct, confirm_delay_s: 0.2}\n"
    "polling: {interval_s: 1}\n"
)


def balances(store: Path) -> dict[str, int]:
    with LedgerReader(store) as reader:
        return {a.id: a.balance for a in reader.accounts() if a.id in OVERDRAFT}


def tripped_in_ledger(store: Path) -> dict[str, bool]:
    return {a: b + OVERDRAFT[a] <= 0 for a, b in balances(store).items()}


def open_in_sim(sim: Simulator) -> dict[str, bool]:
    truth = sim.truth()["meters"]
    return {"A": not truth["d1"]["relay_closed"], "B": not truth["d2"]["relay_closed"]}


def test_sigkill_around_trips_leaves_relays_matching_the_ledger(tmp_path: Path) -> None:
    rng = random.Random(7)
    store = tmp_path / "gw.db"
    sim_config = parse_sim_config(sim_yaml(BUSES, METERS), "s.yaml", link_dir=str(tmp_path))
    with Simulator(sim_config) as sim:
        ms = [(METERS[0], "A"), (METERS[1], "B")]
        text = gateway_text(sim, BUSES, ms, ACCOUNTS, EXTRA, str(store))
        (tmp_path / "gw.yaml").write_text(text)
        command = [sys.executable, "-m", "gateway", "run", "--config", str(tmp_path / "gw.yaml")]
        command += ["--socket", str(tmp_path / "s.sock"), "--interval", "0", "--no-uplink"]

        def start() -> subprocess.Popen[bytes]:
            return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        # 1. killed the moment A's relay opens (the trip frame has just been answered)
        run = start()
        try:
            wait_for(lambda: open_in_sim(sim)["A"], 30, "A tripped")
        finally:
            run.send_signal(signal.SIGKILL)
            run.wait(10)
        # 2. killed at random moments while B runs out and relays are read back
        for _ in range(6):
            run = start()
            time.sleep(rng.uniform(0.8, 3.5))  # start-up takes about 0.7 s
            run.send_signal(signal.SIGKILL)
            run.wait(10)
        # 3. a top-up for A while the gateway is down
        opened = Store.open(store, gateway_id="test-gw")
        try:
            ts_ms = int(SystemClock().now().timestamp() * 1000)
            topped = Ledger(opened).top_up(TopUp("k1", "A", EntryKind.TOP_UP, 1_000_000, ts_ms))
            assert topped.result(10).applied
        finally:
            opened.close()
        # 4. the last run: the relays come to match the ledger and stay so
        run = start()
        try:

            def agree() -> bool:
                return open_in_sim(sim) == tripped_in_ledger(store)

            wait_for(lambda: agree() and open_in_sim(sim)["B"], 60, "relays match the ledger")
            time.sleep(2.0)
            assert agree()
        finally:
            run.send_signal(signal.SIGTERM)
            assert run.wait(20) == 0
        final = balances(store)
        assert open_in_sim(sim) == {"A": False, "B": True}
        assert final["A"] > 0 and final["B"] + OVERDRAFT["B"] <= 0
    with JournalReader(store) as reader:
        events = [e for _, e in reader.events(limit=100_000)]
    # every trip and close is on record, however the kills fell
    assert {e.meter for e in events if e.code == EventCode.RELAY_TRIPPED} == {"d1", "d2"}
    assert {e.meter for e in events if e.code == EventCode.RELAY_CLOSED} == {"d1"}
