"""Relay jobs on the wire against the simulator: DL/T 645 1C trip / close-allow / direct
close with status word 3 read back, and a Modbus profile's relay (ADW300 holding register,
the generic profile's coil) written and read back; an open relay stops the energy."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from polling import START, M, gateway_yaml, sim_yaml

from gateway.clock import ManualClock
from gateway.config import parse_config
from gateway.drivers import dlt645, modbus, profiles
from gateway.drivers.bus import Bus
from gateway.drivers.jobs import Priority
from gateway.drivers.profiles import RelaySpec
from gateway.drivers.registry import make_driver
from gateway.protocols.dlt645 import RelayAction
from gateway.sim.config import parse_sim_config
from gateway.sim.service import Simulator

BUSES = [("dl", "dlt645", 38400), ("mb", "modbus", 38400)]
METERS = [
    M("d1", "dl", "dlt645", 1, energy_wh=1_000_000, watts=3_600, turnaround_ms=5),
    M("a1", "mb", "modbus", 1, energy_wh=1_000_000, watts=3_600, profile="adw300"),
    M("g1", "mb", "modbus", 2, energy_wh=1_000_000, watts=3_600, profile="generic"),
]


def test_relay_jobs_trip_close_and_read_back(tmp_path: Path) -> None:
    clock = ManualClock(START)
    sim_config = parse_sim_config(sim_yaml(BUSES, METERS), "s.yaml", link_dir=str(tmp_path))
    with Simulator(sim_config, clock) as sim:
        config = parse_config(gateway_yaml(sim, BUSES, METERS), "gw.yaml")
        buses = {
            b.name: Bus(
                b, {m.id: make_driver(m, b) for m in config.meters_on(b.name)}, clock=clock
            ).start()
            for b in config.serial_buses
        }
        try:
            dl, mb = buses["dl"], buses["mb"]
            valid = clock.local() + timedelta(minutes=5, microseconds=123_456)  # cut to seconds

            def dl_open() -> bool | None:
                return dlt645.relay_position(dl.submit(dlt645.relay_readback("d1")).result(10))

            assert dl_open() is False
            trip = dlt645.relay_command("d1", "000000000001", RelayAction.TRIP, valid)
            assert dl.submit(trip, Priority.RELAY).result(10).ok
            assert dl_open() is True
            assert sim.truth("d1")["meters"]["d1"]["relay_closed"] is False
            # open: no energy accumulates while the calendar moves on
            before = sim.truth("d1")["meters"]["d1"]["energy_import_wh"]
            clock.advance(3600)
            assert sim.truth("d1")["meters"]["d1"]["energy_import_wh"] == before
            # close-allow: still open until the button is pressed
            valid = clock.local() + timedelta(minutes=5)
            allow = dlt645.relay_command("d1", "000000000001", RelayAction.CLOSE_ALLOW, valid)
            assert dl.submit(allow, Priority.RELAY).result(10).ok
            assert dl_open() is True
            assert sim.control("d1", "button", {})["closed"] is True
            assert dl_open() is False
            # an expired deadline is refused by the meter
            late = dlt645.relay_command(
                "d1", "000000000001", RelayAction.TRIP, clock.local() - timedelta(minutes=1)
            )
            refused = dl.submit(late, Priority.RELAY).result(10)
            assert not refused.ok and refused.cause == "negative:01"
            assert dl_open() is False

            for meter, unit, name in (("a1", 1, "adw300"), ("g1", 2, "generic")):
                relay = profiles.get(name).relay
                assert relay is not None

                def mb_open(
                    meter: str = meter, unit: int = unit, relay: RelaySpec = relay
                ) -> bool | None:
                    job = modbus.relay_readback(meter, unit, relay)
                    return modbus.relay_position(mb.submit(job).result(10), relay)

                assert mb_open() is False
                job = modbus.relay_command(meter, unit, relay, open_=True)
                assert mb.submit(job, Priority.RELAY).result(10).ok
                assert mb_open() is True
                before = sim.truth(meter)["meters"][meter]["energy_import_wh"]
                clock.advance(3600)
                assert sim.truth(meter)["meters"][meter]["energy_import_wh"] == before
                job = modbus.relay_command(meter, unit, relay, open_=False)
                assert mb.submit(job, Priority.RELAY).result(10).ok
                assert mb_open() is False
                clock.advance(3600)
                after = sim.truth(meter)["meters"][meter]["energy_import_wh"]
                assert after == before + 3_600
        finally:
            for bus in buses.values():
                bus.stop()
