"""The relay controller: acts on the money engine's states (domain.md, "Prepaid control").

:meth:`RelayController.on_state` is the charger's listener.  It runs on the thread that
changed the balance (a bus thread for a reading) and only decides and queues: a trip
goes to the meter's bus at :attr:`~gateway.drivers.jobs.Priority.RELAY`, ahead of every
poll, so it is on the wire right after the transaction in hand (design.md, "A trip
action does not wait for the store").

Every command is confirmed by the meter: ``confirm_delay_s`` after it was carried out
(or refused, or unanswered) the relay's position is read back (status word 3 bit 4, or
the Modbus profile's relay register), also at RELAY priority.  Not in the wanted
position: the command is sent again, up to ``confirm_attempts`` sends, then a
``RELAY_UNCONFIRMED`` event and a status alarm; further rounds follow at doubling
intervals (ten times ``confirm_delay_s``, up to 15 minutes) while the trip or close is
still wanted, and a confirmation clears the alarm.  A DL/T 645 command the meter
refuses (or that cannot be encoded) makes the controller read the meter's clock once:
a meter checks the validity deadline against its own clock, and ours may be untrusted
or the meter's off, so when the two differ by more than a minute the later deadlines of
that meter follow its clock.  A close-allow (1B) the meter accepted
waits for the tenant's button: the position is read back at growing intervals (up to a
minute) until it shows closed.  Each confirmed trip and close is a ``RELAY_TRIPPED`` /
``RELAY_CLOSED`` event with the balance that caused it, written with the remembered
position in one durable transaction; once every meter of an account is confirmed closed
the charger is told (:meth:`Charger.relay_closed`).

Which accounts trip, and which meters are theirs, is asked of the charger when a
decision is made (:meth:`Charger.trips_on_arrears`, ``meters_of``, ``account_of``): an
account opened or changed by an ACCOUNT_CHANGE command trips like a configured one, and
a relay meter added to it by METER_CHANGE is tripped with it (after the charger reloads,
a meter added to an account already due is tripped, reason ``meter-added``; a tripped
meter moved to an account not due is closed, reason ``meter-moved``).  Only
configured meters have a relay target and a bus: a meter the configuration does not list
is neither polled, charged nor tripped.

What holds a trip back, in this order: the storm guard (:mod:`gateway.relays.storm`;
counted on every account falling due; a storm stops tripping until :meth:`resume`),
protect mode of the account (trips blocked, charging goes on; lifting it trips an
account still due), the quiet policy (:mod:`gateway.relays.policy`: a ``TRIP_DELAYED``
event, the trip goes out at the end of the quiet period if the account is still due,
evaluated on the injected clock).

What is remembered (store migration 6, :mod:`gateway.relays.memory`): protect mode set
by :meth:`set_protect` (it overrides the config's ``protect``), each meter's commanded
position and the storm stop.  At :meth:`start` the relays of every account that trips on
arrears are read back and reconciled with the charger's state (which the charger keeps
on disk with each reading): a due account's closed relay is tripped, an open relay of an
account that may close is closed.  An open relay of an account the charger does not hold
tripped (a SIGKILL between a trip and its reading's transaction reaching the disk: the
next poll charges that energy again) is looked at again after two poll intervals (at
least 5 s) and closed if the balance is then above the close-allow level.  A due
account's relay found open, or a may-close account's found closed, that the store does
not remember so (a kill between the confirmation and its record) is recorded then, with
reason ``restart``.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from gateway.clock import Clock, monotonic
from gateway.config import GatewayConfig
from gateway.drivers.jobs import BusHandle, JobResult, Priority
from gateway.prepaid import PrepaidState, StateChange
from gateway.protocols.batch import MeterEvent
from gateway.protocols.quantities import EventCode
from gateway.relays import memory
from gateway.relays.memory import Position
from gateway.relays.policy import QuietPolicy, quiet_until
from gateway.relays.storm import StormGuard
from gateway.relays.targets import RelayTarget, targets
from gateway.store.ledger import journal_with_charges

if TYPE_CHECKING:
    from sqlite_utils import Database

    from gateway.charging import Charger
    from gateway.store.writer import StoreWriter

__all__ = ["RelayController"]

_logger = logging.getLogger(__name__)

BUTTON_WAIT_MAX_S = 60.0
"""Longest pause between read-backs while a close-allow waits for the tenant's button."""
RECHECK_MIN_S = 5.0
"""Least wait before an open relay of an account the charger does not hold tripped is
looked at again after a restart (then: twice the poll interval)."""
CLOCK_SLACK_S = 60.0
"""A meter clock this close to ours is taken as ours (deadlines from our clock)."""
RETRY_MAX_S = 900.0
"""Longest pause between rounds of sends for a relay that stays unconfirmed (the first
pause is ten times ``confirm_delay_s``, at least 1 s, doubling)."""
READ_TIMEOUT_S = 30.0
"""How long the restart reconciliation and a relay test wait for one bus job."""


class Journal(Protocol):
    def submit(self, record: MeterEvent) -> None: ...


@dataclass(eq=False)
class _Op:
    """One trip or close of one meter, from its first send to its confirmation."""

    target: RelayTarget
    account: str | None
    open: bool
    balance: int | None
    reason: str
    allow: bool = False
    sends: int = 0
    acknowledged: bool = False
    waits: int = 0
    cause: str | None = None
    cancelled: bool = False
    round: int = 0
    clock_read: bool = False
    """0 for the first round of sends; then the retries after an unconfirmed round."""
    done: Future[bool] = field(default_factory=Future)


class RelayController:
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
        self._ops: dict[str, _Op] = {}
        self._delayed: dict[str, tuple[datetime, tuple[str, ...]]] = {}
        self._blocked: dict[str, str] = {}
        self._alarms: list[dict[str, object]] = []
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._recheck_s = max(RECHECK_MIN_S, 2 * config.polling.interval_s)
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

    def resume(self) -> None:
        """Clear a trip-storm stop; accounts still due are tripped now (without counting)."""
        with self._lock:
            was = self.storm.stopped
            self.storm.resume()
            self._alarms = [a for a in self._alarms if a.get("kind") != "trip_storm"]
            blocked = [a for a, why in self._blocked.items() if why == "storm"]
            for account in blocked:
                del self._blocked[account]
        self.writer.call(lambda db: memory.save_storm(db, None), durable=True).result(30)
        if was:
            _logger.info("relays: tripping resumed after a trip storm")
        for account in self.charger.accounts_in(PrepaidState.DUE_TO_TRIP):
            if self.trips(account):
                meters = self.charger.meters_of(account)
                self._due(account, meters, self._balance(account), "resume", False)

    def test(self, meter: str) -> Future[dict[str, object]]:
        """Relay test: trip, confirm, close (direct), confirm.  The future gives a dict with
        ``ok``, ``tripped``, ``closed`` (or ``error``); it never raises."""
        out: Future[dict[str, object]] = Future()
        target = self.targets.get(meter)
        if target is None:
            out.set_result({"meter": meter, "ok": False, "error": "no such meter with a relay"})
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
            trip = _Op(target, account, True, None, "test")
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
            close = _Op(target, account, False, None, "test")
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
        ops: list[_Op] = []
        with self._lock:
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
                ops.append(_Op(target, account, True, balance, reason))
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
                        _Op(target, account, False, balance, reason, allow=target.allows(allow))
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

    # --- one meter's operation ------------------------------------------------------------

    def _start(self, op: _Op) -> None:
        with self._lock:
            if self._stopping:
                op.done.set_result(False)
                return
            old = self._ops.get(op.target.id)
            if old is not None:
                old.cancelled = True
                if not old.done.done():
                    old.done.set_result(False)
            self._ops[op.target.id] = op
        self._send(op)

    def _send(self, op: _Op) -> None:
        op.sends += 1
        if op.sends > 1:
            with self._lock:
                self.counts["resends"] += 1
        now = self.clock.local()
        offset = self._meter_offsets.get(op.target.id)
        if offset is not None:
            now += offset
        valid_until = now + timedelta(seconds=self.settings.trip_valid_s)
        job = op.target.command(open_=op.open, allow=op.allow, valid_until=valid_until)
        try:
            bus = self.buses(op.target.id)
        except KeyError:
            self._unconfirmed(op, None)
            return
        future = bus.submit(job, Priority.RELAY)
        future.add_done_callback(lambda f: self._sent(op, f))

    def _sent(self, op: _Op, future: Future[JobResult]) -> None:
        if op.cancelled or future.cancelled():
            return
        result = future.result()
        if result.ok:
            op.acknowledged = True
        else:
            op.cause = result.cause or result.error
            _logger.warning(
                "relays: %s of meter %s not carried out (send %d): %s",
                "trip" if op.open else "close",
                op.target.id,
                op.sends,
                result.error,
            )
            clock_read = op.target.clock_read()
            refused = result.cause is None or result.cause.startswith("negative")
            if clock_read is not None and refused and not op.clock_read:
                # refused (a deadline past by the meter's clock?) or not encodable (our
                # clock's year): base the next deadlines on the meter's own clock
                op.clock_read = True
                asked = self.clock.local()
                read = self.buses(op.target.id).submit(clock_read, Priority.RELAY)
                read.add_done_callback(lambda f: self._clock(op, asked, f))
        self._later(self.settings.confirm_delay_s, lambda: self._readback(op))

    def _clock(self, op: _Op, asked: datetime, future: Future[JobResult]) -> None:
        if future.cancelled():
            return
        meter_time = op.target.clock(future.result())
        if meter_time is None:
            return
        offset = meter_time - asked.replace(tzinfo=None, microsecond=0)
        with self._lock:
            if abs(offset) < timedelta(seconds=CLOCK_SLACK_S):
                self._meter_offsets.pop(op.target.id, None)
                return
            self._meter_offsets[op.target.id] = offset
        _logger.warning(
            "relays: meter %s's clock is %+d s from ours: its deadlines follow its clock",
            op.target.id,
            int(offset.total_seconds()),
        )

    def _readback(self, op: _Op) -> None:
        if op.cancelled:
            return
        future = self.buses(op.target.id).submit(op.target.readback(), Priority.RELAY)
        future.add_done_callback(lambda f: self._read(op, f))

    def _read(self, op: _Op, future: Future[JobResult]) -> None:
        if op.cancelled or future.cancelled():
            return
        result = future.result()
        is_open = op.target.is_open(result)
        if is_open is op.open:
            self._confirmed(op)
            return
        if not result.ok:
            op.cause = result.cause or result.error
        if not op.open and op.allow and op.acknowledged and is_open is not None:
            op.waits += 1  # close-allow accepted: the tenant has to press the button
            delay = min(BUTTON_WAIT_MAX_S, self.settings.confirm_delay_s * 2 ** min(op.waits, 8))
            self._later(delay, lambda: self._readback(op))
            return
        if op.sends < self.settings.confirm_attempts:
            self._send(op)
            return
        self._unconfirmed(op, is_open)

    def _confirmed(self, op: _Op) -> None:
        meter = op.target.id
        with self._lock:
            if self._ops.get(meter) is op:
                del self._ops[meter]
            self._unrecorded.discard(meter)
            position = Position(op.account, op.open, True, op.balance, self._now_ms())
            self._positions[meter] = position
            self._alarms = [
                a
                for a in self._alarms
                if not (a.get("kind") == "unconfirmed" and a.get("meter") == meter)
            ]
            self.counts["trips" if op.open else "closes"] += 1
        detail: dict[str, int | str] = {"reason": op.reason, "sends": op.sends}
        if not op.open:
            detail["mode"] = "allow" if op.allow else "direct"
        self._record(
            meter,
            position,
            EventCode.RELAY_TRIPPED if op.open else EventCode.RELAY_CLOSED,
            account=op.account,
            balance=op.balance,
            **detail,
        )
        _logger.info(
            "relays: meter %s %s (account %s, balance %s, %s)",
            meter,
            "tripped" if op.open else "closed",
            op.account,
            op.balance,
            op.reason,
        )
        if not op.done.done():
            op.done.set_result(True)
        if not op.open and op.account is not None and op.reason != "test":
            self._maybe_all_closed(op.account)

    def _maybe_all_closed(self, account: str) -> None:
        meters = [m for m in self.charger.meters_of(account) if m in self.targets]
        with self._lock:
            closed = all(
                (p := self._positions.get(m)) is not None
                and not p.open
                and p.confirmed
                and m not in self._ops
                for m in meters
            )
        if closed:
            self.charger.relay_closed(account)

    def _unconfirmed(self, op: _Op, is_open: bool | None) -> None:
        meter = op.target.id
        where = "unknown" if is_open is None else "open" if is_open else "closed"
        with self._lock:
            if self._ops.get(meter) is op:
                del self._ops[meter]
            if is_open is not None:
                self._positions[meter] = Position(
                    op.account, is_open, True, op.balance, self._now_ms()
                )
            else:
                self._positions[meter] = Position(
                    op.account, op.open, False, op.balance, self._now_ms()
                )
            position = self._positions[meter]
            self.counts["unconfirmed"] += 1
            self._alarms = [
                a
                for a in self._alarms
                if not (a.get("kind") == "unconfirmed" and a.get("meter") == meter)
            ]
            self._alarm(
                "unconfirmed",
                meter=meter,
                account=op.account or "",
                action="trip" if op.open else "close",
                position=where,
                cause=op.cause or "",
                rounds=op.round + 1,
            )
        if not op.done.done():
            op.done.set_result(False)
        if op.reason != "test":
            delay = min(RETRY_MAX_S, self._retry_s * 2**op.round)
            self._later(delay, functools.partial(self._retry, op))
        if op.round:
            self._record(meter, position, None)
            _logger.warning(
                "relays: %s of meter %s still unconfirmed (round %d, %s)",
                "trip" if op.open else "close",
                meter,
                op.round + 1,
                op.cause,
            )
            return
        self._record(
            meter,
            position,
            EventCode.RELAY_UNCONFIRMED,
            account=op.account,
            action="trip" if op.open else "close",
            balance=op.balance,
            sends=op.sends,
            position=where,
            cause=op.cause or "",
        )
        _logger.error(
            "relays: %s of meter %s unconfirmed after %d sends (relay %s, %s)",
            "trip" if op.open else "close",
            meter,
            op.sends,
            where,
            op.cause,
        )

    def _retry(self, op: _Op) -> None:
        """Another round for an unconfirmed trip or close, if it is still wanted (the
        account still due, not protected, no storm; or no longer due, for a close)."""
        account = op.account
        meter = op.target.id
        with self._lock:
            if self._stopping or account is None or meter in self._ops:
                return
            held = self._protect.get(account, False) or self.storm.stopped
        state = self.charger.state(account)
        if op.open:
            if state != PrepaidState.DUE_TO_TRIP or held:
                return
            if self.policy.active and quiet_until(self.policy, self.clock.local()) is not None:
                self._later(self._retry_s, functools.partial(self._retry, op))
                return
        elif state == PrepaidState.DUE_TO_TRIP:
            return
        balance = self._balance(account)
        again = _Op(op.target, account, op.open, balance, "retry", op.allow, round=op.round + 1)
        self._start(again)

    # --- restart reconciliation -------------------------------------------------------------

    def _reconcile(self) -> None:
        """Read back the relays of every account that trips on arrears and make them agree
        with the charger's state (runs once, on the worker, after :meth:`start`)."""
        timeout = READ_TIMEOUT_S
        accounts = sorted(self.trip_accounts())
        for account in accounts:
            if self._stopping:
                return
            meters = [m for m in self.charger.meters_of(account) if m in self.targets]
            if not meters:
                continue
            found: dict[str, bool] = {}
            for meter in meters:
                target = self.targets[meter]
                try:
                    result = self.buses(meter).submit(target.readback(), Priority.RELAY)
                    is_open = target.is_open(result.result(timeout))
                except (FutureTimeout, CancelledError, KeyError, RuntimeError):
                    is_open = None
                if is_open is not None:
                    found[meter] = is_open
            state = self.charger.state(account)
            balance = self._balance(account)
            for meter, is_open in found.items():
                self._found(account, meter, is_open, state, balance)
            if state == PrepaidState.DUE_TO_TRIP:
                closed = [m for m in meters if found.get(m) is False]
                if closed:
                    self._due(account, closed, balance, "restart")
                continue
            opened = tuple(m for m in meters if found.get(m) is True)
            if state == PrepaidState.MAY_CLOSE:
                if opened:
                    self._close(account, opened, balance, "restart")
                else:
                    self._maybe_all_closed(account)
            elif opened:
                # Open, yet the charger does not hold the account tripped: the reading that
                # tripped it may not have reached the disk before a kill (its energy is
                # charged again by the next poll), or someone else opened it.  Look again
                # once the meters have been polled.
                self._later(self._recheck_s, functools.partial(self._recheck, account, opened))
        _logger.info("relays: reconciled %d accounts with their meters", len(accounts))

    def _found(
        self, account: str, meter: str, is_open: bool, state: PrepaidState, balance: int
    ) -> None:
        """Take a relay position read at start as known.  A due account's relay found open
        (or a may-close account's found closed) that is not remembered so is a trip (a
        close) whose record a kill lost: it is recorded now, reason ``restart``."""
        position = Position(account, is_open, True, balance, self._now_ms())
        with self._lock:
            if meter in self._ops:
                return
            known = self._positions.get(meter)
            self._positions[meter] = position
            if is_open and state != PrepaidState.DUE_TO_TRIP:
                self._unrecorded.add(meter)
        remembered = known is not None and known.confirmed and known.open == is_open
        if remembered:
            return
        if is_open and state == PrepaidState.DUE_TO_TRIP:
            code: EventCode | None = EventCode.RELAY_TRIPPED
        elif not is_open and state == PrepaidState.MAY_CLOSE:
            code = EventCode.RELAY_CLOSED
        else:
            code = None
        self._record(
            meter, position, code, account=account, balance=balance, reason="restart", sends=0
        )

    def _recheck(self, account: str, meters: tuple[str, ...]) -> None:
        state = self.charger.state(account)
        balance = self._balance(account)
        if state in (PrepaidState.DUE_TO_TRIP, PrepaidState.MAY_CLOSE):
            return  # the charger's listener took it over
        if balance > self._close_allow_of(account):
            self._close(account, meters, balance, "restart")

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

    def _reloaded(self) -> None:
        """After the charger reloaded (a METER_CHANGE or ACCOUNT_CHANGE command): a relay
        meter now charged to an account already due to trip gets no state change, so it
        is tripped here (reason ``meter-added``), unless the account is held; a meter
        tripped for one account and now charged to another that is not due is closed
        (reason ``meter-moved``; a removed meter, charged to none, stays as it is)."""
        seen = self._reloads()
        if seen == self._reloads_seen:
            return
        self._reloads_seen = seen
        for account in self.charger.accounts_in(PrepaidState.DUE_TO_TRIP):
            if not self.trips(account):
                continue
            with self._lock:
                if account in self._blocked or account in self._delayed:
                    continue
                meters = [
                    m
                    for m in self.charger.meters_of(account)
                    if m in self.targets and not self._open_or_opening(m)
                ]
            if meters:
                self._due(account, meters, self._balance(account), "meter-added", False)
        with self._lock:
            opened = [
                (m, p.account)
                for m, p in self._positions.items()
                if p.open and p.confirmed and m not in self._ops
            ]
        for meter, was in opened:  # tripped for one account, now charged to another
            now = self.charger.account_of(meter)
            if now is None or now == was or self.charger.state(now) == PrepaidState.DUE_TO_TRIP:
                continue
            self._close(now, [meter], self._balance(now), "meter-moved")

    # --- records --------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self.clock.now().timestamp() * 1000)

    def _record(
        self, meter: str, remember: Position, code: EventCode | None, **detail: int | str | None
    ) -> None:
        """Remember the position ``remember`` and record the event ``code`` (if any): in one durable
        transaction when the journal is the store writer, so that neither survives a kill
        without the other."""
        event = None if code is None else self._make_event(meter, code, detail)
        atomic = self.journal is self.writer
        if event is not None and not atomic:
            self.journal.submit(event)

        def save(db: Database) -> None:
            memory.save_position(db, meter, remember)
            if event is not None and atomic:
                journal_with_charges(db, event, ())

        self.writer.call(save, durable=True)

    def _make_event(
        self, meter: str, code: EventCode, detail: dict[str, int | str | None]
    ) -> MeterEvent:
        clean: dict[int | str, int | str] = {k: v for k, v in detail.items() if v is not None}
        return MeterEvent(meter, self._now_ms(), int(code), clean)

    def _event(self, meter: str, code: EventCode, **detail: int | str | None) -> None:
        self.journal.submit(self._make_event(meter, code, detail))

    def _alarm(self, kind: str, **detail: int | str | None) -> None:
        """Called with the lock held."""
        alarm: dict[str, object] = {"kind": kind, "ts_ms": self._now_ms()}
        alarm.update({k: v for k, v in detail.items() if v is not None})
        self._alarms.append(alarm)
        del self._alarms[:-50]

    def _op_timeout(self) -> float:
        s = self.settings
        return s.confirm_attempts * (s.confirm_delay_s + READ_TIMEOUT_S) + 5


def _wait(future: Future[bool], timeout: float) -> bool:
    try:
        return future.result(timeout)
    except FutureTimeout:
        return False
