"""``gateway demo``: the whole system at work on the embedded defaults.

1. starts the simulated bench of the packaged example (``gateway/sim/examples/sim.yaml``:
   a DL/T 645 line at 2400 8E1 and a Modbus line at 9600 8N1, two transformer
   areas) on pseudo-terminals, and a private Mosquitto unless ``--broker`` names one;
2. starts the master station's ingest (:class:`gateway.master.ingest.Master`, its
   store in the work directory) and the gateway of the packaged example
   configuration (bus threads polling at the line's limit, collection tasks, the
   SQLite journal, the uplink publishing CBOR batches at QoS 1);
3. shows a live view every two seconds: per bus transactions, efficiency against the
   line's limit, readings and flagged meters; the uplink's broker state and outbox
   depth; the readings stored at the master;
4. at the end (``--seconds``, or Ctrl-C) stops polling, waits until the master has
   acknowledged the journal, and checks that every journaled reading is in the
   master's store exactly once and unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import socket
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from gateway.config import GatewayConfig, Uplink, example_config_path, load_config
from gateway.errors import UplinkError
from gateway.master.ingest import Master
from gateway.master.store import MasterStore
from gateway.mosquitto import Mosquitto
from gateway.poller import PollSettings
from gateway.protocols.quantities import Reading
from gateway.runtime import Runtime
from gateway.sim.config import example_sim_config_path, load_sim_config
from gateway.sim.service import Simulator
from gateway.store import JournalReader
from gateway.uplink import UplinkSettings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seconds",
        type=float,
        default=20.0,
        help="how long the gateway polls (default 20; 0 = until Ctrl-C)",
    )
    parser.add_argument(
        "--broker",
        metavar="HOST:PORT",
        help="use this MQTT broker instead of starting a private Mosquitto",
    )
    parser.add_argument("--workdir", help="keep the store and links here (default: a temp dir)")


def run(args: argparse.Namespace) -> int:
    with ExitStack() as stack:
        work = Path(args.workdir or stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        host, port = _broker(args.broker, stack)
        sim_config = load_sim_config(example_sim_config_path(), link_dir=str(work / "links"))
        sim = stack.enter_context(Simulator(sim_config, state_path=work / "sim-state.json"))
        config = _on_simulator(load_config(example_config_path()), sim, work, host, port)
        _say(
            f"simulator: {len(sim_config.buses)} buses, {len(sim_config.meters)} meters on "
            + ", ".join(f"{b.name} -> {sim.bus(b.name).path}" for b in sim_config.buses)
        )
        master_db = work / "master.db"
        master = Master(master_db, host, port, prefix=config.uplink.prefix)
        master.start()
        stack.callback(master.stop)
        _say(f"master: subscribed on {host}:{port}; store {master_db}")
        # interval 0: every bus polls continuously, at the line's limit
        runtime = Runtime(
            config,
            status_socket=work / "status.sock",
            settings=PollSettings(interval=0),
            calendar=True,
            uplink=UplinkSettings(),
        )
        runtime.clock.trust("demo: host clock")
        with runtime:
            _say(f"gateway {config.gateway_id}: polling; store {runtime.store_path}")
            _watch(runtime, master, args.seconds)
            return _settle(runtime, master, master_db)


def _say(line: str) -> None:
    print(line, flush=True)


def _broker(given: str | None, stack: ExitStack) -> tuple[str, int]:
    """The broker to use: ``HOST:PORT`` if given (it must answer), else a private one."""
    if not given:
        mosquitto = stack.enter_context(Mosquitto())
        _say(f"started a private Mosquitto on {mosquitto.host}:{mosquitto.port}")
        return mosquitto.host, mosquitto.port
    host, _, port_text = given.rpartition(":")
    try:
        port = int(port_text)
        socket.create_connection((host or "localhost", port), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise UplinkError(f"cannot connect to the broker at {given}: {exc}") from exc
    return host or "localhost", port


def _on_simulator(
    config: GatewayConfig, sim: Simulator, work: Path, host: str, port: int
) -> GatewayConfig:
    """The example configuration with its ports on the simulator's links and its uplink
    on the demo's broker."""
    buses = tuple(
        dataclasses.replace(bus, port=str(sim.bus(bus.name).path)) for bus in config.serial_buses
    )
    store = dataclasses.replace(config.store, path=str(work / "gateway.db"))
    uplink = Uplink(
        host=host, port=port, prefix=config.uplink.prefix, client_id=config.uplink.client_id
    )
    return dataclasses.replace(config, serial_buses=buses, store=store, uplink=uplink)


def _watch(runtime: Runtime, master: Master, seconds: float) -> None:
    deadline = time.monotonic() + seconds if seconds > 0 else float("inf")
    try:
        while time.monotonic() < deadline:
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
            _view(runtime, master)
    except KeyboardInterrupt:
        _say("  (stopping)")


def _view(runtime: Runtime, master: Master) -> None:
    """One screen: redrawn in place on a terminal, a block of lines otherwise (logs, tests)."""
    if sys.stdout.isatty():
        print("\033[H\033[J", end="")  # cursor home, clear the screen
        _say(f"gateway demo ({time.strftime('%H:%M:%S')}), Ctrl-C stops it")
    status = runtime.status()
    tasks = status.get("tasks") or {}
    buses = status["buses"]
    assert isinstance(buses, list)
    for bus in buses:
        poll = bus["poll"]
        flagged = ", ".join(f"{f['meter']} ({f['cause']})" for f in poll["flagged"])
        _say(
            f"  {bus['name']:<8} {bus['line']:<10} {bus['transactions']:>5} transactions"
            f"  efficiency {bus['efficiency']:.3f}  {poll['readings']:>4} readings"
            f"  flagged: {flagged or 'none'}"
        )
    if isinstance(tasks, dict):
        jobs, failed = tasks.get("jobs", 0), tasks.get("failed_jobs", 0)
        _say(
            f"  tasks    {jobs} freeze/back-fill reads ({failed} without a freeze),"
            f" {tasks.get('curve_points', 0)} curve points"
        )
    up = status.get("uplink")
    if isinstance(up, dict):
        _say(
            f"  uplink   broker {up['broker']} {'connected' if up['connected'] else 'DOWN'}"
            f"  outbox {up['outbox_batches']} batches + {up['unbatched_readings']} readings"
            f" waiting  acked seq {up['acked_seq']}  published {up['published']}"
        )
    stats = master.stats
    _say(
        f"  master   {stats.readings} readings stored in {stats.batches} batches"
        f" ({stats.duplicates} duplicates ignored)"
    )


def _journal(path: Path) -> list[Reading]:
    with JournalReader(path) as reader:
        out: list[Reading] = []
        after = 0
        while batch := reader.readings(after=after, limit=5000):
            out.extend(r for _, r in batch)
            after = batch[-1][0]
        return out


def _key(r: Reading) -> tuple[object, ...]:
    return (r.meter, r.ts_ms, r.flags, tuple(sorted((int(q), v) for q, v in r.values.items())))


def _settle(runtime: Runtime, master: Master, master_db: Path, timeout: float = 60.0) -> int:
    """Stop polling, wait until the master has the journal; 0 if it has it exactly once."""
    for bus in runtime.buses.values():
        bus.stop()
    if runtime.store is not None:
        runtime.store.flush(10)
    readings = _journal(runtime.store_path)
    if not readings:
        _say("journal: no readings")
        return 1
    want = Counter(_key(r) for r in readings)
    deadline = time.monotonic() + timeout
    got: Counter[tuple[object, ...]] = Counter()
    while time.monotonic() < deadline:
        with MasterStore.open(master_db, now_ms=lambda: 0, readonly=True) as central:
            got = Counter(_key(r) for r in central.readings(runtime.config.gateway_id))
        if got == want:
            break
        time.sleep(0.5)
    _view(runtime, master)
    ok = got == want
    _say(f"journal: {len(readings)} readings")
    _say(
        f"master: {sum(got.values())} readings stored, "
        + ("each once, all equal to the journal" if ok else "MISMATCH with the journal")
    )
    return 0 if ok else 1
