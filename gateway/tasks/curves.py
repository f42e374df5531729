"""Load curves and midnight values from the gateway's own readings, as they arrive.

For each meter the :class:`CurveBuilder` keeps its previous reading's energy
registers.  When a reading passes one or more curve instants (every
``step_s`` seconds: quarter hours) since the previous one, it writes a curve point
for each: a :class:`~gateway.protocols.quantities.Reading` at that instant with the
energy registers interpolated linearly between the two readings, flagged
:data:`FLAG_CURVE` and :data:`FLAG_ESTIMATED` (a reading that falls exactly on the
instant gives the point as read: :data:`FLAG_CURVE` only).  Points are made only
between readings at most ``max_gap_s`` apart.  The value at local midnight is kept as
well (between readings up to ``midnight_gap_s`` apart): it is the daily value of a
meter that keeps no freeze (domain.md: "the gateway's own reading nearest midnight,
interpolated and marked as such").

Never across what cannot be interpolated: a reading taken while the time was not
trusted ends the meter's run; a register that went backwards (flag
:data:`FLAG_DISCONTINUITY`, or a fall without :data:`FLAG_ROLLOVER`) gives no point
before it; a rollover is interpolated through the register's modulus.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta, tzinfo

from gateway.poller import ENERGY_QUANTITIES, REGISTER_RANGE_WH
from gateway.protocols.quantities import (
    FLAG_CURVE,
    FLAG_DISCONTINUITY,
    FLAG_ESTIMATED,
    FLAG_ROLLOVER,
    FLAG_TIME_UNTRUSTED,
    Quantity,
    Reading,
)
from gateway.tasks.model import Journal

__all__ = ["CurveBuilder", "interpolate"]


def interpolate(
    before: Reading, after: Reading, at_ms: int, ratio: int = 1
) -> dict[Quantity, int] | None:
    """Energy registers at ``at_ms`` (``before.ts_ms < at_ms <= after.ts_ms``), rounded
    down; None when the registers cannot be interpolated (see the module's docstring)."""
    if at_ms == after.ts_ms:
        return dict(after.values) or None
    if after.flags & FLAG_DISCONTINUITY:
        return None
    done, span = at_ms - before.ts_ms, after.ts_ms - before.ts_ms
    out: dict[Quantity, int] = {}
    for quantity, new in after.values.items():
        old = before.values.get(quantity)
        if old is None:
            continue
        if new >= old:
            out[quantity] = old + (new - old) * done // span
        elif after.flags & FLAG_ROLLOVER:
            modulus = REGISTER_RANGE_WH * ratio
            out[quantity] = (old + (new + modulus - old) * done // span) % modulus
        else:
            return None
    return out or None


class CurveBuilder:
    """Curve points and midnight values of every meter; :meth:`observe` from any thread."""

    def __init__(
        self,
        journal: Journal,
        tz: tzinfo,
        ratios: Mapping[str, int],
        *,
        step_s: int = 900,
        max_gap_s: int = 900,
        midnight_gap_s: int = 7200,
    ) -> None:
        if not 0 < max_gap_s < 86400 or not 0 < midnight_gap_s < 86400:
            raise ValueError("gaps must be 1 s .. 1 day")
        self.journal = journal
        self.tz = tz
        self.ratios = dict(ratios)
        self.step_ms = step_s * 1000
        self.max_gap_ms = max_gap_s * 1000
        self.midnight_gap_ms = midnight_gap_s * 1000
        self._last: dict[str, Reading] = {}
        self._points: dict[tuple[str, date], int] = {}
        self._midnight: dict[tuple[str, date], dict[Quantity, int]] = {}
        self._lock = threading.Lock()
        self.points_made = 0

    def observe(self, reading: Reading) -> None:
        """Take a stored reading into account (readings of unknown meters are ignored)."""
        meter = reading.meter
        if meter not in self.ratios or reading.flags & FLAG_CURVE:
            return
        if reading.flags & FLAG_TIME_UNTRUSTED:
            with self._lock:
                self._last.pop(meter, None)
            return
        energy = {q: v for q, v in reading.values.items() if q in ENERGY_QUANTITIES}
        if not energy:
            return
        current = Reading(meter, reading.ts_ms, energy, reading.flags)
        with self._lock:
            previous = self._last.get(meter)
            if previous is not None and reading.ts_ms < previous.ts_ms:
                previous = None  # the clock went back: start again
            self._last[meter] = current
            if previous is None or reading.ts_ms == previous.ts_ms:
                return
            points = self._between(previous, current)
        for point in points:
            self.journal.submit(point)

    def _between(self, before: Reading, after: Reading) -> list[Reading]:
        gap = after.ts_ms - before.ts_ms
        ratio = self.ratios[after.meter]
        if gap <= self.midnight_gap_ms:
            day = datetime.fromtimestamp(after.ts_ms / 1000, self.tz).date()
            start = datetime(day.year, day.month, day.day, tzinfo=self.tz)
            midnight_ms = int(start.timestamp()) * 1000
            if before.ts_ms < midnight_ms <= after.ts_ms:
                values = interpolate(before, after, midnight_ms, ratio)
                if values is not None:
                    self._midnight[(after.meter, day)] = values
        if gap > self.max_gap_ms:
            return []
        out: list[Reading] = []
        step = self.step_ms
        for at in range((before.ts_ms // step + 1) * step, after.ts_ms + 1, step):
            values = interpolate(before, after, at, ratio)
            if values is None:
                continue
            flags = FLAG_CURVE if at == after.ts_ms else FLAG_CURVE | FLAG_ESTIMATED
            out.append(Reading(after.meter, at, values, flags))
            key = (after.meter, self._day(at))
            self._points[key] = self._points.get(key, 0) + 1
        self.points_made += len(out)
        return out

    def _day(self, ts_ms: int) -> date:
        return datetime.fromtimestamp(ts_ms / 1000, self.tz).date()

    # --- what the task runner asks --------------------------------------------------

    def midnight(self, meter: str, day: date) -> dict[Quantity, int] | None:
        """The meter's registers at 00:00 local of ``day``, if they could be estimated."""
        with self._lock:
            values = self._midnight.get((meter, day))
            return None if values is None else dict(values)

    def points(self, meter: str, day: date) -> int:
        """Curve points made for ``meter`` on the local ``day``."""
        with self._lock:
            return self._points.get((meter, day), 0)

    def expected_points(self, day: date) -> int:
        """Curve points a local ``day`` has (fewer or more on a DST change day)."""
        start = datetime(day.year, day.month, day.day, tzinfo=self.tz).astimezone(UTC)
        nxt = day + timedelta(days=1)
        end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=self.tz).astimezone(UTC)
        return int((end - start).total_seconds() * 1000) // self.step_ms

    def forget(self, before: date) -> None:
        """Drop what is kept for days before ``before``."""
        with self._lock:
            for table in (self._points, self._midnight):
                for key in [k for k in table if k[1] < before]:
                    del table[key]
