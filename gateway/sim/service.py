"""The simulator in one object: buses, meters and areas built from a :class:`SimConfig`.

::

    with Simulator(load_sim_config("sim.yaml"), state_path="state.json") as sim:
        sim.bus("rs485-2").path            # open this like /dev/ttyUSB0
        sim.truth()["meters"]["C201-shop"]  # what the meter really holds
        sim.fault("C201-shop", "silent", seconds=5)

The calendar clock is the config's (``clock:``) unless one is given (tests pass a
:class:`~gateway.clock.ManualClock`); bus timing always uses the monotonic clock.
One lock (:attr:`Simulator.lock`) guards every meter: bus threads hold it while a
meter answers, truth and control actions take it too.  The JSON state file (paths,
pid, clock, bus counters, every meter's truth, areas' supply/sales/loss since start)
is rewritten atomically every ``state_interval`` seconds and at :meth:`stop`.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from gateway.clock import Clock, ShiftedClock, monotonic
from gateway.drivers import profiles
from gateway.errors import ConfigError
from gateway.sim.areas import AreaSnapshot, area_truth, make_gate, snapshot
from gateway.sim.bus import LOG_SIZE, SimBus
from gateway.sim.config import LoadConfig, SimConfig, SimMeterConfig
from gateway.sim.dlt645_meter import Dlt645Meter
from gateway.sim.modbus_meter import ModbusMeter
from gateway.sim.model import SimMeter
from gateway.sim.physics import ConstantLoad, Load, MeterPhysics

__all__ = ["FAULT_KINDS", "Simulator", "SolarLoad", "clock_from_config"]

FAULT_KINDS = ("silent", "late", "bad_checksum", "garbage", "wrong_address")
"""Fault kinds a meter takes (``late`` with ``delay_ms``)."""


@dataclass(frozen=True)
class SolarLoad:
    """A customer's load minus rooftop solar: a parabola from 06:00 to 18:00 local,
    ``peak_watts`` at noon, nothing at night (W, integer, per minute)."""

    load: Load
    peak_watts: int
    tz: Any

    @property
    def step_s(self) -> int | None:
        inner = getattr(self.load, "step_s", 1)
        return 60 if inner is None else min(60, inner)

    def power_at(self, t: datetime) -> int:
        local = t.astimezone(self.tz)
        x = local.hour * 60 + local.minute - 360
        solar = self.peak_watts * 4 * x * (720 - x) // (720 * 720) if 0 <= x <= 720 else 0
        return self.load.power_at(t) - solar


def clock_from_config(config: SimConfig) -> Clock:
    """The config's clock: real time (``start: now``) or a shifted start, at ``rate``."""
    c = config.clock
    start = c.start or datetime.now(UTC)
    return ShiftedClock(start, c.timezone, rate=c.rate)


class Simulator:
    """Simulated buses of meters; :meth:`start` opens the ptys, :meth:`stop` closes them."""

    def __init__(
        self,
        config: SimConfig,
        clock: Clock | None = None,
        *,
        state_path: str | os.PathLike[str] | None = None,
        control_path: str | os.PathLike[str] | None = None,
        state_interval: float = 1.0,
        log_size: int = LOG_SIZE,
    ) -> None:
        self.config = config
        self.clock = clock or clock_from_config(config)
        self.lock = threading.RLock()
        self.state_path = Path(state_path) if state_path else None
        self.control_path = Path(control_path) if control_path else None
        self.state_interval = state_interval
        self.started_at: datetime | None = None
        self.physics: dict[str, MeterPhysics] = {}
        self.meters: dict[str, SimMeter] = {}
        self._build_physics()
        self._build_meters()
        self.buses: dict[str, SimBus] = {}
        for i, bc in enumerate(config.buses):
            self.buses[bc.name] = SimBus(
                bc.name,
                bc.link,
                bc.protocol,
                bc.line,
                timing=bc.timing,
                silent_gap=None if bc.silent_gap_ms is None else bc.silent_gap_ms / 1000,
                meters=[self.meters[m.id] for m in config.meters if m.bus == bc.name],
                clock=self.clock,
                lock=self.lock,
                log_size=log_size,
                seed=i,
                silent_s=bc.silent_s,
            )
        now = self.clock.now()
        self._area_start: dict[str, AreaSnapshot] = {
            a.id: snapshot(self.physics[a.gate], [self.physics[c] for c in a.customers], now)
            for a in config.areas
        }
        self._stop_event = threading.Event()
        self._state_thread: threading.Thread | None = None
        self._control: Any = None

    # --- building -----------------------------------------------------------------

    def _physics_args(self, mc: SimMeterConfig) -> dict[str, Any]:
        return {
            "energy_import_wh": mc.energy_import_wh,
            "energy_export_wh": mc.energy_export_wh,
            "phases": mc.phases,
            "voltage_dv": mc.voltage_dv,
            "frequency_chz": mc.frequency_chz,
            "power_factor_milli": mc.power_factor_milli,
            "drift_ppm": mc.drift_ppm,
            "clock_offset_s": mc.clock_offset_s,
            "tou_slots": mc.tou_slots or None,
            "settlement_day": mc.settlement_day,
            "timezone": self.config.clock.timezone,
        }

    def _build_physics(self) -> None:
        now = self.clock.now()
        tz = self.clock.tz
        gates = {a.gate: a for a in self.config.areas}
        solar = {m: w for a in self.config.areas for m, w in a.solar.items()}
        for mc in self.config.meters:
            if mc.id in gates:
                continue
            load: Load = ConstantLoad(0)
            if mc.load is not None:
                params = dict(mc.load.params)
                if mc.load.kind == "daily":
                    params.setdefault("tz", self.config.clock.timezone)
                load = LoadConfig(mc.load.kind, params).build()
            if mc.id in solar:
                load = SolarLoad(load, solar[mc.id], tz)
            has_relay = mc.protocol == "dlt645" or profiles.get(mc.profile or "").relay is not None
            p = MeterPhysics(
                meter_number=mc.meter_number,
                load=load,
                now=now,
                has_relay=has_relay,
                **self._physics_args(mc),
            )
            if not mc.relay_closed:
                p.open_relay()
            self.physics[mc.id] = p
        by_id = {m.id: m for m in self.config.meters}
        for area in self.config.areas:
            mc = by_id[area.gate]
            if mc.protocol == "modbus" and profiles.get(mc.profile or "").relay is not None:
                raise ConfigError(
                    f"gate meter {mc.id!r} of area {area.id!r} has profile {mc.profile} with a"
                    " relay; a gate meter has none: choose a profile without a relay",
                    file=self.config.source,
                )
            self.physics[mc.id] = make_gate(
                [self.physics[c] for c in area.customers],
                meter_number=mc.meter_number,
                now=now,
                loss_permille=area.loss_permille,
                theft_watts=area.theft_watts,
                **self._physics_args(mc),
            )

    def _build_meters(self) -> None:
        for mc in self.config.meters:
            physics = self.physics[mc.id]
            turnaround = mc.turnaround_ms / 1000
            meter: SimMeter
            if mc.protocol == "modbus":
                assert mc.unit_id is not None and mc.profile is not None
                profile = profiles.get(mc.profile)
                meter = ModbusMeter(mc.id, mc.unit_id, profile, physics, turnaround=turnaround)
            else:
                assert mc.address is not None
                meter = Dlt645Meter(
                    mc.id,
                    mc.address,
                    physics,
                    turnaround=turnaround,
                    password=mc.password,
                    protect=mc.protect,
                    close_mode=mc.close_mode,
                    preamble=mc.preamble,
                )
            f = mc.faults
            meter.faults.silent = f.silent
            meter.faults.extra_delay = f.late_ms / 1000
            meter.faults.bad_checksum = f.bad_checksum
            meter.faults.garbage = f.garbage
            meter.faults.wrong_address = f.wrong_address
            self.meters[mc.id] = meter

    # --- life cycle ---------------------------------------------------------------

    def start(self) -> Simulator:
        """Open every bus, the control socket (if any) and the state writer."""
        started: list[SimBus] = []
        try:
            for bus in self.buses.values():
                bus.start()
                started.append(bus)
            if self.control_path is not None:
                from gateway.sim.control import ControlServer

                self._control = ControlServer(self, self.control_path)
                self._control.start()
        except BaseException:
            for bus in started:
                bus.stop()
            raise
        self.started_at = datetime.now(UTC)
        self._stop_event.clear()
        if self.state_path is not None:
            self.write_state()
            self._state_thread = threading.Thread(
                target=self._state_loop, name="sim-state", daemon=True
            )
            self._state_thread.start()
        return self

    def stop(self) -> None:
        """Stop everything; the links are removed and the state file is written a last time."""
        self._stop_event.set()
        if self._state_thread is not None:
            self._state_thread.join(timeout=5)
            self._state_thread = None
        if self._control is not None:
            self._control.stop()
            self._control = None
        for bus in self.buses.values():
            bus.stop()
        if self.state_path is not None and self.started_at is not None:
            self.write_state(running=False)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _state_loop(self) -> None:
        while not self._stop_event.wait(self.state_interval):
            with contextlib.suppress(OSError):  # a full disk must not kill the bench
                self.write_state()

    # --- access -------------------------------------------------------------------

    def bus(self, name: str) -> SimBus:
        try:
            return self.buses[name]
        except KeyError:
            raise KeyError(f"no bus {name!r} (buses: {', '.join(self.buses)})") from None

    def meter(self, meter_id: str) -> SimMeter:
        try:
            return self.meters[meter_id]
        except KeyError:
            raise KeyError(f"no meter {meter_id!r}") from None

    def truth(self, meter_id: str | None = None) -> dict[str, Any]:
        """Ground truth now: meters (all, or one), buses' counters, areas since start."""
        with self.lock:
            now = self.clock.now()
            ids = [meter_id] if meter_id is not None else list(self.meters)
            meters = {i: self.meter(i).truth(now) for i in ids}
            areas = {}
            if meter_id is None:
                for area in self.config.areas:
                    gate = self.physics[area.gate]
                    customers = [self.physics[c] for c in area.customers]
                    after = snapshot(gate, customers, now)
                    areas[area.id] = area_truth(self._area_start[area.id], after).as_dict()
        out: dict[str, Any] = {"now": now.isoformat(), "meters": meters}
        if meter_id is None:
            out["areas"] = areas
            out["buses"] = {name: bus.status() for name, bus in self.buses.items()}
        return out

    # --- faults and control -----------------------------------------------------------

    def fault(
        self,
        meter_id: str,
        kind: str,
        *,
        seconds: float | None = None,
        delay_ms: float | None = None,
    ) -> dict[str, Any]:
        """Inject ``kind`` (one of :data:`FAULT_KINDS`) into a meter, for ``seconds`` or
        until cleared."""
        meter = self.meter(meter_id)
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(FAULT_KINDS)}, not {kind!r}")
        with self.lock:
            f = meter.faults
            if kind == "late":
                if delay_ms is None or delay_ms <= 0:
                    raise ValueError("a 'late' fault needs delay_ms > 0")
                f.extra_delay = delay_ms / 1000
            else:
                setattr(f, kind, True)
            f.until = None if seconds is None else monotonic() + seconds
            return f.as_dict()

    def bus_silent(self, bus_name: str, seconds: float | None = None) -> None:
        """No meter on the bus answers for ``seconds`` (None: until cleared)."""
        self.bus(bus_name).set_silent(seconds)

    def clear(self, meter_id: str | None = None, bus_name: str | None = None) -> None:
        """Clear faults: of one meter, of one bus, or (neither given) everywhere."""
        with self.lock:
            if meter_id is not None:
                self.meter(meter_id).faults.clear()
            if bus_name is not None:
                self.bus(bus_name).clear_silent()
            if meter_id is None and bus_name is None:
                for meter in self.meters.values():
                    meter.faults.clear()
                for bus in self.buses.values():
                    bus.clear_silent()

    def control(self, meter_id: str, action: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """A meter's control action (``button``, ``swap``, ``drift``, ``relay`` ...) at now."""
        meter = self.meter(meter_id)
        with self.lock:
            full = dict(args)
            full.setdefault("now", self.clock.now())
            return meter.control(action, full)

    # --- state file ---------------------------------------------------------------

    def state(self, *, running: bool = True) -> dict[str, Any]:
        """What the state file holds."""
        truth = self.truth()
        clock = self.clock
        clock_info: dict[str, Any] = {"now": truth["now"], "timezone": str(clock.tz)}
        if isinstance(clock, ShiftedClock):
            clock_info.update(
                start=clock.start.isoformat(), rate=clock.rate, anchor_monotonic=clock.anchor
            )
        return {
            "pid": os.getpid(),
            "running": running,
            "config": self.config.source,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "updated_at": datetime.now(UTC).isoformat(),
            "monotonic": monotonic(),
            "control": str(self.control_path) if self.control_path else None,
            "clock": clock_info,
            "buses": truth["buses"],
            "meters": truth["meters"],
            "areas": truth["areas"],
        }

    def write_state(self, *, running: bool = True) -> None:
        """Write the state file atomically (a reader never sees half of it)."""
        if self.state_path is None:
            return
        data = json.dumps(self.state(running=running), indent=1, default=str)
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}.tmp")
        tmp.write_text(data + "\n", encoding="utf-8")
        os.replace(tmp, self.state_path)
        with contextlib.suppress(OSError):
            tmp.unlink()
