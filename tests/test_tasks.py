"""Collection tasks against the simulator under one ManualClock crossing midnight: the
daily freeze of every DL/T 645 meter, retries, the settlement freeze, back-fill of a
three-day gap from freeze history, time trust; curves and midnight estimates from
the gateway's own readings; the history search on its own."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.clock import ManualClock
from gateway.config import Meter, SerialBus
from gateway.drivers.bus import Bus
from gateway.drivers.dlt645 import Dlt645Driver
from gateway.protocols.batch import HealthKind, HealthRecord, TaskKind, TaskResult, TaskStatus
from gateway.protocols.quantities import (
    FLAG_CURVE,
    FLAG_DISCONTINUITY,
    FLAG_ESTIMATED,
    FLAG_ROLLOVER,
    FLAG_TIME_UNTRUSTED,
    Quantity,
    Reading,
)
from gateway.sim.config import parse_sim_config
from gateway.sim.service import Simulator
from gateway.status import format_status
from gateway.store import Kind, Store
from gateway.tasks import (
    Backfill,
    TaskMeter,
    TaskRunner,
    TaskSettings,
    TickThread,
    block_values,
    freeze_block_di,
    freeze_time_di,
    interpolate,
)

TZ_OFFSET = timedelta(hours=8)  # Asia/Shanghai, no DST
START = datetime(2024, 12, 31, 15, 50, tzinfo=UTC)  # 23:50 local, 31 December
JAN1, DEC31 = date(2025, 1, 1), date(2024, 12, 31)
WATTS = {"m1": 800, "m2": 400, "m3": 1200, "m4": 100}
ADDRESS = {m: f"0000000000{i:02d}" for i, m in enumerate(WATTS, 1)}
SIM = (
    "buses:\n  - {name: d, link: dlt, protocol: dlt645, baud: 19200, parity: E}\nmeters:\n"
    + "".join(
        f'  - {{id: {m}, bus: d, address: "{ADDRESS[m]}", turnaround_ms: 5,'
        f" energy_import_wh: {100_000 * i + 7}, load: {{kind: constant, watts: {w}}}}}\n"
        for i, (m, w) in enumerate(WATTS.items(), 1)
    )
)


def local(day: date, hour: int = 0, minute: int = 0) -> datetime:
    """Local wall time of the business zone, as UTC."""
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC) - TZ_OFFSET


def ms(instant: datetime) -> int:
    return int(instant.timestamp()) * 1000


class ListJournal:
    def __init__(self) -> None:
        self.records: list[object] = []
        self.lock = threading.Lock()

    def submit(self, record: object) -> None:
        with self.lock:
            self.records.append(record)

    def tasks(self, kind: TaskKind | None = None) -> list[TaskResult]:
        return [
            r
            for r in self.records
            if isinstance(r, TaskResult) and (kind is None or r.kind is kind)
        ]

    def latest(self) -> dict[tuple[str, TaskKind, date], TaskResult]:
        return {(r.meter, r.kind, r.business_day): r for r in self.tasks()}


@dataclass
class Bench:
    sim: Simulator
    clock: ManualClock
    bus: Bus
    journal: ListJournal
    meters: list[TaskMeter]

    def runner(self, **settings: object) -> TaskRunner:
        return TaskRunner(
            self.clock,
            self.meters,
            lambda meter: self.bus,
            self.journal,
            TaskSettings(**settings),  # type: ignore[arg-type]
        )

    def at(self, runner: TaskRunner, instant: datetime) -> None:
        self.clock.set(instant)
        runner.tick()

    def freeze_truth(self, meter: str, n: int) -> tuple[str, int]:
        """(time, import Wh as the meter shows it) of the n-th last daily freeze."""
        frozen = self.sim.truth(meter)["meters"][meter]["daily_freezes"][n - 1]
        return frozen["at"], frozen["import_wh"] // 10 * 10


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    clock = ManualClock(START)
    config = parse_sim_config(SIM, "tasks.yaml", link_dir=str(tmp_path))
    with Simulator(config, clock) as sim:
        line = SerialBus("d", sim.bus("d").path, "dlt645", baud=19200, parity="E", timeout=0.15)
        meters = [Meter(m, "d", address=a) for m, a in ADDRESS.items()]
        bus = Bus(line, {m.id: Dlt645Driver(m, line) for m in meters}, clock=clock).start()
        try:
            yield Bench(
                sim,
                clock,
                bus,
                ListJournal(),
                [TaskMeter(m, "dlt645", a) for m, a in ADDRESS.items()],
            )
        finally:
            bus.stop()


def test_daily_and_settlement_freezes_of_every_meter_across_midnight(bench: Bench) -> None:
    runner = bench.runner()
    bench.at(runner, START)  # 23:50: the 31st's freeze is due, but these meters have none
    jobs = runner.jobs
    assert jobs >= len(WATTS)
    bench.at(runner, local(JAN1, 0, 1))  # the day ended; nothing is read before 00:05
    assert runner.jobs == jobs
    latest = bench.journal.latest()
    for m in WATTS:
        assert latest[(m, TaskKind.DAILY_FREEZE, DEC31)].status is TaskStatus.FAILED
    assert runner.status_of("m1", TaskKind.DAILY_FREEZE, JAN1) is None
    bench.at(runner, local(JAN1, 0, 5))
    latest = bench.journal.latest()
    for m in WATTS:
        result = latest[(m, TaskKind.DAILY_FREEZE, JAN1)]
        at, import_wh = bench.freeze_truth(m, 1)
        assert at == "2025-01-01T00:00:00+08:00"
        assert result.status is TaskStatus.OK
        assert result.freeze_ts_ms == ms(local(JAN1))
        # 23:50 .. 00:00 of constant power on top of the start register
        assert import_wh // 10 == (100_000 * int(m[1]) + 7 + WATTS[m] * 10 // 60) // 10
        assert result.values[Quantity.ENERGY_IMPORT] == import_wh
        assert result.values[Quantity.ENERGY_T1] == import_wh  # no slot table: all tariff 1
    # 1 January is the settlement day: the settlement block equals the day's freeze
    bench.at(runner, local(JAN1, 0, 6))
    latest = bench.journal.latest()
    for m in WATTS:
        monthly = latest[(m, TaskKind.MONTHLY_FREEZE, JAN1)]
        assert monthly.status is TaskStatus.OK
        assert monthly.values == latest[(m, TaskKind.DAILY_FREEZE, JAN1)].values
    done = runner.completion(JAN1)
    assert done["daily_freeze"] == {
        "expected": 4,
        "ok": 4,
        "failed": 0,
        "estimated": 0,
        "pending": 0,
        "rate": 1.0,
    }
    assert done["monthly_freeze"]["ok"] == 4  # type: ignore[index]
    assert runner.completion(DEC31)["daily_freeze"]["failed"] == 4  # type: ignore[index]
    assert bench.sim.bus("d").counters.collisions == 0


def test_a_meter_silent_at_0005_is_collected_on_retry(bench: Bench) -> None:
    runner = bench.runner(backfill_days=1)  # no back-fill: every failed read is the daily one
    bench.clock.set(local(JAN1, 0, 4))
    bench.sim.fault("m2", "silent")
    tried: list[datetime] = []
    instant = local(JAN1, 0, 5)
    while instant <= local(JAN1, 3, 0):
        if instant == local(JAN1, 2, 0):
            bench.sim.clear("m2")  # back at 02:00
        failed = runner.failed_jobs
        bench.at(runner, instant)
        if runner.failed_jobs > failed:
            tried.append(instant)
        if instant < local(JAN1, 2, 50):
            assert runner.status_of("m2", TaskKind.DAILY_FREEZE, JAN1) is None, instant
        instant += timedelta(minutes=5)
    result = bench.journal.latest()[("m2", TaskKind.DAILY_FREEZE, JAN1)]
    assert result.status is TaskStatus.OK
    assert result.values[Quantity.ENERGY_IMPORT] == bench.freeze_truth("m2", 1)[1]
    # the daily read failed at 00:05, then 15, 30, 60 minutes later; OK at 02:50
    assert tried == [local(JAN1, h, m) for h, m in ((0, 5), (0, 20), (0, 50), (1, 50))]
    assert all(
        bench.journal.latest()[(m, TaskKind.DAILY_FREEZE, JAN1)].status is TaskStatus.OK
        for m in WATTS
    )
    assert runner.completion(JAN1)["daily_freeze"]["rate"] == 1.0  # type: ignore[index]


def test_a_three_day_gap_is_backfilled_from_freeze_history(bench: Bench) -> None:
    runner = bench.runner()
    bench.at(runner, local(JAN1, 0, 30))
    assert runner.status_of("m1", TaskKind.DAILY_FREEZE, JAN1) is TaskStatus.OK
    # the gateway is stopped for three days; the meters run and freeze at their midnights
    bench.clock.set(local(date(2025, 1, 4), 10, 0))
    jobs = runner.jobs
    for minute in range(12):
        bench.at(runner, local(date(2025, 1, 4), 10, minute))
        if not runner.status()["backfill"]:
            break
    assert not runner.status()["backfill"]
    latest = bench.journal.latest()
    days = [date(2025, 1, d) for d in (4, 3, 2, 1)]
    for m in WATTS:
        for n, day in enumerate(days, 1):
            at, import_wh = bench.freeze_truth(m, n)
            result = latest[(m, TaskKind.DAILY_FREEZE, day)]
            assert at == f"{day.isoformat()}T00:00:00+08:00"
            assert result.status is TaskStatus.OK, (m, day)
            assert result.values[Quantity.ENERGY_IMPORT] == import_wh
            assert result.freeze_ts_ms == ms(local(day))
    # the two missed days ended FAILED first, then the back-fill replaced them
    statuses = [
        r.status
        for r in bench.journal.tasks(TaskKind.DAILY_FREEZE)
        if r.meter == "m1" and r.business_day == date(2025, 1, 2)
    ]
    assert statuses == [TaskStatus.FAILED, TaskStatus.OK]
    # per meter: today's freeze, positions 2 and 3, then 5 (nothing: the history ends)
    # and 4 (1 January: 31 December is not in the history)
    assert runner.jobs - jobs == 5 * len(WATTS)


def test_untrusted_time_runs_no_task_and_says_why_once(bench: Bench) -> None:
    bench.clock.distrust()
    runner = bench.runner()
    for minute in (0, 5, 20, 59):
        bench.at(runner, local(JAN1, 0, minute))
    assert runner.jobs == 0
    assert bench.sim.bus("d").log_total == 0  # not one frame on the line
    assert bench.journal.tasks() == []
    health = [r for r in bench.journal.records if isinstance(r, HealthRecord)]
    assert len(health) == 1
    assert health[0].kind == HealthKind.TIME_SOURCE
    assert health[0].values["reason"] == "time untrusted"
    assert runner.status()["suspended"] == "time untrusted"
    bench.clock.trust("ntp")
    bench.at(runner, local(JAN1, 1, 0))
    assert runner.status()["suspended"] is None
    assert runner.status_of("m3", TaskKind.DAILY_FREEZE, JAN1) is TaskStatus.OK


def test_results_go_to_the_store_and_a_restart_does_not_read_them_again(
    bench: Bench, tmp_path: Path
) -> None:
    store = Store.open(tmp_path / "gw.db", gateway_id="gw-test", check="none")
    try:
        meters, bus = bench.meters, bench.bus
        with store.reader() as history:
            first = TaskRunner(bench.clock, meters, lambda m: bus, store.writer, history=history)
            bench.clock.set(local(JAN1, 0, 30))
            first.tick()
        assert store.flush(5.0)
        with store.reader() as reader:
            entry = reader.task_result("m4", TaskKind.DAILY_FREEZE, JAN1)
        assert entry is not None
        assert entry[1].status is TaskStatus.OK
        assert entry[1].values[Quantity.ENERGY_IMPORT] == bench.freeze_truth("m4", 1)[1]
        with store.reader() as history:
            second = TaskRunner(bench.clock, meters, lambda m: bus, store.writer, history=history)
            bench.clock.set(local(JAN1, 1, 0))
            second.tick()
        assert store.flush(5.0)
        # today's freezes are known: the tick reads only the settlement freezes
        assert second.jobs == len(WATTS)
        assert second.status_of("m4", TaskKind.MONTHLY_FREEZE, JAN1) is TaskStatus.OK
        with store.reader() as reader:
            again = reader.task_result("m4", TaskKind.DAILY_FREEZE, JAN1)
        assert again == entry  # not recorded again (a replaced result gets a new position)
    finally:
        store.close()


def test_the_thread_wrapper_ticks_until_stopped(bench: Bench) -> None:
    bench.clock.set(local(JAN1, 0, 30))
    runner = bench.runner()
    ticked = threading.Event()
    thread = TickThread([runner.tick, ticked.set], interval=0.01).start()
    assert ticked.wait(10.0)
    thread.stop()
    assert runner.status_of("m1", TaskKind.DAILY_FREEZE, JAN1) is TaskStatus.OK


# --- meters without freezes: curves and midnight estimates ----------------------------------


def modbus_runner(clock: ManualClock) -> tuple[TaskRunner, ListJournal]:
    journal = ListJournal()

    def no_bus(meter: str) -> object:
        raise AssertionError("a Modbus meter's tasks never use its bus")

    meters = [TaskMeter("mb", "modbus", ratio=1)]
    return TaskRunner(clock, meters, no_bus, journal), journal  # type: ignore[arg-type]


def test_a_meter_without_freezes_gets_an_estimated_midnight_value_and_a_curve() -> None:
    clock = ManualClock(local(DEC31, 0, 0))
    runner, journal = modbus_runner(clock)
    feed = runner.tee(journal)
    runner.tick()
    start = local(DEC31, 0, 0)
    # a reading every 7 minutes from 23:53 the day before; 60 Wh per minute
    for i in range(-7, 24 * 60 + 30, 7):
        at = start + timedelta(minutes=i)
        clock.set(at)
        feed.submit(Reading("mb", ms(at), {Quantity.ENERGY_IMPORT: 100_000 + 60 * i}))
        runner.tick()
    latest = journal.latest()
    daily = latest[("mb", TaskKind.DAILY_FREEZE, JAN1)]
    assert daily.status is TaskStatus.ESTIMATED
    assert daily.freeze_ts_ms == ms(local(JAN1))
    assert daily.values == {Quantity.ENERGY_IMPORT: 100_000 + 60 * 24 * 60}  # exact: linear load
    monthly = latest[("mb", TaskKind.MONTHLY_FREEZE, JAN1)]
    assert monthly.status is TaskStatus.ESTIMATED and monthly.values == daily.values
    points = [r for r in journal.records if isinstance(r, Reading) and r.flags & FLAG_CURVE]
    day_points = [p for p in points if ms(start) <= p.ts_ms < ms(local(JAN1))]
    assert len(day_points) == 96
    assert all(p.ts_ms % 900_000 == 0 for p in points)
    for p in day_points:
        minutes = (p.ts_ms - ms(start)) // 60_000
        assert p.values == {Quantity.ENERGY_IMPORT: 100_000 + 60 * minutes}
        on_reading = minutes % 7 == 0
        assert p.flags == (FLAG_CURVE if on_reading else FLAG_CURVE | FLAG_ESTIMATED)
    curve = latest[("mb", TaskKind.CURVE, DEC31)]
    assert curve.status is TaskStatus.ESTIMATED  # every point of the 31st was made
    assert runner.completion(DEC31)["curve"] == {
        "expected": 1,
        "ok": 0,
        "failed": 0,
        "estimated": 1,
        "pending": 0,
        "rate": 1.0,
        "points": 96,
        "points_expected": 96,
    }


def test_a_gap_in_readings_fails_the_curve_and_an_unread_midnight_fails_the_day() -> None:
    clock = ManualClock(local(DEC31, 12, 0))
    runner, journal = modbus_runner(clock)
    feed = runner.tee(journal)
    runner.tick()
    for minute in (0, 10, 20, 70, 80):  # 50 minutes without a reading: no points there
        at = local(DEC31, 12) + timedelta(minutes=minute)
        feed.submit(Reading("mb", ms(at), {Quantity.ENERGY_IMPORT: 1000 + minute}))
    assert runner.curves.points("mb", DEC31) == 2  # 12:15 and 13:15; none from 12:20 to 13:10
    clock.set(local(date(2025, 1, 2), 1, 0))  # no reading near midnight at all
    runner.tick()
    latest = journal.latest()
    assert latest[("mb", TaskKind.CURVE, DEC31)].status is TaskStatus.FAILED
    assert latest[("mb", TaskKind.DAILY_FREEZE, JAN1)].status is TaskStatus.FAILED
    assert latest[("mb", TaskKind.MONTHLY_FREEZE, JAN1)].status is TaskStatus.FAILED


def test_a_clock_that_jumps_a_year_closes_only_the_backfill_window() -> None:
    clock = ManualClock(local(DEC31, 12, 0))
    runner, journal = modbus_runner(clock)
    runner.tick()
    clock.set(local(date(2026, 6, 1), 12, 0))
    runner.tick()
    days = {r.business_day for r in journal.tasks(TaskKind.DAILY_FREEZE)}
    assert len(days) == 62
    assert min(days) == date(2026, 6, 1) - timedelta(days=62)
    assert all(r.status is TaskStatus.FAILED for r in journal.tasks())


def test_untrusted_readings_make_no_curve_point() -> None:
    clock = ManualClock(local(DEC31, 12, 0))
    runner, journal = modbus_runner(clock)
    feed = runner.tee(journal)
    feed.submit(Reading("mb", ms(local(DEC31, 12, 10)), {Quantity.ENERGY_IMPORT: 10}))
    feed.submit(
        Reading("mb", ms(local(DEC31, 12, 20)), {Quantity.ENERGY_IMPORT: 20}, FLAG_TIME_UNTRUSTED)
    )
    feed.submit(Reading("mb", ms(local(DEC31, 12, 25)), {Quantity.ENERGY_IMPORT: 25}))
    feed.submit(Reading("other", ms(local(DEC31, 12, 40)), {Quantity.ENERGY_IMPORT: 25}))
    assert runner.curves.points_made == 0
    assert len(journal.records) == 4  # the readings themselves, passed through


def reading(minute: int, value: int, flags: int = 0) -> Reading:
    return Reading("x", minute * 60_000, {Quantity.ENERGY_IMPORT: value}, flags)


def test_interpolation_rounds_down_and_crosses_a_rollover_but_not_a_discontinuity() -> None:
    assert interpolate(reading(0, 100), reading(3, 110), 60_000) == {Quantity.ENERGY_IMPORT: 103}
    assert interpolate(reading(0, 100), reading(3, 110), 180_000) == {Quantity.ENERGY_IMPORT: 110}
    wrap = 1_000_000_000 * 2  # CT x PT 2
    rolled = interpolate(reading(0, wrap - 40), reading(4, 40, FLAG_ROLLOVER), 60_000, ratio=2)
    assert rolled == {Quantity.ENERGY_IMPORT: wrap - 20}
    after = interpolate(reading(0, wrap - 40), reading(4, 40, FLAG_ROLLOVER), 180_000, ratio=2)
    assert after == {Quantity.ENERGY_IMPORT: 20}
    assert interpolate(reading(0, 100), reading(3, 50, FLAG_DISCONTINUITY), 60_000) is None
    assert interpolate(reading(0, 100), reading(3, 50), 60_000) is None  # backwards, unflagged
    assert interpolate(reading(0, 100), reading(3, 50, FLAG_DISCONTINUITY), 180_000) == {
        Quantity.ENERGY_IMPORT: 50
    }


# --- the freeze data and the history search ----------------------------------------------


def test_freeze_dis_and_block_values() -> None:
    assert freeze_time_di(1) == 0x05060001 and freeze_block_di(0x3E) == 0x0506013E
    with pytest.raises(ValueError):
        freeze_time_di(0x3F)
    from decimal import Decimal

    block = {
        "total": Decimal("12.34"),
        "t1": Decimal("1.00"),
        "t2": Decimal("11.34"),
        "t3": Decimal(0),
        "t4": Decimal(0),
    }
    assert block_values(block, 60) == {
        Quantity.ENERGY_IMPORT: 740_400,
        Quantity.ENERGY_T1: 60_000,
        Quantity.ENERGY_T2: 680_400,
        Quantity.ENERGY_T3: 0,
        Quantity.ENERGY_T4: 0,
    }
    assert block_values(Decimal(1), 1) is None


def search(history: list[date], today: date, missing: list[date]) -> tuple[set[date], int]:
    """Run a Backfill against ``history`` (newest first): the days found, probes made."""
    state = Backfill("x", today, missing)
    found: set[date] = set()
    probes = 0
    while (n := state.next_probe()) is not None:
        probes += 1
        assert probes <= 62 * 2
        day = history[n - 1] if n <= len(history) else None
        state.seen(n, day)
        if day is not None and day in state.missing:
            found.add(day)
            state.found(day)
    return found, probes


def test_the_search_skips_a_day_the_meter_missed_and_a_clock_behind() -> None:
    today = date(2025, 3, 10)
    # the meter was off on the 7th (no freeze) and has not frozen today yet
    history = [date(2025, 3, d) for d in (9, 8, 6, 5, 4)]
    found, probes = search(history, today, [date(2025, 3, d) for d in (9, 8, 7, 6, 5, 1)])
    assert found == {date(2025, 3, d) for d in (9, 8, 6, 5)}
    assert probes <= 8


@given(
    st.sets(st.integers(0, 61), max_size=62),
    st.sets(st.integers(1, 61), min_size=1, max_size=20),
    st.integers(0, 2),
)
def test_the_search_finds_exactly_the_missing_days_the_meter_keeps(
    kept: set[int], wanted: set[int], behind: int
) -> None:
    today = date(2025, 3, 31)
    history = [today - timedelta(days=k + behind) for k in sorted(kept)][:62]
    missing = [today - timedelta(days=k) for k in wanted]
    found, probes = search(history, today, missing)
    assert found == set(missing) & set(history)
    assert probes <= 62  # every probe reads a position not read before
    if behind == 0 and len(kept) == 62:  # a full history: one probe per missing day
        assert probes == len(missing)


# --- wired into the runtime ----------------------------------------------------------------


def test_attached_to_the_runtime_across_midnight(tmp_path: Path) -> None:
    from polling import gateway_yaml, meters, sim_yaml, wait_for

    from gateway.config import parse_config
    from gateway.poller import PollSettings
    from gateway.runtime import Runtime
    from gateway.tasks.attach import attach

    buses = [("dl", "dlt645", 19200), ("mb", "modbus", 19200)]
    ms_ = meters("dl", "dlt645", 2, turnaround_ms=5) + meters("mb", "modbus", 2, turnaround_ms=5)
    clock = ManualClock(local(DEC31, 23, 58))
    sim_config = parse_sim_config(sim_yaml(buses, ms_), "s.yaml", link_dir=str(tmp_path))
    with Simulator(sim_config, clock) as sim:
        config = parse_config(gateway_yaml(sim, buses, ms_), "gw.yaml")
        rt = Runtime(
            config,
            store_path=tmp_path / "gw.db",
            clock=clock,
            settings=PollSettings(interval=0),
            status_socket=tmp_path / "s.sock",
        )
        with rt:
            calendar = attach(rt, interval=0.01)
            try:
                runner = calendar.tasks
                # the gateway polls while its clock runs 40 s per step to 00:06
                while clock.now() < local(JAN1, 0, 6):
                    polled = sum(p.readings for p in rt.pollers.values())
                    wait_for(
                        lambda n=polled: sum(p.readings for p in rt.pollers.values()) > n + 2,  # type: ignore[misc]
                        10,
                        "polls",
                    )
                    clock.advance(40)
                for m in ("dl1", "dl2"):
                    wait_for(
                        lambda m=m: (
                            runner.status_of(m, TaskKind.DAILY_FREEZE, JAN1) is TaskStatus.OK
                        ),  # type: ignore[misc]
                        10,
                        f"{m}'s freeze",
                    )
                for m in ("mb1", "mb2"):
                    status = runner.status_of(m, TaskKind.DAILY_FREEZE, JAN1)
                    assert status is TaskStatus.ESTIMATED, m
                assert rt.status()["tasks"]["today"]["daily_freeze"]["rate"] == 1.0  # type: ignore[index]
                assert "timesync" in rt.status()
                # what `gateway status` prints: the day's completion per task kind
                shown = format_status(rt.status()).splitlines()
                (line,) = [x for x in shown if x.startswith("tasks ")]
                assert line.startswith(f"tasks {JAN1.isoformat()}: "), line
                n = len(rt.config.meters)
                assert f"daily_freeze {n}/{n}" in line, line
            finally:
                calendar.stop()
            assert rt.store is not None and rt.store.flush(5.0)
            with rt.store.reader() as reader:
                entry = reader.task_result("mb1", TaskKind.DAILY_FREEZE, JAN1)
                points = [
                    r
                    for _, r in reader.records(Kind.READINGS, limit=100_000)
                    if isinstance(r, Reading) and r.flags & FLAG_CURVE
                ]
            assert entry is not None and isinstance(entry[1], TaskResult)
            midnight = entry[1].values[Quantity.ENERGY_IMPORT]
            at_midnight = [p for p in points if p.meter == "mb1" and p.ts_ms == ms(local(JAN1))]
            assert [p.values[Quantity.ENERGY_IMPORT] for p in at_midnight] == [midnight]
            # 100 W from 123 450 Wh since 23:58, CT 60: the estimate is within 1 Wh x CT
            truth = (123_450 + 100 * 2 * 60 // 3600) * 60
            assert abs(midnight - truth) <= 60
