"""The outbox: CBOR batches built from the journal, numbered per epoch, kept until the
master acknowledges them (design.md, "Delivery").

A batch covers, for each record kind, a range of journal positions
(``from < position <= to``); its sequence number and its encoded payload are fixed
when it is built, so a re-send is byte-identical.  Live batches take the newest
records; when more than ``live_threshold`` readings wait unsent (after an outage)
the live batch jumps to the newest readings and the gap left behind is *backlog*,
built into batches of readings by :meth:`Outbox.build` ``backlog=n`` at the pace its
caller chooses.  Events, task results, health and ledger entries always go in order in
live batches.

When the master acknowledges the highest contiguous sequence number it stored,
:meth:`Outbox.acknowledge` marks those batches, raises each kind's acknowledged mark
(``acked``, what retention may prune) as far as acknowledged batches cover the
journal without a hole, and deletes batches wholly below the marks.  Everything is
done on the store's writer thread (:meth:`StoreWriter.call`); the uplink reads
batches with its own :class:`OutboxReader`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from gateway.protocols.batch import (
    Batch,
    HealthRecord,
    LedgerEntry,
    MeterEvent,
    TaskResult,
    encode_batch,
)
from gateway.protocols.quantities import Reading
from gateway.store.db import ReadConnection
from gateway.store.journal import Kind, decode_row
from gateway.store.ledger import LEDGER, entry
from gateway.store.store import Store, wall_ms

__all__ = ["Built", "Outbox", "OutboxEntry", "OutboxReader"]

_KINDS: tuple[str, ...] = (Kind.READINGS, Kind.EVENTS, Kind.TASKS, Kind.HEALTH, LEDGER)
"""Record kinds a batch carries: the journal's and the ledger (``acked`` key "ledger")."""
_COLUMN = {
    Kind.READINGS: "readings",
    Kind.EVENTS: "events",
    Kind.TASKS: "tasks",
    Kind.HEALTH: "health",
    LEDGER: "ledger",
}
_RANGES = ", ".join(f"{_COLUMN[k]}_from, {_COLUMN[k]}_to" for k in _KINDS)
_SELECT = {
    Kind.READINGS: "SELECT r.id, m.name, r.ts_ms, r.flags, r.vals FROM readings r"
    " JOIN meters m ON m.id = r.meter WHERE r.id > ? AND r.id <= ? ORDER BY r.id",
    Kind.EVENTS: "SELECT e.id, m.name, e.ts_ms, e.code, e.detail FROM events e"
    " JOIN meters m ON m.id = e.meter WHERE e.id > ? AND e.id <= ? ORDER BY e.id",
    Kind.TASKS: "SELECT t.id, m.name, t.kind, t.business_day, t.status, t.freeze_ts_ms, t.vals"
    " FROM task_results t JOIN meters m ON m.id = t.meter WHERE t.id > ? AND t.id <= ?"
    " ORDER BY t.id",
    Kind.HEALTH: "SELECT h.id, h.ts_ms, h.kind, h.vals FROM health h"
    " WHERE h.id > ? AND h.id <= ? ORDER BY h.id",
    LEDGER: "SELECT id, account, ts_ms, kind, amount, balance_after, reference, tariff_version"
    " FROM ledger WHERE id > ? AND id <= ? ORDER BY id",
}

Range = tuple[int, int]


@dataclass(frozen=True, slots=True)
class _Row:
    seq: int
    ranges: dict[str, Range]
    acked: bool


@dataclass(frozen=True, slots=True)
class Built:
    """Batches built by one :meth:`Outbox.build`: their seqs, live and backlog."""

    live: tuple[int, ...]
    backlog: tuple[int, ...]
    records: int


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A batch waiting for the master's acknowledgement."""

    seq: int
    created_ms: int
    records: int
    sent_count: int


class Outbox:
    """Builds and acknowledges batches on ``store``'s writer thread."""

    def __init__(
        self,
        store: Store,
        *,
        batch_size: int = 200,
        live_threshold: int = 1000,
        now_ms: Callable[[], int] = wall_ms,
    ) -> None:
        if batch_size < 1 or live_threshold < batch_size:
            raise ValueError("batch_size >= 1 and live_threshold >= batch_size")
        self.store = store
        self.now_ms = now_ms
        self.batch_size = batch_size
        self.live_threshold = live_threshold

    def build(self, *, live: int = 1, partial: bool = True, backlog: int = 0) -> Future[Built]:
        """Build up to ``live`` live batches (full ones; the last may be partial when
        ``partial``) and up to ``backlog`` batches of backlog readings."""

        def run(db: Database) -> Built:
            return self._build(db, live, partial, backlog)

        return self.store.writer.call(run)

    def acknowledge(
        self, epoch: int, highest_contiguous: int, sent: Mapping[int, int] | None = None
    ) -> Future[dict[str, int]]:
        """The master stored every batch of ``epoch`` up to ``highest_contiguous``.

        ``sent`` adds publish counts per seq.  The future gives each kind's mark now in
        force.  An ack of another epoch changes nothing but the counts.
        """
        counts = dict(sent or {})

        def run(db: Database) -> dict[str, int]:
            _add_sent(db, counts)
            if epoch == _meta_int(db, "epoch"):
                db.execute("UPDATE outbox SET acked = 1 WHERE seq <= ?", (highest_contiguous,))
            return _advance_marks(db)

        return self.store.writer.call(run)

    def record_sent(self, sent: Mapping[int, int]) -> Future[None]:
        counts = dict(sent)

        def run(db: Database) -> None:
            _add_sent(db, counts)

        return self.store.writer.call(run)

    # -- on the writer thread --------------------------------------------------------------

    def _build(self, db: Database, live: int, partial: bool, backlog: int) -> Built:
        rows = _rows(db)
        marks = _marks(db)
        high = {k: max([marks[k], *(r.ranges[k][1] for r in rows)]) for k in _KINDS}
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        seq = int(meta.get("outbox_seq") or 0)
        made_live: list[int] = []
        made_backlog: list[int] = []
        total = 0
        size = self.batch_size
        for _ in range(live):
            ranges: dict[str, Range] = {}
            waiting = _ids_after(db, Kind.READINGS, high[Kind.READINGS], self.live_threshold + 1)
            if len(waiting) > self.live_threshold:  # backlog: leave the gap, take the newest
                newest = [
                    int(r[0])
                    for r in db.execute(
                        "SELECT id FROM readings WHERE id > ? ORDER BY id DESC LIMIT ?",
                        (high[Kind.READINGS], size),
                    )
                ]
                ranges[Kind.READINGS] = (min(newest) - 1, max(newest))
            else:
                ids = waiting[:size]
                ranges[Kind.READINGS] = (
                    high[Kind.READINGS],
                    ids[-1] if ids else high[Kind.READINGS],
                )
            for kind in _KINDS[1:]:
                ids = _ids_after(db, kind, high[kind], size)
                ranges[kind] = (high[kind], ids[-1] if ids else high[kind])
            full = any(_count(db, k, ranges[k]) >= size for k in _KINDS)
            if not any(_nonempty(ranges[k]) for k in _KINDS) or not (full or partial):
                break
            seq += 1
            total += self._insert(db, seq, ranges, meta)
            made_live.append(seq)
            for kind in _KINDS:
                high[kind] = max(high[kind], ranges[kind][1])
            rows.append(_Row(seq, ranges, False))
        for _ in range(backlog):
            gap = _first_gap(db, rows, marks[Kind.READINGS])
            if gap is None:
                break
            ids = _ids_after(db, Kind.READINGS, gap[0], size, gap[1])
            ranges = {k: (0, 0) for k in _KINDS}
            ranges[Kind.READINGS] = (gap[0], ids[-1])
            seq += 1
            total += self._insert(db, seq, ranges, meta)
            made_backlog.append(seq)
            rows.append(_Row(seq, ranges, False))
        if made_live or made_backlog:
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('outbox_seq', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (seq,),
            )
        return Built(tuple(made_live), tuple(made_backlog), total)

    def _insert(
        self, db: Database, seq: int, ranges: dict[str, Range], meta: dict[Any, Any]
    ) -> int:
        records: dict[str, list[Any]] = {}
        for kind in _KINDS:
            lo, hi = ranges[kind]
            rows = db.execute(_SELECT[kind], (lo, hi)).fetchall() if hi > lo else []
            if kind == LEDGER:
                records[kind] = [entry(tuple(row)) for row in rows]
            else:
                records[kind] = [decode_row(Kind(kind), tuple(row))[1] for row in rows]
        batch = Batch(
            gateway_id=str(meta["gateway_id"]),
            epoch=int(meta["epoch"]),
            seq=seq,
            readings=tuple(r for r in records[Kind.READINGS] if isinstance(r, Reading)),
            events=tuple(r for r in records[Kind.EVENTS] if isinstance(r, MeterEvent)),
            tasks=tuple(r for r in records[Kind.TASKS] if isinstance(r, TaskResult)),
            health=tuple(r for r in records[Kind.HEALTH] if isinstance(r, HealthRecord)),
            ledger=tuple(r for r in records[LEDGER] if isinstance(r, LedgerEntry)),
        )
        count = sum(len(v) for v in records.values())
        flat = [v for k in _KINDS for v in ranges[k]]
        db.execute(
            f"INSERT INTO outbox (seq, created_ms, {_RANGES}, records, payload)"
            f" VALUES (?, ?, {', '.join('?' * len(flat))}, ?, ?)",
            (seq, self.now_ms(), *flat, count, encode_batch(batch)),
        )
        return count


def _nonempty(r: Range) -> bool:
    return r[1] > r[0]


def _meta_int(db: Database, key: str) -> int:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _rows(db: Database) -> list[_Row]:
    out = []
    for row in db.execute(f"SELECT seq, {_RANGES}, acked FROM outbox ORDER BY seq").fetchall():
        ranges = {k: (int(row[1 + 2 * i]), int(row[2 + 2 * i])) for i, k in enumerate(_KINDS)}
        out.append(_Row(int(row[0]), ranges, bool(row[-1])))
    return out


def _marks(db: Database) -> dict[str, int]:
    got = dict(db.execute("SELECT kind, up_to FROM acked").fetchall())
    return {k: int(got.get(str(k), 0)) for k in _KINDS}


def _ids_after(
    db: Database, kind: str, after: int, limit: int, up_to: int | None = None
) -> list[int]:
    top = "" if up_to is None else f" AND id <= {int(up_to)}"
    sql = f"SELECT id FROM {kind} WHERE id > ?{top} ORDER BY id LIMIT ?"
    return [int(r[0]) for r in db.execute(sql, (after, limit)).fetchall()]


def _count(db: Database, kind: str, r: Range) -> int:
    if not _nonempty(r):
        return 0
    sql = f"SELECT count(*) FROM {kind} WHERE id > ? AND id <= ?"
    return int(db.execute(sql, r).fetchone()[0])


def _first_gap(db: Database, rows: list[_Row], mark: int) -> Range | None:
    """The lowest range of readings above ``mark`` that no batch covers and that still
    holds readings, up to the lowest batch above it; None when there is none."""
    cursor = mark
    for row in sorted((r for r in rows if _nonempty(r.ranges[Kind.READINGS])), key=_from_r):
        lo, hi = row.ranges[Kind.READINGS]
        if lo > cursor and _count(db, Kind.READINGS, (cursor, lo)):
            return cursor, lo
        cursor = max(cursor, hi)
    return None


def _from_r(row: _Row) -> int:
    return row.ranges[Kind.READINGS][0]


def _add_sent(db: Database, counts: Mapping[int, int]) -> None:
    db.conn.executemany(
        "UPDATE outbox SET sent_count = sent_count + ? WHERE seq = ?",
        [(n, seq) for seq, n in counts.items()],
    )


def _advance_marks(db: Database) -> dict[str, int]:
    """Raise each kind's acknowledged mark over acknowledged batches without a hole;
    delete batches wholly below the marks.  The marks in force."""
    rows = _rows(db)
    marks = _marks(db)
    for kind in _KINDS:
        cursor = marks[kind]
        ranges = sorted((r.ranges[kind], r.acked) for r in rows if _nonempty(r.ranges[kind]))
        for (lo, hi), acked in ranges:
            if hi <= cursor:
                continue
            if not acked or (lo > cursor and _count(db, kind, (cursor, lo))):
                break
            cursor = hi
        if cursor > marks[kind]:
            db.execute(
                "INSERT INTO acked (kind, up_to) VALUES (?, ?)"
                " ON CONFLICT (kind) DO UPDATE SET up_to = max(up_to, excluded.up_to)",
                (str(kind), cursor),
            )
            marks[kind] = cursor
    done = [
        r.seq
        for r in rows
        if r.acked and all(r.ranges[k][1] <= marks[k] or not _nonempty(r.ranges[k]) for k in _KINDS)
    ]
    db.conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in done])
    return marks


class OutboxReader(ReadConnection):
    """A read-only view of the outbox (its own connection; one thread at a time)."""

    _what = "outbox"

    def pending(self) -> list[OutboxEntry]:
        """Batches the master has not acknowledged, oldest seq first."""
        rows = self._all(
            "SELECT seq, created_ms, records, sent_count FROM outbox WHERE acked = 0 ORDER BY seq"
        )
        return [OutboxEntry(*(int(v) for v in row)) for row in rows]

    def payload(self, seq: int) -> bytes | None:
        """The encoded batch ``seq``, or None when it is gone (acknowledged)."""
        rows = self._all("SELECT payload FROM outbox WHERE seq = ?", (seq,))
        return bytes(rows[0][0]) if rows else None

    def missing(self, seqs: list[int] | tuple[int, ...]) -> list[int]:
        """Those of ``seqs`` still held unacknowledged, to re-send."""
        held = {e.seq for e in self.pending()}
        return [s for s in seqs if s in held]

    def unsent(self, limit: int = 1_000_000) -> dict[str, int]:
        """Records of each kind above every batch and mark (what the next live batch
        takes), each count capped at ``limit`` (counting stops there)."""
        rows = self._all(f"SELECT {_RANGES} FROM outbox")
        marks = dict(self._all("SELECT kind, up_to FROM acked"))
        out = {}
        for i, kind in enumerate(_KINDS):
            high = max([int(marks.get(str(kind), 0)), *(int(r[2 * i + 1]) for r in rows)])
            sql = f"SELECT count(*) FROM (SELECT 1 FROM {kind} WHERE id > ? LIMIT ?)"
            out[kind] = int(self._all(sql, (high, limit))[0][0])
        return out

    def backlog(self) -> int:
        """Readings above the acknowledged mark in no batch yet (plus the unsent tail)."""
        mark = self._all("SELECT up_to FROM acked WHERE kind = 'readings'")
        low = int(mark[0][0]) if mark else 0
        total = int(self._all("SELECT count(*) FROM readings WHERE id > ?", (low,))[0][0])
        covered = 0
        for lo, hi in self._all(
            "SELECT readings_from, readings_to FROM outbox WHERE readings_to > ?", (low,)
        ):
            sql = "SELECT count(*) FROM readings WHERE id > ? AND id <= ?"
            covered += int(self._all(sql, (max(int(lo), low), int(hi)))[0][0])
        return max(0, total - covered)

    def last_seq(self) -> int:
        rows = self._all("SELECT value FROM meta WHERE key = 'outbox_seq'")
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    def epoch(self) -> int:
        return int(self._all("SELECT value FROM meta WHERE key = 'epoch'")[0][0])
