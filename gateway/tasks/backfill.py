"""Finding missed days in a DL/T 645 meter's daily freeze history (DI0 01..3E).

The n-th last freeze (``05060000 | n`` its time, ``05060100 | n`` its energy) is
usually the one of ``today - (n - 1)`` days, but a meter that was unpowered at a
midnight has no freeze for that day, and one whose clock is behind may not have
frozen today yet: the history is in date order, newest first, with holes.  So each
freeze is matched to its day by its time, and a missing day is searched for
between what was already seen: every probe narrows the range of positions where the
day can still be (the expected position first, else the middle of the range), until
it is found or proved absent.  No position is read twice, so a search costs at most
62 probes; a gap of three days in an intact history costs three.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

from gateway.tasks.model import FREEZE_DEPTH

__all__ = ["Backfill"]


@dataclass(slots=True)
class Backfill:
    """The search of one meter's history for ``missing`` days, as of business day ``today``.

    Call :meth:`next_probe` for the position to read next, then :meth:`seen` with what
    it held (its freeze day, or None: no such freeze).  Days found are removed from
    :attr:`missing` by :meth:`found`.
    """

    meter: str
    today: date
    missing: list[date]
    """Days still wanted, newest first."""
    probed: dict[int, date | None] = field(default_factory=dict)
    """Position -> its freeze's day (None: the meter has no freeze there)."""
    absent: list[date] = field(default_factory=list)
    """Days proved not to be in the history."""
    failures: int = 0
    """Consecutive probes the meter did not answer."""
    retry_at: datetime | None = None

    def __post_init__(self) -> None:
        self.missing = sorted(set(self.missing), reverse=True)

    def next_probe(self) -> int | None:
        """The position (1..62) to read next, or None when the search is over."""
        while self.missing:
            day = self.missing[0]
            lo, hi = 0, FREEZE_DEPTH + 1
            for n, seen in self.probed.items():
                if seen == day:
                    lo = hi = n  # found: the runner records it
                    break
                if seen is not None and seen > day:
                    lo = max(lo, n)
                else:
                    hi = min(hi, n)
            if hi - lo <= 1:
                self.missing.pop(0)
                if lo != hi:
                    self.absent.append(day)
                continue
            guess = (self.today - day).days + 1
            return guess if lo < guess < hi else (lo + hi) // 2
        return None

    def seen(self, n: int, day: date | None) -> None:
        """Position ``n`` holds the freeze of ``day`` (None: nothing there)."""
        self.probed[n] = day
        self.failures = 0
        self.retry_at = None

    def found(self, day: date) -> None:
        if day in self.missing:
            self.missing.remove(day)

    @property
    def done(self) -> bool:
        return not self.missing
