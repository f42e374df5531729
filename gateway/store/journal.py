"""Journal records in SQLite rows, and the typed read side (:class:`JournalReader`).

Record kinds and their tables: readings (:class:`~gateway.protocols.quantities.Reading`),
events (:class:`~gateway.protocols.batch.MeterEvent`), task_results
(:class:`~gateway.protocols.batch.TaskResult`, one row per meter, kind and business
day: a later result replaces the day's earlier one and gets a new position) and
health (:class:`~gateway.protocols.batch.HealthRecord`).  A record's *position* is its
row id, increasing within its kind.  Meters are named once in ``meters`` and rows
refer to them by number; values, event details and health values are CBOR maps
(``{quantity code: int}`` for values).  Records are checked and encoded by
:func:`encode` in the submitting thread, so a record the store cannot hold is
refused at once (:class:`~gateway.errors.StoreError`), never dropped later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any, cast

import cbor2

from gateway.errors import StoreError
from gateway.protocols.batch import HealthRecord, MeterEvent, TaskKind, TaskResult, TaskStatus
from gateway.protocols.quantities import Quantity, Reading
from gateway.store.db import ReadConnection

__all__ = [
    "INSERT_SQL",
    "Entry",
    "JournalReader",
    "Kind",
    "Record",
    "Row",
    "StoreMeta",
    "decode_row",
    "encode",
]

Record = Reading | MeterEvent | TaskResult | HealthRecord
Entry = tuple[int, Record]
"""(position, record)."""

_INT64 = (-(2**63), 2**63 - 1)


class Kind(StrEnum):
    """Record kinds; the value is the table name (also the key of ``acked``)."""

    READINGS = "readings"
    EVENTS = "events"
    TASKS = "task_results"
    HEALTH = "health"


INSERT_SQL: dict[Kind, str] = {
    Kind.READINGS: "INSERT INTO readings (meter, ts_ms, flags, vals) VALUES (?, ?, ?, ?)",
    Kind.EVENTS: "INSERT INTO events (meter, ts_ms, code, detail) VALUES (?, ?, ?, ?)",
    Kind.TASKS: "INSERT OR REPLACE INTO task_results"
    " (meter, kind, business_day, status, freeze_ts_ms, vals) VALUES (?, ?, ?, ?, ?, ?)",
    Kind.HEALTH: "INSERT INTO health (ts_ms, kind, vals) VALUES (?, ?, ?)",
}
"""Insert statement per kind; the meter number, when the kind has one, comes first."""

_SELECT_SQL: dict[Kind, str] = {
    Kind.READINGS: "SELECT r.id, m.name, r.ts_ms, r.flags, r.vals FROM readings r"
    " JOIN meters m ON m.id = r.meter",
    Kind.EVENTS: "SELECT e.id, m.name, e.ts_ms, e.code, e.detail FROM events e"
    " JOIN meters m ON m.id = e.meter",
    Kind.TASKS: "SELECT t.id, m.name, t.kind, t.business_day, t.status, t.freeze_ts_ms, t.vals"
    " FROM task_results t JOIN meters m ON m.id = t.meter",
    Kind.HEALTH: "SELECT h.id, h.ts_ms, h.kind, h.vals FROM health h",
}


@dataclass(frozen=True, slots=True)
class Row:
    """A record encoded for its table: the meter's name (None for health) and the rest."""

    kind: Kind
    meter: str | None
    params: tuple[object, ...]


def _int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise StoreError(f"{what} must be an integer, not {type(value).__name__}")
    if not _INT64[0] <= value <= _INT64[1]:
        raise StoreError(f"{what} {value} does not fit 64 bits")
    return int(value)


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise StoreError(f"{what} must be text, not {type(value).__name__}")
    return str(value)


_QUANTITIES = {int(q): q for q in Quantity}


def _quantities(values: Mapping[Any, Any], what: str) -> bytes | None:
    """``{code: value}`` as CBOR (IntEnum keys encode as plain integers), codes ascending."""
    if not values:
        return None
    for code, value in values.items():
        quantity = _QUANTITIES.get(code) if type(code) is not bool else None
        if quantity is None:
            raise StoreError(f"{what}: unknown quantity {code!r}")
        if type(value) is not int or not _INT64[0] <= value <= _INT64[1]:
            _int(value, f"{what} {quantity.name}")  # raises (or an int subclass: converted below)
    return cbor2.dumps({int(code): int(values[code]) for code in sorted(values)})


def _detail(values: Mapping[Any, object], what: str, *, text_keys: bool) -> bytes | None:
    if not values:
        return None
    out: dict[int | str, int | str] = {}
    for key, value in values.items():
        name = _text(key, what) if text_keys or isinstance(key, str) else _int(key, what)
        out[name] = value if isinstance(value, str) else _int(value, f"{what} {key!r}")
    return cbor2.dumps(out)


def encode(record: Record) -> Row:
    """The row for ``record``; StoreError if it holds what the store cannot keep."""
    if isinstance(record, Reading):
        return Row(
            Kind.READINGS,
            _text(record.meter, "reading meter"),
            (
                _int(record.ts_ms, "reading ts_ms"),
                _int(record.flags, "reading flags"),
                _quantities(record.values, "reading"),
            ),
        )
    if isinstance(record, MeterEvent):
        return Row(
            Kind.EVENTS,
            _text(record.meter, "event meter"),
            (
                _int(record.ts_ms, "event ts_ms"),
                _int(record.code, "event code"),
                _detail(record.detail, "event detail", text_keys=False),
            ),
        )
    if isinstance(record, TaskResult):
        if not isinstance(record.business_day, date):
            raise StoreError("task business_day must be a date")
        try:
            kind, status = TaskKind(record.kind), TaskStatus(record.status)
        except ValueError as exc:
            raise StoreError(f"task result: {exc}") from None
        stamp = record.freeze_ts_ms
        return Row(
            Kind.TASKS,
            _text(record.meter, "task meter"),
            (
                int(kind),
                record.business_day.isoformat(),
                int(status),
                None if stamp is None else _int(stamp, "task freeze_ts_ms"),
                _quantities(record.values, "task"),
            ),
        )
    if isinstance(record, HealthRecord):
        return Row(
            Kind.HEALTH,
            None,
            (
                _int(record.ts_ms, "health ts_ms"),
                _int(record.kind, "health kind"),
                _detail(record.values, "health values", text_keys=True),
            ),
        )
    raise StoreError(f"not a journal record: {type(record).__name__}")


def _load(blob: bytes | None) -> dict[Any, Any]:
    if blob is None:
        return {}
    value = cbor2.loads(blob)
    if not isinstance(value, dict):
        raise StoreError("journal blob is not a map")
    return value


def decode_row(kind: Kind, row: tuple[Any, ...]) -> Entry:
    """(position, record) from a row of the kind's SELECT (see :class:`JournalReader`)."""
    if kind is Kind.READINGS:
        pos, meter, ts_ms, flags, blob = row
        values = {Quantity(k): v for k, v in _load(blob).items()}
        return pos, Reading(meter=meter, ts_ms=ts_ms, values=values, flags=flags)
    if kind is Kind.EVENTS:
        pos, meter, ts_ms, code, blob = row
        return pos, MeterEvent(meter, ts_ms, code, _load(blob))
    if kind is Kind.TASKS:
        pos, meter, task_kind, day, status, stamp, blob = row
        values = {Quantity(k): v for k, v in _load(blob).items()}
        return pos, TaskResult(
            meter, TaskKind(task_kind), date.fromisoformat(day), TaskStatus(status), stamp, values
        )
    pos, ts_ms, health_kind, blob = row
    return pos, HealthRecord(ts_ms, health_kind, _load(blob))


@dataclass(frozen=True, slots=True)
class StoreMeta:
    """What identifies a store: its epoch (for ever), gateway id, creation time."""

    epoch: int
    gateway_id: str
    created_ms: int
    schema_version: int


class JournalReader(ReadConnection):
    """The journal, read: records by kind and position, typed, and the store's meta."""

    _what = "store"

    def meta(self) -> StoreMeta:
        values = dict(self._all("SELECT key, value FROM meta"))
        version = self._all("SELECT max(version) FROM schema_version")[0][0]
        return StoreMeta(
            int(values["epoch"]), str(values["gateway_id"]), int(values["created_ms"]), version
        )

    def acknowledged(self, kind: Kind) -> int:
        """The highest position of ``kind`` the master has acknowledged (0: none)."""
        rows = self._all("SELECT up_to FROM acked WHERE kind = ?", (str(kind),))
        return int(rows[0][0]) if rows else 0

    def last_position(self, kind: Kind) -> int:
        """The newest position of ``kind`` (0 when the table is empty)."""
        return int(self._all(f"SELECT coalesce(max(id), 0) FROM {kind}")[0][0])

    def count(self, kind: Kind) -> int:
        return int(self._all(f"SELECT count(*) FROM {kind}")[0][0])

    def records(self, kind: Kind, after: int = 0, limit: int = 1000) -> list[Entry]:
        """Up to ``limit`` records of ``kind`` after position ``after``, in position order."""
        where = _SELECT_SQL[kind] + f" WHERE {_alias(kind)}.id > ? ORDER BY 1 LIMIT ?"
        return [decode_row(kind, row) for row in self._all(where, (after, limit))]

    def unacknowledged(self, kind: Kind, after: int = 0, limit: int = 1000) -> list[Entry]:
        """Records of ``kind`` past both the acknowledged mark and ``after``, oldest first."""
        where = (
            _SELECT_SQL[kind]
            + f" WHERE {_alias(kind)}.id > max(?, coalesce("
            + "(SELECT up_to FROM acked WHERE kind = ?), 0)) ORDER BY 1 LIMIT ?"
        )
        rows = self._all(where, (after, str(kind), limit))
        return [decode_row(kind, row) for row in rows]

    def _select(self, kind: Kind, after: int, limit: int, unacknowledged: bool) -> list[Entry]:
        if unacknowledged:
            return self.unacknowledged(kind, after, limit)
        return self.records(kind, after, limit)

    def readings(
        self, after: int = 0, limit: int = 1000, *, unacknowledged: bool = False
    ) -> list[tuple[int, Reading]]:
        """:meth:`records` (or :meth:`unacknowledged`) of readings, typed."""
        return cast(
            list[tuple[int, Reading]], self._select(Kind.READINGS, after, limit, unacknowledged)
        )

    def events(
        self, after: int = 0, limit: int = 1000, *, unacknowledged: bool = False
    ) -> list[tuple[int, MeterEvent]]:
        return cast(
            list[tuple[int, MeterEvent]], self._select(Kind.EVENTS, after, limit, unacknowledged)
        )

    def task_results(
        self, after: int = 0, limit: int = 1000, *, unacknowledged: bool = False
    ) -> list[tuple[int, TaskResult]]:
        return cast(
            list[tuple[int, TaskResult]], self._select(Kind.TASKS, after, limit, unacknowledged)
        )

    def health(
        self, after: int = 0, limit: int = 1000, *, unacknowledged: bool = False
    ) -> list[tuple[int, HealthRecord]]:
        return cast(
            list[tuple[int, HealthRecord]], self._select(Kind.HEALTH, after, limit, unacknowledged)
        )

    def task_result(self, meter: str, kind: TaskKind, day: date) -> tuple[int, TaskResult] | None:
        """The recorded result of task ``kind`` for ``meter`` on business ``day``, if any."""
        sql = _SELECT_SQL[Kind.TASKS] + " WHERE m.name = ? AND t.kind = ? AND t.business_day = ?"
        rows = self._all(sql, (meter, int(kind), day.isoformat()))
        return cast(tuple[int, TaskResult], decode_row(Kind.TASKS, rows[0])) if rows else None


def _alias(kind: Kind) -> str:
    return str(kind)[0]
