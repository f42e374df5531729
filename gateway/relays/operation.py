"""One meter's trip or close (:class:`RelayOp`) from its first send to its confirmation
(:class:`Operations`, a part of :class:`~gateway.relays.controller.RelayController`).

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
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from gateway.clock import Clock
from gateway.config.model import Relays as RelaySettings
from gateway.drivers.jobs import BusHandle, JobResult, Priority
from gateway.prepaid import PrepaidState
from gateway.protocols.quantities import EventCode
from gateway.relays.memory import Position, SafeMode
from gateway.relays.policy import QuietPolicy, quiet_until
from gateway.relays.storm import StormGuard
from gateway.relays.targets import RelayTarget

if TYPE_CHECKING:
    from gateway.charging import Charger

__all__ = [
    "BUTTON_WAIT_MAX_S",
    "CLOCK_SLACK_S",
    "READ_TIMEOUT_S",
    "RETRY_MAX_S",
    "Operations",
    "RelayOp",
]

_logger = logging.getLogger("gateway.relays.controller")  # the controller's log, as before

BUTTON_WAIT_MAX_S = 60.0
"""Longest pause between read-backs while a close-allow waits for the tenant's button."""
CLOCK_SLACK_S = 60.0
"""A meter clock this close to ours is taken as ours (deadlines from our clock)."""
RETRY_MAX_S = 900.0
"""Longest pause between rounds of sends for a relay that stays unconfirmed (the first
pause is ten times ``confirm_delay_s``, at least 1 s, doubling)."""
READ_TIMEOUT_S = 30.0
"""How long the restart reconciliation and a relay test wait for one bus job."""


@dataclass(eq=False)
class RelayOp:
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
    """0 for the first round of sends; then the retries after an unconfirmed round."""
    clock_read: bool = False
    done: Future[bool] = field(default_factory=Future)


class Operations:
    """Sending, reading back, confirming and retrying each meter's :class:`RelayOp`; mixed
    into the controller, whose attributes these are."""

    settings: RelaySettings
    buses: Callable[[str], BusHandle]
    clock: Clock
    charger: Charger
    targets: dict[str, RelayTarget]
    policy: QuietPolicy
    storm: StormGuard
    counts: dict[str, int]
    _lock: threading.RLock
    _stopping: bool
    _ops: dict[str, RelayOp]
    _positions: dict[str, Position]
    _meter_offsets: dict[str, timedelta]
    _unrecorded: set[str]
    _alarms: list[dict[str, object]]
    _protect: dict[str, bool]
    _safe_mode: SafeMode | None
    _retry_s: float

    if TYPE_CHECKING:  # the controller's and its other parts'

        def _later(self, seconds: float, fn: Callable[[], None]) -> None: ...
        def _balance(self, account: str) -> int: ...
        def _now_ms(self) -> int: ...
        def _alarm(self, kind: str, **detail: int | str | None) -> None: ...
        def _record(
            self, meter: str, remember: Position, code: EventCode | None, **detail: int | str | None
        ) -> None: ...

    def _start(self, op: RelayOp) -> None:
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

    def _send(self, op: RelayOp) -> None:
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

    def _sent(self, op: RelayOp, future: Future[JobResult]) -> None:
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

    def _clock(self, op: RelayOp, asked: datetime, future: Future[JobResult]) -> None:
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

    def _readback(self, op: RelayOp) -> None:
        if op.cancelled:
            return
        future = self.buses(op.target.id).submit(op.target.readback(), Priority.RELAY)
        future.add_done_callback(lambda f: self._read(op, f))

    def _read(self, op: RelayOp, future: Future[JobResult]) -> None:
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

    def _confirmed(self, op: RelayOp) -> None:
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

    def _unconfirmed(self, op: RelayOp, is_open: bool | None) -> None:
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

    def _retry(self, op: RelayOp) -> None:
        """Another round for an unconfirmed trip or close, if it is still wanted (the
        account still due, not protected, no storm, not in safe mode; or no longer due,
        for a close)."""
        account = op.account
        meter = op.target.id
        with self._lock:
            if self._stopping or account is None or meter in self._ops:
                return
            held = (
                self._protect.get(account, False)
                or self.storm.stopped
                or self._safe_mode is not None
            )
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
        again = RelayOp(op.target, account, op.open, balance, "retry", op.allow, round=op.round + 1)
        self._start(again)

    def _op_timeout(self) -> float:
        s = self.settings
        return s.confirm_attempts * (s.confirm_delay_s + READ_TIMEOUT_S) + 5
