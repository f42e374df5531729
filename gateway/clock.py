"""The one clock all calendar logic takes (design.md, "Time").

Calendar logic (time-of-use slots, freezes, settlement, daily tasks, line-loss days)
asks a :class:`Clock` for ``now()`` (always timezone-aware UTC), for the local
business day, and whether the time is trusted.  Bus timing never uses it: it uses
:func:`monotonic`, the real monotonic clock, always.

- :class:`SystemClock` is the production clock.  It starts *untrusted* (a
  concentrator may boot with a wrong clock) until :meth:`Clock.trust` is called by
  NTP detection or a master time command.
- :class:`ManualClock` is the test clock: it stands still until set or advanced.
- :class:`ShiftedClock` runs at real speed (or a multiple) from a chosen start; two
  processes given the same start and anchor agree, so a simulator and a gateway can
  live at 23:59 on 31 December together.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from datetime import UTC, date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

__all__ = [
    "DEFAULT_TIMEZONE",
    "Clock",
    "ManualClock",
    "ShiftedClock",
    "SystemClock",
    "monotonic",
]

DEFAULT_TIMEZONE = "Asia/Shanghai"

monotonic = time.monotonic
"""Bus timing: the real monotonic clock, whatever calendar clock is in use."""


class Clock(ABC):
    """Base: subclasses implement :meth:`now`.  Time trust and the local day live here."""

    def __init__(self, timezone: str | tzinfo = DEFAULT_TIMEZONE, *, trusted: bool = False):
        self.tz: tzinfo = ZoneInfo(timezone) if isinstance(timezone, str) else timezone
        self._trusted = trusted
        self.trust_source: str | None = "assumed" if trusted else None

    @abstractmethod
    def now(self) -> datetime:
        """Current time, timezone-aware UTC."""

    @property
    def trusted(self) -> bool:
        """Whether calendar decisions (meter clock sets, TOU splits, daily tasks) may run."""
        return self._trusted

    def trust(self, source: str) -> None:
        """Mark the time trusted, naming the source (``ntp``, ``master``, ``console``)."""
        self._trusted = True
        self.trust_source = source

    def distrust(self) -> None:
        self._trusted = False
        self.trust_source = None

    def local(self, instant: datetime | None = None) -> datetime:
        """``instant`` (default: now) in the business time zone."""
        return (instant or self.now()).astimezone(self.tz)

    def business_day(self, instant: datetime | None = None) -> date:
        """The local calendar day ``instant`` (default: now) falls on."""
        return self.local(instant).date()

    def day_start(self, day: date) -> datetime:
        """00:00 local of ``day``, as UTC."""
        return datetime(day.year, day.month, day.day, tzinfo=self.tz).astimezone(UTC)


class SystemClock(Clock):
    """The machine's clock.  Untrusted until NTP or the master vouches for it."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock(Clock):
    """A clock that moves only when told: ``set()`` and ``advance()``.  For tests."""

    def __init__(
        self,
        start: datetime,
        timezone: str | tzinfo = DEFAULT_TIMEZONE,
        *,
        trusted: bool = True,
    ) -> None:
        super().__init__(timezone, trusted=trusted)
        self._now = _aware(start, self.tz)

    def now(self) -> datetime:
        return self._now

    def set(self, instant: datetime) -> None:
        self._now = _aware(instant, self.tz)

    def advance(self, delta: timedelta | float) -> datetime:
        self._now += delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        return self._now


class ShiftedClock(Clock):
    """Real-speed (times ``rate``) clock that read ``start`` at monotonic ``anchor``.

    Two processes built with the same ``start`` and the same ``anchor`` (the
    monotonic clock is system-wide on Linux) read the same time.
    """

    def __init__(
        self,
        start: datetime,
        timezone: str | tzinfo = DEFAULT_TIMEZONE,
        *,
        rate: float = 1.0,
        anchor: float | None = None,
        trusted: bool = True,
    ) -> None:
        super().__init__(timezone, trusted=trusted)
        self.start = _aware(start, self.tz)
        self.rate = rate
        self.anchor = monotonic() if anchor is None else anchor

    def now(self) -> datetime:
        return self.start + timedelta(seconds=(monotonic() - self.anchor) * self.rate)


def _aware(instant: datetime, tz: tzinfo) -> datetime:
    """A naive datetime is read as local business time; the result is UTC."""
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=tz)
    return instant.astimezone(UTC)
