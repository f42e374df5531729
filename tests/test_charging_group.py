"""Group commit of billed readings (gateway.charging.Charger on gateway.store.writer).

Each billed reading queues one durable store-writer call; the calls queued while the
writer is busy (here: held in a call of the test's) are written in ONE durable
transaction, each in its own savepoint.  One that fails (a real SQLite trigger) is
rolled back alone, the others commit, and it is retried until it is written; a
failure that rolls back the whole transaction (``RAISE(ROLLBACK)``) fails that call
alone too, the rest of the group being written again without it, once.

What the group did is read in an ``after`` hook of a call queued last in it: the
writer runs it right after that commit and the other calls' settlement, before it
can take anything else (a retry) from its queue.

Lingering (the Charger's ``linger``): a billed reading's transaction waits on the writer
for company, so a polling cycle's readings share one fsync; whoever waits for the
readings in flight (wait_idle, reload, apply, post's caller) and any immediate durable
call (a top-up) commits them at once; and a SIGKILL while readings linger loses no
money: they are not on disk, and the next reading's delta from the last committed one
charges the same energy.  Lingers here are long (``FAR``): no test waits one out."""

from __future__ import annotations

import logging
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from polling import M, wait_for
from sqlite_utils import Database
from test_charging import PRICE as FLAT_PRICE
from test_charging import config_yaml, half_up
from test_charging_memory import T0, Bench, reading

from gateway.store import Store
from gateway.store.ledger import EntryKind, TopUp, check_balances
from gateway.store.writer import StoreWriter

FAR = 3600.0  # a linger no test waits out


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


# --- lingering billed readings ------------------------------------------------------------


@pytest.fixture
def lingering(tmp_path: Path) -> Iterator[Bench]:
    b = Bench(tmp_path / "gw.db", attempts=8, backoff_s=0.05, linger=FAR)
    yield b
    b.close()


def submit_three(bench: Bench) -> None:
    """m1 100 Wh (1000), m2 200 Wh (2000) on A, p1 300 Wh (3000) on P: lingering."""
    c = bench.charger
    c.submit(reading("m1", 60, 100))
    c.submit(reading("m2", 60, 200))
    c.submit(reading("p1", 60, 300))
    assert bench.sql("SELECT count(*) FROM readings") == [(3,)]  # the baselines only


def test_lingering_readings_share_one_durable_commit_and_wait_idle_ends_it(
    lingering: Bench,
) -> None:
    c = lingering.charger
    durable, posted, failed = baselines(lingering)
    submit_three(lingering)
    assert c.wait_idle(30)
    assert lingering.store.writer.stats().durable_transactions == durable + 1
    assert (c.posted, c.failed) == (posted + 3, failed)
    assert c.balance("A") == lingering.disk_balance("A") == -3_000
    assert c.balance("P") == lingering.disk_balance("P") == -3_000
    assert lingering.sql("SELECT meter, amount FROM ledger WHERE kind = 1 ORDER BY id") == [
        ("m1", -1_000),
        ("m2", -2_000),
        ("p1", -3_000),
    ]


def test_a_top_up_commits_the_lingering_readings_with_it(lingering: Bench) -> None:
    c = lingering.charger
    baselines(lingering)
    submit_three(lingering)
    assert c.top_up(TopUp("t1", "A", EntryKind.TOP_UP, 10_000, T0)).result(30).applied
    assert lingering.sql("SELECT count(*) FROM readings") == [(6,)]
    assert lingering.sql("SELECT meter, amount FROM ledger ORDER BY id")[-4:] == [
        ("m1", -1_000),
        ("m2", -2_000),
        ("p1", -3_000),
        (None, 10_000),
    ]
    assert lingering.disk_balance("A") == c.balance("A") == 7_000


@pytest.mark.parametrize("how", ["reload", "apply", "post"])
def test_waiting_for_the_readings_does_not_wait_out_the_linger(
    lingering: Bench, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    # reload and apply wait for the readings in flight (else they warn and go on);
    # post's caller waits for its reading
    c = lingering.charger
    baselines(lingering)
    submit_three(lingering)
    with caplog.at_level(logging.WARNING, logger="gateway.charging"):
        if how == "reload":
            c.reload(timeout=20)
        elif how == "apply":
            one = c.apply(lambda db: db.execute("SELECT 1").fetchone()[0], timeout=20)
            assert one.result(60) == 1
        else:
            charged = c.post(reading("m1", 120, 150), c.billing["m1"]).result(30)
            assert [e.amount for e in charged.entries] == [-500]
    assert "in flight" not in caplog.text
    assert lingering.sql("SELECT count(*) FROM readings") == [(7 if how == "post" else 6,)]
    assert lingering.disk_balance("P") == -3_000


STEP_WH = 37  # 3.145 (0.0001 yuan) a reading at 0.85 yuan/kWh: rounding matters

LINGER_CHILD = textwrap.dedent(
    """
    import sys, time
    from datetime import date
    from gateway.charging import Charger
    from gateway.config import parse_config
    from gateway.protocols.quantities import Quantity, Reading
    from gateway.store import Store
    from gateway.store.ledger import sync_accounts

    path, cfg = sys.argv[1], sys.argv[2]
    first, committed, last, step = (int(a) for a in sys.argv[3:7])
    config = parse_config(open(cfg).read(), "gw.yaml")
    store = Store.open(path, gateway_id="gw-linger", max_delay=0.01)
    store.writer.call(
        lambda db: sync_accounts(db, config.accounts, opened_day=date(2024, 6, 1), opened_ms=0),
        durable=True,
    ).result(30)
    charger = Charger(store.writer, config, linger=3600.0)
    base = 1_717_214_400_000  # 2024-06-01T04:00Z
    for i in range(first, last + 1):
        charger.submit(Reading("m1", base + i * 1000, {Quantity.ENERGY_IMPORT: 10_000 + step * i}))
        if i == committed:
            assert charger.wait_idle(30)
            print("committed", flush=True)
    if committed < last:
        print("lingering", flush=True)
        time.sleep(600)
    charger.close()
    store.close()
    print("done", flush=True)
    """
)


def linger_child(path: Path, cfg: Path, first: int, committed: int, last: int) -> list[str]:
    return [sys.executable, "-c", LINGER_CHILD, str(path), str(cfg)] + [
        str(n) for n in (first, committed, last, STEP_WH)
    ]


def disk(path: Path) -> tuple[list[int], int, list[object]]:
    """(the readings' indexes, account A's balance, check_balances) on disk."""
    db = Database(sqlite3.connect(path))
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        ts = [int(t) for (t,) in db.execute("SELECT ts_ms FROM readings ORDER BY id")]
        balance = db.execute("SELECT balance FROM accounts WHERE id = 'A'").fetchone()[0]
        return [(t - T0) // 1000 for t in ts], int(balance), list(check_balances(db))
    finally:
        db.conn.close()


def test_sigkill_while_readings_linger_loses_no_money(tmp_path: Path) -> None:
    path, cfg = tmp_path / "gw.db", tmp_path / "gw.yaml"
    cfg.write_text(config_yaml("/dev/null", [(M("m1", "dl", "dlt645", 1), "A")]))
    # readings 0..41 committed, 42..60 lingering when the power goes
    with (tmp_path / "child.err").open("w") as err:
        child = subprocess.Popen(
            linger_child(path, cfg, 0, 41, 60), stdout=subprocess.PIPE, stderr=err, text=True
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "committed"
        assert child.stdout.readline().strip() == "lingering"
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        child.stdout.close()
    indexes, balance, problems = disk(path)
    assert indexes == list(range(42)), (tmp_path / "child.err").read_text()[-2000:]
    assert balance == -half_up(41 * STEP_WH, FLAT_PRICE) and problems == []
    # after the restart the meter's register has moved on: readings 61..101
    done = subprocess.run(
        linger_child(path, cfg, 61, 101, 101), capture_output=True, text=True, timeout=120
    )
    assert done.stdout.split()[-2:] == ["committed", "done"], done.stderr[-2000:]
    indexes, balance, problems = disk(path)
    assert indexes == [*range(42), *range(61, 102)]
    # the whole energy, exactly: what 42..60 used is charged with reading 61
    assert balance == -half_up(101 * STEP_WH, FLAT_PRICE) and problems == []
