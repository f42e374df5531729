"""``gateway demo``: the whole system at work on the embedded defaults.

1. starts the demo's simulated bench (``gateway/sim/examples/demo-sim.yaml``: a
   DL/T 645 line at 2400 8E1 with the tea house and the supermarket, and a full
   Modbus line at 9600 8N1: 32 meters in the two transformer areas T1 and T2, both
   gate meters included) on pseudo-terminals, and a private Mosquitto (in its own
   session) unless ``--broker`` names one;
2. starts the master station's ingest (:class:`gateway.master.ingest.Master`, its
   store in the work directory) and the gateway of the demo's configuration
   (``gateway/examples/demo-gateway.yaml``, the example mall's with the same
   meters: bus threads polling at the line's limit, collection tasks, the SQLite
   journal, the uplink publishing CBOR batches at QoS 1);
3. shows a live view every two seconds: per bus transactions, efficiency against the
   line's limit, readings, readings/s over the last view interval (and in total) and
   flagged meters; the uplink's broker state and outbox depth; the readings stored
   at the master;
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
   re-adds from its ledger; then stops the gateway, the master, the simulator and
   the broker, in that order.

Ctrl-C, in any phase, only asks the demo to stop (its own handler; Mosquitto runs in
its own session so the terminal's SIGINT does not reach it): the phase under way
ends, polling stops and the check above runs.  A second Ctrl-C skips the wait for
the master (and the check) and stops everything at once (exit status 130).
"""

from __future__ import annotations

import argparse
import dataclasses
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from importlib import resources
from pathlib import Path
from types import FrameType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.billing.money import yuan
from gateway.commands.keys import load_private_key, write_key_pair
from gateway.config import Commands, GatewayConfig, Uplink, load_config
from gateway.drivers import profiles
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
from gateway.sim.config import LoadConfig, SimConfig, load_sim_config
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


def demo_config_path() -> Path:
    """The demo's gateway configuration (the example mall with a full Modbus line)."""
    return Path(str(resources.files("gateway") / "examples" / "demo-gateway.yaml"))


def demo_sim_config_path() -> Path:
    """The demo's simulated bench (the same meters at the same addresses)."""
    return Path(str(resources.files("gateway.sim") / "examples" / "demo-sim.yaml"))


class _Stop:
    """The demo's Ctrl-C: the first asks every phase to end (the demo then stops polling
    and checks the master's store), the second aborts the wait for the master (at that
    wait, after polling has stopped, never in the middle of stopping a part), later
    ones are ignored while the demo stops its parts."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.abort = threading.Event()
        self.presses = 0
        self.announced = False

    def stopping(self) -> bool:
        """Whether Ctrl-C was pressed; the first time it is seen, says what happens."""
        if self.event.is_set() and not self.announced:
            self.announced = True
            _say(
                "  (Ctrl-C: stopping; the master's store is checked before the demo ends;"
                " Ctrl-C again aborts faster, without that check)"
            )
        return self.event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` or until Ctrl-C; True if stopping."""
        self.event.wait(max(0.0, seconds))
        return self.stopping()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # no output here: the main thread may be in the middle of a print
        self.presses += 1
        if self.presses == 1:
            self.event.set()
        elif self.presses == 2:
            self.abort.set()

    @contextmanager
    def installed(self) -> Iterator[_Stop]:
        previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def run(args: argparse.Namespace) -> int:
    stop = _Stop()
    with stop.installed():
        try:
            return _run(args, stop)
        except KeyboardInterrupt:
            _say("  (Ctrl-C again: aborted; the gateway, master, simulator and broker are stopped)")
            _say("aborted: the master's store was not checked")
            return 130


def _run(args: argparse.Namespace, stop: _Stop) -> int:
    with ExitStack() as stack:
        work = Path(args.workdir or stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        host, port = _broker(args.broker, stack)
        sim_config = _busy_tea_house(
            load_sim_config(demo_sim_config_path(), link_dir=str(work / "links"))
        )
        sim = stack.enter_context(Simulator(sim_config, state_path=work / "sim-state.json"))
        config = _on_simulator(load_config(demo_config_path()), sim, work, host, port)
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
        for line in _bench(config):
            _say(line)
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
            money.fund(stop)
            view = _View(runtime, master)
            _watch(view, args.seconds, money, stop)
            settled = _settle(runtime, view, master_db, stop)  # a second Ctrl-C raises here
            _say("stopping the gateway, the master, the simulator and the broker")
            return settled or money.check()


def _stop_polling(runtime: Runtime) -> None:
    for bus in runtime.buses.values():
        bus.stop()


def _bench(config: GatewayConfig) -> list[str]:
    """Per bus: its line, its meters and their transformer areas (gate meters named)."""
    out = []
    for bus in config.serial_buses:
        meters = [m for m in config.meters if m.bus == bus.name]
        areas = sorted({m.area for m in meters if m.area})
        gates = [m.id for m in meters if m.role == "gate"]
        out.append(
            f"  {bus.name:<8} {bus.protocol} {bus.baud} {bus.data_bits}{bus.parity}{bus.stop_bits}:"
            f" {len(meters)} meters in {len(areas)} area{'s' if len(areas) != 1 else ''}"
            f" ({', '.join(areas) or 'none'})"
            + (f", gate meters {', '.join(gates)}" if gates else "")
        )
    return out


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
        _say(
            f"started a private Mosquitto on {mosquitto.host}:{mosquitto.port}"
            f" (pid {mosquitto.pid}, its own session: stopped by the demo)"
        )
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

    def fund(self, stop: _Stop) -> None:
        # a command published before the gateway's first subscription to down/cmd is
        # not kept for it: wait (up to 15 s) until the broker acknowledged it
        uplink = self.runtime.uplink
        deadline = time.monotonic() + 15.0
        while uplink is not None and not uplink.commands_ready:
            if time.monotonic() > deadline or stop.wait(0.05):
                break
        for account in self.prepaid:
            if stop.stopping():
                _say("  (top-ups skipped: stopping)")
                return
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
        positions = relays.status().get("positions")
        if not isinstance(positions, dict):
            positions = {}
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
            with_relay = [m for m in meters if self._has_relay(m)]
            where = ", ".join(f"{m} {positions.get(m, '-')}" for m in with_relay)
            without = len(meters) - len(with_relay)
            if without:
                where = f"{where or 'none'} (+{without} without a relay)"
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

    def _has_relay(self, meter_id: str) -> bool:
        meter = self.runtime.config.meter(meter_id)
        # DL/T 645 meters (no profile) have the standard's relay; Modbus: the profile's
        return meter.profile is None or profiles.get(meter.profile).relay is not None

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


def _watch(view: _View, seconds: float, money: _Money, stop: _Stop) -> None:
    deadline = time.monotonic() + seconds if seconds > 0 else float("inf")
    while time.monotonic() < deadline:
        if stop.wait(min(2.0, deadline - time.monotonic())):
            return
        money.tend()
        view.show()
        for line in money.lines():
            _say(line)


class _View:
    """The live view: one screen, redrawn in place on a terminal, a block of lines
    otherwise (logs, tests).  Readings/s are over the last view interval."""

    def __init__(self, runtime: Runtime, master: Master) -> None:
        self.runtime, self.master = runtime, master
        self.started = time.monotonic()
        self.last: tuple[float, dict[str, int]] = (self.started, {})
        self.polled_until: float | None = None

    def polling_stopped(self) -> None:
        self.polled_until = time.monotonic()

    def show(self) -> None:
        """The screen; once polling stopped, readings/s are the run's average."""
        if sys.stdout.isatty():
            print("\033[H\033[J", end="")  # cursor home, clear the screen
            _say(f"gateway demo ({time.strftime('%H:%M:%S')}), Ctrl-C stops it")
        status = self.runtime.status()
        if self.polled_until is None:
            now = time.monotonic()
            then, before = self.last
            over = "over the last"
        else:
            now, then, before = self.polled_until, self.started, {}
            over = "on average over the"
        span = max(now - then, 1e-3)
        counts: dict[str, int] = {}
        tasks = status.get("tasks") or {}
        buses = status["buses"]
        assert isinstance(buses, list)
        for bus in buses:
            poll = bus["poll"]
            counts[bus["name"]] = poll["readings"]
            rate = (poll["readings"] - before.get(bus["name"], 0)) / span
            flagged = ", ".join(f"{f['meter']} ({f['cause']})" for f in poll["flagged"])
            _say(
                f"  {bus['name']:<8} {bus['line']:<10} {poll['meters']:>3} meters"
                f" {bus['transactions']:>6} transactions  efficiency {bus['efficiency']:.3f}"
                f"  {poll['readings']:>5} readings {rate:>6.1f}/s  flagged: {flagged or 'none'}"
            )
        total = sum(counts.values())
        rate = (total - sum(before.values())) / span
        _say(f"  total    {total} readings, {rate:.1f} readings/s {over} {span:.1f} s of polling")
        self.last = (now, counts)
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
        stats = self.master.stats
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


def _settle(
    runtime: Runtime, view: _View, master_db: Path, stop: _Stop, timeout: float = 60.0
) -> int:
    """Stop polling, wait until the master has the journal; 0 if it has it exactly once."""
    stopped_by_ctrl_c = stop.stopping()
    _stop_polling(runtime)
    view.polling_stopped()
    if runtime.store is not None:
        runtime.store.flush(10)
    readings = _journal(runtime.store_path)
    if not readings:
        _say("journal: no readings" + (" (stopped before any)" if stopped_by_ctrl_c else ""))
        return 0 if stopped_by_ctrl_c else 1
    _say(f"journal: {len(readings)} readings; waiting for the master to have them (Ctrl-C aborts)")
    want = Counter(_key(r) for r in readings)
    deadline = time.monotonic() + timeout
    got: Counter[tuple[object, ...]] = Counter()
    while time.monotonic() < deadline:
        with MasterStore.open(master_db, now_ms=lambda: 0, readonly=True) as central:
            got = Counter(_key(r) for r in central.readings(runtime.config.gateway_id))
        if got == want:
            break
        if stop.abort.wait(0.5):
            raise KeyboardInterrupt  # the second Ctrl-C: stop without the check
    view.show()
    ok = got == want
    _say(f"journal: {len(readings)} readings")
    _say(
        f"master: {sum(got.values())} readings stored, "
        + ("each once, all equal to the journal" if ok else "MISMATCH with the journal")
    )
    at_master = {str(key[0]) for key in got}
    for bus in runtime.config.serial_buses:
        meters = [m for m in runtime.config.meters if m.bus == bus.name]
        read = [m for m in meters if m.id in at_master]
        areas = sorted({m.area for m in read if m.area})
        _say(
            f"master: {bus.name} {len(read)} of {len(meters)} meters read"
            f" (areas {', '.join(areas) or 'none'})"
        )
    return 0 if ok else 1
