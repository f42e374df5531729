"""Tariff book: versions on a time line, season and day-type slot tables, proration."""

from __future__ import annotations

from datetime import date, datetime, time
from types import MappingProxyType
from zoneinfo import ZoneInfo

import pytest

from gateway.billing import DayCalendar, TariffBook, TouSeason, prorated_thresholds, slot_table
from gateway.config import example_config_path, load_config
from gateway.config.model import FlatTariff, TieredTariff, TouSlot, TouTariff

SH = ZoneInfo("Asia/Shanghai")


def tou(version: int = 1) -> TouTariff:
    slots = (TouSlot(time(0), 4), TouSlot(time(8), 2), TouSlot(time(22), 4))
    return TouTariff("t", version, datetime(2026, 1, 1, tzinfo=SH), slots, {2: 9000, 4: 3000})


SUMMER = TouSeason(
    (7, 1),
    MappingProxyType(
        {
            # summer working days: a sharp slot 11:00-13:00 (slot 1 priced by the tariff)
            "working": (TouSlot(time(0), 4), TouSlot(time(11), 1), TouSlot(time(13), 4)),
            # summer weekends: valley all day
            "weekend": (TouSlot(time(0), 4),),
        }
    ),
)
WINTER = TouSeason((10, 1), MappingProxyType({"holiday": (TouSlot(time(0), 3),)}))


def test_day_types() -> None:
    cal = DayCalendar(
        holidays=frozenset({date(2026, 10, 1)}),  # a Thursday, National Day
        workdays=frozenset({date(2026, 10, 10)}),  # a Saturday worked in lieu
    )
    assert date(2026, 10, 1).weekday() == 3 and date(2026, 10, 10).weekday() == 5
    assert cal.day_type(date(2026, 10, 1)) == "holiday"
    assert cal.day_type(date(2026, 10, 10)) == "working"
    assert cal.day_type(date(2026, 10, 11)) == "weekend"  # Sunday
    assert cal.day_type(date(2026, 10, 12)) == "working"  # Monday


def test_season_and_day_type_pick_the_table() -> None:
    cal = DayCalendar(holidays=frozenset({date(2026, 10, 1)}))
    seasons = (WINTER, SUMMER)  # any order
    t = tou()
    # 2026-07-06 is a Monday: summer working table
    assert slot_table(t, date(2026, 7, 6), cal, seasons) == SUMMER.tables["working"]
    # 2026-07-04 is a Saturday: summer weekend table
    assert slot_table(t, date(2026, 7, 4), cal, seasons) == SUMMER.tables["weekend"]
    # the holiday in winter has its own table
    assert slot_table(t, date(2026, 10, 1), cal, seasons) == WINTER.tables["holiday"]
    # a winter working day: no table for it in the season -> the tariff's own slots
    assert slot_table(t, date(2026, 10, 5), cal, seasons) == t.slots
    # 1 March is before the first season start (7-1): the last season (winter) runs on
    assert slot_table(t, date(2026, 3, 2), cal, seasons) == t.slots
    # no seasons: the tariff's own table every day
    assert slot_table(t, date(2026, 7, 6), cal) == t.slots


def test_book_versions_by_effective_time() -> None:
    v1 = FlatTariff("f", 1, datetime(2026, 1, 1, tzinfo=SH), 6000)
    v2 = FlatTariff("f", 2, datetime(2026, 7, 1, tzinfo=SH), 6500)
    book = TariffBook([v2, v1])
    assert book.at("f", datetime(2026, 6, 30, 23, 59, tzinfo=SH)) is v1
    assert book.at("f", datetime(2026, 7, 1, tzinfo=SH)) is v2
    with pytest.raises(KeyError):
        book.at("f", datetime(2025, 12, 31, tzinfo=SH))
    with pytest.raises(KeyError):
        book.at("nope", datetime(2026, 3, 1, tzinfo=SH))
    # only changes strictly inside the span count
    assert book.changes("f", datetime(2026, 1, 1, tzinfo=SH), datetime(2027, 1, 1, tzinfo=SH)) == [
        v2.effective
    ]
    assert book.changes("f", v2.effective, datetime(2027, 1, 1, tzinfo=SH)) == []
    late = FlatTariff("f", 3, datetime(2026, 3, 1, tzinfo=SH), 6100)
    book3 = book.with_tariff(late)
    assert book3.at("f", datetime(2026, 4, 1, tzinfo=SH)) is late
    assert book.at("f", datetime(2026, 4, 1, tzinfo=SH)) is v1  # the old book is unchanged


def test_book_refuses_bad_tariffs() -> None:
    with pytest.raises(ValueError, match="naive"):
        TariffBook([FlatTariff("f", 1, datetime(2026, 1, 1), 6000)])
    with pytest.raises(ValueError, match="no price"):
        TariffBook([TouTariff("t", 1, datetime(2026, 1, 1, tzinfo=SH), tou().slots, {2: 1})])
    with pytest.raises(ValueError, match="tiers and prices"):
        TariffBook([TieredTariff("r", 1, datetime(2026, 1, 1, tzinfo=SH), (10,), (1,))])
    with pytest.raises(ValueError, match="negative"):
        TariffBook([FlatTariff("f", 1, datetime(2026, 1, 1, tzinfo=SH), -1)])


def test_proration_by_days() -> None:
    # residential tiers 2760 and 4800 kWh a year; billing year 2026-01-01 .. 2027-01-01
    # (365 days); opened 2026-07-01: 184 days left
    # 2_760_000 x 184 / 365 = 1_391_342.46... -> 1_391_342 Wh
    # 4_800_000 x 184 / 365 = 2_419_726.02... -> 2_419_726 Wh
    year = (date(2026, 1, 1), date(2027, 1, 1))
    assert prorated_thresholds((2_760_000, 4_800_000), date(2026, 7, 1), *year) == (
        1_391_342,
        2_419_726,
    )
    # 1 Wh threshold, half the days of a 2-day year: 0.5 -> rounds half up to 1
    assert prorated_thresholds((1,), date(2026, 1, 2), date(2026, 1, 1), date(2026, 1, 3)) == (1,)
    # opened before the year: unchanged; opened after its end: zero
    assert prorated_thresholds((2_760_000,), date(2025, 5, 5), *year) == (2_760_000,)
    assert prorated_thresholds((2_760_000,), date(2027, 2, 1), *year) == (0,)
    with pytest.raises(ValueError):
        prorated_thresholds((1,), date(2026, 1, 1), date(2026, 1, 1), date(2026, 1, 1))


def test_book_from_the_example_config() -> None:
    cfg = load_config(example_config_path())
    book = TariffBook.from_config(cfg, holidays=frozenset({date(2026, 10, 1)}))
    assert book.calendar.timezone == cfg.timezone
    assert book.calendar.day_type(date(2026, 10, 1)) == "holiday"
    for tariff in cfg.tariffs:
        assert tariff in book.versions(tariff.id)
        assert book.at(tariff.id, datetime(2100, 1, 1, tzinfo=SH)).id == tariff.id
