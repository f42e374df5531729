"""The polling core against the simulator on real ptys.  Values are compared with the
simulator's truth at the same instant (a ManualClock shared by both, standing still),
timing and collisions only from the simulator's bus log."""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from polling import (
    START,
    ListJournal,
    M,
    bench,
    bus_lines,
    collisions,
    every_meter_read,
    expected_values,
    meters,
    requests,
    sim_yaml,
    wait_for,
)

from gateway.clock import ManualClock
from gateway.config import parse_config
from gateway.drivers.bus import IDLE_MARGIN, Bus
from gateway.drivers.jobs import Priority, ReadJob, WriteJob
from gateway.drivers.registry import make_driver
from gateway.drivers.serialport import SerialPort
from gateway.poller import Poller, PollSettings
from gateway.protocols.dlt645 import BroadcastTime
from gateway.protocols.linetiming import LineSettings
from gateway.protocols.quantities import (
    FLAG_DISCONTINUITY,
    FLAG_ROLLOVER,
    EventCode,
    Quantity,
)
from gateway.sim.config import parse_sim_config
from gateway.sim.service import Simulator

CONTINUOUS = PollSettings(interval=0, fail_after=2, backoff_base=60)


def test_two_buses_of_32_meters_read_the_truth_without_collisions(tmp_path: Path) -> None:
    buses = [("mb", "modbus", 38400), ("dl", "dlt645", 115200)]
    ms = meters("mb", "modbus", 32) + meters("dl", "dlt645", 32, turnaround_ms=5)
    with bench(str(tmp_path), buses, ms, CONTINUOUS) as b:
        wait_for(every_meter_read(b), 20, "every meter read")
        # a broadcast in the middle of polling keeps the gap too
        broadcast = WriteJob(
            "dl3", BroadcastTime(datetime(2024, 6, 1, 12, 0, 5)), expect_reply=False
        )
        assert b.buses["dl"].submit(broadcast, Priority.TASK).result(5).ok
        for bus in b.buses.values():
            bus.stop()
        for m in ms:
            truth = b.sim.truth(m.id)["meters"][m.id]
            got = b.journal.readings(m.id)[-1]
            assert got.values == expected_values(truth, m), m.id
            assert got.ts_ms == int(START.timestamp() * 1000)
        for name in ("mb", "dl"):
            log = b.sim.bus(name).log
            assert collisions(log) == 0 and b.sim.bus(name).counters.collisions == 0
            assert all(e.result in ("ok", "broadcast") for e in log), name
        assert b.sim.bus("dl").counters.broadcasts == 1
        assert b.journal.events() == []
        # the ratio was applied: meter 1 of each bus has CT 60
        assert b.journal.readings("mb1")[-1].values[Quantity.ENERGY_IMPORT] == 60 * 123_450
        status = b.buses["mb"].status()
        assert status["errors"] == 0 and status["transactions"] > 0


class SlowWrite(SerialPort):
    """A real pty whose ``write`` is held up before the bytes go (a preempted thread,
    a slow driver): ``delays`` are taken one per write (none left: no delay)."""

    def __init__(self, path: str, line: LineSettings, delays: list[float]) -> None:
        super().__init__(path, line)
        self.delays = delays

    def write(self, data: bytes) -> None:
        if self.delays:
            time.sleep(self.delays.pop(0))
        super().write(data)


class LateAdapter(SerialPort):
    """A real pty behind an adapter that returns from ``write`` at once and puts the
    bytes on the line later (a USB adapter's latency): ``delays`` one per write, in
    order, a write never overtaking the one before."""

    def __init__(self, path: str, line: LineSettings, delays: list[float]) -> None:
        super().__init__(path, line)
        self.delays = delays
        self._out: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._send, daemon=True)
        self._worker.start()

    def write(self, data: bytes) -> None:
        delay = self.delays.pop(0) if self.delays else 0.0
        self._out.put((time.monotonic() + delay, data))

    def _send(self) -> None:
        while (item := self._out.get()) is not None:
            due, data = item
            time.sleep(max(0.0, due - time.monotonic()))
            super().write(data)

    def stop(self) -> None:
        self._out.put(None)
        self._worker.join(2)


@contextmanager
def _one_bus(
    tmp_path: Path,
    ms: list[M],
    *,
    port: Callable[[str, LineSettings], SerialPort] | None = None,
    own_interval: dict[str, float] | None = None,
    settings: PollSettings | None = None,
) -> Iterator[tuple[Simulator, Bus, Poller | None]]:
    """One DL/T 645 bus ``dl`` at 115200 with meters ``ms``: the gateway's port made by
    ``port`` (default: the pty itself), the meters' ``poll_interval_s`` from
    ``own_interval``, polled with ``settings`` (None: no poller, only submitted jobs)."""
    buses = [("dl", "dlt645", 115200)]
    clock = ManualClock(START)
    config = parse_sim_config(sim_yaml(buses, ms), "s.yaml", link_dir=str(tmp_path))
    own = own_interval or {}
    with Simulator(config, clock) as sim:
        lines = ["gateway_id: gw", "serial_buses:", *bus_lines(sim, buses), "meters:"]
        for m in ms:
            interval = f", poll_interval_s: {own[m.id]}" if m.id in own else ""
            lines.append(f"  - {{id: {m.id}, bus: dl, address: '{m.address}'{interval}}}")
        lines += ["uplink: {host: localhost}", "store: {path: gw.db}"]
        gw = parse_config("\n".join(lines) + "\n", "gw.yaml")
        (bus_config,) = gw.serial_buses
        drivers = {m.id: make_driver(m, bus_config) for m in gw.meters}
        poller = None
        if settings is not None:
            poller = Poller("dl", drivers, ListJournal(), clock, settings)
        the_port = port(bus_config.port, bus_config.line) if port is not None else None
        bus = Bus(bus_config, drivers, clock=clock, port=the_port, scheduler=poller).start()
        try:
            yield sim, bus, poller
        finally:
            bus.stop()
            if isinstance(the_port, LateAdapter):
                the_port.stop()


def _broadcast_then_read(sim: Simulator, bus: Bus) -> None:
    broadcast = WriteJob("dl1", BroadcastTime(datetime(2024, 6, 1, 12, 0, 5)), expect_reply=False)
    sent = bus.submit(broadcast)
    read = bus.submit(ReadJob("dl2", (0x00010000,)))
    assert sent.result(5).ok
    got = read.result(5)
    log = sim.bus("dl").log
    print("bus log:", [(e.direction, e.result, round(e.start, 4), round(e.end, 4)) for e in log])
    assert [e.result for e in log if e.direction == "request"] == ["broadcast", "ok"]
    assert collisions(log) == 0 and sim.bus("dl").counters.collisions == 0
    assert got.ok, got.error
    (b, r) = requests(log)
    assert r.start - b.end >= bus.gap


def test_a_delayed_write_keeps_the_gap_after_a_broadcast(tmp_path: Path) -> None:
    # the broadcast's write is held up 50 ms (longer than any margin): the silent gap
    # must be counted from when its bytes really went, not from before the write
    slow = lambda path, line: SlowWrite(path, line, [0.05])  # noqa: E731
    with _one_bus(tmp_path, meters("dl", "dlt645", 2, turnaround_ms=5), port=slow) as (sim, bus, _):
        _broadcast_then_read(sim, bus)


def test_adapter_latency_is_allowed_for_after_a_broadcast(tmp_path: Path) -> None:
    # write() returns at once, the broadcast reaches the line 10 ms later and the next
    # request queues behind it: nothing shows the bus when the broadcast ended, so it
    # waits the adapter's latency margin before the next frame
    assert IDLE_MARGIN > 0.01
    late = lambda path, line: LateAdapter(path, line, [0.01])  # noqa: E731
    with _one_bus(tmp_path, meters("dl", "dlt645", 2, turnaround_ms=5), port=late) as (sim, bus, _):
        _broadcast_then_read(sim, bus)


def test_a_reply_later_than_its_allowance_is_heard_out_not_collided_with(
    tmp_path: Path,
) -> None:
    # dl1 answers quickly, so its learned allowance is short (2 x turnaround + margin);
    # then it turns late by 10 ms more than that allowance.  The bus times out, but
    # the late reply is still coming: it must listen before the retry, drain the
    # reply's bytes as stray and send the retry after it, not into it.
    with _one_bus(tmp_path, meters("dl", "dlt645", 2, turnaround_ms=5)) as (sim, bus, _):
        for _ in range(3):
            assert bus.submit(ReadJob("dl1", (0x00010000,))).result(5).ok
        allowance = bus.drivers["dl1"].allowance(0)
        assert allowance < 0.1, allowance  # learned, not the cap
        late_ms = (allowance + 0.010) * 1000 - 5  # the reply starts 10 ms after the timeout
        sim.fault("dl1", "late", delay_ms=late_ms, seconds=0.3)
        got = bus.submit(ReadJob("dl1", (0x00010000,))).result(5)
        after = bus.submit(ReadJob("dl2", (0x00010000,))).result(5)
        log = sim.bus("dl").log
    print("allowance", round(allowance * 1000, 1), "ms; late by", round(late_ms, 1), "ms")
    print("bus log:", [(e.direction, e.result, round(e.start, 4), round(e.end, 4)) for e in log])
    assert collisions(log) == 0 and sim.bus("dl").counters.collisions == 0
    assert got.ok and after.ok, (got.error, after.error)
    assert bus.stats.stray_bytes > 0  # the late reply was heard and drained
    late = [e for e in log if e.direction == "reply" and e.result == "fault:late"]
    assert late and late[0].end < requests(log)[-2].start  # the retry came after it


def _polls(log: list, address: str) -> list[float]:
    """Start times of the polls of one meter in the bus log: its requests in runs, a
    new run after a silence of 0.1 s towards it (a poll's requests follow each other
    within milliseconds; the next poll is at least its interval, >= 0.2 s, later).  A
    run of one request is the meter-number check, not a poll (a poll reads 7 DIs)."""
    runs: list[list[float]] = []
    for e in requests(log):
        if e.address != address:
            continue
        if not runs or e.start - runs[-1][-1] > 0.1:
            runs.append([])
        runs[-1].append(e.start)
    return [run[0] for run in runs if len(run) > 1]


def test_each_meter_is_polled_at_its_own_interval(tmp_path: Path) -> None:
    ms = meters("dl", "dlt645", 3, turnaround_ms=5)
    own = {"dl1": 0.2, "dl2": 1.2}  # dl3 keeps the bus's interval: an hour
    with _one_bus(tmp_path, ms, own_interval=own, settings=PollSettings(interval=3600)) as (
        sim,
        bus,
        _,
    ):
        time.sleep(4.0)
        bus.stop()
        log = sim.bus("dl").log
    assert collisions(log) == 0 and all(e.result == "ok" for e in log)
    polls = {m.id: _polls(log, m.address) for m in ms}
    counts = {m: len(p) for m, p in polls.items()}
    spacing = {m: min(b - a for a, b in itertools.pairwise(p)) for m, p in polls.items() if p[1:]}
    print("polls in 4 s:", counts, "closest polls (s):", spacing)
    # the counts in the ratio of the intervals (about 4.5 here with the polls' own line
    # time; generous bounds), and never sooner than its interval (the next poll is due
    # that long after the last one ended)
    assert counts["dl3"] == 1  # the hourly meter: only the first poll
    assert counts["dl2"] >= 2 and 3.0 <= counts["dl1"] / counts["dl2"] <= 7.0, counts
    assert spacing["dl1"] >= 0.2 and spacing["dl2"] >= 1.2, spacing


def _others_rate(log: list, faulty_unit: str, start: float, end: float) -> float:
    """Requests per second of the other meters in [start, end)."""
    got = [e for e in requests(log, start, end) if e.address != faulty_unit]
    return len(got) / (end - start)


def _fault_run(tmp_path: Path, kind: str) -> None:
    buses = [("mb", "modbus", 38400)]
    ms = meters("mb", "modbus", 12)
    with bench(str(tmp_path), buses, ms, CONTINUOUS) as b:
        wait_for(every_meter_read(b), 10, "every meter read")
        t0 = time.monotonic()
        time.sleep(2.0)
        t1 = time.monotonic()
        b.sim.fault("mb5", kind)
        flagged = lambda: bool(b.journal.events(EventCode.COMM_FAILURE))  # noqa: E731
        wait_for(flagged, 10, "the meter flagged")
        time.sleep(max(0.0, 3.0 - (time.monotonic() - t1)))
        t2 = time.monotonic()
        b.buses["mb"].stop()
        log = b.sim.bus("mb").log
        (event,) = b.journal.events(EventCode.COMM_FAILURE)
        assert event.meter == "mb5"
        cause = {"silent": "no-answer", "garbage": "garbled", "wrong_address": "wrong-address"}
        assert event.detail["cause"] == cause[kind]
        assert event.detail["polls"] == 2
        # flagged within the configured polls: 2 polls x (1 try + 1 retry), no more
        asked = [e for e in requests(log, t1) if e.address == "5"]
        assert len(asked) == 2 * 2
        # the others' cycle grows by less than 10 % (here: it does not grow at all
        # once the meter is flagged and left out)
        before = _others_rate(log, "5", t0, t1)
        during = _others_rate(log, "5", t1, t2)
        assert before / during < 1.10, (before, during)
        assert collisions(log) == 0
        status = b.pollers["mb"].status()
        assert status["flagged"][0]["meter"] == "mb5"


def test_a_silent_meter_is_flagged_and_does_not_slow_the_others(tmp_path: Path) -> None:
    _fault_run(tmp_path, "silent")


def test_a_garbled_meter_is_flagged_and_does_not_slow_the_others(tmp_path: Path) -> None:
    _fault_run(tmp_path, "garbage")


def test_wrong_address_hint_and_recovery_after_a_probe(tmp_path: Path) -> None:
    buses = [("mb", "modbus", 38400)]
    ms = meters("mb", "modbus", 3)
    settings = PollSettings(interval=0, fail_after=2, backoff_base=0.3)
    with bench(str(tmp_path), buses, ms, settings) as b:
        wait_for(every_meter_read(b), 10, "every meter read")
        b.sim.fault("mb2", "wrong_address")
        wait_for(lambda: bool(b.journal.events(EventCode.COMM_FAILURE)), 10, "flagged")
        assert b.journal.events(EventCode.COMM_FAILURE)[0].detail["cause"] == "wrong-address"
        b.sim.clear("mb2")
        wait_for(lambda: bool(b.journal.events(EventCode.COMM_RESTORED)), 10, "restored")
        (restored,) = b.journal.events(EventCode.COMM_RESTORED)
        assert restored.meter == "mb2" and restored.detail["cause"] == "wrong-address"
        assert b.pollers["mb"].status()["flagged"] == []


def test_a_whole_silent_bus_is_hinted_as_such(tmp_path: Path) -> None:
    buses = [("dl", "dlt645", 38400)]
    ms = meters("dl", "dlt645", 3, turnaround_ms=5)
    with bench(str(tmp_path), buses, ms, CONTINUOUS) as b:
        wait_for(every_meter_read(b), 10, "every meter read")
        b.sim.bus_silent("dl")
        wait_for(lambda: len(b.journal.events(EventCode.COMM_FAILURE)) == 3, 15, "3 flagged")
        causes = [e.detail["cause"] for e in b.journal.events(EventCode.COMM_FAILURE)]
        # the first meter to fail cannot know yet; once every meter fails, the bus is named
        assert causes[-1] == "bus-silent" and set(causes) <= {"no-answer", "bus-silent"}


def test_priorities_relay_first(tmp_path: Path) -> None:
    buses = [("dl", "dlt645", 19200)]
    ms = meters("dl", "dlt645", 2, turnaround_ms=5)
    with bench(str(tmp_path), buses, ms, PollSettings(interval=3600)) as b:
        wait_for(every_meter_read(b), 10, "every meter read")
        bus = b.buses["dl"]
        done: list[str] = []
        futures = []
        for name, priority in [
            ("poll", Priority.POLL),
            ("task", Priority.TASK),
            ("relay", Priority.RELAY),
        ]:
            f = bus.submit(ReadJob("dl1", (0x00010000,) * 3), priority)
            f.add_done_callback(lambda _f, name=name: done.append(name))
            futures.append(f)
        for f in futures:
            assert f.result(10).ok
        # the first queued may already be on the wire; the rest go by priority
        assert done[1:] == sorted(done[1:], key=["relay", "task", "poll"].index)
        reply = bus.submit(ReadJob("dl2", (0x04000402,))).result(5)
        assert reply.values == {0x04000402: "000000000002"}
        bad = bus.submit(ReadJob("dl2", (0x04000409,))).result(5)
        assert not bad.ok and bad.cause == "negative:02"
        unknown = bus.submit(ReadJob("nobody")).result(1)
        assert not unknown.ok and "nobody" in (unknown.error or "")


def test_the_four_priorities_in_full_order(tmp_path: Path) -> None:
    # dl1 holds the bus with a long job; meanwhile a relay command, an on-demand read,
    # a task and a job at poll priority are queued in scrambled order, and dl6's
    # periodic poll falls due (its interval is shorter than the hold)
    ms = meters("dl", "dlt645", 6, turnaround_ms=5)
    settings = PollSettings(interval=3600)
    with _one_bus(tmp_path, ms, own_interval={"dl6": 0.3}, settings=settings) as (
        sim,
        bus,
        poller,
    ):
        assert poller is not None
        wait_for(lambda: poller.status()["ok_polls"] >= 6, 10, "every meter polled")
        hold = bus.submit(ReadJob("dl1", (0x00010000,) * 100), Priority.ON_DEMAND)
        wait_for(hold.running, 5, "the long job on the wire")
        done: list[str] = []
        futures = []
        for name, meter, priority in [
            ("poll", "dl5", Priority.POLL),
            ("task", "dl4", Priority.TASK),
            ("on-demand", "dl3", Priority.ON_DEMAND),
            ("relay", "dl2", Priority.RELAY),
        ]:
            f = bus.submit(ReadJob(meter, (0x00010000,)), priority)
            f.add_done_callback(lambda _f, name=name: done.append(name))
            futures.append(f)
        assert not hold.done()  # all four were queued while the bus was held
        dl6_due = poller.meters["dl6"].due
        assert hold.result(10).ok and all(f.result(5).ok for f in futures)
        wait_for(lambda: sim.bus("dl").log[-1].address == ms[5].address, 5, "dl6's poll")
        bus.stop()
        log = sim.bus("dl").log
    assert done == ["relay", "on-demand", "task", "poll"]
    # the line itself: after the hold's last request, one request each in priority
    # order, then the periodic poll (the bus asks its poller only when nothing is queued)
    held = [e for e in requests(log) if e.address == ms[0].address]
    after = [e for e in requests(log) if e.start > held[-1].start]
    names = {m.address: m.id for m in ms}
    order = [names[e.address] for e in after]
    print("after the hold:", order, f"dl6 due {held[-1].end - dl6_due:.3f} s before it ended")
    assert dl6_due < held[-1].end  # the periodic poll was due while the bus was held
    assert order[:4] == ["dl2", "dl3", "dl4", "dl5"]
    assert order[4:] and set(order[4:]) == {"dl6"}
    assert collisions(log) == 0


def test_swap_and_rollover_give_events_and_no_false_consumption(tmp_path: Path) -> None:
    buses = [("dl", "dlt645", 38400)]
    ms = [
        M("roll", "dl", "dlt645", 1, energy_wh=999_999_000, watts=36_000, turnaround_ms=5),
        M("swap", "dl", "dlt645", 2, energy_wh=5_000_000, watts=3_600, turnaround_ms=5),
        M("calm", "dl", "dlt645", 3, ct=2, energy_wh=7_000_000, watts=3_600, turnaround_ms=5),
    ]
    with bench(str(tmp_path), buses, ms, CONTINUOUS) as b:
        wait_for(every_meter_read(b), 10, "every meter read")
        truth0 = {m.id: b.sim.truth(m.id)["meters"][m.id] for m in ms}
        b.clock.advance(60)  # 600 Wh on roll: 999,999,000 -> 999,999,600 -> wraps at 10^9
        b.clock.advance(60)
        b.sim.control("swap", "swap", {"meter_number": "990000000001", "energy_import_wh": 1_000})
        after = int(b.clock.now().timestamp() * 1000)
        wait_for(every_meter_read(b, after), 10, "every meter read again")
        wait_for(lambda: bool(b.journal.events(EventCode.METER_NUMBER_CHANGED)), 10, "number check")
        b.buses["dl"].stop()
        truth1 = {m.id: b.sim.truth(m.id)["meters"][m.id] for m in ms}
        codes = {(e.meter, e.code) for e in b.journal.events()}
        assert codes == {
            ("roll", EventCode.REGISTER_ROLLOVER),
            ("swap", EventCode.ENERGY_BACKWARDS),
            ("swap", EventCode.METER_NUMBER_CHANGED),
        }
        (number,) = b.journal.events(EventCode.METER_NUMBER_CHANGED)
        assert number.detail == {"old": "000000000002", "new": "990000000001"}
        assert b.pollers["dl"].status()["swapped"] == ["swap"]
        # consumption from the readings, as a biller would take it: across a rollover
        # add the register's range, across a discontinuity take nothing
        for m in ms:
            got = b.journal.readings(m.id)
            consumed = 0
            for old, new in itertools.pairwise(got):
                a, z = old.values[Quantity.ENERGY_IMPORT], new.values[Quantity.ENERGY_IMPORT]
                if new.flags & FLAG_DISCONTINUITY:
                    continue
                if new.flags & FLAG_ROLLOVER:
                    z += 10**9 * m.ct
                assert z >= a, (m.id, old, new)
                consumed += z - a
            t0, t1 = truth0[m.id], truth1[m.id]
            true = t1["total_import_wh"] - t0["total_import_wh"]
            if m.id == "swap":
                assert consumed == 0  # nothing charged across the swap
                assert any(r.flags & FLAG_DISCONTINUITY for r in got)
            else:
                assert consumed == m.ct * true, m.id  # 10 Wh register resolution is exact here
        assert any(r.flags & FLAG_ROLLOVER for r in b.journal.readings("roll"))
        assert all(r.flags == 0 for r in b.journal.readings("calm"))


def test_a_vanished_port_is_reopened_without_a_restart(tmp_path: Path) -> None:
    from polling import gateway_yaml, sim_yaml

    from gateway.config import parse_config
    from gateway.protocols.batch import HealthRecord
    from gateway.runtime import BUS_HEALTH_KIND, Runtime
    from gateway.sim.config import parse_sim_config
    from gateway.sim.service import Simulator
    from gateway.store.journal import JournalReader, Kind

    buses = [("dl", "dlt645", 38400), ("mb", "modbus", 38400)]
    ms = meters("dl", "dlt645", 2, turnaround_ms=5) + meters("mb", "modbus", 2)
    from gateway.clock import ManualClock

    clock = ManualClock(START)
    with Simulator(
        parse_sim_config(sim_yaml(buses, ms), "s.yaml", link_dir=str(tmp_path)), clock
    ) as sim:
        config = parse_config(gateway_yaml(sim, buses, ms), "gw.yaml")
        rt = Runtime(
            config,
            store_path=tmp_path / "gw.db",
            clock=clock,
            settings=PollSettings(interval=0),
            status_socket=tmp_path / "s.sock",
            reopen_max=0.2,
        )
        with rt:
            wait_for(lambda: rt.pollers["dl"].readings > 0, 10, "readings")
            sim.bus("dl").stop()  # the device disappears (link removed, pty closed)
            wait_for(lambda: not rt.buses["dl"].up, 5, "port lost")
            # a job meanwhile fails at once, it does not wait for the device
            lost = rt.bus_for("dl1").submit(ReadJob("dl1", (0x00010000,))).result(2)
            assert lost.cause == "port-error"
            mb_before = rt.pollers["mb"].readings
            time.sleep(0.5)
            assert rt.pollers["mb"].readings > mb_before  # the other bus goes on
            before = rt.pollers["dl"].readings
            sim.bus("dl").start()  # the device comes back at the same path
            wait_for(lambda: rt.pollers["dl"].readings > before + 4, 10, "readings again")
            status = rt.status()
            dl = next(bus for bus in status["buses"] if bus["name"] == "dl")  # type: ignore[union-attr]
            assert dl["up"] and dl["reopens"] == 1 and dl["port_errors"] >= 1
            assert rt.pollers["dl"].status()["flagged"] == []
            assert sim.bus("dl").counters.collisions == 0
        with JournalReader(tmp_path / "gw.db") as reader:
            health = [r for _, r in reader.records(Kind.HEALTH)]
        assert isinstance(health[0], HealthRecord)
        bus_events = [h.values["event"] for h in health if h.kind == BUS_HEALTH_KIND]
        assert bus_events == ["port_lost", "port_restored"]
        assert [h.values.get("event") for h in health if h.kind == 1] == ["start", "stop"]


def test_untrusted_time_marks_readings(tmp_path: Path) -> None:
    from gateway.clock import ManualClock
    from gateway.protocols.quantities import FLAG_TIME_UNTRUSTED

    clock = ManualClock(datetime(2024, 6, 1, 4, 0, tzinfo=UTC), trusted=False)
    with bench(
        str(tmp_path), [("mb", "modbus", 38400)], meters("mb", "modbus", 2), CONTINUOUS, clock
    ) as b:
        wait_for(every_meter_read(b), 10, "every meter read")
        assert all(r.flags & FLAG_TIME_UNTRUSTED for r in b.journal.readings())
