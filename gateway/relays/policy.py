"""When a trip may go out: quiet hours and quiet holidays (domain.md: protect "nights by
policy"; config ``relays.quiet_hours`` / ``relays.quiet_on_holidays`` with
``billing.holidays``).

:func:`quiet_until` takes a local wall time and gives the end of the quiet period it
falls in, or None when a trip may go out now.  Quiet hours are ``[from, to)`` local
wall times; ``from > to`` wraps past midnight (22:00-07:00).  A quiet holiday is quiet
all day; a trip on one waits for the first non-holiday day, at the end of its quiet
hours when those cover its start (07:00 for 22:00-07:00), else at 00:00.  Pure: the
caller passes the time from the injected clock.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

__all__ = ["QuietPolicy", "quiet_until"]


@dataclass(frozen=True, slots=True)
class QuietPolicy:
    """Quiet hours (``(from, to)`` local, or None) and the quiet days."""

    hours: tuple[time, time] | None = None
    holidays: frozenset[date] = frozenset()

    @classmethod
    def of(
        cls, hours: tuple[time, time] | None, holidays: Collection[date], on_holidays: bool
    ) -> QuietPolicy:
        return cls(hours, frozenset(holidays) if on_holidays else frozenset())

    @property
    def active(self) -> bool:
        return self.hours is not None or bool(self.holidays)


def _in_hours(t: time, hours: tuple[time, time]) -> bool:
    start, end = hours
    if start == end:
        return False
    if start < end:
        return start <= t < end
    return t >= start or t < end


def _hours_end(local: datetime, hours: tuple[time, time]) -> datetime:
    """The end of the quiet hours ``local`` is in (the next ``to`` wall time)."""
    end = local.replace(hour=hours[1].hour, minute=hours[1].minute, second=0, microsecond=0)
    if end <= local:
        end = (local + timedelta(days=1)).replace(
            hour=hours[1].hour, minute=hours[1].minute, second=0, microsecond=0
        )
    return end


def quiet_until(policy: QuietPolicy, local: datetime) -> datetime | None:
    """The local wall time a trip due at ``local`` may go out, or None for now.

    ``local`` is timezone-aware in the business zone; the result is in the same zone
    (its wall time; a DST gap shifts it as the zone says)."""
    at = local
    for _ in range(400):  # a year of holidays at most
        moved = False
        if at.date() in policy.holidays:
            day = at.date() + timedelta(days=1)
            at = datetime.combine(day, time(0), at.tzinfo)
            moved = True
        if policy.hours is not None and _in_hours(at.timetz().replace(tzinfo=None), policy.hours):
            at = _hours_end(at, policy.hours)
            moved = True
        if not moved:
            return None if at == local else at
    raise ValueError("quiet for more than a year: check billing.holidays")
