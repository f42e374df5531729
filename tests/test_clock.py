"""The calendar clock: UTC now, local business day, trust, test clocks."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta

import pytest

from gateway.clock import ManualClock, ShiftedClock, SystemClock, monotonic


def test_manual_clock_crosses_midnight_and_year_end_in_local_time() -> None:
    # 23:59 local on 31 December (Asia/Shanghai, UTC+8) is 15:59 UTC
    clock = ManualClock(datetime(2026, 12, 31, 23, 59))
    assert clock.now() == datetime(2026, 12, 31, 15, 59, tzinfo=UTC)
    assert clock.business_day() == date(2026, 12, 31)
    clock.advance(60)
    assert clock.business_day() == date(2027, 1, 1)
    assert clock.local().hour == 0
    # the UTC date is still 31 December: business days are local days
    assert clock.now().date() == date(2026, 12, 31)


def test_day_start_is_local_midnight_in_utc() -> None:
    clock = ManualClock(datetime(2026, 6, 1, 12, 0))
    assert clock.day_start(date(2026, 6, 2)) == datetime(2026, 6, 1, 16, 0, tzinfo=UTC)


def test_configurable_timezone() -> None:
    clock = ManualClock(datetime(2026, 3, 1, 0, 30, tzinfo=UTC), "Europe/Berlin")
    assert clock.local().hour == 1
    assert clock.business_day() == date(2026, 3, 1)


def test_aware_start_is_kept() -> None:
    start = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    assert ManualClock(start).now() == start


def test_system_clock_starts_untrusted_until_a_source_vouches() -> None:
    clock = SystemClock()
    assert not clock.trusted and clock.trust_source is None
    clock.trust("ntp")
    assert clock.trusted and clock.trust_source == "ntp"
    clock.distrust()
    assert not clock.trusted
    assert abs(clock.now() - datetime.now(UTC)) < timedelta(seconds=5)
    assert clock.now().tzinfo is UTC


def test_shifted_clocks_with_one_anchor_agree_and_run() -> None:
    start = datetime(2026, 12, 31, 23, 59, 59)
    anchor = monotonic()
    a = ShiftedClock(start, anchor=anchor, rate=100.0)
    b = ShiftedClock(start, anchor=anchor, rate=100.0)
    first = a.now()
    time.sleep(0.02)
    later = b.now()
    assert later > first
    assert later - first >= timedelta(seconds=1)  # 20 ms x 100
    assert a.business_day(later) == date(2027, 1, 1)


def test_clock_is_abstract() -> None:
    from gateway.clock import Clock

    with pytest.raises(TypeError):
        Clock()  # type: ignore[abstract]
