"""Retention: acknowledged readings go first, then unacknowledged ones with an event
naming exactly what went; events, task results and health are never touched."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from gateway.protocols.batch import HealthRecord, MeterEvent, TaskKind, TaskResult, TaskStatus
from gateway.protocols.quantities import Quantity, Reading
from gateway.store import EVENT_READINGS_DROPPED, Entry, Kind, Store
from gateway.store.db import used_bytes
from gateway.store.outbox import Outbox

T0 = 1_767_225_600_000
NOW = T0 + 86_400_000
METERS = 8
READINGS = 4000


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "s.db", gateway_id="gw", now_ms=lambda: NOW)
    opened.submit_many(
        Reading(f"m{i % METERS}", T0 + i * 1000, {Quantity.ENERGY_IMPORT: 10**7 + i})
        for i in range(READINGS)
    )
    opened.submit_many(MeterEvent(f"m{i}", T0 + i, 1, {"n": i}) for i in range(20))
    opened.submit_many(
        TaskResult(f"m{i}", TaskKind.DAILY_FREEZE, date(2026, 1, 1), TaskStatus.OK, T0, {})
        for i in range(METERS)
    )
    opened.submit_many(HealthRecord(T0 + i, 3, {"sw": "1"}) for i in range(20))
    assert opened.flush(10)
    yield opened
    opened.close()


def used(store: Store) -> int:
    return store.writer.call(used_bytes).result(10)


def positions(store: Store) -> list[int]:
    with store.reader() as reader:
        return [p for p, _ in reader.records(Kind.READINGS, limit=10**6)]


def others(store: Store) -> tuple[list[Entry], list[Entry], list[Entry]]:
    with store.reader() as reader:
        return (
            reader.records(Kind.EVENTS, limit=10**6),
            reader.records(Kind.TASKS, limit=10**6),
            reader.records(Kind.HEALTH, limit=10**6),
        )


def test_under_the_bound_nothing_happens(store: Store) -> None:
    result = store.enforce_retention(used(store)).result(10)
    assert (result.pruned, result.dropped, result.over_budget) == (0, (), False)
    assert positions(store) == list(range(1, READINGS + 1))


def test_acknowledged_readings_go_first_oldest_first(store: Store) -> None:
    before = others(store)
    store.mark_acknowledged(Kind.READINGS, 2000).result(10)
    size = used(store)
    result = store.enforce_retention(size - 20_000).result(10)
    assert result.used_before == size
    assert result.used_after <= (size - 20_000) * 0.9
    assert result.pruned > 0
    assert result.dropped == ()
    left = positions(store)
    assert left == list(range(result.pruned + 1, READINGS + 1))  # oldest went, all of them
    assert result.pruned <= 2000
    assert others(store) == before
    assert store.stats().readings_pruned == result.pruned
    assert store.stats().readings_dropped == 0


def test_unacknowledged_readings_go_next_with_events_naming_the_range(store: Store) -> None:
    events, tasks, health = others(store)
    store.mark_acknowledged(Kind.READINGS, 1000).result(10)
    result = store.enforce_retention(used(store) // 2).result(10)
    assert result.pruned == 1000
    dropped = result.dropped
    assert dropped and not result.over_budget
    left = positions(store)
    gone = set(range(1, READINGS + 1)) - set(left)
    assert gone == set(range(1, left[0]))  # still oldest first, no holes
    assert result.dropped_count == len(gone) - 1000
    # each meter's range is exact: its count, first and last positions and times (a pass
    # may delete in several rounds, each naming its own range)
    for drop in dropped:
        mine = [
            p
            for p in range(drop.first_id, drop.last_id + 1)
            if f"m{(p - 1) % METERS}" == drop.meter
        ]
        assert drop.count == len(mine)
        assert (drop.first_id, drop.last_id) == (mine[0], mine[-1])
        assert (drop.first_ts_ms, drop.last_ts_ms) == (
            T0 + (mine[0] - 1) * 1000,
            T0 + (mine[-1] - 1) * 1000,
        )
    assert {d.meter for d in dropped} == {f"m{i}" for i in range(METERS)}
    for i in range(METERS):
        mine = [p for p in range(1001, left[0]) if (p - 1) % METERS == i]
        assert sum(d.count for d in dropped if d.meter == f"m{i}") == len(mine)
    new_events, new_tasks, new_health = others(store)
    assert new_events[: len(events)] == events
    assert (new_tasks, new_health) == (tasks, health)
    journalled = [record for _, record in new_events[len(events) :]]
    assert journalled == [
        MeterEvent(
            d.meter,
            NOW,
            EVENT_READINGS_DROPPED,
            {
                "count": d.count,
                "first_id": d.first_id,
                "last_id": d.last_id,
                "first_ts_ms": d.first_ts_ms,
                "last_ts_ms": d.last_ts_ms,
            },
        )
        for d in dropped
    ]
    assert store.stats().readings_dropped == result.dropped_count


def test_an_impossible_bound_keeps_the_newest_reading_and_positions_keep_rising(
    store: Store,
) -> None:
    events, tasks, health = others(store)
    result = store.enforce_retention(1).result(10)
    assert result.over_budget
    assert positions(store) == [READINGS]
    new_events, new_tasks, new_health = others(store)
    assert new_events[: len(events)] == events
    assert (new_tasks, new_health) == (tasks, health)
    store.submit(Reading("m0", NOW))
    assert store.flush(10)
    assert positions(store) == [READINGS, READINGS + 1]


def test_freed_pages_are_reused_so_the_file_stops_growing(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db", gateway_id="gw") as store:
        for round_ in range(6):
            store.submit_many(
                Reading(f"m{i % 16}", i, {Quantity.ENERGY_IMPORT: i}) for i in range(3000)
            )
            store.flush(10)
            with store.reader() as reader:
                store.mark_acknowledged(Kind.READINGS, reader.last_position(Kind.READINGS))
            store.enforce_retention(60_000).result(10)
            if round_ == 1:
                size = (tmp_path / "s.db").stat().st_size
        assert (tmp_path / "s.db").stat().st_size == size


def test_the_writer_enforces_the_bound_periodically(tmp_path: Path) -> None:
    with Store.open(
        tmp_path / "s.db", gateway_id="gw", max_bytes=60_000, retention_interval=0.05
    ) as store:
        store.submit_many(Reading(f"m{i % 4}", i, {Quantity.POWER: i}) for i in range(5000))
        store.flush(10)
        # a pass may already have run while the file was still small: wait for one
        # that found it too big (the writer runs them on its own, every 50 ms here)
        deadline = time.monotonic() + 10
        while store.stats().readings_dropped == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = store.stats()
        assert stats.retention_runs >= 1
        assert stats.readings_dropped > 0
        assert used(store) <= 60_000
        with store.reader() as reader:
            codes = [r.code for _, r in reader.events()]
        assert set(codes) == {EVENT_READINGS_DROPPED}
        assert stats.transactions <= 3  # retention passes are not group commits


def test_readings_held_by_an_outbox_batch_are_not_called_dropped(store: Store) -> None:
    # Batches built before an outage keep their own copies of the readings, so deleting
    # those rows for space loses nothing: no READINGS_DROPPED event may claim them.
    store.mark_acknowledged(Kind.READINGS, 1000).result(10)
    Outbox(store, batch_size=200, live_threshold=10**6).build(live=2).result(10)
    ranges = store.writer.call(
        lambda db: db.execute("SELECT readings_from, readings_to FROM outbox").fetchall()
    ).result(10)
    batched = {p for lo, hi in ranges for p in range(lo + 1, hi + 1)}
    assert len(batched) == 400 and min(batched) > 0
    result = store.enforce_retention(used(store) // 2).result(10)
    left = set(positions(store))
    gone = set(range(1, READINGS + 1)) - left
    assert batched <= gone  # the batches' rows were deleted too ...
    claimed = {
        p
        for d in result.dropped
        for p in range(d.first_id, d.last_id + 1)
        if f"m{(p - 1) % METERS}" == d.meter
    }
    assert not claimed & batched  # ... but no event claims them lost
    assert claimed == gone - batched - set(range(1, 1001))  # every lost one is claimed
    assert result.dropped_count == len(claimed)
    assert result.pruned == 1000 + len(batched)
