"""The master station's central store: SQLite (WAL) through sqlite-utils.

One row per batch in ``batches``, unique by (gateway, epoch, seq); every record of a
batch is keyed by (batch, row) -- that is (gateway, epoch, seq, position in the
batch) -- so storing a batch twice inserts nothing the second time.  A batch and all
its records go in ONE transaction, committed with ``synchronous=FULL`` before the
master acknowledges it: the gateway prunes what is acknowledged, so an acknowledged
batch must survive a power cut.

``epochs`` keeps, per (gateway, epoch), the highest contiguous sequence number stored
(the acknowledgement) and the highest seen; the sequence numbers missing between them
are what the master asks the gateway to re-send.  Readings' values are JSON objects
``{"<quantity code>": int}`` so SQL can reach them (``json_extract``).

``replies`` (migration 2) keeps the gateways' answers to commands (``up/reply``): per
gateway the command id (hex), status and reason (names), text, result (JSON; bytes as
hex) and when it was received.  A reply delivered again (the same gateway, command id,
status, reason, text and result) is stored once; another answer to the same id (a
command sent again is answered ``REPLAYED``) is a row of its own.

A gateway whose store was damaged at start restarts every balance from zero in a new
epoch and enters safe mode (event ``SAFE_MODE``, state ``entered``; ``ended`` when the
master's RELAY_RESUME lifts it): :meth:`MasterStore.safe_mode` is its latest such event
and :meth:`MasterStore.balances` the balances the master can vouch for from the ledger
entries it stored (docs/safe-mode.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from types import TracebackType

from sqlite_utils import Database

from gateway.errors import StoreCorrupt, StoreError
from gateway.protocols.batch import (
    Ack,
    Batch,
    HealthRecord,
    LedgerEntry,
    MeterEvent,
    TaskKind,
    TaskResult,
    TaskStatus,
)
from gateway.protocols.command import CommandReply, ReasonCode, ReplyStatus
from gateway.protocols.quantities import EventCode, Quantity, Reading
from gateway.store.db import check_integrity, connect, store_errors
from gateway.store.ledger import EntryKind
from gateway.store.migrations import Migrations

__all__ = [
    "MASTER",
    "MAX_MISSING",
    "GatewaySummary",
    "MasterStore",
    "SafeModeReport",
    "Stored",
    "StoredReply",
    "VouchedBalance",
]

MAX_MISSING = 64
"""At most this many missing sequence numbers (the lowest) are listed in one ack."""

MASTER = Migrations()
"""The master store's migrations."""


@MASTER(1, "master tables")
def _master_tables(db: Database) -> None:
    for statement in (
        "CREATE TABLE gateways (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
        " status TEXT, status_ms INTEGER, last_seen_ms INTEGER)",
        "CREATE TABLE epochs (gateway INTEGER NOT NULL REFERENCES gateways(id),"
        " epoch INTEGER NOT NULL, contiguous INTEGER NOT NULL, highest INTEGER NOT NULL,"
        " first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL, PRIMARY KEY (gateway, epoch))",
        "CREATE TABLE batches (id INTEGER PRIMARY KEY,"
        " gateway INTEGER NOT NULL REFERENCES gateways(id), epoch INTEGER NOT NULL,"
        " seq INTEGER NOT NULL, received_ms INTEGER NOT NULL, size INTEGER NOT NULL,"
        " readings INTEGER NOT NULL, events INTEGER NOT NULL, ledger INTEGER NOT NULL,"
        " tasks INTEGER NOT NULL, health INTEGER NOT NULL, UNIQUE (gateway, epoch, seq))",
        "CREATE TABLE meters (id INTEGER PRIMARY KEY,"
        " gateway INTEGER NOT NULL REFERENCES gateways(id), name TEXT NOT NULL,"
        " UNIQUE (gateway, name))",
        "CREATE TABLE readings (batch INTEGER NOT NULL, row INTEGER NOT NULL,"
        " meter INTEGER NOT NULL, ts_ms INTEGER NOT NULL, flags INTEGER NOT NULL,"
        " vals TEXT NOT NULL, PRIMARY KEY (batch, row)) WITHOUT ROWID",
        "CREATE INDEX readings_meter_ts ON readings (meter, ts_ms)",
        "CREATE TABLE events (batch INTEGER NOT NULL, row INTEGER NOT NULL,"
        " meter INTEGER NOT NULL, ts_ms INTEGER NOT NULL, code INTEGER NOT NULL,"
        " detail TEXT NOT NULL, PRIMARY KEY (batch, row)) WITHOUT ROWID",
        "CREATE TABLE ledger (batch INTEGER NOT NULL, row INTEGER NOT NULL,"
        " entry_id INTEGER NOT NULL, account TEXT NOT NULL, ts_ms INTEGER NOT NULL,"
        " kind INTEGER NOT NULL, amount INTEGER NOT NULL, balance_after INTEGER NOT NULL,"
        " reference TEXT NOT NULL, tariff_version INTEGER NOT NULL,"
        " PRIMARY KEY (batch, row)) WITHOUT ROWID",
        "CREATE TABLE task_results (batch INTEGER NOT NULL, row INTEGER NOT NULL,"
        " meter INTEGER NOT NULL, kind INTEGER NOT NULL, business_day TEXT NOT NULL,"
        " status INTEGER NOT NULL, freeze_ts_ms INTEGER, vals TEXT NOT NULL,"
        " PRIMARY KEY (batch, row)) WITHOUT ROWID",
        "CREATE TABLE health (batch INTEGER NOT NULL, row INTEGER NOT NULL,"
        " ts_ms INTEGER NOT NULL, kind INTEGER NOT NULL, vals TEXT NOT NULL,"
        " PRIMARY KEY (batch, row)) WITHOUT ROWID",
        "CREATE TABLE rejected (id INTEGER PRIMARY KEY, received_ms INTEGER NOT NULL,"
        " topic TEXT NOT NULL, size INTEGER NOT NULL, reason TEXT NOT NULL)",
    ):
        db.execute(statement)


@MASTER(2, "command replies")
def _replies(db: Database) -> None:
    db.execute(
        "CREATE TABLE replies (id INTEGER PRIMARY KEY,"
        " gateway INTEGER NOT NULL REFERENCES gateways(id), command TEXT NOT NULL,"
        " status TEXT NOT NULL, reason TEXT NOT NULL, text TEXT NOT NULL,"
        " result TEXT NOT NULL, received_ms INTEGER NOT NULL,"
        " UNIQUE (gateway, command, status, reason, text, result))"
    )


@dataclass(frozen=True, slots=True)
class StoredReply:
    """One gateway's answer to a command, as stored (``result`` decoded from JSON)."""

    gateway_id: str
    command: str
    """The command id in hex ("" for a reply to a message that had none)."""
    status: str
    reason: str
    text: str
    result: dict[str, object]
    received_ms: int


@dataclass(frozen=True, slots=True)
class Stored:
    """What storing a batch did: ``new`` is False for a duplicate; ``ack`` to send now."""

    new: bool
    ack: Ack


@dataclass(frozen=True, slots=True)
class GatewaySummary:
    """Per gateway: retained status, epochs, and what is stored (``master stats``)."""

    gateway_id: str
    status: str | None
    status_ms: int | None
    last_seen_ms: int | None
    epochs: int
    batches: int
    readings: int
    events: int
    ledger: int
    tasks: int
    health: int
    replies: int = 0
    """Command replies stored."""
    safe_mode: bool = False
    """The gateway's latest ``SAFE_MODE`` event entered safe mode (no end after it)."""


@dataclass(frozen=True, slots=True)
class SafeModeReport:
    """A gateway's latest ``SAFE_MODE`` event (:meth:`MasterStore.safe_mode`)."""

    on: bool
    """State ``entered``: the gateway is in safe mode (no trips) as far as stored."""
    since_ms: int
    """When it entered safe mode (the gateway's calendar ms)."""
    reason: str
    epoch: int
    """The epoch it entered safe mode in: its new store's, balances from zero."""
    ts_ms: int
    """When the latest event (entered or ended) was recorded."""


@dataclass(frozen=True, slots=True)
class VouchedBalance:
    """An account's balance as the master can vouch for it from the ledger entries it
    stored (:meth:`MasterStore.balances`); money in 0.0001 yuan."""

    account: str
    vouched: int
    """The balance the entries stored vouch for: with safe mode, the last balance before
    the safe-mode epoch plus that epoch's entries (its compensations and reductions until
    safe mode ended excepted: they are the restoration); without, the latest
    ``balance_after``."""
    gateway: int
    """The gateway's own balance as stored (the latest ``balance_after`` of the current
    epoch: from zero after a damaged store; 0 with no entry in it yet)."""
    before_ms: int | None
    """The time of the last entry before the safe-mode epoch (None: none, or no safe
    mode): what happened between it and the damage was lost with the store."""
    last_ms: int
    """The time of the account's latest entry stored."""
    entries: int

    @property
    def restore(self) -> int:
        """What a compensation must add on the gateway (negative: a reduction)."""
        return self.vouched - self.gateway


_RESTORING = (int(EntryKind.COMPENSATION), int(EntryKind.REDUCTION))
"""Entry kinds that restore balances while a gateway is in safe mode (docs/safe-mode.md)."""


@dataclass(slots=True)
class _Account:
    """An account's sums while :meth:`MasterStore.balances` reads its entries."""

    before: int = 0
    before_ms: int | None = None
    since: int = 0
    gateway: int = 0
    last_ms: int = 0
    entries: int = 0


def _json(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def _plain_bytes(obj: object) -> str:
    """JSON for a reply's bytes values: hex."""
    if isinstance(obj, bytes):
        return obj.hex()
    raise TypeError(f"not JSON: {type(obj).__name__}")


def _values(values: Mapping[Quantity, int]) -> str:
    return _json({str(int(code)): value for code, value in values.items()})


_CORRUPT_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB


def _open_error(path: Path, exc: BaseException) -> StoreError:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in _CORRUPT_CODES:
        return StoreCorrupt(f"master store {path} is damaged: {exc}")
    return StoreError(f"cannot open master store {path}: {exc}")


@contextlib.contextmanager
def _damage_is_corrupt(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise _open_error(path, exc) from exc


class MasterStore:
    """The central store.  Use from one thread at a time; :meth:`close` when done.

    :meth:`open` creates and migrates the file (a damaged file is an error, never
    moved aside: the gateways have pruned what it holds); ``readonly=True`` opens an
    existing store for reading beside a running master (WAL).
    """

    def __init__(self, db: Database, path: Path) -> None:
        self._db = db
        self.path = path
        self._gateways: dict[str, int] = {}
        self._meters: dict[tuple[int, str], int] = {}

    @classmethod
    def open(
        cls, path: Path | str, *, now_ms: Callable[[], int], readonly: bool = False
    ) -> MasterStore:
        path = Path(path)
        try:
            if not readonly:
                path.parent.mkdir(parents=True, exist_ok=True)
            db = connect(path, readonly=readonly)
        except (OSError, sqlite3.Error) as exc:
            raise _open_error(path, exc) from exc
        try:
            with _damage_is_corrupt(path):
                if not readonly:
                    db.execute("PRAGMA synchronous=FULL")
                problems = check_integrity(db, "quick")
                if problems is not None:
                    raise StoreCorrupt(f"master store {path} is damaged: {problems}")
                tables = set(db.table_names())
                if (tables or readonly) and "batches" not in tables:
                    raise StoreError(f"{path} is not a master store")
                if not readonly:
                    MASTER.apply(db, now_ms())
        except BaseException:
            db.close()
            raise
        return cls(db, path)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> MasterStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- writing ------------------------------------------------------------------------

    def store_batch(self, batch: Batch, *, received_ms: int, size: int) -> Stored:
        """Store ``batch`` and all its records in one transaction, unless already stored."""
        with store_errors("master store"), self._db.atomic():
            gateway = self._gateway_id(batch.gateway_id)
            self._db.execute(
                "UPDATE gateways SET last_seen_ms = ? WHERE id = ?", (received_ms, gateway)
            )
            self._db.execute(
                "INSERT OR IGNORE INTO epochs (gateway, epoch, contiguous, highest, first_ms,"
                " last_ms) VALUES (?, ?, 0, 0, ?, ?)",
                (gateway, batch.epoch, received_ms, received_ms),
            )
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO batches (gateway, epoch, seq, received_ms, size,"
                " readings, events, ledger, tasks, health)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    gateway,
                    batch.epoch,
                    batch.seq,
                    received_ms,
                    size,
                    len(batch.readings),
                    len(batch.events),
                    len(batch.ledger),
                    len(batch.tasks),
                    len(batch.health),
                ),
            )
            new = cursor.rowcount == 1
            if new:
                self._insert_records(gateway, int(cursor.lastrowid or 0), batch)
                self._advance(gateway, batch.epoch, batch.seq, received_ms)
            return Stored(new, self._ack(gateway, batch.epoch))

    def set_status(self, gateway_id: str, status: str, at_ms: int) -> None:
        """Record a gateway's retained ``up/status`` (``online`` / ``offline``)."""
        with store_errors("master store"), self._db.atomic():
            self._db.execute(
                "UPDATE gateways SET status = ?, status_ms = ? WHERE id = ?",
                (status, at_ms, self._gateway_id(gateway_id)),
            )

    def store_reply(self, gateway_id: str, reply: CommandReply, *, received_ms: int) -> bool:
        """Store a gateway's reply to a command; False when it was stored already."""
        status = ReplyStatus(reply.status).name
        reason = reply.reason.name if isinstance(reply.reason, ReasonCode) else str(reply.reason)
        result = json.dumps(
            reply.result, separators=(",", ":"), sort_keys=True, default=_plain_bytes
        )
        with store_errors("master store"), self._db.atomic():
            gateway = self._gateway_id(gateway_id)
            self._db.execute(
                "UPDATE gateways SET last_seen_ms = ? WHERE id = ?", (received_ms, gateway)
            )
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO replies (gateway, command, status, reason, text, result,"
                " received_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (gateway, reply.command_id.hex(), status, reason, reply.text, result, received_ms),
            )
            return cursor.rowcount == 1

    def reject(self, topic: str, reason: str, *, received_ms: int, size: int) -> None:
        """Count a message that could not be stored, and say why."""
        with store_errors("master store"), self._db.atomic():
            self._db.execute(
                "INSERT INTO rejected (received_ms, topic, size, reason) VALUES (?, ?, ?, ?)",
                (received_ms, topic, size, reason[:500]),
            )

    def _gateway_id(self, name: str) -> int:
        found = self._gateways.get(name)
        if found is None:
            self._db.execute("INSERT OR IGNORE INTO gateways (name) VALUES (?)", (name,))
            row = self._db.execute("SELECT id FROM gateways WHERE name = ?", (name,)).fetchone()
            found = self._gateways[name] = int(row[0])
        return found

    def _meter_id(self, gateway: int, name: str) -> int:
        key = (gateway, name)
        found = self._meters.get(key)
        if found is None:
            self._db.execute(
                "INSERT OR IGNORE INTO meters (gateway, name) VALUES (?, ?)", (gateway, name)
            )
            row = self._db.execute(
                "SELECT id FROM meters WHERE gateway = ? AND name = ?", key
            ).fetchone()
            found = self._meters[key] = int(row[0])
        return found

    def _insert_records(self, gateway: int, batch_id: int, batch: Batch) -> None:
        conn = self._db.conn
        meter = self._meter_id
        conn.executemany(
            "INSERT INTO readings (batch, row, meter, ts_ms, flags, vals) VALUES (?,?,?,?,?,?)",
            [
                (batch_id, i, meter(gateway, r.meter), r.ts_ms, r.flags, _values(r.values))
                for i, r in enumerate(batch.readings)
            ],
        )
        conn.executemany(
            "INSERT INTO events (batch, row, meter, ts_ms, code, detail) VALUES (?,?,?,?,?,?)",
            [
                (
                    batch_id,
                    i,
                    meter(gateway, e.meter),
                    e.ts_ms,
                    e.code,
                    _json(list(e.detail.items())),
                )
                for i, e in enumerate(batch.events)
            ],
        )
        conn.executemany(
            "INSERT INTO ledger (batch, row, entry_id, account, ts_ms, kind, amount,"
            " balance_after, reference, tariff_version) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    *(batch_id, i, e.entry_id, e.account, e.ts_ms, e.kind, e.amount),
                    *(e.balance_after, e.reference, e.tariff_version),
                )
                for i, e in enumerate(batch.ledger)
            ],
        )
        conn.executemany(
            "INSERT INTO task_results (batch, row, meter, kind, business_day, status,"
            " freeze_ts_ms, vals) VALUES (?,?,?,?,?,?,?,?)",
            [
                (
                    *(batch_id, i, meter(gateway, t.meter), int(t.kind)),
                    *(t.business_day.isoformat(), int(t.status), t.freeze_ts_ms),
                    _values(t.values),
                )
                for i, t in enumerate(batch.tasks)
            ],
        )
        conn.executemany(
            "INSERT INTO health (batch, row, ts_ms, kind, vals) VALUES (?,?,?,?,?)",
            [(batch_id, i, h.ts_ms, h.kind, _json(h.values)) for i, h in enumerate(batch.health)],
        )

    def _advance(self, gateway: int, epoch: int, seq: int, received_ms: int) -> None:
        contiguous, highest = self._db.execute(
            "SELECT contiguous, highest FROM epochs WHERE gateway = ? AND epoch = ?",
            (gateway, epoch),
        ).fetchone()
        if seq == contiguous + 1:
            later = self._db.execute(
                "SELECT seq FROM batches WHERE gateway = ? AND epoch = ? AND seq > ? ORDER BY seq",
                (gateway, epoch, contiguous),
            )
            for (stored,) in later:
                if stored != contiguous + 1:
                    break
                contiguous = stored
        self._db.execute(
            "UPDATE epochs SET contiguous = ?, highest = ?, last_ms = ?"
            " WHERE gateway = ? AND epoch = ?",
            (contiguous, max(highest, seq), received_ms, gateway, epoch),
        )

    def _ack(self, gateway: int, epoch: int) -> Ack:
        (contiguous,) = self._db.execute(
            "SELECT contiguous FROM epochs WHERE gateway = ? AND epoch = ?", (gateway, epoch)
        ).fetchone()
        missing: list[int] = []
        expected = contiguous + 1
        rows = self._db.execute(
            "SELECT seq FROM batches WHERE gateway = ? AND epoch = ? AND seq > ? ORDER BY seq",
            (gateway, epoch, contiguous),
        )
        for (seq,) in rows:
            missing.extend(range(expected, min(seq, expected + MAX_MISSING)))
            expected = seq + 1
            if len(missing) >= MAX_MISSING:
                break
        return Ack(epoch, contiguous, tuple(missing[:MAX_MISSING]))

    # -- reading ------------------------------------------------------------------------

    def ack_for(self, gateway_id: str, epoch: int) -> Ack:
        """The acknowledgement for ``(gateway_id, epoch)`` as the store stands."""
        with store_errors("master store"):
            row = self._db.execute(
                "SELECT g.id FROM gateways g JOIN epochs e ON e.gateway = g.id"
                " WHERE g.name = ? AND e.epoch = ?",
                (gateway_id, epoch),
            ).fetchone()
            return Ack(epoch, 0) if row is None else self._ack(int(row[0]), epoch)

    def latest_ack(self, gateway_id: str) -> Ack | None:
        """The acknowledgement for the gateway's most recently active epoch, or None."""
        with store_errors("master store"):
            row = self._db.execute(
                "SELECT g.id, e.epoch FROM gateways g JOIN epochs e ON e.gateway = g.id"
                " WHERE g.name = ? ORDER BY e.last_ms DESC, e.rowid DESC LIMIT 1",
                (gateway_id,),
            ).fetchone()
            return None if row is None else self._ack(int(row[0]), int(row[1]))

    def _batch_rows(
        self, table: str, columns: str, gateway_id: str
    ) -> Iterator[tuple[object, ...]]:
        return iter(
            self._db.execute(
                f"SELECT {columns} FROM {table} x JOIN batches b ON b.id = x.batch"
                " JOIN gateways g ON g.id = b.gateway"
                " WHERE g.name = ? ORDER BY b.epoch, b.seq, x.row",
                (gateway_id,),
            ).fetchall()
        )

    def readings(self, gateway_id: str) -> list[Reading]:
        """Every reading stored for ``gateway_id``, by epoch, sequence and row."""
        with store_errors("master store"):
            rows = self._batch_rows(
                "readings",
                "(SELECT name FROM meters WHERE id = x.meter), x.ts_ms, x.vals, x.flags",
                gateway_id,
            )
            return [
                Reading(
                    str(name),
                    int(str(ts)),
                    {Quantity(int(k)): v for k, v in json.loads(str(vals)).items()},
                    int(str(flags)),
                )
                for name, ts, vals, flags in rows
            ]

    def events(self, gateway_id: str) -> list[MeterEvent]:
        with store_errors("master store"):
            rows = self._batch_rows(
                "events",
                "(SELECT name FROM meters WHERE id = x.meter), x.ts_ms, x.code, x.detail",
                gateway_id,
            )
            return [
                MeterEvent(str(m), int(str(ts)), int(str(code)), dict(json.loads(str(d))))
                for m, ts, code, d in rows
            ]

    def ledger(self, gateway_id: str) -> list[LedgerEntry]:
        with store_errors("master store"):
            rows = self._batch_rows(
                "ledger",
                "entry_id, account, x.ts_ms, kind, amount, balance_after, reference,"
                " tariff_version",
                gateway_id,
            )
            return [
                LedgerEntry(
                    int(str(entry)),
                    str(account),
                    int(str(ts)),
                    int(str(kind)),
                    int(str(amount)),
                    int(str(balance)),
                    str(reference),
                    int(str(tariff)),
                )
                for entry, account, ts, kind, amount, balance, reference, tariff in rows
            ]

    def tasks(self, gateway_id: str) -> list[TaskResult]:
        with store_errors("master store"):
            rows = self._batch_rows(
                "task_results",
                "(SELECT name FROM meters WHERE id = x.meter), x.kind, x.business_day,"
                " x.status, x.freeze_ts_ms, x.vals",
                gateway_id,
            )
            return [
                TaskResult(
                    str(m),
                    TaskKind(int(str(kind))),
                    date.fromisoformat(str(day)),
                    TaskStatus(int(str(status))),
                    None if freeze is None else int(str(freeze)),
                    {Quantity(int(k)): v for k, v in json.loads(str(vals)).items()},
                )
                for m, kind, day, status, freeze, vals in rows
            ]

    def health(self, gateway_id: str) -> list[HealthRecord]:
        with store_errors("master store"):
            rows = self._batch_rows("health", "x.ts_ms, x.kind, x.vals", gateway_id)
            return [
                HealthRecord(int(str(ts)), int(str(kind)), dict(json.loads(str(vals))))
                for ts, kind, vals in rows
            ]

    def replies(self, gateway_id: str | None = None) -> list[StoredReply]:
        """The command replies stored (of ``gateway_id``, or all), in the order received."""
        with store_errors("master store"):
            rows = self._db.execute(
                "SELECT g.name, r.command, r.status, r.reason, r.text, r.result, r.received_ms"
                " FROM replies r JOIN gateways g ON g.id = r.gateway"
                " WHERE ? IS NULL OR g.name = ? ORDER BY r.id",
                (gateway_id, gateway_id),
            ).fetchall()
            return [
                StoredReply(
                    str(g), str(c), str(st), str(rs), str(t), dict(json.loads(str(r))), int(ms)
                )
                for g, c, st, rs, t, r, ms in rows
            ]

    def rejected(self) -> list[tuple[str, str]]:
        """(topic, reason) of every rejected message, oldest first."""
        with store_errors("master store"):
            rows = self._db.execute("SELECT topic, reason FROM rejected ORDER BY id").fetchall()
            return [(str(topic), str(reason)) for topic, reason in rows]

    def summary(self) -> list[GatewaySummary]:
        """Per gateway, by name: status, last seen, and counts of what is stored."""
        with store_errors("master store"):
            replies = (
                "(SELECT count(*) FROM replies r WHERE r.gateway = g.id)"
                if "replies" in self._db.table_names()
                else "0"  # a store not migrated yet, opened read-only
            )
            rows = self._db.execute(
                "SELECT g.name, g.status, g.status_ms, g.last_seen_ms,"
                " (SELECT count(*) FROM epochs e WHERE e.gateway = g.id),"
                " count(b.id), coalesce(sum(b.readings), 0), coalesce(sum(b.events), 0),"
                " coalesce(sum(b.ledger), 0), coalesce(sum(b.tasks), 0),"
                f" coalesce(sum(b.health), 0), {replies}"
                " FROM gateways g LEFT JOIN batches b ON b.gateway = g.id"
                " GROUP BY g.id ORDER BY g.name"
            ).fetchall()
            out = []
            for summary in (GatewaySummary(*row) for row in rows):
                safe = self.safe_mode(summary.gateway_id)
                out.append(dataclasses.replace(summary, safe_mode=safe is not None and safe.on))
            return out

    def safe_mode(self, gateway_id: str) -> SafeModeReport | None:
        """The gateway's latest ``SAFE_MODE`` event (None: it never reported safe mode)."""
        with store_errors("master store"):
            rows = self._db.execute(
                "SELECT x.ts_ms, x.detail, b.epoch FROM events x JOIN batches b ON b.id = x.batch"
                " JOIN gateways g ON g.id = b.gateway WHERE g.name = ? AND x.code = ?"
                " ORDER BY x.ts_ms, b.id, x.row",
                (gateway_id, int(EventCode.SAFE_MODE)),
            ).fetchall()
        latest: SafeModeReport | None = None
        for ts, detail, epoch in rows:
            values = dict(json.loads(str(detail)))
            on = values.get("state") == "entered"
            since = int(values.get("since_ms", ts))
            reason = str(values.get("reason", ""))
            if not on and latest is not None:
                epoch = latest.epoch  # an end is about the epoch that entered it
            latest = SafeModeReport(on, since, reason, int(epoch), int(ts))
        return latest

    def balances(self, gateway_id: str) -> list[VouchedBalance]:
        """Per account (by name), the balance the ledger entries stored for ``gateway_id``
        vouch for, over its epochs.

        Each epoch is a store of its own whose balances started from zero.  Without safe
        mode, an account's balance is its latest ``balance_after`` (latest epoch, time,
        entry).  After the gateway reported safe mode (its store was damaged at start),
        it is the last ``balance_after`` of the epochs before the safe-mode epoch plus the
        amounts of the safe-mode epoch's entries (charges, top-ups), but its compensations
        and reductions made while safe mode was on: those restore the balance
        (docs/safe-mode.md)."""
        safe = self.safe_mode(gateway_id)
        with store_errors("master store"):
            rows = self._db.execute(
                "SELECT x.account, b.epoch, e.first_ms, x.ts_ms, x.entry_id, x.kind, x.amount,"
                " x.balance_after FROM ledger x JOIN batches b ON b.id = x.batch"
                " JOIN gateways g ON g.id = b.gateway"
                " JOIN epochs e ON e.gateway = g.id AND e.epoch = b.epoch"
                " WHERE g.name = ? ORDER BY e.first_ms, b.epoch, x.ts_ms, x.entry_id",
                (gateway_id,),
            ).fetchall()
            epochs = dict(
                self._db.execute(
                    "SELECT e.epoch, e.first_ms FROM epochs e JOIN gateways g"
                    " ON g.id = e.gateway WHERE g.name = ?",
                    (gateway_id,),
                ).fetchall()
            )
        current = max(epochs, key=lambda ep: (epochs[ep], ep)) if epochs else None
        safe_first = None if safe is None else epochs.get(safe.epoch)
        ended_ms = None if safe is None or safe.on else safe.ts_ms
        per: dict[str, _Account] = {}
        for account, epoch, first_ms, ts, _entry, kind, amount, after in rows:
            a = per.setdefault(str(account), _Account())
            a.last_ms = max(a.last_ms, int(ts))
            a.entries += 1
            if epoch == current:
                a.gateway = int(after)
            if safe is None or safe_first is None:
                continue
            if epoch == safe.epoch:
                restoring = kind in _RESTORING and (ended_ms is None or int(ts) <= ended_ms)
                if not restoring:
                    a.since += int(amount)
            elif int(first_ms) <= safe_first:
                a.before, a.before_ms = int(after), int(ts)
        vouching = safe is not None and safe_first is not None
        return [
            VouchedBalance(
                account,
                a.before + a.since if vouching else a.gateway,
                a.gateway,
                a.before_ms if vouching else None,
                a.last_ms,
                a.entries,
            )
            for account, a in sorted(per.items())
        ]

    def integrity(self) -> str | None:
        """None when ``PRAGMA integrity_check`` passes, else the problems."""
        with store_errors("master store"):
            return check_integrity(self._db, "full")
