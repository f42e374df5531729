"""The trip-storm guard (domain.md, "Relays, the hard cases"): when more than a share of
the accounts that trip on arrears fall due to trip within a short window (a tariff or
clock error rather than tenants running out), the gateway stops tripping and raises an
alarm until an operator resumes.

A storm is ``count * 100 > share_pct * accounts`` and ``count >= min_accounts``, where
``count`` is the number of distinct accounts that fell due within the last
``window_s`` seconds, this one included.  Times are the real monotonic clock: a storm
is about how fast trips arrive, whatever the calendar clock says.  Not thread-safe:
the controller holds its lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["StormGuard"]


@dataclass(slots=True)
class StormGuard:
    share_pct: int
    window_s: float
    min_accounts: int
    accounts: int
    """Accounts that trip on arrears (the base of the share)."""
    stopped_ms: int | None = None
    """When tripping was stopped (calendar ms), None while trips may go out."""
    _recent: dict[str, float] = field(default_factory=dict)

    def note(self, account: str, now: float) -> bool:
        """``account`` fell due at monotonic ``now``; True if that makes a storm."""
        self._recent[account] = now
        horizon = now - self.window_s
        for name in [a for a, t in self._recent.items() if t < horizon]:
            del self._recent[name]
        count = len(self._recent)
        return count >= self.min_accounts and count * 100 > self.share_pct * self.accounts

    @property
    def stopped(self) -> bool:
        return self.stopped_ms is not None

    def recent(self) -> int:
        return len(self._recent)

    def resume(self) -> None:
        self.stopped_ms = None
        self._recent.clear()
