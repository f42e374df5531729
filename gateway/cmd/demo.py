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
4. runs the money engine on the example's accounts: the master's key pair is made in
   the work directory and the gateway trusts its public key; prepaid accounts start
   at 0, so the tea house A101 (two relay meters) is tripped at once; the master then
   sends signed top-ups (``gateway master command`` does the same): the other prepaid
   accounts get 100 yuan, A101 only 0.0300 yuan, so once the relays close (the demo
   presses the meters' close button, as the tenant would after a close-allow) its
   balance runs out within seconds and it is tripped again, within one bus
   transaction; the view shows balances, prepaid states and relay positions (quiet
   hours are off in the demo, so this happens at any time of day);
5. at the end (``--seconds``, or Ctrl-C) stops polling, waits until the master has
   acknowledged the journal, and checks that every journaled reading is in the
   master's store exactly once and unchanged, and that every account's balance
   re-adds from its ledger.
"""

from __future__ import annotations

import argparse
import dataclasses
import secrets
import socket
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.billing.money import yuan
from gateway.commands.keys import load_private_key, write_key_pair
from gateway.config import Commands, GatewayConfig, Uplink, example_config_path, load_config
from gateway.errors import UplinkError
from gateway.master.command import build_command, send_command
from gateway.master.ingest import Master
from gateway.master.store import MasterStore
from gateway.mosquitto import Mosquitto
from gateway.poller import PollSettings
from gateway.prepaid import PrepaidState
from gateway.protocols.command import CommandKind
from gateway.protocols.quantities import Reading
from gateway.runtime import Runtime
from gateway.sim.config import LoadConfig, SimConfig, example_sim_config_path, load_sim_config
from gateway.sim.service import Simulator
from gateway.store import JournalReader
from gateway.store.db import connect
from gateway.store.ledger import check_balances
from gateway.uplink import UplinkSettings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seconds",
        type=float,
        default=60.0,
        help="how long the gateway polls (default 60; 0 = until Ctrl-C)",
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
        sim_config = _busy_tea_house(
            load_sim_config(example_sim_config_path(), link_dir=str(work / "links"))
        )
        sim = stack.enter_context(Simulator(sim_config, state_path=work / "sim-state.json"))
        config = _on_simulator(load_config(example_config_path()), sim, work, host, port)
        keys = write_key_pair(work / "master-keys", overwrite=True)
        config = dataclasses.replace(
            config,
            commands=Commands(public_key=keys.public_key),
            relays=dataclasses.replace(config.relays, quiet_hours=None),
        )
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
            charging=True,
        )
        runtime.clock.trust("demo: host clock")
        with runtime:
            _say(f"gateway {config.gateway_id}: polling; store {runtime.store_path}")
            money = _Money(runtime, sim, load_private_key(keys.private_path), host, port)
            money.fund()
            _watch(runtime, master, args.seconds, money)
            settled = _settle(runtime, master, master_db)
            return settled or money.check()


def _busy_tea_house(sim_config: SimConfig) -> SimConfig:
    """The demo's tea house runs its ovens: A101-shop draws 30 kW, so that A101's small
    balance runs out within the demo (a register step of 10 Wh every 1.2 s)."""
    meters = tuple(
        dataclasses.replace(m, load=LoadConfig("constant", {"watts": 30_000}))
        if m.id == "A101-shop"
        else m
        for m in sim_config.meters
    )
    return dataclasses.replace(sim_config, meters=meters)


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


class _Money:
    """The demo's master at the cash desk: signed top-ups, and the tenant's close button."""

    SMALL = 300
    """A101's top-up: 0.0300 yuan, gone within seconds at the tea house's load."""
    FULL = 1_000_000
    """Every other prepaid account's top-up: 100 yuan."""

    def __init__(
        self, runtime: Runtime, sim: Simulator, key: Ed25519PrivateKey, host: str, port: int
    ) -> None:
        self.runtime, self.sim, self.key = runtime, sim, key
        self.host, self.port = host, port
        charger = runtime.charger
        assert charger is not None
        self.charger = charger
        self.prepaid = [a.id for a in runtime.config.accounts if a.type == "prepaid"]
        self.pressed: set[str] = set()
        self.repaid = False

    def fund(self) -> None:
        for account in self.prepaid:
            self.top_up(account, self.SMALL if account == "A101" else self.FULL)

    def top_up(self, account: str, amount: int) -> None:
        config = self.runtime.config
        cmd = build_command(
            config.gateway_id,
            CommandKind.TOP_UP,
            {"account": account, "amount": amount, "top_up_id": f"demo-{secrets.token_hex(6)}"},
            self.key,
        )
        reply = send_command(self.host, self.port, config.uplink.prefix, cmd, timeout=30)
        if reply is None:
            _say(f"master: top-up {account} {yuan(amount)} yuan: no reply in 30 s")
            return
        verdict = reply.status.name.lower() + (f" ({reply.text})" if reply.text else "")
        _say(f"master: signed top-up {account} +{yuan(amount)} yuan -> {verdict}")

    def tend(self) -> None:
        """Once A101 is tripped after its small top-up, the tenant pays 100 yuan at the
        master; close-allowed meters: the tenant presses the button (once per meter)."""
        relays = self.runtime.relays
        if relays is None:
            return
        positions = relays.status().get("positions", {})
        tripped = (
            all(positions.get(m) == "open" for m in self.charger.meters_of("A101"))
            and self.charger.state("A101") == PrepaidState.DUE_TO_TRIP
        )
        if tripped and not self.repaid:
            self.repaid = True
            _say("  A101 ran out of money and is tripped: its tenant pays at the master")
            self.top_up("A101", self.FULL)
        for account in self.charger.accounts_in(PrepaidState.MAY_CLOSE):
            for meter in self.charger.meters_of(account):
                if meter in self.pressed:
                    continue
                result = self.sim.control(meter, "button", {})
                if result.get("closed"):
                    self.pressed.add(meter)
                    _say(f"  tenant of {account} pressed the close button on {meter}")

    def lines(self) -> list[str]:
        status = self.runtime.status()
        relays = status.get("relays")
        positions = relays.get("positions", {}) if isinstance(relays, dict) else {}
        out = []
        for account in self.prepaid:
            meters = self.charger.meters_of(account)
            where = ", ".join(f"{m} {positions.get(m, '-')}" for m in meters)
            out.append(
                f"  {account:<8} {yuan(self.charger.balance(account)):>10} yuan"
                f"  {self.charger.state(account)!s:<12} relays: {where or 'none'}"
            )
        if isinstance(relays, dict):
            out.append(
                f"  relays   {relays.get('trips', 0)} trips, {relays.get('closes', 0)} closes,"
                f" {len(relays.get('alarms', []))} alarms"
            )
        return out

    def check(self) -> int:
        """0 if every balance re-adds from the ledger."""
        db = connect(self.runtime.store_path, readonly=True)
        try:
            mismatches = check_balances(db)
        finally:
            db.conn.close()
        if mismatches:
            _say(f"ledger: {len(mismatches)} balances do NOT re-add: {mismatches}")
            return 1
        _say("ledger: every balance re-adds from its entries")
        return 0


def _watch(runtime: Runtime, master: Master, seconds: float, money: _Money) -> None:
    deadline = time.monotonic() + seconds if seconds > 0 else float("inf")
    try:
        while time.monotonic() < deadline:
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
            money.tend()
            _view(runtime, master)
            for line in money.lines():
                _say(line)
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
