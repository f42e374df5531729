"""Opening the store: damage moved aside, migrations, clean and unclean stops, SIGKILL."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlite_utils import Database

from gateway.errors import StoreCorrupt, StoreError
from gateway.protocols.batch import HealthKind, HealthRecord, MeterEvent
from gateway.protocols.quantities import Quantity, Reading
from gateway.store import Kind, Store
from gateway.store.db import connect, open_database
from gateway.store.migrations import JOURNAL, Migrations

REPO = Path(__file__).resolve().parents[1]
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def health(store: Store) -> list[HealthRecord]:
    with store.reader() as reader:
        return [r for _, r in reader.health()]


def power_events(store: Store) -> list[object]:
    return [h.values["event"] for h in health(store) if h.kind == HealthKind.POWER]


def filled(path: Path, readings: int = 3000) -> None:
    """A store at ``path`` with readings in it, closed cleanly (WAL checkpointed)."""
    with Store.open(path, gateway_id="gw") as store:
        store.submit_many(
            Reading(f"m{i % 32}", T0 + i, {Quantity.ENERGY_IMPORT: 10**6 + i})
            for i in range(readings)
        )


def integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def test_a_new_store_gets_an_epoch_and_a_start_record(tmp_path: Path) -> None:
    with Store.open(tmp_path / "sub" / "s.db", gateway_id="gw", now_ms=lambda: T0) as store:
        assert store.report.created
        assert store.report.applied_migrations == tuple(range(1, JOURNAL.latest + 1))
        assert not store.report.unclean_stop
        assert store.report.moved_aside is None
        assert health(store) == [HealthRecord(T0, HealthKind.POWER, {"event": "start"})]
        epoch = store.meta.epoch
    with Store.open(tmp_path / "sub" / "s.db", gateway_id="gw", start_info={"sw": "1.2"}) as again:
        assert not again.report.created
        assert again.meta.epoch == epoch  # the epoch identifies the store for ever
        assert again.report.applied_migrations == ()
        assert health(again)[-1].values == {"event": "start", "sw": "1.2"}
        assert power_events(again) == ["start", "stop", "start"]


def test_a_clean_stop_is_recorded_and_an_unclean_one_detected(tmp_path: Path) -> None:
    path, crashed = tmp_path / "s.db", tmp_path / "crashed.db"
    store = Store.open(path, gateway_id="gw", now_ms=lambda: T0)
    try:
        store.submit(Reading("m", T0 - 5000))
        store.submit_durable([MeterEvent("m", T0 - 7000, 1)]).result(10)
        assert store.flush(10)
        # The files as a power cut would leave them: the store still marked running.
        for suffix in ("", "-wal"):
            shutil.copyfile(f"{path}{suffix}", f"{crashed}{suffix}")
    finally:
        store.close()
    with Store.open(path, gateway_id="gw") as clean:
        assert not clean.report.unclean_stop
    with Store.open(crashed, gateway_id="gw", now_ms=lambda: T0 + 60_000) as after:
        assert after.report.unclean_stop
        assert not after.report.created
        assert power_events(after) == ["start", "unclean_stop", "start"]
        [record] = [h for h in health(after) if h.values["event"] == "unclean_stop"]
        assert record.ts_ms == T0 + 60_000
        assert record.values["detail"] == "power loss or crash detected"
        assert record.values["last_seen_ms"] == T0  # the start record was the last
    with Store.open(crashed, gateway_id="gw") as third:
        assert not third.report.unclean_stop


def test_garbage_is_moved_aside_with_its_wal_and_a_fresh_store_created(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database\n" * 100)
    Path(f"{path}-wal").write_bytes(b"junk wal")
    with Store.open(path, gateway_id="gw", now_ms=lambda: T0) as store:
        moved = store.report.moved_aside
        assert moved == tmp_path / "s.db.corrupt-20260101T000000Z"
        assert store.report.created
        assert store.report.damage == "not an SQLite file"
        assert moved.read_bytes().startswith(b"this is not a database")
        assert Path(f"{moved}-wal").read_bytes() == b"junk wal"
        [replaced] = [h for h in health(store) if h.kind == HealthKind.STORAGE]
        assert replaced.values["event"] == "store_replaced"
        assert replaced.values["moved_to"] == str(moved)
        store.submit_durable([Reading("m", 1)]).result(10)
    assert integrity(path) == "ok"


def test_a_truncated_store_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    filled(path)
    size = path.stat().st_size
    with path.open("r+b") as stream:
        stream.truncate(size // 2)
    with Store.open(path, gateway_id="gw", now_ms=lambda: T0) as store:
        assert store.report.moved_aside is not None
        assert store.report.moved_aside.stat().st_size == size // 2
        assert store.report.damage
        with store.reader() as reader:
            assert reader.count(Kind.READINGS) == 0
    # a second damaged file the same second gets its own name
    path.write_bytes(b"\0" * 4096)
    with Store.open(path, gateway_id="gw", now_ms=lambda: T0) as store:
        assert store.report.moved_aside == tmp_path / "s.db.corrupt-20260101T000000Z-2"


def test_a_page_overwritten_with_garbage_fails_the_check(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    filled(path)
    with path.open("r+b") as stream:
        stream.seek(4096 * 3)
        stream.write(os.urandom(4096))
    with Store.open(path, gateway_id="gw") as store:
        assert store.report.moved_aside is not None
        assert store.report.damage


def test_a_foreign_database_is_moved_aside_not_adopted(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (name TEXT)")
    conn.commit()
    conn.close()
    with Store.open(path, gateway_id="gw") as store:
        assert store.report.damage == "not a gateway store (tables: customers)"
        assert store.report.moved_aside is not None


def test_a_newer_store_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    filled(path, 10)
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_version VALUES (99, 'future', 0)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this software"):
        Store.open(path, gateway_id="gw")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]


def test_a_store_that_cannot_be_opened_is_an_error_not_moved(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.mkdir()
    with pytest.raises(StoreError) as caught:
        Store.open(path, gateway_id="gw")
    assert not isinstance(caught.value, StoreCorrupt)
    assert isinstance(caught.value.__cause__, sqlite3.Error | IsADirectoryError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]


def test_damage_that_cannot_be_replaced_raises_store_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"garbage" * 100)
    # the new file cannot be written: a directory squats on its WAL's name
    real = Database.__init__

    def squat(self: Database, *args: object, **kwargs: object) -> None:
        if not Path(f"{path}-wal").exists():
            Path(f"{path}-wal").mkdir()
        real(self, *args, **kwargs)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Database, "__init__", squat)
        with pytest.raises(StoreCorrupt, match="cannot be recreated"):
            Store.open(path, gateway_id="gw")


def test_migrations_run_once_and_are_recorded(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    runs: list[int] = []
    migrations = Migrations()
    for version, name, function in JOURNAL.steps():
        migrations.register(version, name, function)

    new = JOURNAL.latest + 1

    @migrations(new, "counted")
    def _counted(db: Database) -> None:
        runs.append(new)
        db.execute("CREATE TABLE extra (x)")

    clock = iter(range(100, 200))
    everything = tuple(range(1, new + 1))
    for expected in (everything, ()):
        opened = open_database(path, now_ms=lambda: next(clock), migrations=migrations)
        try:
            assert opened.applied_migrations == expected
            rows = opened.db.execute("SELECT version, name FROM schema_version").fetchall()
            assert rows == [*((v, n) for v, n, _ in JOURNAL.steps()), (new, "counted")]
            assert migrations.applied(opened.db) == dict.fromkeys(everything, 100)
        finally:
            opened.db.close()
    assert runs == [new]
    # the plain journal sees a store newer than it knows
    with pytest.raises(StoreError, match=f"schema version {new} is newer"):
        open_database(path, now_ms=lambda: 0)


def test_migration_failure_leaves_no_trace(tmp_path: Path) -> None:
    migrations = Migrations()

    @migrations(1, "half")
    def _half(db: Database) -> None:
        db.execute("CREATE TABLE first (x)")
        raise RuntimeError("second step failed")

    db = connect(tmp_path / "s.db")
    try:
        with pytest.raises(RuntimeError):
            migrations.apply(db, 0)
        assert "first" not in db.table_names()
        assert migrations.applied(db) == {}
    finally:
        db.close()


def test_migrations_are_numbered_in_order() -> None:
    migrations = Migrations()
    with pytest.raises(ValueError, match="migration 2 registered after 0"):
        migrations.register(2, "gap", lambda db: None)


KILLED = textwrap.dedent(
    """
    import sys, threading, time
    from gateway.protocols.batch import MeterEvent
    from gateway.protocols.quantities import Quantity, Reading
    from gateway.store import Store

    store = Store.open(sys.argv[1], gateway_id="gw", max_delay=0.01)

    def noise():  # a busy writer: 64 readings every millisecond
        i = 0
        while True:
            store.submit_many(
                Reading(f"m{n}", i, {Quantity.ENERGY_IMPORT: i + n}) for n in range(64)
            )
            i += 1
            time.sleep(0.001)

    threading.Thread(target=noise, daemon=True).start()
    for n in range(int(sys.argv[2])):
        [position] = store.submit_durable([MeterEvent("m", n, 42, {"n": n})]).result()
        print("ACK", n, position, flush=True)
    threading.Event().wait()
    """
)


def test_sigkill_after_acknowledgement_loses_nothing_acknowledged(tmp_path: Path) -> None:
    path, count = tmp_path / "s.db", 40
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(path), str(count)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    acknowledged: dict[int, int] = {}
    try:
        assert process.stdout is not None
        for line in process.stdout:
            match = re.fullmatch(r"ACK (\d+) (\d+)\n", line)
            assert match, line
            acknowledged[int(match[1])] = int(match[2])
            if len(acknowledged) == count:
                break
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
    assert process.returncode == -signal.SIGKILL
    assert len(acknowledged) == count
    with Store.open(path, gateway_id="gw", check="full") as store:
        assert store.report.unclean_stop
        assert store.report.moved_aside is None
        with store.reader() as reader:
            events = dict(reader.records(Kind.EVENTS, limit=10**6))
            assert reader.count(Kind.READINGS) > 0
    for n, position in acknowledged.items():
        assert events[position] == MeterEvent("m", n, 42, {"n": n})
    assert integrity(path) == "ok"
