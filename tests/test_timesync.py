"""Meters' clocks against the simulator under a shared ManualClock: a small offset is
corrected by one broadcast per bus and day, a large one by an individual write, never
near midnight nor the settlement moment, never with an untrusted clock; one event
per correction."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.clock import ManualClock
from gateway.config import Meter, SerialBus
from gateway.drivers.bus import Bus
from gateway.drivers.dlt645 import Dlt645Driver
from gateway.protocols.batch import HealthKind, HealthRecord, MeterEvent
from gateway.protocols.quantities import EventCode
from gateway.sim.config import parse_sim_config
from gateway.sim.service import Simulator
from gateway.tasks import TaskMeter
from gateway.timesync import (
    TimeSync,
    TimeSyncSettings,
    TimeTrust,
    in_quiet_window,
    kernel_clock_synchronized,
)

TZ_OFFSET = timedelta(hours=8)  # Asia/Shanghai
DAY = date(2025, 3, 12)
ADDRESS = {f"m{i}": f"0000000001{i:02d}" for i in range(1, 5)}
SIM = (
    "buses:\n  - {name: d, link: dlt, protocol: dlt645, baud: 19200, parity: E}\nmeters:\n"
    + "".join(
        f'  - {{id: {m}, bus: d, address: "{a}", turnaround_ms: 5}}\n' for m, a in ADDRESS.items()
    )
)


def local(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), UTC) - TZ_OFFSET


class ListJournal:
    def __init__(self) -> None:
        self.records: list[object] = []
        self.lock = threading.Lock()

    def submit(self, record: object) -> None:
        with self.lock:
            self.records.append(record)

    def events(self) -> list[MeterEvent]:
        return [r for r in self.records if isinstance(r, MeterEvent)]


@dataclass
class Bench:
    sim: Simulator
    clock: ManualClock
    bus: Bus
    journal: ListJournal

    def sync(self, **settings: Any) -> TimeSync:
        meters = [TaskMeter(m, "dlt645", a) for m, a in ADDRESS.items()]
        meters.append(TaskMeter("mb", "modbus"))  # no clock: skipped
        return TimeSync(
            self.clock, meters, lambda m: self.bus, self.journal, TimeSyncSettings(**settings)
        )

    def drift(self, meter: str, seconds: float) -> None:
        self.sim.control(meter, "drift", {"offset_s": seconds})

    def offset(self, meter: str) -> float:
        return float(self.sim.truth(meter)["meters"][meter]["clock_offset_s"])

    def counters(self, meter: str) -> dict[str, int]:
        return dict(self.sim.truth(meter)["meters"][meter]["counters"])


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    clock = ManualClock(local(DAY, 10))
    config = parse_sim_config(SIM, "timesync.yaml", link_dir=str(tmp_path))
    with Simulator(config, clock) as sim:
        line = SerialBus("d", sim.bus("d").path, "dlt645", baud=19200, parity="E", timeout=0.15)
        meters = [Meter(m, "d", address=a) for m, a in ADDRESS.items()]
        bus = Bus(line, {m.id: Dlt645Driver(m, line) for m in meters}, clock=clock).start()
        try:
            yield Bench(sim, clock, bus, ListJournal())
        finally:
            bus.stop()


def test_a_meter_90_s_off_gets_one_broadcast_and_one_event(bench: Bench) -> None:
    bench.drift("m1", 90)
    sync = bench.sync()
    sync.tick()
    assert bench.offset("m1") == 0.0
    assert bench.counters("m1").get("broadcast-time-applied") == 1
    assert bench.counters("m1").get("time-written") is None
    [event] = bench.journal.events()
    assert (event.meter, event.code) == ("m1", EventCode.CLOCK_CORRECTED)
    assert event.detail == {"method": "broadcast", "offset_s": 90, "after_s": 0}
    assert sync.status()["checked_today"] == 4 and sync.corrections == 1
    # once a day: later ticks the same day read nothing
    frames = bench.sim.bus("d").log_total
    bench.clock.advance(timedelta(hours=1))
    sync.tick()
    assert bench.sim.bus("d").log_total == frames


def test_a_meter_10_min_off_gets_an_individual_write(bench: Bench) -> None:
    bench.drift("m2", -600)
    sync = bench.sync()
    sync.tick()
    assert bench.offset("m2") == 0.0
    assert bench.counters("m2")["time-written"] == 2  # date, then time
    assert "broadcast-time-applied" not in bench.counters("m2")  # no broadcast was sent
    [event] = bench.journal.events()
    assert (event.meter, event.code) == ("m2", EventCode.CLOCK_CORRECTED)
    assert event.detail == {"method": "write", "offset_s": -600, "after_s": 0}


def test_one_broadcast_per_bus_and_day_then_writes(bench: Bench) -> None:
    bench.drift("m1", 90)
    bench.drift("m3", -40)
    bench.drift("m4", 3)  # within the threshold: left alone (the broadcast sets it anyway)
    bench.sim.fault("m2", "silent")
    sync = bench.sync()
    sync.tick()
    codes = {(e.meter, e.code, e.detail["method"]) for e in bench.journal.events()}
    assert codes == {
        ("m1", EventCode.CLOCK_CORRECTED, "broadcast"),
        ("m3", EventCode.CLOCK_CORRECTED, "broadcast"),
    }
    assert bench.offset("m1") == bench.offset("m3") == bench.offset("m4") == 0.0
    # m2 did not answer: tried again 30 minutes later; the bus's broadcast is used
    bench.sim.clear("m2")
    bench.drift("m2", 30)
    bench.clock.advance(timedelta(minutes=29))
    sync.tick()
    assert len(bench.journal.events()) == 2
    bench.clock.advance(timedelta(minutes=1))
    sync.tick()
    last = bench.journal.events()[-1]
    assert (last.meter, last.detail) == ("m2", {"method": "write", "offset_s": 30, "after_s": 0})
    assert bench.offset("m2") == 0.0
    # the next day the bus may broadcast again
    bench.drift("m1", 60)
    bench.clock.set(local(DAY + timedelta(days=1), 9))
    sync.tick()
    last = bench.journal.events()[-1]
    assert (last.meter, last.detail["method"]) == ("m1", "broadcast")
    assert len(bench.journal.events()) == 4


def test_no_correction_around_midnight(bench: Bench) -> None:
    bench.clock.set(local(DAY, 23, 57))
    bench.drift("m1", 90)
    sync = bench.sync()
    sync.tick()
    for at in (local(DAY + timedelta(days=1), 0, 5), local(DAY + timedelta(days=1), 0, 20)):
        bench.clock.set(at)
        sync.tick()  # 00:05 in the freeze window, 00:20 before the day's check
    assert bench.sim.bus("d").log_total == 0
    assert bench.journal.events() == []
    assert bench.offset("m1") == 90.0
    bench.clock.set(local(DAY + timedelta(days=1), 0, 31))
    sync.tick()
    assert bench.offset("m1") == 0.0
    assert [e.detail["method"] for e in bench.journal.events()] == ["broadcast"]


def test_a_meter_whose_own_clock_is_near_midnight_waits(bench: Bench) -> None:
    bench.clock.set(local(DAY, 23, 48))
    bench.drift("m2", 600)  # the meter reads 23:58
    sync = bench.sync()
    sync.tick()
    assert bench.offset("m2") == 600.0 and bench.journal.events() == []
    assert sync.offsets["m2"] == 600


def test_an_untrusted_clock_never_sets_a_meter(bench: Bench) -> None:
    bench.clock.distrust()
    bench.drift("m1", 90)
    bench.drift("m2", 900)
    sync = bench.sync()
    for hours in (0, 1, 5):
        bench.clock.set(local(DAY, 10 + hours))
        sync.tick()
    assert bench.sim.bus("d").log_total == 0
    assert bench.journal.events() == []
    assert (bench.offset("m1"), bench.offset("m2")) == (90.0, 900.0)
    assert sync.status()["suspended"] is True


def test_a_refused_write_is_a_drift_event(bench: Bench) -> None:
    bench.drift("m4", 1200)
    sync = bench.sync(password="123456")  # not the meter's password
    sync.tick()
    [event] = bench.journal.events()
    assert (event.meter, event.code, event.detail["offset_s"]) == (
        "m4",
        EventCode.CLOCK_DRIFT,
        1200,
    )
    assert str(event.detail["reason"]).startswith("write refused")
    assert bench.offset("m4") == 1200.0
    assert bench.counters("m4")["write-refused-password"] == 1  # one try, not one per tick
    bench.clock.advance(timedelta(hours=2))
    sync.tick()
    assert bench.counters("m4")["write-refused-password"] == 1


def test_quiet_windows() -> None:
    s = TimeSyncSettings()
    assert in_quiet_window(datetime(2025, 3, 12, 23, 55), s)
    assert in_quiet_window(datetime(2025, 3, 13, 0, 9, 59), s)
    assert not in_quiet_window(datetime(2025, 3, 12, 23, 54, 59), s)
    assert not in_quiet_window(datetime(2025, 3, 13, 0, 10), s)
    noon = TimeSyncSettings(settlement_day=15, settlement_hour=12)
    assert in_quiet_window(datetime(2025, 3, 15, 11, 50), noon)
    assert in_quiet_window(datetime(2025, 3, 15, 12, 14), noon)
    assert not in_quiet_window(datetime(2025, 3, 15, 12, 15), noon)
    assert not in_quiet_window(datetime(2025, 3, 14, 12, 0), noon)
    # the default settlement moment, 00:00 on the 1st, guarded 15 minutes either side
    assert in_quiet_window(datetime(2025, 2, 28, 23, 46), s)
    assert in_quiet_window(datetime(2025, 3, 1, 0, 14), s)
    assert not in_quiet_window(datetime(2025, 3, 2, 0, 14), s)


def test_the_clock_is_trusted_once_ntp_has_synchronized_it() -> None:
    clock = ManualClock(local(DAY, 10), trusted=False)
    journal = ListJournal()
    synced: list[bool | None] = [None, False]
    trust = TimeTrust(clock, journal, probe=lambda: synced[-1])
    trust.tick()
    assert not clock.trusted and journal.records == []
    synced.append(True)
    trust.tick()
    trust.tick()
    assert clock.trusted and clock.trust_source == "ntp"
    [record] = journal.records
    assert isinstance(record, HealthRecord) and record.kind == HealthKind.TIME_SOURCE
    assert record.values == {"trusted": 1, "source": "ntp"}
    assert kernel_clock_synchronized() in (True, False, None)  # asks the real kernel
