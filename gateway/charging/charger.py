"""The :class:`Charger`: the money decision in memory, then the durable write (see
:mod:`gateway.charging`)."""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from types import ModuleType
from typing import Any, TypeVar

from sqlite_utils import Database

from gateway.billing import BillingYear, TariffBook
from gateway.charging.fast import Rating
from gateway.charging.rate import AccountYear, Billing, Rated, billing_of
from gateway.charging.state import (
    Charged,
    Snapshot,
    closed_year,
    read_snapshot,
    reading_charges,
    save_closed,
    save_prepaid,
    save_state,
    save_year,
)
from gateway.config.model import GatewayConfig
from gateway.errors import GatewayError
from gateway.prepaid import PrepaidState, StateChange, StateTracker, Thresholds
from gateway.protocols.batch import LedgerEntry, MeterEvent
from gateway.protocols.quantities import FLAG_CURVE, EventCode, Reading
from gateway.store.account_records import account_records, effective_accounts
from gateway.store.ledger import (
    VACANCY,
    TopUp,
    TopUpResult,
    apply_top_up,
    balance_of,
    journal_with_charges,
    post_charges,
)
from gateway.store.meters import MeterRecord, chargeable, expects_number, hold
from gateway.store.writer import StoreWriter

__all__ = ["Charger", "Listener"]

_logger = logging.getLogger("gateway.charging")

Listener = Callable[[StateChange, tuple[str, ...]], None]
"""Called with each prepaid state change and the meter ids of its account."""

T = TypeVar("T")


@dataclass(slots=True)
class _Account:
    id: str
    type: Any  # AccountType
    trip_on_arrears: bool
    balance: int
    thresholds: Thresholds | None = None  #: its own; None: the default
    opened: date | None = None  #: its opening day (tier proration)


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
    closed: tuple[int, int] | None = None  #: the billing year this reading closed
    attempt: int = 0
    linger: bool = True  #: its transaction may linger (post(): its caller waits)
    result: Future[Charged] = field(default_factory=Future)  #: the final outcome


def _restore_account_records(db: Database) -> None:
    """The ledger's account type and trip flag as recorded by command (migration 10)."""
    for r in account_records(db).values():
        if balance_of(db, r.id) is not None:
            db.execute(
                "UPDATE accounts SET type = ?, trip_on_arrears = ? WHERE id = ?",
                (r.type, int(r.trip_on_arrears), r.id),
            )


class Charger:
    """The poller's journal with the money decision in memory (see the module docstring).

    ``attempts`` transactions at most per reading, waiting ``backoff_s`` x 2^n between.

    A billed reading's durable transaction *lingers* up to ``linger`` seconds on the
    store writer (:meth:`StoreWriter.call`), so that the readings of a polling cycle
    share one fsync instead of one each (flash wear: bench/bench_store.py --charging).
    That is safe for billed readings, and for them only.  A charge derives from the
    meter's cumulative register, and the rating state on disk is the last COMMITTED
    reading's.  If power is cut while billed readings wait in a window they are simply
    not on disk: after restart the next reading's delta from the last committed one
    charges exactly the same energy (the no-drift rule rates cumulative totals), so no
    energy is lost or charged twice; only on a time-of-use tariff without per-tariff
    registers is the longer interval apportioned by time, as any gap is; and nothing of them was
    acknowledged to anyone (the trip decision is in memory, the relays reconcile at
    restart).  Top-ups, commands, lifecycle, prepaid-state and relay records are
    acknowledged to the master or to people: they stay immediate, and an immediate
    durable call commits the lingering readings with it.  Whoever waits for the readings
    in flight (:meth:`wait_idle`, :meth:`reload`, :meth:`apply`, :meth:`post`'s caller)
    does not wait out the linger: the writer is nudged and readings queued meanwhile
    do not linger.
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
        linger: float = 1.0,
    ) -> None:
        if not linger >= 0:
            raise ValueError("linger must be >= 0")
        self.writer = writer
        self.linger = linger
        self._hurry = 0  # threads waiting for the readings in flight (under _hurry_lock)
        self._hurry_lock = threading.Lock()
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
        self.held: tuple[str, ...] = ()  #: meters held (number changed), by id
        self._numbered: dict[str, MeterRecord] = {}  #: active records with a work order's number
        self._number_listeners: list[Callable[[MeterEvent], None]] = []
        self._meters_of: dict[str, tuple[str, ...]] = {}
        self._account_of: dict[str, str] = {}
        # the meters' and accounts' rating state: the fast path's arrays (gateway.charging.fast)
        self._rating = Rating(self.book, self.calendar, engine=engine)
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
        self._stale = False  # a reading met a meter the store no longer charges
        self.posted = 0
        self.failed = 0  # transactions that failed (each retried or lost)
        self.retried = 0
        self.lost = 0  # readings whose transaction kept failing
        self.reloads = 0
        self.changes = 0
        # accounts changed by command win over the configuration's (which the runtime
        # has just written to the ledger's accounts at start)
        self.writer.call(_restore_account_records, durable=True).result(60)
        self.reload()

    # --- the poller's journal ---------------------------------------------------------

    def submit(self, record: Reading | MeterEvent) -> None:
        """The poller's journal: a billed meter's reading is charged (a curve point is
        not a poll: stored only); anything else goes to the store writer."""
        if not isinstance(record, Reading):
            if record.code == EventCode.METER_NUMBER_CHANGED and self._work_order(record):
                return
            if record.code == EventCode.METER_NUMBER_CHANGED and record.meter in self.billing:
                self._hold(record)
            else:
                self.writer.submit(record)
            return
        if record.meter not in self.billing or record.flags & FLAG_CURVE:
            self.writer.submit(record)
            return
        with self._lock:
            billing = self.billing.get(record.meter)
            job = None
            if billing is not None:  # (None: reloaded meanwhile)
                try:
                    job = self._rate(record, billing)
                except Exception as exc:  # a bug must not stop the bus: stored, not rated
                    _logger.error(
                        "charging: %s at %d not rated: %r", record.meter, record.ts_ms, exc
                    )
                    self.failed += 1
            if job is not None:
                with self._idle:
                    self._inflight += 1
        if job is None:
            self.writer.submit(record)
            return
        self._deliver()
        self._queue(job)

    def _work_order(self, event: MeterEvent) -> bool:
        """Whether the new number is the one the meter's work order recorded (a
        replacement or addition with ``meter_number``, :func:`expects_number`): then the
        swap is the work order's, the meter is not held, the event is journaled with
        ``work_order: matched`` and the number listeners are told (the runtime clears
        the poller's ``swapped`` flag).  Any other number: False (held as without)."""
        with self._lock:
            if not expects_number(self._numbered.get(event.meter), event.detail.get("new")):
                return False
            listeners = list(self._number_listeners)
        self.writer.submit(replace(event, detail={**event.detail, "work_order": "matched"}))
        _logger.info(
            "charging: meter %s number %s is its work order's: not held",
            event.meter,
            event.detail.get("new"),
        )
        for fn in listeners:
            try:
                fn(event)
            except Exception as exc:  # a listener's bug must not stop the bus
                _logger.error("charging: number listener failed for %s: %r", event.meter, exc)
        return True

    def add_number_listener(self, fn: Callable[[MeterEvent], None]) -> None:
        """Call ``fn(event)`` (on the poller's thread; must not block) for each
        METER_NUMBER_CHANGED that matched the meter's work order (not held)."""
        with self._lock:
            self._number_listeners.append(fn)

    def _hold(self, event: MeterEvent) -> None:
        """The meter's number changed without a work order (domain.md): under the lock it
        leaves billing (its later readings are journaled, not charged) and one durable
        transaction writes the event and holds it in the store
        (:func:`gateway.store.meters.hold`) until :func:`gateway.lifecycle.confirm_meter`.
        Queued after the meter's readings already rated, so those are charged first."""
        with self._lock:
            billing = self.billing.pop(event.meter, None)
            if billing is None:  # reloaded meanwhile
                self.writer.submit(event)
                return
            self._rating.forget(event.meter)
            self._account_of.pop(event.meter, None)
            self.held = tuple(sorted({*self.held, event.meter}))
            left = tuple(m for m in self._meters_of.get(billing.account, ()) if m != event.meter)
            self._meters_of[billing.account] = left
            why = f"meter number {event.detail.get('old')} -> {event.detail.get('new')}"

            def run(db: Database) -> None:
                journal_with_charges(db, event, ())
                hold(
                    db,
                    event.meter,
                    account=None if billing.account == VACANCY else billing.account,
                    ratio=billing.ratio,
                    ts_ms=event.ts_ms,
                    why=why,
                )

            try:
                future = self.writer.call(run, durable=True)
            except GatewayError as exc:  # the writer is closed
                _logger.error("charging: hold of %s not stored: %s", event.meter, exc)
                return
        _logger.warning(
            "charging: meter %s held (%s), not charged until confirmed", event.meter, why
        )
        future.add_done_callback(lambda f: self._held(event.meter, f))

    def _held(self, meter: str, future: Future[None]) -> None:
        """Writer thread: a hold that did not commit leaves memory ahead: reload."""
        exc = future.exception()
        if exc is None:
            return
        _logger.error("charging: hold of %s not stored (%s); reloading", meter, exc)
        if not self._closed:
            with contextlib.suppress(RuntimeError):
                self._executor.submit(self._reload_quietly)

    def _rate(self, reading: Reading, billing: Billing) -> _Job:
        """Under the lock: rate in memory (the fast path, :mod:`gateway.charging.fast`:
        the rating state is its arrays), move the balance, evaluate the state."""
        account = self._accounts[billing.account]
        rated, year = self._rating.rate(reading, billing)
        closed = None if rated.year is None else closed_year(year, rated)
        account.balance -= rated.amount
        prepaid = None
        if rated.status == "rated" and account.type != "unbilled":
            prepaid = self._evaluate(account, reading.ts_ms, reading.meter)
        return _Job(reading, billing, rated, next(self._gen), prepaid, closed)

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
                        except Exception as exc:
                            _logger.error("prepaid listener %r failed: %r", fn, exc)
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
        if not chargeable(db, billing.meter):
            # removed, replaced or held since the cache was loaded (a lifecycle operation
            # ran before this): stored, not charged; the cache is reloaded
            self._stale = True
            return Charged(position, ())
        if rated.state is not None and self._newest(("meter", billing.meter), job.gen):
            s = rated.state
            save_state(db, s.meter, s.last_ts_ms, s.last_energy_wh, s.totals, s.slots)
        if rated.year is not None and self._newest(("year", billing.account), job.gen):
            save_year(db, billing.account, rated.year)
        if job.closed is not None:
            save_closed(db, billing.account, job.closed)
        entries: list[LedgerEntry] = []
        if rated.lines and not billing.unbilled:
            entries = post_charges(db, reading_charges(billing, reading, position, rated))
        self._write_prepaid(db, job.prepaid, job.gen)
        return Charged(position, tuple(entries))

    def _write_prepaid(self, db: Database, p: _Prepaid | None, gen: int) -> None:
        if p is None:
            return
        if self._newest(("prepaid", p.account), gen):
            save_prepaid(db, p.account, p.state, p.tripped, p.balance, p.ts_ms)
        if p.event is not None:
            journal_with_charges(db, p.event, ())

    def _queue(self, job: _Job) -> None:
        """Queue ``job``'s durable transaction, lingering (see the class docstring)
        unless someone waits for the readings in flight."""
        try:
            with self._hurry_lock:
                linger = self.linger if job.linger and not self._hurry else 0.0
                future = self.writer.call(
                    lambda db: self._write(db, job), durable=True, linger=linger
                )
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
            if self._stale and not self._closed:
                self._stale = False
                with contextlib.suppress(RuntimeError):
                    self._executor.submit(self._reload_quietly)
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

    @contextlib.contextmanager
    def _hurried(self) -> Iterator[None]:
        """While the caller waits for the readings in flight: those queued commit now
        (the writer is nudged) and those queued meanwhile do not linger.  Under
        ``_hurry_lock`` with :meth:`_queue`: a job is queued before the nudge or without
        linger."""
        with self._hurry_lock:
            self._hurry += 1
            self.writer.nudge()
        try:
            yield
        finally:
            with self._hurry_lock:
                self._hurry -= 1

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

    # --- lifecycle transactions ------------------------------------------------------------

    def apply(
        self, fn: Callable[[Database], T], *, reload: bool = True, timeout: float = 60.0
    ) -> Future[T]:
        """Run ``fn(db)`` in one durable store-writer transaction with charging paused.

        On the charger's thread, under its lock: the readings already queued are written
        first, then ``fn`` runs and commits, then (``reload``) the cache is re-read, all
        before the lock is released; so no reading is rated in memory between the
        transaction and the reload (a lifecycle operation's final reading and a poll of
        the same meter cannot both be charged).  Bus threads that meet a billed reading
        meanwhile wait.  The future gives ``fn``'s result once all that is done, or its
        exception (the transaction rolled back; nothing reloaded); GatewayError when the
        charger is closed.  Do not wait on it from a listener or under the lock."""
        out: Future[T] = Future()
        try:
            self._executor.submit(self._apply, fn, reload, timeout, out)
        except RuntimeError:  # shut down
            out.set_exception(GatewayError("the charger is closed"))
        return out

    def _apply(
        self, fn: Callable[[Database], T], reload: bool, timeout: float, out: Future[T]
    ) -> None:
        states: list[_Prepaid] = []
        with self._lock:
            with self._hurried(), self._idle:
                if not self._idle.wait_for(lambda: self._inflight == 0, timeout):
                    _logger.warning("charging: apply with %d readings in flight", self._inflight)
            try:
                result = self.writer.call(fn, durable=True).result(timeout)
            except BaseException as exc:
                out.set_exception(exc)
                return
            if reload:
                try:
                    states = self._reload_locked(timeout)
                except Exception as exc:  # committed all the same: logged, result kept
                    _logger.error("charging: reload after apply failed: %s", exc)
        self._deliver()
        self._persist([p for p in states if p.changed])
        out.set_result(result)

    # --- (re)loading -----------------------------------------------------------------------

    def reload(self, timeout: float = 60.0) -> None:
        """Re-read the cache from the store (at start; after lifecycle changes; after a
        transaction kept failing).  Waits for the readings in flight to be written."""
        with self._lock:
            with self._hurried(), self._idle:
                if not self._idle.wait_for(lambda: self._inflight == 0, timeout):
                    _logger.warning("charging: reload with %d readings in flight", self._inflight)
            states = self._reload_locked(timeout)
        self._deliver()
        self._persist([p for p in states if p.changed])

    def _reload_locked(self, timeout: float) -> list[_Prepaid]:
        """Under the lock, nothing in flight: re-read the cache; the states to persist."""
        snap = self.writer.call(read_snapshot).result(timeout)
        self._rebuild(snap)
        self.reloads += 1
        return [self._evaluate(a, self.now_ms(), None) for a in self._accounts.values()]

    def _rebuild(self, snap: Snapshot) -> None:
        config = self.config
        accounts = {a.id: a for a in effective_accounts(config.accounts, snap.account_records)}
        default = snap.thresholds.get("", Thresholds.from_config(config.billing.thresholds))
        self.default_thresholds = default
        # The states are the store's at start; later the tracker in memory is the truth
        # (a state change is written after it is made: the store may not have it yet).
        first = self.reloads == 0
        if first:
            self.tracker = StateTracker(default)
        self.tracker.thresholds = default
        known = {a for a, *_ in snap.accounts}
        for gone in set(self._accounts) - known:
            self.tracker.forget(gone)
        self._accounts = {}
        for ident, kind, trip, balance in snap.accounts:
            acc = accounts.get(ident)
            own = snap.thresholds.get(ident)
            if own is None and acc is not None and acc.thresholds is not None:
                own = Thresholds.from_config(acc.thresholds)
            self._accounts[ident] = _Account(
                ident, kind, trip, balance, own, acc.opened if acc is not None else None
            )
            state = snap.prepaid.get(ident)
            if state is not None and first:
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
            if account_id is None:
                if config.billing.vacancy_tariff is None:
                    continue
                account_id = VACANCY
            meters_of.setdefault(account_id, []).append(meter.id)
            account_of[meter.id] = account_id
            found = billing_of(config, meter.id, record, accounts.values())
            if found is not None and account_id in self._accounts:
                billing[meter.id] = found
        self.billing = billing
        self.held = tuple(sorted(m for m, r in snap.records.items() if r.status == "held"))
        self._numbered = {m: r for m, r in snap.records.items() if r.meter_number is not None}
        self._meters_of = {a: tuple(sorted(ms)) for a, ms in meters_of.items()}
        self._account_of = account_of
        rating = Rating(self.book, self.calendar, engine=self.engine)
        for a in self._accounts.values():
            rating.add_account(
                a.id,
                a.type,
                trip_on_arrears=a.trip_on_arrears,
                thresholds=a.thresholds or default,
                year=snap.years.get(a.id, AccountYear()),
                opened=a.opened,
            )
        for b in billing.values():
            rating.add_meter(b, snap.states.get(b.meter))
        self._rating = rating
        self._ledger_id = snap.ledger_id

    # --- reads (no lock) -------------------------------------------------------------------

    def balance(self, account: str) -> int:
        """The balance in memory (ahead of disk by the writer's queue); KeyError if none."""
        return self._accounts[account].balance

    def state(self, account: str) -> PrepaidState:
        return self.tracker.state(account)

    def year(self, account: str) -> AccountYear:
        """The account's billing-year tier total and reset, in memory (under the lock)."""
        with self._lock:
            return self._rating.year(account)

    def accounts_in(self, state: PrepaidState) -> list[str]:
        return self.tracker.accounts_in(state)

    def meters_of(self, account: str) -> tuple[str, ...]:
        """The meters charged to ``account`` (removed and replaced ones excluded)."""
        return self._meters_of.get(account, ())

    def account_of(self, meter: str) -> str | None:
        """The account ``meter`` is charged to (``vacancy`` for an unassigned meter when a
        vacancy tariff is set); None when it is not charged to any."""
        return self._account_of.get(meter)

    def trips_on_arrears(self, account: str) -> bool:
        """Whether ``account`` is prepaid and trips on arrears, as in force (the
        configuration's, or as changed by command: ACCOUNT_CHANGE)."""
        cached = self._accounts.get(account)
        return cached is not None and cached.type == "prepaid" and cached.trip_on_arrears

    def thresholds(self, account: str) -> Thresholds:
        cached = self._accounts.get(account)
        return (cached.thresholds if cached else None) or self.default_thresholds

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every queued reading is written (or lost); False on timeout.  The
        lingering ones are committed at once."""
        with self._hurried(), self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout)

    def close(self) -> None:
        """Stop retrying and the charger's thread (before the store closes); the
        lingering readings are committed at once."""
        self._closed = True
        self._executor.shutdown(wait=True)
        self.writer.nudge()

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
            "held": list(self.held),
        }

    # kept for callers that queue one reading's transaction themselves
    def post(self, reading: Reading, billing: Billing) -> Future[Charged]:
        """Rate ``reading`` in memory and queue its durable transaction; its future
        (the transaction does not linger: the caller is expected to wait for it)."""
        with self._lock:
            job = self._rate(reading, billing)
            job.linger = False
            with self._idle:
                self._inflight += 1
        self._deliver()
        self._queue(job)
        return job.result

    # --- tariff versions (gateway.tariff_updates) ---------------------------------------------

    def add_tariff(
        self, book: TariffBook, fn: Callable[[Database], T], *, timeout: float = 120.0
    ) -> Future[T]:
        """:meth:`apply` ``fn`` (a tariff version stored, a late one re-rated) and put
        ``book`` in force in the same locked step: no reading is rated between the
        commit and the change of book.  Rolled back: the book is the one before."""
        before = self.book

        def run(db: Database) -> T:
            result = fn(db)
            self.book = book  # the charger's thread holds the lock until after the reload
            return result

        def undo(done: Future[T]) -> None:
            if done.exception() is not None and self.book is book:
                with self._lock:
                    self.book = before

        out = self.apply(run, timeout=timeout)
        out.add_done_callback(undo)
        return out
