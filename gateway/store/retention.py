"""Keeping the store under its size bound (design.md, "What may never be lost").

When the pages in use pass ``max_bytes``, readings are deleted oldest first down to
``low_water × max_bytes``: acknowledged ones first; if that is not enough,
unacknowledged ones, each meter's dropped range recorded as an event
(:data:`EVENT_READINGS_DROPPED`) in the same transaction.  An unacknowledged reading
already built into an outbox batch is not dropped by deleting its journal row: the
batch keeps its own copy until the master acknowledges it, so it is counted with the
pruned ones and no event claims it lost.  Nothing else is ever
deleted (events, task results, health, and later the ledger), and the newest
reading is always kept so that positions keep increasing.  The file itself does not
shrink: freed pages are reused by new rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlite_utils import Database

from gateway.protocols.batch import MeterEvent
from gateway.protocols.quantities import EventCode
from gateway.store.db import used_bytes
from gateway.store.journal import INSERT_SQL, Kind, encode

__all__ = ["EVENT_READINGS_DROPPED", "DroppedRange", "RetentionResult", "enforce"]

EVENT_READINGS_DROPPED = EventCode.READINGS_DROPPED
"""Event code: unacknowledged readings of this meter were deleted for space.

Detail: ``count``, ``first_id``, ``last_id`` (positions), ``first_ts_ms``, ``last_ts_ms``:
every reading of the meter in that range is lost, none outside it (a reading of the
meter kept in an outbox batch splits its range into two events).
"""

_MAX_ROUNDS = 64
_MIN_CHUNK = 256


@dataclass(frozen=True, slots=True)
class DroppedRange:
    """Unacknowledged readings of one meter deleted for space: every one in the range."""

    meter: str
    count: int
    first_id: int
    last_id: int
    first_ts_ms: int
    last_ts_ms: int


@dataclass(frozen=True, slots=True)
class RetentionResult:
    """What one retention pass found and did."""

    used_before: int
    used_after: int
    pruned: int
    """Acknowledged readings deleted, and unacknowledged ones whose outbox batch keeps them."""
    dropped: tuple[DroppedRange, ...]
    """Unacknowledged readings deleted, per meter."""
    over_budget: bool
    """Still above the bound with no reading left to delete."""

    @property
    def dropped_count(self) -> int:
        return sum(r.count for r in self.dropped)


def enforce(db: Database, max_bytes: int, now_ms: int, low_water: float = 0.9) -> RetentionResult:
    """One retention pass; run it inside a transaction of the writer connection."""
    before = used_bytes(db)
    if before <= max_bytes:
        return RetentionResult(before, before, 0, (), False)
    target = int(max_bytes * low_water)
    newest = int(db.execute("SELECT coalesce(max(id), 0) FROM readings").fetchone()[0])
    acked_row = db.execute("SELECT up_to FROM acked WHERE kind = ?", (str(Kind.READINGS),))
    acked = acked_row.fetchone()
    acked_up_to = min(int(acked[0]) if acked else 0, newest - 1)
    pruned = 0
    dropped: list[DroppedRange] = []
    used = before
    count = int(db.execute("SELECT count(*) FROM readings").fetchone()[0])
    per_row = max(1.0, used / max(count, 1))  # an overestimate: other tables count too
    boost = 1
    for _ in range(_MAX_ROUNDS):
        if used <= target:
            break
        chunk = max(_MIN_CHUNK, int((used - target) / per_row) + 1) * boost
        oldest = db.execute("SELECT min(id) FROM readings").fetchone()[0]
        if oldest is None or oldest >= newest:
            break
        if oldest <= acked_up_to:
            last = _chunk_end(db, oldest, acked_up_to, chunk)
            pruned += db.execute("DELETE FROM readings WHERE id <= ?", (last,)).rowcount
        else:
            last = _chunk_end(db, oldest, newest - 1, chunk)
            lost = _record_drop(db, oldest, last, now_ms)
            dropped.extend(lost)
            deleted = db.execute("DELETE FROM readings WHERE id <= ?", (last,)).rowcount
            pruned += deleted - sum(r.count for r in lost)
        freed_rows = pruned + sum(r.count for r in dropped)
        now_used = used_bytes(db)
        if now_used < used:
            per_row = max(1.0, (before - now_used) / freed_rows)
            boost = 1
        else:
            boost *= 2  # deleting a few rows may empty no page yet
        used = now_used
    return RetentionResult(before, used, pruned, tuple(dropped), used > max_bytes)


def _chunk_end(db: Database, first: int, limit: int, chunk: int) -> int:
    """The position ending a chunk of ``chunk`` rows from ``first``, at most ``limit``."""
    row = db.execute(
        "SELECT id FROM readings WHERE id >= ? AND id <= ? ORDER BY id LIMIT 1 OFFSET ?",
        (first, limit, chunk - 1),
    ).fetchone()
    return limit if row is None else int(row[0])


def _record_drop(db: Database, first: int, last: int, now_ms: int) -> list[DroppedRange]:
    """Journal one event per meter and run of readings ``first..last`` that no outbox
    batch holds (those are lost with their rows); a batched reading ends its meter's run."""
    rows = db.execute(
        "SELECT r.id, r.meter, m.name, r.ts_ms, EXISTS (SELECT 1 FROM outbox o"
        " WHERE r.id > o.readings_from AND r.id <= o.readings_to)"
        " FROM readings r JOIN meters m ON m.id = r.meter"
        " WHERE r.id BETWEEN ? AND ? ORDER BY r.id",
        (first, last),
    ).fetchall()
    runs: dict[int, tuple[int, str, list[tuple[int, int]]]] = {}  # meter -> its open run
    closed: list[tuple[int, str, list[tuple[int, int]]]] = []
    for position, meter_id, name, ts_ms, batched in rows:
        if batched:
            if (ended := runs.pop(meter_id, None)) is not None:
                closed.append(ended)
        else:
            runs.setdefault(meter_id, (meter_id, name, []))[2].append((position, ts_ms))
    closed.extend(runs.values())
    closed.sort(key=lambda c: c[2][0][0])
    out: list[DroppedRange] = []
    for meter_id, name, run in closed:
        stamps = [ts for _, ts in run]
        drop = DroppedRange(name, len(run), run[0][0], run[-1][0], min(stamps), max(stamps))
        event = MeterEvent(name, now_ms, EVENT_READINGS_DROPPED, _detail(drop))
        db.execute(INSERT_SQL[Kind.EVENTS], (meter_id, *encode(event).params))
        out.append(drop)
    return out


def _detail(drop: DroppedRange) -> dict[int | str, int | str]:
    return {
        "count": drop.count,
        "first_id": drop.first_id,
        "last_id": drop.last_id,
        "first_ts_ms": drop.first_ts_ms,
        "last_ts_ms": drop.last_ts_ms,
    }
