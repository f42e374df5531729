"""The relay controller: acts on the money engine's states (domain.md, "Prepaid control").

:meth:`RelayController.on_state` is the charger's listener.  It runs on the thread that
changed the balance (a bus thread for a reading) and only decides and queues: a trip
goes to the meter's bus at :attr:`~gateway.drivers.jobs.Priority.RELAY`, ahead of every
poll, so it is on the wire right after the transaction in hand (design.md, "A trip
action does not wait for the store").

Which accounts trip, and which meters are theirs, is asked of the charger when a
decision is made (:meth:`Charger.trips_on_arrears`, ``meters_of``, ``account_of``): an
account opened or changed by an ACCOUNT_CHANGE command trips like a configured one, and
a relay meter added to it by METER_CHANGE is tripped with it (after the charger reloads,
a meter added to an account already due is tripped, reason ``meter-added``; a tripped
meter moved to an account not due is closed, reason ``meter-moved``).  Only
configured meters have a relay target and a bus: a meter the configuration does not list
is neither polled, charged nor tripped.

What holds a trip back, in this order: safe mode (:meth:`enter_safe_mode`: the store
was damaged at start and moved aside, so every balance restarted from zero; no trip at
all, closes still go out, until :meth:`resume` -- the master's RELAY_RESUME -- after the
master restored the balances; an event ``SAFE_MODE`` tells the master), the storm guard
(:mod:`gateway.relays.storm`; counted on every account falling due; a storm stops
tripping until :meth:`resume`),
protect mode of the account (trips blocked, charging goes on; lifting it trips an
account still due), the quiet policy (:mod:`gateway.relays.policy`: a ``TRIP_DELAYED``
event, the trip goes out at the end of the quiet period if the account is still due,
evaluated on the injected clock).

What is remembered (store migration 6, :mod:`gateway.relays.memory`): protect mode set
by :meth:`set_protect` (it overrides the config's ``protect``), each meter's commanded
position, the storm stop and safe mode.

The controller's parts: :mod:`gateway.relays.operation` (one meter's trip or close: send,
read back, confirm, retry), :mod:`gateway.relays.reconcile` (at restart and after the
charger reloads), :mod:`gateway.relays.records` (events, remembered positions, alarms).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from gateway.clock import Clock, monotonic
from gateway.config import GatewayConfig
from gateway.drivers.jobs import BusHandle
from gateway.prepaid import PrepaidState, StateChange
from gateway.protocols.quantities import EventCode
from gateway.relays import memory
from gateway.relays.memory import Position, SafeMode
from gateway.relays.operation import Operations, RelayOp
from gateway.relays.policy import QuietPolicy, quiet_until
from gateway.relays.reconcile import RECHECK_MIN_S, Reconciliation
from gateway.relays.records import Journal, Records
from gateway.relays.storm import StormGuard
from gateway.relays.targets import targets
from gateway.store.ledger import journal_with_charges

if TYPE_CHECKING:
    from sqlite_utils import Database

    from gateway.charging import Charger
    from gateway.store.writer import StoreWriter

__all__ = ["SAFE_MODE", "RelayController"]

SAFE_MODE = "safe mode"
"""The blocked reason (and alarm kind ``safe_mode``) of an account due while in safe mode."""

_logger = logging.getLogger(__name__)


class RelayController(Operations, Reconciliation, Records):
    """Trips and closes relays from the charger's state changes; see the module doc."""

    def __init__(
        self,
        config: GatewayConfig,
        buses: Callable[[str], BusHandle],
        journal: Journal,
        clock: Clock,
        charger: Charger,
        store_writer: StoreWriter,
    ) -> None:
        self.config = config
        self.settings = config.relays
        self.buses = buses
        self.journal = journal
        self.clock = clock
        self.charger = charger
        self.writer = store_writer
        self.targets = targets(config)
        self._protect = {a.id: a.protect for a in config.accounts}
        self._close_allow = {
            a.id: (a.thresholds or config.billing.thresholds).close_allow for a in config.accounts
        }
        s = self.settings
        self.policy = QuietPolicy.of(s.quiet_hours, config.billing.holidays, s.quiet_on_holidays)
        self.storm = StormGuard(
            s.storm_share_pct,
            float(s.storm_window_s),
            s.storm_min_accounts,
            len(self.trip_accounts()),
        )
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._positions: dict[str, Position] = {}
        self._meter_offsets: dict[str, timedelta] = {}
        self._unrecorded: set[str] = set()
        """Meters found open at start while their account was not due: if it falls due,
        the trip that opened them is recorded then (a kill lost its reading and record)."""
        self._ops: dict[str, RelayOp] = {}
        self._delayed: dict[str, tuple[datetime, tuple[str, ...]]] = {}
        self._blocked: dict[str, str] = {}
        self._safe_mode: SafeMode | None = None
        self._alarms: list[dict[str, object]] = []
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = False
        slowest = max(
            [config.polling.interval_s]
            + [m.poll_interval_s for m in config.meters if m.poll_interval_s is not None]
        )
        self._recheck_s = max(RECHECK_MIN_S, 2 * slowest)  # every meter polled meanwhile
        self._retry_s = max(1.0, 10 * s.confirm_delay_s)
        self.counts = {"trips": 0, "closes": 0, "unconfirmed": 0, "resends": 0, "quiet_delays": 0}
        self._reloads_seen = self._reloads()

    # --- which accounts trip: the charger's, at decision time ---------------------------

    def trips(self, account: str) -> bool:
        """Whether ``account`` trips on arrears as in force (the charger's: the config's,
        or as opened or changed by an ACCOUNT_CHANGE command)."""
        return bool(self.charger.trips_on_arrears(account))

    def trip_accounts(self) -> set[str]:
        """The accounts that can be tripped now: each that trips on arrears and has a meter
        with a relay (the charger's meters, those added by METER_CHANGE included).  The
        storm guard's base."""
        out: set[str] = set()
        for meter in self.targets:
            account = self.charger.account_of(meter)
            if account is not None and self.trips(account):
                out.add(account)
        return out

    def _known(self, account: str) -> bool:
        """Whether the charger keeps ``account`` (configured or opened by command)."""
        try:
            self.charger.balance(account)
        except KeyError:
            return False
        return True

    def _reloads(self) -> int:
        return int(getattr(self.charger, "reloads", 0))

    # --- life -------------------------------------------------------------------------

    def start(self) -> None:
        """Load what the store remembers, start the worker, reconcile the meters."""
        remembered = self.writer.call(memory.load).result(30)
        with self._lock:
            self._protect.update(remembered.protect)
            self._positions.update(remembered.positions)
            self.storm.stopped_ms = remembered.storm_ms
            if remembered.storm_ms is not None:
                self._alarm("trip_storm", since_ms=remembered.storm_ms, restored=1)
            restored = remembered.safe_mode
            if restored is not None and self._safe_mode is None:
                self._safe_mode = restored
                self._alarm("safe_mode", since_ms=restored.since_ms, reason=restored.reason)
                _logger.warning(
                    "relays: still in safe mode (since %s: %s): no trips until the master"
                    " sends relay-resume",
                    _utc(restored.since_ms),
                    restored.reason,
                )
            self._stopping = False
        self._thread = threading.Thread(target=self._run, name="relays", daemon=True)
        self._thread.start()
        self._later(0.0, self._reconcile)
        _logger.info(
            "relays: %d meters with a relay, %d accounts trip on arrears, close mode %s",
            len(self.targets),
            len(self.trip_accounts()),
            self.settings.close_mode,
        )

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            for op in self._ops.values():
                op.cancelled = True
                if not op.done.done():
                    op.done.set_result(False)
            self._ops.clear()
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    # --- the charger's listener -----------------------------------------------------------

    def on_state(self, change: StateChange, meters: tuple[str, ...]) -> None:
        """Act on an account's new prepaid state (never blocks: it queues bus jobs)."""
        account = change.account
        if change.new == PrepaidState.DUE_TO_TRIP:
            self._due(account, meters, change.balance, "arrears")
            return
        with self._lock:
            self._delayed.pop(account, None)
            self._blocked.pop(account, None)
            opened = any(self._open_or_opening(m) for m in meters)
        if change.new == PrepaidState.MAY_CLOSE or (
            opened and change.balance > self._close_allow_of(account)
        ):
            self._close(account, meters, change.balance, "top-up")

    # --- commands and operators -------------------------------------------------------------

    def protected(self, account: str) -> bool:
        with self._lock:
            return self._protect.get(account, False)

    def set_protect(self, account: str, on: bool) -> None:
        """Protect mode on or off (persisted, durably, before it returns); lifting it trips
        the account if it is still due.  KeyError for an unknown account."""
        if account not in self._protect and not self._known(account):
            raise KeyError(f"unknown account {account!r}")
        ts_ms = self._now_ms()
        self.writer.call(
            lambda db: memory.save_protect(db, account, on, ts_ms), durable=True
        ).result(30)
        with self._lock:
            self._protect[account] = on
            if on:
                self._delayed.pop(account, None)
            self._blocked.pop(account, None)
        _logger.info("relays: account %s protect %s", account, "on" if on else "off")
        if not on and self.charger.state(account) == PrepaidState.DUE_TO_TRIP:
            meters = self.charger.meters_of(account)
            self._due(account, meters, self._balance(account), "protect-lifted", False)

    @property
    def safe_mode(self) -> SafeMode | None:
        """Safe mode, or None when trips may go out."""
        with self._lock:
            return self._safe_mode

    def enter_safe_mode(self, reason: str) -> bool:
        """Enter safe mode: no trip goes out (an account due is blocked, reason ``safe
        mode``; closes still go out) until :meth:`resume`.  Remembered, durably, with a
        ``SAFE_MODE`` event (state ``entered``) for the master, before it returns.  False
        when already in safe mode (nothing is recorded again)."""
        with self._lock:
            if self._safe_mode is not None:
                return False
            safe = SafeMode(self._now_ms(), reason)
            self._safe_mode = safe
            self._delayed.clear()  # held now by safe mode, not by the quiet policy
            self._alarm("safe_mode", since_ms=safe.since_ms, reason=reason)
        self._save_safe_mode(safe, "entered", safe)
        _logger.error("relays: safe mode: %s: no trips until the master sends relay-resume", reason)
        return True

    def _save_safe_mode(self, keep: SafeMode | None, state: str, about: SafeMode) -> None:
        """Remember ``keep`` and record the ``SAFE_MODE`` event ``state`` in one durable
        transaction (when the journal is the store writer)."""
        meter = min(self.targets) if self.targets else None
        detail: dict[str, int | str | None] = {
            "state": state,
            "reason": about.reason,
            "since_ms": about.since_ms,
            "accounts": len(self.trip_accounts()),
        }
        event = None if meter is None else self._make_event(meter, EventCode.SAFE_MODE, detail)
        atomic = self.journal is self.writer
        if event is not None and not atomic:
            self.journal.submit(event)

        def save(db: Database) -> None:
            memory.save_safe_mode(db, keep)
            if event is not None and atomic:
                journal_with_charges(db, event, ())

        self.writer.call(save, durable=True).result(30)

    def resume(self) -> None:
        """Clear a trip-storm stop and safe mode (the master's RELAY_RESUME); accounts
        still due are tripped now (without counting)."""
        with self._lock:
            was = self.storm.stopped
            safe = self._safe_mode
            self._safe_mode = None
            self.storm.resume()
            self._alarms = [
                a for a in self._alarms if a.get("kind") not in ("trip_storm", "safe_mode")
            ]
            blocked = [a for a, why in self._blocked.items() if why in ("storm", SAFE_MODE)]
            for account in blocked:
                del self._blocked[account]
        self.writer.call(lambda db: memory.save_storm(db, None), durable=True).result(30)
        if safe is not None:
            self._save_safe_mode(None, "ended", safe)
            _logger.warning("relays: safe mode ended by the master (was: %s)", safe.reason)
        if was:
            _logger.info("relays: tripping resumed after a trip storm")
        for account in self.charger.accounts_in(PrepaidState.DUE_TO_TRIP):
            if self.trips(account):
                meters = self.charger.meters_of(account)
                self._due(account, meters, self._balance(account), "resume", False)

    def test(self, meter: str) -> Future[dict[str, object]]:
        """Relay test: trip, confirm, close (direct), confirm.  The future gives a dict with
        ``ok``, ``tripped``, ``closed`` (or ``error``: also in safe mode); it never raises."""
        out: Future[dict[str, object]] = Future()
        target = self.targets.get(meter)
        if target is None:
            out.set_result({"meter": meter, "ok": False, "error": "no such meter with a relay"})
            return out
        if self.safe_mode is not None:
            out.set_result({"meter": meter, "ok": False, "error": "safe mode: no trips"})
            return out
        account = self.charger.account_of(meter)
        if account is not None and self.protected(account):
            out.set_result({"meter": meter, "ok": False, "error": "account in protect mode"})
            return out
        if account is not None and self.charger.state(account) in (
            PrepaidState.DUE_TO_TRIP,
            PrepaidState.MAY_CLOSE,
        ):
            out.set_result({"meter": meter, "ok": False, "error": "account is tripped or due"})
            return out

        def run() -> None:
            timeout = self._op_timeout()
            trip = RelayOp(target, account, True, None, "test")
            self._start(trip)
            tripped = _wait(trip.done, timeout)
            if account is not None and self.charger.state(account) in (
                PrepaidState.DUE_TO_TRIP,
                PrepaidState.MAY_CLOSE,
            ):  # the money ran out meanwhile: the relay stays open
                out.set_result(
                    {"meter": meter, "ok": False, "tripped": tripped, "closed": False,
                     "error": "the account fell due during the test"}
                )  # fmt: skip
                return
            close = RelayOp(target, account, False, None, "test")
            self._start(close)
            closed = _wait(close.done, timeout)
            out.set_result(
                {
                    "meter": meter,
                    "ok": tripped and closed,
                    "tripped": tripped,
                    "closed": closed,
                    "trip_sends": trip.sends,
                    "close_sends": close.sends,
                }
            )

        threading.Thread(target=run, name=f"relay-test-{meter}", daemon=True).start()
        return out

    def status(self) -> dict[str, object]:
        """Counters, positions, alarms, the storm, and ``accounts``: per account that trips
        (or is protected, held or delayed) its prepaid state, balance, whether it trips,
        protect, and its relay meters' positions."""
        trip = self.trip_accounts()
        with self._lock:
            listed = trip | {a for a, on in self._protect.items() if on}
            listed |= set(self._blocked) | set(self._delayed)
        accounts: dict[str, object] = {}
        for account in sorted(listed):
            accounts[account] = {
                "state": str(self.charger.state(account)),
                "balance": self._balance(account),
                "trips": account in trip,
                "meters": [m for m in self.charger.meters_of(account) if m in self.targets],
            }
        with self._lock:
            now = monotonic()
            return {
                "accounts": accounts,
                "meters": len(self.targets),
                "close_mode": self.settings.close_mode,
                "protect": sorted(a for a, on in self._protect.items() if on),
                "safe_mode": None
                if self._safe_mode is None
                else {
                    "since": self._local(self._safe_mode.since_ms),
                    "since_ms": self._safe_mode.since_ms,
                    "reason": self._safe_mode.reason,
                },
                "storm": {
                    "stopped": self.storm.stopped,
                    "since_ms": self.storm.stopped_ms,
                    "recent": self.storm.recent(),
                    "accounts": len(self.trip_accounts()),
                },
                "alarms": [dict(a) for a in self._alarms],
                "blocked": dict(self._blocked),
                "delayed": {a: until.isoformat() for a, (until, _) in self._delayed.items()},
                "in_progress": {m: ("trip" if op.open else "close") for m, op in self._ops.items()},
                "positions": {
                    m: ("open" if p.open else "closed") + ("" if p.confirmed else "?")
                    for m, p in sorted(self._positions.items())
                },
                "timers": sum(1 for t, _, _ in self._timers if t >= now),
                **self.counts,
            }

    # --- deciding -------------------------------------------------------------------------

    def _due(
        self,
        account: str,
        meters: Sequence[str],
        balance: int,
        reason: str,
        count_storm: bool = True,
    ) -> None:
        if not self.trips(account) or not any(m in self.targets for m in meters):
            return  # nothing to trip (a meter added later is tripped after the reload)
        ops: list[RelayOp] = []
        with self._lock:
            if self._safe_mode is not None:
                self._delayed.pop(account, None)
                if self._blocked.get(account) != SAFE_MODE:
                    self._blocked[account] = SAFE_MODE
                    _logger.warning(
                        "relays: account %s due to trip: safe mode, not tripped", account
                    )
                return
            if count_storm and not self.storm.stopped:
                self.storm.accounts = len(self.trip_accounts())
            if count_storm and not self.storm.stopped and self.storm.note(account, monotonic()):
                self._storm(account, meters)
            if self.storm.stopped:
                self._blocked[account] = "storm"
                _logger.warning("relays: account %s due to trip: held by the trip storm", account)
                return
            if self._protect.get(account, False):
                self._blocked[account] = "protect"
                _logger.info("relays: account %s due to trip: protect mode, not tripped", account)
                return
            local = self.clock.local()
            until = quiet_until(self.policy, local) if self.policy.active else None
            if until is not None:
                first = account not in self._delayed
                self._delayed[account] = (until, tuple(meters))
                if first:
                    self.counts["quiet_delays"] += 1
                    for meter in meters:
                        self._event(
                            meter,
                            EventCode.TRIP_DELAYED,
                            account=account,
                            balance=balance,
                            until=until.isoformat(),
                        )
                    _logger.info("relays: account %s trip delayed to %s", account, until)
                return
            self._blocked.pop(account, None)
            self._delayed.pop(account, None)
            for meter in meters:
                target = self.targets.get(meter)
                if target is None:
                    continue
                op = self._ops.get(meter)
                if op is not None and op.open:
                    continue  # a trip is on its way
                known = self._positions.get(meter)
                if (
                    op is None
                    and known is not None
                    and known.open
                    and known.confirmed
                    and reason != "restart"
                ):
                    if meter in self._unrecorded:  # tripped before a kill, not recorded
                        self._unrecorded.discard(meter)
                        found = Position(account, True, True, balance, self._now_ms())
                        self._positions[meter] = found
                        self._record(
                            meter,
                            found,
                            EventCode.RELAY_TRIPPED,
                            account=account,
                            balance=balance,
                            reason="restart",
                            sends=0,
                        )
                    continue  # already tripped
                ops.append(RelayOp(target, account, True, balance, reason))
        for op in ops:
            self._start(op)

    def _close(self, account: str, meters: Sequence[str], balance: int, reason: str) -> None:
        allow = self.settings.close_mode == "allow"
        ops = []
        with self._lock:
            for meter in meters:
                target = self.targets.get(meter)
                if target is not None:
                    ops.append(
                        RelayOp(target, account, False, balance, reason, allow=target.allows(allow))
                    )
        for op in ops:
            self._start(op)

    def _storm(self, account: str, meters: Sequence[str]) -> None:
        """Called with the lock held: the trip storm starts now."""
        stopped_ms = self._now_ms()
        self.storm.stopped_ms = stopped_ms
        recent = self.storm.recent()
        self._alarm("trip_storm", since_ms=stopped_ms, accounts=recent, account=account)
        if meters:
            self._event(
                meters[0],
                EventCode.TRIP_STORM,
                account=account,
                accounts=recent,
                of=self.storm.accounts,
                window_s=int(self.storm.window_s),
            )
        self.writer.call(lambda db: memory.save_storm(db, stopped_ms), durable=True)
        _logger.error(
            "relays: trip storm: %d of %d accounts due within %d s: tripping stopped",
            recent,
            self.storm.accounts,
            int(self.storm.window_s),
        )

    def _local(self, ms: int) -> str:
        """Calendar ``ms`` as local ISO time (the gateway's timezone)."""
        moment = datetime.fromtimestamp(ms / 1000, UTC)
        return moment.astimezone(ZoneInfo(self.config.timezone)).isoformat()

    def _balance(self, account: str) -> int:
        """The charger's balance of ``account`` (0 for one it does not keep)."""
        try:
            return self.charger.balance(account)
        except KeyError:
            return 0

    def _close_allow_of(self, account: str) -> int:
        """The account's close-allow level: the charger's (a command may have set it)."""
        try:
            return self.charger.thresholds(account).close_allow
        except KeyError:
            return self._close_allow.get(account, 0)

    def _open_or_opening(self, meter: str) -> bool:
        op = self._ops.get(meter)
        if op is not None:
            return op.open
        known = self._positions.get(meter)
        return known is not None and known.open

    # --- the worker: timers and quiet-period ends -------------------------------------------

    def _later(self, seconds: float, fn: Callable[[], None]) -> None:
        with self._lock:
            heapq.heappush(self._timers, (monotonic() + seconds, next(self._seq), fn))
            self._wake.notify_all()

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._stopping:
                    return
                now = monotonic()
                wait = 0.2  # the calendar clock is looked at this often (quiet periods)
                if self._timers:
                    wait = min(wait, self._timers[0][0] - now)
                if wait > 0:
                    self._wake.wait(wait)
                now = monotonic()
                due: list[Callable[[], None]] = []
                while self._timers and self._timers[0][0] <= now:
                    due.append(heapq.heappop(self._timers)[2])
            for fn in due:
                try:
                    fn()
                except Exception:  # a bug must be seen, not stop the relays
                    _logger.exception("relays: a timed action failed")
            self._quiet_ends()
            self._reloaded()

    def _quiet_ends(self) -> None:
        with self._lock:
            if not self._delayed:
                return
            local = self.clock.local()
            ended = [(a, m) for a, (until, m) in self._delayed.items() if local >= until]
            for account, _ in ended:
                del self._delayed[account]
        for account, meters in ended:
            if self.charger.state(account) == PrepaidState.DUE_TO_TRIP:
                balance = self._balance(account)
                self._due(account, meters, balance, "quiet-ended", False)


def _wait(future: Future[bool], timeout: float) -> bool:
    try:
        return future.result(timeout)
    except FutureTimeout:
        return False


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
