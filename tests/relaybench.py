"""Shared helpers of the relay tests: a simulator, a gateway runtime polling it and a
:class:`~gateway.relays.RelayController` wired to the runtime's buses and store."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from polling import ListJournal, M, bus_lines, meter_lines, sim_yaml, wait_for

from gateway.charging import Charger
from gateway.clock import ManualClock
from gateway.config import GatewayConfig, parse_config
from gateway.poller import PollSettings
from gateway.prepaid import PrepaidState, StateChange, Thresholds
from gateway.protocols.batch import MeterEvent
from gateway.relays import RelayController
from gateway.runtime import Runtime
from gateway.sim.config import parse_sim_config
from gateway.sim.service import Simulator
from gateway.store.journal import JournalReader
from gateway.store.ledger import EntryKind, TopUp

PRICE = 8500  # 0.85 yuan/kWh


def gateway_text(
    sim: Simulator,
    buses: Sequence[tuple[str, str, int]],
    ms: Sequence[tuple[M, str | None]],
    accounts: Sequence[str],
    extra: str = "",
    store: str = "gw.db",
    tariffs: str = "",
) -> str:
    """``accounts``: ids (prepaid, flat tariff) or whole YAML flow mappings."""
    lines = ["gateway_id: test-gw", "serial_buses:", *bus_lines(sim, buses)]
    lines += ["meters:", *meter_lines(ms)]
    lines.append("accounts:")
    lines += [
        f"  - {a}" if a.startswith("{") else f"  - {{id: {a}, type: prepaid, tariff: flat}}"
        for a in accounts
    ]
    lines += [
        "tariffs:",
        f"  - {{id: flat, version: 1, effective: '2024-01-01T00:00:00+08:00', kind: flat,"
        f" price: {PRICE}}}",
        *tariffs.splitlines(),
        "uplink: {host: localhost}",
        f"store: {{path: '{store}'}}",
    ]
    return "\n".join(lines) + "\n" + extra


def gateway_config(
    sim: Simulator,
    buses: Sequence[tuple[str, str, int]],
    ms: Sequence[tuple[M, str | None]],
    accounts: Sequence[str],
    extra: str = "",
    store: str = "gw.db",
    tariffs: str = "",
) -> GatewayConfig:
    """The configuration of :func:`gateway_text`, parsed."""
    return parse_config(gateway_text(sim, buses, ms, accounts, extra, store, tariffs), "gw.yaml")


class StandInCharger:
    """The charger's listener side as :mod:`gateway.relays` uses it, driven by the test:
    :meth:`change` sets an account's state and calls the listener, as the charger does."""

    def __init__(self, config: GatewayConfig) -> None:
        self.meters = {
            a.id: tuple(m.id for m in config.meters if m.account == a.id) for a in config.accounts
        }
        self.trips = {a.id for a in config.accounts if a.type == "prepaid" and a.trip_on_arrears}
        self.states: dict[str, PrepaidState] = {}
        self.balances: dict[str, int] = {}
        self.closed: list[str] = []
        self.listener: RelayController | None = None
        self.levels = {"": Thresholds.from_config(config.billing.thresholds)}
        for a in config.accounts:
            if a.thresholds is not None:
                self.levels[a.id] = Thresholds.from_config(a.thresholds)
        self.lock = threading.Lock()

    def change(self, account: str, new: PrepaidState, balance: int, ts_ms: int = 0) -> None:
        with self.lock:
            old = self.states.get(account, PrepaidState.NORMAL)
            self.states[account] = new
            self.balances[account] = balance
        assert self.listener is not None
        self.listener.on_state(StateChange(account, ts_ms, old, new, balance), self.meters[account])

    def balance(self, account: str) -> int:
        return self.balances.get(account, 0)

    def trips_on_arrears(self, account: str) -> bool:
        return account in self.trips

    def account_of(self, meter: str) -> str | None:
        return next((a for a, ms in self.meters.items() if meter in ms), None)

    def state(self, account: str) -> PrepaidState:
        return self.states.get(account, PrepaidState.NORMAL)

    def accounts_in(self, state: PrepaidState) -> list[str]:
        return sorted(a for a, s in self.states.items() if s == state)

    def meters_of(self, account: str) -> tuple[str, ...]:
        return self.meters.get(account, ())

    def thresholds(self, account: str) -> Thresholds:
        return self.levels.get(account, self.levels[""])

    def relay_closed(self, account: str) -> None:
        with self.lock:
            self.closed.append(account)
            if self.states.get(account) == PrepaidState.MAY_CLOSE:
                self.states[account] = PrepaidState.NORMAL


@dataclass
class SimTruth:
    """A bench's simulator and its clock; what the simulated meters really did."""

    sim: Simulator
    clock: ManualClock

    def relay_closed(self, meter: str) -> bool:
        closed = self.sim.truth(meter)["meters"][meter]["relay_closed"]
        assert isinstance(closed, bool)
        return closed

    def energy(self, meter: str) -> int:
        wh = self.sim.truth(meter)["meters"][meter]["energy_import_wh"]
        assert isinstance(wh, int)
        return wh


@dataclass
class RelayBench(SimTruth):
    config: GatewayConfig
    runtime: Runtime
    relays: RelayController
    charger: StandInCharger
    events: ListJournal

    def codes(self, code: int, meter: str | None = None) -> list[MeterEvent]:
        return [e for e in self.events.events(code) if meter in (None, e.meter)]

    def wait_event(self, code: int, meter: str | None = None, count: int = 1) -> MeterEvent:
        wait_for(lambda: len(self.codes(code, meter)) >= count, 20, f"event {code} {meter}")
        return self.codes(code, meter)[count - 1]


@contextmanager
def relay_bench(
    tmp: Path,
    buses: Sequence[tuple[str, str, int]],
    ms: Sequence[tuple[M, str | None]],
    accounts: Sequence[str],
    extra: str = "",
    clock: ManualClock | None = None,
    interval: float = 0.0,
) -> Iterator[RelayBench]:
    """Simulator + runtime polling it (no charging) + relay controller on a stand-in
    charger; relay events go to a list."""
    from polling import START

    manual = clock or ManualClock(START)
    sim_config = parse_sim_config(sim_yaml(buses, [m for m, _ in ms]), "s.yaml", link_dir=str(tmp))
    with Simulator(sim_config, manual) as sim:
        config = gateway_config(sim, buses, ms, accounts, extra, store=str(tmp / "gw.db"))
        runtime = Runtime(
            config,
            store_path=tmp / "gw.db",
            clock=manual,
            settings=PollSettings(interval=interval, max_power_w=10**9),
            status_socket=None,
            reopen_max=0.2,
        )
        with runtime:
            assert runtime.writer is not None
            charger = StandInCharger(config)
            events = ListJournal()
            relays = RelayController(
                config,
                runtime.bus_for,
                events,
                manual,
                charger,
                runtime.writer,  # type: ignore[arg-type]
            )
            charger.listener = relays
            relays.start()
            try:
                yield RelayBench(sim, manual, config, runtime, relays, charger, events)
            finally:
                relays.stop()


@dataclass
class ChargedBench(SimTruth):
    """A simulator and a gateway runtime with charging and relays wired (as ``gateway run``)."""

    config: GatewayConfig
    runtime: Runtime
    store: Path

    @property
    def relays(self) -> RelayController:
        assert self.runtime.relays is not None
        return self.runtime.relays

    @property
    def charger(self) -> Charger:
        assert self.runtime.charger is not None
        return self.runtime.charger

    def events(self, code: int, meter: str | None = None) -> list[MeterEvent]:
        with JournalReader(self.store) as reader:
            found = [e for _, e in reader.events(limit=100_000)]
        return [e for e in found if e.code == code and meter in (None, e.meter)]

    def wait_event(self, code: int, meter: str | None = None, count: int = 1) -> MeterEvent:
        wait_for(lambda: len(self.events(code, meter)) >= count, 20, f"event {code} {meter}")
        return self.events(code, meter)[count - 1]

    def polled_after(self, ts_ms: int) -> None:
        """Wait until every meter's energy was read at or after ``ts_ms`` (calendar)."""
        pollers = self.runtime.pollers.values()

        def done() -> bool:
            return all((s.energy_ts_ms or -1) >= ts_ms for p in pollers for s in p.meters.values())

        wait_for(done, 20, "every meter polled")
        assert self.runtime.charger is not None
        self.runtime.charger.wait_idle(10)

    def step(self, seconds: float) -> None:
        """Move the calendar on and wait until every meter was read at the new time."""
        self.clock.advance(seconds)
        self.polled_after(int(self.clock.now().timestamp() * 1000))

    def top_up(self, account: str, amount: int, ref: str) -> None:
        ts_ms = int(self.clock.now().timestamp() * 1000)
        result = self.charger.top_up(TopUp(ref, account, EntryKind.TOP_UP, amount, ts_ms))
        assert result.result(10).applied


@contextmanager
def charged_bench(
    tmp: Path,
    buses: Sequence[tuple[str, str, int]],
    ms: Sequence[tuple[M, str | None]],
    accounts: Sequence[str],
    extra: str = "",
    clock: ManualClock | None = None,
    tariffs: str = "",
) -> Iterator[ChargedBench]:
    """Simulator + runtime with charging and relays, polling as fast as the lines allow."""
    from polling import START

    manual = clock or ManualClock(START)
    sim_config = parse_sim_config(sim_yaml(buses, [m for m, _ in ms]), "s.yaml", link_dir=str(tmp))
    store = tmp / "gw.db"
    with Simulator(sim_config, manual) as sim:
        config = gateway_config(sim, buses, ms, accounts, extra, str(store), tariffs)
        runtime = Runtime(
            config,
            store_path=store,
            clock=manual,
            settings=PollSettings(interval=0, max_power_w=10**9),
            status_socket=None,
            reopen_max=0.2,
            charging=True,
        )
        with runtime:
            bench = ChargedBench(sim, manual, config, runtime, store)
            bench.polled_after(int(manual.now().timestamp() * 1000))  # the baselines
            yield bench
