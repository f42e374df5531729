"""Group commit of billed readings (gateway.charging.Charger on gateway.store.writer).

Each billed reading queues one durable store-writer call; the calls queued while the
writer is busy (here: held in a call of the test's) are written in ONE durable
transaction, each in its own savepoint.  One that fails (a real SQLite trigger) is
rolled back alone, the others commit, and it is retried until it is written; a
failure that rolls back the whole transaction (``RAISE(ROLLBACK)``) fails that call
alone too, the rest of the group being written again without it, once.

What the group did is read in an ``after`` hook of a call queued last in it: the
writer runs it right after that commit and the other calls' settlement, before it
can take anything else (a retry) from its queue."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from polling import wait_for
from test_charging_memory import Bench, reading

from gateway.store import Store
from gateway.store.writer import StoreWriter


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    b = Bench(tmp_path / "gw.db", attempts=8, backoff_s=0.05)
    yield b
    b.close()


def hold(writer: StoreWriter) -> threading.Event:
    """Hold the writer thread in a call until the event returned is set."""
    started, release = threading.Event(), threading.Event()

    def block(_db: object) -> None:
        started.set()
        release.wait(60)

    writer.call(block)
    assert started.wait(30)
    return release


def probe(bench: Bench) -> list[tuple[int, int, int]]:
    """(durable commits, readings posted, failed) as of the commit of the group this
    call joins, once it is committed."""
    seen: list[tuple[int, int, int]] = []
    c, writer = bench.charger, bench.store.writer

    def after(_: None) -> None:
        seen.append((writer.stats().durable_transactions, c.posted, c.failed))

    writer.call(lambda _db: None, after=after)
    return seen


def baselines(bench: Bench) -> tuple[int, int, int]:
    c = bench.charger
    for m in ("m1", "m2", "p1"):
        c.submit(reading(m, 0, 0))
    assert c.wait_idle(30)
    return bench.store.writer.stats().durable_transactions, c.posted, c.failed


def queue_three(bench: Bench) -> list[tuple[int, int, int]]:
    """m1 100 Wh (1000), m2 200 Wh (2000) on A, p1 300 Wh (3000) on P, queued together."""
    c = bench.charger
    release = hold(bench.store.writer)
    try:
        c.submit(reading("m1", 60, 100))
        c.submit(reading("m2", 60, 200))
        c.submit(reading("p1", 60, 300))
        seen = probe(bench)
    finally:
        release.set()
    return seen


def test_queued_readings_are_one_durable_transaction(bench: Bench) -> None:
    c = bench.charger
    durable, posted, failed = baselines(bench)
    seen = queue_three(bench)
    assert c.wait_idle(30)
    assert seen == [(durable + 1, posted + 3, failed)]
    assert c.balance("A") == bench.disk_balance("A") == -3_000
    assert c.balance("P") == bench.disk_balance("P") == -3_000
    assert bench.sql("SELECT count(*) FROM readings") == [(6,)]
    assert bench.sql("SELECT meter, amount FROM ledger WHERE kind = 1 ORDER BY id") == [
        ("m1", -1_000),
        ("m2", -2_000),
        ("p1", -3_000),
    ]


@pytest.mark.parametrize("how", ["ABORT", "ROLLBACK"])
def test_a_failing_reading_leaves_its_group_committed_and_is_retried(
    bench: Bench, how: str
) -> None:
    # ABORT fails m2's charge statement; ROLLBACK rolls back the whole transaction
    c = bench.charger
    durable, posted, failed = baselines(bench)
    bench.exec(
        "CREATE TRIGGER fail_m2 BEFORE INSERT ON ledger WHEN NEW.meter = 'm2'"
        f" BEGIN SELECT RAISE({how}, 'injected failure'); END"
    )
    seen = queue_three(bench)
    wait_for(lambda: c.retried >= 2, 20, "m2 retried")
    # one durable commit held m1 and p1; m2 failed in it and is being retried
    assert seen == [(durable + 1, posted + 2, failed + 1)]
    assert c.lost == 0 and c.balance("A") == -3_000  # memory is ahead by m2 only
    assert bench.disk_balance("A") == -1_000 and bench.disk_balance("P") == -3_000
    assert bench.sql("SELECT meter FROM ledger WHERE kind = 1 ORDER BY id") == [("m1",), ("p1",)]
    assert bench.sql("SELECT count(*) FROM readings") == [(5,)]  # each once, m2's not yet
    bench.exec("DROP TRIGGER fail_m2")
    assert c.wait_idle(30)
    assert c.lost == 0 and c.posted == posted + 3
    assert c.balance("A") == bench.disk_balance("A") == -3_000
    assert c.balance("P") == bench.disk_balance("P") == -3_000
    assert bench.sql("SELECT meter, amount FROM ledger WHERE kind = 1 ORDER BY id") == [
        ("m1", -1_000),
        ("p1", -3_000),
        ("m2", -2_000),
    ]
    assert bench.sql("SELECT count(*) FROM readings") == [(6,)]
    assert not bench.store.writer.stats().failing


def test_a_call_that_rolls_back_its_group_fails_alone(tmp_path: Path) -> None:
    # at the writer: the calls and records around it are written once, in one commit
    store = Store.open(tmp_path / "w.db", gateway_id="gw")
    try:
        writer = store.writer
        writer.call(lambda db: db.execute("CREATE TABLE t (x INTEGER)"), durable=True).result(10)
        writer.call(
            lambda db: db.execute(
                "CREATE TRIGGER boom BEFORE INSERT ON t WHEN NEW.x = 2"
                " BEGIN SELECT RAISE(ROLLBACK, 'injected failure'); END"
            )
        ).result(10)
        before = writer.stats()
        release = hold(writer)
        try:
            store.submit(reading("m1", 1, 10))
            futures = [
                writer.call(lambda db, x=x: db.execute("INSERT INTO t VALUES (?)", (x,)).rowcount,
                            durable=True)
                for x in (1, 2, 3)
            ]  # fmt: skip
            store.submit(reading("m1", 2, 20))
        finally:
            release.set()
        assert futures[0].result(10) == futures[2].result(10) == 1
        with pytest.raises(sqlite3.IntegrityError, match="injected failure"):
            futures[1].result(10)
        assert store.flush(10)
        after = writer.stats()
        assert after.durable_transactions == before.durable_transactions + 1
        assert after.failures == before.failures + 1 and not after.failing
        rows = writer.call(lambda db: db.execute("SELECT x FROM t").fetchall()).result(10)
        assert rows == [(1,), (3,)]
        count = writer.call(lambda db: db.execute("SELECT count(*) FROM readings").fetchone())
        assert count.result(10) == (2,)
    finally:
        store.close()
