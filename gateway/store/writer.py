"""The store-writer thread: the one owner of the write connection (design.md, concurrency).

Any thread hands it records through a queue that never blocks.  The thread commits
them in groups: it waits for the first item, then gathers more for up to
``max_delay`` seconds or ``max_batch`` records, and writes them all in one transaction
with ``synchronous=NORMAL`` (WAL: no fsync per commit; a power cut may lose the last
groups, never corrupt the file).  A durable submission, a call, a flush or close ends
the gathering at once; a group that holds a durable item commits with
``synchronous=FULL`` and its future completes only after that commit.

A call may *linger* (``call(fn, durable=True, linger=s)``): it does not end the
gathering at once but lets it go on for up to ``s`` seconds from the call, for company
(other lingering calls, records), so that many durable calls share one fsync.  The
group commits at the earliest deadline of what it holds (``max_delay`` from its start
for records, each lingering call's own), or at once when an immediate item joins it
(a call without linger, a durable submission, a flush, close): an immediate durable
call never waits for the lingering ones, it takes them along.  Only a caller that can
lose the lingering call's work in a power cut without harm should linger (see
:class:`gateway.charging.Charger`); its future completes, as any, after the commit.

Queued calls (:meth:`StoreWriter.call`) share the group transaction, each in its own
savepoint: one that fails is rolled back alone and its future fails; one whose error
rolled back the whole transaction fails alone too, and the rest of the group is
written again at once, without it.  A transaction that fails otherwise is rolled back
and retried with back-off, for ever, with the error in :meth:`StoreWriter.stats`;
nothing accepted is dropped.  Refusals happen
in :meth:`~StoreWriter.submit`, in the caller's thread, as StoreError: a record the
store cannot hold, or readings beyond ``max_queue`` records waiting (the disk has
stalled for long; durable submissions and calls are never refused for this).

Between groups the thread runs its periodic passes: retention every
``retention_interval`` seconds (when ``max_bytes`` is set) and, when
``storage_interval`` is set, a storage health record (bytes in use, file bytes,
unacknowledged readings: :func:`gateway.store.health.storage_record`) at once and
then every ``storage_interval`` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlite_utils import Database

from gateway.errors import StoreError
from gateway.protocols.batch import HealthRecord
from gateway.store.db import used_bytes
from gateway.store.health import storage_record
from gateway.store.journal import INSERT_SQL, Kind, Record, Row, encode
from gateway.store.retention import RetentionResult, enforce

__all__ = ["StoreWriter", "WriterStats"]

T = TypeVar("T")
_log = logging.getLogger("gateway.store")


@dataclass(frozen=True, slots=True)
class WriterStats:
    """A snapshot of the writer's counters."""

    records_written: int
    transactions: int
    """Committed group transactions (retention passes not counted)."""
    durable_transactions: int
    """Those of them committed with ``synchronous=FULL`` (an fsync each)."""
    max_batch: int
    """Most records committed in one transaction."""
    queue_depth: int
    """Records submitted and not yet committed."""
    failures: int
    """Failed transaction attempts (each was rolled back and retried)."""
    last_error: str | None
    failing: bool
    """The latest attempt failed: records are waiting for the store to recover."""
    retention_runs: int
    readings_pruned: int
    """Acknowledged readings deleted for space."""
    readings_dropped: int
    """Unacknowledged readings deleted for space (each range journalled as an event)."""
    refused: int
    """Records refused because ``max_queue`` records were already waiting."""
    alive: bool
    storage_records: int = 0
    """Storage health records written (``storage_interval``)."""


@dataclass(slots=True)
class _Records:
    rows: list[Row]


@dataclass(slots=True)
class _Durable:
    rows: list[Row]
    future: Future[list[int]]


@dataclass(slots=True)
class _Call:
    fn: Callable[[Database], Any]
    future: Future[Any]
    durable: bool = False
    after: Callable[[Any], None] | None = None
    due: float | None = None
    """Lingering: the ``time.monotonic()`` by which its group must commit (None: at once)."""


@dataclass(slots=True)
class _Flush:
    done: threading.Event = field(default_factory=threading.Event)
    ok: bool = False


class _Stop:
    pass


class _Destroyed(Exception):
    """A call failed with an error that rolled back the whole group transaction (a
    ``RAISE(ROLLBACK)`` trigger; SQLite does so on a full disk, an I/O error): that
    call alone fails, the rest of the group is written again at once."""

    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(str(error))
        self.index = index
        self.error = error


_Item = _Records | _Durable | _Call | _Flush | _Stop
_Outcome = tuple[Future[Any], Callable[[Any], None] | None, Any, BaseException | None]
"""(future, after-commit hook, result, error) of one item of a transaction."""


def _size(item: _Item) -> int:
    return len(item.rows) if isinstance(item, _Records | _Durable) else 0


def _due(item: _Item, records_due: float) -> float:
    """When the group holding ``item`` must commit at the latest (-inf: at once)."""
    if isinstance(item, _Records):
        return records_due
    if isinstance(item, _Call) and item.due is not None:
        return item.due
    return float("-inf")


def _durable(items: list[_Item]) -> bool:
    """Whether a group holds a durable item: it commits with ``synchronous=FULL``."""
    return any(
        isinstance(item, _Durable) or (isinstance(item, _Call) and item.durable) for item in items
    )


def _settle(future: Future[Any], result: object, error: BaseException | None) -> None:
    if future.done():  # cancelled by its owner
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class StoreWriter:
    """Owns ``db`` (a write connection) on its own thread from construction to :meth:`close`.

    ``max_bytes`` (None: unbounded) is enforced every ``retention_interval`` seconds;
    ``storage_interval`` (None: never) is the period of the storage health record.
    """

    def __init__(
        self,
        db: Database,
        *,
        now_ms: Callable[[], int],
        max_batch: int = 1000,
        max_delay: float = 2.0,
        max_bytes: int | None = None,
        retention_interval: float = 60.0,
        max_queue: int = 100_000,
        storage_interval: float | None = None,
        name: str = "store-writer",
    ) -> None:
        if max_batch < 1 or max_delay < 0 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1, max_delay >= 0")
        if storage_interval is not None and not storage_interval > 0:
            raise ValueError("storage_interval must be > 0 (or None)")
        self._storage_interval = storage_interval
        self._storage_records = 0
        self._max_queue = max_queue
        self._refused = 0
        self._db = db
        self._now_ms = now_ms
        self._max_batch = max_batch
        self._max_delay = max_delay
        self._max_bytes = max_bytes
        self._retention_interval = retention_interval
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._abandon = threading.Event()
        self._meters: dict[str, int] = {}
        self._pending = 0
        self._written = 0
        self._transactions = 0
        self._durable = 0
        self._largest = 0
        self._failures = 0
        self._last_error: str | None = None
        self._failing = False
        self._retention_runs = 0
        self._pruned = 0
        self._dropped = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- any thread --------------------------------------------------------------------------

    def submit(self, record: Record) -> None:
        """Queue one record for the next group commit.  StoreError if it cannot be stored."""
        self._put(_Records([encode(record)]), 1, bounded=True)

    def submit_many(self, records: Iterable[Record]) -> None:
        """Queue records (all or none: each is checked first), kept in this order."""
        rows = [encode(record) for record in records]
        if rows:
            self._put(_Records(rows), len(rows), bounded=True)

    def submit_durable(self, records: Iterable[Record]) -> Future[list[int]]:
        """Queue records; the future gives their positions once committed and fsynced."""
        rows = [encode(record) for record in records]
        future: Future[list[int]] = Future()
        self._put(_Durable(rows, future), len(rows))
        return future

    def call(
        self,
        fn: Callable[[Database], T],
        *,
        durable: bool = False,
        after: Callable[[T], None] | None = None,
        linger: float = 0.0,
    ) -> Future[T]:
        """Run ``fn(db)`` on the writer thread inside the group transaction (a savepoint).

        The future gets its result after the commit, or its exception (the savepoint is
        rolled back, the rest of the group commits).  ``after(result)`` runs after commit.
        ``linger`` > 0: the group may wait up to that many seconds from now for company
        before it commits (see the module docstring); 0: it commits at once.
        """
        if not linger >= 0:
            raise ValueError("linger must be >= 0")
        future: Future[T] = Future()
        due = time.monotonic() + linger if linger > 0 else None
        self._put(_Call(fn, future, durable, after, due), 0)
        return future

    def mark_acknowledged(self, kind: Kind, up_to: int) -> Future[int]:
        """Raise the acknowledged mark of ``kind`` to ``up_to`` (never lowers it, never past
        the newest position); the future gives the mark now in force."""
        table = Kind(kind)

        def mark(db: Database) -> int:
            db.execute(
                "INSERT INTO acked (kind, up_to) VALUES"
                f" (?, min(?, (SELECT coalesce(max(id), 0) FROM {table})))"
                " ON CONFLICT (kind) DO UPDATE SET up_to = max(up_to, excluded.up_to)",
                (str(table), int(up_to)),
            )
            row = db.execute("SELECT up_to FROM acked WHERE kind = ?", (str(table),)).fetchone()
            return int(row[0])

        return self.call(mark)

    def enforce_retention(self, max_bytes: int | None = None) -> Future[RetentionResult]:
        """Run a retention pass now against ``max_bytes`` (default: the configured bound)."""
        bound = self._max_bytes if max_bytes is None else max_bytes
        if bound is None:
            raise ValueError("no max_bytes configured or given")
        item = self._retention(bound)
        self._put(item, 0)
        future: Future[RetentionResult] = item.future
        return future

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted before this call is committed; False on timeout."""
        item = _Flush()
        self._put(item, 0)
        return item.done.wait(timeout) and item.ok

    def nudge(self) -> None:
        """Commit what is queued now, lingering calls included, without waiting for it
        (:meth:`flush` that does not wait); nothing when the writer is closed."""
        with contextlib.suppress(StoreError):
            self._put(_Flush(), 0)

    def close(self, timeout: float | None = None) -> None:
        """Commit everything queued, then stop the thread and close the connection.

        StoreError if that does not finish within ``timeout`` seconds (the store keeps
        failing): the thread is then told to give up and pending futures fail.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_Stop())
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandon.set()
            self._thread.join(5.0)
            raise StoreError(
                f"store writer gave up with {self._pending} records not committed:"
                f" {self._last_error}"
            )

    def stats(self) -> WriterStats:
        with self._lock:
            return WriterStats(
                records_written=self._written,
                transactions=self._transactions,
                durable_transactions=self._durable,
                max_batch=self._largest,
                queue_depth=self._pending,
                failures=self._failures,
                last_error=self._last_error,
                failing=self._failing,
                retention_runs=self._retention_runs,
                readings_pruned=self._pruned,
                readings_dropped=self._dropped,
                refused=self._refused,
                alive=self._thread.is_alive(),
                storage_records=self._storage_records,
            )

    def _put(self, item: _Item, records: int, *, bounded: bool = False) -> None:
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
            if bounded and self._pending + records > self._max_queue:
                self._refused += records
                raise StoreError(f"store writer is {self._pending} records behind: refused")
            self._pending += records
            self._queue.put(item)

    def _retention(self, bound: int) -> _Call:
        def run(db: Database) -> RetentionResult:
            return enforce(db, bound, self._now_ms())

        return _Call(run, Future(), False, self._retained)

    def _retained(self, result: RetentionResult) -> None:
        with self._lock:
            self._retention_runs += 1
            self._pruned += result.pruned
            self._dropped += result.dropped_count
        for drop in result.dropped:
            _log.warning(
                "store full: dropped %d unacknowledged readings of meter %s (%d..%d)",
                drop.count,
                drop.meter,
                drop.first_ts_ms,
                drop.last_ts_ms,
            )

    def _storage(self) -> _Call:
        """A call journalling a storage health record (see :func:`storage_record`)."""

        def run(db: Database) -> HealthRecord:
            acked = db.execute("SELECT up_to FROM acked WHERE kind = ?", (str(Kind.READINGS),))
            row = acked.fetchone()
            waiting = db.execute(
                "SELECT count(*) FROM readings WHERE id > ?", (int(row[0]) if row else 0,)
            ).fetchone()[0]
            record = storage_record(self._now_ms(), used_bytes(db), _file_bytes(db), int(waiting))
            db.conn.execute(INSERT_SQL[Kind.HEALTH], encode(record).params)
            return record

        return _Call(run, Future(), False, self._stored)

    def _stored(self, record: HealthRecord) -> None:
        with self._lock:
            self._storage_records += 1

    # -- the writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        start = time.monotonic()
        next_retention = math.inf
        if self._max_bytes is not None:
            next_retention = start + self._retention_interval
        next_storage = start if self._storage_interval is not None else math.inf
        try:
            stopping = False
            while not stopping:
                if self._max_bytes is not None and time.monotonic() >= next_retention:
                    retention = self._retention(self._max_bytes)
                    if not self._commit_with_retry([retention], count=False):
                        return
                    next_retention = time.monotonic() + self._retention_interval
                if self._storage_interval is not None and time.monotonic() >= next_storage:
                    if not self._commit_with_retry([self._storage()], count=False):
                        return
                    next_storage = time.monotonic() + self._storage_interval
                due = min(next_retention, next_storage)
                wait = None if due == math.inf else max(0.0, due - time.monotonic())
                items = self._collect(wait)
                stopping = any(isinstance(item, _Stop) for item in items)
                if items and not self._commit_with_retry(items):
                    return
        finally:
            self._db.close()
            self._fail_queued()

    def _fail_queued(self) -> None:
        """The thread is ending: refuse new items and fail those still queued."""
        with self._lock:
            self._closed = True
            reason = self._last_error
        error = StoreError(f"store writer stopped: {reason}")
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Durable | _Call):
                _settle(item.future, None, error)
            elif isinstance(item, _Flush):
                item.done.set()

    def _collect(self, wait: float | None) -> list[_Item]:
        """The next group: the first item (waiting up to ``wait``), then what joins it
        until the earliest deadline of its items (an immediate one: what is queued)."""
        try:
            first = self._queue.get(timeout=wait)
        except queue.Empty:
            return []
        items = [first]
        count = _size(first)
        records_due = time.monotonic() + self._max_delay
        deadline = _due(first, records_due)
        while count < self._max_batch and not isinstance(items[-1], _Stop):
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    item = self._queue.get_nowait()
                else:
                    item = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            items.append(item)
            count += _size(item)
            deadline = min(deadline, _due(item, records_due))
        return items

    def _commit_with_retry(self, items: list[_Item], *, count: bool = True) -> bool:
        """Commit ``items`` in one transaction, retrying until it works; False if abandoned."""
        delay = 0.05
        items = list(items)
        while True:
            try:
                outcomes = self._commit(items)
                break
            except _Destroyed as lost:
                call = items.pop(lost.index)
                with self._lock:
                    self._failures += 1
                    self._last_error = f"{type(lost.error).__name__}: {lost.error}"
                _log.warning("store call failed and rolled back its group: %s", lost.error)
                if isinstance(call, _Call):
                    _settle(call.future, None, lost.error)
                continue
            except Exception as exc:
                with self._lock:
                    self._failures += 1
                    self._failing = True
                    self._last_error = f"{type(exc).__name__}: {exc}"
                _log.error("store transaction failed, retrying in %.2f s: %s", delay, exc)
                if self._abandon.wait(delay):
                    error = StoreError(f"store writer gave up: {exc}")
                    for item in items:
                        if isinstance(item, _Durable | _Call):
                            _settle(item.future, None, error)
                        elif isinstance(item, _Flush):
                            item.done.set()
                    return False
                delay = min(delay * 2, 5.0)
        records = sum(_size(item) for item in items)
        with self._lock:
            self._failing = False
            self._pending -= records
            self._written += records
            if count:
                self._transactions += 1
                self._durable += _durable(items)
                self._largest = max(self._largest, records)
        for future, after, result, failure in outcomes:
            if failure is not None:
                _log.warning("store call failed: %s", failure)
            elif after is not None:
                after(result)
            _settle(future, result, failure)
        for item in items:
            if isinstance(item, _Flush):
                item.ok = True
                item.done.set()
        return True

    def _commit(self, items: list[_Item]) -> list[_Outcome]:
        """One transaction for ``items``; an outcome for each that has a future."""
        db = self._db
        durable = _durable(items)
        new_meters: dict[str, int] = {}
        outcomes: list[_Outcome] = []
        if durable:
            db.execute("PRAGMA synchronous=FULL")
        try:
            with db.atomic():
                group: dict[Kind, list[tuple[object, ...]]] = defaultdict(list)
                for index, item in enumerate(items):
                    if isinstance(item, _Records):
                        for row in item.rows:
                            group[row.kind].append(self._params(row, new_meters))
                        continue
                    self._insert_group(group)
                    if isinstance(item, _Durable):
                        ids = [self._insert_one(row, new_meters) for row in item.rows]
                        outcomes.append((item.future, None, ids, None))
                    elif isinstance(item, _Call):
                        outcome = self._run_call(item)
                        if outcome[3] is not None and not db.conn.in_transaction:
                            # nothing of the group is left: not a word more of it in
                            # autocommit; this call fails, the others are written again
                            raise _Destroyed(index, outcome[3])
                        outcomes.append(outcome)
                self._insert_group(group)
        finally:
            if durable:
                with contextlib.suppress(Exception):
                    db.execute("PRAGMA synchronous=NORMAL")
        self._meters.update(new_meters)
        return outcomes

    def _run_call(self, item: _Call) -> _Outcome:
        try:
            with self._db.atomic():  # nested: a savepoint
                return item.future, item.after, item.fn(self._db), None
        except Exception as exc:
            return item.future, None, None, exc

    def _insert_group(self, group: dict[Kind, list[tuple[object, ...]]]) -> None:
        for kind, rows in group.items():
            self._db.conn.executemany(INSERT_SQL[kind], rows)
        group.clear()

    def _insert_one(self, row: Row, new_meters: dict[str, int]) -> int:
        cursor = self._db.conn.execute(INSERT_SQL[row.kind], self._params(row, new_meters))
        return int(cursor.lastrowid or 0)

    def _params(self, row: Row, new_meters: dict[str, int]) -> tuple[object, ...]:
        if row.meter is None:
            return row.params
        number = self._meters.get(row.meter)
        if number is None:
            number = new_meters.get(row.meter)
        if number is None:
            number = self._meter_number(row.meter)
            new_meters[row.meter] = number
        return (number, *row.params)

    def _meter_number(self, name: str) -> int:
        conn = self._db.conn
        conn.execute("INSERT OR IGNORE INTO meters (name) VALUES (?)", (name,))
        return int(conn.execute("SELECT id FROM meters WHERE name = ?", (name,)).fetchone()[0])


def _file_bytes(db: Database) -> int:
    """Bytes on disk of the store's main file and its WAL (0 for an in-memory store)."""
    total = 0
    for _, name, path in db.execute("PRAGMA database_list").fetchall():
        if name != "main" or not path:
            continue
        for file in (path, f"{path}-wal"):
            with contextlib.suppress(OSError):
                total += os.stat(file).st_size
    return total
