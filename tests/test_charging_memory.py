"""The in-memory decision (gateway.charging.Charger): a reading is rated, the balance moved
and the prepaid state evaluated in memory, the listeners called, and only then is the
durable transaction queued, which writes exactly those results.  A transaction that
fails is retried; one that keeps failing is counted and the cache reloaded from disk.

Failures are real: a SQLite trigger, created through a second connection, makes the
ledger insert fail until it is dropped."""

from __future__ import annotations

import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polling import START, wait_for
from test_charging import opened_store

from gateway.charging import Charger
from gateway.config import parse_config
from gateway.prepaid import PrepaidState, StateChange, Thresholds
from gateway.protocols.quantities import EventCode, Quantity, Reading
from gateway.store import Store
from gateway.store.ledger import EntryKind, TopUp, check_balances

PRICE = 10_000  # 1.0000 yuan/kWh: 1 Wh costs 10 (0.0010 yuan) exactly
T0 = int(START.timestamp() * 1000)

CONFIG = f"""
gateway_id: gw
serial_buses:
  - {{name: dl, port: /dev/null, protocol: dlt645}}
meters:
  - {{id: m1, bus: dl, address: "000000000001", account: A}}
  - {{id: m2, bus: dl, address: "000000000002", account: A}}
  - {{id: p1, bus: dl, address: "000000000003", account: P}}
accounts:
  - {{id: A, type: prepaid, tariff: flat}}
  - {{id: P, type: postpaid, tariff: flat}}
tariffs:
  - {{id: flat, version: 1, effective: "2024-01-01T00:00:00+08:00", kind: flat,
      price: {PRICE}}}
billing:
  # alarm 1 at 10 yuan, alarm 2 at 5 yuan, trip at 0, close above 2 yuan
  thresholds: {{alarm1: 100000, alarm2: 50000, overdraft_limit: 0, close_allow: 20000}}
uplink: {{host: localhost}}
"""


def reading(meter: str, s: int, wh: int) -> Reading:
    return Reading(meter, T0 + s * 1000, {Quantity.ENERGY_IMPORT: wh})


class Bench:
    def __init__(self, path: Path, **kw: object) -> None:
        self.path = path
        self.config = parse_config(CONFIG, "gw.yaml")
        self.store = opened_store(path, self.config, max_delay=0.01)
        self.charger = Charger(self.store.writer, self.config, now_ms=lambda: T0, **kw)  # type: ignore[arg-type]
        self.changes: list[StateChange] = []
        self.charger.add_listener(lambda change, meters: self.changes.append(change))

    def sql(self, query: str, *args: object) -> list[tuple[object, ...]]:
        conn = sqlite3.connect(self.path, timeout=10)
        try:
            return conn.execute(query, args).fetchall()
        finally:
            conn.close()

    def exec(self, statement: str) -> None:
        conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        try:
            conn.execute(statement)
        finally:
            conn.close()

    def disk_balance(self, account: str) -> int:
        return int(self.sql("SELECT balance FROM accounts WHERE id = ?", account)[0][0])  # type: ignore[call-overload]

    def close(self) -> None:
        self.charger.close()
        self.store.close()


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    b = Bench(tmp_path / "gw.db", attempts=8, backoff_s=0.05)
    yield b
    b.close()


def test_the_decision_is_made_before_the_write_is_queued(bench: Bench) -> None:
    c = bench.charger
    seen: list[tuple[int, int, int]] = []

    def listener(change: StateChange, meters: tuple[str, ...]) -> None:
        # on the thread that rated the reading, before its transaction exists: the disk
        # cannot hold it yet, while memory already has the new balance
        stored = bench.sql("SELECT count(*) FROM readings")[0][0]
        seen.append((change.balance, c.balance("A"), int(stored)))  # type: ignore[call-overload]
        assert meters == ("m1", "m2")

    c.add_listener(listener)
    # a new prepaid account holds nothing: due to trip from the start (and held tripped)
    assert c.state("A") == PrepaidState.DUE_TO_TRIP and c.balance("A") == 0
    c.top_up(TopUp("t1", "A", EntryKind.TOP_UP, 50_010, T0)).result(10)
    c.relay_closed("A")  # the relays closed it: 5.0010 yuan is at or below alarm 1 only
    assert c.state("A") == PrepaidState.ALARM1 and [s[0] for s in seen] == [50_010, 50_010]
    seen.clear()
    c.submit(reading("m1", 0, 1_000))  # baseline
    assert c.wait_idle(10)
    assert len(bench.sql("SELECT id FROM readings")) == 1 and c.balance("A") == 50_010
    c.submit(reading("m1", 60, 1_001))  # 1 Wh = 10: 50_000, not above alarm 2
    assert c.wait_idle(10)
    assert seen == [(50_000, 50_000, 1)]
    assert bench.changes[-1] == StateChange("A", T0 + 60_000, PrepaidState.ALARM1,
                                            PrepaidState.ALARM2, 50_000)  # fmt: skip
    assert c.accounts_in(PrepaidState.ALARM2) == ["A", "P", "vacancy"]  # postpaid at 0 too
    # what the transaction wrote: the reading, its charge, the state, and the event
    assert bench.disk_balance("A") == 50_000
    assert bench.sql("SELECT account, state, tripped, balance FROM prepaid_state") == [
        ("A", "alarm2", 0, 50_000),
        ("P", "alarm2", 0, 0),  # postpaid: evaluated at start
        ("vacancy", "alarm2", 0, 0),
    ]
    events = bench.sql("SELECT code, detail FROM events ORDER BY id")
    assert [(code, cbor2.loads(d)) for code, d in events][-1] == (
        int(EventCode.PREPAID_STATE),
        {"account": "A", "old": "alarm1", "new": "alarm2", "balance": 50_000},
    )


def test_several_threads_charge_one_account_exactly(bench: Bench) -> None:
    c = bench.charger
    c.top_up(TopUp("t1", "A", EntryKind.TOP_UP, 10_000, T0)).result(10)
    c.relay_closed("A")
    for m in ("m1", "m2", "p1"):
        c.submit(reading(m, 0, 0))

    def feed(meter: str) -> None:
        for i in range(1, 101):
            c.submit(reading(meter, i, 7 * i))  # 7 Wh a step: 70 each

    threads = [threading.Thread(target=feed, args=(m,)) for m in ("m1", "m2", "p1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.wait_idle(30)
    # m1 and m2: 100 steps of 7 Wh at 1 yuan/kWh each = 700 Wh -> 7000; two meters
    assert c.balance("A") == bench.disk_balance("A") == 10_000 - 14_000
    assert c.balance("P") == bench.disk_balance("P") == -7_000
    assert bench.sql("SELECT count(*) FROM readings") == [(303,)]
    assert bench.sql("SELECT sum(year_wh) FROM rating_year") == [(2_100,)]
    # postpaid never trips; the prepaid account went through its states once each way down
    kinds = [(ch.account, ch.new) for ch in bench.changes]
    assert ("P", PrepaidState.DUE_TO_TRIP) not in kinds
    assert [n for a, n in kinds if a == "A"][-1] == PrepaidState.DUE_TO_TRIP


def test_a_failing_transaction_is_retried_and_nothing_is_lost(bench: Bench) -> None:
    c = bench.charger
    c.submit(reading("m1", 0, 0))
    assert c.wait_idle(10)
    bench.exec(
        "CREATE TRIGGER fail_charge BEFORE INSERT ON ledger WHEN NEW.kind = 1"
        " BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
    )
    c.submit(reading("m1", 60, 100))  # 100 Wh -> 1000
    assert c.balance("A") == -1_000  # in memory at once
    wait_for(lambda: c.retried >= 1, 10, "a retry")
    assert bench.disk_balance("A") == 0 and bench.sql("SELECT count(*) FROM readings") == [(1,)]
    bench.exec("DROP TRIGGER fail_charge")
    assert c.wait_idle(30)
    assert c.lost == 0 and c.failed >= 1
    assert bench.disk_balance("A") == c.balance("A") == -1_000
    assert bench.sql("SELECT count(*) FROM readings") == [(2,)]
    assert bench.sql("SELECT reference, amount FROM ledger") == [("m1:2:0", -1_000)]


def test_a_transaction_that_keeps_failing_is_counted_and_memory_reloaded(tmp_path: Path) -> None:
    bench = Bench(tmp_path / "gw.db", attempts=3, backoff_s=0.01)
    try:
        c = bench.charger
        c.submit(reading("m1", 0, 0))
        assert c.wait_idle(10)
        bench.exec(
            "CREATE TRIGGER fail_charge BEFORE INSERT ON ledger WHEN NEW.kind = 1"
            " BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )
        reloads = c.reloads
        c.submit(reading("m1", 60, 100))
        assert c.balance("A") == -1_000
        wait_for(lambda: c.lost == 1 and c.reloads > reloads, 20, "the reading given up")
        assert c.failed == 3 and c.retried == 2
        # memory is back to what the disk holds: the lost reading's charge is not in it
        assert c.balance("A") == bench.disk_balance("A") == 0
        bench.exec("DROP TRIGGER fail_charge")
        # the meter's state was reloaded too: the next reading is rated from the stored
        # baseline (0 Wh), so the energy of the lost reading is charged with it
        c.submit(reading("m1", 120, 150))
        assert c.wait_idle(10)
        assert c.balance("A") == bench.disk_balance("A") == -1_500
        conn = sqlite3.connect(bench.path)
        try:
            from sqlite_utils import Database

            assert check_balances(Database(conn)) == []
        finally:
            conn.close()
    finally:
        bench.close()


def test_top_up_then_may_close_then_relay_closed(bench: Bench) -> None:
    c = bench.charger
    c.submit(reading("m1", 0, 0))
    c.submit(reading("m1", 60, 500))  # 500 Wh -> 5000: balance -0.5 yuan, due to trip
    assert c.wait_idle(10)
    assert c.state("A") == PrepaidState.DUE_TO_TRIP
    # 2.5 yuan: -0.5 + 2.5 = 2 yuan, not above close-allow (2 yuan): still tripped
    first = c.top_up(TopUp("t1", "A", EntryKind.TOP_UP, 25_000, T0 + 70_000)).result(10)
    assert first.applied and c.balance("A") == 20_000 and c.state("A") == PrepaidState.DUE_TO_TRIP
    # a repeat of t1 changes nothing
    again = c.top_up(TopUp("t1", "A", EntryKind.TOP_UP, 25_000, T0 + 71_000)).result(10)
    assert again.duplicate and c.balance("A") == 20_000
    c.top_up(TopUp("t2", "A", EntryKind.TOP_UP, 1, T0 + 72_000)).result(10)
    assert c.state("A") == PrepaidState.MAY_CLOSE  # 20_001 > 20_000
    assert bench.changes[-1] == StateChange("A", T0 + 72_000, PrepaidState.DUE_TO_TRIP,
                                            PrepaidState.MAY_CLOSE, 20_001)  # fmt: skip
    c.relay_closed("A")
    assert c.state("A") == PrepaidState.ALARM2  # 2.0001 yuan <= 5 yuan
    assert bench.changes[-1].new == PrepaidState.ALARM2
    assert c.wait_idle(10)
    c.writer.flush(10)
    assert bench.sql("SELECT state, tripped FROM prepaid_state WHERE account = 'A'") == [
        ("alarm2", 0)
    ]


def test_hoarding_limit_and_emergency_credit_from_the_config(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    text = CONFIG.replace("billing:\n", "billing:\n  hoarding_limit: 1000000\n").replace(
        "close_allow: 20000}", "close_allow: 20000, emergency_credit: 30000}"
    )
    bench = Bench(path)
    bench.charger.close()
    bench.store.close()
    config = parse_config(text, "gw.yaml")
    store = Store.open(path, gateway_id="gw", max_delay=0.01)
    try:
        c = Charger(store.writer, config)
        refused = c.top_up(TopUp("big", "A", EntryKind.TOP_UP, 1_000_001, T0)).result(10)
        assert refused.refused is not None and "hoarding limit" in refused.refused
        assert c.top_up(TopUp("ok", "A", EntryKind.TOP_UP, 1_000_000, T0)).result(10).applied
        e = TopUp("e", "A", EntryKind.EMERGENCY, 30_001, T0, authorisation="x", operator="o")
        assert c.top_up(e).result(10).refused == "emergency credit is at most 30000"
        assert c.balance("A") == 1_000_000
        c.close()
    finally:
        store.close()


def test_thresholds_set_by_command_are_kept_and_re_evaluate(tmp_path: Path) -> None:
    bench = Bench(tmp_path / "gw.db")
    c = bench.charger
    c.top_up(TopUp("t", "A", EntryKind.TOP_UP, 80_000, T0)).result(10)  # 8 yuan
    assert c.state("A") == PrepaidState.MAY_CLOSE  # due to trip at 0, now above close-allow
    c.relay_closed("A")
    assert c.state("A") == PrepaidState.ALARM1
    c.set_thresholds("A", Thresholds(alarm1=200_000, alarm2=90_000))
    assert c.state("A") == PrepaidState.ALARM2 and bench.changes[-1].new == PrepaidState.ALARM2
    c.set_thresholds(None, Thresholds(alarm1=1, alarm2=0))  # A keeps its own
    assert c.state("A") == PrepaidState.ALARM2 and c.thresholds("P").alarm1 == 1
    bench.charger.close()
    bench.store.close()
    # a restart: the store's thresholds win over the config's, the state is resumed
    store = Store.open(bench.path, gateway_id="gw", max_delay=0.01)
    try:
        again = Charger(store.writer, bench.config)
        assert again.thresholds("A") == Thresholds(alarm1=200_000, alarm2=90_000)
        assert again.thresholds("P") == Thresholds(alarm1=1, alarm2=0)
        assert again.state("A") == PrepaidState.ALARM2 and again.balance("A") == 80_000
        again.close()
    finally:
        store.close()


# --- property: memory and disk agree, and a restart resumes the same ---------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("read"), st.sampled_from(["m1", "m2", "p1"]), st.integers(0, 3_000)),
        st.tuples(st.just("top_up"), st.sampled_from(["A", "P"]), st.integers(1, 60_000)),
        st.tuples(st.just("closed"), st.just("A"), st.just(0)),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_memory_equals_disk_and_a_restart_resumes_it(ops: list[tuple[str, str, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp) / "gw.db")
        c = bench.charger
        energy = {"m1": 0, "m2": 0, "p1": 0}
        try:
            for m in energy:
                c.submit(reading(m, 0, 0))
            for i, (op, who, n) in enumerate(ops, 1):
                if op == "read":
                    energy[who] += n
                    c.submit(reading(who, i * 60, energy[who]))
                elif op == "top_up":
                    c.top_up(TopUp(f"t{i}", who, EntryKind.TOP_UP, n, T0 + i)).result(10)
                else:
                    c.relay_closed(who)
            assert c.wait_idle(10) and c.lost == 0
            c.writer.flush(10)
            # every Wh charged once, at 1 yuan/kWh: 10 per Wh, exact
            assert c.balance("A") == bench.disk_balance("A")
            assert c.balance("P") == bench.disk_balance("P")
            tops = {a: sum(n for op, w, n in ops if op == "top_up" and w == a) for a in "AP"}
            assert c.balance("A") == tops["A"] - 10 * (energy["m1"] + energy["m2"])
            assert c.balance("P") == tops["P"] - 10 * energy["p1"]
            memory = {a: (c.balance(a), c.state(a)) for a in ("A", "P", "vacancy")}
        finally:
            c.close()
            bench.store.close()
        store = Store.open(bench.path, gateway_id="gw", max_delay=0.01)
        try:
            again = Charger(store.writer, bench.config)
            assert {a: (again.balance(a), again.state(a)) for a in memory} == memory
            again.close()
        finally:
            store.close()


def test_reload_while_buses_charge_and_listeners_call_back(bench: Bench) -> None:
    c = bench.charger
    calls: list[str] = []

    def listener(change: StateChange, meters: tuple[str, ...]) -> None:
        # a listener may read the charger and report a relay closed from inside
        calls.append(f"{change.account}:{change.new}:{c.balance(change.account)}")
        if change.new == PrepaidState.MAY_CLOSE:
            c.relay_closed(change.account)

    c.add_listener(listener)
    for m in ("m1", "m2", "p1"):
        c.submit(reading(m, 0, 0))
    stop = threading.Event()

    def feed(meter: str) -> None:
        for i in range(1, 201):
            c.submit(reading(meter, i, 5 * i))

    def reloader() -> None:
        while not stop.is_set():
            c.reload()

    threads = [threading.Thread(target=feed, args=(m,)) for m in ("m1", "m2", "p1")]
    spinner = threading.Thread(target=reloader)
    spinner.start()
    for t in threads:
        t.start()
    for i in range(20):  # the first lifts A above close-allow (2 yuan) whatever was used
        amount = 100_000 if i == 0 else 1_000
        c.top_up(TopUp(f"t{i}", "A", EntryKind.TOP_UP, amount, T0 + i)).result(10)
    for t in threads:
        t.join()
    stop.set()
    spinner.join()
    assert c.wait_idle(10) and c.lost == 0 and c.reloads > 1
    # m1, m2: 1000 Wh each -> 10000 each; top-ups 100000 + 19 x 1000
    assert c.balance("A") == bench.disk_balance("A") == 119_000 - 20_000
    assert c.balance("P") == bench.disk_balance("P") == -10_000
    assert any(call.startswith("A:may_close") for call in calls)
    assert c.state("A") == PrepaidState.ALARM1  # closed from inside the listener; <= 10 yuan


def test_a_meter_removed_in_the_store_is_not_charged_and_the_cache_follows(bench: Bench) -> None:
    from gateway.store.meters import MeterRecord, set_record

    c = bench.charger
    c.submit(reading("m1", 0, 0))
    c.submit(reading("m1", 60, 100))  # 1000
    assert c.wait_idle(10) and c.balance("A") == -1_000
    # a lifecycle operation marks m1 removed; the charger has not been told yet
    record = MeterRecord("m1", "A", "removed", 1, T0 + 61_000, reason="test")
    c.writer.call(lambda db: set_record(db, record), durable=True).result(10)
    c.submit(reading("m1", 120, 300))  # rated in memory, but the store refuses to charge it
    wait_for(lambda: "m1" not in c.billing, 10, "the cache reloaded")
    assert c.wait_idle(10)
    assert c.balance("A") == bench.disk_balance("A") == -1_000
    assert c.meters_of("A") == ("m2",) and c.account_of("m1") is None
    assert bench.sql("SELECT count(*) FROM readings") == [(3,)]  # stored all the same


def test_apply_runs_a_transaction_with_nothing_rated_in_between(bench: Bench) -> None:
    from gateway.lifecycle import remove_meter
    from gateway.lifecycle.base import billing_of

    c = bench.charger
    for m in ("m1", "m2"):
        c.submit(reading(m, 0, 0))
    assert c.wait_idle(10)
    seen: list[tuple[int, int]] = []  # (disk, memory) seen inside each transaction
    stop = threading.Event()

    def look(db: object) -> int:
        disk = int(db.execute("SELECT balance FROM accounts WHERE id = 'A'").fetchone()[0])  # type: ignore[attr-defined]
        seen.append((disk, c.balance("A")))
        return disk

    def feed(meter: str) -> None:
        for i in range(1, 301):
            c.submit(reading(meter, i, 3 * i))  # 3 Wh a step: 30 each

    def applier() -> None:
        while not stop.is_set():
            c.apply(look, reload=False).result(10)

    threads = [threading.Thread(target=feed, args=(m,)) for m in ("m1", "m2")]
    spinner = threading.Thread(target=applier)
    spinner.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    spinner.join()
    # inside every transaction, memory and disk agreed: nothing rated was still queued
    # and nothing could be rated until the transaction was done
    assert len(seen) > 1 and all(disk == memory for disk, memory in seen)
    assert c.wait_idle(10) and c.balance("A") == bench.disk_balance("A") == -2 * 9_000
    # a removal through apply: the final reading charged once, the cache reloaded with it
    final = reading("m2", 400, 1_000)  # 100 Wh since the 900 of step 300: 1000
    billing = billing_of(bench.config, "m2", None)
    assert billing is not None
    reloads = c.reloads
    result = c.apply(
        lambda db: remove_meter(
            db, "m2", final, billing=billing, book=c.book, refund=False, reason="t",
            ts_ms=final.ts_ms,
        )
    ).result(10)  # fmt: skip
    assert result.charged == 1_000 and c.reloads == reloads + 1
    assert "m2" not in c.billing and c.meters_of("A") == ("m1",)
    c.submit(reading("m2", 460, 2_000))  # polled once more: journaled, not charged
    assert c.wait_idle(10)
    assert c.balance("A") == bench.disk_balance("A") == -19_000

    # a transaction that fails changes nothing and reloads nothing
    def boom(db: object) -> None:
        raise ValueError("no")

    with pytest.raises(ValueError):
        c.apply(boom).result(10)
    assert c.reloads == reloads + 1
