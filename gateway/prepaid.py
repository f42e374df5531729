"""Prepaid control as data: thresholds, the state they give a balance, and its changes
(domain.md, "Prepaid control").  Pure: no I/O; Step 7 acts on the states (relays).

Money in 0.0001 yuan.  For a balance R of an account that trips on arrears:
R + overdraft limit <= 0 gives ``due_to_trip``; R <= alarm 2 ``alarm2``; R <= alarm 1
``alarm1``; else ``normal``.  Once tripped, an account stays ``due_to_trip`` until R
exceeds the close-allow level, then ``may_close`` until its relay is reported closed.
A postpaid account (or one without trip-on-arrears) never reaches ``due_to_trip`` or
``may_close``; an unbilled one is always ``normal``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from gateway.config.model import AccountType, ThresholdsConfig

__all__ = ["PrepaidState", "StateChange", "StateTracker", "Thresholds", "evaluate"]


class PrepaidState(StrEnum):
    NORMAL = "normal"
    ALARM1 = "alarm1"
    ALARM2 = "alarm2"
    DUE_TO_TRIP = "due_to_trip"
    MAY_CLOSE = "may_close"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Levels in 0.0001 yuan (all integers); see the module docstring."""

    alarm1: int
    alarm2: int
    overdraft_limit: int = 0
    """How far below zero the balance may go before a trip (>= 0)."""
    close_allow: int = 0
    """After a trip the relay may close only once the balance exceeds this."""
    emergency_credit: int = 0
    """The most one emergency top-up may grant (the ledger's ``emergency_limit``)."""

    def __post_init__(self) -> None:
        for name in ("alarm1", "alarm2", "overdraft_limit", "close_allow", "emergency_credit"):
            if type(getattr(self, name)) is not int:
                raise TypeError(f"threshold {name} must be an integer")
        if self.alarm2 > self.alarm1:
            raise ValueError("alarm 2 must not be above alarm 1")
        if self.overdraft_limit < 0 or self.emergency_credit < 0:
            raise ValueError("overdraft limit and emergency credit must be >= 0")

    @classmethod
    def from_config(cls, cfg: ThresholdsConfig) -> Thresholds:
        """The levels of ``billing.thresholds`` or an account's ``thresholds``."""
        return cls(
            cfg.alarm1, cfg.alarm2, cfg.overdraft_limit, cfg.close_allow, cfg.emergency_credit
        )


def evaluate(
    balance: int,
    thresholds: Thresholds,
    *,
    account_type: AccountType,
    trip_on_arrears: bool,
    tripped: bool = False,
) -> PrepaidState:
    """The state of an account with ``balance``; ``tripped``: its relays are open."""
    if account_type == "unbilled":
        return PrepaidState.NORMAL
    trips = account_type == "prepaid" and trip_on_arrears
    if trips and tripped:
        if balance > thresholds.close_allow and balance + thresholds.overdraft_limit > 0:
            return PrepaidState.MAY_CLOSE
        return PrepaidState.DUE_TO_TRIP
    if trips and balance + thresholds.overdraft_limit <= 0:
        return PrepaidState.DUE_TO_TRIP
    if balance <= thresholds.alarm2:
        return PrepaidState.ALARM2
    if balance <= thresholds.alarm1:
        return PrepaidState.ALARM1
    return PrepaidState.NORMAL


@dataclass(frozen=True, slots=True)
class StateChange:
    """An account's state changed at ``ts_ms`` because of ``balance`` (an event)."""

    account: str
    ts_ms: int
    old: PrepaidState
    new: PrepaidState
    balance: int


class StateTracker:
    """Each account's state; :meth:`update` after every balance change gives the events.

    An account is taken as tripped from ``due_to_trip`` until :meth:`relay_closed`.
    """

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self._state: dict[str, PrepaidState] = {}
        self._tripped: set[str] = set()

    def state(self, account: str) -> PrepaidState:
        return self._state.get(account, PrepaidState.NORMAL)

    def update(
        self,
        account: str,
        balance: int,
        ts_ms: int,
        *,
        account_type: AccountType,
        trip_on_arrears: bool,
        thresholds: Thresholds | None = None,
    ) -> StateChange | None:
        """The account's new state for ``balance`` (under ``thresholds``, default: the
        tracker's); the change, or None when unchanged."""
        new = evaluate(
            balance,
            thresholds or self.thresholds,
            account_type=account_type,
            trip_on_arrears=trip_on_arrears,
            tripped=account in self._tripped,
        )
        if new == PrepaidState.DUE_TO_TRIP:
            self._tripped.add(account)
        old = self.state(account)
        self._state[account] = new
        return None if new == old else StateChange(account, ts_ms, old, new, balance)

    def relay_closed(self, account: str) -> None:
        """Step 7 closed the account's relays: it is no longer held tripped."""
        self._tripped.discard(account)

    def tripped(self, account: str) -> bool:
        """Whether the account is held tripped (from ``due_to_trip`` until closed)."""
        return account in self._tripped

    def restore(self, account: str, state: PrepaidState, tripped: bool) -> None:
        """Set an account's state as recorded (a restart), without an event."""
        self._state[account] = state
        if tripped:
            self._tripped.add(account)
        else:
            self._tripped.discard(account)

    def forget(self, account: str) -> None:
        self._state.pop(account, None)
        self._tripped.discard(account)

    def accounts_in(self, state: PrepaidState) -> list[str]:
        """The accounts now in ``state``, sorted."""
        return sorted(a for a, s in list(self._state.items()) if s == state)
