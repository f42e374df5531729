"""``gateway run`` killed with SIGKILL at 20 random moments while it polls and publishes,
and ``gateway master run`` at 5 of them: after the restarts every journaled reading is
in the master's store exactly once, and both databases pass ``PRAGMA integrity_check``."""

from __future__ import annotations

import dataclasses
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from subprocess import DEVNULL

from polling import gateway_yaml, meters, sim_yaml, wait_for
from test_master_cli import start_master
from test_uplink_e2e import integrity, journal, stored

from gateway.config import Uplink as UplinkConfig
from gateway.config import parse_config
from gateway.mosquitto import Mosquitto
from gateway.poller import PollSettings
from gateway.runtime import Runtime
from gateway.sim.config import parse_sim_config
from gateway.sim.service import Simulator
from gateway.uplink import UplinkSettings

BUSES = [("dl", "dlt645", 38400), ("mb", "modbus", 38400)]
METERS = meters("dl", "dlt645", 2, turnaround_ms=5) + meters("mb", "modbus", 2)
KILLS = 20
MASTER_KILLS = 5


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    broker: Mosquitto, tmp_path: Path
) -> None:
    seed = time.time_ns()
    rng = random.Random(seed)
    store, master_db = tmp_path / "gw.db", tmp_path / "master.db"
    master_log = tmp_path / "master.log"
    sim_config = parse_sim_config(sim_yaml(BUSES, METERS), "s.yaml", link_dir=str(tmp_path))
    master = start_master(broker, master_db, master_log)
    master_kills = set(rng.sample(range(KILLS), MASTER_KILLS))
    try:
        with Simulator(sim_config) as sim:
            text = gateway_yaml(sim, BUSES, METERS, store=str(store)).replace(
                "uplink: {host: localhost}", f"uplink: {{host: {broker.host}, port: {broker.port}}}"
            )
            gw_yaml = tmp_path / "gw.yaml"
            gw_yaml.write_text(text)
            command = [sys.executable, "-m", "gateway", "run", "--config", str(gw_yaml)]
            command += ["--socket", str(tmp_path / "s.sock"), "--interval", "0"]
            for n in range(KILLS):
                run = subprocess.Popen(command, stdout=DEVNULL, stderr=DEVNULL)
                life = rng.uniform(0.8, 3.0)  # start-up takes about 0.7 s
                if n in master_kills:  # the master dies at a random moment of this run
                    at = rng.uniform(0.3, life)
                    time.sleep(at)
                    master.send_signal(signal.SIGKILL)
                    assert master.wait(10) == -signal.SIGKILL, f"seed {seed}"
                    master = start_master(broker, master_db, master_log)
                    time.sleep(life - at)
                else:
                    time.sleep(life)
                run.send_signal(signal.SIGKILL)
                run.wait(10)
            assert journal(store)  # it polled and journaled
            assert sum(stored(master_db).values()) > 0  # and published between the kills
            # the master was killed while it stored: some kills came after it was subscribed
            assert master_log.read_text().count("subscribed") >= 2, f"seed {seed}"
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
            master.send_signal(signal.SIGTERM)
            assert master.wait(10) == 0
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()
    got = stored(master_db)
    print(
        f"seed {seed}: {KILLS} gateway and {MASTER_KILLS} master SIGKILLs;"
        f" {sum(got.values())} readings at the master, each once"
    )
    assert got == journal(store) and max(got.values()) == 1
    assert integrity(store) == "ok" and integrity(master_db) == "ok"
