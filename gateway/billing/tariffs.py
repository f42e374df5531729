"""Tariffs as rating sees them: versions on a time line, TOU slot tables by season and
day type, tier thresholds prorated for accounts opened mid-year.

The config (``gateway.config.model``) gives each tariff version one daily slot table;
what it lacks (season tables, day types, the holiday list) is declared here as plain
dataclasses and handed to :class:`TariffBook`.  Integers only: energy in Wh, prices in
0.0001 yuan per kWh.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo

from gateway.config.model import (
    FlatTariff,
    GatewayConfig,
    Tariff,
    TieredTariff,
    TouSlot,
    TouTariff,
)

__all__ = [
    "DayCalendar",
    "DayType",
    "TariffBook",
    "TouSeason",
    "prorated_thresholds",
    "slot_table",
]

DayType = Literal["working", "weekend", "holiday"]


@dataclass(frozen=True, slots=True)
class DayCalendar:
    """Which local days are working days, weekends or holidays, and in which zone."""

    timezone: str = "Asia/Shanghai"  #: IANA zone of the slot tables' wall times
    holidays: frozenset[date] = frozenset()  #: public holidays (法定节假日)
    workdays: frozenset[date] = frozenset()  #: weekend days worked in lieu (调休上班)
    weekend: frozenset[int] = frozenset({5, 6})  #: ``date.weekday()`` of weekend days

    @property
    def tz(self) -> tzinfo:
        return ZoneInfo(self.timezone)

    def day_type(self, day: date) -> DayType:
        """Holiday list first, then in-lieu working days, then the weekday."""
        if day in self.holidays:
            return "holiday"
        if day in self.workdays:
            return "working"
        return "weekend" if day.weekday() in self.weekend else "working"


@dataclass(frozen=True, slots=True)
class TouSeason:
    """From ``start`` (month, day) until the next season's start, these tables apply.

    A day type missing from ``tables`` uses the ``working`` table, and a season with no
    ``working`` table uses the tariff version's own daily ``slots``.
    """

    start: tuple[int, int]  #: (month, day) the season begins, every year
    tables: Mapping[DayType, tuple[TouSlot, ...]] = field(hash=False)  #: first at 00:00


def slot_table(
    tariff: TouTariff,
    day: date,
    calendar: DayCalendar,
    seasons: tuple[TouSeason, ...] = (),
) -> tuple[TouSlot, ...]:
    """The slot table of ``tariff`` on local day ``day``."""
    if not seasons:
        return tariff.slots
    ordered = sorted(seasons, key=lambda s: s.start)
    index = bisect_right([s.start for s in ordered], (day.month, day.day)) - 1
    season = ordered[index]  # index -1: before the first start, the last season runs on
    tables = season.tables
    return tables.get(calendar.day_type(day)) or tables.get("working") or tariff.slots


def prorated_thresholds(
    thresholds: tuple[int, ...], opened: date, year_start: date, year_end: date
) -> tuple[int, ...]:
    """Tier thresholds (Wh) for an account opened on ``opened`` within the billing year
    [``year_start``, ``year_end``): each threshold x days left / days in the year,
    rounded half up.  Opened on or before the year's start: unchanged.
    """
    days = (year_end - year_start).days
    if days <= 0:
        raise ValueError(f"empty billing year {year_start}..{year_end}")
    left = min(days, max(0, (year_end - max(opened, year_start)).days))
    return tuple((t * left * 2 + days) // (days * 2) for t in thresholds)


class TariffBook:
    """Every version of every tariff, looked up by id and instant.

    ``seasons`` maps a TOU tariff id to its season tables (all its versions share
    them); ``calendar`` says which days are holidays and in which zone slots are read.
    """

    def __init__(
        self,
        tariffs: Iterable[Tariff],
        *,
        calendar: DayCalendar | None = None,
        seasons: Mapping[str, tuple[TouSeason, ...]] | None = None,
    ) -> None:
        self.calendar = calendar or DayCalendar()
        self.seasons: Mapping[str, tuple[TouSeason, ...]] = dict(seasons or {})
        by_id: dict[str, list[Tariff]] = {}
        for tariff in tariffs:
            if tariff.effective.tzinfo is None:
                raise ValueError(f"tariff {tariff.id} v{tariff.version}: effective is naive")
            _check(tariff)
            by_id.setdefault(tariff.id, []).append(tariff)
        self._versions: dict[str, list[Tariff]] = {}
        for tariff_id, versions in by_id.items():
            versions.sort(key=lambda t: (t.effective, t.version))
            self._versions[tariff_id] = versions

    @classmethod
    def from_config(
        cls,
        config: GatewayConfig,
        *,
        holidays: frozenset[date] | None = None,
        workdays: frozenset[date] = frozenset(),
        seasons: Mapping[str, tuple[TouSeason, ...]] | None = None,
    ) -> TariffBook:
        """The config's tariffs, slots read in its time zone, holidays from
        ``billing.holidays`` unless given; the rest as given."""
        if holidays is None:
            holidays = frozenset(config.billing.holidays)
        calendar = DayCalendar(config.timezone, holidays, workdays)
        return cls(config.tariffs, calendar=calendar, seasons=seasons)

    def with_tariff(self, tariff: Tariff) -> TariffBook:
        """A new book with one more version (a late or corrected tariff)."""
        every = [t for vs in self._versions.values() for t in vs] + [tariff]
        return TariffBook(every, calendar=self.calendar, seasons=self.seasons)

    def versions(self, tariff_id: str) -> tuple[Tariff, ...]:
        return tuple(self._versions.get(tariff_id, ()))

    def at(self, tariff_id: str, instant: datetime) -> Tariff:
        """The version in force at ``instant``; KeyError before the first one."""
        versions = self._versions.get(tariff_id, [])
        index = bisect_right([t.effective for t in versions], instant) - 1
        if index < 0:
            raise KeyError(f"tariff {tariff_id}: no version in force at {instant}")
        # Same effective time: the later version wins (it sorts last).
        return versions[index]

    def changes(self, tariff_id: str, t0: datetime, t1: datetime) -> list[datetime]:
        """Effective times strictly inside (t0, t1), UTC, ascending."""
        return sorted(
            {
                t.effective.astimezone(UTC)
                for t in self._versions.get(tariff_id, [])
                if t0 < t.effective < t1
            }
        )

    def slot_table(self, tariff: TouTariff, day: date) -> tuple[TouSlot, ...]:
        return slot_table(tariff, day, self.calendar, self.seasons.get(tariff.id, ()))


def _check(tariff: Tariff) -> None:
    if isinstance(tariff, FlatTariff):
        prices = [tariff.price]
    elif isinstance(tariff, TouTariff):
        prices = list(tariff.prices.values())
        missing = {s.slot for s in tariff.slots} - set(tariff.prices)
        if missing:
            raise ValueError(f"tariff {tariff.id} v{tariff.version}: no price for {missing}")
    elif isinstance(tariff, TieredTariff):
        prices = list(tariff.prices)
        if len(prices) != len(tariff.thresholds) + 1:
            raise ValueError(f"tariff {tariff.id} v{tariff.version}: tiers and prices differ")
    if any(p < 0 for p in prices):
        raise ValueError(f"tariff {tariff.id} v{tariff.version}: negative price")
