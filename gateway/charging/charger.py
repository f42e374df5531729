"""Charging: each reading rated in memory, acted on at once, then written durably with its
charges (design.md: "A trip action does not wait for the store"; data flow: reading ->
rating -> ledger + journal in one transaction).

A :class:`Charger` is the poller's :class:`~gateway.poller.Journal`.  It keeps a cache
loaded from the store at start (:meth:`Charger.reload` re-reads it): each billed meter's
rating state, each account's balance, billing-year tier total, type, trip flag,
thresholds and prepaid state.  :meth:`Charger.submit` (a bus thread) rates a billed
reading in memory (:func:`rate_reading`, the one function Step 8's compiled fast path
replaces), moves the balance, evaluates the account's prepaid state
(:class:`~gateway.prepaid.StateTracker`) and calls the listeners with any change, and only
then queues one durable transaction that writes exactly those results: the reading, its
charges, the meter's rating state, the account's tier total and prepaid state, and a
:data:`~gateway.protocols.quantities.EventCode.PREPAID_STATE` event when the state
changed.  Memory is ahead of disk by the writer's queue.  A transaction that fails is
retried with a bounded back-off; if it keeps failing, one line is logged, it is
counted (``lost``) and the cache is reloaded from the store, so memory never stays ahead
of what the disk will ever hold.  Events and readings of meters that are not charged go
to the store writer as before.

Rules (:func:`rate_reading`): the first reading of a meter is its baseline (no charge);
no consumption across :data:`~gateway.protocols.quantities.FLAG_DISCONTINUITY` (the
reading is the new baseline); a rollover's consumption is new + range - old; a fall the
poller did not flag is a new baseline (no credit); an unbilled account is never charged
(its state and tier total still advance); an interval with no tariff version in force is
journaled uncharged (logged) and its reading becomes the baseline.  While the clock is
untrusted a time-of-use tariff is not rated: the baseline stays at the last trusted
reading and the whole stretch is rated at the first trusted one.  A DL/T 645 meter's
per-tariff registers (0001FF00: tariffs 1-4), when the reading carries all four and they
agree with the total, give the energy of each time-of-use slot
(:attr:`~gateway.billing.Interval.slot_wh`); otherwise energy is apportioned by time.  The
billing-year tier total is kept per account (shared by its meters) and resets at
``billing.year_start`` (:class:`~gateway.billing.BillingYear`); an account opened within
the year (``opened``) has its tier thresholds prorated.  A customer meter with no account
is charged to the ``vacancy`` account at ``billing.vacancy_tariff`` when one is set (else
not charged).  Meters the store records as removed, replaced or held
(:mod:`gateway.store.meters`) are not charged; a recorded account and ratio win over the
configuration's.

Threads: bus threads, the command thread and the relays call in; one re-entrant lock
guards the cache.  Listeners are called in order of the changes, outside the lock: when
another thread is delivering, a change is handed to it (so a listener may run on another
thread than the one that changed the balance, never concurrently with another listener,
never out of order).  A top-up's cache update and listeners run on the charger's own
thread once the top-up is on disk.  Reads (:meth:`Charger.balance`, :meth:`Charger.state`
...) take no lock.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from types import ModuleType
from typing import Any

import cbor2
from sqlite_utils import Database

from gateway.billing import (
    BillingYear,
    ChargeLine,
    Interval,
    MeterState,
    Running,
    SegmentKey,
    TariffBook,
    rate,
)
from gateway.config.model import GatewayConfig, TouTariff
from gateway.errors import GatewayError
from gateway.poller import REGISTER_RANGE_WH
from gateway.prepaid import PrepaidState, StateChange, StateTracker, Thresholds
from gateway.protocols.batch import LedgerEntry, MeterEvent
from gateway.protocols.quantities import (
    FLAG_DISCONTINUITY,
    FLAG_ROLLOVER,
    FLAG_TIME_UNTRUSTED,
    EventCode,
    Quantity,
    Reading,
)
from gateway.store.ledger import (
    VACANCY,
    Charge,
    TopUp,
    TopUpResult,
    apply_top_up,
    journal_with_charges,
    post_charges,
)
from gateway.store.meters import MeterRecord, meter_records
from gateway.store.writer import StoreWriter

__all__ = [
    "AccountYear",
    "Billing",
    "Charged",
    "Charger",
    "Listener",
    "Rated",
    "RatingRow",
    "load_state",
    "post_reading",
    "rate_reading",
    "save_state",
]

_logger = logging.getLogger(__name__)

Listener = Callable[[StateChange, tuple[str, ...]], None]
"""Called with each prepaid state change and the meter ids of its account."""

_SLOT_QUANTITIES = {
    1: Quantity.ENERGY_T1,
    2: Quantity.ENERGY_T2,
    3: Quantity.ENERGY_T3,
    4: Quantity.ENERGY_T4,
}
_REGISTER_STEP_WH = 10  # a DL/T 645 register holds whole 10 Wh (XXXXXX.XX kWh)


# --- records ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RatingRow:
    """One meter's rating state (``rating_state``): its last rated reading (time, forward
    energy x ratio, per-tariff registers x ratio) and its rounding accumulators."""

    meter: str
    last_ts_ms: int
    last_energy_wh: int
    totals: Mapping[SegmentKey, Running]
    slots: Mapping[int, int] | None = None  #: tariff registers 1-4; None: none kept


@dataclass(frozen=True, slots=True)
class Billing:
    """How one meter is billed: its account, tariff and register ratio."""

    meter: str
    account: str
    tariff: str
    unbilled: bool
    dlt645: bool
    ratio: int
    opened: date | None = None  #: the account's opening day (tier proration)


@dataclass(frozen=True, slots=True)
class AccountYear:
    """An account's billing-year tier state (``rating_year``)."""

    year_wh: int = 0  #: consumption of all its meters in the billing year, Wh
    year_end: datetime | None = None  #: when the total resets (UTC); None: not yet known


@dataclass(frozen=True, slots=True)
class Rated:
    """What rating one reading gave (:func:`rate_reading`).

    ``status``: ``no_energy`` (nothing to rate), ``baseline`` (the reading starts a new
    baseline: first, discontinuity, fall, no tariff in force), ``deferred`` (time-of-use
    with an untrusted clock) or ``rated``.
    """

    status: str
    state: RatingRow | None = None  #: the meter's new rating state; None: unchanged
    year: AccountYear | None = None  #: the account's new tier state; None: unchanged
    lines: tuple[ChargeLine, ...] = ()
    amount: int = 0  #: charged to the account (0 when unbilled), 0.0001 yuan


@dataclass(frozen=True, slots=True)
class Charged:
    """What one reading's transaction wrote."""

    position: int
    entries: tuple[LedgerEntry, ...]


# --- the rating of one reading (Step 8 replaces this) ------------------------------------


def _when(ts_ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ts_ms)


def _registers(reading: Reading) -> dict[int, int] | None:
    values = reading.values
    if not all(q in values for q in _SLOT_QUANTITIES.values()):
        return None
    return {slot: values[q] for slot, q in _SLOT_QUANTITIES.items()}


def _slot_deltas(
    prev: Mapping[int, int] | None,
    now: Mapping[int, int] | None,
    delta: int,
    span: int | None,
    ratio: int,
) -> dict[int, int] | None:
    """Per-slot energy since ``prev``; None when either lacks registers, one fell, or
    their sum disagrees with the total by more than the registers' resolution."""
    if prev is None or now is None:
        return None
    out: dict[int, int] = {}
    for slot, value in now.items():
        d = value - prev.get(slot, value)
        if d < 0 and span is not None:
            d += span
        if d < 0:
            return None
        out[slot] = d
    if abs(sum(out.values()) - delta) > _REGISTER_STEP_WH * ratio * len(out):
        return None
    return out


def rate_reading(
    prev: RatingRow | None,
    reading: Reading,
    billing: Billing,
    book: TariffBook,
    year: AccountYear,
    calendar: BillingYear,
    *,
    engine: ModuleType | None = None,
) -> Rated:
    """Rate ``reading`` of ``billing.meter`` after ``prev`` with the account's ``year``.

    Pure: the caller keeps the returned state and year and posts the lines.
    """
    energy = reading.values.get(Quantity.ENERGY_IMPORT)
    if energy is None:
        return Rated("no_energy")
    registers = _registers(reading)
    totals: Mapping[SegmentKey, Running] = prev.totals if prev is not None else {}
    base = RatingRow(billing.meter, reading.ts_ms, energy, totals, registers)
    if prev is None or reading.flags & FLAG_DISCONTINUITY:
        return Rated("baseline", base)
    delta = energy - prev.last_energy_wh
    span: int | None = None
    if reading.flags & FLAG_ROLLOVER and billing.dlt645:
        span = REGISTER_RANGE_WH * billing.ratio
        if delta < 0:
            delta += span
    if delta < 0:  # a fall the poller did not flag: no credit, a new baseline
        return Rated("baseline", base)
    if reading.flags & FLAG_TIME_UNTRUSTED and any(
        isinstance(v, TouTariff) for v in book.versions(billing.tariff)
    ):
        return Rated("deferred")  # rated at the first trusted reading
    t0 = _when(prev.last_ts_ms)
    t1 = max(t0, _when(reading.ts_ms))
    year_end = year.year_end or calendar.end_of(t0)
    state = MeterState(
        billing.meter,
        billing.account,
        billing.tariff,
        year_wh=year.year_wh,
        thresholds=calendar.thresholds(book, billing.tariff, billing.opened, t0),
        year_end=year_end,
        totals=totals,
    )
    slot_wh = _slot_deltas(prev.slots, registers, delta, span, billing.ratio)
    try:
        rating = rate(state, Interval(t0, t1, delta, slot_wh), book, engine=engine)
    except KeyError as exc:  # no tariff version in force: stored, not charged
        _logger.warning("meter %s: not rated: %s", billing.meter, exc)
        return Rated("baseline", base)
    after = rating.state
    new_year = AccountYear(after.year_wh, after.year_end or calendar.end_of(t1))
    row = RatingRow(billing.meter, reading.ts_ms, energy, dict(after.totals), registers)
    amount = 0 if billing.unbilled else rating.amount
    return Rated("rated", row, new_year, rating.lines, amount)


# --- persistence (inside the caller's transaction) ---------------------------------------


def _encode_totals(totals: Mapping[SegmentKey, Running]) -> bytes:
    rows = [[t, v, k, r.energy_wh, r.posted] for (t, v, k), r in sorted(totals.items())]
    return cbor2.dumps(rows)


def _decode_totals(blob: bytes) -> dict[SegmentKey, Running]:
    return {
        (str(t), int(v), str(k)): Running(int(e), int(p)) for t, v, k, e, p in cbor2.loads(blob)
    }


def _row(meter: str, ts: Any, energy: Any, totals: Any, slots: Any) -> RatingRow:
    registers = None
    if slots is not None:
        registers = {int(k): int(v) for k, v in cbor2.loads(bytes(slots)).items()}
    return RatingRow(meter, int(ts), int(energy), _decode_totals(bytes(totals)), registers)


def load_state(db: Database, meter: str) -> RatingRow | None:
    """The persisted rating state of ``meter``, if any."""
    row = db.execute(
        "SELECT last_ts_ms, last_energy_wh, totals, last_slots FROM rating_state WHERE meter = ?",
        (meter,),
    ).fetchone()
    return None if row is None else _row(meter, *row)


def save_state(
    db: Database,
    meter: str,
    ts_ms: int,
    energy_wh: int,
    totals: Mapping[SegmentKey, Running],
    slots: Mapping[int, int] | None = None,
) -> None:
    """Persist ``meter``'s rating state (its last reading, per-tariff registers and
    rounding accumulators), in the caller's transaction."""
    blob = None if slots is None else cbor2.dumps(dict(sorted(slots.items())))
    db.execute(
        "INSERT INTO rating_state (meter, last_ts_ms, last_energy_wh, totals, last_slots)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (meter) DO UPDATE SET"
        " last_ts_ms = excluded.last_ts_ms, last_energy_wh = excluded.last_energy_wh,"
        " totals = excluded.totals, last_slots = excluded.last_slots",
        (meter, ts_ms, energy_wh, _encode_totals(totals), blob),
    )


def _ms(instant: datetime | None) -> int | None:
    if instant is None:
        return None
    return (instant - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _load_year(db: Database, account: str) -> AccountYear:
    row = db.execute(
        "SELECT year_wh, year_end_ms FROM rating_year WHERE account = ?", (account,)
    ).fetchone()
    if row is None:
        return AccountYear()
    return AccountYear(int(row[0]), None if row[1] is None else _when(int(row[1])))


def _save_year(db: Database, account: str, year: AccountYear) -> None:
    db.execute(
        "INSERT INTO rating_year (account, year_wh, year_end_ms) VALUES (?, ?, ?)"
        " ON CONFLICT (account) DO UPDATE SET year_wh = excluded.year_wh,"
        " year_end_ms = excluded.year_end_ms",
        (account, year.year_wh, _ms(year.year_end)),
    )


def _save_prepaid(
    db: Database, account: str, state: PrepaidState, tripped: bool, balance: int, ts_ms: int
) -> None:
    db.execute(
        "INSERT INTO prepaid_state (account, state, tripped, balance, ts_ms) VALUES"
        " (?, ?, ?, ?, ?) ON CONFLICT (account) DO UPDATE SET state = excluded.state,"
        " tripped = excluded.tripped, balance = excluded.balance, ts_ms = excluded.ts_ms",
        (account, str(state), int(tripped), balance, ts_ms),
    )


def _charges(billing: Billing, reading: Reading, position: int, rated: Rated) -> list[Charge]:
    return [
        Charge(
            billing.account,
            reading.ts_ms,
            line.amount,
            f"{billing.meter}:{position}:{i}",
            line.version,
            billing.meter,
        )
        for i, line in enumerate(rated.lines)
    ]


def post_reading(
    db: Database,
    reading: Reading,
    billing: Billing,
    book: TariffBook,
    *,
    engine: ModuleType | None = None,
    calendar: BillingYear | None = None,
) -> Charged:
    """Journal ``reading``, rate it from the stored state and post its charges, in the
    caller's transaction (the store-only path: meter lifecycle, tests).  A running
    :class:`Charger` must :meth:`~Charger.reload` afterwards."""
    position, _ = journal_with_charges(db, reading, ())
    rated = rate_reading(
        load_state(db, billing.meter),
        reading,
        billing,
        book,
        _load_year(db, billing.account),
        calendar or BillingYear(timezone=book.calendar.timezone),
        engine=engine,
    )
    if rated.state is not None:
        s = rated.state
        save_state(db, s.meter, s.last_ts_ms, s.last_energy_wh, s.totals, s.slots)
    if rated.year is not None:
        _save_year(db, billing.account, rated.year)
    if billing.unbilled or not rated.lines:
        return Charged(position, ())
    return Charged(position, tuple(post_charges(db, _charges(billing, reading, position, rated))))


# --- the cache --------------------------------------------------------------------------


@dataclass(slots=True)
class _Account:
    id: str
    type: Any  # AccountType
    trip_on_arrears: bool
    balance: int
    year: AccountYear = field(default_factory=AccountYear)
    thresholds: Thresholds | None = None  #: its own; None: the default


@dataclass(frozen=True, slots=True)
class _Snapshot:
    accounts: list[tuple[str, str, bool, int]]
    states: dict[str, RatingRow]
    years: dict[str, AccountYear]
    prepaid: dict[str, tuple[PrepaidState, bool]]
    thresholds: dict[str, Thresholds]
    records: dict[str, MeterRecord]
    ledger_id: int


def _read_snapshot(db: Database) -> _Snapshot:
    accounts = [
        (str(a), str(t), bool(trip), int(b))
        for a, t, trip, b in db.execute(
            "SELECT id, type, trip_on_arrears, balance FROM accounts ORDER BY id"
        ).fetchall()
    ]
    states = {
        str(m): _row(str(m), ts, e, totals, slots)
        for m, ts, e, totals, slots in db.execute(
            "SELECT meter, last_ts_ms, last_energy_wh, totals, last_slots FROM rating_state"
        ).fetchall()
    }
    years = {
        str(a): AccountYear(int(wh), None if end is None else _when(int(end)))
        for a, wh, end in db.execute(
            "SELECT account, year_wh, year_end_ms FROM rating_year"
        ).fetchall()
    }
    prepaid = {
        str(a): (PrepaidState(str(s)), bool(t))
        for a, s, t in db.execute("SELECT account, state, tripped FROM prepaid_state").fetchall()
    }
    thresholds = {
        str(r[0]): Thresholds(*(int(x) for x in r[1:]))
        for r in db.execute(
            "SELECT account, alarm1, alarm2, overdraft_limit, close_allow, emergency_credit"
            " FROM prepaid_thresholds"
        ).fetchall()
    }
    records = {r.meter: r for r in meter_records(db)}
    ledger_id = int(db.execute("SELECT coalesce(max(id), 0) FROM ledger").fetchone()[0])
    return _Snapshot(accounts, states, years, prepaid, thresholds, records, ledger_id)


@dataclass(frozen=True, slots=True)
class _Prepaid:
    """An account's prepaid state to persist (and its event, when it changed)."""

    account: str
    state: PrepaidState
    tripped: bool
    balance: int
    ts_ms: int
    event: MeterEvent | None
    changed: bool = False


@dataclass(slots=True)
class _Job:
    reading: Reading
    billing: Billing
    rated: Rated
    gen: int
    prepaid: _Prepaid | None
    attempt: int = 0
    result: Future[Charged] = field(default_factory=Future)  #: the final outcome


class Charger:
    """The poller's journal with the money decision in memory (see the module docstring).

    ``attempts`` transactions at most per reading, waiting ``backoff_s`` x 2^n between.
    """

    def __init__(
        self,
        writer: StoreWriter,
        config: GatewayConfig,
        book: TariffBook | None = None,
        *,
        engine: ModuleType | None = None,
        now_ms: Callable[[], int] | None = None,
        attempts: int = 6,
        backoff_s: float = 0.05,
    ) -> None:
        self.writer = writer
        self.config = config
        self.book = book or TariffBook.from_config(config)
        self.engine = engine
        self.calendar = BillingYear.from_config(config)
        self.now_ms = now_ms or (lambda: int(datetime.now(UTC).timestamp() * 1000))
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.default_thresholds = Thresholds.from_config(config.billing.thresholds)
        self.tracker = StateTracker(self.default_thresholds)
        self.billing: dict[str, Billing] = {}
        self._meters_of: dict[str, tuple[str, ...]] = {}
        self._account_of: dict[str, str] = {}
        self._states: dict[str, RatingRow] = {}
        self._accounts: dict[str, _Account] = {}
        self._ledger_id = 0
        self._lock = threading.RLock()
        self._listeners: list[Listener] = []
        self._changes: deque[tuple[StateChange, tuple[str, ...]]] = deque()
        self._delivering = threading.Lock()
        self._idle = threading.Condition()
        self._inflight = 0
        self._gen = itertools.count(1)
        self._written: dict[tuple[str, str], int] = {}  # writer thread only
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="charger")
        self._closed = False
        self.posted = 0
        self.failed = 0  # transactions that failed (each retried or lost)
        self.retried = 0
        self.lost = 0  # readings whose transaction kept failing
        self.reloads = 0
        self.changes = 0
        self.reload()

    # --- the poller's journal ---------------------------------------------------------

    def submit(self, record: Reading | MeterEvent) -> None:
        if not isinstance(record, Reading) or record.meter not in self.billing:
            self.writer.submit(record)
            return
        with self._lock:
            billing = self.billing.get(record.meter)
            if billing is None:  # reloaded meanwhile
                self.writer.submit(record)
                return
            job = self._rate(record, billing)
            with self._idle:
                self._inflight += 1
        self._deliver()
        self._queue(job)

    def _rate(self, reading: Reading, billing: Billing) -> _Job:
        """Under the lock: rate in memory, move the balance, evaluate the state."""
        account = self._accounts[billing.account]
        rated = rate_reading(
            self._states.get(billing.meter),
            reading,
            billing,
            self.book,
            account.year,
            self.calendar,
            engine=self.engine,
        )
        if rated.state is not None:
            self._states[billing.meter] = rated.state
        if rated.year is not None:
            account.year = rated.year
        account.balance -= rated.amount
        prepaid = None
        if rated.status == "rated" and account.type != "unbilled":
            prepaid = self._evaluate(account, reading.ts_ms, reading.meter)
        return _Job(reading, billing, rated, next(self._gen), prepaid)

    def _evaluate(self, account: _Account, ts_ms: int, meter: str | None) -> _Prepaid:
        """Under the lock: the account's state for its balance; a change is queued for
        the listeners and gets an event (on ``meter``, else the account's first)."""
        change = self.tracker.update(
            account.id,
            account.balance,
            ts_ms,
            account_type=account.type,
            trip_on_arrears=account.trip_on_arrears,
            thresholds=account.thresholds or self.default_thresholds,
        )
        meters = self._meters_of.get(account.id, ())
        event = None
        if change is not None:
            self.changes += 1
            self._changes.append((change, meters))
            on = meter or (meters[0] if meters else None)
            if on is not None:
                detail: dict[int | str, int | str] = {
                    "account": account.id,
                    "old": str(change.old),
                    "new": str(change.new),
                    "balance": change.balance,
                }
                event = MeterEvent(on, ts_ms, EventCode.PREPAID_STATE, detail)
            _logger.info(
                "account %s: %s -> %s (balance %d)",
                account.id,
                change.old,
                change.new,
                change.balance,
            )
        return _Prepaid(
            account.id,
            self.tracker.state(account.id),
            self.tracker.tripped(account.id),
            account.balance,
            ts_ms,
            event,
            change is not None,
        )

    # --- listeners ------------------------------------------------------------------------

    def add_listener(self, fn: Listener) -> None:
        """Call ``fn(change, meters)`` for every prepaid state change (must not block)."""
        with self._lock:
            self._listeners.append(fn)

    def _deliver(self) -> None:
        """Call the listeners with the queued changes, in order; if another thread is at
        it, it takes ours too."""
        while self._changes:
            if not self._delivering.acquire(blocking=False):
                return
            try:
                while True:
                    try:
                        change, meters = self._changes.popleft()
                    except IndexError:
                        break
                    for fn in list(self._listeners):
                        try:
                            fn(change, meters)
                        except Exception:
                            _logger.exception("prepaid listener %r failed", fn)
            finally:
                self._delivering.release()

    # --- the durable write ------------------------------------------------------------------

    def _newest(self, key: tuple[str, str], gen: int) -> bool:
        """Writer thread: whether ``gen`` is the newest write of ``key`` so far (a
        transaction retried after a later one must not overwrite the later state)."""
        if gen < self._written.get(key, 0):
            return False
        self._written[key] = gen
        return True

    def _write(self, db: Database, job: _Job) -> Charged:
        reading, billing, rated = job.reading, job.billing, job.rated
        position, _ = journal_with_charges(db, reading, ())
        if rated.state is not None and self._newest(("meter", billing.meter), job.gen):
            s = rated.state
            save_state(db, s.meter, s.last_ts_ms, s.last_energy_wh, s.totals, s.slots)
        if rated.year is not None and self._newest(("year", billing.account), job.gen):
            _save_year(db, billing.account, rated.year)
        entries: list[LedgerEntry] = []
        if rated.lines and not billing.unbilled:
            entries = post_charges(db, _charges(billing, reading, position, rated))
        self._write_prepaid(db, job.prepaid, job.gen)
        return Charged(position, tuple(entries))

    def _write_prepaid(self, db: Database, p: _Prepaid | None, gen: int) -> None:
        if p is None:
            return
        if self._newest(("prepaid", p.account), gen):
            _save_prepaid(db, p.account, p.state, p.tripped, p.balance, p.ts_ms)
        if p.event is not None:
            journal_with_charges(db, p.event, ())

    def _queue(self, job: _Job) -> None:
        try:
            future = self.writer.call(lambda db: self._write(db, job), durable=True)
        except GatewayError as exc:  # the writer is closed
            self._settle(job, None, exc)
            return
        future.add_done_callback(lambda f: self._done(job, f))

    def _done(self, job: _Job, future: Future[Charged]) -> None:
        """Writer thread: no charger lock here (a reload may hold it, waiting on us)."""
        exc = future.exception()
        self._settle(job, None if exc is not None else future.result(), exc)

    def _settle(self, job: _Job, charged: Charged | None, exc: BaseException | None) -> None:
        if exc is None:
            self.posted += 1
            self._finish()
            job.result.set_result(charged)  # type: ignore[arg-type]
            return
        self.failed += 1
        job.attempt += 1
        if job.attempt < self.attempts and not self._closed:
            self.retried += 1
            timer = threading.Timer(self.backoff_s * 2 ** (job.attempt - 1), self._queue, (job,))
            timer.daemon = True
            timer.start()
            return
        self.lost += 1
        _logger.error(
            "charging: reading of %s at %d not stored after %d attempts (%s); reloading",
            job.reading.meter,
            job.reading.ts_ms,
            job.attempt,
            exc,
        )
        self._finish()
        job.result.set_exception(exc or GatewayError("not stored"))
        if not self._closed:
            with contextlib.suppress(RuntimeError):  # shut down meanwhile
                self._executor.submit(self._reload_quietly)

    def _finish(self) -> None:
        with self._idle:
            self._inflight -= 1
            self._idle.notify_all()

    def _reload_quietly(self) -> None:
        try:
            self.reload()
        except Exception as exc:
            _logger.error("charging: reload failed: %s", exc)

    def _persist(self, states: Iterable[_Prepaid], durable: bool = True) -> None:
        """Write prepaid states (and their events) not caused by a reading."""
        items = [(p, next(self._gen)) for p in states]
        if not items:
            return

        def run(db: Database) -> None:
            for p, gen in items:
                self._write_prepaid(db, p, gen)

        try:
            self.writer.call(run, durable=durable)
        except GatewayError as exc:
            _logger.error("charging: prepaid state not stored: %s", exc)

    # --- top-ups, relays, thresholds ----------------------------------------------------

    def top_up(self, top_up: TopUp) -> Future[TopUpResult]:
        """Apply ``top_up`` once, durably (the ledger's rules; the hoarding limit of
        ``billing.hoarding_limit``, the account's emergency credit); then the cache, the
        state and the listeners (on the charger's thread).  The future gives the result
        after all of that."""
        account = self._accounts.get(top_up.account)
        levels = (account.thresholds if account else None) or self.default_thresholds
        limit = self.config.billing.hoarding_limit

        def run(db: Database) -> TopUpResult:
            return apply_top_up(
                db, top_up, hoarding_limit=limit, emergency_limit=levels.emergency_credit
            )

        outer: Future[TopUpResult] = Future()
        inner = self.writer.call(run, durable=True)

        def done(f: Future[TopUpResult]) -> None:
            exc = f.exception()
            if exc is not None:
                outer.set_exception(exc)
                return
            try:
                self._executor.submit(self._applied, f.result(), outer)
            except RuntimeError:  # closed: on disk, the cache is going anyway
                outer.set_result(f.result())

        inner.add_done_callback(done)
        return outer

    def _applied(self, result: TopUpResult, outer: Future[TopUpResult]) -> None:
        try:
            entry = result.entry
            if result.applied and entry is not None:
                prepaid = None
                with self._lock:
                    account = self._accounts.get(entry.account)
                    if account is not None and entry.entry_id > self._ledger_id:
                        account.balance += entry.amount
                        prepaid = self._evaluate(account, entry.ts_ms, None)
                if account is None:
                    self.reload()
                self._deliver()
                if prepaid is not None:
                    self._persist([prepaid])
        except Exception as exc:
            _logger.error("charging: top-up %s not applied to the cache: %s", result, exc)
        finally:
            outer.set_result(result)

    def relay_closed(self, account: str) -> None:
        """The relays confirmed every meter of ``account`` closed: no longer held tripped."""
        with self._lock:
            self.tracker.relay_closed(account)
            cached = self._accounts.get(account)
            prepaid = self._evaluate(cached, self.now_ms(), None) if cached else None
        self._deliver()
        if prepaid is not None:
            self._persist([prepaid])

    def set_thresholds(self, account: str | None, thresholds: Thresholds) -> None:
        """Levels for ``account`` (None: the default of every account without its own),
        kept in the store; the accounts concerned are re-evaluated at once."""
        key = "" if account is None else account
        ts = self.now_ms()
        t = thresholds

        def run(db: Database) -> None:
            db.execute(
                "INSERT OR REPLACE INTO prepaid_thresholds (account, alarm1, alarm2,"
                " overdraft_limit, close_allow, emergency_credit, ts_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, t.alarm1, t.alarm2, t.overdraft_limit, t.close_allow,
                 t.emergency_credit, ts),
            )  # fmt: skip

        self.writer.call(run, durable=True)
        with self._lock:
            if account is None:
                self.default_thresholds = thresholds
                self.tracker.thresholds = thresholds
                targets = [a for a in self._accounts.values() if a.thresholds is None]
            else:
                cached = self._accounts.get(account)
                if cached is not None:
                    cached.thresholds = thresholds
                targets = [cached] if cached is not None else []
            states = [self._evaluate(a, ts, None) for a in targets]
        self._deliver()
        self._persist([p for p in states if p.changed])

    # --- (re)loading -----------------------------------------------------------------------

    def reload(self, timeout: float = 60.0) -> None:
        """Re-read the cache from the store (at start; after lifecycle changes; after a
        transaction kept failing).  Waits for the readings in flight to be written."""
        with self._lock:
            with self._idle:
                if not self._idle.wait_for(lambda: self._inflight == 0, timeout):
                    _logger.warning("charging: reload with %d readings in flight", self._inflight)
            snap = self.writer.call(_read_snapshot).result(timeout)
            self._rebuild(snap)
            self.reloads += 1
            states = [self._evaluate(a, self.now_ms(), None) for a in self._accounts.values()]
        self._deliver()
        self._persist([p for p in states if p.changed])

    def _rebuild(self, snap: _Snapshot) -> None:
        config = self.config
        accounts = {a.id: a for a in config.accounts}
        buses = {b.name: b for b in config.serial_buses}
        default = snap.thresholds.get("", Thresholds.from_config(config.billing.thresholds))
        self.default_thresholds = default
        self.tracker = StateTracker(default)
        self._accounts = {}
        for ident, kind, trip, balance in snap.accounts:
            acc = accounts.get(ident)
            own = snap.thresholds.get(ident)
            if own is None and acc is not None and acc.thresholds is not None:
                own = Thresholds.from_config(acc.thresholds)
            self._accounts[ident] = _Account(
                ident, kind, trip, balance, snap.years.get(ident, AccountYear()), own
            )
            state = snap.prepaid.get(ident)
            if state is not None:
                self.tracker.restore(ident, *state)
        billing: dict[str, Billing] = {}
        meters_of: dict[str, list[str]] = {}
        account_of: dict[str, str] = {}
        for meter in config.meters:
            if meter.role == "gate":
                continue
            record = snap.records.get(meter.id)
            if record is not None and record.status != "active":
                continue
            account_id = record.account if record is not None else meter.account
            ratio = record.ratio if record is not None else meter.ratio
            acc = accounts.get(account_id) if account_id else None
            tariff = acc.tariff if acc is not None else None
            if account_id is None:
                if config.billing.vacancy_tariff is None:
                    continue
                account_id, tariff = VACANCY, config.billing.vacancy_tariff
            meters_of.setdefault(account_id, []).append(meter.id)
            account_of[meter.id] = account_id
            cached = self._accounts.get(account_id)
            if tariff is None or cached is None:
                continue
            bus = buses.get(meter.bus)
            billing[meter.id] = Billing(
                meter.id,
                account_id,
                tariff,
                cached.type == "unbilled",
                bus is not None and bus.protocol == "dlt645",
                ratio,
                acc.opened if acc is not None else None,
            )
        self.billing = billing
        self._meters_of = {a: tuple(sorted(ms)) for a, ms in meters_of.items()}
        self._account_of = account_of
        self._states = {m: s for m, s in snap.states.items() if m in billing}
        self._ledger_id = snap.ledger_id

    # --- reads (no lock) -------------------------------------------------------------------

    def balance(self, account: str) -> int:
        """The balance in memory (ahead of disk by the writer's queue); KeyError if none."""
        return self._accounts[account].balance

    def state(self, account: str) -> PrepaidState:
        return self.tracker.state(account)

    def accounts_in(self, state: PrepaidState) -> list[str]:
        return self.tracker.accounts_in(state)

    def meters_of(self, account: str) -> tuple[str, ...]:
        """The meters charged to ``account`` (removed and replaced ones excluded)."""
        return self._meters_of.get(account, ())

    def account_of(self, meter: str) -> str | None:
        """The account ``meter`` is charged to (``vacancy`` for an unassigned meter when a
        vacancy tariff is set); None when it is not charged to any."""
        return self._account_of.get(meter)

    def thresholds(self, account: str) -> Thresholds:
        cached = self._accounts.get(account)
        return (cached.thresholds if cached else None) or self.default_thresholds

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every queued reading is written (or lost); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout)

    def close(self) -> None:
        """Stop retrying and the charger's thread (before the store closes)."""
        self._closed = True
        self._executor.shutdown(wait=True)

    def status(self) -> dict[str, object]:
        by_state = {str(s): len(self.tracker.accounts_in(s)) for s in PrepaidState}
        return {
            "meters": len(self.billing),
            "accounts": len(self._accounts),
            "posted": self.posted,
            "failed": self.failed,
            "retried": self.retried,
            "lost": self.lost,
            "in_flight": self._inflight,
            "reloads": self.reloads,
            "state_changes": self.changes,
            "states": by_state,
        }

    # kept for callers that queue one reading's transaction themselves
    def post(self, reading: Reading, billing: Billing) -> Future[Charged]:
        """Rate ``reading`` in memory and queue its durable transaction; its future."""
        with self._lock:
            job = self._rate(reading, billing)
            with self._idle:
                self._inflight += 1
        self._deliver()
        self._queue(job)
        return job.result
