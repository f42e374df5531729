"""Reconciliation (:class:`Reconciliation`, a part of
:class:`~gateway.relays.controller.RelayController`): the relays with the charger's state
at restart, and with the charger's meters after it reloaded.

At :meth:`~gateway.relays.controller.RelayController.start` the relays of every account
that trips on arrears are read back and reconciled with the charger's state (which the
charger keeps on disk with each reading): a due account's closed relay is tripped, an
open relay of an account that may close is closed.  An open relay of an account the
charger does not hold tripped (a SIGKILL between a trip and its reading's transaction
reaching the disk: the next poll charges that energy again) is looked at again after two
poll intervals (at least 5 s) and closed if the balance is then above the close-allow
level.  A due account's relay found open, or a may-close account's found closed, that
the store does not remember so (a kill between the confirmation and its record) is
recorded then, with reason ``restart``.

After the charger reloaded (a METER_CHANGE or ACCOUNT_CHANGE command), a relay meter added
to an account already due is tripped (reason ``meter-added``) and a tripped meter moved to
an account not due is closed (reason ``meter-moved``).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime
from typing import TYPE_CHECKING

from gateway.drivers.jobs import BusHandle, Priority
from gateway.prepaid import PrepaidState
from gateway.protocols.quantities import EventCode
from gateway.relays.memory import Position
from gateway.relays.operation import READ_TIMEOUT_S, RelayOp
from gateway.relays.targets import RelayTarget

if TYPE_CHECKING:
    from gateway.charging import Charger

__all__ = ["RECHECK_MIN_S", "Reconciliation"]

_logger = logging.getLogger("gateway.relays.controller")  # the controller's log, as before

RECHECK_MIN_S = 5.0
"""Least wait before an open relay of an account the charger does not hold tripped is
looked at again after a restart (then: twice the poll interval)."""


class Reconciliation:
    """Restart and reload reconciliation; mixed into the controller, whose attributes
    these are."""

    buses: Callable[[str], BusHandle]
    charger: Charger
    targets: dict[str, RelayTarget]
    _lock: threading.RLock
    _stopping: bool
    _ops: dict[str, RelayOp]
    _positions: dict[str, Position]
    _unrecorded: set[str]
    _blocked: dict[str, str]
    _delayed: dict[str, tuple[datetime, tuple[str, ...]]]
    _recheck_s: float
    _reloads_seen: int

    if TYPE_CHECKING:  # the controller's and its other parts'

        def trips(self, account: str) -> bool: ...
        def trip_accounts(self) -> set[str]: ...
        def _reloads(self) -> int: ...
        def _due(
            self,
            account: str,
            meters: Sequence[str],
            balance: int,
            reason: str,
            count_storm: bool = True,
        ) -> None: ...
        def _close(
            self, account: str, meters: Sequence[str], balance: int, reason: str
        ) -> None: ...
        def _balance(self, account: str) -> int: ...
        def _close_allow_of(self, account: str) -> int: ...
        def _open_or_opening(self, meter: str) -> bool: ...
        def _later(self, seconds: float, fn: Callable[[], None]) -> None: ...
        def _maybe_all_closed(self, account: str) -> None: ...
        def _now_ms(self) -> int: ...
        def _record(
            self, meter: str, remember: Position, code: EventCode | None, **detail: int | str | None
        ) -> None: ...

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
