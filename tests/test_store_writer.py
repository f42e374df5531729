"""The store-writer thread: group commit, durable commits, many submitters, failures."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlite_utils import Database

from gateway.errors import StoreError
from gateway.protocols.batch import MeterEvent
from gateway.protocols.quantities import Quantity, Reading
from gateway.store import Kind, Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "store.db", gateway_id="gw", max_delay=0.2)
    yield opened
    opened.close()


def test_group_commit_coalesces_many_submits_into_few_transactions(store: Store) -> None:
    for i in range(5000):
        store.submit(Reading(f"m{i % 128}", i, {Quantity.ENERGY_IMPORT: i}))
    assert store.flush(10)
    stats = store.stats()
    assert stats.records_written == 5000
    assert stats.transactions <= 50, stats
    assert stats.max_batch >= 100
    assert stats.queue_depth == 0
    with store.reader() as reader:
        assert reader.count(Kind.READINGS) == 5000


def test_a_lone_record_is_committed_within_max_delay_without_flush(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db", gateway_id="gw", max_delay=0.05) as store:
        store.submit(Reading("m", 1))
        with store.reader() as reader:
            deadline = time.monotonic() + 5
            while reader.count(Kind.READINGS) == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert reader.count(Kind.READINGS) == 1


def test_max_batch_bounds_a_transaction(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db", gateway_id="gw", max_batch=100) as store:
        store.submit_many(Reading("m", i) for i in range(1000))
        for i in range(300):
            store.submit(Reading("m", i))
        assert store.flush(10)
        # one submit_many is never split; single submits stop at the bound
        assert store.stats().max_batch == 1000
        assert store.stats().transactions >= 3


def test_durable_submit_completes_after_an_fsynced_commit(store: Store) -> None:
    store.submit(Reading("m", 1))
    future = store.submit_durable([MeterEvent("m", 2, 7), MeterEvent("m", 3, 8)])
    assert future.result(10) == [1, 2]
    # visible to a new connection at once, and the reading before it too
    with store.reader() as reader:
        assert reader.count(Kind.EVENTS) == 2
        assert reader.count(Kind.READINGS) == 1

    # a durable group runs with synchronous=FULL (2), others with NORMAL (1)
    def level(db: Database) -> int:
        return int(db.execute("PRAGMA synchronous").fetchone()[0])

    assert store.writer.call(level).result(10) == 1
    assert store.writer.call(level, durable=True).result(10) == 2
    assert store.writer.call(level).result(10) == 1


def test_concurrent_submitters_lose_nothing_and_keep_their_order(store: Store) -> None:
    per_thread, threads = 2000, 8

    def work(n: int) -> None:
        for i in range(per_thread):
            if i % 500 == 0:
                store.submit_durable([MeterEvent(f"t{n}", i, 1)]).result(10)
            store.submit(Reading(f"t{n}", i, {Quantity.POWER: n}))

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert store.flush(10)
    with store.reader() as reader:
        rows = [r for _, r in reader.readings(limit=10**6)]
        assert reader.count(Kind.EVENTS) == threads * per_thread // 500
    assert len(rows) == per_thread * threads
    for n in range(threads):
        assert [r.ts_ms for r in rows if r.meter == f"t{n}"] == list(range(per_thread))
    assert store.stats().records_written == len(rows) + threads * per_thread // 500


def test_a_failed_transaction_is_retried_until_it_commits(store: Store) -> None:
    # A second connection makes the store refuse inserts into readings for a while.
    side = sqlite3.connect(store.path)
    try:
        side.executescript(
            "CREATE TABLE refuse (x);"
            "CREATE TRIGGER refuse_readings BEFORE INSERT ON readings"
            " WHEN EXISTS (SELECT 1 FROM refuse) BEGIN SELECT RAISE(ABORT, 'injected'); END;"
            "INSERT INTO refuse VALUES (1);"
        )
        store.submit_many(Reading("m", i) for i in range(10))
        future = store.submit_durable([MeterEvent("m", 1, 1)])
        deadline = time.monotonic() + 5
        while store.stats().failures < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = store.stats()
        assert stats.failing and stats.failures >= 2
        assert "injected" in (stats.last_error or "")
        assert stats.queue_depth == 11
        assert not future.done()
        side.execute("DELETE FROM refuse")
        side.commit()
        assert future.result(10) == [1]
    finally:
        side.close()
    assert store.flush(10)
    assert not store.stats().failing
    with store.reader() as reader:
        assert [r.ts_ms for _, r in reader.readings()] == list(range(10))
        assert reader.count(Kind.EVENTS) == 1


def test_a_failing_call_fails_alone(store: Store) -> None:
    def broken(db: object) -> None:
        raise ValueError("no")

    store.submit(Reading("m", 1))
    bad = store.writer.call(broken)
    with pytest.raises(ValueError, match="no"):
        bad.result(10)
    assert store.flush(10)
    with store.reader() as reader:
        assert reader.count(Kind.READINGS) == 1


def test_close_drains_and_refuses_later_submits(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db", gateway_id="gw", max_delay=5.0)
    store.submit_many(Reading("m", i) for i in range(100))
    store.close()
    store.close()  # twice is harmless
    assert not store.stats().alive
    assert store.stats().queue_depth == 0
    with pytest.raises(StoreError, match="closed"):
        store.submit(Reading("m", 1))
    reopened = Store.open(tmp_path / "s.db", gateway_id="gw")
    try:
        with reopened.reader() as reader:
            assert reader.count(Kind.READINGS) == 100
    finally:
        reopened.close()


def test_close_gives_up_when_the_store_keeps_failing(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db", gateway_id="gw")
    side = sqlite3.connect(store.path)
    try:
        side.executescript(
            "CREATE TRIGGER refuse_all BEFORE INSERT ON readings"
            " BEGIN SELECT RAISE(ABORT, 'disk on fire'); END;"
        )
        store.submit(Reading("m", 1))
        future = store.submit_durable([MeterEvent("m", 1, 1)])
        flushed: list[object] = []

        def wait_for_flush() -> None:
            try:
                flushed.append(store.flush())
            except StoreError as exc:
                flushed.append(exc)

        waiter = threading.Thread(target=wait_for_flush)
        waiter.start()
        time.sleep(0.1)  # the flush is queued (a microsecond's work) before close
        with pytest.raises(StoreError, match="disk on fire"):
            store.close(timeout=0.3)
        with pytest.raises(StoreError, match="gave up"):
            future.result(5)
        waiter.join(5)
        assert flushed == [False]  # a flush waiting without timeout is released
        assert not store.stats().alive
        with pytest.raises(StoreError, match="closed"):
            store.submit(Reading("m", 2))
        store.close()  # and closing again is quiet
    finally:
        side.close()


def test_readings_beyond_max_queue_are_refused_never_durable_ones(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db", gateway_id="gw", max_queue=50) as store:
        side = sqlite3.connect(store.path)
        try:
            side.executescript(
                "CREATE TABLE refuse (x); INSERT INTO refuse VALUES (1);"
                "CREATE TRIGGER stall BEFORE INSERT ON readings"
                " WHEN EXISTS (SELECT 1 FROM refuse) BEGIN SELECT RAISE(ABORT, 'stall'); END;"
            )
            store.submit_many(Reading("m", i) for i in range(50))
            with pytest.raises(StoreError, match="50 records behind"):
                store.submit(Reading("m", 50))
            with pytest.raises(StoreError, match="behind"):
                store.submit_many([Reading("m", 51)])
            future = store.submit_durable([MeterEvent("m", 1, 1)])
            assert store.stats().refused == 2
            side.execute("DELETE FROM refuse")
            side.commit()
            assert future.result(10) == [1]
        finally:
            side.close()
        assert store.flush(10)
        store.submit(Reading("m", 52))  # accepted again once the writer caught up
        assert store.flush(10)
        with store.reader() as reader:
            assert [r.ts_ms for _, r in reader.readings()] == [*range(50), 52]


# --- lingering calls -------------------------------------------------------------------

FAR = 600.0  # a linger no test waits out: a group holding only such calls never commits


def insert(x: int) -> Callable[[Database], int]:
    """A call inserting ``x`` into t; it returns the synchronous level it ran under."""

    def run(db: Database) -> int:
        db.execute("INSERT INTO t VALUES (?)", (x,))
        return int(db.execute("PRAGMA synchronous").fetchone()[0])

    return run


def table_t(store: Store) -> None:
    store.writer.call(lambda db: db.execute("CREATE TABLE t (x INTEGER)"), durable=True).result(10)


def rows_of_t(store: Store) -> list[tuple[int]]:
    return store.writer.call(lambda db: db.execute("SELECT x FROM t").fetchall()).result(10)


def test_lingering_calls_within_the_window_share_one_durable_commit(store: Store) -> None:
    table_t(store)
    before = store.stats()
    first = [store.writer.call(insert(x), durable=True, linger=FAR) for x in (1, 2)]
    store.submit(Reading("m", 1))
    # the last one's window ends first: it commits the group, nothing else cuts it
    last = store.writer.call(insert(3), durable=True, linger=0.05)
    assert [f.result(30) for f in (*first, last)] == [2, 2, 2]  # under synchronous=FULL
    after = store.stats()
    assert after.durable_transactions == before.durable_transactions + 1
    assert after.transactions == before.transactions + 1
    assert after.records_written == before.records_written + 1
    assert rows_of_t(store) == [(1,), (2,), (3,)]


def test_an_immediate_durable_call_cuts_the_window_short(store: Store) -> None:
    table_t(store)
    before = store.stats()
    lingering = [store.writer.call(insert(x), durable=True, linger=FAR) for x in (1, 2)]
    store.submit(Reading("m", 1))
    assert not any(f.done() for f in lingering)
    # a top-up, say: it commits at once and takes the lingering calls along
    assert store.writer.call(insert(3), durable=True).result(30) == 2
    assert all(f.done() and f.result() == 2 for f in lingering)
    after = store.stats()
    assert after.durable_transactions == before.durable_transactions + 1
    assert after.transactions == before.transactions + 1
    assert rows_of_t(store) == [(1,), (2,), (3,)]
    with store.reader() as reader:
        assert reader.count(Kind.READINGS) == 1


@pytest.mark.parametrize("how", ["flush", "nudge", "close"])
def test_flush_nudge_and_close_commit_lingering_calls(tmp_path: Path, how: str) -> None:
    store = Store.open(tmp_path / "s.db", gateway_id="gw")
    table_t(store)
    try:
        futures = [store.writer.call(insert(x), durable=True, linger=FAR) for x in (1, 2)]
        if how == "flush":
            assert store.flush(30)
        elif how == "nudge":
            store.writer.nudge()
        else:
            store.close(timeout=30)
        assert [f.result(30) for f in futures] == [2, 2]
    finally:
        store.close()
    with Store.open(tmp_path / "s.db", gateway_id="gw") as again:
        assert rows_of_t(again) == [(1,), (2,)]


@pytest.mark.parametrize("how", ["ABORT", "ROLLBACK"])
def test_a_failing_lingering_call_fails_alone(store: Store, how: str) -> None:
    table_t(store)
    store.writer.call(
        lambda db: db.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON t WHEN NEW.x = 2"
            f" BEGIN SELECT RAISE({how}, 'injected failure'); END"
        )
    ).result(10)
    before = store.stats()
    store.submit(Reading("m", 1))
    futures = [store.writer.call(insert(x), durable=True, linger=FAR) for x in (1, 2, 3)]
    store.submit(Reading("m", 2))
    assert store.flush(30)
    assert futures[0].result(10) == futures[2].result(10) == 2
    with pytest.raises(sqlite3.IntegrityError, match="injected failure"):
        futures[1].result(10)
    after = store.stats()
    assert after.durable_transactions == before.durable_transactions + 1
    assert not after.failing
    assert rows_of_t(store) == [(1,), (3,)]
    with store.reader() as reader:
        assert [r.ts_ms for _, r in reader.readings()] == [1, 2]


def test_a_negative_linger_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="linger"):
        store.writer.call(lambda db: None, durable=True, linger=-1.0)
