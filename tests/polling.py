"""Shared helpers of the polling tests: benches of simulated meters and the gateway
configuration that reads them, a journal that keeps what it is given, and measures
taken only from the simulator's bus log."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.clock import Clock, ManualClock
from gateway.config import GatewayConfig, parse_config
from gateway.drivers.bus import Bus
from gateway.drivers.registry import make_driver
from gateway.poller import Poller, PollSettings
from gateway.protocols.batch import MeterEvent
from gateway.protocols.quantities import Quantity, Reading
from gateway.sim.config import parse_sim_config
from gateway.sim.model import BusLogEntry
from gateway.sim.service import Simulator

START = datetime(2024, 6, 1, 4, 0, tzinfo=UTC)  # 12:00 in Shanghai, far from midnight


@dataclass(frozen=True)
class M:
    """One meter of a bench: on ``bus``; ``n`` makes its address/unit id."""

    id: str
    bus: str
    protocol: str
    n: int
    ct: int = 1
    energy_wh: int = 0
    watts: int = 0
    turnaround_ms: int = 10
    profile: str = "sdm120"

    @property
    def address(self) -> str:
        return f"{self.n:012d}"


def meters(bus: str, protocol: str, count: int, **kw: object) -> list[M]:
    return [
        M(
            f"{bus}{i}",
            bus,
            protocol,
            i,
            ct=60 if i == 1 else 1,
            energy_wh=123_450 * i,
            watts=100 * i,
            **kw,  # type: ignore[arg-type]
        )
        for i in range(1, count + 1)
    ]


def sim_yaml(buses: Sequence[tuple[str, str, int]], ms: Iterable[M]) -> str:
    lines = ["buses:"]
    for name, protocol, baud in buses:
        lines.append(
            f"  - {{name: {name}, link: {name}, protocol: {protocol}, baud: {baud}, parity: E}}"
        )
    lines.append("meters:")
    for m in ms:
        where = (
            f"unit_id: {m.n}, profile: {m.profile}"
            if m.protocol == "modbus"
            else f"address: '{m.address}'"
        )
        lines.append(
            f"  - {{id: {m.id}, bus: {m.bus}, {where}, turnaround_ms: {m.turnaround_ms},"
            f" energy_import_wh: {m.energy_wh}, load: {{kind: constant, watts: {m.watts}}}}}"
        )
    return "\n".join(lines) + "\n"


def gateway_yaml(
    sim: Simulator, buses: Sequence[tuple[str, str, int]], ms: Iterable[M], store: str = "gw.db"
) -> str:
    lines = ["gateway_id: test-gw", "serial_buses:", *bus_lines(sim, buses)]
    lines += ["meters:", *meter_lines((m, None) for m in ms)]
    lines += ["uplink: {host: localhost}", f"store: {{path: '{store}'}}"]
    return "\n".join(lines) + "\n"


def bus_lines(sim: Simulator, buses: Iterable[tuple[str, str, int]]) -> list[str]:
    """The gateway configuration's ``serial_buses:`` entries: (name, protocol, baud) on
    the simulator's ports, 8E1."""
    return [
        f"  - {{name: {name}, port: '{sim.bus(name).path}', protocol: {protocol},"
        f" baud: {baud}, parity: E}}"
        for name, protocol, baud in buses
    ]


def meter_lines(ms: Iterable[tuple[M, str | None]]) -> list[str]:
    """The gateway configuration's ``meters:`` entries: each meter with its CT ratio and
    its account (None: none)."""
    out = []
    for m, account in ms:
        where = (
            f"unit_id: {m.n}, profile: {m.profile}"
            if m.protocol == "modbus"
            else f"address: '{m.address}'"
        )
        acc = f", account: {account}" if account else ""
        out.append(f"  - {{id: {m.id}, bus: {m.bus}, {where}, ct_ratio: {m.ct}{acc}}}")
    return out


class ListJournal:
    """Keeps every record it is given (thread-safe enough for appends)."""

    def __init__(self) -> None:
        self.records: list[Reading | MeterEvent] = []
        self.lock = threading.Lock()

    def submit(self, record: Reading | MeterEvent) -> None:
        with self.lock:
            self.records.append(record)

    def readings(self, meter: str | None = None) -> list[Reading]:
        with self.lock:
            return [r for r in self.records if isinstance(r, Reading) and meter in (None, r.meter)]

    def events(self, code: int | None = None) -> list[MeterEvent]:
        with self.lock:
            return [r for r in self.records if isinstance(r, MeterEvent) and code in (None, r.code)]


@dataclass
class Bench:
    sim: Simulator
    clock: ManualClock
    config: GatewayConfig
    journal: ListJournal
    buses: dict[str, Bus]
    pollers: dict[str, Poller]


@contextmanager
def bench(
    tmp: str,
    buses: Sequence[tuple[str, str, int]],
    ms: Sequence[M],
    settings: PollSettings,
    clock: Clock | None = None,
) -> Iterator[Bench]:
    """A simulator and a gateway's bus threads polling it (no store: a ListJournal)."""
    manual = clock or ManualClock(START)
    assert isinstance(manual, ManualClock)
    sim_config = parse_sim_config(sim_yaml(buses, ms), "sim.yaml", link_dir=tmp)
    with Simulator(sim_config, manual) as sim:
        config = parse_config(gateway_yaml(sim, buses, ms), "gw.yaml")
        journal = ListJournal()
        running: dict[str, Bus] = {}
        pollers: dict[str, Poller] = {}
        try:
            for bus_config in config.serial_buses:
                drivers = {
                    m.id: make_driver(m, bus_config) for m in config.meters_on(bus_config.name)
                }
                poller = Poller(bus_config.name, drivers, journal, manual, settings)
                pollers[bus_config.name] = poller
                running[bus_config.name] = Bus(
                    bus_config, drivers, clock=manual, scheduler=poller, reopen_max=0.2
                ).start()
            yield Bench(sim, manual, config, journal, running, pollers)
        finally:
            for bus in running.values():
                bus.stop()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def every_meter_read(b: Bench, after: int = 0) -> Callable[[], bool]:
    ids = {m.id for m in b.config.meters}

    def done() -> bool:
        return ids <= {r.meter for r in b.journal.readings() if r.ts_ms >= after}

    return done


def requests(
    log: Iterable[BusLogEntry], start: float = 0.0, end: float = float("inf")
) -> list[BusLogEntry]:
    return [e for e in log if e.direction == "request" and start <= e.start < end]


def collisions(log: Iterable[BusLogEntry]) -> int:
    return sum(1 for e in log if e.result == "collision")


def expected_values(truth: dict[str, object], m: M) -> dict[Quantity, int]:
    """What a correct gateway reads from the meter's truth, CT applied (PT is 1)."""
    from gateway.protocols.modbus import ratio_factor

    if m.protocol == "modbus":
        registers = truth["registers"]
        assert isinstance(registers, dict)
        raw = {Quantity[name]: int(v) for name, v in registers.items()}
    else:

        def reg(wh: object) -> int:
            assert isinstance(wh, int)
            return wh // 10 * 10  # XXXXXX.XX kWh

        tariffs = truth["tariff_wh"]
        assert isinstance(tariffs, list)
        raw = {
            Quantity.ENERGY_IMPORT: reg(truth["energy_import_wh"]),
            Quantity.ENERGY_EXPORT: reg(truth["energy_export_wh"]),
            Quantity.ENERGY_T1: reg(tariffs[0]),
            Quantity.ENERGY_T2: reg(tariffs[1]),
            Quantity.ENERGY_T3: reg(tariffs[2]),
            Quantity.ENERGY_T4: reg(tariffs[3]),
            Quantity.VOLTAGE_A: int(truth["voltage_dv"]),  # type: ignore[call-overload]
            Quantity.CURRENT_A: int(truth["current_ma"]),  # type: ignore[call-overload]
            Quantity.POWER: int(truth["power_w"]),  # type: ignore[call-overload]
            Quantity.POWER_FACTOR: int(truth["power_factor_milli"]),  # type: ignore[call-overload]
            Quantity.FREQUENCY: int(truth["frequency_chz"]),  # type: ignore[call-overload]
        }
    return {q: int(v * ratio_factor(q, m.ct, 1)) for q, v in raw.items()}
