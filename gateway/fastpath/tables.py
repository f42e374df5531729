"""Tariff tables for the rating kernel, built in Python from a ``TariffBook``.

Static part (once per book and set of tariff ids): every version of every tariff as
a row (kind, effective time, prices, thresholds, its segments).  Per batch: for each
time-of-use version, a timeline of the batch's span in UTC microseconds -- the start
of every slot span and its slot, neighbours of the same slot joined -- computed with
exactly the rules of ``gateway.billing.rating`` (slot starts at local midnight and at
each slot start of the day's table, season and day type included; the slot at an
instant is the day table's slot at its local wall time).

Joining neighbours of one slot (across midnight, say) gives the same charges as
rating's split-then-merge: rating apportions by rounded *cumulative* shares, so the
energy of two joined pieces is the energy of the joined span.

Duck-typed on the book and the tariffs (``kind``, ``effective``, ``version``,
``price(s)``, ``thresholds``, ``slots``): the fast path imports nothing else of the
package at run time.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from gateway.fastpath.layout import (
    KIND_FLAT,
    KIND_PYTHON,
    KIND_TIERED,
    KIND_TOU,
    MAX_TIERS,
    NREG,
    Tables,
    zeros,
)

if TYPE_CHECKING:
    from gateway.billing.tariffs import TariffBook
    from gateway.config.model import Tariff, TouTariff

__all__ = ["MAX_SPAN_DAYS", "SegmentKey", "TableBuilder", "from_us", "to_us"]

SegmentKey = tuple[str, int, str]
"""(tariff id, version, ``flat`` | ``slot:N`` | ``tier:N``), as in gateway.billing."""

MAX_SPAN_DAYS = 8
"""A batch's time-of-use timeline reaches at most this far back from its last reading
(a reading whose interval starts earlier is rated in Python)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_PRICE_MAX = 10**6


def to_us(when: datetime) -> int:
    """UTC microseconds since the epoch of an aware datetime."""
    return (when - _EPOCH) // _US


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


class TableBuilder:
    """The kernel's :class:`Tables` for ``book`` and the tariff ids asked for so far."""

    def __init__(self, book: TariffBook, tariff_ids: Sequence[str] = ()) -> None:
        self.book = book
        self.tariff_ids: list[str] = []
        self.tariff_index: dict[str, int] = {}
        self.tables = Tables()
        self.segments: list[SegmentKey] = []  #: g -> its key
        self.segment_index: dict[SegmentKey, int] = {}
        self._versions: list[Tariff] = []  #: v -> its tariff version
        self._ends: list[datetime | None] = []  #: v -> when the next version takes effect
        self._covered: tuple[int, int] | None = None
        for tariff_id in tariff_ids:
            self.add(tariff_id)

    def add(self, tariff_id: str) -> int:
        """The index of ``tariff_id``; adds its rows (and segments) if new."""
        known = self.tariff_index.get(tariff_id)
        if known is not None:
            return known
        tb = self.tables
        t = len(self.tariff_ids)
        self.tariff_ids.append(tariff_id)
        self.tariff_index[tariff_id] = t
        rows: list[Tariff] = []
        for tariff in self.book.versions(tariff_id):  # by (effective, version)
            if rows and rows[-1].effective == tariff.effective:
                rows[-1] = tariff  # same instant: the later version wins (TariffBook.at)
            else:
                rows.append(tariff)
        tb.t_ver_start.append(len(self._versions))
        tb.t_ver_count.append(len(rows))
        tb.t_has_tou.append(int(any(r.kind == "tou" for r in self.book.versions(tariff_id))))
        for n, tariff in enumerate(rows):
            self._versions.append(tariff)
            self._ends.append(rows[n + 1].effective if n + 1 < len(rows) else None)
            self._add_version(tariff_id, tariff)
        self._covered = None
        return t

    def _add_version(self, tariff_id: str, tariff: Tariff) -> None:
        tb = self.tables
        kind = KIND_PYTHON
        thresholds: tuple[int, ...] = ()
        regkey = [-1] * NREG
        if tariff.kind == "flat":
            keys, prices, kind = ["flat"], [tariff.price], KIND_FLAT
        elif tariff.kind == "tiered":
            thresholds = tuple(tariff.thresholds)
            prices = list(tariff.prices)
            keys = [f"tier:{n + 1}" for n in range(len(prices))]
            fits = len(thresholds) <= MAX_TIERS and len(prices) == len(thresholds) + 1
            if fits and list(thresholds) == sorted(thresholds):
                kind = KIND_TIERED
        else:
            slots = sorted(tariff.prices)
            prices = [tariff.prices[s] for s in slots]
            keys = [f"slot:{s}" for s in slots]
            for j in range(NREG):
                if j + 1 in slots:
                    regkey[j] = slots.index(j + 1)
            used = {s.slot for s in tariff.slots}
            for season in self.book.seasons.get(tariff_id, ()):
                used.update(s.slot for table in season.tables.values() for s in table)
            if used <= set(slots):
                kind = KIND_TOU
        if any(not 0 <= p <= _PRICE_MAX for p in prices):
            kind = KIND_PYTHON
        seg_keys: list[SegmentKey] = [(tariff_id, tariff.version, k) for k in keys]
        if any(k in self.segment_index for k in seg_keys):
            kind = KIND_PYTHON  # two rows share a version number: rated in Python
            tb.v_seg.append(-1)
        else:
            tb.v_seg.append(len(self.segments))
        for key in seg_keys:
            if key not in self.segment_index:
                self.segment_index[key] = len(self.segments)
                self.segments.append(key)
        tb.nseg = len(self.segments)
        tb.v_eff.append(to_us(tariff.effective))
        tb.v_kind.append(kind)
        tb.v_price_off.append(len(tb.prices))
        tb.prices.extend(prices)
        tb.v_thr_off.append(len(tb.thresholds))
        tb.v_nthr.append(len(thresholds))
        tb.thresholds.extend(thresholds)
        tb.v_tl_off.append(0)
        tb.v_tl_count.append(0)
        tb.v_tl_end.append(0)
        tb.v_regkey.extend(regkey)

    def version_window(self, t: int, at_us: int) -> tuple[int, int] | None:
        """[effective, next effective) in us of tariff ``t``'s version in force at
        ``at_us`` (the next: 2**63 - 1 when none); None before its first version."""
        tb = self.tables
        first, count = tb.t_ver_start[t], tb.t_ver_count[t]
        found = None
        for v in range(first, first + count):
            if tb.v_eff[v] <= at_us:
                found = v
        if found is None:
            return None
        end = tb.v_eff[found + 1] if found + 1 < first + count else 2**63 - 1
        return tb.v_eff[found], end

    def cover(self, lo_us: int, hi_us: int) -> None:
        """Make every time-of-use timeline cover [lo_us, hi_us] (at most
        :data:`MAX_SPAN_DAYS` back from ``hi_us``); kept while later batches fit."""
        lo_us = max(lo_us, hi_us - MAX_SPAN_DAYS * 86_400_000_000)
        if self._covered is not None and self._covered[0] <= lo_us and hi_us <= self._covered[1]:
            return
        hi_us += 86_400_000_000  # a day ahead: the next batches fit
        tb = self.tables
        tl_us, tl_key = zeros(0), zeros(0)
        lo, hi = from_us(lo_us), from_us(hi_us)
        for v, tariff in enumerate(self._versions):
            tb.v_tl_off[v] = len(tl_us)
            tb.v_tl_count[v] = 0
            if tb.v_kind[v] != KIND_TOU:
                continue
            end = self._ends[v]
            a = max(lo, tariff.effective.astimezone(UTC))
            b = hi if end is None else min(hi, end.astimezone(UTC))
            if a > b:
                continue
            spans, until = self._timeline(tariff, a, b)  # type: ignore[arg-type]
            slots = sorted(tariff.prices)  # type: ignore[union-attr]
            for start, slot in spans:
                tl_us.append(to_us(start))
                tl_key.append(slots.index(slot))
            tb.v_tl_count[v] = len(spans)
            tb.v_tl_end[v] = to_us(until)
        tb.tl_us, tb.tl_key = tl_us, tl_key
        self._covered = (lo_us, hi_us)

    def _timeline(
        self, tariff: TouTariff, a: datetime, b: datetime
    ) -> tuple[list[tuple[datetime, int]], datetime]:
        """Slot spans (start, slot) covering [a, b] and the end of the last one."""
        tz = self.book.calendar.tz
        day, last = a.astimezone(tz).date(), b.astimezone(tz).date()
        starts: set[datetime] = set()
        while day <= last:
            midnight = datetime(day.year, day.month, day.day, tzinfo=tz)
            starts.add(midnight.astimezone(UTC))
            for entry in self.book.slot_table(tariff, day):
                wall = datetime.combine(day, entry.start.replace(tzinfo=None), tzinfo=tz)
                starts.add(wall.astimezone(UTC))
            day += timedelta(days=1)
        spans: list[tuple[datetime, int]] = []
        for start in sorted(starts):
            slot = self._slot_at(tariff, start)
            if not spans or spans[-1][1] != slot:
                spans.append((start, slot))
        until = datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)
        return spans, until

    def _slot_at(self, tariff: TouTariff, instant: datetime) -> int:
        local = instant.astimezone(self.book.calendar.tz)
        table = self.book.slot_table(tariff, local.date())
        index = bisect.bisect_right([s.start for s in table], local.time().replace(tzinfo=None))
        return table[index - 1].slot
