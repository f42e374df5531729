"""CBOR batch schema v1: the records a gateway publishes on ``<prefix>/<gw>/up/batch``.

A batch is one CBOR map with integer keys; each batch decodes on its own.  The
records are stored by kind in columns (:mod:`gateway.protocols.batch_columns`), with
the meters named once in a front-coded dictionary.  The key tables and a worked
example in hex are in ``docs/batch-schema.md``.  The master's acknowledgement
(:class:`Ack`, on ``.../down/ack``) is here too.

Every integer must fit a signed 64-bit integer.  Unknown keys, unknown quantity,
task-kind and task-status codes are refused: a schema change bumps the version.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from enum import IntEnum
from typing import Any

from gateway.protocols.batch_columns import (
    INT_MAX,
    check_int,
    column_length,
    decode_column,
    decode_dictionary,
    decode_full_column,
    dumps,
    encode_column,
    encode_dictionary,
    expect_int,
    expect_list,
    expect_map,
    expect_str,
    loads_strict,
)
from gateway.protocols.errors import LocalProtocolError, RemoteProtocolError
from gateway.protocols.quantities import Quantity, Reading

__all__ = [
    "SCHEMA_VERSION",
    "Ack",
    "Batch",
    "HealthKind",
    "HealthRecord",
    "LedgerEntry",
    "MeterEvent",
    "TaskKind",
    "TaskResult",
    "TaskStatus",
    "decode_ack",
    "decode_batch",
    "encode_ack",
    "encode_batch",
    "new_epoch",
]

SCHEMA_VERSION = 1
_EPOCH_DAY = date(1970, 1, 1).toordinal()
_MAX_DEPTH = 6

# Top-level keys.
_VERSION, _GATEWAY, _EPOCH, _SEQ, _METERS = 0, 1, 2, 3, 4
_READINGS, _EVENTS, _LEDGER, _TASKS, _HEALTH = 5, 6, 7, 8, 9


class TaskKind(IntEnum):
    """Collection task kinds (wire codes, append only)."""

    DAILY_FREEZE = 1
    MONTHLY_FREEZE = 2
    CURVE = 3


class TaskStatus(IntEnum):
    """Outcome of one collection task for one meter and business day (wire codes)."""

    OK = 0
    FAILED = 1
    """Not collected after all retries of the day."""
    ESTIMATED = 2
    """Not read from the meter: taken from the gateway's own readings, interpolated."""


class HealthKind(IntEnum):
    """Known health record kinds; :attr:`HealthRecord.kind` may carry other codes."""

    POWER = 1
    """Power up / power down of the gateway."""
    TIME_SOURCE = 2
    """Where the clock comes from and whether it is trusted."""
    VERSIONS = 3
    """Software, configuration and tariff versions."""
    STORAGE = 4
    """Store size, free space, unacknowledged backlog."""
    UPLINK = 5
    """MQTT connection state and counters."""
    BUS = 6
    """A serial bus's port lost or restored (values: bus, event, error)."""


@dataclass(frozen=True, slots=True)
class MeterEvent:
    """Something that happened at a meter (trip, comm failure ...), by event code."""

    meter: str
    ts_ms: int
    code: int
    detail: dict[int | str, int | str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One change of an account's balance; money in 0.0001 yuan."""

    entry_id: int
    account: str
    ts_ms: int
    kind: int
    amount: int
    balance_after: int
    reference: str
    tariff_version: int


@dataclass(frozen=True, slots=True)
class TaskResult:
    """Result of a collection task (freeze or curve point) for one meter and day.

    ``freeze_ts_ms`` is the meter's freeze time, ``None`` when nothing was read.
    """

    meter: str
    kind: TaskKind
    business_day: date
    status: TaskStatus
    freeze_ts_ms: int | None
    values: dict[Quantity, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HealthRecord:
    """Gateway health at ``ts_ms``: a kind (:class:`HealthKind`) and named values."""

    ts_ms: int
    kind: int
    values: dict[str, int | str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Batch:
    """One batch: where it comes from, its place in the epoch, and its records in order."""

    gateway_id: str
    epoch: int
    seq: int
    readings: tuple[Reading, ...] = ()
    events: tuple[MeterEvent, ...] = ()
    ledger: tuple[LedgerEntry, ...] = ()
    tasks: tuple[TaskResult, ...] = ()
    health: tuple[HealthRecord, ...] = ()

    def __post_init__(self) -> None:
        for name in ("readings", "events", "ledger", "tasks", "health"):
            object.__setattr__(self, name, tuple(getattr(self, name)))


@dataclass(frozen=True, slots=True)
class Ack:
    """The master has stored every batch of ``epoch`` up to ``highest_contiguous``.

    ``missing`` lists later sequence numbers it knows it lacks (ascending), for the
    gateway to re-send.  Sequence numbers start at 1; 0 means none stored yet.
    """

    epoch: int
    highest_contiguous: int
    missing: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "missing", tuple(self.missing))


def new_epoch() -> int:
    """A random epoch id for a new store: 1 .. 2**63-1 (fits an SQLite INTEGER)."""
    return secrets.randbelow(INT_MAX) + 1


# -- encoding -------------------------------------------------------------------------------


def encode_batch(batch: Batch) -> bytes:
    """The batch as CBOR; LocalProtocolError if it holds what v1 cannot carry."""
    if type(batch.gateway_id) is not str:
        raise LocalProtocolError("gateway_id must be text")
    out: dict[int, object] = {
        _VERSION: SCHEMA_VERSION,
        _GATEWAY: batch.gateway_id,
        _EPOCH: _check_range(batch.epoch, "epoch"),
        _SEQ: _check_range(batch.seq, "seq"),
    }
    names: dict[str, int] = {}
    meters = [r.meter for r in batch.readings] + [e.meter for e in batch.events]
    for meter in meters + [t.meter for t in batch.tasks]:
        names.setdefault(meter, len(names))
    if names:
        out[_METERS] = encode_dictionary(list(names))
    if batch.readings:
        out[_READINGS] = _encode_readings(batch.readings, names)
    if batch.events:
        out[_EVENTS] = _encode_events(batch.events, names)
    if batch.ledger:
        out[_LEDGER] = _encode_ledger(batch.ledger)
    if batch.tasks:
        out[_TASKS] = _encode_tasks(batch.tasks, names)
    if batch.health:
        out[_HEALTH] = _encode_health(batch.health)
    return dumps(out, "batch")


def _check_range(value: object, what: str) -> int:
    number = check_int(value, what)
    if number < 0:
        raise LocalProtocolError(f"{what} must not be negative")
    return number


def _encode_meters(indices: list[int]) -> object:
    """The meter column, or ``k`` when row ``i`` is meter ``i % k`` (round-robin polling)."""
    cycle = max(indices) + 1
    if all(index == row % cycle for row, index in enumerate(indices)):
        return cycle
    return encode_column(indices)


def _encode_quantities(
    rows: Sequence[Mapping[Quantity, int]], groups: list[int], what: str
) -> dict[int, object]:
    codes: set[Quantity] = set()
    for values in rows:
        for code in values:
            try:
                codes.add(Quantity(code))
            except ValueError:
                raise LocalProtocolError(f"{what}: unknown quantity {code!r}") from None
    return {
        int(code): encode_column(
            [None if code not in v else check_int(v[code], f"{what} {code.name}") for v in rows],
            groups,
        )
        for code in sorted(codes)
    }


def _encode_readings(readings: Sequence[Reading], names: dict[str, int]) -> dict[int, object]:
    meters = [names[r.meter] for r in readings]
    section: dict[int, object] = {
        0: _encode_meters(meters),
        1: encode_column([check_int(r.ts_ms, "reading ts_ms") for r in readings], meters),
    }
    flags = [check_int(r.flags, "reading flags") for r in readings]
    if any(flags):
        section[2] = encode_column(flags, meters)
    quantities = _encode_quantities([r.values for r in readings], meters, "reading")
    if quantities:
        section[3] = quantities
    return section


def _encode_events(events: Sequence[MeterEvent], names: dict[str, int]) -> dict[int, object]:
    meters = [names[e.meter] for e in events]
    section: dict[int, object] = {
        0: _encode_meters(meters),
        1: encode_column([check_int(e.ts_ms, "event ts_ms") for e in events], meters),
        2: encode_column([check_int(e.code, "event code") for e in events], meters),
    }
    if any(e.detail for e in events):
        section[3] = [_check_detail(e.detail, "event detail") for e in events]
    return section


def _check_detail(detail: Mapping[Any, object], what: str) -> dict[int | str, int | str]:
    return {_text_or_int(key, what): _text_or_int(value, what) for key, value in detail.items()}


def _text_or_int(item: object, what: str) -> int | str:
    return str(item) if isinstance(item, str) else check_int(item, what)


def _codes(values: Iterable[int], enum: type[IntEnum], what: str) -> list[int | None]:
    try:
        return [int(enum(value)) for value in values]
    except ValueError:
        raise LocalProtocolError(f"{what}: unknown code") from None


def _encode_ledger(entries: Sequence[LedgerEntry]) -> dict[int, object]:
    accounts = [e.account for e in entries]
    references = [e.reference for e in entries]
    if not all(type(text) is str for text in accounts + references):
        raise LocalProtocolError("ledger account and reference must be text")
    return {
        0: encode_column([check_int(e.entry_id, "ledger entry_id") for e in entries]),
        1: accounts,
        2: encode_column([check_int(e.ts_ms, "ledger ts_ms") for e in entries]),
        3: encode_column([check_int(e.kind, "ledger kind") for e in entries]),
        4: encode_column([check_int(e.amount, "ledger amount") for e in entries], accounts),
        5: encode_column([check_int(e.balance_after, "ledger balance") for e in entries], accounts),
        6: references,
        7: encode_column([check_int(e.tariff_version, "tariff version") for e in entries]),
    }


def _encode_tasks(tasks: Sequence[TaskResult], names: dict[str, int]) -> dict[int, object]:
    meters = [names[t.meter] for t in tasks]
    days: list[int | None] = []
    for task in tasks:
        if not isinstance(task.business_day, date):
            raise LocalProtocolError("task business_day must be a date")
        days.append(task.business_day.toordinal() - _EPOCH_DAY)
    section: dict[int, object] = {
        0: _encode_meters(meters),
        1: encode_column(_codes([t.kind for t in tasks], TaskKind, "task kind")),
        2: encode_column(days, meters),
        3: encode_column(_codes([t.status for t in tasks], TaskStatus, "task status")),
    }
    stamps = [
        None if t.freeze_ts_ms is None else check_int(t.freeze_ts_ms, "freeze") for t in tasks
    ]
    if any(stamp is not None for stamp in stamps):
        section[4] = encode_column(stamps, meters)
    quantities = _encode_quantities([t.values for t in tasks], meters, "task")
    if quantities:
        section[5] = quantities
    return section


def _encode_health(records: Sequence[HealthRecord]) -> dict[int, object]:
    section: dict[int, object] = {
        0: encode_column([check_int(h.ts_ms, "health ts_ms") for h in records]),
        1: encode_column([check_int(h.kind, "health kind") for h in records]),
    }
    if any(h.values for h in records):
        values = [_check_detail(h.values, "health values") for h in records]
        if any(not isinstance(key, str) for v in values for key in v):
            raise LocalProtocolError("health value names must be text")
        section[2] = values
    return section


# -- decoding -------------------------------------------------------------------------------


def decode_batch(data: bytes) -> Batch:
    """The batch in ``data``; RemoteProtocolError for anything that is not a v1 batch."""
    top = expect_map(loads_strict(data, "batch", _MAX_DEPTH), "batch", range(10))
    for key in (_VERSION, _GATEWAY, _EPOCH, _SEQ):
        if key not in top:
            raise RemoteProtocolError(f"batch: key {key} missing")
    if top[_VERSION] != SCHEMA_VERSION or type(top[_VERSION]) is not int:
        raise RemoteProtocolError(f"batch: schema version {top[_VERSION]!r} is not 1")
    names = decode_dictionary(top[_METERS]) if _METERS in top else []
    return Batch(
        gateway_id=expect_str(top[_GATEWAY], "gateway id"),
        epoch=expect_int(top[_EPOCH], "epoch", 0),
        seq=expect_int(top[_SEQ], "seq", 0),
        readings=_decode_readings(top[_READINGS], names) if _READINGS in top else (),
        events=_decode_events(top[_EVENTS], names) if _EVENTS in top else (),
        ledger=_decode_ledger(top[_LEDGER]) if _LEDGER in top else (),
        tasks=_decode_tasks(top[_TASKS], names) if _TASKS in top else (),
        health=_decode_health(top[_HEALTH]) if _HEALTH in top else (),
    )


def _required(section: dict[int, object], keys: Iterable[int], what: str) -> None:
    for key in keys:
        if key not in section:
            raise RemoteProtocolError(f"{what}: key {key} missing")


def _decode_meters(obj: object, rows: int, names: list[str], what: str) -> list[int]:
    if type(obj) is int:
        cycle = expect_int(obj, what, 1, len(names))
        return [row % cycle for row in range(rows)]
    indices = decode_full_column(obj, rows, what)
    if any(not 0 <= index < len(names) for index in indices):
        raise RemoteProtocolError(f"{what}: meter index outside the dictionary")
    return indices


def _decode_quantities(
    obj: object, rows: int, groups: list[int], what: str
) -> list[dict[Quantity, int]]:
    if type(obj) is not dict:
        raise RemoteProtocolError(f"{what}: quantities must be a map")
    out: list[dict[Quantity, int]] = [{} for _ in range(rows)]
    for code, column in obj.items():
        try:
            quantity = Quantity(expect_int(code, f"{what} quantity"))
        except ValueError:
            raise RemoteProtocolError(f"{what}: unknown quantity {code}") from None
        values = decode_column(column, rows, f"{what} {quantity.name}", groups)
        for row, value in enumerate(values):
            if value is not None:
                out[row][quantity] = value
    return out


def _decode_readings(obj: object, names: list[str]) -> tuple[Reading, ...]:
    section = expect_map(obj, "readings", range(4))
    _required(section, (0, 1), "readings")
    rows = column_length(section[1], "reading ts")
    meters = _decode_meters(section[0], rows, names, "reading meters")
    stamps = decode_full_column(section[1], rows, "reading ts", meters)
    flags = decode_full_column(section[2], rows, "flags", meters) if 2 in section else [0] * rows
    values = _decode_quantities(section.get(3, {}), rows, meters, "reading")
    return tuple(
        Reading(meter=names[m], ts_ms=ts, values=v, flags=f)
        for m, ts, v, f in zip(meters, stamps, values, flags, strict=True)
    )


def _decode_detail(obj: object, what: str) -> dict[int | str, int | str]:
    if type(obj) is not dict:
        raise RemoteProtocolError(f"{what}: expected a map")
    out: dict[int | str, int | str] = {}
    for key, value in obj.items():
        out[key if type(key) is str else expect_int(key, what)] = (
            value if type(value) is str else expect_int(value, what)
        )
    return out


def _decode_details(obj: object, rows: int, what: str) -> list[dict[int | str, int | str]]:
    items = expect_list(obj, what)
    if len(items) != rows:
        raise RemoteProtocolError(f"{what}: {len(items)} maps for {rows} rows")
    return [_decode_detail(item, what) for item in items]


def _decode_events(obj: object, names: list[str]) -> tuple[MeterEvent, ...]:
    section = expect_map(obj, "events", range(4))
    _required(section, (0, 1, 2), "events")
    rows = column_length(section[1], "event ts")
    meters = _decode_meters(section[0], rows, names, "event meters")
    stamps = decode_full_column(section[1], rows, "event ts", meters)
    codes = decode_full_column(section[2], rows, "event code", meters)
    details = _decode_details(section[3], rows, "event detail") if 3 in section else None
    return tuple(
        MeterEvent(names[m], ts, code, details[row] if details else {})
        for row, (m, ts, code) in enumerate(zip(meters, stamps, codes, strict=True))
    )


def _decode_texts(obj: object, rows: int, what: str) -> list[str]:
    items = expect_list(obj, what)
    if len(items) != rows:
        raise RemoteProtocolError(f"{what}: {len(items)} strings for {rows} rows")
    return [expect_str(item, what) for item in items]


def _decode_ledger(obj: object) -> tuple[LedgerEntry, ...]:
    section = expect_map(obj, "ledger", range(8))
    _required(section, range(8), "ledger")
    ids = decode_full_column(section[0], None, "ledger entry id")
    rows = len(ids)
    accounts = _decode_texts(section[1], rows, "ledger account")
    columns = [
        decode_full_column(section[key], rows, f"ledger {what}", groups)
        for key, what, groups in (
            (2, "ts", None),
            (3, "kind", None),
            (4, "amount", accounts),
            (5, "balance", accounts),
            (7, "tariff version", None),
        )
    ]
    references = _decode_texts(section[6], rows, "ledger reference")
    return tuple(
        LedgerEntry(ids[r], accounts[r], ts, kind, amount, balance, references[r], tariff)
        for r, (ts, kind, amount, balance, tariff) in enumerate(zip(*columns, strict=True))
    )


def _decode_tasks(obj: object, names: list[str]) -> tuple[TaskResult, ...]:
    section = expect_map(obj, "tasks", range(6))
    _required(section, (0, 1, 2, 3), "tasks")
    kinds = decode_full_column(section[1], None, "task kind")
    rows = len(kinds)
    meters = _decode_meters(section[0], rows, names, "task meters")
    days = decode_full_column(section[2], rows, "task day", meters)
    statuses = decode_full_column(section[3], rows, "task status")
    stamps = decode_column(section[4], rows, "task freeze ts", meters) if 4 in section else None
    values = _decode_quantities(section.get(5, {}), rows, meters, "task")
    out: list[TaskResult] = []
    for row in range(rows):
        try:
            kind, status = TaskKind(kinds[row]), TaskStatus(statuses[row])
            day = date.fromordinal(days[row] + _EPOCH_DAY)
        except ValueError as exc:
            raise RemoteProtocolError(f"task row {row}: {exc}") from None
        stamp = stamps[row] if stamps else None
        out.append(TaskResult(names[meters[row]], kind, day, status, stamp, values[row]))
    return tuple(out)


def _decode_health(obj: object) -> tuple[HealthRecord, ...]:
    section = expect_map(obj, "health", range(3))
    _required(section, (0, 1), "health")
    stamps = decode_full_column(section[0], None, "health ts")
    rows = len(stamps)
    kinds = decode_full_column(section[1], rows, "health kind")
    values: list[dict[str, int | str]] = [{} for _ in range(rows)]
    if 2 in section:
        for row, detail in enumerate(_decode_details(section[2], rows, "health values")):
            if any(type(key) is not str for key in detail):
                raise RemoteProtocolError("health value names must be text")
            values[row] = {str(key): value for key, value in detail.items()}
    return tuple(
        HealthRecord(ts, kind, v) for ts, kind, v in zip(stamps, kinds, values, strict=True)
    )


# -- acknowledgements -----------------------------------------------------------------------


def encode_ack(ack: Ack) -> bytes:
    """``{0: epoch, 1: highest contiguous seq, 2: [missing seqs]}`` (2 omitted if empty)."""
    out: dict[int, object] = {
        0: _check_range(ack.epoch, "ack epoch"),
        1: _check_range(ack.highest_contiguous, "ack highest"),
    }
    missing = [_check_range(seq, "ack missing") for seq in ack.missing]
    if any(b <= a for a, b in zip([ack.highest_contiguous, *missing], missing, strict=False)):
        raise LocalProtocolError("ack missing must ascend, above the highest contiguous seq")
    if missing:
        out[2] = missing
    return dumps(out, "ack")


def decode_ack(data: bytes) -> Ack:
    """The acknowledgement in ``data``; RemoteProtocolError for anything else."""
    top = expect_map(loads_strict(data, "ack", 2), "ack", range(3))
    _required(top, (0, 1), "ack")
    epoch = expect_int(top[0], "ack epoch", 0)
    highest = expect_int(top[1], "ack highest", 0)
    missing = [expect_int(s, "ack missing", 0) for s in expect_list(top.get(2, []), "ack")]
    if any(b <= a for a, b in zip([highest, *missing], missing, strict=False)):
        raise RemoteProtocolError("ack missing must ascend, above the highest contiguous seq")
    return Ack(epoch, highest, tuple(missing))
