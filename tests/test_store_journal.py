"""Journal records through the store and back: every kind, typed, in order."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlite_utils import Database

from gateway.errors import StoreError
from gateway.protocols.batch import HealthRecord, MeterEvent, TaskKind, TaskResult, TaskStatus
from gateway.protocols.quantities import Quantity, Reading
from gateway.store import JournalReader, Kind, Record, Store
from gateway.store.db import PAGE_SIZE

INT64 = st.integers(-(2**63), 2**63 - 1)
METERS = st.text(min_size=0, max_size=14)
VALUES = st.dictionaries(st.sampled_from(list(Quantity)), INT64, max_size=6)
TEXT_OR_INT = st.one_of(st.text(max_size=10), INT64)

readings = st.builds(Reading, meter=METERS, ts_ms=INT64, values=VALUES, flags=INT64)
events = st.builds(
    MeterEvent,
    meter=METERS,
    ts_ms=INT64,
    code=INT64,
    detail=st.dictionaries(TEXT_OR_INT, TEXT_OR_INT, max_size=4),
)
tasks = st.builds(
    TaskResult,
    meter=st.sampled_from(["000000000001", "bus1:7", ""]),
    kind=st.sampled_from(list(TaskKind)),
    business_day=st.dates(date(2000, 1, 1), date(2099, 12, 31)),
    status=st.sampled_from(list(TaskStatus)),
    freeze_ts_ms=st.none() | INT64,
    values=VALUES,
)
health = st.builds(
    HealthRecord,
    ts_ms=INT64,
    kind=INT64,
    values=st.dictionaries(st.text(max_size=10), TEXT_OR_INT, max_size=4),
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "store.db", gateway_id="gw-test", now_ms=lambda: 1_000)
    yield opened
    opened.close()


def stored(store: Store, kind: Kind) -> list[Record]:
    with store.reader() as reader:
        return [record for _, record in reader.records(kind, limit=10**6)]


@settings(max_examples=25, deadline=None)
@given(
    st.lists(readings, max_size=40),
    st.lists(events, max_size=10),
    st.lists(tasks, max_size=10),
    st.lists(health, max_size=10),
)
def test_every_kind_round_trips_in_order(
    some_readings: list[Reading],
    some_events: list[MeterEvent],
    some_tasks: list[TaskResult],
    some_health: list[HealthRecord],
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = Store.open(Path(folder) / "s.db", gateway_id="gw", now_ms=lambda: 5)
        try:
            store.submit_many([*some_readings, *some_events, *some_tasks])
            for record in some_health:
                store.submit(record)
            assert store.flush(10)
            assert stored(store, Kind.READINGS) == some_readings
            assert stored(store, Kind.EVENTS) == some_events
            # one result per meter, kind and day: the last one, at the position it got
            latest: dict[tuple[str, TaskKind, date], TaskResult] = {}
            for task in some_tasks:
                key = (task.meter, task.kind, task.business_day)
                latest.pop(key, None)
                latest[key] = task
            assert stored(store, Kind.TASKS) == list(latest.values())
            # the store's own start record comes first
            assert stored(store, Kind.HEALTH)[1:] == some_health
        finally:
            store.close()


def test_positions_increase_and_pages_follow(store: Store) -> None:
    store.submit_many(Reading(f"m{i % 3}", i, {Quantity.POWER: i}) for i in range(25))
    assert store.flush(10)
    with store.reader() as reader:
        first = reader.records(Kind.READINGS, after=0, limit=10)
        second = reader.records(Kind.READINGS, after=first[-1][0], limit=100)
        assert [pos for pos, _ in first + second] == list(range(1, 26))
        assert reader.last_position(Kind.READINGS) == 25
        assert reader.count(Kind.READINGS) == 25
        assert reader.last_position(Kind.EVENTS) == 0


def test_a_retried_task_replaces_the_days_result_at_a_new_position(store: Store) -> None:
    day = date(2026, 1, 1)
    failed = TaskResult("000000000001", TaskKind.DAILY_FREEZE, day, TaskStatus.FAILED, None)
    other = TaskResult("000000000002", TaskKind.DAILY_FREEZE, day, TaskStatus.FAILED, None)
    ok = TaskResult(
        "000000000001", TaskKind.DAILY_FREEZE, day, TaskStatus.OK, 7, {Quantity.ENERGY_IMPORT: 9}
    )
    [first] = store.submit_durable([failed]).result(10)
    store.submit_durable([other]).result(10)
    with store.reader() as reader:
        assert store.mark_acknowledged(Kind.TASKS, 2).result(10) == 2
        assert reader.unacknowledged(Kind.TASKS) == []
        [again] = store.submit_durable([ok]).result(10)
        assert again > 2 > first
        assert reader.task_result("000000000001", TaskKind.DAILY_FREEZE, day) == (again, ok)
        assert reader.task_result("000000000001", TaskKind.MONTHLY_FREEZE, day) is None
        # the new result is unacknowledged again, so the uplink sends it
        assert reader.unacknowledged(Kind.TASKS) == [(again, ok)]
        assert reader.count(Kind.TASKS) == 2


def test_acknowledged_mark_only_rises_and_never_passes_the_newest(store: Store) -> None:
    store.submit_many(Reading("m", i) for i in range(10))
    store.flush(10)
    with store.reader() as reader:
        assert reader.acknowledged(Kind.READINGS) == 0
        assert store.mark_acknowledged(Kind.READINGS, 4).result(10) == 4
        assert store.mark_acknowledged(Kind.READINGS, 2).result(10) == 4
        assert [p for p, _ in reader.unacknowledged(Kind.READINGS)] == list(range(5, 11))
        assert [p for p, _ in reader.unacknowledged(Kind.READINGS, after=8)] == [9, 10]
        assert [p for p, _ in reader.unacknowledged(Kind.READINGS, limit=2)] == [5, 6]
        # an acknowledgement beyond what exists stops at the newest position
        assert store.mark_acknowledged(Kind.READINGS, 10**6).result(10) == 10
        store.submit(Reading("m", 99))
        store.flush(10)
        assert [r for _, r in reader.unacknowledged(Kind.READINGS)] == [Reading("m", 99)]
        assert reader.acknowledged(Kind.EVENTS) == 0


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (Reading("m", 2**63), "64 bits"),
        (Reading("m", 1, {Quantity.POWER: 2**64}), "POWER"),
        (Reading("m", 1, {99: 1}), "unknown quantity"),  # type: ignore[dict-item]
        (Reading("m", 1, flags=True), "integer"),
        (Reading(7, 1), "text"),  # type: ignore[arg-type]
        (MeterEvent("m", 1, 1, {"x": 1.5}), "integer"),  # type: ignore[dict-item]
        (HealthRecord(1, 1, {1: 1}), "text"),  # type: ignore[dict-item]
        (TaskResult("m", 9, date(2026, 1, 1), TaskStatus.OK, None), "TaskKind"),  # type: ignore[arg-type]
        ("not a record", "not a journal record"),
    ],
)
def test_what_the_store_cannot_hold_is_refused_at_submit(
    store: Store, record: Record, message: str
) -> None:
    good = Reading("m", 1)
    with pytest.raises(StoreError, match=message):
        store.submit(record)
    with pytest.raises(StoreError, match=message):
        store.submit_many([good, record])  # all or none
    store.flush(10)
    assert stored(store, Kind.READINGS) == []
    assert store.stats().queue_depth == 0


def test_meta_names_the_store(store: Store) -> None:
    with store.reader() as reader:
        meta = reader.meta()
    assert meta == store.meta
    assert meta.gateway_id == "gw-test"
    assert meta.created_ms == 1_000
    assert 1 <= meta.epoch < 2**63
    assert meta.schema_version == 11  # ... tariff versions, account records, work-order numbers


def test_typed_reads_per_kind(store: Store) -> None:
    reading, event = Reading("m", 1, {Quantity.POWER: 5}), MeterEvent("m", 2, 3)
    task = TaskResult("m", TaskKind.CURVE, date(2026, 3, 1), TaskStatus.ESTIMATED, None)
    store.submit_many([reading, reading, event, task])
    store.flush(10)
    with store.reader() as reader:
        store.mark_acknowledged(Kind.READINGS, 1).result(10)
        assert reader.readings() == [(1, reading), (2, reading)]
        assert reader.readings(unacknowledged=True) == [(2, reading)]
        assert reader.events() == [(1, event)]
        assert reader.task_results(unacknowledged=True) == [(1, task)]
        assert [h.values["event"] for _, h in reader.health()] == ["start"]


def test_a_new_store_uses_small_pages_and_wal(store: Store) -> None:
    def pragmas(db: Database) -> tuple[int, str, int]:
        return (
            int(db.execute("PRAGMA page_size").fetchone()[0]),
            str(db.execute("PRAGMA journal_mode").fetchone()[0]),
            int(db.execute("PRAGMA synchronous").fetchone()[0]),
        )

    assert store.writer.call(pragmas).result(10) == (PAGE_SIZE, "wal", 1)
    assert PAGE_SIZE == 1024


def test_a_reader_never_creates_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="for reading"):
        JournalReader(tmp_path / "missing.db")
    assert list(tmp_path.iterdir()) == []
