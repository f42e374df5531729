"""SIM.yaml: the simulated bench (buses, meters, transformer areas, clock), typed and checked.

::

    cfg = load_sim_config("sim.yaml")      # -> SimConfig (frozen)

Mistakes raise :class:`~gateway.errors.ConfigError` located at the offending key or
value (``file:line:column``), exactly like the gateway's configuration (both use
:mod:`gateway.yamlloc`).  The packaged example (:func:`example_sim_config_path`)
shows and explains every key.  Energy is integer Wh, power integer W.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, time
from importlib import resources
from pathlib import Path
from typing import Any, cast

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gateway.clock import DEFAULT_TIMEZONE
from gateway.config.sections import baud_rate, digits, meter_address, read_timezone
from gateway.drivers import profiles
from gateway.errors import ProfileError
from gateway.protocols.linetiming import LineSettings
from gateway.sim.physics import Load, make_load
from gateway.yamlloc import (
    Invalid,
    MapReader,
    Reader,
    boolean,
    choice,
    describe,
    hhmm,
    identifier,
    integer,
    number,
    optional,
    read_file,
    string,
)

__all__ = [
    "DEFAULT_LINK_DIR",
    "AreaConfig",
    "ClockConfig",
    "FaultConfig",
    "LoadConfig",
    "SimBusConfig",
    "SimConfig",
    "SimMeterConfig",
    "example_sim_config_path",
    "load_sim_config",
    "parse_sim_config",
]

DEFAULT_LINK_DIR = "/tmp/gateway-sim"
_LINE_DEFAULTS: dict[str, tuple[int, str]] = {"dlt645": (2400, "E"), "modbus": (9600, "N")}
_LOAD_KEYS = {
    "constant": ["watts"],
    "random": ["mean_watts", "seed", "spread_watts"],
    "daily": ["points", "tz"],
}
_DLT_ONLY = ("address", "protect", "password", "close_mode", "preamble")
_MODBUS_ONLY = ("unit_id", "profile")


@dataclass(frozen=True)
class ClockConfig:
    """The simulator's calendar clock (shared with a gateway under test)."""

    start: datetime | None = None  #: None: the real time now
    rate: float = 1.0  #: simulated seconds per real second
    timezone: str = DEFAULT_TIMEZONE  #: meters' local time (freezes, TOU slots)


@dataclass(frozen=True)
class SimBusConfig:
    """One simulated RS-485 line on a pty."""

    name: str  #: unique; meters name it in ``bus``
    link: str  #: absolute path of the stable symlink to the pty
    protocol: str  #: ``modbus`` or ``dlt645``
    baud: int = 9600  #: YAML default: 2400 for dlt645, 9600 for modbus
    data_bits: int = 8
    parity: str = "N"  #: YAML default: E for dlt645, N for modbus
    stop_bits: int = 1
    timing: bool = True  #: false: no collisions, replies at once (throughput bench)
    silent_gap_ms: float | None = None  #: None: Modbus t3.5 (1.75 ms above 19200 baud)
    silent_s: float | None = None
    """Seconds (real, monotonic time, not the simulated clock) from start during which no
    meter on the bus answers, as a dead line would; None: never.  The control interface
    (``clear`` of the bus) ends it early."""

    @property
    def line(self) -> LineSettings:
        return LineSettings(self.baud, self.data_bits, self.parity, self.stop_bits)


@dataclass(frozen=True)
class LoadConfig:
    """A load profile: ``kind`` and the parameters of :func:`~gateway.sim.physics.make_load`."""

    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> Load:
        return make_load(self.kind, **dict(self.params))


@dataclass(frozen=True)
class FaultConfig:
    """Faults a meter has from the start (cleared through the control interface)."""

    silent: bool = False
    late_ms: float = 0.0
    bad_checksum: bool = False
    garbage: bool = False
    wrong_address: bool = False


@dataclass(frozen=True)
class SimMeterConfig:
    """One simulated meter (dlt645: ``address``; modbus: ``unit_id`` and ``profile``)."""

    id: str
    bus: str
    protocol: str
    address: str | None = None
    unit_id: int | None = None
    profile: str | None = None
    turnaround_ms: float = 50.0  #: YAML default: the profile's (modbus), 50 (dlt645)
    load: LoadConfig | None = None  #: None: 0 W (a gate meter's load is its area's)
    energy_import_wh: int = 0
    energy_export_wh: int = 0
    meter_number: str = ""  #: YAML default: the address (dlt645), 12 digits of the unit
    phases: int = 1
    voltage_dv: int = 2200
    frequency_chz: int = 5000
    power_factor_milli: int = 980
    drift_ppm: int = 0
    clock_offset_s: float = 0.0
    tou_slots: tuple[tuple[time, int], ...] = ()
    settlement_day: int = 1
    relay_closed: bool = True
    protect: bool = False
    password: str = "000000"
    close_mode: str = "button"
    preamble: int = 0
    faults: FaultConfig = FaultConfig()


@dataclass(frozen=True)
class AreaConfig:
    """A transformer area: its gate meter measures its customers plus loss and theft."""

    id: str
    gate: str
    customers: tuple[str, ...]
    loss_permille: int = 0  #: technical loss, per mille of the customers' power
    theft_watts: int = 0  #: power drawn past every customer meter
    solar: Mapping[str, int] = field(default_factory=dict)
    """Customer meter id -> peak W of rooftop solar behind it (06:00-18:00, peak at noon)."""


@dataclass(frozen=True)
class SimConfig:
    """The whole bench."""

    buses: tuple[SimBusConfig, ...]
    meters: tuple[SimMeterConfig, ...]
    areas: tuple[AreaConfig, ...] = ()
    clock: ClockConfig = ClockConfig()
    link_dir: str = DEFAULT_LINK_DIR
    source: str = "<string>"

    def bus(self, name: str) -> SimBusConfig:
        return next(b for b in self.buses if b.name == name)


# -- API ------------------------------------------------------------------------------------


def example_sim_config_path() -> Path:
    """The packaged example bench (``gateway sim`` without ``--config``)."""
    return Path(str(resources.files("gateway.sim") / "examples" / "sim.yaml"))


def load_sim_config(path: str | os.PathLike[str], *, link_dir: str | None = None) -> SimConfig:
    """Read and check a SIM.yaml; ``link_dir`` overrides the file's."""
    text, name = read_file(path)
    return parse_sim_config(text, name, link_dir=link_dir)


def parse_sim_config(
    text: str, filename: str = "<string>", *, link_dir: str | None = None
) -> SimConfig:
    """Check SIM.yaml text; ``filename`` is only used in messages."""
    r = Reader(filename)
    root = r.compose(text)
    if root is None:
        r.check()
    top = MapReader(r, cast(Node, root), "the simulator configuration")
    if not top.ok:
        r.check()
    top.expect(["link_dir", "clock", "buses", "meters", "areas"])
    links = link_dir or top.get("link_dir", string, DEFAULT_LINK_DIR)
    clock = _clock(r, top.value_node("clock"))
    if top.value_node("buses") is None:
        top.missing("buses")
    buses = [_bus(r, n, links) for n in r.sequence(top.value_node("buses"), "buses")]
    protocols = {b.name: b.protocol for b, _ in buses if b is not None}
    meters = [_meter(r, n, protocols) for n in r.sequence(top.value_node("meters"), "meters")]
    areas = [_area(r, n) for n in r.sequence(top.value_node("areas"), "areas")]
    _check(r, buses, meters, areas)
    r.check()
    return SimConfig(
        buses=tuple(cast(SimBusConfig, b) for b, _ in buses),
        meters=tuple(cast(SimMeterConfig, m) for m, _ in meters),
        areas=tuple(cast(AreaConfig, a) for a, _ in areas),
        clock=cast(ClockConfig, clock),
        link_dir=links,
        source=filename,
    )


# -- converters -----------------------------------------------------------------------------


def _start(node: Node) -> datetime | None:
    if isinstance(node, ScalarNode) and node.value == "now":
        return None
    if not isinstance(node, ScalarNode) or node.tag not in (
        "tag:yaml.org,2002:str",
        "tag:yaml.org,2002:timestamp",
    ):
        raise Invalid(f"must be 'now' or an ISO-8601 time, not {describe(node)}")
    example = "like 2024-12-31T23:59:00+08:00"
    try:
        value = datetime.fromisoformat(node.value)
    except ValueError:
        raise Invalid(f"must be 'now' or an ISO-8601 time {example}, not {node.value!r}") from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise Invalid(f"needs a UTC offset, {example}")
    return value


def _ids(node: Node) -> tuple[str, ...]:
    if not isinstance(node, SequenceNode):
        raise Invalid(f"must be a list of meter ids, not {describe(node)}")
    out: list[str] = []
    for item in node.value:
        try:
            out.append(identifier(item))
        except Invalid as exc:
            raise Invalid(exc.message, item) from None
    return tuple(out)


def _plain(node: Node) -> Any:
    """A load parameter: an integer, a string, or a list of them (nested)."""
    if isinstance(node, SequenceNode):
        return [_plain(item) for item in node.value]
    if isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:int":
        return integer()(node)
    if isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:str":
        return node.value
    raise Invalid(f"must be an integer, a string or a list, not {describe(node)}", node)


# -- sections -------------------------------------------------------------------------------


def _clock(r: Reader, node: Node | None) -> ClockConfig | None:
    if node is None or node.tag == "tag:yaml.org,2002:null":
        return ClockConfig()
    m = MapReader(r, node, "clock")
    m.expect(["start", "rate", "timezone"])
    start = m.get("start", _start, None)
    rate = m.get("rate", number(0.001, 1_000_000.0), 1.0)
    tz = m.get("timezone", read_timezone, DEFAULT_TIMEZONE)
    return ClockConfig(start, rate, tz) if m.ok else None


Item = tuple[Any, MapReader]


def _bus(r: Reader, node: Node, link_dir: str) -> Item:
    m = MapReader(r, node, "bus")
    name = m.get("name", identifier)
    m.what = f"bus {name!r}" if name else m.what
    m.expect(
        [
            *("name", "link", "protocol", "baud", "data_bits", "parity", "stop_bits"),
            *("timing", "silent_gap_ms", "silent_s"),
        ]
    )
    link = m.get("link", string, name)
    protocol = m.get("protocol", choice("dlt645", "modbus"))
    baud_default, parity_default = _LINE_DEFAULTS.get(protocol, (9600, "N"))
    values: dict[str, Any] = {
        "baud": m.get("baud", baud_rate, baud_default),
        "data_bits": m.get("data_bits", integer(5, 8), 8),
        "parity": m.get("parity", choice("N", "E", "O"), parity_default),
        "stop_bits": m.get("stop_bits", integer(1, 2), 1),
        "timing": m.get("timing", boolean, True),
        "silent_gap_ms": m.get("silent_gap_ms", optional(number(0.0, 10_000.0)), None),
        "silent_s": m.get("silent_s", optional(number(0.0, 1e9)), None),
    }
    if not m.ok:
        return None, m
    path = os.path.join(os.path.expanduser(link_dir), os.path.expanduser(link))
    return SimBusConfig(name, os.path.abspath(path), protocol, **values), m


def _load(r: Reader, node: Node) -> LoadConfig | None:
    m = MapReader(r, node, "load")
    kind = m.get("kind", choice(*_LOAD_KEYS))
    m.expect(["kind", *_LOAD_KEYS.get(kind, [k for ks in _LOAD_KEYS.values() for k in ks])])
    if not m.ok:
        return None
    params = {key: m.get(key, _plain) for key in m.present() if key != "kind"}
    if not m.ok:
        return None
    config = LoadConfig(kind, params)
    try:
        config.build()
    except ValueError as exc:
        r.error(node, f"load: {exc}")
        return None
    return config


def _tou(r: Reader, node: Node) -> tuple[tuple[time, int], ...] | None:
    out: list[tuple[time, int]] = []
    ok = True
    for item in r.sequence(node, "tou_slots"):
        s = MapReader(r, item, "a slot")
        s.expect(["start", "tariff"])
        start, tariff = s.get("start", hhmm), s.get("tariff", integer(1, 4))
        if not s.ok:
            ok = False
            continue
        if out and start <= out[-1][0]:
            r.error(s.value_node("start"), f"start: slots must be in time order, {start:%H:%M}")
            ok = False
            continue
        out.append((start, tariff))
    return tuple(out) if ok else None


def _faults(r: Reader, node: Node) -> FaultConfig | None:
    m = MapReader(r, node, "faults")
    m.expect(["silent", "late_ms", "bad_checksum", "garbage", "wrong_address"])
    values: dict[str, Any] = {
        "silent": m.get("silent", boolean, False),
        "late_ms": m.get("late_ms", number(0.0, 600_000.0), 0.0),
        "bad_checksum": m.get("bad_checksum", boolean, False),
        "garbage": m.get("garbage", boolean, False),
        "wrong_address": m.get("wrong_address", boolean, False),
    }
    return FaultConfig(**values) if m.ok else None


_METER_KEYS = [
    "id", "bus", "address", "unit_id", "profile", "turnaround_ms", "load", "energy_import_wh",
    "energy_export_wh", "meter_number", "phases", "voltage_dv", "frequency_chz",
    "power_factor_milli", "drift_ppm", "clock_offset_s", "tou_slots", "settlement_day",
    "relay_closed", "protect", "password", "close_mode", "preamble", "faults",
]  # fmt: skip


def _meter(r: Reader, node: Node, protocols: Mapping[str, str]) -> Item:
    m = MapReader(r, node, "meter")
    meter_id = m.get("id", identifier)
    m.what = f"meter {meter_id!r}" if meter_id else m.what
    m.expect(_METER_KEYS)
    bus = m.get("bus", identifier)
    if bus is not None and bus not in protocols and m.ok:
        known = ", ".join(sorted(protocols)) or "none"
        m.blame("bus", f"bus: no bus named {bus!r} (buses: {known})")
    protocol = protocols.get(bus or "", "")
    wrong = _MODBUS_ONLY if protocol == "dlt645" else _DLT_ONLY if protocol == "modbus" else ()
    for key in wrong:
        if key in m.present():
            r.error(m.key_node(key), f"{key}: a {protocol} meter has no {key!r}")
    profile = None
    values: dict[str, Any] = {}
    if protocol == "modbus":
        values["unit_id"] = m.get("unit_id", integer(1, 247))
        name = m.get("profile", identifier)
        if name is not None:
            try:
                profile = profiles.get(name)
                values["profile"] = name
            except ProfileError as exc:
                m.blame("profile", f"profile: {exc}")
    elif protocol == "dlt645":
        values["address"] = m.get("address", meter_address)
        values["protect"] = m.get("protect", boolean, False)
        values["password"] = m.get("password", digits(6, "password"), "000000")
        values["close_mode"] = m.get("close_mode", choice("button", "auto"), "button")
        values["preamble"] = m.get("preamble", integer(0, 4), 0)
    default_turnaround = profile.turnaround_ms if profile is not None else 50
    three = profile is not None and any(
        reg.quantity.name.endswith("_C") for reg in profile.registers
    )
    load_node = m.value_node("load")
    tou_node = m.value_node("tou_slots")
    faults_node = m.value_node("faults")
    values.update(
        {
            "turnaround_ms": m.get("turnaround_ms", number(0.0, 10_000.0), default_turnaround),
            "load": None if load_node is None else _load(r, load_node),
            "energy_import_wh": m.get("energy_import_wh", integer(0, 999_999_999), 0),
            "energy_export_wh": m.get("energy_export_wh", integer(0, 999_999_999), 0),
            "meter_number": m.get("meter_number", digits(12, "meter number"), None),
            "phases": m.get("phases", integer(1, 3), 3 if three else 1),
            "voltage_dv": m.get("voltage_dv", integer(1, 100_000), 2200),
            "frequency_chz": m.get("frequency_chz", integer(1, 100_000), 5000),
            "power_factor_milli": m.get("power_factor_milli", integer(1, 1000), 980),
            "drift_ppm": m.get("drift_ppm", integer(-999_999, 1_000_000), 0),
            "clock_offset_s": m.get("clock_offset_s", number(-1e9, 1e9), 0.0),
            "tou_slots": () if tou_node is None else _tou(r, tou_node),
            "settlement_day": m.get("settlement_day", integer(1, 28), 1),
            "relay_closed": m.get("relay_closed", boolean, True),
            "faults": FaultConfig() if faults_node is None else _faults(r, faults_node),
        }
    )
    if values["phases"] == 2:
        m.blame("phases", "phases: a meter has 1 or 3 phases, not 2")
    if profile is not None and profile.relay is None and values["relay_closed"] is False:
        m.blame("relay_closed", f"relay_closed: profile {profile.name} has no relay to open")
    if not m.ok or not protocol or _any_none(values, load_node, tou_node, faults_node):
        return None, m
    if values["meter_number"] is None:
        values["meter_number"] = values.get("address") or f"{values.get('unit_id') or 0:012d}"
    return SimMeterConfig(meter_id, bus, protocol, **values), m


def _any_none(
    values: dict[str, Any], load: Node | None, tou: Node | None, faults: Node | None
) -> bool:
    return (
        (load is not None and values["load"] is None)
        or (tou is not None and values["tou_slots"] is None)
        or (faults is not None and values["faults"] is None)
    )


def _solar(node: Node) -> dict[str, int]:
    if not isinstance(node, MappingNode):
        raise Invalid(f"must map customer meter ids to peak watts, not {describe(node)}")
    out: dict[str, int] = {}
    for key, value in node.value:
        try:
            out[identifier(key)] = integer(1, 10_000_000)(value)
        except Invalid as exc:
            raise Invalid(exc.message, exc.node or value) from None
    return out


def _area(r: Reader, node: Node) -> Item:
    m = MapReader(r, node, "area")
    area_id = m.get("id", identifier)
    m.what = f"area {area_id!r}" if area_id else m.what
    m.expect(["id", "gate", "customers", "loss_permille", "theft_watts", "solar"])
    gate = m.get("gate", identifier)
    customers = m.get("customers", _ids)
    loss = m.get("loss_permille", integer(0, 1000), 0)
    theft = m.get("theft_watts", integer(0, 10_000_000), 0)
    solar = m.get("solar", _solar, {})
    if m.ok and customers is not None and not customers:
        m.blame("customers", "customers: an area needs at least one customer meter")
    if m.ok:
        for meter_id in solar:
            if meter_id not in customers:
                m.blame("solar", f"solar: {meter_id!r} is not one of this area's customers")
    if not m.ok:
        return None, m
    return AreaConfig(area_id, gate, customers, loss, theft, solar), m


def _check(r: Reader, buses: list[Item], meters: list[Item], areas: list[Item]) -> None:
    """Checks across sections: unique names, links and addresses; area references."""
    seen_bus: dict[str, MapReader] = {}
    seen_link: dict[str, str] = {}
    for bus, m in buses:
        if bus is None:
            continue
        if bus.name in seen_bus:
            m.blame("name", f"name: a bus {bus.name!r} is already defined")
        seen_bus[bus.name] = m
        if bus.link in seen_link:
            m.blame("link", f"link: {bus.link} is also bus {seen_link[bus.link]!r}'s")
        seen_link[bus.link] = bus.name
    by_id: dict[str, SimMeterConfig] = {}
    addresses: set[tuple[str, str]] = set()
    for meter, m in meters:
        if meter is None:
            continue
        if meter.id in by_id:
            m.blame("id", f"id: a meter {meter.id!r} is already defined")
        by_id[meter.id] = meter
        key = "address" if meter.protocol == "dlt645" else "unit_id"
        label = str(getattr(meter, key))
        if (meter.bus, label) in addresses:
            m.blame(key, f"{key}: another meter on bus {meter.bus!r} has {label}")
        addresses.add((meter.bus, label))
    in_area: dict[str, str] = {}
    for area, m in areas:
        if area is None:
            continue
        for meter_id, key in [(area.gate, "gate")] + [(c, "customers") for c in area.customers]:
            if meter_id not in by_id:
                m.blame(key, f"{key}: no meter {meter_id!r}")
            elif meter_id in in_area:
                m.blame(key, f"{key}: meter {meter_id!r} is already in area {in_area[meter_id]!r}")
            else:
                in_area[meter_id] = area.id
        gate = by_id.get(area.gate)
        if gate is not None and gate.load is not None:
            m.blame("gate", f"gate: meter {gate.id!r} measures its area; remove its 'load'")
