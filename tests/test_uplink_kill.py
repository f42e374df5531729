"""``gateway run`` killed with SIGKILL at 20 random moments while it polls and publishes:
after the restarts every journaled reading is in the master's store exactly once, and
both databases pass ``PRAGMA integrity_check``."""

from __future__ import annotations

import dataclasses
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from polling import gateway_yaml, meters, sim_yaml, wait_for
from test_uplink_e2e import integrity, journal, stored

from gateway.config import Uplink as UplinkConfig
from gateway.config import parse_config
from gateway.master.ingest import Master
from gateway.mosquitto import Mosquitto
from gateway.poller import PollSettings
from gateway.runtime import Runtime
from gateway.sim.config import parse_sim_config
from gateway.sim.service import Simulator
from gateway.uplink import UplinkSettings

BUSES = [("dl", "dlt645", 38400), ("mb", "modbus", 38400)]
METERS = meters("dl", "dlt645", 2, turnaround_ms=5) + meters("mb", "modbus", 2)
KILLS = 20


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    broker: Mosquitto, tmp_path: Path
) -> None:
    rng = random.Random(20)
    store, master_db = tmp_path / "gw.db", tmp_path / "master.db"
    sim_config = parse_sim_config(sim_yaml(BUSES, METERS), "s.yaml", link_dir=str(tmp_path))
    with Simulator(sim_config) as sim, Master(master_db, broker.host, broker.port):
        text = gateway_yaml(sim, BUSES, METERS, store=str(store)).replace(
            "uplink: {host: localhost}", f"uplink: {{host: {broker.host}, port: {broker.port}}}"
        )
        (tmp_path / "gw.yaml").write_text(text)
        command = [sys.executable, "-m", "gateway", "run", "--config", str(tmp_path / "gw.yaml")]
        command += ["--socket", str(tmp_path / "s.sock"), "--interval", "0"]
        for _ in range(KILLS):
            run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.8, 3.0))  # start-up takes about 0.7 s
            run.send_signal(signal.SIGKILL)
            run.wait(10)
        assert journal(store)  # it polled and journaled
        assert sum(stored(master_db).values()) > 0  # and published between the kills
        # a last run (in this process) stops polling and lets the uplink finish
        config = parse_config(text, "gw.yaml")
        uplink = UplinkConfig(host=broker.host, port=broker.port, client_id="gateway-test-gw")
        rt = Runtime(
            dataclasses.replace(config, uplink=uplink),
            store_path=store,
            settings=PollSettings(interval=0),
            status_socket=None,
            uplink=UplinkSettings(),
        )
        with rt:
            assert rt.store is not None and rt.store.report.unclean_stop
            for bus in rt.buses.values():
                bus.stop()
            assert rt.store.flush(10)
            expected = journal(store)
            wait_for(lambda: stored(master_db) == expected, 60, "the master has the journal")
    got = stored(master_db)
    assert got == journal(store) and max(got.values()) == 1
    assert integrity(store) == "ok" and integrity(master_db) == "ok"
