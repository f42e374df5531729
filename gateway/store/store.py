"""The gateway's store: open it once, write through its writer thread, read with readers.

::

    store = Store.open("/var/lib/gateway/store.db", gateway_id="gw-01")
    if store.report.moved_aside:        # damaged at start: enter safe mode
        ...
    store.submit(reading)               # any thread; never blocks
    store.submit_durable([event]).result()   # committed with fsync
    with store.reader() as reader:      # its own connection
        batch = reader.unacknowledged(Kind.READINGS, limit=500)
    store.mark_acknowledged(Kind.READINGS, batch[-1][0])
    store.close()                       # drains, writes a stop record, marks a clean stop
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from sqlite_utils import Database

from gateway.errors import StoreError
from gateway.protocols.batch import new_epoch
from gateway.store.db import Check, open_database, store_errors
from gateway.store.health import (
    start_record,
    stop_record,
    store_replaced_record,
    unclean_stop_record,
)
from gateway.store.journal import INSERT_SQL, JournalReader, Kind, Record, StoreMeta, encode
from gateway.store.retention import RetentionResult
from gateway.store.writer import StoreWriter, WriterStats

__all__ = ["OpenReport", "Store", "wall_ms"]


def wall_ms() -> int:
    """The system's UTC time in milliseconds (the default clock of the store)."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class OpenReport:
    """What :meth:`Store.open` found."""

    created: bool
    """A new store (and so a new epoch) was created."""
    moved_aside: Path | None
    """A damaged store was moved here; the gateway should enter safe mode."""
    damage: str | None
    unclean_stop: bool
    """The previous run did not close the store: power loss or crash."""
    applied_migrations: tuple[int, ...]


class Store:
    """An open store: its identity (:attr:`meta`), its writer thread, and readers."""

    def __init__(
        self,
        path: Path,
        meta: StoreMeta,
        report: OpenReport,
        writer: StoreWriter,
        now_ms: Callable[[], int],
    ) -> None:
        """Use :meth:`open`."""
        self.path = path
        self.meta = meta
        self.report = report
        self.writer = writer
        self._now_ms = now_ms
        self._closed = False

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        gateway_id: str,
        now_ms: Callable[[], int] = wall_ms,
        check: Check = "quick",
        start_info: Mapping[str, int | str] | None = None,
        max_bytes: int | None = None,
        max_batch: int = 1000,
        max_delay: float = 2.0,
        retention_interval: float = 60.0,
        max_queue: int = 100_000,
        storage_interval: float | None = None,
    ) -> Store:
        """Open or create the store, check it, migrate it, and start its writer.

        A damaged file is moved aside and a new store (new epoch) created: see
        :attr:`report`.  Health records are written for a replaced store, an unclean
        previous stop, and this start (with ``start_info``); with ``storage_interval``
        (seconds) the writer adds a storage health record (bytes in use, file bytes,
        unacknowledged readings) at once and then every ``storage_interval``.  StoreError
        (StoreCorrupt when a damaged store cannot be replaced) if the store cannot be opened.
        """
        path = Path(path)
        opened = open_database(path, now_ms=now_ms, check=check)
        db = opened.db
        try:
            with store_errors(f"cannot start store {path}"):
                meta, unclean, last_seen = _begin_run(db, gateway_id, now_ms())
                now = now_ms()
                records: list[Record] = []
                if opened.moved_aside is not None:
                    damage = opened.damage or "damaged"
                    records.append(store_replaced_record(now, str(opened.moved_aside), damage))
                if unclean:
                    records.append(unclean_stop_record(now, last_seen))
                records.append(start_record(now, start_info))
                db.execute("PRAGMA synchronous=FULL")
                with db.atomic():
                    db.execute("UPDATE meta SET value = 1 WHERE key = 'running'")
                    for record in records:
                        db.conn.execute(INSERT_SQL[Kind.HEALTH], encode(record).params)
                db.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            db.close()
            raise
        report = OpenReport(
            opened.created, opened.moved_aside, opened.damage, unclean, opened.applied_migrations
        )
        writer = StoreWriter(
            db,
            now_ms=now_ms,
            max_batch=max_batch,
            max_delay=max_delay,
            max_bytes=max_bytes,
            retention_interval=retention_interval,
            max_queue=max_queue,
            storage_interval=storage_interval,
        )
        return cls(path, meta, report, writer, now_ms)

    # -- writing (any thread) ------------------------------------------------------------------

    def submit(self, record: Record) -> None:
        """Journal ``record`` in the next group commit (never blocks)."""
        self.writer.submit(record)

    def submit_many(self, records: Iterable[Record]) -> None:
        self.writer.submit_many(records)

    def submit_durable(self, records: Iterable[Record]) -> Future[list[int]]:
        """Journal ``records``; the future gives their positions after an fsynced commit."""
        return self.writer.submit_durable(records)

    def mark_acknowledged(self, kind: Kind, up_to: int) -> Future[int]:
        """The master has stored ``kind`` up to position ``up_to``: those may be pruned."""
        return self.writer.mark_acknowledged(kind, up_to)

    def enforce_retention(self, max_bytes: int | None = None) -> Future[RetentionResult]:
        return self.writer.enforce_retention(max_bytes)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is committed; False on timeout."""
        return self.writer.flush(timeout)

    def stats(self) -> WriterStats:
        return self.writer.stats()

    # -- reading -------------------------------------------------------------------------------

    def reader(self) -> JournalReader:
        """A new read connection (close it; one per thread)."""
        return JournalReader(self.path)

    # -- life ----------------------------------------------------------------------------------

    def close(self, timeout: float | None = 30.0, reason: str = "stop") -> None:
        """Commit what is queued, write a stop record, mark the stop clean, close."""
        if self._closed:
            return
        self._closed = True
        stop = encode(stop_record(self._now_ms(), reason))

        def clean_stop(db: Database) -> None:
            db.conn.execute(INSERT_SQL[Kind.HEALTH], stop.params)
            db.execute("UPDATE meta SET value = 0 WHERE key = 'running'")

        with contextlib.suppress(StoreError):  # a writer that already stopped
            self.writer.call(clean_stop, durable=True)
        self.writer.close(timeout)

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _begin_run(db: Database, gateway_id: str, now: int) -> tuple[StoreMeta, bool, int | None]:
    """The store's meta (created on first open), whether the last run stopped uncleanly,
    and the time of the last record that run left."""
    values = dict(db.execute("SELECT key, value FROM meta").fetchall())
    if "epoch" not in values:
        values = {"epoch": new_epoch(), "created_ms": now, "gateway_id": gateway_id, "running": 0}
        with db.atomic():
            for key, value in values.items():
                db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
    elif values.get("gateway_id") != gateway_id:
        db.execute("UPDATE meta SET value = ? WHERE key = 'gateway_id'", (gateway_id,))
        values["gateway_id"] = gateway_id
    if not isinstance(values.get("epoch"), int):
        raise StoreError("store meta has no epoch")
    version = int(db.execute("SELECT max(version) FROM schema_version").fetchone()[0])
    meta = StoreMeta(int(values["epoch"]), gateway_id, int(values["created_ms"]), version)
    unclean = int(values.get("running") or 0) == 1
    last_seen = None
    if unclean:
        stamps = [
            db.execute(f"SELECT ts_ms FROM {table} ORDER BY id DESC LIMIT 1").fetchone()
            for table in ("readings", "events", "health")
        ]
        last_seen = max((int(row[0]) for row in stamps if row is not None), default=None)
    return meta, unclean, last_seen
